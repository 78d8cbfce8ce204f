"""The ``dinseg`` command: segment, cohort, refine, cardiac-function, models, train, evaluate, synth, ablation, benchmarks, web.

Every command is a thin layer over the engine; errors meant for the user are printed as one
line (``dinseg: error: ...``) with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..core.errors import DinsegError, InputError, in_plain_words

log = logging.getLogger("dinseg")


def build_parser() -> argparse.ArgumentParser:
    from .commands import benchmarks, cardiac, cohort, interactive, models, segment, training, web

    parser = argparse.ArgumentParser(prog="dinseg", description="Dual Interaction Network organ segmentation.")
    parser.add_argument("--version", action="version", version=f"dinseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (segment, cohort, interactive, cardiac, models, training, benchmarks, web):
        module.add_parsers(commands)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Logs to whatever sys.stderr is at the time of each message."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _configure_logging(verbose: bool) -> None:
    if not any(isinstance(handler, _StderrHandler) for handler in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("dinseg: %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


def _set_threads(threads) -> None:
    if threads is None:
        return
    if threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def _reuse_freed_memory() -> None:
    """Let glibc keep freed memory for reuse instead of returning it to the system at once.

    By default glibc maps every block over 32 MB afresh and unmaps it when freed, so each
    forward pass on a CPU touches new pages for its large activations: on a 2-core virtual
    machine that doubled the network's time (``dinseg bench-segment``). The memory stays with
    the process for reuse (a higher peak, in README) and goes back when it exits; commands are
    short, and the long ones (train, web) reuse it. Other C libraries: no-op.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    trim_threshold, mmap_threshold = -1, -3  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD in <malloc.h>
    for option in (mmap_threshold, trim_threshold):
        libc.mallopt(option, ctypes.c_int(1 << 30))


def _interrupt_on_sigterm() -> None:
    """SIGTERM (a killed job, Cancel in Slicer) unwinds like Ctrl-C, so no temporary file stays behind."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def main(argv=None) -> int:
    _interrupt_on_sigterm()
    _reuse_freed_memory()
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        _set_threads(getattr(args, "threads", None))
        return args.handler(args)
    except DinsegError as error:
        print(f"dinseg: error: {in_plain_words(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dinseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
