"""Evaluation on whole volumes: per-case, per-class Dice and HD95 (mm), as CSV and a markdown table."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import numpy as np

from .metrics import dice_and_hd95

log = logging.getLogger("dinseg")

#: per_case[case_id][label value] = {"dice": float, "hd95": float}
PerCase = Dict[str, Dict[int, Dict[str, float]]]


def evaluate_cases(card, cases, device: str = "auto", segmenter=None) -> PerCase:
    """Segment each labelled case with the model and score it on the case's own grid.

    cases: :class:`dinseg.data.CaseRecord` objects; cases without labels are skipped with a
    message. The segmentation goes through the same :class:`~dinseg.infer.Segmenter` as
    ``dinseg segment``, so these numbers describe what users get.
    """
    from .infer import Segmenter

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


def write_report(per_case: PerCase, class_names: Sequence[str], folder) -> Path:
    """Write ``evaluation.csv`` (one row per case and class) and ``evaluation.md``; returns the markdown path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "evaluation.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case", "class", "dice", "hd95_mm"])
        for case_id, scores in per_case.items():
            for value, name in enumerate(class_names, start=1):
                writer.writerow([case_id, name, scores[value]["dice"], scores[value]["hd95"]])
    markdown = folder / "evaluation.md"
    markdown.write_text(markdown_report(per_case, class_names), encoding="utf-8")
    return markdown


def case_mean_dice(per_case: PerCase) -> List[float]:
    """Mean Dice over classes for each case (NaN classes left out)."""
    return [_mean_std([s["dice"] for s in scores.values()])[0] for scores in per_case.values()]
