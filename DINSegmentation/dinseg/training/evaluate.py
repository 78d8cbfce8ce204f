"""Evaluation on whole volumes: per-case, per-class Dice and HD95 (mm), as CSV and a markdown table."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Sequence

import numpy as np

from ..core.metrics import dice_and_hd95

log = logging.getLogger("dinseg")

#: per_case[case_id][label value] = {"dice": float, "hd95": float}
PerCase = Dict[str, Dict[int, Dict[str, float]]]


def evaluate_cases(card, cases, device: str = "auto", segmenter=None,
                   on_case: Optional[Callable[[object, np.ndarray, np.ndarray, object], None]] = None) -> PerCase:
    """Segment each labelled case with the model and score it on the case's own grid.

    cases: :class:`dinseg.training.data.CaseRecord` objects; cases without labels are skipped with a
    message. The segmentation goes through the same :class:`~dinseg.pipeline.segmenter.Segmenter` as
    ``dinseg segment``, so these numbers describe what users get. on_case(case, prediction,
    truth, geometry) sees each case's (z, y, x) labels.
    """
    from ..pipeline.segmenter import Segmenter

    segmenter = segmenter or Segmenter(card, device=device)
    per_case: PerCase = {}
    for case in cases:
        volume, truth = case.load()
        if truth is None:
            log.info("skipping %s: it has no labels", case.case_id)
            continue
        prediction = segmenter.segment(volume).labels
        per_case[case.case_id] = dice_and_hd95(prediction, truth, tuple(reversed(volume.geometry.spacing)),
                                               card.num_classes)
        if on_case is not None:
            on_case(case, prediction, truth, volume.geometry)
    return per_case


def _mean_std(values: Sequence[float]):
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return float(np.mean(finite)), float(np.std(finite))


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table (ending in a newline) from a header and rows of cell strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def markdown_report(per_case: PerCase, class_names: Sequence[str]) -> str:
    """A markdown table: one row per case, then mean ± standard deviation over cases."""
    header = ["case"] + [f"{name} Dice" for name in class_names] + ["mean Dice"] + \
             [f"{name} HD95" for name in class_names] + ["mean HD95 (mm)"]
    rows = []
    case_means = {}
    for case_id, scores in per_case.items():
        dice = [scores[v]["dice"] for v in range(1, len(class_names) + 1)]
        hd95 = [scores[v]["hd95"] for v in range(1, len(class_names) + 1)]
        case_means[case_id] = (_mean_std(dice)[0], _mean_std(hd95)[0])
        cells = [case_id] + [f"{d:.3f}" for d in dice] + [f"{case_means[case_id][0]:.3f}"] + \
                [f"{h:.1f}" for h in hd95] + [f"{case_means[case_id][1]:.1f}"]
        rows.append([cell.replace("nan", "n/a") for cell in cells])
    summary = ["**mean ± sd**"]
    for metric, position, digits in (("dice", 0, 3), ("hd95", 1, 1)):
        for value in range(1, len(class_names) + 1):
            summary.append(format_mean_std(*_mean_std([s[value][metric] for s in per_case.values()]), digits))
        summary.append(format_mean_std(*_mean_std([m[position] for m in case_means.values()]), digits))
    rows.append(summary)
    return markdown_table(header, rows)


def phase_report(per_case: PerCase, phases: Dict[str, str], class_names: Sequence[str]) -> str:
    """Mean ± sd Dice and HD95 per class for each cardiac phase (ED, ES), as the ACDC challenge reports."""
    header = ["phase", "cases"] + [f"{name} Dice" for name in class_names] + ["mean Dice"] + \
             [f"{name} HD95 (mm)" for name in class_names]
    rows = []
    for phase in sorted(set(phases.values())):
        scores = [per_case[case_id] for case_id, p in phases.items() if p == phase and case_id in per_case]
        values = range(1, len(class_names) + 1)
        dice = [format_mean_std(*_mean_std([s[v]["dice"] for s in scores])) for v in values]
        case_dice = [_mean_std([s[v]["dice"] for v in values])[0] for s in scores]
        hd95 = [format_mean_std(*_mean_std([s[v]["hd95"] for s in scores]), 1) for v in values]
        rows.append([phase, str(len(scores))] + dice + [format_mean_std(*_mean_std(case_dice))] + hd95)
    return markdown_table(header, rows)


#: (figure key, column title) compared between the model's labels and the expert's
CARDIAC_FIGURES = (("lv_ef_percent", "LV EF (%)"), ("rv_ef_percent", "RV EF (%)"), ("lv_edv_ml", "LV EDV (mL)"),
                   ("lv_esv_ml", "LV ESV (mL)"), ("rv_edv_ml", "RV EDV (mL)"), ("rv_esv_ml", "RV ESV (mL)"),
                   ("lv_mass_g", "LV mass (g)"))


class CardiacAgreement:
    """Collects ED and ES labels per patient during :func:`evaluate_cases` (pass :meth:`add` as
    on_case) and compares the cardiac function of the model's labels with the expert's."""

    def __init__(self, label_infos):
        self.label_infos = label_infos
        self.frames: Dict[str, Dict[str, tuple]] = {}

    def add(self, case, prediction: np.ndarray, truth: np.ndarray, geometry) -> None:
        if case.phase in ("ED", "ES"):
            self.frames.setdefault(case.group, {})[case.phase] = (prediction, truth, geometry.spacing)

    def figures(self) -> Dict[str, Dict[str, Dict[str, float]]]:
        """patient -> {"model": figures, "expert": figures}, ED and ES as the dataset names them."""
        from ..reports.cardiac import cardiac_function

        results = {}
        for patient, phases in sorted(self.frames.items()):
            if set(phases) != {"ED", "ES"}:
                continue
            (ed_pred, ed_true, spacing), (es_pred, es_true, _) = phases["ED"], phases["ES"]
            results[patient] = {
                source: cardiac_function(frames, spacing, self.label_infos, ed_frame=0, es_frame=1).figures
                for source, frames in (("model", [ed_pred, es_pred]), ("expert", [ed_true, es_true]))}
        return results

    def report(self) -> str:
        """Markdown: mean absolute error, bias (model - expert) and the worst error of each figure."""
        figures = self.figures()
        if not figures:
            return ""
        rows = []
        for key, title in CARDIAC_FIGURES:
            errors = [f["model"][key] - f["expert"][key] for f in figures.values()
                      if f["model"].get(key) is not None and f["expert"].get(key) is not None]
            if not errors:
                continue
            errors = np.asarray(errors)
            rows.append([title, str(len(errors)), f"{np.abs(errors).mean():.1f}",
                         f"{errors.mean():+.1f} ± {errors.std():.1f}", f"{np.abs(errors).max():.1f}"])
        return markdown_table(["figure", "patients", "mean absolute error", "bias ± sd (model - expert)",
                               "largest error"], rows)


def write_report(per_case: PerCase, class_names: Sequence[str], folder, phases: Optional[Dict[str, str]] = None,
                 cardiac: Optional[CardiacAgreement] = None) -> Path:
    """Write ``evaluation.csv`` (one row per case and class) and ``evaluation.md`` (per case; per
    cardiac phase and the cardiac-function agreement when given); returns the markdown path."""
    from ..core.io import atomic_output

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output(folder / "evaluation.csv") as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(["case", "class", "dice", "hd95_mm"])
            for case_id, scores in per_case.items():
                for value, name in enumerate(class_names, start=1):
                    writer.writerow([case_id, name, scores[value]["dice"], scores[value]["hd95"]])
    text = markdown_report(per_case, class_names)
    if phases and any(phases.values()):
        text += "\nPer phase:\n\n" + phase_report(per_case, phases, class_names)
    agreement = cardiac.report() if cardiac is not None else ""
    if agreement:
        text += "\nCardiac function, model against expert labels (ED and ES frames as the dataset names them):\n\n"
        text += agreement
    markdown = folder / "evaluation.md"
    with atomic_output(markdown) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return markdown

