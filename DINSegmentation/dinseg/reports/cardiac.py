"""Cardiac function from short-axis labels: ventricular volumes, ejection fraction, myocardial mass.

One function, :func:`cardiac_function`, turns per-frame labels into the figures cardiologists
read; the CLI (``dinseg cardiac-function``), the Slicer module and the tests all call it.
Volumes are voxel counts times the voxel volume (no slice interpolation), as in the ACDC
challenge. ED and ES are the frames of largest and smallest left-ventricle cavity volume
unless given; the myocardial mass is taken at ED with a density of 1.05 g/mL.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..core.errors import InputError
from ..core.geometry import voxel_ml
from ..core.io import atomic_output
from ..core.terminology import LabelInfo

MYOCARDIAL_DENSITY_G_PER_ML = 1.05
#: the structures we need, and the label names that mean each (model cards, Slicer segment names)
STRUCTURE_NAMES = {
    "lv": ("left ventricle", "left ventricle cavity", "lv", "left ventricular cavity"),
    "rv": ("right ventricle", "right ventricle cavity", "rv", "right ventricular cavity"),
    "myocardium": ("myocardium", "left ventricle myocardium", "myo", "left ventricular myocardium"),
}


def structure_values(labels: Sequence[LabelInfo]) -> Dict[str, int]:
    """{"lv": value, "rv": value, "myocardium": value} for the structures ``labels`` name.

    The left ventricle is required (InputError without it); RV and myocardium are optional.
    """
    found = {}
    for label in labels:
        name = label.name.strip().lower()
        for key, names in STRUCTURE_NAMES.items():
            if name in names and key not in found:
                found[key] = label.value
    if "lv" not in found:
        raise InputError("the segmentation has no left ventricle (a label named 'left ventricle'); "
                         f"its labels are: {', '.join(label.name for label in labels) or 'none'}")
    return found


def body_surface_area(height_cm: float, weight_kg: float) -> float:
    """Mosteller's body surface area in m^2: sqrt(height [cm] x weight [kg] / 3600)."""
    if not (height_cm > 0 and weight_kg > 0):
        raise InputError(f"height ({height_cm} cm) and weight ({weight_kg} kg) must be positive")
    return math.sqrt(height_cm * weight_kg / 3600.0)


@dataclass
class CardiacFunction:
    """Cardiac function of one cine (or ED/ES pair).

    volumes_ml: structure -> volume in mL per frame; ed_frame, es_frame: 0-based frame
    indices. Ventricular figures are None for a structure the labels lack.
    """

    volumes_ml: Dict[str, List[float]]
    ed_frame: int
    es_frame: int
    voxel_volume_ml: float
    bsa_m2: Optional[float] = None
    figures: Dict[str, Optional[float]] = field(default_factory=dict)
    #: the quality verdict (see :func:`function_quality`): {"status", "reasons", "phases": {"ED": ..., "ES": ...}}
    quality: Optional[Dict[str, object]] = None

    #: (key, label, unit) of each figure, in the order of the table
    ROWS = (("lv_edv_ml", "LV end-diastolic volume", "mL"), ("lv_esv_ml", "LV end-systolic volume", "mL"),
            ("lv_sv_ml", "LV stroke volume", "mL"), ("lv_ef_percent", "LV ejection fraction", "%"),
            ("rv_edv_ml", "RV end-diastolic volume", "mL"), ("rv_esv_ml", "RV end-systolic volume", "mL"),
            ("rv_sv_ml", "RV stroke volume", "mL"), ("rv_ef_percent", "RV ejection fraction", "%"),
            ("lv_mass_g", "LV myocardial mass (ED)", "g"))
    INDEXED = ("lv_edv_ml", "lv_esv_ml", "lv_sv_ml", "rv_edv_ml", "rv_esv_ml", "rv_sv_ml", "lv_mass_g")

    @property
    def frames(self) -> int:
        return len(self.volumes_ml["lv"])

    def indexed(self, key: str) -> Optional[float]:
        """A volume or mass divided by body surface area (per m^2), when BSA is known."""
        value = self.figures.get(key)
        if value is None or self.bsa_m2 is None or key not in self.INDEXED:
            return None
        return value / self.bsa_m2

    def to_dict(self) -> Dict[str, object]:
        return {"ed_frame": self.ed_frame + 1, "es_frame": self.es_frame + 1, "frames": self.frames,
                "frame_numbering": "1 = first frame", "voxel_volume_ml": self.voxel_volume_ml,
                "body_surface_area_m2": self.bsa_m2,
                **{key: self.figures.get(key) for key, _, _ in self.ROWS},
                **{f"{key[:-3] if key.endswith('_ml') else key[:-2]}_per_m2": self.indexed(key)
                   for key in self.INDEXED if self.bsa_m2 is not None},
                "volumes_ml_per_frame": self.volumes_ml,
                **({"quality": self.quality} if self.quality is not None else {})}

    def table(self) -> str:
        """The figures as a plain-text table for the terminal."""
        lines = [f"ED frame {self.ed_frame + 1}, ES frame {self.es_frame + 1} (of {self.frames}; 1 = first)"]
        if self.bsa_m2 is not None:
            lines[0] += f", body surface area {self.bsa_m2:.2f} m2 (Mosteller)"
        for key, label, unit in self.ROWS:
            value = self.figures.get(key)
            text = "n/a" if value is None else f"{value:8.1f}"
            indexed = self.indexed(key)
            suffix = f"   {indexed:7.1f} {unit}/m2" if indexed is not None else ""
            lines.append(f"  {label:<27}{text:>8} {unit:<3}{suffix}".rstrip())
        if self.quality is not None:
            lines.append(f"  {'quality':<27}{self.quality['status']:>8}")
            for phase, verdict in self.quality.get("phases", {}).items():
                lines.append(f"  {'  ' + phase:<27}{verdict['status']:>8}")
        return "\n".join(lines)

    def quality_warnings(self, notes: bool = False) -> List[str]:
        """One line per problem of the verdict (whole report, then per phase and structure); with
        ``notes``, the notes on checks that could not run instead."""
        if self.quality is None:
            return []
        if notes:
            return list(dict.fromkeys(f"{phase}: {note}" for phase, verdict in self.quality.get("phases", {}).items()
                                      for note in verdict.get("notes", [])))
        lines = list(self.quality["reasons"])
        for phase, verdict in self.quality.get("phases", {}).items():
            lines += [f"{phase}: {reason}" for reason in verdict["reasons"] if reason not in verdict.get("notes", [])]
            for name, structure in verdict["structures"].items():
                lines += [f"{phase}: {name}: {reason}" for reason in structure["reasons"]]
        return list(dict.fromkeys(lines))


def function_quality(result: CardiacFunction, phases: Dict[str, object]) -> Dict[str, object]:
    """The report's verdict: per phase a reports.quality.QualityVerdict (its to_dict()), and the report's
    own checks (ED larger than ES, ejection fractions and LV mass in range; reports.quality); "review"
    when any of them needs it. Sets ``result.quality`` and returns it."""
    from .quality import REVIEW, OK, cardiac_function_checks

    reasons = cardiac_function_checks(result.figures, result.volumes_ml, result.ed_frame, result.es_frame)
    dicts = {phase: verdict.to_dict() for phase, verdict in phases.items()}
    review = bool(reasons) or any(verdict["status"] == REVIEW for verdict in dicts.values())
    result.quality = {"status": REVIEW if review else OK, "reasons": reasons, "phases": dicts}
    return result.quality


def frame_volumes(label_frames: Sequence[np.ndarray], values: Dict[str, int], voxel_volume_ml: float
                  ) -> Dict[str, List[float]]:
    """structure -> [voxel count x voxel volume (mL) per frame]; label_frames: (t, z, y, x) or a list of (z, y, x)."""
    volumes = {key: [] for key in values}
    for labels in label_frames:
        counts = np.bincount(np.asarray(labels).ravel(), minlength=max(values.values()) + 1)
        for key, value in values.items():
            volumes[key].append(float(counts[value]) * voxel_volume_ml)
    return volumes


def cardiac_function(label_frames: Sequence[np.ndarray], spacing_mm: Sequence[float], labels: Sequence[LabelInfo],
                     ed_frame: Optional[int] = None, es_frame: Optional[int] = None,
                     height_cm: Optional[float] = None, weight_kg: Optional[float] = None) -> CardiacFunction:
    """Cardiac function from labels of two or more frames on one grid.

    label_frames: (t, z, y, x) integer labels, or a list of (z, y, x) arrays of one shape;
    spacing_mm: the voxel size (x, y, z); labels: what each label value means (see
    :func:`structure_values`); ed_frame / es_frame: 0-based, default the frames of largest /
    smallest LV volume. Raises InputError for fewer than two frames, frames of different
    shapes, no LV, or an LV of zero volume at ED.
    """
    frames = list(label_frames)
    if len(frames) < 2:
        raise InputError(f"cardiac function needs at least two frames (ED and ES), got {len(frames)}")
    shapes = {np.shape(frame) for frame in frames}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise InputError(f"all frames must be 3D volumes on one grid, got shapes {sorted(shapes)}")
    values = structure_values(labels)
    voxel_volume_ml = voxel_ml(spacing_mm)
    volumes = frame_volumes(frames, values, voxel_volume_ml)
    lv = volumes["lv"]
    for name, frame in (("ED", ed_frame), ("ES", es_frame)):
        if frame is not None and not 0 <= frame < len(frames):
            raise InputError(f"{name} frame {frame + 1} is outside frames 1..{len(frames)}")
    ed = int(np.argmax(lv)) if ed_frame is None else ed_frame
    es = int(np.argmin(lv)) if es_frame is None else es_frame
    if lv[ed] <= 0:
        raise InputError(f"the left ventricle has zero volume at ED (frame {ed + 1}): nothing to measure")
    figures: Dict[str, Optional[float]] = {}
    for key in ("lv", "rv"):
        edv = volumes[key][ed] if key in volumes else None
        esv = volumes[key][es] if key in volumes else None
        usable = edv is not None and edv > 0
        figures[f"{key}_edv_ml"] = edv
        figures[f"{key}_esv_ml"] = esv
        figures[f"{key}_sv_ml"] = edv - esv if usable else None
        figures[f"{key}_ef_percent"] = 100.0 * (edv - esv) / edv if usable else None
    myocardium = volumes.get("myocardium")
    figures["lv_mass_g"] = myocardium[ed] * MYOCARDIAL_DENSITY_G_PER_ML if myocardium else None
    bsa = body_surface_area(height_cm, weight_kg) if height_cm is not None and weight_kg is not None else None
    return CardiacFunction(volumes_ml=volumes, ed_frame=ed, es_frame=es, voxel_volume_ml=voxel_volume_ml,
                           bsa_m2=bsa, figures=figures)


# -- files ------------------------------------------------------------------------------------

def write_json(path, result: CardiacFunction) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")


def write_csv(path, result: CardiacFunction) -> None:
    """One row per figure: quantity, value, unit, value per m^2 of body surface (when known)."""
    rows = ["quantity,value,unit,indexed_per_m2"]
    rows.append(f"ED frame,{result.ed_frame + 1},frame (1 = first),")
    rows.append(f"ES frame,{result.es_frame + 1},frame (1 = first),")
    for key, label, unit in result.ROWS:
        value, indexed = result.figures.get(key), result.indexed(key)
        rows.append(f"{label},{'' if value is None else f'{value:.3f}'},{unit},"
                    f"{'' if indexed is None else f'{indexed:.3f}'}")
    if result.quality is not None:
        rows.append(f"quality,{result.quality['status']},ok or review,")
        for phase, verdict in result.quality.get("phases", {}).items():
            rows.append(f"quality {phase},{verdict['status']},ok or review,")
        for line in result.quality_warnings() + result.quality_warnings(notes=True):
            rows.append('quality reason,"' + line.replace('"', "'") + '",,')
    with atomic_output(path) as temporary:
        temporary.write_text("\n".join(rows) + "\n", encoding="utf-8")


def plot_volume_curve(path, result: CardiacFunction, title: str = "") -> None:
    """PNG of LV and RV cavity volume over the cardiac cycle, ED and ES marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(1, result.frames + 1))
    figure, axis = plt.subplots(figsize=(6.4, 3.8))
    for key, name, colour in (("lv", "LV cavity", "#d62728"), ("rv", "RV cavity", "#1f77b4")):
        if key in result.volumes_ml:
            axis.plot(x, result.volumes_ml[key], marker="o", color=colour, label=name)
    for frame, name in ((result.ed_frame, "ED"), (result.es_frame, "ES")):
        axis.axvline(x[frame], color="grey", linestyle="--", linewidth=1)
        axis.annotate(name, (x[frame], axis.get_ylim()[1]), ha="center", va="bottom", fontsize=9)
    axis.set(xlabel="frame (1 = first)", ylabel="volume (mL)")
    axis.set_title(title or "ventricular volume over the cardiac cycle", pad=14)
    axis.legend()
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)
