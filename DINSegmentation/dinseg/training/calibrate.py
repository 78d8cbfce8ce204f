"""Class weights fitted on labelled cases: a prior correction of a model's systematic bias.

A network trained with a Dice loss tends to draw a thin structure (the myocardium) too thick
and a neighbouring cavity too small on every patient alike. Multiplying each class's
probability by a factor before the arg-max moves those boundaries back. The factors are
searched on training cases (never on the cases the model is measured on): each case is
segmented once, its probabilities kept, and the mean Dice over cases and classes is
maximised one class at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..core.errors import InputError

log = logging.getLogger("dinseg")

#: the factors tried on one class's current weight in each round
STEPS = (0.5, 0.7, 1.4, 2.0)


@dataclass
class Calibration:
    """The fitted weights (background first) and the mean Dice on the fitting cases before and after."""

    class_weights: List[float]
    dice_before: float
    dice_after: float
    cases: int
    evaluations: int


@dataclass
class _RecordedCase:
    batches: List[Tuple[object, Tuple[int, int]]]   # ((B, K, h, w) probabilities, (H, W) slice shape)
    reorientation: object
    truth: np.ndarray                                # (z, y, x) expert labels on the input grid


def fit_class_weights(card, cases: Sequence, device: str = "cpu", rounds: int = 6,
                      progress: Optional[Callable[[str, int, int], None]] = None,
                      precision: str = "auto") -> Calibration:
    """Search one weight per class (background fixed at 1) that maximises the mean Dice.

    cases: :class:`dinseg.training.data.CaseRecord` objects with labels (3D volumes). The segmentation is
    the card's own (its clean-up included), so the weights are fitted to what users get.
    """
    from ..pipeline.segmenter import Segmenter

    progress = progress or (lambda stage, done, total: None)
    record: list = []
    segmenter = Segmenter(card, device=device, class_weights=[1.0] * card.num_classes, record=record,
                          precision=precision)
    recorded: List[_RecordedCase] = []
    for index, case in enumerate(cases):
        volume, truth = case.load()
        if truth is None or volume.is_time_series:
            raise InputError(f"{case.case_id}: calibration needs 3D volumes with labels")
        record.clear()
        segmenter.segment(volume)
        recorded.append(_RecordedCase(list(record), card.preprocessing.reorientation(volume.geometry), truth))
        progress("segment", index + 1, len(cases))
    if not recorded:
        raise InputError("no labelled case to calibrate on")

    weights = np.ones(card.num_classes)
    before = best = _mean_dice(segmenter, recorded, weights)
    evaluations = 1
    for round_index in range(rounds):
        improved = False
        for label in range(1, card.num_classes):
            for step in STEPS:
                trial = weights.copy()
                trial[label] *= step
                score = _mean_dice(segmenter, recorded, trial)
                evaluations += 1
                if score > best + 1e-4:
                    best, weights, improved = score, trial, True
        progress("search", round_index + 1, rounds)
        log.info("calibration round %d: mean Dice %.4f, class weights %s", round_index + 1, best,
                 ", ".join(f"{w:.3g}" for w in weights))
        if not improved:
            break
    return Calibration([round(float(w), 4) for w in weights], before, best, len(recorded), evaluations)


def _mean_dice(segmenter, recorded: Sequence[_RecordedCase], weights: np.ndarray) -> float:
    """Mean Dice over cases and classes (a class absent from both prediction and truth is skipped)."""
    import torch

    from ..core.preprocess import labels_at_size

    factors = torch.tensor(weights, dtype=torch.float32).view(1, -1, 1, 1)
    scores = []
    for case in recorded:
        canonical = torch.cat([labels_at_size(probabilities * factors, shape)
                               for probabilities, shape in case.batches]).to(torch.uint8).numpy()
        prediction = segmenter.to_input_grid(canonical, case.reorientation)
        for label in range(1, len(weights)):
            predicted, true = prediction == label, case.truth == label
            total = int(predicted.sum()) + int(true.sum())
            if total:
                scores.append(2.0 * int((predicted & true).sum()) / total)
    return float(np.mean(scores))
