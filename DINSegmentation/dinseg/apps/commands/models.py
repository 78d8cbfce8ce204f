"""``dinseg models``: list, show and import model cards."""

from __future__ import annotations

from typing import List


#: the width `dinseg models` and `dinseg models show` keep to
TEXT_WIDTH = 100


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def format_model_list(cards) -> str:
    """One line per model, at most TEXT_WIDTH columns; classes shortened to fit."""
    header = ("name", "version", "modality", "size", "sha256", "classes")
    rows = [(c.name, c.version, f"{c.modality} {c.anatomy}".strip(), f"{c.weights.bytes / 1e6:.1f} MB",
             c.weights.sha256[:8], f"{len(c.labels)}: " + ", ".join(label.name for label in c.labels))
            for c in cards]
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header) - 1)]
    lines = []
    for row in [header] + rows:
        start = "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  "
        lines.append(start + _fit(row[-1], max(TEXT_WIDTH - len(start), 10)))
    lines.append("(no models installed)" if not cards else
                 "'dinseg models show NAME': the whole card (full SHA-256, training data, measured metrics)")
    return "\n".join(line.rstrip() for line in lines)


def format_model_card(card) -> str:
    """The whole card for a person, wrapped at TEXT_WIDTH columns."""
    import textwrap

    from ...models import user_models_dir

    def field(name: str, text: str) -> List[str]:
        return textwrap.wrap(f"{name}: {text}", TEXT_WIDTH, subsequent_indent="    ",
                             break_on_hyphens=False) or [f"{name}:"]

    preprocessing = card.preprocessing
    normalization = preprocessing.normalization
    training = card.training
    lines = [f"{card.name} {card.version}", *textwrap.wrap(card.description, TEXT_WIDTH, break_on_hyphens=False)]
    lines += field("task", card.task)
    lines += field("modality", f"{card.modality}" + (f", {card.anatomy}" if card.anatomy else ""))
    lines += field("classes", "; ".join(f"{label.value} {label.name} ({label.type.scheme} {label.type.value})"
                                        for label in card.labels))
    lines += field("input", f"{preprocessing.spacing[0]} x {preprocessing.spacing[1]} mm in-plane, "
                            f"{preprocessing.orientation} ({preprocessing.orientation_mode}), "
                            f"{normalization.kind} {normalization.low:g}..{normalization.high:g}, "
                            f"enhancement {preprocessing.enhancement.method}")
    cleanup = [name.replace("_", " ") for name, on in card.postprocessing.items() if on is True]
    if card.postprocessing.get("rotations", 1) > 1:
        cleanup.append(f"softmax averaged over {card.postprocessing['rotations']} test-time rotations")
    if card.postprocessing.get("class_weights"):
        names = ["background"] + [label.name for label in card.labels]
        cleanup.append("class weights " + ", ".join(f"{name} {weight:g}" for name, weight in
                                                    zip(names, card.postprocessing["class_weights"])))
    lines += field("post-processing", ", ".join(cleanup) or "none")
    lines += field("training data", str(training.get("data", "not recorded")))
    if training.get("command"):
        lines += field("trained with", f"{training['command']} ({training.get('wall_time_s', '?')} s, "
                                       f"{training.get('machine', 'machine not recorded')})")
    lines += field("measured", str(card.metrics.get("summary", "no measured metrics")))
    for key, value in card.metrics.items():
        if isinstance(value, dict) and value.get("command"):
            lines += field(f"  {key} measured with", str(value["command"]))
    lines += field("limitations", card.limitations or "none stated")
    lines += field("weights", f"{card.weights_path} ({card.weights.bytes / 1e6:.1f} MB, {card.weights.dtype})")
    lines += [f"sha256: {card.weights.sha256}"]
    lines += field("card", str(card.path))
    lines += field("imported models go to", f"{user_models_dir()} (set DINSEG_HOME to change)")
    return "\n".join(lines)


def run_models(args) -> int:
    from ...models import find_model, import_models, list_models

    if args.models_command == "import":
        for card in import_models(args.source):
            print(f"installed {card.name} {card.version} in {card.path.parent}")
        return 0
    if args.models_command == "show":
        print(format_model_card(find_model(args.name)))
        return 0
    print(format_model_list(list_models()))
    return 0


def add_parsers(commands) -> None:
    """This module's subcommands on the ``dinseg`` parser."""
    models = commands.add_parser("models", help="list or import model cards")
    models_commands = models.add_subparsers(dest="models_command", metavar="list|show|import")
    models_commands.add_parser("list", help="list installed models (the default)")
    models_show = models_commands.add_parser("show", help="the whole card of a model, for a person")
    models_show.add_argument("name", metavar="NAME", help="installed model name or card path")
    models_import = models_commands.add_parser("import", help="install models from a ZIP archive or folder")
    models_import.add_argument("source", metavar="ZIP|DIR")
    models.set_defaults(handler=run_models)
