"""The click benchmark: a robot user corrects one structure at a time, with the refiner or with balls.

For a case and a structure, from a starting mask (the bundled segmentation model's output, or the
reference degraded as in training with a fixed seed), the robot places up to ``max_clicks`` clicks
(:func:`~dinseg.interactive.clicks.robot_click`, each on the largest error of the current mask),
and after every click the structure is corrected by

- the refiner (:class:`~dinseg.interactive.refiner.Refiner`, all clicks so far; clicks after the
  first change voxels within ``--reach`` mm of a click only), or
- the ball baseline: the newest click adds (positive) or removes (negative) a 5 mm ball, no network.

Recorded per session: Dice after every click (index 0 = the start), seconds per correction, and
NoC@90 (clicks until Dice >= 0.9, ``max_clicks`` when never). At least 10 clicks are placed,
more only while Dice < 0.9. ``python -m dinseg.training.click_benchmark --card CARD`` runs it on the val
split of ACDC, BTCV and CHAOS and writes a JSON file and a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
from scipy import ndimage

from .data import load_split_file, open_dataset, split_cases
from ..interactive.clicks import Click, robot_click
from ..interactive.refiner import DEFAULT_REACH_MM, Refiner
from .refiner import FAMILIES, REPO, degrade

log = logging.getLogger("dinseg.refiner")

CHECKPOINTS = (0, 1, 3, 5, 10)
#: family -> the bundled model that gives the "model" starting masks
START_MODELS = {"acdc": "acdc-light", "btcv": "btcv-ct-light", "chaos": "chaos-mr-light"}
#: step(labels (z, y, x), clicks so far, oldest first) -> new labels
Step = Callable[[np.ndarray, List[Click]], np.ndarray]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def run_session(step: Step, start: np.ndarray, reference: np.ndarray, structure: int, spacing_zyx: Sequence[float],
                max_clicks: int = 20, min_clicks: int = 10, target: float = 0.9) -> Dict[str, object]:
    """One robot session: {"dice": [after 0..n clicks], "seconds": [per correction], "noc": NoC@target}.

    A perfect mask ends the session (Dice 1 is repeated up to ``min_clicks``; no click, no seconds).

    start: (z, y, x) labels; reference: (z, y, x) bool mask of ``structure``.
    """
    labels, clicks = start, []
    scores, seconds = [dice(labels == structure, reference)], []
    while len(clicks) < max_clicks and (len(clicks) < min_clicks or scores[-1] < target):
        click = robot_click(labels == structure, reference, spacing_zyx)
        if click is None:  # perfect: nothing left to click, Dice 1 from here on
            scores += [1.0] * max(min_clicks - len(clicks), 0)
            break
        clicks.append(click)
        began = time.perf_counter()
        labels = step(labels, clicks)
        seconds.append(time.perf_counter() - began)
        scores.append(dice(labels == structure, reference))
    reached = [k for k, score in enumerate(scores) if score >= target]
    return {"dice": scores, "seconds": seconds, "noc": reached[0] if reached else max_clicks}


def refiner_step(refiner, volume, structure: int) -> Step:
    """Corrections by the refiner with every click so far (points handed over as (i, j, k))."""
    def step(labels, clicks):
        positive = [c.point[::-1] for c in clicks if c.positive]
        negative = [c.point[::-1] for c in clicks if not c.positive]
        return refiner.refine(volume, labels, structure, positive, negative)
    return step


def ball_step(structure: int, spacing_zyx: Sequence[float], radius_mm: float = 5.0) -> Step:
    """The baseline: the newest click claims (positive) or releases (negative) a ball of ``radius_mm``."""
    def step(labels, clicks):
        click = clicks[-1]
        reach = [int(np.ceil(radius_mm / s)) for s in spacing_zyx]
        centre = [int(round(p)) for p in click.point]
        box = tuple(slice(max(0, c - r), min(n, c + r + 1)) for c, r, n in zip(centre, reach, labels.shape))
        grids = np.ogrid[tuple(slice(b.start, b.stop) for b in box)]
        ball = sum(((g - p) * s) ** 2 for g, p, s in zip(grids, click.point, spacing_zyx)) <= radius_mm ** 2
        result = labels.copy()
        region = result[box]
        if click.positive:
            region[ball] = structure
        else:
            region[ball & (region == structure)] = 0
        return result
    return step


def degraded_start(labels: np.ndarray, structure: int, spacing_zyx: Sequence[float], seed: int) -> np.ndarray:
    """Labels whose ``structure`` is its reference degraded as in training (around it, fixed ``seed``)."""
    reference = labels == structure
    pad = [int(np.ceil(40.0 / s)) for s in spacing_zyx]
    box = tuple(slice(max(0, b.start - p), min(n, b.stop + p))
                for b, p, n in zip(ndimage.find_objects(reference.astype(np.uint8))[0], pad, labels.shape))
    mask = degrade(reference[box], labels[box], structure, spacing_zyx, np.random.default_rng(seed))
    result = labels.copy()
    region = result[box]
    region[reference[box] & ~mask] = 0
    region[mask] = structure
    return result


def benchmark(refiner, data_root: Path, families: Sequence[str], start: str = "degraded", split: str = "val",
              max_clicks: int = 20, limit: int = 0) -> List[Dict[str, object]]:
    """Sessions (refiner and ball baseline) for every structure of every ``split`` case of ``families``."""
    sessions = []
    for family in families:
        folder, split_file = FAMILIES[family]
        dataset = open_dataset(data_root / folder)
        records = split_cases(dataset, load_split_file(split_file))[split]
        segmenter = None
        if start == "model":
            from ..models import find_model
            from ..pipeline.segmenter import Segmenter

            segmenter = Segmenter(find_model(START_MODELS[family]), device="cpu")
        for record in records[:limit or None]:
            volume, labels = record.load()
            spacing = tuple(reversed(volume.geometry.spacing))
            predicted = segmenter.segment(volume).labels if segmenter else None
            for structure in (int(v) for v in np.unique(labels) if v):
                reference = labels == structure
                initial = predicted if predicted is not None else degraded_start(
                    labels, structure, spacing, zlib.crc32(f"{record.case_id}/{structure}".encode()))
                row = {"family": family, "case": record.case_id, "structure": structure,
                       "name": dataset.class_names[structure - 1], "start": start, "reach_mm": refiner.reach_mm}
                for method, step in (("refiner", refiner_step(refiner, volume, structure)),
                                     ("ball", ball_step(structure, spacing))):
                    sessions.append({**row, "method": method,
                                     **run_session(step, initial, reference, structure, spacing, max_clicks)})
                log.info("%s %s %s: refiner %s, ball %s", family, record.case_id, row["name"],
                         _brief(sessions[-2]), _brief(sessions[-1]))
    return sessions


def _brief(session) -> str:
    return " ".join(f"{session['dice'][k]:.3f}" for k in CHECKPOINTS if k < len(session["dice"])) + \
        f" NoC90 {session['noc']}"


def table(sessions: List[Dict[str, object]]) -> str:
    """Markdown table: mean Dice after 0/1/3/5/10 clicks, NoC@90 and seconds per click, per structure
    and per family, refiner against ball baseline."""
    lines = ["| family | structure | n | method | " + " | ".join(f"Dice@{k}" for k in CHECKPOINTS) +
             " | NoC@90 | s/click mean | s/click p95 |", "|" + "---|" * (7 + len(CHECKPOINTS))]
    groups: Dict[tuple, List[dict]] = {}
    for s in sessions:
        groups.setdefault((s["family"], s["name"], s["method"]), []).append(s)
        groups.setdefault((s["family"], "(all)", s["method"]), []).append(s)
    for (family, name, method), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "(all)",
                                                                                 kv[0][1], kv[0][2])):
        means = [np.mean([m["dice"][k] for m in members]) for k in CHECKPOINTS]
        seconds = np.concatenate([m["seconds"] for m in members])
        timing = f"{seconds.mean():.3f} | {np.percentile(seconds, 95):.3f}" if len(seconds) else "- | -"
        lines.append(f"| {family} | {name} | {len(members)} | {method} | " + " | ".join(f"{v:.3f}" for v in means) +
                     f" | {np.mean([m['noc'] for m in members]):.1f} | {timing} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dinseg.training.click_benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--card", required=True, help="refiner card (.json) or its folder")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--start", default="degraded", choices=("degraded", "model"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--limit", type=int, default=0, help="first N cases per family (0: all)")
    parser.add_argument("--reach", type=float, default=DEFAULT_REACH_MM,
                        help="mm around the clicks that clicks after the first may change (0: the whole crop)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="JSON file for the sessions; the table goes beside it (.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import torch

    torch.set_num_threads(args.threads)
    sessions = benchmark(Refiner(args.card, args.reach or None), Path(args.data), args.families, args.start, args.split,
                         args.max_clicks, args.limit)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(sessions) + "\n")
    out.with_suffix(".md").write_text(table(sessions) + "\n")
    print(table(sessions))


if __name__ == "__main__":
    main()
