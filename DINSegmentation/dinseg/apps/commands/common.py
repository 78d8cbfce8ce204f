"""What several commands share: device, precision and clean-up options."""

from __future__ import annotations

import argparse

from ...nets.config import PRECISIONS, TEST_TIME_ROTATIONS

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



def frame_number(value: str) -> int:
    """A frame number counted from 1 on the command line -> a 0-based frame index."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a frame is a number (1 = first), got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError("frame numbers start at 1")
    return number - 1
