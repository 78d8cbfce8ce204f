"""Dataset readers: a dataset folder -> cases (image, labels) for training and evaluation.

Layouts (``open_dataset(root, layout="auto")`` detects which one a folder is):

- ``acdc``: ``patientNNN/patientNNN_frameNN.nii.gz`` (+ ``_gt``) and ``Info.cfg`` naming the ED
  and ES frames; each patient gives two cases, ``patientNNN_frameNN``. The root may also be
  the ACDC database folder holding ``training/`` and ``testing/`` (then they are the default
  train and test splits). A frame without its ``_gt`` file is a case without labels.
- ``synapse``: TransUNet's preprocessed Synapse data, ``train_npz/caseXXXX_sliceYYY.npz`` and
  ``test_vol_h5/caseXXXX.npy.h5``, with the optional split lists ``lists/lists_Synapse/`` (or
  ``lists_Synapse/``) ``train.txt`` and ``test_vol.txt``.
  GEOMETRY IS ASSUMED for this layout: the arrays carry no spacing, origin or orientation, so
  cases get an identity direction and ``assumed_spacing``. Intensities are turned back into
  Hounsfield units (``HU = image * 400 - 125``, the inverse of TransUNet's clip to
  [-125, 275] and scaling to [0, 1]). Train models meant for 3D Slicer on the raw BTCV NIfTI
  files (layout ``btcv``), whose geometry is real.
- ``btcv``: raw BTCV, ``img/imgNNNN.nii.gz`` + ``label/labelNNNN.nii.gz`` (also under
  ``Training/`` or ``RawData/Training/``). The 13 BTCV labels are mapped to the 8 Synapse
  organs (``BTCV_TO_SYNAPSE``), and case ids are Synapse's (``img0001`` -> ``case0001``), so
  TransUNet split lists apply to both layouts.
- ``msd``: Medical Segmentation Decathlon or nnU-Net v2 (``dataset.json``, ``imagesTr/``,
  ``labelsTr/``); single-channel images only.

Opening a dataset lists files and checks that pairs exist; :meth:`CaseRecord.load` reads a
case and checks its geometry and label values; :func:`validate` loads every case once so that
bad data fails before training starts. Every problem is an :class:`InputError` of one line
naming the file or case. Arrays are (z, y, x).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ...core.errors import ConfigError, InputError
from ...core.geometry import Geometry
from ...core.io import ImageVolume, check_voxels, read_volume
from ...core.terminology import ACDC_STRUCTURES, SYNAPSE_ORGANS

log = logging.getLogger("dinseg")

LAYOUTS = ("acdc", "synapse", "btcv", "msd")
SPLIT_NAMES = ("train", "val", "test")
#: BTCV label -> Synapse organ label (BTCV values not listed become background)
BTCV_TO_SYNAPSE = {1: 7, 2: 4, 3: 3, 4: 2, 5: 0, 6: 5, 7: 8, 8: 1, 9: 0, 10: 0, 11: 6, 12: 0, 13: 0}
#: TransUNet's Synapse intensity scaling: image in [0, 1] = (clip(HU, -125, 275) + 125) / 400
SYNAPSE_HU_SCALE, SYNAPSE_HU_OFFSET = 400.0, -125.0
#: how far (mm for spacing and origin, cosine for direction) a label grid may lie from its image's
GEOMETRY_TOLERANCE = 1e-3

_LOOKED_FOR = {
    "acdc": "patientNNN/ folders with Info.cfg (or training/ and testing/ holding them)",
    "synapse": "train_npz/ or test_vol_h5/",
    "btcv": "img/ and label/ (or Training/img, RawData/Training/img)",
    "msd": "dataset.json with imagesTr/ and labelsTr/",
}
_NIFTI = (".nii.gz", ".nii")
_BTCV_FOLDERS = (Path("."), Path("Training"), Path("RawData") / "Training")


@dataclass
class CaseRecord:
    """One case of a dataset: where its files are and how to read them.

    ``source`` is "nifti" (image_path + label_path), "npz" (slice_paths, Synapse train_npz
    slices in z order) or "h5" (image_path, a Synapse test_vol_h5 file). Cases of one
    ``group`` (the frames of an ACDC patient) always go to the same split.
    """

    case_id: str
    source: str
    image_path: Optional[Path] = None
    label_path: Optional[Path] = None
    slice_paths: Tuple[Path, ...] = ()
    group: str = ""
    phase: str = ""  # "ED" or "ES" for a cardiac frame (ACDC), else ""
    modality: str = "CT"
    num_classes: int = 2
    label_map: Dict[int, int] = field(default_factory=dict)
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self):
        self.group = self.group or self.case_id

    @property
    def has_labels(self) -> bool:
        """Whether the case has a label volume (opens the npz / h5 file for Synapse cases)."""
        if self.source == "npz":
            with _open_npz(self.slice_paths[0]) as data:
                return "label" in data.files
        if self.source == "h5":
            with _open_h5(self.image_path) as data:
                return "label" in data
        return self.label_path is not None

    def load(self) -> Tuple[ImageVolume, Optional[np.ndarray]]:
        """(image: ImageVolume with array (z, y, x), labels (z, y, x) uint8 on the same grid after
        label mapping, or None when the case has no labels)."""
        if self.source == "npz":
            image, labels = self._load_npz()
        elif self.source == "h5":
            image, labels = self._load_h5()
        else:
            image, labels = self._load_nifti()
        if labels is None:
            return image, None
        labels = _integer_labels(labels, self.case_id)
        labels = _map_labels(labels, self.label_map)
        check_labels(labels, self.num_classes, self.case_id)
        return image, labels.astype(np.uint8, copy=False)

    def _load_nifti(self) -> Tuple[ImageVolume, Optional[np.ndarray]]:
        image = read_volume(self.image_path)
        if image.is_time_series:
            raise InputError(f"{self.image_path}: is a 4D time series; dataset cases must be 3D volumes")
        image.modality = image.modality or self.modality
        if self.label_path is None:
            return image, None
        return image, _read_label_file(self.label_path, image.geometry, self.case_id)

    def _load_npz(self) -> Tuple[ImageVolume, Optional[np.ndarray]]:
        images, labels = [], []
        for path in self.slice_paths:
            with _open_npz(path) as data:
                if "image" not in data.files:
                    raise InputError(f"{path}: has no 'image' array (keys: {', '.join(data.files)})")
                images.append(data["image"])
                labels.append(data["label"] if "label" in data.files else None)
        shapes = {a.shape for a in images} | {a.shape for a in labels if a is not None}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise InputError(f"{self.case_id}: train_npz slices must all be 2D of one size; "
                             f"found shapes {sorted(shapes)}")
        if any(a is None for a in labels) and not all(a is None for a in labels):
            missing = next(p for p, a in zip(self.slice_paths, labels) if a is None)
            raise InputError(f"{missing}: has no 'label' array while other slices of {self.case_id} do")
        volume = self._synapse_volume(np.stack(images), str(self.slice_paths[0].parent / f"{self.case_id}_slice*.npz"))
        return volume, None if labels[0] is None else np.stack(labels)

    def _load_h5(self) -> Tuple[ImageVolume, Optional[np.ndarray]]:
        with _open_h5(self.image_path) as data:
            if "image" not in data:
                raise InputError(f"{self.image_path}: has no 'image' dataset (keys: {', '.join(data)})")
            image = np.asarray(data["image"])
            labels = np.asarray(data["label"]) if "label" in data else None
        if image.ndim != 3 or (labels is not None and labels.shape != image.shape):
            raise InputError(f"{self.image_path}: image must be (Z, Y, X) with a label of the same shape; "
                             f"got image {image.shape}, label {None if labels is None else labels.shape}")
        return self._synapse_volume(image, str(self.image_path)), labels

    def _synapse_volume(self, scaled: np.ndarray, name: str) -> ImageVolume:
        """TransUNet's [0, 1] array (z, y, x) -> HU ImageVolume on the assumed grid."""
        scaled = scaled.astype(np.float32, copy=False)
        check_voxels(scaled, name)
        low, high = float(scaled.min()), float(scaled.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise InputError(f"{name}: image values span {low:g}..{high:g}; TransUNet's Synapse data is "
                             "scaled to [0, 1] (use the btcv layout for HU images)")
        z, y, x = scaled.shape
        geometry = Geometry(size=(x, y, z), spacing=self.spacing, origin=(0.0, 0.0, 0.0))
        hu = scaled * np.float32(SYNAPSE_HU_SCALE) + np.float32(SYNAPSE_HU_OFFSET)
        return ImageVolume(array=hu, geometry=geometry, modality=self.modality)


@dataclass
class Dataset:
    """A dataset folder read by one layout; ``class_names`` are the foreground classes 1..N."""

    root: Path
    layout: str
    cases: List[CaseRecord]
    class_names: List[str]
    modality: str
    default_splits: Dict[str, List[str]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return len(self.class_names) + 1

    def case(self, case_id: str) -> CaseRecord:
        for record in self.cases:
            if record.case_id == case_id:
                return record
        raise InputError(f"{case_id}: no such case in {self.root} ({len(self.cases)} cases, "
                         f"e.g. {', '.join(c.case_id for c in self.cases[:3])})")


def open_dataset(root, layout: str = "auto", label_map: Optional[Dict[int, int]] = None,
                 assumed_spacing=(0.76, 0.76, 3.0)) -> Dataset:
    """List the cases of a dataset folder and check that every image has its label file.

    ``label_map`` (source value -> target value) is applied after the layout's own mapping;
    values not in it keep their value. ``assumed_spacing`` (x, y, z mm) is the grid spacing
    given to the Synapse layout's arrays, which have no geometry.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: no such dataset folder")
    layout = layout.lower()
    if layout == "auto":
        layout = detect_layout(root)
    elif layout not in LAYOUTS:
        raise InputError(f"unknown dataset layout {layout!r}; use auto or one of {', '.join(LAYOUTS)}")
    user_map = _check_label_map(label_map)
    spacing = _check_spacing(assumed_spacing)
    dataset = _READERS[layout](root)
    if not dataset.cases:
        raise InputError(f"{root}: no cases found for the {layout} layout (looked for {_LOOKED_FOR[layout]})")
    seen = set()
    for record in dataset.cases:
        if record.case_id in seen:
            raise InputError(f"{root}: case id {record.case_id} occurs twice")
        seen.add(record.case_id)
        record.label_map = _compose(record.label_map, user_map)
        record.num_classes = dataset.num_classes
        record.modality = dataset.modality
        record.spacing = spacing
    return dataset


def detect_layout(root) -> str:
    """Which of LAYOUTS the folder ``root`` is, or an InputError saying what was looked for."""
    root = Path(root)
    if (root / "dataset.json").is_file():
        return "msd"
    if (root / "train_npz").is_dir() or (root / "test_vol_h5").is_dir():
        return "synapse"
    if any((root / folder / "img").is_dir() for folder in _BTCV_FOLDERS):
        return "btcv"
    if any(_acdc_patient_dirs(folder) for folder in (root, root / "training", root / "testing")):
        return "acdc"
    looked = "; ".join(f"{name}: {what}" for name, what in _LOOKED_FOR.items())
    raise InputError(f"{root}: not a known dataset layout (looked for {looked})")


def validate(dataset: Dataset, cases: Optional[Iterable[CaseRecord]] = None,
             require_labels: bool = True) -> List[CaseRecord]:
    """Load every case (default: all of ``dataset``) once; raise the first problem as InputError.

    With ``require_labels`` (training) a case without labels is an error; without it the
    unlabelled cases are returned so that an evaluation can report and skip them.
    """
    unlabelled = []
    for record in dataset.cases if cases is None else cases:
        _, labels = record.load()
        if labels is None:
            if require_labels:
                raise InputError(f"{record.case_id}: has no labels ({record.image_path or record.slice_paths[0]}); "
                                 "training needs labelled cases")
            unlabelled.append(record)
    return unlabelled


def check_labels(labels: np.ndarray, num_classes: int, case_id: str) -> None:
    """InputError naming ``case_id`` and the bad values if any label is outside 0..num_classes-1."""
    if labels.size == 0 or (labels.min() >= 0 and labels.max() < num_classes):
        return
    bad = np.unique(labels[(labels < 0) | (labels >= num_classes)])
    shown = ", ".join(str(v) for v in bad[:10].tolist()) + (", ..." if len(bad) > 10 else "")
    raise InputError(f"{case_id}: label value(s) {shown} outside the class map 0..{num_classes - 1}; "
                     "fix the labels or give a label map")


def load_split_file(path) -> Dict[str, List[str]]:
    """Read a split file, JSON or YAML: {"train": [case ids], "val": [...], "test": [...]}."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such split file")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise InputError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    else:
        raise InputError(f"{path}: a split file must be .json, .yaml or .yml")
    return _check_splits(data, str(path))


def split_cases(dataset: Dataset, splits: Optional[Dict[str, List[str]]] = None, val_fraction: float = 0.2,
                seed: int = 0) -> Dict[str, List[CaseRecord]]:
    """Cases per split name: ``splits`` if given, else the layout's default splits, else a
    deterministic shuffle (``seed``) of the case groups into train and val (``val_fraction``).

    Ids may be case ids or group ids (an ACDC patient id stands for both its frames); a group
    may not appear in two splits, and the train split may not be empty.
    """
    if splits:
        return _resolve_splits(dataset, _check_splits(splits, "the given splits"), "the given splits")
    if dataset.default_splits:
        return _resolve_splits(dataset, dataset.default_splits, f"the {dataset.layout} default splits")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups = sorted({record.group for record in dataset.cases})
    order = np.random.default_rng(seed).permutation(len(groups))
    n_val = int(round(len(groups) * val_fraction))
    if val_fraction > 0 and len(groups) > 1:
        n_val = min(max(n_val, 1), len(groups) - 1)
    val = {groups[i] for i in order[:n_val]}
    return {"train": [r for r in dataset.cases if r.group not in val],
            "val": [r for r in dataset.cases if r.group in val]}


# -- splits ----------------------------------------------------------------------------------

def _check_splits(data, source: str) -> Dict[str, List[str]]:
    if not isinstance(data, dict):
        raise InputError(f"{source}: must map split names ({', '.join(SPLIT_NAMES)}) to lists of case ids")
    unknown = sorted(str(name) for name in data if name not in SPLIT_NAMES)
    if unknown:
        raise InputError(f"{source}: unknown split name(s) {', '.join(unknown)}; use {', '.join(SPLIT_NAMES)}")
    for name, ids in data.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InputError(f"{source}: split '{name}' must be a list of case id strings")
    return {name: list(data[name]) for name in SPLIT_NAMES if name in data}


def _resolve_splits(dataset: Dataset, splits: Dict[str, List[str]], source: str) -> Dict[str, List[CaseRecord]]:
    case_ids = {record.case_id for record in dataset.cases}
    group_ids = {record.group for record in dataset.cases}
    result, owner = {}, {}
    for name, ids in splits.items():
        unknown = [i for i in ids if i not in case_ids and i not in group_ids]
        if unknown:
            raise InputError(f"{source}: split '{name}' names case(s) not in {dataset.root}: "
                             f"{', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}")
        wanted = set(ids)
        result[name] = [r for r in dataset.cases if r.case_id in wanted or r.group in wanted]
        for record in result[name]:
            other = owner.setdefault(record.group, name)
            if other == name:
                continue
            if {other, name} == {"train", "val"}:
                log.warning("%s: %s is in both the train and val splits: validation scores will measure "
                            "fit to training data, not generalisation", source, record.group)
            else:
                raise InputError(f"{source}: {record.group} is in both the '{other}' and '{name}' splits "
                                 "(a test patient must not be trained or validated on)")
    if not result.get("train"):
        raise InputError(f"{source}: the train split is empty; list the training cases under 'train'")
    return result


# -- labels ----------------------------------------------------------------------------------

def _check_label_map(label_map) -> Dict[int, int]:
    try:
        return {int(k): int(v) for k, v in (label_map or {}).items()}
    except (TypeError, ValueError):
        raise InputError(f"label map must map integer label values to integers, got {label_map!r}") from None


def _check_spacing(spacing) -> Tuple[float, float, float]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(v > 0 for v in values):
        raise InputError(f"assumed spacing must be three positive numbers (x, y, z mm), got {spacing!r}")
    return values


def _compose(first: Dict[int, int], then: Dict[int, int]) -> Dict[int, int]:
    """The mapping ``then(first(v))`` (values not in a mapping keep their value)."""
    composed = {source: then.get(target, target) for source, target in first.items()}
    composed.update({source: target for source, target in then.items() if source not in first})
    return composed


def _integer_labels(labels: np.ndarray, case_id: str) -> np.ndarray:
    if not np.issubdtype(labels.dtype, np.floating):
        return labels
    rounded = np.rint(labels)
    if not np.array_equal(rounded, labels):
        raise InputError(f"{case_id}: label volume has non-integer values")
    return rounded.astype(np.int32)


def _map_labels(labels: np.ndarray, mapping: Dict[int, int]) -> np.ndarray:
    if not mapping or labels.min(initial=0) < 0:  # negative values: check_labels refuses them
        return labels
    size = int(max(labels.max(initial=0), max(mapping))) + 1
    table = np.arange(size, dtype=np.int32)
    for source, target in mapping.items():
        if 0 <= source < size:
            table[source] = target
    return table[labels]


def _read_label_file(path: Path, geometry: Geometry, case_id: str) -> np.ndarray:
    """Labels (z, y, x) of ``path``, which must lie on ``geometry`` (read with SimpleITK:
    read_volume refuses constant images, and an all-background label volume is legal)."""
    if not path.is_file():
        raise InputError(f"{path}: no such label file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(f"{path}: cannot read this label image") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: a label volume must be a 3D scalar image")
    label_geometry = Geometry.from_sitk(image)
    if not label_geometry.matches(geometry, GEOMETRY_TOLERANCE):
        raise InputError(f"{case_id}: label {path.name} is not on the image grid ({_difference(geometry, label_geometry)})")
    return sitk.GetArrayFromImage(image)


def _difference(image: Geometry, labels: Geometry) -> str:
    for name in ("size", "spacing", "origin", "direction"):
        a, b = getattr(image, name), getattr(labels, name)
        if a != b and (name == "size" or not np.allclose(a, b, atol=GEOMETRY_TOLERANCE)):
            return f"{name} {_format(a)} in the image, {_format(b)} in the labels"
    return "grids differ"


def _format(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


# -- file helpers ----------------------------------------------------------------------------

def _open_npz(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read this npz file ({error})") from None


def _open_h5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"{path}: cannot read this HDF5 file ({str(error).splitlines()[0]})") from None


def _strip_nifti(name: str) -> Optional[str]:
    """File name without its NIfTI extension, or None if it is not a NIfTI file."""
    for extension in _NIFTI:
        if name.endswith(extension):
            return name[: -len(extension)]
    return None


def _find_nifti(folder: Path, stem: str) -> Optional[Path]:
    return next((folder / f"{stem}{e}" for e in _NIFTI if (folder / f"{stem}{e}").is_file()), None)


# -- ACDC ------------------------------------------------------------------------------------

def _acdc_patient_dirs(folder: Path) -> List[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"patient\d+", p.name))


def _read_info_cfg(patient: Path) -> Tuple[int, int]:
    """(ED frame, ES frame) from ``patient/Info.cfg`` (lines ``ED: 1``, ``ES: 12``, ...)."""
    path = patient / "Info.cfg"
    if not path.is_file():
        raise InputError(f"{path}: missing; ACDC patient folders need Info.cfg to name the ED and ES frames")
    values = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise InputError(f"{path}: malformed line {line.strip()!r} (expected 'Key: value')")
        values[key.strip()] = value.strip()
    try:
        ed, es = int(values["ED"]), int(values["ES"])
    except (KeyError, ValueError):
        raise InputError(f"{path}: malformed; needs integer 'ED:' and 'ES:' lines") from None
    if ed == es or ed < 1 or es < 1:
        raise InputError(f"{path}: malformed; ED ({ed}) and ES ({es}) must be two different frames >= 1")
    return ed, es


def _acdc_cases(folder: Path) -> List[CaseRecord]:
    cases = []
    for patient in _acdc_patient_dirs(folder):
        for phase, frame in zip(("ED", "ES"), _read_info_cfg(patient)):
            stem = f"{patient.name}_frame{frame:02d}"
            image = _find_nifti(patient, stem)
            if image is None:
                raise InputError(f"{patient / (stem + '.nii.gz')}: missing (frame {frame} named in Info.cfg)")
            cases.append(CaseRecord(case_id=stem, source="nifti", image_path=image,
                                    label_path=_find_nifti(patient, f"{stem}_gt"), group=patient.name,
                                    phase=phase))
    return cases


def _open_acdc(root: Path) -> Dataset:
    parts = [(name, split) for name, split in (("training", "train"), ("testing", "test")) if (root / name).is_dir()]
    cases, splits = [], {}
    if parts and not _acdc_patient_dirs(root):
        for name, split in parts:
            found = _acdc_cases(root / name)
            cases += found
            splits[split] = [c.case_id for c in found]
    else:
        cases = _acdc_cases(root)
    return Dataset(root=root, layout="acdc", cases=cases, class_names=list(ACDC_STRUCTURES),
                   modality="MR", default_splits={k: v for k, v in splits.items() if v})


# -- Synapse (TransUNet preprocessed) --------------------------------------------------------

def _synapse_lists(root: Path) -> Dict[str, List[str]]:
    folder = next((f for f in (root / "lists" / "lists_Synapse", root / "lists_Synapse") if f.is_dir()), None)
    splits = {}
    if folder is None:
        return splits
    for split, name in (("train", "train.txt"), ("test", "test_vol.txt")):
        if (folder / name).is_file():
            lines = [line.strip() for line in (folder / name).read_text(encoding="utf-8").splitlines() if line.strip()]
            # train.txt names slices (case0031_slice000): keep their cases, in order
            splits[split] = list(dict.fromkeys(line.split("_slice")[0] for line in lines))
    return splits


def _open_synapse(root: Path) -> Dataset:
    slices: Dict[str, Dict[int, Path]] = {}
    npz_dir, h5_dir = root / "train_npz", root / "test_vol_h5"
    for path in sorted(npz_dir.glob("*.npz")) if npz_dir.is_dir() else []:
        match = re.fullmatch(r"(case\d+)_slice(\d+)\.npz", path.name)
        if match is None:
            raise InputError(f"{path}: unexpected name; train_npz files are caseXXXX_sliceYYY.npz")
        numbers = slices.setdefault(match.group(1), {})
        if int(match.group(2)) in numbers:
            raise InputError(f"{path}: slice number {int(match.group(2))} of {match.group(1)} occurs twice")
        numbers[int(match.group(2))] = path
    cases = []
    for case_id, numbers in sorted(slices.items()):
        missing = sorted(set(range(max(numbers) + 1)) - set(numbers))
        if missing:
            shown = ", ".join(str(m) for m in missing[:10]) + (", ..." if len(missing) > 10 else "")
            raise InputError(f"{npz_dir / case_id}_slice*.npz: {case_id} is missing slice number(s) {shown} "
                             f"of 0..{max(numbers)}")
        cases.append(CaseRecord(case_id=case_id, source="npz",
                                slice_paths=tuple(numbers[n] for n in sorted(numbers))))
    for path in sorted(h5_dir.glob("*.h5")) if h5_dir.is_dir() else []:
        case_id = path.name[: -len(".npy.h5")] if path.name.endswith(".npy.h5") else path.stem
        if case_id in slices:
            raise InputError(f"{path}: {case_id} is also in {npz_dir}; a case must be in one of them")
        cases.append(CaseRecord(case_id=case_id, source="h5", image_path=path))
    return Dataset(root=root, layout="synapse", cases=sorted(cases, key=lambda c: c.case_id),
                   class_names=list(SYNAPSE_ORGANS), modality="CT", default_splits=_synapse_lists(root))


# -- BTCV raw --------------------------------------------------------------------------------

def _open_btcv(root: Path) -> Dataset:
    base = next((root / f for f in _BTCV_FOLDERS if (root / f / "img").is_dir()), None)
    if base is None:
        raise InputError(f"{root}: not a BTCV folder (looked for {_LOOKED_FOR['btcv']})")
    img_dir, label_dir = base / "img", base / "label"
    cases = []
    for path in sorted(img_dir.iterdir()):
        match = re.fullmatch(r"img(\d+)", _strip_nifti(path.name) or "")
        if match is None:
            continue
        label = _find_nifti(label_dir, f"label{match.group(1)}")
        if label is None:
            raise InputError(f"{path}: its label file {label_dir / ('label' + match.group(1) + '.nii.gz')} is missing")
        cases.append(CaseRecord(case_id=f"case{match.group(1)}", source="nifti", image_path=path,
                                label_path=label, label_map=dict(BTCV_TO_SYNAPSE)))
    for path in sorted(label_dir.iterdir()) if label_dir.is_dir() else []:
        match = re.fullmatch(r"label(\d+)", _strip_nifti(path.name) or "")
        if match and _find_nifti(img_dir, f"img{match.group(1)}") is None:
            raise InputError(f"{path}: its image file {img_dir / ('img' + match.group(1) + '.nii.gz')} is missing")
    return Dataset(root=root, layout="btcv", cases=cases, class_names=list(SYNAPSE_ORGANS), modality="CT")


# -- MSD / nnU-Net ---------------------------------------------------------------------------

def _msd_class_names(labels, path: Path) -> List[str]:
    """Foreground names in label order from MSD ({"1": "liver"}) or nnU-Net v2 ({"liver": 1}) labels."""
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{path}: 'labels' must be a non-empty mapping")
    if all(str(k).isdigit() for k in labels):
        by_value = {int(k): str(v) for k, v in labels.items()}
    else:
        if "ignore" in labels:
            raise InputError(f"{path}: the nnU-Net 'ignore' label (partial annotation) is not supported")
        if not all(isinstance(v, int) for v in labels.values()):
            raise InputError(f"{path}: region-based labels (lists of values) are not supported")
        by_value = {v: str(k) for k, v in labels.items()}
    foreground = sorted(v for v in by_value if v != 0)
    if foreground != list(range(1, len(foreground) + 1)):
        raise InputError(f"{path}: label values {sorted(by_value)} must be 0..N without gaps")
    return [_structure_name(by_value[v]) for v in foreground]


def _structure_name(label: str) -> str:
    """A data set's label as our structure names say it: "kidney_left" -> "left kidney"."""
    words = label.lower().replace("_", " ").split()
    if len(words) > 1 and words[-1] in ("left", "right"):
        words = [words[-1]] + words[:-1]
    return " ".join(words)


def _open_msd(root: Path) -> Dataset:
    path = root / "dataset.json"
    if not path.is_file():
        raise InputError(f"{root}: not an MSD / nnU-Net folder (looked for {_LOOKED_FOR['msd']})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: must hold a JSON object")
    channels = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise InputError(f"{path}: names no image channels ('channel_names' or 'modality')")
    if len(channels) != 1:
        raise InputError(f"{path}: {len(channels)} image channels ({', '.join(map(str, channels.values()))}); "
                         "only single-channel datasets are supported")
    channel = str(next(iter(channels.values())))
    modality = "CT" if re.search(r"(?<![a-z])ct(?![a-z])", channel.lower()) else "MR"
    class_names = _msd_class_names(meta.get("labels"), path)
    if "file_ending" in meta or "channel_names" in meta:
        cases = _nnunet_v2_cases(root, meta.get("file_ending", ".nii.gz"))
    elif isinstance(meta.get("training"), list):
        cases = _msd_cases(root, meta["training"], path)
    else:
        raise InputError(f"{path}: neither nnU-Net v2 ('file_ending', 'channel_names') nor MSD ('training') form")
    return Dataset(root=root, layout="msd", cases=cases, class_names=class_names, modality=modality)


def _nnunet_v2_cases(root: Path, ending: str) -> List[CaseRecord]:
    images, labels = root / "imagesTr", root / "labelsTr"
    suffix = f"_0000{ending}"
    cases = []
    for image in sorted(images.glob(f"*{suffix}")) if images.is_dir() else []:
        case_id = image.name[: -len(suffix)]
        label = labels / f"{case_id}{ending}"
        if not label.is_file():
            raise InputError(f"{image}: its label file {label} is missing")
        cases.append(CaseRecord(case_id=case_id, source="nifti", image_path=image, label_path=label))
    known = {c.case_id for c in cases}
    for label in sorted(labels.glob(f"*{ending}")) if labels.is_dir() else []:
        if label.name[: -len(ending)] not in known:
            raise InputError(f"{label}: its image file {images / (label.name[: -len(ending)] + suffix)} is missing")
    return cases


def _msd_cases(root: Path, training: list, path: Path) -> List[CaseRecord]:
    cases = []
    for entry in training:
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(entry.get("label"), str):
            raise InputError(f"{path}: 'training' entries must be {{\"image\": path, \"label\": path}}, got {entry!r}")
        image, label = root / entry["image"], root / entry["label"]
        for file in (image, label):
            if not file.is_file():
                raise InputError(f"{file}: missing (listed in {path.name})")
        case_id = _strip_nifti(image.name) or image.stem
        cases.append(CaseRecord(case_id=case_id, source="nifti", image_path=image, label_path=label))
    return cases


_READERS = {"acdc": _open_acdc, "synapse": _open_synapse, "btcv": _open_btcv, "msd": _open_msd}
