"""Know when not to trust a result: a verdict ("ok" or "review") with its reasons, from measured checks.

Arrays, geometry and the model card in, a :class:`QualityVerdict` out (no MRML, no Qt, no network).
:func:`quality_verdict` runs four groups of checks, each on its own; a check that cannot be
computed says so once as a note and leaves the verdict to the others (a check never raises):

- **anatomy**: structures on the expected side and in the expected order, in patient LPS
  millimetres (x to the patient's left, y posterior, z superior): the liver to the right of the
  spleen and of the body's centre, the right kidney on the liver's side, the kidneys behind the
  body's centre, the right ventricle to the patient's right of the left ventricle. A whole
  image that contradicts them is named as a reversed axis in the header.
- **plausibility**: organ volumes against published adult ranges, cardiac volumes and mass, the
  short-axis rules of ukbb_cardiac, the height of each structure along the slice axis against the
  training labels' (a slice spacing that is wrong makes organs too tall or too short), and
  structures touching the image's border ("incomplete": their volume is a lower bound).
- **input**: the image against the statistics of the training images that the model card carries
  (``training["statistics"]``): spacing, field of view, intensities inside the body, and each
  structure's intensity (CT: median HU, which names the contrast phase; MR: relative to a
  reference structure, which names the sequence: on T2 the spleen is brighter than the liver, on
  T1 darker).
- **confidence**: a predicted Dice per structure from the agreement between the result and the
  results of cheap test-time variants (the image re-stored 15 % larger in-plane), mapped to Dice by
  the card's calibration (``training["statistics"]["confidence"]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..core.geometry import Geometry

OK, REVIEW = "ok", "review"
#: a structure whose predicted Dice is below this needs review
PREDICTED_DICE_REVIEW = 0.80
#: the statistics block's key inside a card's ``training`` (the card's JSON keeps it there)
STATISTICS_KEY = "statistics"
#: ukbb_cardiac's short-axis quality control (W. Bai et al., "Automated cardiovascular magnetic
#: resonance image analysis with fully convolutional networks", JCMR 20:65, 2018;
#: github.com/baiwenjia/ukbb_cardiac, common/cardiac_utils.py, sa_pass_quality_control): every class
#: has >= 10 pixels; LV cavity and myocardium (>= 10 pixels each) on >= 6 slices, with no gap between
UKBB_MIN_PIXELS = 10
UKBB_MIN_SLICES = 6

#: Published adult volume ranges, mL, wide enough to hold normal variation and common disease, so that
#: what falls outside is more likely a segmentation (or header) error than a patient.
#: liver: standard liver volume ~ 706 x BSA + 2.4 mL (Urata et al., Hepatology 21:1317, 1995) gives
#:   1000-1700 mL for adults; CT volumetry 800-3000 mL incl. hepatomegaly (Heinemann et al., Forensic
#:   Sci Int 1999, liver weight 0.8-2.6 kg; density ~1.05 g/mL).
#: spleen: 107-314 mL in normal adults (Prassopoulos et al., Eur Radiol 7:246, 1997); up to ~1000 mL
#:   in splenomegaly.
#: kidney: 146 +- 33 mL (left) and 134 +- 32 mL (right) by ultrasound (Emamian et al., AJR 160:83,
#:   1993); CT 100-300 mL (Cheong et al., Clin Radiol 62:884, 2007).
#: pancreas: 72 +- 25 mL, 30-130 mL over adult ages (Saisho et al., Clin Anat 20:933, 2007); atrophic
#:   pancreases of the elderly and diabetic go below 30 mL, hence 15.
#: gallbladder: fasting 15-60 mL, up to ~100 mL distended (Everson et al., Gastroenterology 79:40, 1980).
#: heart, cine SSFP (Kawel-Boehm et al., "Reference ranges for cardiovascular magnetic resonance in
#:   adults", JCMR 22:87, 2020): LV EDV ~ 100-230 mL, RV EDV ~ 100-260 mL, LV mass 70-200 g in normal
#:   adults; the bounds below add dilated (ACDC's DCM reaches ~ 450 mL) and hypertrophic hearts.
VOLUME_RANGES_ML: Dict[str, Tuple[float, float]] = {
    "liver": (600.0, 3500.0),
    "spleen": (30.0, 1200.0),
    "left kidney": (60.0, 380.0),
    "right kidney": (60.0, 380.0),
    "pancreas": (15.0, 180.0),
    "gallbladder": (3.0, 200.0),
    "right ventricle": (8.0, 500.0),
    "left ventricle": (8.0, 500.0),
    "myocardium": (35.0, 380.0),  # mL; x 1.05 g/mL is 37-400 g
}
#: LV / RV ejection fraction, % (Kawel-Boehm 2020: normal 55-75 %; severe dysfunction down to ~ 5 %)
EF_RANGE = (5.0, 85.0)
#: structures expected whole inside an abdominal scan: touching the border makes them "review"
EXPECTED_WHOLE = {"liver", "spleen", "left kidney", "right kidney", "gallbladder", "pancreas"}
CARDIAC = {"right ventricle", "myocardium", "left ventricle"}
#: margins around the training statistics' ranges: spacing and field of view within [min / 1.6,
#: max x 1.6]; heights within [min / 1.35, max x 1.35]; intensities within the range widened by half
#: its width (and at least INTENSITY_FLOOR of the quantity's scale)
SPACING_FACTOR = 1.6
HEIGHT_FACTOR = 1.35
INTENSITY_WIDEN = 0.5
#: MR structure intensities (from predicted labels, with partial volume at ES) by their whole width each side
STRUCTURE_WIDEN = 1.0
#: a centroid must be this far (mm) on the wrong side before a side is called reversed
SIDE_MARGIN_MM = 15.0


@dataclass
class StructureQuality:
    """One structure's verdict: status, predicted Dice (None when not computed) and reasons."""

    name: str
    status: str = OK
    predicted_dice: Optional[float] = None
    reasons: List[str] = field(default_factory=list)
    incomplete: bool = False
    agreement: Optional[float] = None

    def to_dict(self) -> Dict[str, object]:
        return {"status": self.status,
                "predicted_dice": None if self.predicted_dice is None else round(float(self.predicted_dice), 3),
                "reasons": list(self.reasons), "incomplete": self.incomplete}


@dataclass
class QualityVerdict:
    """The verdict on one result: "ok" or "review", the reasons (problems first, then notes on checks
    that could not run), and one :class:`StructureQuality` per structure."""

    status: str = OK
    reasons: List[str] = field(default_factory=list)
    structures: Dict[str, StructureQuality] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, object]:
        """reasons: the case's problems, then the notes (checks that could not run); notes: the latter
        alone; problems: :meth:`warnings`, the case's and each structure's, what a user should check."""
        return {"status": self.status, "reasons": list(self.reasons) + list(self.notes), "notes": list(self.notes),
                "problems": self.warnings(),
                "structures": {name: s.to_dict() for name, s in self.structures.items()}}

    def warnings(self) -> List[str]:
        """One line per problem (case first, then per structure), for ``dinseg: warning:`` lines; the notes
        on checks that could not run are :attr:`notes`."""
        lines = list(self.reasons)
        for name, structure in self.structures.items():
            lines += [f"{name}: {reason}" for reason in structure.reasons]
        return lines

    @property
    def needs_review(self) -> bool:
        return self.status == REVIEW


class _Collector:
    """Collects reasons while the checks run; finishes into a QualityVerdict."""

    def __init__(self, names: Sequence[str]):
        self.case: List[str] = []
        self.notes: List[str] = []
        self.structures = {name: StructureQuality(name) for name in names}

    def problem(self, text: str) -> None:
        if text not in self.case:
            self.case.append(text)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def structure(self, name: str, text: str) -> None:
        if name in self.structures and text not in self.structures[name].reasons:
            self.structures[name].reasons.append(text)

    def run(self, label: str, check, *args) -> None:
        try:
            check(self, *args)
        except Exception as error:  # a check never crashes a run
            self.note(f"the {label} check could not be computed ({type(error).__name__}: {error})")

    def finish(self) -> QualityVerdict:
        for structure in self.structures.values():
            low = structure.predicted_dice is not None and structure.predicted_dice < PREDICTED_DICE_REVIEW
            if low:
                structure.reasons.append(f"predicted Dice {structure.predicted_dice:.2f} (below "
                                         f"{PREDICTED_DICE_REVIEW:.2f}: the result changes when the image is "
                                         "re-stored slightly larger)")
            structure.status = REVIEW if structure.reasons else OK
        status = REVIEW if self.case or any(s.status == REVIEW for s in self.structures.values()) else OK
        return QualityVerdict(status=status, reasons=self.case, structures=self.structures, notes=self.notes)


# --------------------------------------------------------------------------------------------------
# measurements


@dataclass
class Measured:
    """What the checks need of one structure in one 3D frame."""

    voxels: int
    volume_ml: float
    centroid_lps: Optional[np.ndarray]
    height_mm: float                 # extent along the image's slice axis (k), slice centres + 1 spacing
    slices: List[int]                # k indices holding it
    border: Tuple[str, ...]          # which image borders it touches: "in-plane", "first slice", "last slice"
    median_intensity: Optional[float]


def measure(labels: np.ndarray, image: Optional[np.ndarray], geometry: Geometry,
            names: Mapping[int, str]) -> Dict[str, Measured]:
    """Per structure name: voxels, volume, LPS centroid, height along k, slices, borders, median intensity."""
    voxel_ml = geometry.voxel_ml
    to_lps = geometry.index_to_lps()
    shape = labels.shape
    found = {}
    for value, name in names.items():
        mask = labels == value
        count = int(np.count_nonzero(mask))
        if not count:
            found[name] = Measured(0, 0.0, None, 0.0, [], (), None)
            continue
        k, j, i = np.nonzero(mask)
        centroid = (to_lps @ np.array([i.mean(), j.mean(), k.mean(), 1.0]))[:3]
        slices = sorted(set(int(s) for s in np.unique(k)))
        border = []
        if i.min() == 0 or j.min() == 0 or i.max() == shape[2] - 1 or j.max() == shape[1] - 1:
            border.append("in-plane")
        if shape[0] > 1 and k.min() == 0:
            border.append("first slice")
        if shape[0] > 1 and k.max() == shape[0] - 1:
            border.append("last slice")
        median = None
        if image is not None:
            values = image[mask]
            if values.size > 200_000:
                values = values[:: values.size // 200_000]
            median = float(np.median(values.astype(np.float64)))
        found[name] = Measured(count, count * voxel_ml, centroid,
                               (int(k.max()) - int(k.min()) + 1) * float(geometry.spacing[2]), slices,
                               tuple(border), median)
    return found


def body_mask(image: np.ndarray, modality: str) -> np.ndarray:
    """Voxels inside the body: CT above -300 HU (above -110 HU for a soft-tissue-clipped CT, whose air is
    the window's floor, as Synapse stores it); MR above 10 % of the 99th percentile."""
    if modality.upper() == "CT":
        low = float(image.min())
        return image > (-300.0 if low < -200 else low + 15.0)
    sample = image.ravel()[:: max(1, image.size // 500_000)].astype(np.float64)
    return image > 0.1 * float(np.percentile(sample, 99))


def body_intensity(image: np.ndarray, modality: str) -> Dict[str, float]:
    """5th, 50th, 95th percentile of the intensities inside the body (CT: HU; MR: / the body's 99th
    percentile, so that the arbitrary scale of MR units drops out)."""
    values = image[body_mask(image, modality)].astype(np.float64)
    if values.size > 500_000:
        values = values[:: values.size // 500_000]
    p5, p50, p95, p99 = np.percentile(values, [5, 50, 95, 99])
    scale = 1.0 if modality.upper() == "CT" else max(p99, 1e-6)
    return {"p5": p5 / scale, "p50": p50 / scale, "p95": p95 / scale}


def reference_structure(names: Iterable[str], modality: str) -> Optional[str]:
    """The structure MR intensities are divided by: the liver (abdomen), the LV cavity (cine); CT: none."""
    if modality.upper() == "CT":
        return None
    names = list(names)
    for candidate in ("liver", "left ventricle"):
        if candidate in names:
            return candidate
    return names[0] if names else None


def structure_intensities(measured: Mapping[str, Measured], modality: str) -> Dict[str, float]:
    """Per structure: median HU (CT) or median / the reference structure's median (MR)."""
    reference = reference_structure(measured, modality)
    scale = 1.0
    if reference is not None:
        ref = measured[reference].median_intensity
        if not ref or ref <= 0:
            return {}
        scale = ref
    return {name: m.median_intensity / scale for name, m in measured.items()
            if m.median_intensity is not None and name != reference}


def in_plane_spacing_and_fov(geometry: Geometry, orientation_mode: str = "anatomical"):
    """(in-plane spacing (min, max), slice spacing, in-plane field of view (min, max) mm, slice extent mm):
    for an abdominal scan the axial plane (the axes closest to LPS x and y), for a cine the stack's plane."""
    from ..core.geometry import canonical_reorientation

    reorientation = canonical_reorientation(geometry, "LPS", orientation_mode)
    spacing = reorientation.spacing(geometry)
    size = [geometry.size[a] for a in reorientation.axes]
    fov = [spacing[c] * size[c] for c in range(3)]
    return (min(spacing[:2]), max(spacing[:2])), spacing[2], (min(fov[:2]), max(fov[:2])), fov[2]


def case_statistics(image: np.ndarray, labels: np.ndarray, geometry: Geometry, names: Mapping[int, str],
                    modality: str, orientation_mode: str = "anatomical") -> Dict[str, object]:
    """The figures of one training case that :func:`summarize_statistics` turns into a card's block."""
    measured = measure(labels, image, geometry, names)
    spacing, slice_spacing, fov, extent = in_plane_spacing_and_fov(geometry, orientation_mode)
    return {"spacing": spacing, "slice_spacing": slice_spacing, "fov": fov, "extent": extent,
            "body": body_intensity(image, modality),
            "structures": structure_intensities(measured, modality),
            "heights": {name: m.height_mm for name, m in measured.items()
                        if m.voxels and not m.border}}


def summarize_statistics(cases: Sequence[Mapping[str, object]], modality: str, names: Sequence[str],
                         source: str, command: str) -> Dict[str, object]:
    """The ``training["statistics"]`` block of a card from :func:`case_statistics` of its training cases."""
    def span(values):
        values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        return [round(min(values), 4), round(max(values), 4)] if values else None

    structures = sorted({n for c in cases for n in c["structures"]})
    heights = sorted({n for c in cases for n in c["heights"]})
    return {
        "format": "dinseg-training-statistics/1",
        "cases": len(cases), "source": source, "command": command, "modality": modality,
        "spacing_mm": {"in_plane": span([v for c in cases for v in c["spacing"]]),
                       "slice": span([c["slice_spacing"] for c in cases])},
        "field_of_view_mm": {"in_plane": span([v for c in cases for v in c["fov"]]),
                             "slice_extent": span([c["extent"] for c in cases])},
        "body_intensity": {"units": "HU" if modality.upper() == "CT" else "/ body 99th percentile",
                           **{k: span([c["body"][k] for c in cases]) for k in ("p5", "p50", "p95")}},
        "structure_intensity": {"units": "median HU" if modality.upper() == "CT" else
                                f"median / median of {reference_structure(names, modality)}",
                                "reference": reference_structure(names, modality),
                                **{n: span([c["structures"].get(n) for c in cases]) for n in structures}},
        "height_mm": {n: span([c["heights"].get(n) for c in cases]) for n in heights},
    }


def card_statistics(card) -> Optional[Mapping[str, object]]:
    """A card's training statistics block, or None (``training["statistics"]``; a JSON card's top-level
    ``training_statistics`` is read too)."""
    training = getattr(card, "training", None) or {}
    if isinstance(training, Mapping) and isinstance(training.get(STATISTICS_KEY), Mapping):
        return training[STATISTICS_KEY]
    if isinstance(card, Mapping):
        return card.get("training_statistics") or (card.get("training") or {}).get(STATISTICS_KEY)
    return None


# --------------------------------------------------------------------------------------------------
# the checks


def _names(card) -> Dict[int, str]:
    return {int(info.value): info.name for info in card.labels}


def _is_cardiac(card, names: Iterable[str]) -> bool:
    return getattr(card, "anatomy", "") == "heart" or bool(CARDIAC & set(names))


def check_anatomy(out: _Collector, measured: Mapping[str, Measured], image, geometry: Geometry,
                  modality: str, cardiac: bool) -> None:
    """Sides and order in LPS: LR and AP reversals of the header are named as such."""
    c = {n: m.centroid_lps for n, m in measured.items() if m.centroid_lps is not None and m.voxels >= 50}
    if cardiac:
        if "right ventricle" not in c or "left ventricle" not in c:
            out.note("the anatomy check needs both ventricles; one is missing")
            return
        d = c["right ventricle"] - c["left ventricle"]
        # the RV lies to the patient's right of the LV (LPS x smaller): RV - LV x was -24 to -54 mm on
        # 40 ACDC volumes. Its front-back offset (y) took both signs there (-39 to +34 mm; ACDC's
        # headers vary), so no anterior-posterior rule is made for short-axis stacks.
        if d[0] > SIDE_MARGIN_MM:
            out.problem("the image's left-right axis looks reversed (the right ventricle lies on the patient's "
                        "left of the left ventricle): check its orientation")
        return
    body = None
    if image is not None:
        mask = body_mask(image, modality)
        if mask.any():
            k, j, i = np.nonzero(mask[:, ::4, ::4])
            body = (geometry.index_to_lps() @ np.array([4 * i.mean(), 4 * j.mean(), k.mean(), 1.0]))[:3]
    votes_lr, votes_ap = [], []
    if "liver" in c and "spleen" in c:
        votes_lr.append(c["liver"][0] - c["spleen"][0] > SIDE_MARGIN_MM)
    if "liver" in c and body is not None:
        votes_lr.append(c["liver"][0] - body[0] > SIDE_MARGIN_MM)
    if "liver" in c and "stomach" in c:
        votes_lr.append(c["liver"][0] - c["stomach"][0] > SIDE_MARGIN_MM)
    kidneys = [n for n in ("left kidney", "right kidney") if n in c]
    if kidneys and body is not None:
        # the kidneys are retroperitoneal: behind the body's centre (LPS y larger)
        votes_ap.append(np.mean([c[n][1] for n in kidneys]) - body[1] < -SIDE_MARGIN_MM / 2)
    if not votes_lr and not votes_ap:
        out.note("the anatomy check found no pair of structures to compare")
    if votes_lr and sum(votes_lr) * 2 > len(votes_lr):
        out.problem("the image's left-right axis looks reversed (the liver lies on the patient's left): check "
                    "its orientation")
        for name in kidneys:
            out.structure(name, "its side is unconfirmed: the image's left-right axis looks reversed")
    if votes_ap and all(votes_ap):
        out.problem("the image's anterior-posterior axis looks reversed (the kidneys lie in front of the body's "
                    "centre): check its orientation")
    if "liver" in c and len(kidneys) == 2:
        near_right = abs(c["right kidney"][0] - c["liver"][0]) < abs(c["left kidney"][0] - c["liver"][0])
        if not near_right and abs(c["right kidney"][0] - c["left kidney"][0]) > SIDE_MARGIN_MM:
            for name in kidneys:
                out.structure(name, "left and right kidney look swapped (the right kidney is on the spleen's "
                                    "side of the liver)")


def check_plausibility(out: _Collector, measured: Mapping[str, Measured], cardiac: bool,
                       statistics: Optional[Mapping[str, object]]) -> None:
    """Volumes, border contact (incomplete), heights along the slice axis, ukbb_cardiac rules."""
    heights = (statistics or {}).get("height_mm") or {}
    tall, short = [], []
    for name, m in measured.items():
        span = heights.get(name)
        if not span or not m.voxels or m.border:
            continue
        if m.height_mm > span[1] * HEIGHT_FACTOR:
            # a header problem, not this structure's: named on the whole result
            tall.append(f"{name} {m.height_mm:.0f} mm")
        elif m.height_mm < span[0] / HEIGHT_FACTOR:
            short.append(f"{name} {m.height_mm:.0f} mm")
            out.structure(name, f"only {m.height_mm:.0f} mm tall along the slice axis (training labels "
                                f"{span[0]:.0f}-{span[1]:.0f} mm): partly missed?")
    spacing_suspect = len(tall) >= 2 or bool(tall and len([n for n in measured if n in heights]) == 1)
    if spacing_suspect:
        out.problem(f"the slice spacing in the header looks too large ({', '.join(tall)} tall): check it; "
                    "volumes are too large by the same factor")
    if len(short) >= 2:
        out.problem(f"structures are much shorter along the slice axis than in the training labels "
                    f"({', '.join(short)}): the segmentation failed, or the header's slice spacing is too small")
    for name, m in measured.items():
        if not m.voxels:
            if name in VOLUME_RANGES_ML or cardiac:
                out.structure(name, "not found in the image")
            continue
        touches_plane = "in-plane" in m.border
        touches = bool(m.border)
        if cardiac:
            # a short-axis stack often stops at the base or apex; the heart cut in-plane is incomplete
            incomplete = touches_plane
        else:
            incomplete = touches
        out.structures[name].incomplete = incomplete
        if incomplete and (name in EXPECTED_WHOLE or cardiac):
            out.structure(name, f"touches the image's border ({', '.join(m.border)}): incomplete, its volume "
                                f"({m.volume_ml:.0f} mL) is a lower bound")
        bounds = VOLUME_RANGES_ML.get(name)
        if bounds:
            low, high = bounds
            if m.volume_ml > high:
                text = f"volume {m.volume_ml:.0f} mL is above the adult range ({low:g}-{high:g} mL)"
                if spacing_suspect:  # explained by the header's slice spacing: the result's problem
                    out.problem(f"{name}: {text}")
                else:
                    out.structure(name, text)
            elif m.volume_ml < low and not incomplete:
                out.structure(name, f"volume {m.volume_ml:.0f} mL is below the adult range "
                                    f"({low:g}-{high:g} mL)")
    if not cardiac:
        check_sides_by_size(out, measured)
    if cardiac:
        check_ukbb(out, measured)


def check_sides_by_size(out: _Collector, measured: Mapping[str, Measured]) -> None:
    """A network that sees a mirrored abdomen names the organs by side: the liver becomes the "spleen".
    In adults the liver (1000-1700 mL) is always larger than the spleen (107-314 mL; see VOLUME_RANGES_ML),
    so a "spleen" larger than the "liver" means the sides are swapped; and where the liver itself is not
    plausible, the left and right kidney cannot be told apart by it (their sides are unconfirmed)."""
    liver, spleen = measured.get("liver"), measured.get("spleen")
    kidneys = [n for n in ("left kidney", "right kidney") if n in measured and measured[n].voxels]
    if liver and spleen and spleen.voxels >= 50 and spleen.volume_ml > liver.volume_ml:
        out.problem(f"the spleen ({spleen.volume_ml:.0f} mL) is larger than the liver ({liver.volume_ml:.0f} mL): "
                    "left and right look swapped (is the image's left-right axis reversed? check its orientation), "
                    "or the segmentation failed")
        for name in ["liver", "spleen"] + kidneys:
            out.structure(name, "left and right look swapped (spleen larger than liver)")
        return
    if liver and kidneys:
        low = VOLUME_RANGES_ML["liver"][0]
        if liver.volume_ml < low and not out.structures["liver"].incomplete:
            for name in kidneys:
                out.structure(name, f"its side is unconfirmed: the liver, which marks the patient's right, is "
                                    f"implausible ({liver.volume_ml:.0f} mL)")


def check_ukbb(out: _Collector, measured: Mapping[str, Measured], labels: Optional[np.ndarray] = None) -> None:
    """ukbb_cardiac's short-axis rules (see UKBB_MIN_PIXELS); works on :func:`measure`'s slices."""
    for name in CARDIAC & set(measured):
        if measured[name].voxels < UKBB_MIN_PIXELS:
            out.structure(name, f"fewer than {UKBB_MIN_PIXELS} pixels (ukbb_cardiac's rule)")
    per_slice = getattr(out, "_slice_pixels", None)
    if per_slice is None:
        return
    both = [z for z, (lv, myo) in sorted(per_slice.items()) if lv >= UKBB_MIN_PIXELS and myo >= UKBB_MIN_PIXELS]
    if len(both) < UKBB_MIN_SLICES:
        out.problem(f"the LV cavity and myocardium are on {len(both)} slice(s), fewer than {UKBB_MIN_SLICES} "
                    "(ukbb_cardiac's rule): the stack may not cover the ventricle")
    elif len(both) != both[-1] - both[0] + 1:
        missing = sorted(set(range(both[0], both[-1] + 1)) - set(both))
        out.problem(f"the LV cavity or myocardium is missing on slice(s) {', '.join(str(z + 1) for z in missing)} "
                    "between others (ukbb_cardiac's rule)")


def slice_pixels(labels: np.ndarray, names: Mapping[int, str]) -> Dict[int, Tuple[int, int]]:
    """Per slice k: (LV cavity pixels, myocardium pixels)."""
    values = {name: value for value, name in names.items()}
    lv = (labels == values.get("left ventricle", -1)).sum(axis=(1, 2))
    myo = (labels == values.get("myocardium", -1)).sum(axis=(1, 2))
    return {z: (int(lv[z]), int(myo[z])) for z in range(labels.shape[0])}


def _widen(span, scale_floor: float, widen: float = INTENSITY_WIDEN) -> Tuple[float, float]:
    low, high = float(span[0]), float(span[1])
    margin = max(widen * (high - low), scale_floor)
    return low - margin, high + margin


def check_input(out: _Collector, measured: Mapping[str, Measured], image, geometry: Geometry, card,
                modality: str, statistics: Optional[Mapping[str, object]]) -> None:
    """The image against the training images' statistics: modality, spacing, field of view, intensities."""
    card_modality = str(getattr(card, "modality", "") or "")
    if card_modality and modality and modality.upper() != card_modality.upper():
        out.problem(f"the image looks like {modality} but the model was trained on {card_modality}")
        return
    if not statistics:
        out.note(f"model {getattr(card, 'name', '?')} carries no training statistics: the input check "
                 "(spacing, field of view, intensities against the training images) was skipped")
        return
    mode = getattr(getattr(card, "preprocessing", None), "orientation_mode", "anatomical")
    spacing, slice_spacing, fov, extent = in_plane_spacing_and_fov(geometry, mode)
    trained = statistics.get("spacing_mm", {})
    if trained.get("in_plane"):
        low, high = trained["in_plane"]
        if spacing[0] < low / SPACING_FACTOR or spacing[1] > high * SPACING_FACTOR:
            shown = f"{spacing[0]:.2g}" if abs(spacing[0] - spacing[1]) < 0.01 else f"{spacing[0]:.2g}-{spacing[1]:.2g}"
            trained_span = f"{low:.2g}" if abs(low - high) < 0.01 else f"{low:.2g}-{high:.2g}"
            out.problem(f"in-plane spacing {shown} mm is outside what the model was trained on ({trained_span} mm)")
    if trained.get("slice"):
        low, high = trained["slice"]
        if slice_spacing < low / SPACING_FACTOR or slice_spacing > high * SPACING_FACTOR:
            trained_span = f"{low:.2g}" if abs(low - high) < 0.01 else f"{low:.2g}-{high:.2g}"
            out.problem(f"slice spacing {slice_spacing:.2g} mm is outside what the model was trained on "
                        f"({trained_span} mm)")
    view = statistics.get("field_of_view_mm", {})
    if view.get("in_plane"):
        low, high = view["in_plane"]
        if fov[0] < low / SPACING_FACTOR:
            out.problem(f"the field of view ({fov[0]:.0f} mm across) is much smaller than the training images' "
                        f"({low:.0f}-{high:.0f} mm)")
    if image is not None:
        body = statistics.get("body_intensity", {})
        ct = modality.upper() == "CT"
        figures = body_intensity(image, modality)
        outside = []
        for key in ("p5", "p50", "p95"):
            if body.get(key):
                low, high = _widen(body[key], 40.0 if ct else 0.05)
                if not low <= figures[key] <= high:
                    outside.append(f"{key} {figures[key]:.3g}")
        if len(outside) >= 2:
            out.problem(f"intensities inside the body ({', '.join(outside)}) are unlike the training images' "
                        f"({'HU' if ct else 'relative to the 99th percentile'}): another "
                        f"{'contrast phase or reconstruction' if ct else 'sequence or scanner'}?")
        trained_structures = statistics.get("structure_intensity", {})
        found = structure_intensities(measured, modality)
        odd = []
        for name, value in found.items():
            span = trained_structures.get(name)
            if isinstance(span, list) and len(span) == 2:
                low, high = _widen(span, 30.0 if ct else 0.1, INTENSITY_WIDEN if ct else STRUCTURE_WIDEN)
                if not low <= value <= high:
                    odd.append(f"{name} {value:.3g} (trained {span[0]:.3g} to {span[1]:.3g})")
        # one odd structure is enough where there are few, or where it is CT's phase marker, the aorta
        if odd and (len(odd) >= 2 or len(found) <= 2 or (ct and any(o.startswith("aorta ") for o in odd))):
            what = ("median HU" if ct else
                    f"intensity relative to the {trained_structures.get('reference') or 'reference structure'}")
            kind = "a different contrast phase" if ct else "a different MR sequence (e.g. T1 given to a T2 model)"
            out.problem(f"structure {what} unlike the training images' ({'; '.join(odd)}): {kind}?")


def agreement_dice(labels: np.ndarray, variants: Sequence[np.ndarray], names: Mapping[int, str]) -> Dict[str, float]:
    """Per structure: mean Dice between ``labels`` and each variant's labels (1 where both are empty)."""
    scores: Dict[str, float] = {}
    for value, name in names.items():
        a = labels == value
        total = []
        for variant in variants:
            b = variant == value
            denominator = int(a.sum()) + int(b.sum())
            total.append(1.0 if denominator == 0 else 2.0 * int(np.logical_and(a, b).sum()) / denominator)
        scores[name] = float(np.mean(total))
    return scores


def predicted_dice(agreement: float, calibration: Optional[Mapping[str, float]]) -> float:
    """Agreement -> predicted Dice: the card's calibration (a line fitted on validation patients), else
    the agreement itself."""
    if calibration:
        value = float(calibration.get("intercept", 0.0)) + float(calibration.get("slope", 1.0)) * agreement
    else:
        value = agreement
    return float(min(1.0, max(0.0, value)))


def check_confidence(out: _Collector, labels: np.ndarray, variants: Optional[Sequence[np.ndarray]],
                     names: Mapping[int, str], statistics: Optional[Mapping[str, object]]) -> None:
    if not variants:
        out.note("no test-time variants were computed: no predicted Dice")
        return
    calibration = (statistics or {}).get("confidence")
    if not calibration:
        out.note("the model's card has no confidence calibration: predicted Dice is the raw agreement "
                 "between test-time variants")
    for name, agreement in agreement_dice(labels, variants, names).items():
        structure = out.structures[name]
        structure.agreement = agreement
        if labels.size and not np.any(labels == [v for v, n in names.items() if n == name][0]):
            continue
        structure.predicted_dice = predicted_dice(agreement, calibration)


def quality_verdict(labels: np.ndarray, image: Optional[np.ndarray], geometry: Geometry, card, *,
                    variants: Optional[Sequence[np.ndarray]] = None, modality: Optional[str] = None,
                    statistics: Optional[Mapping[str, object]] = None) -> QualityVerdict:
    """The verdict on one 3D result (labels (z, y, x) on ``geometry``, the image on the same grid).

    card: a ModelCard (or anything with ``labels``, ``modality``, ``anatomy``, ``training``);
    variants: labels of the same image from test-time variants (see :func:`variant_volumes`);
    modality: the image's ("CT"/"MR"; default the card's); statistics: overrides the card's block.
    """
    names = _names(card)
    out = _Collector(list(names.values()))
    modality = modality or str(getattr(card, "modality", "") or "")
    statistics = statistics if statistics is not None else card_statistics(card)
    if labels.ndim != 3:
        raise ValueError(f"quality_verdict takes one 3D frame, got labels of shape {labels.shape}")
    measured: Dict[str, Measured] = {}
    try:
        measured = measure(labels, image, geometry, names)
    except Exception as error:
        out.note(f"the structures could not be measured ({type(error).__name__}: {error}); anatomy and "
                 "plausibility checks skipped")
    cardiac = _is_cardiac(card, names.values())
    if cardiac:
        try:
            out._slice_pixels = slice_pixels(labels, names)
        except Exception:
            out._slice_pixels = None
    if measured:
        out.run("anatomy", check_anatomy, measured, image, geometry, modality, cardiac)
        out.run("plausibility", check_plausibility, measured, cardiac, statistics)
    out.run("input", check_input, measured, image, geometry, card, modality, statistics)
    out.run("confidence", check_confidence, labels, variants, names, statistics)
    return out.finish()


def merge_verdicts(verdicts: Mapping[str, QualityVerdict]) -> QualityVerdict:
    """One verdict of several (frames, phases): reasons prefixed with their frame's name; a structure's
    predicted Dice is its lowest."""
    merged = QualityVerdict()
    for label, verdict in verdicts.items():
        merged.reasons += [f"{label}: {r}" for r in verdict.reasons if f"{label}: {r}" not in merged.reasons]
        merged.notes += [n for n in verdict.notes if n not in merged.notes]
        for name, s in verdict.structures.items():
            target = merged.structures.setdefault(name, StructureQuality(name))
            target.reasons += [f"{label}: {r}" for r in s.reasons]
            target.incomplete = target.incomplete or s.incomplete
            if s.predicted_dice is not None:
                target.predicted_dice = s.predicted_dice if target.predicted_dice is None else \
                    min(target.predicted_dice, s.predicted_dice)
    for s in merged.structures.values():
        s.status = REVIEW if s.reasons else OK
    merged.status = REVIEW if merged.reasons or any(s.status == REVIEW for s in merged.structures.values()) else OK
    return merged


def cardiac_function_checks(figures: Mapping[str, Optional[float]], volumes_ml: Mapping[str, Sequence[float]],
                            ed: int, es: int) -> List[str]:
    """Problems with cardiac figures: ED not larger than ES, EF outside EF_RANGE, LV mass outside range."""
    problems = []
    for key, label in (("lv", "LV"), ("rv", "RV")):
        series = volumes_ml.get(key)
        if series and len(series) > max(ed, es) and series[ed] <= series[es]:
            problems.append(f"{label} volume at ED ({series[ed]:.0f} mL) is not larger than at ES "
                            f"({series[es]:.0f} mL)")
    for key, value in figures.items():
        if value is None:
            continue
        if key.endswith("ef_percent") or key.endswith("_ef"):
            if not EF_RANGE[0] <= value <= EF_RANGE[1]:
                problems.append(f"{key} {value:.0f} % is outside {EF_RANGE[0]:g}-{EF_RANGE[1]:g} %")
        if key in ("lv_mass_g", "myocardial_mass_g") and not 37.0 <= value <= 400.0:
            problems.append(f"{key} {value:.0f} g is outside 37-400 g")
    return problems


# --------------------------------------------------------------------------------------------------
# test-time variants


def variant_geometries(geometry: Geometry, orientation_mode: str = "anatomical",
                       factors: Sequence[float] = (1.15,)) -> List[Geometry]:
    """The image's geometry with its in-plane spacing multiplied by each factor: the network then sees the
    anatomy that much smaller on its grid, and the labels come back voxel for voxel on the input grid."""
    from ..core.geometry import canonical_reorientation

    axes = canonical_reorientation(geometry, "LPS", orientation_mode).axes
    result = []
    for factor in factors:
        spacing = list(geometry.spacing)
        for a in axes[:2]:
            spacing[a] *= factor
        result.append(Geometry(size=geometry.size, spacing=tuple(spacing), origin=geometry.origin,
                               direction=geometry.direction))
    return result
