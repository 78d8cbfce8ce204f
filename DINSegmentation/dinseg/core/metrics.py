"""Segmentation metrics as the DIN paper reports them: per-class Dice and HD95 in millimetres."""

from __future__ import annotations

import math
import warnings
from typing import Dict, List, Sequence

import numpy as np


def dice_and_hd95(prediction: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float],
                  num_classes: int) -> Dict[int, Dict[str, float]]:
    """Per foreground class: Dice and 95th-percentile Hausdorff distance (mm), with MONAI.

    prediction, truth: (z, y, x) integer labels on the same grid; spacing_zyx in mm. A class
    absent from both gives NaN for both (left out of means); present in only one gives Dice 0
    and HD95 NaN (undefined), so a missed organ lowers Dice without an arbitrary distance.
    """
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    classes = range(1, num_classes)
    pred = torch.from_numpy(np.stack([prediction == c for c in classes]))[None].float()  # (1, K-1, z, y, x)
    true = torch.from_numpy(np.stack([truth == c for c in classes]))[None].float()
    dice = compute_dice(pred, true, include_background=True, ignore_empty=True)[0]
    present_both = (pred.flatten(2).any(-1) & true.flatten(2).any(-1))[0]
    hd95 = torch.full((num_classes - 1,), float("nan"))
    if present_both.any():
        index = present_both.nonzero().flatten()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecation notice inside
            hd95[index] = compute_hausdorff_distance(pred[:, index], true[:, index], include_background=True,
                                                     percentile=95, spacing=list(spacing_zyx))[0].float()
    results = {}
    for position, value in enumerate(classes):
        in_pred, in_true = bool(pred[0, position].any()), bool(true[0, position].any())
        results[value] = {"dice": float(dice[position]) if in_true else (0.0 if in_pred else math.nan),
                          "hd95": float(hd95[position])}
    return results


def mean_ignoring_nan(values: List[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarize(per_case: Dict[str, Dict[int, Dict[str, float]]], class_names: Sequence[str]) -> Dict[str, float]:
    """Means over cases per class, and the mean over classes (the paper's headline numbers)."""
    summary = {}
    for value, name in enumerate(class_names, start=1):
        for metric in ("dice", "hd95"):
            summary[f"{metric}/{name}"] = mean_ignoring_nan([case[value][metric] for case in per_case.values()])
    for metric in ("dice", "hd95"):
        summary[f"{metric}/mean"] = mean_ignoring_nan([summary[f"{metric}/{name}"] for name in class_names])
    return summary
