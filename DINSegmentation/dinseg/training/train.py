"""Headless training: configuration, the training logic the CLI and Slicer share, run folders.

A run folder holds ``config.json`` (as used), ``log.txt``, ``metrics.csv``, ``curves.png``,
``checkpoint.pt`` (to resume) and model cards ``models/last/`` and ``models/best/`` that
``dinseg segment --model`` loads directly. Under ``torchrun`` the same code trains with
DistributedDataParallel (gloo on CPU, nccl on GPU); only rank 0 writes.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .. import __version__
from ..core.enhance import enhance
from ..core.errors import ConfigError, InputError
from ..core.io import atomic_output
from .consistency import consistency_loss, degrade
from .losses import DINLoss
from ..models import ModelCard, WeightsInfo, save_weights
from ..nets import NetConfig, build_network
from ..core.terminology import label_infos_for
from .config import TrainConfig

log = logging.getLogger("dinseg")


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """Linear warm-up, then cosine or polynomial (power 0.9) decay to zero."""
    if iteration < config.warmup_iterations:
        return config.lr * (iteration + 1) / config.warmup_iterations
    progress = (iteration - config.warmup_iterations) / max(1, config.total_iterations - config.warmup_iterations)
    progress = min(progress, 1.0)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * (1 - progress) ** 0.9


def random_canvas(image, target, canvas_range: Tuple[int, int], rng: np.random.Generator):
    """Cut a random square of random side in ``canvas_range`` from a batch (the same for all of it).

    image (B, 1, H, W), target (B, H, W) -> (B, 1, s, s), (B, s, s); unchanged when the range is (0, 0).
    """
    if canvas_range == (0, 0):
        return image, target
    side = int(rng.integers(canvas_range[0], canvas_range[1] + 1))
    top = int(rng.integers(0, image.shape[-2] - side + 1))
    left = int(rng.integers(0, image.shape[-1] - side + 1))
    return image[..., top:top + side, left:left + side], target[..., top:top + side, left:left + side]


@dataclass
class Distributed:
    """This process's place in a torchrun job (world of one without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> "Distributed":
        return cls(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                   local_rank=int(os.environ.get("LOCAL_RANK", 0)))


@dataclass
class StepReport:
    """What a progress callback receives after every optimisation step and validation."""

    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    iteration: int
    loss: float
    val_dice: Optional[float] = None


class DINTrainingLogic:
    """Trains a DIN model from a :class:`TrainConfig`: used by ``dinseg train`` and by the Slicer module.

    progress(report) is called after each step and validation; :meth:`cancel` stops at the next
    step (the last epoch checkpoint stays, so ``resume=True`` continues exactly).
    """

    def __init__(self, config: TrainConfig, progress: Optional[Callable[[StepReport], None]] = None,
                 resume: bool = False):
        self.config = config
        self.progress = progress or (lambda report: None)
        self.resume = resume
        self.cancelled = False
        self.run_dir = Path(config.output)
        self.distributed = Distributed.from_environment()

    def cancel(self) -> None:
        self.cancelled = True

    # -- data -------------------------------------------------------------------------------
    def _load_data(self):
        """Open the dataset and load every training and validation case once, so that bad data
        (missing pairs, mismatched grids, unknown label values) stops the run before it starts."""
        from .data import load_split_file, open_dataset, split_cases

        config = self.config
        if not config.data:
            raise ConfigError("no training data: set 'data' to a dataset folder")
        dataset = open_dataset(config.data, layout=config.layout,
                               label_map={int(k): v for k, v in config.label_map.items()} or None,
                               assumed_spacing=config.assumed_spacing)
        splits = split_cases(dataset, load_split_file(config.split_file) if config.split_file else None,
                             val_fraction=config.val_fraction, seed=config.seed)
        loaded = {}
        for name in ("train", "val"):
            loaded[name] = []
            for case in splits.get(name, []):
                volume, labels = case.load()
                if labels is None:
                    raise InputError(f"{case.case_id}: has no label file; every {name} case needs one")
                loaded[name].append((case.case_id, volume, labels))
        return dataset, loaded

    # -- main -------------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        """Train; returns {"best_card": path, "last_card": path, "best_dice": float, "epochs": int}."""
        import torch

        config = self.config
        torch.manual_seed(config.seed)
        dist = self.distributed
        device = self._device()
        if dist.world_size > 1:
            import torch.distributed as torch_dist

            torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        try:
            return self._train(device)
        finally:
            if dist.world_size > 1:
                import torch.distributed as torch_dist

                torch_dist.destroy_process_group()

    def _device(self):
        import torch

        from ..pipeline.segmenter import resolve_device

        device = resolve_device(self.config.device)
        if device.type == "cuda" and self.distributed.world_size > 1:
            device = torch.device("cuda", self.distributed.local_rank)
            torch.cuda.set_device(device)
        return device

    def _train(self, device) -> Dict[str, Any]:
        import torch

        from .data.sampling import Augmentation, TrainingSlices, epoch_samples, prepare_case

        config, dist = self.config, self.distributed
        started = time.time()
        dataset, splits = self._load_data()
        preprocessing = config.preprocessing()
        labels = label_infos_for(dataset.class_names)
        num_classes = len(labels) + 1
        initial_weights = None
        try:
            if config.init_model:
                net_config, initial_weights = self._initial_model(num_classes, preprocessing.input_channels)
            else:
                net_config = NetConfig.from_preset(config.preset, num_classes=num_classes, fusion=config.fusion,
                                                   share_encoders=config.share_encoders,
                                                   in_channels=preprocessing.input_channels)
            augmentation = Augmentation(**{k: tuple(v) if isinstance(v, list) else v
                                           for k, v in config.augmentation.items()})
        except (TypeError, ValueError) as error:
            raise ConfigError(str(error)) from None
        card = ModelCard(name=config.model_name, version=config.model_version,
                         task=config.task or f"{', '.join(dataset.class_names)} in {dataset.modality}",
                         modality=config.modality or dataset.modality, labels=labels,
                         preprocessing=preprocessing, network=net_config,
                         weights=WeightsInfo(file=f"{config.model_name}.pt", sha256=""),
                         limitations=config.limitations, anatomy=config.anatomy,
                         postprocessing=dict(config.postprocessing))

        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._attach_log_file()
        train_cases = [prepare_case(case_id, volume, labels, preprocessing)
                       for case_id, volume, labels in splits["train"]]
        val_cases = splits["val"]
        log.info("training on %d case(s), validating on %d, %d classes, preset %s/%s, device %s, %d CPU threads, "
                 "world %d", len(train_cases), len(val_cases), num_classes, config.preset, config.fusion, device,
                 torch.get_num_threads(), dist.world_size)

        torch.manual_seed(config.seed)
        network = build_network(net_config)
        if initial_weights is not None:
            network.load_state_dict(initial_weights)
        network = network.to(device)
        model = network
        if dist.world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                network, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        use_amp = config.amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        criterion = DINLoss(num_classes, config.loss())
        consistency = config.consistency_options
        if consistency["weight"] > 0:
            log.info("consistency reinforcement: weight %g, degradations %s, strength %g, stages %s",
                     consistency["weight"], ", ".join(consistency["degradations"]), consistency["strength"],
                     consistency["stages"])

        state = {"epoch": 0, "iteration": 0, "best_dice": -1.0, "history": []}
        if self.resume:
            state = self._load_checkpoint(network, optimizer, scaler)
        elif dist.is_main:
            self._write_config()

        for epoch in range(state["epoch"], config.epochs):
            epoch_started = time.time()
            torch.manual_seed(config.seed * 100_003 + epoch)
            samples = epoch_samples(train_cases, config.iterations_per_epoch * config.batch_size * dist.world_size,
                                    config.seed, epoch, config.foreground_fraction,
                                    config.balance_classes, config.edge_fraction)
            slices = TrainingSlices(train_cases, samples[dist.rank::dist.world_size], augmentation,
                                    config.patch_size, seed=config.seed * 7919 + epoch,
                                    context_slices=config.context_slices,
                                    context_reversal=config.context_reversal)
            loader = torch.utils.data.DataLoader(slices, batch_size=config.batch_size, shuffle=False,
                                                 num_workers=config.workers, drop_last=True,
                                                 persistent_workers=False)
            model.train()
            losses = []
            for step, batch in enumerate(loader):
                if self.cancelled:
                    log.warning("training cancelled in epoch %d; the last checkpoint is that of epoch %d",
                                epoch + 1, epoch)
                    return self._summary(state)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, state["iteration"])
                image, target = random_canvas(batch["image"], batch["label"], config.canvas_range,
                                              np.random.default_rng([config.seed, epoch, step]))
                image = image.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True)
                if consistency["weight"] > 0:  # the batch and its degraded copies, in one forward pass
                    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + state["iteration"])
                    image = torch.cat([image, degrade(image, consistency["degradations"], consistency["strength"],
                                                      generator)])
                    target = torch.cat([target, target])
                enhanced = enhance(image, preprocessing.enhancement) if network.uses_enhanced else None
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    if consistency["weight"] > 0:
                        logits, features = model(image, enhanced, return_features=True)
                    else:
                        logits = model(image, enhanced)
                terms = criterion.terms(logits, target)
                if consistency["weight"] > 0:
                    half = image.shape[0] // 2
                    terms["consistency"] = consistency_loss([features[s][:half] for s in consistency["stages"]],
                                                            [features[s][half:] for s in consistency["stages"]])
                    terms["total"] = terms["total"] + consistency["weight"] * terms["consistency"]
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms["total"]).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                state["iteration"] += 1
                losses.append({name: float(value.detach()) for name, value in terms.items()})
                self.progress(StepReport(epoch + 1, config.epochs, step + 1, len(loader), state["iteration"],
                                         losses[-1]["total"]))
            row = {"epoch": epoch + 1, "iteration": state["iteration"],
                   "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - epoch_started, 2)}
            row.update({f"loss/{name}": float(np.mean([l[name] for l in losses])) for name in losses[0]})
            validate_now = val_cases and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs)
            if dist.is_main and validate_now:
                row.update(self._validate(network, card, val_cases, dataset.class_names, device))
                self.progress(StepReport(epoch + 1, config.epochs, len(loader), len(loader), state["iteration"],
                                         row["loss/total"], row["dice/mean"]))
            state["epoch"] = epoch + 1
            state["history"].append(row)
            if dist.is_main:
                improved = "dice/mean" in row and row["dice/mean"] > state["best_dice"]
                if improved or (not val_cases and epoch + 1 == config.epochs):
                    state["best_dice"] = row.get("dice/mean", state["best_dice"])
                    self._write_card(card, network, "best", state, started)
                self._write_card(card, network, "last", state, started)
                self._save_checkpoint(network, optimizer, scaler, state)
                self._write_metrics(state["history"])
                log.info("epoch %d/%d: loss %.4f%s, %.1f s", epoch + 1, config.epochs, row["loss/total"],
                         f", validation Dice {row['dice/mean']:.4f}" if "dice/mean" in row else "",
                         row["seconds"])
            if dist.world_size > 1:
                torch.distributed.barrier()
        if dist.world_size > 1:
            log.info("rank %d final weights sha256 %s", dist.rank, _state_digest(network))
        return self._summary(state)

    def _initial_model(self, num_classes: int, in_channels: int):
        """(network configuration, weights) of ``init_model``, for fine-tuning; the classes must match.

        A one-slice model may start a 2.5D one (``context_slices``): see :func:`dinseg.nets.widen_input`.
        """
        from ..models import find_model, load_weights
        from ..nets import widen_input

        card = find_model(self.config.init_model)
        if card.num_classes != num_classes:
            raise ConfigError(f"init_model {card.name} has {card.num_classes} classes, the data {num_classes}; "
                              "fine-tuning needs the same classes (use label_map)")
        weights = load_weights(card)
        if card.network.in_channels != in_channels:
            if card.network.in_channels != 1:
                raise ConfigError(f"init_model {card.name} takes {card.network.in_channels} slices per input, "
                                  f"this configuration {in_channels}; only a one-slice model can start a 2.5D one")
            weights = widen_input(weights, in_channels)
            log.info("its one-slice input widened to %d slices (the neighbours' weights start at zero)", in_channels)
        log.info("starting from %s %s (its network configuration replaces preset and fusion)", card.name, card.version)
        return dataclasses.replace(card.network, in_channels=in_channels), weights

    def _summary(self, state) -> Dict[str, Any]:
        models = self.run_dir / "models"
        name = self.config.model_name
        return {"best_card": models / "best" / f"{name}.json", "last_card": models / "last" / f"{name}.json",
                "best_dice": state["best_dice"], "epochs": state["epoch"]}

    # -- validation -------------------------------------------------------------------------
    def _validate(self, network, card, val_cases, class_names, device) -> Dict[str, float]:
        """Whole-volume validation through the inference engine: mean Dice and HD95 (mm) per class."""
        from ..pipeline.segmenter import Segmenter
        from ..core.metrics import dice_and_hd95, summarize

        network.eval()
        segmenter = Segmenter(card, device=str(device.type), network=network)
        per_case = {}
        for case_id, volume, truth in val_cases:
            prediction = segmenter.segment(volume).labels
            per_case[case_id] = dice_and_hd95(prediction, truth, tuple(reversed(volume.geometry.spacing)),
                                              card.num_classes)
        network.train()
        return summarize(per_case, class_names)

    # -- files (rank 0) ---------------------------------------------------------------------
    def _attach_log_file(self) -> None:
        handler = logging.FileHandler(self.run_dir / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)

    def _write_config(self) -> None:
        with atomic_output(self.run_dir / "config.json") as temporary:
            temporary.write_text(json.dumps(self.config.to_dict(), indent=2) + "\n", encoding="utf-8")

    def _write_card(self, card: ModelCard, network, which: str, state, started: float) -> None:
        folder = self.run_dir / "models" / which
        folder.mkdir(parents=True, exist_ok=True)
        weights = save_weights(network.state_dict(), folder / f"{card.name}.pt", self.config.weights_dtype)
        history = state["history"]
        last = history[-1] if history else {}
        best = max((row for row in history if "dice/mean" in row), key=lambda row: row["dice/mean"], default={})
        measured = best if which == "best" else last
        import torch

        dataclasses.replace(
            card, weights=weights,
            training={"data": self.config.data_description or f"{self.config.data} ({self.config.layout} layout)",
                      "command": " ".join(["dinseg"] + sys.argv[1:]) if sys.argv else "",
                      "config": self.config.to_dict(), "epochs": state["epoch"], "iterations": state["iteration"],
                      "wall_time_s": round(time.time() - started, 1),
                      "date": datetime.date.today().isoformat(),
                      "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                                 f"dinseg {__version__}, {self.distributed.world_size} process(es)"},
            metrics={"validation": {k: v for k, v in measured.items() if k.startswith(("dice/", "hd95/"))},
                     "summary": (f"validation mean Dice {measured['dice/mean']:.3f}, HD95 {measured['hd95/mean']:.1f} mm "
                                 f"(epoch {measured['epoch']})") if "dice/mean" in measured else "not validated"},
        ).save(folder / f"{card.name}.json")

    def _save_checkpoint(self, network, optimizer, scaler, state) -> None:
        import torch

        path = self.run_dir / "checkpoint.pt"
        with atomic_output(path) as temporary:
            torch.save({"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(), "state": json.dumps(state)}, temporary)

    def _load_checkpoint(self, network, optimizer, scaler) -> Dict[str, Any]:
        import torch

        path = self.run_dir / "checkpoint.pt"
        if not path.is_file():
            raise InputError(f"{self.run_dir}: nothing to resume (no checkpoint.pt)")
        saved = TrainConfig.from_dict(json.loads((self.run_dir / "config.json").read_text(encoding="utf-8")))
        if {k: v for k, v in saved.to_dict().items() if k != "epochs"} != {
                k: v for k, v in self.config.to_dict().items() if k != "epochs"}:
            raise ConfigError(f"{self.run_dir}: --resume needs the configuration the run started with "
                              "(only 'epochs' may change)")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = json.loads(checkpoint["state"])
        log.info("resuming %s after epoch %d", self.run_dir, state["epoch"])
        return state

    def _write_metrics(self, history: List[Dict[str, Any]]) -> None:
        columns = list(dict.fromkeys(key for row in history for key in row))
        with atomic_output(self.run_dir / "metrics.csv") as temporary:
            with open(temporary, "w", newline="", encoding="utf-8") as stream:
                writer = csv.DictWriter(stream, fieldnames=columns)
                writer.writeheader()
                writer.writerows(history)
        plot_curves(history, self.run_dir / "curves.png")


def plot_curves(history: List[Dict[str, Any]], path: Path) -> None:
    """Training loss and validation Dice per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, dice_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss/total", "loss/ce", "loss/dice", "loss/boundary"):
        loss_axis.plot(epochs, [row.get(key, math.nan) for row in history], label=key.split("/")[1])
    loss_axis.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    loss_axis.legend()
    validated = [row for row in history if "dice/mean" in row]
    dice_axis.plot([row["epoch"] for row in validated], [row["dice/mean"] for row in validated], marker="o")
    dice_axis.set(xlabel="epoch", ylabel="mean Dice", ylim=(0, 1), title="validation (whole volumes)")
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=90, format="png")
    plt.close(figure)


def _state_digest(network) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
