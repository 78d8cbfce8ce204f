"""What several commands share: options, and the check that no output overwrites an input."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..nets.config import PRECISIONS, TEST_TIME_ROTATIONS
from ..samples import resolve_input

DEVICE_HELP = "auto (GPU if any), cpu, cuda, cuda:N (the N-th GPU) or mps (default: %(default)s)"


def add_device_options(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument("--device", default=default, help=DEVICE_HELP)
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: PyTorch's, all cores)")
    add_precision_option(parser)


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="network arithmetic: auto (float16 on CUDA, float32 on CPUs) or float32 "
                             "(default: %(default)s)")


def add_cleanup_options(parser: argparse.ArgumentParser) -> None:
    default = "(default: as the model card says)"
    parser.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None,
                        help=f"keep each structure's largest 3D component {default}")
    parser.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=None,
                        help=f"fill holes enclosed by a structure {default}")
    parser.add_argument("--rotations", type=int, choices=TEST_TIME_ROTATIONS, default=None,
                        help=f"test-time augmentation: average over this many 90-degree in-plane rotations {default}")


def refuse_overwriting_inputs(outputs, inputs) -> None:
    """Before any work: no output may be an input file or lie inside an input folder (a DICOM series)."""
    sources = [resolve_input(name).resolve() for name in inputs]
    for output in outputs:
        if not output:
            continue
        target = Path(output).resolve()
        for source in sources:
            if target == source or (source.is_dir() and source in target.parents):
                raise InputError(f"{output}: is {'the input' if target == source else 'inside the input folder'} "
                                 f"{source}; refusing to overwrite an input (choose another output)")
