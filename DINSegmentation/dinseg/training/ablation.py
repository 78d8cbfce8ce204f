"""The paper's claim, tested on a real data set: does the enhanced stream, fused by DIFM, help?

Trains the ``single``, ``concat``, ``difm`` and ``image`` variants (and any of them with ConDSeg's
consistency reinforcement, ``difm+consistency``) from one training configuration (its
data, split, preprocessing, augmentation and preset), with the same budget and seeds, and
scores each on the configuration's validation patients (whole volumes, through the inference
engine). ``dinseg ablation configs/acdc-light.yaml --epochs 5 --seeds 0 1 2`` is the ACDC run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.errors import ConfigError
from .evaluate import format_mean_std, markdown_table
from ..core.io import atomic_output
from ..nets.config import FUSION_VARIANTS

log = logging.getLogger("dinseg")


@dataclass
class AblationPlan:
    """What to train: a training configuration (file or TrainConfig), the variants, seeds and budget.

    epochs / iterations_per_epoch: None keeps the configuration's. Validation runs once, after
    the last epoch, so every run is scored on the same patients at the same budget.
    """

    config: object = ""
    output: str = "runs/ablation"
    variants: Tuple[str, ...] = ("single", "concat", "difm")  # also "image", and any with "+consistency"
    seeds: Tuple[int, ...] = (0, 1)
    epochs: Optional[int] = None
    iterations_per_epoch: Optional[int] = None
    device: Optional[str] = None

    def base_config(self):
        from .config import TrainConfig

        if isinstance(self.config, TrainConfig):
            return self.config
        if not self.config:
            raise ConfigError("the ablation needs a training configuration (e.g. configs/acdc-light.yaml)")
        return TrainConfig.from_file(self.config)

    def run_config(self, variant: str, seed: int):
        """The TrainConfig of one run: the base with this fusion, seed, budget and its own folder.

        ``FUSION+consistency`` turns on the consistency reinforcement (the base's ``consistency``
        options, weight :data:`CONSISTENCY_WEIGHT` unless the base sets one); the plain variants
        train with it off."""
        base = self.base_config()
        epochs = self.epochs or base.epochs
        fusion, consistency = parse_variant(variant)
        options = dict(base.consistency)
        if consistency:
            options["weight"] = options.get("weight") or CONSISTENCY_WEIGHT
        else:
            options.pop("weight", None)
        name = variant.replace("+", "-")
        changes = dict(fusion=fusion, seed=seed, epochs=epochs, val_every=epochs, consistency=options,
                       output=str(Path(self.output) / "runs" / f"{name}-seed{seed}"),
                       model_name=f"{base.model_name}-{name}-seed{seed}", weights_dtype="float32")
        if self.iterations_per_epoch:
            changes["iterations_per_epoch"] = self.iterations_per_epoch
        if self.device:
            changes["device"] = self.device
        return dataclasses.replace(base, **changes)


#: the consistency loss's weight in a ``+consistency`` run when the configuration sets none
CONSISTENCY_WEIGHT = 0.1


def parse_variant(variant: str) -> Tuple[str, bool]:
    """``"difm"`` -> ("difm", False); ``"difm+consistency"`` -> ("difm", True); ConfigError otherwise."""
    fusion, plus, extra = str(variant).partition("+")
    if fusion not in FUSION_VARIANTS or (plus and extra != "consistency"):
        raise ConfigError(f"unknown variant {variant!r}; choose from {', '.join(FUSION_VARIANTS)}, "
                          "each optionally with '+consistency'")
    return fusion, bool(plus)


def run_ablation(plan: AblationPlan) -> List[Dict[str, object]]:
    """Train every variant and seed, score on the validation split; returns one row per run.

    Run again with the same plan, it reuses the runs already finished and resumes an interrupted
    one from its checkpoint. Writes ``ablation.csv`` and ``ablation.md`` in ``plan.output``.
    """
    from ..models import load_card
    from .train import DINTrainingLogic

    for variant in plan.variants:
        parse_variant(variant)
    root = Path(plan.output)
    rows = []
    for variant in plan.variants:
        for seed in plan.seeds:
            config = plan.run_config(variant, seed)
            same_run = _same_run(config)
            card = _finished_card(config) if same_run else None
            if card is None:
                resume = same_run and (Path(config.output) / "checkpoint.pt").is_file()
                card = load_card(DINTrainingLogic(config, resume=resume).run()["last_card"])
            else:
                log.info("ablation %s seed %d: reusing the finished run in %s", variant, seed, config.output)
            validation = card.metrics.get("validation", {})
            if "dice/mean" not in validation:
                raise ConfigError(f"{plan.config}: has no validation cases to score the ablation on "
                                  "(give a split file with a 'val' list, or val_fraction > 0)")
            rows.append({"variant": variant, "seed": seed, "dice": validation["dice/mean"],
                         "hd95": validation["hd95/mean"], "parameters_m": round(_parameters(card) / 1e6, 3),
                         "iterations": config.total_iterations, "train_seconds": card.training["wall_time_s"],
                         **{key: value for key, value in validation.items() if key.startswith("dice/")
                            and key != "dice/mean"}})
            log.info("ablation %s seed %d: validation Dice %.4f, HD95 %.2f mm", variant, seed,
                     rows[-1]["dice"], rows[-1]["hd95"])
    root.mkdir(parents=True, exist_ok=True)
    _write_rows(rows, root / "ablation.csv")
    with atomic_output(root / "ablation.md") as temporary:
        temporary.write_text(ablation_table(rows, plan), encoding="utf-8")
    return rows


def _same_run(config) -> bool:
    """Whether ``config.output`` holds a run started with exactly this configuration."""
    saved = Path(config.output) / "config.json"
    return saved.is_file() and json.loads(saved.read_text(encoding="utf-8")) == json.loads(
        json.dumps(config.to_dict()))


def _finished_card(config):
    """The last model card in ``config.output`` if that run trained all its epochs, else None."""
    from ..models import load_card

    last = Path(config.output) / "models" / "last" / f"{config.model_name}.json"
    if not last.is_file():
        return None
    card = load_card(last)
    return card if card.training.get("epochs") == config.epochs else None


def _parameters(card) -> int:
    from ..nets import build_network

    return sum(p.numel() for p in build_network(card.network).parameters())


def _write_rows(rows: Sequence[Dict[str, object]], path: Path) -> None:
    with atomic_output(path) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
            writer.writeheader()
            writer.writerows(rows)


def ablation_table(rows: Sequence[Dict[str, object]], plan: AblationPlan) -> str:
    """Markdown: validation Dice per class and mean, HD95, mean ± sd over seeds, per variant."""
    base = plan.base_config()
    classes = [key for key in rows[0] if key.startswith("dice/")]
    header = ["variant", "parameters (M)"] + [f"{key[5:]} Dice" for key in classes] + \
             ["mean Dice", "mean HD95 (mm)", "train time / run (s)"]
    lines = [f"{base.data_description.split(':')[0] or base.data} validation patients: preset {base.preset}, "
             f"{rows[0]['iterations']} iterations of batch {base.batch_size}, patch {list(base.patch_size)}, "
             f"seeds {', '.join(map(str, plan.seeds))}; mean ± sd over seeds.", ""]
    table = []
    for variant in dict.fromkeys(str(row["variant"]) for row in rows):
        mine = [row for row in rows if row["variant"] == variant]
        cells = [variant, f"{mine[0]['parameters_m']:.2f}"]
        for metric, digits in [(key, 3) for key in classes] + [("dice", 3), ("hd95", 2)]:
            values = [float(row[metric]) for row in mine if not math.isnan(float(row[metric]))]
            cells.append(format_mean_std(float(np.mean(values)), float(np.std(values)), digits) if values else "n/a")
        cells.append(f"{np.mean([float(row['train_seconds']) for row in mine]):.0f}")
        table.append(cells)
    return "\n".join(lines) + "\n" + markdown_table(header, table)


def plan_from_args(args) -> AblationPlan:
    """An AblationPlan from the ``dinseg ablation`` arguments (only those given override the defaults)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(AblationPlan)
             if getattr(args, f.name, None) is not None}
    for key in ("variants", "seeds"):
        if key in given:
            given[key] = tuple(given[key])
    return AblationPlan(**given)
