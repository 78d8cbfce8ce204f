"""``dinseg web``: the DIN workflow in the browser (trame-slicer), on this machine's loopback by default."""

from __future__ import annotations

import importlib.util
import os
import sys

from ...core.errors import DinsegError

LOOPBACK = "127.0.0.1"
LOOPBACK_NAMES = (LOOPBACK, "localhost", "::1")
#: where a scripted caller may put the token instead of --token (not visible in the process list)
TOKEN_VARIABLE = "DINSEG_WEB_TOKEN"


def run_web(args) -> int:
    if any(importlib.util.find_spec(name) is None for name in ("trame_slicer", "slicer", "trame")):
        raise DinsegError("the web front end needs: pip install 'dinseg[web]'")
    if args.max_upload_mb <= 0:
        raise DinsegError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    from ..web.access import check_token, new_token

    loopback = args.host in LOOPBACK_NAMES
    if args.no_token and not loopback:
        raise DinsegError(f"--no-token serves the page to anyone who reaches {args.host}: it is allowed on "
                          "loopback (127.0.0.1) only")
    if bool(args.certfile) != bool(args.keyfile):
        raise DinsegError("HTTPS needs both --certfile and --keyfile")
    for path in (args.certfile, args.keyfile):
        if path and not os.path.isfile(path):
            raise DinsegError(f"{path}: no such file")
    token = None
    if not args.no_token:
        given = args.token or os.environ.get(TOKEN_VARIABLE)
        try:
            token = check_token(given) if given else new_token()
        except ValueError as error:
            raise DinsegError(str(error)) from None
    else:
        print("dinseg web: WARNING: --no-token: every user of this machine can open the page and its data",
              file=sys.stderr)
    if not loopback and not args.certfile:
        print(f"dinseg web: WARNING: listening on {args.host} without --certfile/--keyfile: the traffic, token "
              "and images included, is not encrypted", file=sys.stderr)
    from ..web.app import serve

    return serve(args.data, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, token=token,
                 certfile=args.certfile, keyfile=args.keyfile)


def add_parsers(commands) -> None:
    """This module's subcommand on the ``dinseg`` parser."""
    web = commands.add_parser(
        "web", help="preview, segment and correct in the browser (pip install 'dinseg[web]')",
        description="Serve the DIN workflow as a web page (3D Slicer's core through trame-slicer): open an image, "
                    "preview the enhancement, segment in the background, correct with Segment Editor effects, "
                    "save. One shared session for every tab. It listens on 127.0.0.1 unless --host says "
                    "otherwise, and lets in only requests that carry its token (printed in the page's address).")
    web.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s; 0: any free one)")
    web.add_argument("--host", default=LOOPBACK, help="address to listen on (default: %(default)s, this machine only)")
    web.add_argument("--data", default=".", metavar="DIR",
                     help="the folder whose images the page may open and write results next to (default: the "
                          "current folder)")
    web.add_argument("--max-upload-mb", type=float, default=4096, metavar="MB",
                     help="largest upload accepted, in MB (default: %(default)g)")
    web.add_argument("--token", help=f"the secret every request must carry (default: ${TOKEN_VARIABLE}, else a "
                                      "random one, printed in the address)")
    web.add_argument("--no-token", action="store_true",
                     help="serve without a token: on loopback only (every user of this machine can open the page)")
    web.add_argument("--certfile", help="serve HTTPS with this certificate (PEM), with --keyfile")
    web.add_argument("--keyfile", help="the certificate's private key (PEM)")
    web.set_defaults(handler=run_web)
