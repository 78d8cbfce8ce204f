"""Every training option, as one dataclass that config files and CLI flags fill in.

Kept apart from :mod:`dinseg.training.train` so that reading a configuration, and building the
command line's options from it, does not import PyTorch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Tuple

from ..core.errors import ConfigError
from ..core.preprocess import EnhanceConfig, Normalization, Preprocessing
from ..nets.config import FUSION_VARIANTS
from .consistency import check_consistency


@dataclass
class TrainConfig:
    """Every training option; a YAML/JSON config file sets any of them, and so does each CLI flag."""

    data: str = ""                              # dataset folder (ACDC, Synapse, BTCV or MSD/nnU-Net layout)
    layout: str = "auto"
    split_file: str = ""                        # JSON/YAML {"train": [...], "val": [...], "test": [...]}
    val_fraction: float = 0.2                   # when no split is given
    label_map: Dict[str, int] = field(default_factory=dict)  # source label value -> target value
    assumed_spacing: Tuple[float, float, float] = (0.76, 0.76, 3.0)  # Synapse npz/h5 arrays carry none
    output: str = "runs/din"                    # run folder
    model_name: str = "din-model"
    model_version: str = "0.1.0"
    task: str = ""
    modality: str = ""                          # default: the dataset's
    anatomy: str = ""                           # heart or abdomen: which images the model is chosen for
    postprocessing: Dict[str, bool] = field(default_factory=dict)  # the card's default label clean-up
    data_description: str = ""                  # what the model was trained on, for its card
    limitations: str = ""
    init_model: str = ""                        # fine-tune: start from this model card's network and weights
    preset: str = "light"
    fusion: str = "difm"
    share_encoders: bool = False
    spacing: Tuple[float, float] = (1.5, 1.5)   # in-plane mm of the network's grid
    context_slices: int = 0                     # 2.5D: neighbouring slices on each side as extra channels
    # 2.5D: probability of giving the neighbours in reverse order, so that a stack stored apex to
    # base reads like one stored base to apex (headers that lost or flip the slice direction)
    context_reversal: float = 0.0
    orientation: str = "LPS"
    orientation_mode: str = "anatomical"
    normalization: str = "window"               # window (CT) or percentile (MR)
    normalization_low: float = -125.0
    normalization_high: float = 275.0
    enhancement: Dict[str, Any] = field(default_factory=lambda: {"method": "clahe"})
    augmentation: Dict[str, Any] = field(default_factory=dict)  # dinseg.training.data.sampling.Augmentation fields
    # ConDSeg consistency reinforcement (dinseg.training.consistency): {weight: 0.1, degradations:
    # [illumination, gamma, contrast, noise], strength: 1.0, stages: [1, 2, 3, 4]}; weight 0 or {}: off
    consistency: Dict[str, Any] = field(default_factory=dict)
    patch_size: Tuple[int, int] = (224, 224)
    # random square canvas per batch, cut from the patch (model-grid pixels): field-of-view
    # augmentation, so that scans with more or less air around the body look familiar; (0, 0) = off
    canvas_range: Tuple[int, int] = (0, 0)
    batch_size: int = 8
    epochs: int = 100
    iterations_per_epoch: int = 250
    foreground_fraction: float = 0.67
    balance_classes: bool = False               # labelled draws: a class first, then a slice holding it
    # share of draws from the ends of each volume's labelled extent and the empty slice beyond each
    # (a heart's base and apex: where the extent is decided); 0 = off
    edge_fraction: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 1e-2
    schedule: str = "cosine"                    # cosine or poly
    warmup_iterations: int = 200
    ce_weight: float = 0.3
    dice_weight: float = 0.7
    boundary_weight: float = 1.0
    include_background: bool = False
    grad_clip: float = 12.0
    amp: bool = True                            # mixed precision on GPU
    seed: int = 0
    workers: int = 2
    val_every: int = 1                          # epochs between validations
    device: str = "auto"
    weights_dtype: str = "float16"              # precision of the card's weights file

    def __post_init__(self) -> None:
        if self.fusion not in FUSION_VARIANTS:
            raise ConfigError(f"fusion must be one of {', '.join(FUSION_VARIANTS)}, got {self.fusion!r}")
        try:
            check_consistency(self.consistency)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.schedule not in ("cosine", "poly"):
            raise ConfigError(f"schedule must be cosine or poly, got {self.schedule!r}")
        for name in ("foreground_fraction", "edge_fraction", "context_reversal"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be a number within 0..1, got {value!r}")
        if self.batch_size < 1 or self.epochs < 1 or self.iterations_per_epoch < 1:
            raise ConfigError("batch_size, epochs and iterations_per_epoch must be at least 1")
        not_switches = [f.name for f in dataclasses.fields(self)
                        if f.type == "bool" and not isinstance(getattr(self, f.name), bool)]
        if not_switches:
            raise ConfigError(f"{', '.join(not_switches)} must be true or false")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.patch_size = tuple(int(s) for s in self.patch_size)
        self.canvas_range = tuple(int(s) for s in self.canvas_range)
        low, high = self.canvas_range
        if (low, high) != (0, 0) and not 16 <= low <= high <= min(self.patch_size):
            raise ConfigError(f"canvas_range must lie within 16..{min(self.patch_size)} (the patch), "
                              f"got {list(self.canvas_range)}")
        self.assumed_spacing = tuple(float(s) for s in self.assumed_spacing)
        self.label_map = {str(k): int(v) for k, v in self.label_map.items()}

    @property
    def total_iterations(self) -> int:
        return self.epochs * self.iterations_per_epoch

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)} "
                              f"(see 'dinseg train --help' for the options)")
        try:
            return cls(**data)
        except TypeError as error:
            raise ConfigError(f"bad training option: {error}") from None

    @classmethod
    def from_file(cls, path) -> "TrainConfig":
        """A configuration file (YAML or JSON); ``base: FILE`` (beside it) supplies the options it leaves out."""
        return cls.from_dict(_read_options(Path(path), ()))

    @property
    def consistency_options(self) -> Dict[str, Any]:
        """``consistency`` with its defaults filled in (weight 0: off)."""
        return check_consistency(self.consistency)

    def preprocessing(self) -> Preprocessing:
        try:
            return Preprocessing(orientation=self.orientation, orientation_mode=self.orientation_mode,
                                 spacing=self.spacing,
                                 normalization=Normalization(self.normalization, self.normalization_low,
                                                             self.normalization_high),
                                 enhancement=EnhanceConfig.from_dict(self.enhancement),
                                 context_slices=self.context_slices)
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def loss(self):
        """The :class:`dinseg.training.losses.LossConfig` of these weights (imports torch)."""
        from .losses import LossConfig

        return LossConfig(ce_weight=self.ce_weight, dice_weight=self.dice_weight,
                          boundary_weight=self.boundary_weight, include_background=self.include_background)


def _read_options(path: Path, reading: Tuple[Path, ...]) -> Dict[str, Any]:
    """The options of a configuration file, with those of its ``base`` chain beneath them."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such configuration file")
    if path.resolve() in reading:
        raise ConfigError(f"{path}: its 'base' chain comes back to itself")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as error:  # YAML and JSON raise different types; both mean a bad file
        raise ConfigError(f"{path}: cannot parse ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a configuration must be a mapping of option: value")
    if "base" not in data:
        return data
    base = path.parent / str(data.pop("base"))
    return {**_read_options(base, reading + (path.resolve(),)), **data}
