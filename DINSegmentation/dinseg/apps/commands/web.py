"""``dinseg web``: the DIN workflow in the browser (trame-slicer), on this machine's loopback by default."""

from __future__ import annotations

import importlib.util
import sys

from ...core.errors import DinsegError

LOOPBACK = "127.0.0.1"


def run_web(args) -> int:
    if any(importlib.util.find_spec(name) is None for name in ("trame_slicer", "slicer", "trame")):
        raise DinsegError("the web front end needs: pip install 'dinseg[web]'")
    if args.max_upload_mb <= 0:
        raise DinsegError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    if args.host not in (LOOPBACK, "localhost", "::1"):
        print(f"dinseg web: WARNING: listening on {args.host}: anyone who can reach this port can open the page, "
              f"read and write the data folder {args.data} and run segmentations; the page has no login",
              file=sys.stderr)
    from ..web.app import serve

    return serve(args.data, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb)


def add_parsers(commands) -> None:
    """This module's subcommand on the ``dinseg`` parser."""
    web = commands.add_parser(
        "web", help="preview, segment and correct in the browser (pip install 'dinseg[web]')",
        description="Serve the DIN workflow as a web page (3D Slicer's core through trame-slicer): open an image, "
                    "preview the enhancement, segment in the background, correct with Segment Editor effects, "
                    "save. One shared session for every tab; no login, so it listens on 127.0.0.1 unless --host "
                    "says otherwise.")
    web.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s; 0: any free one)")
    web.add_argument("--host", default=LOOPBACK, help="address to listen on (default: %(default)s, this machine only)")
    web.add_argument("--data", default=".", metavar="DIR",
                     help="the folder whose images the page may open and write results next to (default: the "
                          "current folder)")
    web.add_argument("--max-upload-mb", type=float, default=4096, metavar="MB",
                     help="largest upload accepted, in MB (default: %(default)g)")
    web.set_defaults(handler=run_web)
