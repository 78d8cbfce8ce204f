"""Training the refinement network with simulated users (``python -m dinseg.training.refiner``).

Data: the ``train`` split of ACDC (cardiac cine MR), BTCV (abdominal CT) and CHAOS (abdominal T2
MR), read with ``dinseg.training.data`` and preprocessed once into a cache of npz files (image
normalised to [0, 1] as float16, labels uint8, spacing), ``<run>/cache/<family>/<case>.npz``.

One sample: a family (uniformly), a case, a structure, and a slab of at most ``--slab`` slices of
it. The structure's reference is degraded into a starting mask (erode / dilate, shift, blobs
dropped or added, slices removed, a piece of a neighbouring structure taken or given), the robot
user clicks on its largest error, and the click loop is simulated: with 1 to 3 clicks the network
is run without gradients, the next robot click goes to the largest error of its output, and the
last pass, with all clicks, is trained (Dice + BCE against the resampled reference).

Wall-clock budget (``--minutes``, counted over resumed runs too), cosine learning-rate decay over
it, a checkpoint every ``--checkpoint-minutes`` (``<run>/checkpoint.pt``, ``--resume``), a fixed
monitoring set drawn from the val split (never trained on) logged as Dice before / after one click,
and at the end float16 weights with a refiner card in ``<run>/model/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from ..core.preprocess import normalize
from .data import load_split_file, open_dataset, split_cases
from ..interactive.card import DEFAULT_NORMALISATION, write_refiner
from ..interactive.clicks import robot_click
from ..interactive.crop import CropBox, crop_box, extract, network_input, paste, resample, to_window
from ..interactive.network import RefinerConfig, build_refiner_network

log = logging.getLogger("dinseg.refiner")

REPO = Path(__file__).resolve().parents[3]
#: family -> (data folder under the shared data root, split file)
FAMILIES = {"acdc": ("acdc", REPO / "configs/data/acdc/splits.json"),
            "btcv": ("btcv_synapse", REPO / "configs/data/btcv/splits.json"),
            "chaos": ("chaos_mr_t2", REPO / "configs/data/chaos-mr/splits.json")}
TRAINING_DATA = ("ACDC train split (cardiac cine MR, Bernard et al. 2018, research use); BTCV train split "
                 "(abdominal CT, Landman et al. 2015, BTCV/Synapse data-use terms); CHAOS T2-SPIR train split "
                 "(abdominal MR, Kavur et al. 2021, CC BY-NC-SA 4.0: non-commercial)")
DESCRIPTION = "Class-agnostic click refinement: corrects one structure's mask from positive and negative clicks."

Case = Tuple[np.ndarray, np.ndarray, Tuple[float, float, float]]  # image01 (Z,Y,X) f16, labels u8, spacing zyx


# -- cache -----------------------------------------------------------------------------------

def build_cache(data_root: Path, cache: Path, splits=("train", "val")) -> Dict[str, Dict[str, List[Path]]]:
    """Preprocess every case of ``splits`` once: {family: {split: [npz paths]}} (existing files reused)."""
    found: Dict[str, Dict[str, List[Path]]] = {}
    for family, (folder, split_file) in FAMILIES.items():
        dataset = open_dataset(data_root / folder)
        records = split_cases(dataset, load_split_file(split_file))
        found[family] = {}
        for split in splits:
            paths = []
            for record in records.get(split, []):
                path = cache / family / split / f"{record.case_id}.npz"
                if not path.is_file():
                    image, labels = record.load()
                    norm = DEFAULT_NORMALISATION["CT" if dataset.modality == "CT" else "MR"]
                    image01 = normalize(image.array, norm.bounds(image.array)).astype(np.float16)
                    spacing = np.asarray(image.geometry.spacing[::-1], dtype=np.float32)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(path, image=image01, labels=labels, spacing=spacing)
                paths.append(path)
            found[family][split] = paths
            log.info("cache %s %s: %d cases", family, split, len(paths))
    return found


def load_case(path: Path) -> Case:
    with np.load(path) as data:
        return data["image"], data["labels"], tuple(float(s) for s in data["spacing"])


# -- degradation -----------------------------------------------------------------------------

def _ball(shape, centre, radius_mm: float, spacing) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    squared = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing))
    return squared <= radius_mm ** 2


def _boundary_point(mask: np.ndarray, rng) -> Optional[np.ndarray]:
    border = mask & ~ndimage.binary_erosion(mask)
    points = np.argwhere(border)
    return points[rng.integers(len(points))] if len(points) else None


def degrade(reference: np.ndarray, labels: np.ndarray, structure: int, spacing, rng) -> np.ndarray:
    """A plausible wrong starting mask from ``reference`` (Z, Y, X) bool: 1 to 3 random edits."""
    mask = reference.copy()
    in_plane = (1e4, spacing[1], spacing[2])  # huge z spacing: distances within each slice
    size_mm = float(np.sqrt(reference.sum(axis=(1, 2)).max() * spacing[1] * spacing[2]))
    for kind in rng.choice(["erode", "dilate", "shift", "drop", "add", "slices", "neighbour"],
                           size=rng.integers(1, 4), replace=False):
        if kind in ("erode", "dilate"):
            radius = rng.uniform(0.5, 0.2 * size_mm + 1.5)
            if kind == "erode":
                mask = ndimage.distance_transform_edt(mask, sampling=in_plane) > radius
            else:
                mask = ndimage.distance_transform_edt(~mask, sampling=in_plane) <= radius
        elif kind == "shift":
            shift = [int(round(rng.uniform(-0.15, 0.15) * size_mm / s)) for s in spacing[1:]]
            mask = np.roll(mask, shift, axis=(1, 2))
        elif kind in ("drop", "add"):
            for _ in range(rng.integers(1, 3)):
                point = _boundary_point(mask if kind == "drop" else reference, rng)
                if point is not None:
                    ball = _ball(mask.shape, point, rng.uniform(0.1, 0.4) * size_mm + 2, spacing)
                    mask = mask & ~ball if kind == "drop" else mask | ball
        elif kind == "slices":
            filled = np.flatnonzero(mask.any(axis=(1, 2)))
            if len(filled) > 1:
                start = rng.choice([filled[0], filled[-1]]) if rng.random() < 0.6 else rng.choice(filled)
                mask[max(0, start - rng.integers(0, 2)):start + 1] = False
        else:
            near = ndimage.distance_transform_edt(~reference, sampling=spacing) <= 10.0
            others = [v for v in np.unique(labels[near]) if v not in (0, structure)]
            if others:
                other = labels == rng.choice(others)
                point = _boundary_point(other & near, rng)
                if point is not None:
                    ball = _ball(mask.shape, point, rng.uniform(5.0, 25.0), spacing)
                    mask = mask | (other & ball) if rng.random() < 0.6 else mask & ~ball
    return mask


# -- samples ---------------------------------------------------------------------------------

class Sampler:
    """Training samples from cached cases: see the module docstring."""

    def __init__(self, cases: Dict[str, List[Case]], config: RefinerConfig, slab: int, seed: int):
        self.cases, self.config, self.slab = cases, config, slab
        self.rng = np.random.default_rng(seed)

    def draw(self, network, augment: bool = True, max_clicks: int = 3):
        """(input (D, 8, S, S), target (D, 1, S, S), input mask Dice) for one structure slab."""
        import torch

        rng = self.rng
        family = rng.choice(sorted(self.cases))
        image, labels, spacing = self.cases[family][rng.integers(len(self.cases[family]))]
        present = [v for v in np.unique(labels) if v]
        structure = int(rng.choice(present))
        filled = np.flatnonzero((labels == structure).any(axis=(1, 2)))
        lo, hi = max(0, filled[0] - 1), min(labels.shape[0], filled[-1] + 2)
        start = rng.integers(lo, max(lo + 1, hi - self.slab + 1))
        z0, z1 = max(0, start - 1), min(labels.shape[0], start + self.slab + 1)  # slab plus context
        reference = labels[z0:z1] == structure
        rows, cols = np.flatnonzero(reference.any(axis=(0, 2))), np.flatnonzero(reference.any(axis=(0, 1)))
        if not len(rows):
            return None
        pad_y, pad_x = (int(60 / s) for s in spacing[1:])
        ya, yb = max(0, rows[0] - pad_y), min(labels.shape[1], rows[-1] + pad_y + 1)
        xa, xb = max(0, cols[0] - pad_x), min(labels.shape[2], cols[-1] + pad_x + 1)
        image_sub = np.asarray(image[z0:z1, ya:yb, xa:xb], dtype=np.float32)
        labels_sub = labels[z0:z1, ya:yb, xa:xb]
        reference = labels_sub == structure
        current = degrade(reference, labels_sub, structure, spacing, rng)
        slab = np.zeros(reference.shape, bool)
        slab[start - z0:start - z0 + self.slab] = True
        click = robot_click(current, reference, spacing, valid=slab) or robot_click(
            np.zeros_like(reference), reference, spacing)
        clicks = [click]
        box = crop_box(current & slab, [click.point], spacing, self.config, margin_scale=rng.uniform(0.5, 2.5))
        box = CropBox(max(box.z0, start - z0), min(box.z1, start - z0 + self.slab), box.y0, box.y1, box.x0, box.x1)
        if box.depth < 1:
            return None
        start_mask = current.copy()
        for _ in range(rng.integers(1, max_clicks + 1) - 1):
            with torch.no_grad():
                logits = network(self._input(image_sub, current, clicks, spacing, box))
            part, where = paste(to_window(logits, box), box, current.shape)
            current = current.copy()
            current[where] = part
            click = robot_click(current, reference, spacing, valid=slab)
            if click is None:
                break
            clicks.append(click)
        x = self._input(image_sub, current, clicks, spacing, box)
        slices = np.arange(box.z0, box.z1)
        target = resample(extract(reference, slices, box), self.config.size)[:, None]
        before = _dice(resample(extract(start_mask, slices, box), self.config.size) > 0.5, target[:, 0] > 0.5)
        if augment:
            x, target = _augment(x, target, rng)
        return x, target, before

    def _input(self, image, current, clicks, spacing, box):
        positive = [c.point for c in clicks if c.positive]
        negative = [c.point for c in clicks if not c.positive]
        return network_input(image, current, positive, negative, spacing, box, self.config)


def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def _augment(x, target, rng):
    """Random in-plane flips / transpose of input and target; intensity scale, shift and gamma of the image."""
    import torch

    if rng.random() < 0.5:
        x, target = x.flip(-1), target.flip(-1)
    if rng.random() < 0.5:
        x, target = x.flip(-2), target.flip(-2)
    if rng.random() < 0.5:
        x, target = x.transpose(-1, -2), target.transpose(-1, -2)
    x = x.clone()
    gamma = float(np.exp(rng.uniform(-0.3, 0.3)))
    image = x[:, :3].clamp(0, 1) ** gamma
    x[:, :3] = image * float(rng.uniform(0.85, 1.15)) + float(rng.uniform(-0.08, 0.08))
    return x.contiguous(), torch.as_tensor(target).contiguous()


def loss_terms(logits, target):
    """(Dice + BCE loss, hard Dice) for one slab: logits and target (D, 1, S, S)."""
    import torch
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target)
    probability = torch.sigmoid(logits)
    dice = (2 * (probability * target).sum() + 1) / (probability.sum() + target.sum() + 1)
    hard = _dice((logits > 0).numpy(), (target > 0.5).numpy())
    return bce + 1 - dice, hard


# -- training loop ---------------------------------------------------------------------------

def _save_checkpoint(path: Path, **state) -> None:
    import torch

    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def _monitor(network, samples) -> Tuple[float, float]:
    """Mean Dice (input mask, network output) over fixed val samples."""
    import torch

    before, after = [], []
    network.eval()
    with torch.no_grad():
        for x, target, dice_in in samples:
            before.append(dice_in)
            after.append(_dice((network(x) > 0).numpy(), (target > 0.5).numpy()))
    network.train()
    return float(np.mean(before)), float(np.mean(after))


def train(args) -> Path:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    config = RefinerConfig(channels=args.channels, size=args.size, click_radius_mm=args.click_radius)
    paths = build_cache(Path(args.data), run / "cache")
    cases = {family: [load_case(p) for p in splits["train"]] for family, splits in paths.items()}
    val_cases = {family: [load_case(p) for p in splits["val"]] for family, splits in paths.items()}
    network = build_refiner_network(config)
    optimiser = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=1e-4)
    step, elapsed, history = 0, 0.0, []
    checkpoint = run / "checkpoint.pt"
    if args.resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        network.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        step, elapsed = int(state["step"]), float(state["elapsed"])
        history = json.loads((run / "history.json").read_text()) if (run / "history.json").is_file() else []
        log.info("resumed at step %d, %.1f min trained", step, elapsed / 60)
    sampler = Sampler(cases, config, args.slab, args.seed + step)
    monitor_sampler = Sampler(val_cases, config, args.slab, seed=12345)
    monitor_samples = [s for s in (monitor_sampler.draw(network, augment=False, max_clicks=1)
                                   for _ in range(args.monitor)) if s is not None]
    budget = args.minutes * 60.0
    started, last_checkpoint, losses, dices, inputs = time.time(), time.time(), [], [], []
    base = elapsed
    while True:
        elapsed = base + time.time() - started
        if elapsed >= budget:
            break
        fraction = elapsed / budget
        for group in optimiser.param_groups:
            group["lr"] = args.lr * (0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * fraction)))
        batch = []
        while len(batch) < args.batch:
            network.eval()
            sample = sampler.draw(network)
            network.train()
            if sample is not None:
                batch.append(sample)
        x = torch.cat([b[0] for b in batch])
        logits = network(x)
        total, offset = 0.0, 0
        for sample_x, target, before in batch:
            depth = sample_x.shape[0]
            loss, hard = loss_terms(logits[offset:offset + depth], target)
            total = total + loss / len(batch)
            offset += depth
            dices.append(hard)
            inputs.append(before)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        losses.append(float(total.detach()))
        step += 1
        if step % args.log_every == 0:
            log.info("step %d  %.1f min  lr %.2e  loss %.4f  dice in %.3f -> out %.3f", step, elapsed / 60,
                     optimiser.param_groups[0]["lr"], np.mean(losses), np.mean(inputs), np.mean(dices))
            losses, dices, inputs = [], [], []
        if time.time() - last_checkpoint > args.checkpoint_minutes * 60:
            before, after = _monitor(network, monitor_samples)
            history.append({"step": step, "minutes": round(elapsed / 60, 1), "val_dice_start": round(before, 4),
                            "val_dice_one_click": round(after, 4)})
            log.info("monitor (val, %d samples, 1 click): dice %.3f -> %.3f", len(monitor_samples), before, after)
            _save_checkpoint(checkpoint, model=network.state_dict(), optimiser=optimiser.state_dict(), step=step,
                             elapsed=base + time.time() - started)
            (run / "history.json").write_text(json.dumps(history, indent=1))
            last_checkpoint = time.time()
    before, after = _monitor(network, monitor_samples)
    history.append({"step": step, "minutes": round(elapsed / 60, 1), "val_dice_start": round(before, 4),
                    "val_dice_one_click": round(after, 4)})
    log.info("final monitor (val, 1 click): dice %.3f -> %.3f after %d steps", before, after, step)
    _save_checkpoint(checkpoint, model=network.state_dict(), optimiser=optimiser.state_dict(), step=step,
                     elapsed=elapsed)
    (run / "history.json").write_text(json.dumps(history, indent=1))
    card = write_refiner(network.state_dict(), run / "model", config, description=DESCRIPTION,
                         training={"data": TRAINING_DATA, "command": " ".join(sys.argv), "steps": step,
                                   "minutes": round(elapsed / 60, 1), "history": history})
    log.info("wrote %s (sha256 %s)", card.path, card.weights.sha256)
    return card.path


def export(args) -> Path:
    """Card and float16 weights in ``--export`` from ``<run>/checkpoint.pt`` (a run stopped early, or a
    look at one still running)."""
    import torch

    run = Path(args.run)
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    config = RefinerConfig(channels=args.channels, size=args.size, click_radius_mm=args.click_radius)
    history = json.loads((run / "history.json").read_text()) if (run / "history.json").is_file() else []
    card = write_refiner(state["model"], args.export, config, description=DESCRIPTION,
                         training={"data": TRAINING_DATA, "checkpoint": str(run / "checkpoint.pt"),
                                   "steps": int(state["step"]), "minutes": round(float(state["elapsed"]) / 60, 1),
                                   "history": history})
    log.info("wrote %s from step %d (sha256 %s)", card.path, int(state["step"]), card.weights.sha256)
    return card.path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dinseg.training.refiner", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="shared data root")
    parser.add_argument("--run", default=str(REPO / "runs" / "refiner"), help="run folder (cache, checkpoint, model)")
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock training budget, over resumes")
    parser.add_argument("--resume", action="store_true", help="continue from <run>/checkpoint.pt")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--size", type=int, default=96, help="in-plane crop side in pixels")
    parser.add_argument("--click-radius", type=float, default=5.0, help="click Gaussian sigma in mm")
    parser.add_argument("--slab", type=int, default=8, help="slices per training sample")
    parser.add_argument("--batch", type=int, default=2, help="structure slabs per step")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--monitor", type=int, default=40, help="fixed val samples for the logged monitor")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--export", metavar="FOLDER", help="only write a card from <run>/checkpoint.pt to FOLDER")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    if args.export:
        export(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
