"""File-level click correction: an image, its current segmentation and clicks in, the corrected
segmentation out (what ``dinseg refine`` runs; the GUIs call :class:`~dinseg.interactive.refiner.Refiner`
on arrays they hold).

Points are in the image's physical space as LPS millimetres (ITK's convention), or come from a
Slicer markups file (``.mrk.json``: its ``coordinateSystem``, RAS or LPS, is honoured). A
control point is positive or negative by the first character of its label or description, "+"
or "-"; where neither says, by its point list's name ("positive"/"include" or
"negative"/"exclude"). Every check runs before the network; nothing is written on an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..core.errors import InputError
from ..core.terminology import KNOWN_STRUCTURES, LabelInfo

Point = Tuple[float, float, float]

#: words of a point list's name that make its points positive or negative
POSITIVE_WORDS = ("positive", "include", "foreground")
NEGATIVE_WORDS = ("negative", "exclude", "background")


@dataclass
class RefineResult:
    """What :func:`refine_file` wrote: the output, the structure, and its voxels before and after."""

    output: Path
    structure: LabelInfo
    voxels_before: int
    voxels_after: int
    seconds: float


def parse_point(text: str) -> Point:
    """'X,Y,Z' (mm) -> (x, y, z); an InputError for anything else."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(values)):
        raise InputError(f"a point is X,Y,Z in millimetres (three numbers), got {text!r}")
    return values


def read_markups(path) -> Tuple[List[Point], List[Point]]:
    """(positive, negative) LPS points of a Slicer markups file (``.mrk.json``)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such markups file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a markups JSON file ({str(error).splitlines()[0]})") from None
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list):
        raise InputError(f"{path}: not a Slicer markups file (no 'markups' list)")
    positive: List[Point] = []
    negative: List[Point] = []
    for markup in markups:
        if not isinstance(markup, dict):
            raise InputError(f"{path}: a markup is not an object")
        system = str(markup.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise InputError(f"{path}: coordinate system {system!r} is neither LPS nor RAS")
        list_name = str(markup.get("name", "")).lower()
        for number, point in enumerate(markup.get("controlPoints") or [], start=1):
            position = point.get("position") if isinstance(point, dict) else None
            try:
                x, y, z = (float(v) for v in position)
            except (TypeError, ValueError):
                raise InputError(f"{path}: control point {number} has no position x, y, z") from None
            if system == "RAS":
                x, y = -x, -y
            sign = _sign(str(point.get("label", "")), str(point.get("description", "")), list_name)
            if sign is None:
                raise InputError(f"{path}: control point {number} ({point.get('label', '')!r}) is neither "
                                 "positive nor negative: start its label with + or -")
            (positive if sign else negative).append((x, y, z))
    if not positive and not negative:
        raise InputError(f"{path}: has no control points")
    return positive, negative


def _sign(label: str, description: str, list_name: str) -> Optional[bool]:
    for text in (label.strip(), description.strip()):
        if text.startswith("+"):
            return True
        if text.startswith("-"):
            return False
    if any(word in list_name for word in POSITIVE_WORDS):
        return True
    if any(word in list_name for word in NEGATIVE_WORDS):
        return False
    return None


def find_structure(name_or_value: str, label_infos: Sequence[LabelInfo]) -> LabelInfo:
    """A structure by its name as the segmentation or model spells it (any case) or its label value."""
    text = str(name_or_value).strip()
    for info in label_infos:
        if info.name.lower() == text.lower() or (text.isdigit() and info.value == int(text)):
            return info
    known = ", ".join(f"{info.name} ({info.value})" for info in label_infos) or "none"
    raise InputError(f"unknown structure {text!r}; this segmentation has: {known}")


def _named_infos(infos: Sequence[LabelInfo]) -> List[LabelInfo]:
    """Label infos read from a file, given the codes and colours we know for their names."""
    named = []
    for info in infos:
        if info.name in KNOWN_STRUCTURES:
            code, modifier, color = KNOWN_STRUCTURES[info.name]
            info = LabelInfo(value=info.value, name=info.name, color=color, type=code, modifier=modifier)
        named.append(info)
    return named


def refine_file(image, segmentation, output, structure: str, positive: Sequence[Point] = (),
                negative: Sequence[Point] = (), frame: Optional[int] = None, refiner=None) -> RefineResult:
    """Correct one structure of ``segmentation`` (a ``.seg.nrrd`` or labelmap on ``image``'s grid) from
    clicks in LPS millimetres and write the result to ``output`` (same formats as ``dinseg segment``).

    structure: a name as the segmentation (a ``.seg.nrrd``) or the image's model (a labelmap)
    spells it, or a label value. frame: a 4D image's frame, 0-based (required for 4D). refiner: a
    loaded :class:`~dinseg.interactive.refiner.Refiner` (None: the bundled one).
    """
    import time

    from ..core.io import ImageVolume, check_output_path, read_volume
    from ..interactive.refiner import Refiner
    from ..reports.segfile import read_labels
    from .files import check_dicom_seg_source, refuse_overwriting_inputs, write_labels
    from .segmenter import model_for

    started = time.perf_counter()
    output = check_output_path(output)
    refuse_overwriting_inputs([output], [image, segmentation])
    if not positive and not negative:
        raise InputError("no points: give --positive X,Y,Z and/or --negative X,Y,Z (LPS mm) or --points FILE")
    volume = read_volume(image)
    if volume.is_time_series:
        if frame is None:
            raise InputError(f"{image} is a time series of {volume.frames} frames: choose one with --frame N")
        if not 0 <= frame < volume.frames:
            raise InputError(f"frame {frame + 1} does not exist; the series has frames 1..{volume.frames}")
        volume = ImageVolume(array=volume.array[frame], geometry=volume.geometry, modality=volume.modality)
    elif frame is not None:
        raise InputError("--frame applies to a 4D time series; this image is 3D")
    card, _reason = model_for(volume)
    labels, geometry, _frames, infos = read_labels(segmentation, card.labels)
    if labels.ndim == 4:
        if frame is None or not 0 <= frame < labels.shape[0]:
            raise InputError(f"{segmentation} holds {labels.shape[0]} frames: choose one with --frame N")
        labels = labels[frame]
    if labels.shape != volume.array.shape or not geometry.matches(volume.geometry, tolerance=1e-3):
        raise InputError(f"{segmentation}: lies on another grid than {image} (shape {labels.shape[::-1]} vs "
                         f"{volume.array.shape[::-1]}); segment this image or resample the segmentation")
    infos = _named_infos(infos)
    chosen = find_structure(structure, infos)
    check_dicom_seg_source(output, volume, str(image))
    refiner = refiner or Refiner(bundled_refiner())
    modality = volume.modality or card.modality
    refined = refiner.refine(volume, labels, chosen.value, positive, negative, space="lps", modality=modality)
    write_labels(output, volume, refined, volume.geometry, infos, refiner.card.name, refiner.card.version)
    return RefineResult(output=output, structure=chosen, voxels_before=int((labels == chosen.value).sum()),
                        voxels_after=int((refined == chosen.value).sum()), seconds=time.perf_counter() - started)


def bundled_refiner() -> Path:
    """The refiner card bundled with dinseg."""
    from ..interactive.card import BUNDLED_REFINER

    return BUNDLED_REFINER
