"""``dinseg refine``: correct one structure of a segmentation with positive and negative clicks;
``dinseg bench-worker``: what the warm engine and a click cost."""

from __future__ import annotations

import sys

from .common import frame_number



def run_refine(args) -> int:
    from ...pipeline.refine import parse_point, read_markups, refine_file

    positive = [parse_point(text) for text in args.positive]
    negative = [parse_point(text) for text in args.negative]
    if args.points:
        from_file = read_markups(args.points)
        positive, negative = positive + from_file[0], negative + from_file[1]
    refiner = None
    if args.refiner:
        from ...interactive.refiner import Refiner

        refiner = Refiner(args.refiner)
    result = refine_file(args.image, args.segmentation, args.output, args.structure, positive, negative,
                         frame=args.frame, refiner=refiner)
    print(f"dinseg: wrote {result.output}: {result.structure.name} {result.voxels_before} -> "
          f"{result.voxels_after} voxels after {len(positive)} positive and {len(negative)} negative click(s) "
          f"({result.seconds:.2f} s)", file=sys.stderr)
    return 0


def add_parsers(commands) -> None:
    """This module's subcommands on the ``dinseg`` parser."""
    refine = commands.add_parser(
        "refine", help="correct one structure of a segmentation with clicks",
        description="Correct one structure with positive (part of it) and negative (not part of it) clicks: "
                    "a refinement network redraws the structure around its current mask and the clicks; "
                    "every other structure is kept, except the voxels the corrected one claims.")
    refine.add_argument("image", metavar="IMAGE", help="the image (file or DICOM folder) the segmentation is on")
    refine.add_argument("--segmentation", required=True, metavar="CURRENT",
                        help="the current segmentation: a .seg.nrrd or a labelmap on the image's grid")
    refine.add_argument("-o", "--output", required=True,
                        help="the corrected segmentation: .seg.nrrd, a labelmap (.nrrd, .nii.gz, .nii, .mha) or "
                             ".dcm (DICOM SEG, for a DICOM image)")
    refine.add_argument("--structure", required=True, metavar="NAME",
                        help="the structure to correct, by name (e.g. pancreas, 'right ventricle') or label value")
    refine.add_argument("--positive", action="append", default=[], metavar="X,Y,Z",
                        help="a point inside the structure, LPS millimetres (ITK's physical space); repeat; write "
                             "--positive=-12,30,4 when X is negative")
    refine.add_argument("--negative", action="append", default=[], metavar="X,Y,Z",
                        help="a point that is not part of the structure, LPS millimetres; repeat")
    refine.add_argument("--points", metavar="FILE.mrk.json",
                        help="Slicer markups (RAS or LPS as the file says); a point is positive or negative by "
                             "the first character of its label or description (+ or -), else by its list's name "
                             "(positive/include or negative/exclude)")
    refine.add_argument("--frame", type=frame_number, metavar="N", help="for a 4D cine: the frame, from 1")
    refine.add_argument("--refiner", metavar="CARD", help="a refiner card (default: the bundled one)")
    refine.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: PyTorch's, all cores)")
    refine.set_defaults(handler=run_refine)

    bench = commands.add_parser("bench-worker", help="benchmark: Segment cold vs in the warm worker, and a click",
                                description="Median wall time of a Segment in a new process and in the warm worker "
                                            "(model kept loaded), and of one click of the refiner.")
    bench.add_argument("--data", default="../shared/data", help="the shared data folder (for the cine case)")
    bench.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    bench.add_argument("--repeats", type=int, default=3, help="runs per measurement (default: %(default)s)")
    bench.set_defaults(handler=run_bench_worker)

    clicks = commands.add_parser("bench-interactive", help="benchmark: the robot user's clicks, refiner vs 5 mm balls",
                                 description="For each structure of the val cases: Dice after 0, 1, 3, 5, 10 clicks, "
                                             "NoC@90 and seconds per click, refiner against the ball baseline.")
    clicks.add_argument("--out", required=True, help="JSON file of the sessions; the table goes beside it (.md)")
    clicks.add_argument("--families", nargs="+", default=["acdc", "btcv", "chaos"])
    clicks.add_argument("--start", default="degraded", choices=("degraded", "model"))
    clicks.add_argument("--limit", type=int, default=0, help="first N cases per family (0: all)")
    clicks.add_argument("--threads", type=int, default=1)
    clicks.set_defaults(handler=run_bench_interactive)


def run_bench_interactive(args) -> int:
    from ...interactive.card import BUNDLED_REFINER
    from ...training.click_benchmark import main

    main(["--card", str(BUNDLED_REFINER), "--families", *args.families, "--start", args.start, "--limit",
          str(args.limit), "--threads", str(args.threads), "--out", args.out])
    return 0


def run_bench_worker(args) -> int:
    from pathlib import Path

    from ..bench_worker import format_table, rows

    print(format_table(rows(Path(args.data), threads=args.threads, repeats=args.repeats)), end="")
    return 0
