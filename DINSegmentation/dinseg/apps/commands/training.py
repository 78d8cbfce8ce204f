"""``dinseg train``, ``evaluate``, ``calibrate``, ``synth`` and ``ablation``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ...core.errors import InputError
from ...nets.config import TEST_TIME_ROTATIONS
from .common import DEVICE_HELP, add_cleanup_options, add_device_options

log = logging.getLogger("dinseg")


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--batch-size 4, --spacing 1.5 1.5, --enhancement '{"method": "gamma"}')."""
    import dataclasses

    from ...training.config import TrainConfig

    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if isinstance(default, bool):
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, tuple):
            parser.add_argument(flag, dest=field.name, nargs=len(default), type=type(default[0]), default=None,
                                metavar=field.name.upper())
        elif isinstance(default, dict):
            parser.add_argument(flag, dest=field.name, type=json.loads, default=None, metavar="JSON")
        else:
            parser.add_argument(flag, dest=field.name, type=type(default), default=None,
                                metavar=field.name.upper(), help=f"(default: {default})" if default != "" else None)


def training_config(args):
    """The config file (if any) with every flag given on the command line applied on top."""
    import dataclasses

    from ...training.config import TrainConfig

    data = {}
    if args.config:
        data = TrainConfig.from_file(args.config).to_dict()
    for field in dataclasses.fields(TrainConfig):
        value = getattr(args, field.name)
        if value is not None:
            data[field.name] = value
    return TrainConfig.from_dict(data)


class EpochProgressBar:
    """A progress bar per epoch on stderr (terminals only; the log carries a line per epoch)."""

    def __init__(self):
        self.enabled = sys.stderr.isatty()
        self.line_open = False

    def __call__(self, report) -> None:
        if not self.enabled:
            return
        if report.step == 1 and self.line_open:
            sys.stderr.write("\n")
        filled = int(30 * report.step / max(report.steps_per_epoch, 1))
        sys.stderr.write(f"\repoch {report.epoch}/{report.epochs} [{'#' * filled}{'.' * (30 - filled)}] "
                         f"{report.step}/{report.steps_per_epoch} loss {report.loss:.4f}")
        self.line_open = True
        if report.val_dice is not None:
            sys.stderr.write(f" validation Dice {report.val_dice:.4f}\n")
            self.line_open = False
        sys.stderr.flush()


def run_train(args) -> int:
    from ...training.train import DINTrainingLogic

    config = training_config(args)
    logic = DINTrainingLogic(config, progress=EpochProgressBar(), resume=args.resume)
    result = logic.run()
    if logic.distributed.is_main:
        print(f"dinseg: training finished after {result['epochs']} epoch(s); best model card: {result['best_card']}",
              file=sys.stderr)
    return 0


def _dataset_cases(args, card):
    """The cases of --split (or all) of --data, read with --layout and --label-map."""
    from ...training.data import load_split_file, open_dataset, split_cases

    label_map = None
    if args.label_map:  # values it does not name become background
        label_map = {value: 0 for value in range(256)}
        label_map.update({int(source): int(target) for source, target in args.label_map.items()})
    dataset = open_dataset(args.data, layout=args.layout, label_map=label_map)
    if args.split == "all":
        cases = dataset.cases
    else:
        splits = split_cases(dataset, load_split_file(args.split_file) if args.split_file else None,
                             val_fraction=args.val_fraction, seed=args.seed)
        cases = splits.get(args.split, [])
        if not cases:
            raise InputError(f"{args.data}: the {args.split!r} split is empty (splits: "
                             f"{', '.join(f'{k} {len(v)}' for k, v in splits.items())}); use --split all or --split-file")
    if [label.name for label in card.labels] != list(dataset.class_names):
        log.warning("model classes %s differ from the dataset's %s; scoring by label value",
                    [label.name for label in card.labels], dataset.class_names)
    return cases


def run_evaluate(args) -> int:
    from ...training.evaluate import CardiacAgreement, evaluate_cases, write_report
    from ...pipeline.segmenter import Segmenter
    from ...models import find_model

    card = find_model(args.model)
    cases = _dataset_cases(args, card)
    phases = {case.case_id: case.phase for case in cases}
    cardiac = CardiacAgreement(card.labels) if any(phases.values()) and card.is_cardiac else None
    segmenter = Segmenter(card, device=args.device, largest_component=args.largest_component,
                          fill_holes=args.fill_holes, rotations=args.rotations, precision=args.precision)
    per_case = evaluate_cases(card, cases, segmenter=segmenter, on_case=cardiac.add if cardiac else None)
    if not per_case:
        raise InputError("no labelled case to evaluate")
    report = write_report(per_case, [label.name for label in card.labels], args.output, phases=phases,
                          cardiac=cardiac)
    print(report.read_text(encoding="utf-8"))
    import torch

    print(f"dinseg: wrote {report} and {report.with_suffix('.csv')} ({card.name} {card.version}, device "
          f"{segmenter.device}, {torch.get_num_threads()} CPU threads)", file=sys.stderr)
    return 0


def run_calibrate(args) -> int:
    import shutil

    import numpy as np

    from ...training.calibrate import fit_class_weights
    from ...core.errors import ModelError
    from ...core.io import atomic_output, check_output_path
    from ...models import find_model, load_card, sha256_of

    if args.max_cases < 0:
        raise InputError(f"--max-cases must be 0 (all) or more, got {args.max_cases}")
    card = find_model(args.model)
    if args.rotations is not None:  # the weights are fitted for, and kept with, this test-time augmentation
        card.postprocessing = dict(card.postprocessing, rotations=args.rotations)
    output = Path(args.output)
    if output.resolve() == card.path.parent.resolve():
        raise InputError(f"{output}: that is the model's own folder; write the calibrated card elsewhere")
    # before the fit (minutes): the folder, or the one it will be made in, must take files
    check_output_path((output if output.is_dir() else output.parent) / f"{card.name}.json", extensions=(".json",))
    cases = _dataset_cases(args, card)
    if args.max_cases and len(cases) > args.max_cases:
        cases = [cases[int(i)] for i in np.linspace(0, len(cases) - 1, args.max_cases).round()]
    calibration = fit_class_weights(card, cases, device=args.device, precision=args.precision)
    card.postprocessing = dict(card.postprocessing, class_weights=calibration.class_weights)
    card.training = dict(card.training, calibration={
        "command": " ".join(["dinseg calibrate --model", args.model, "--data", args.data, "--split", args.split]
                            + (["--split-file", args.split_file] if args.split_file else [])
                            + (["--rotations", str(args.rotations)] if args.rotations is not None else [])
                            + ["--max-cases", str(args.max_cases), "-o", args.output]),
        "cases": calibration.cases,
        "class_weights": calibration.class_weights, "mean_dice_before": round(calibration.dice_before, 4),
        "mean_dice_after": round(calibration.dice_after, 4)})
    card.metrics = {}  # they described the model without the weights: measure it again (dinseg evaluate)
    output.mkdir(parents=True, exist_ok=True)
    weights_path, card_path = output / card.weights.file, output / f"{card.name}.json"
    with atomic_output(weights_path) as temporary:
        shutil.copyfile(card.weights_path, temporary)
        if sha256_of(temporary) != card.weights.sha256:
            raise ModelError(f"{card.weights_path}: its SHA-256 does not match the card")
    try:
        card.save(card_path)
    except BaseException:
        weights_path.unlink()  # no weights without their card
        raise
    load_card(card_path)  # reads back and checks the weights it names
    names = ["background"] + [label.name for label in card.labels]
    print("| class | weight |\n|---|---|")
    for name, weight in zip(names, calibration.class_weights):
        print(f"| {name} | {weight:g} |")
    print(f"\nmean Dice on the {calibration.cases} fitting cases: {calibration.dice_before:.4f} -> "
          f"{calibration.dice_after:.4f} ({calibration.evaluations} weightings tried)")
    print(f"dinseg: wrote {card_path}", file=sys.stderr)
    return 0


def run_synth(args) -> int:
    from ...training.synth import DEGRADATION_LEVELS, write_acdc_phantom

    level = DEGRADATION_LEVELS.get(args.degradation)
    if level is None:
        try:
            level = float(args.degradation)
        except ValueError:
            raise InputError(f"--degradation takes {', '.join(DEGRADATION_LEVELS)} or a number in [0, 1]") from None
    folders = write_acdc_phantom(args.output, args.cases, level, args.seed, first_id=args.first_id)
    print(f"dinseg: wrote {len(folders)} synthetic phantom case(s) (degradation {level}) in ACDC layout to "
          f"{args.output}", file=sys.stderr)
    return 0


def run_ablation(args) -> int:
    from ...training.ablation import plan_from_args, run_ablation

    plan = plan_from_args(args)
    run_ablation(plan)
    print((Path(plan.output) / "ablation.md").read_text(encoding="utf-8"))
    return 0


def add_parsers(commands) -> None:
    """This module's subcommands on the ``dinseg`` parser."""
    train = commands.add_parser("train", help="train a DIN model (CPU, GPU, or torchrun for several)",
                                description="Train on an ACDC, Synapse, BTCV or MSD/nnU-Net folder. CONFIG (YAML or "
                                            "JSON) sets any option (base: FILE, beside it, supplies those it leaves "
                                            "out); flags override it. Under torchrun, trains with "
                                            "DistributedDataParallel.")
    train.add_argument("config", nargs="?", metavar="CONFIG")
    train.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoint")
    train.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: PyTorch's, all cores)")
    _add_train_options(train)
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser("evaluate", help="per-case, per-class Dice and HD95 of a model on a dataset")
    evaluate.add_argument("--model", required=True, help="model name or card path")
    evaluate.add_argument("--data", required=True, help="dataset folder (ACDC, Synapse, BTCV, MSD/nnU-Net)")
    evaluate.add_argument("--split", default="test", help="train, val, test or all (default: %(default)s)")
    evaluate.add_argument("--split-file", help="JSON/YAML with the case lists of each split")
    evaluate.add_argument("--layout", default="auto")
    evaluate.add_argument("--label-map", type=json.loads, metavar="JSON",
                          help='the data\'s label values -> the model\'s, e.g. \'{"5": 1, "7": 4}\' (others: background)')
    evaluate.add_argument("--val-fraction", type=float, default=0.2)
    evaluate.add_argument("--seed", type=int, default=0)
    add_device_options(evaluate)
    evaluate.add_argument("-o", "--output", default="evaluation", help="folder for evaluation.csv and .md")
    add_cleanup_options(evaluate)
    evaluate.set_defaults(handler=run_evaluate)

    calibrate = commands.add_parser(
        "calibrate", help="fit class weights that correct a model's systematic bias, on training cases",
        description="Segment labelled cases once, then search one factor per class on its probability (before the "
                    "arg-max) that maximises the mean Dice; write a copy of the card with them in OUTPUT. Fit on "
                    "training cases, never on those you measure the model on.")
    calibrate.add_argument("--model", required=True, help="model name or card path")
    calibrate.add_argument("--data", required=True, help="dataset folder (ACDC, Synapse, BTCV, MSD/nnU-Net)")
    calibrate.add_argument("--split", default="train", help="train or all (default: %(default)s)")
    calibrate.add_argument("--split-file", help="JSON/YAML with the case lists of each split")
    calibrate.add_argument("--layout", default="auto")
    calibrate.add_argument("--label-map", type=json.loads, metavar="JSON", help="as for evaluate")
    calibrate.add_argument("--val-fraction", type=float, default=0.2)
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument("--max-cases", type=int, default=40,
                           help="at most this many cases, evenly spread over the split (default: %(default)s; 0: all)")
    calibrate.add_argument("--rotations", type=int, choices=TEST_TIME_ROTATIONS, default=None,
                           help="test-time rotations to fit the weights for, kept on the written card (default: the card's)")
    add_device_options(calibrate)
    calibrate.add_argument("-o", "--output", required=True, help="folder for the calibrated card and its weights")
    calibrate.set_defaults(handler=run_calibrate)

    synth = commands.add_parser("synth", help="write a synthetic cardiac short-axis PHANTOM in the ACDC layout")
    synth.add_argument("output", metavar="OUT")
    synth.add_argument("--cases", type=int, default=20)
    synth.add_argument("--degradation", default="moderate", help="mild, moderate, severe or a number in [0, 1]")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--first-id", type=int, default=1, help="first patient number")
    synth.set_defaults(handler=run_synth)

    ablation = commands.add_parser("ablation", help="single vs concat vs difm vs image, trained and scored alike",
                                   description="Train the fusion variants from one training "
                                               "configuration (data, split, preprocessing, preset) with the same "
                                               "budget and seeds; score each on its validation patients; print a "
                                               "table (also ablation.md and ablation.csv in --output).")
    ablation.add_argument("config", metavar="CONFIG", help="training configuration, e.g. configs/acdc-light.yaml")
    ablation.add_argument("--output", help="work folder (default: runs/ablation)")
    ablation.add_argument("--variants", nargs="+", metavar="VARIANT",
                          help="single, concat, difm or image, each optionally with +consistency (ConDSeg's "
                               "consistency reinforcement), e.g. difm+consistency (default: single concat difm)")
    ablation.add_argument("--seeds", nargs="+", type=int, help="training seeds (default: 0 1)")
    ablation.add_argument("--epochs", type=int, help="epochs per run (default: the configuration's)")
    ablation.add_argument("--iterations-per-epoch", type=int, help="(default: the configuration's)")
    ablation.add_argument("--device", help=DEVICE_HELP.replace(" (default: %(default)s)", ""))
    ablation.set_defaults(handler=run_ablation)
