"""DICOM Segmentation objects that go back to the PACS beside the series they segment (highdicom).

One binary segment per structure present, each with the model card's SNOMED-CT category,
type (and laterality modifier) and the algorithm identification (model name and version,
AUTOMATIC). Frames lie exactly on the source slices: the labels are on the source grid and
the source files are passed in the order the volume was read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

from .. import __version__
from ..core.errors import InputError
from ..core.geometry import Geometry
from ..core.io import ImageVolume, atomic_output
from ..core.terminology import Code, LabelInfo

#: attributes a SEG copies from or references in its source images (keyword, tag)
REQUIRED_SOURCE_ATTRIBUTES = (("StudyInstanceUID", "0020,000D"), ("SeriesInstanceUID", "0020,000E"),
                              ("SOPInstanceUID", "0008,0018"), ("SOPClassUID", "0008,0016"),
                              ("FrameOfReferenceUID", "0020,0052"), ("ImagePositionPatient", "0020,0032"),
                              ("ImageOrientationPatient", "0020,0037"), ("PixelSpacing", "0028,0030"))


def _concept(code: Code):
    from highdicom.sr.coding import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _dicom_libraries():
    try:
        import highdicom
        import pydicom
    except ImportError:
        raise InputError("DICOM SEG output needs highdicom (pip install highdicom; Python 3.10 or later)") from None
    return highdicom, pydicom


def order_by_slice(files: Sequence[str], geometry: Geometry) -> Tuple[str, ...]:
    """The files of a single-frame series in the order of the volume's slices (k = 0, 1, ...), from
    each file's ImagePositionPatient; InputError unless they fill the volume's slices one to one."""
    _, pydicom = _dicom_libraries()
    from_lps = np.linalg.inv(geometry.index_to_lps())
    by_slice = {}
    for path in files:
        position = getattr(pydicom.dcmread(path, stop_before_pixels=True), "ImagePositionPatient", None)
        if position is None:
            raise InputError(f"{path}: lacks ImagePositionPatient (0020,0032)")
        k = from_lps @ np.array([*map(float, position), 1.0])
        by_slice[int(round(k[2]))] = str(path)
    if sorted(by_slice) != list(range(geometry.size[2])):
        raise InputError(f"the {len(files)} DICOM files do not lie one to one on the volume's "
                         f"{geometry.size[2]} slices")
    return tuple(by_slice[k] for k in range(geometry.size[2]))


def source_datasets(volume: ImageVolume, name: str):
    """The source images' headers in the volume's slice order; InputError where a SEG cannot reference them."""
    _, pydicom = _dicom_libraries()

    if not volume.source_files:
        raise InputError(f"{name}: DICOM SEG needs a DICOM series as input (it references the source images); "
                         "write .seg.nrrd or .nii.gz for this input")
    datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in volume.source_files]
    if len(datasets) == 1 and int(getattr(datasets[0], "NumberOfFrames", 1) or 1) > 1:
        raise InputError(f"{name}: is a multi-frame DICOM object; DICOM SEG output supports series of "
                         "single-frame images")
    for dataset, path in zip(datasets, volume.source_files):
        for keyword, tag in REQUIRED_SOURCE_ATTRIBUTES:
            if not getattr(dataset, keyword, None):
                raise InputError(f"{path}: lacks {keyword} ({tag}), which a DICOM SEG needs to reference its "
                                 "source (an anonymised series?)")
    return datasets


def segment_descriptions(present: Sequence[LabelInfo], model_name: str, model_version: str):
    """highdicom SegmentDescriptions numbered 1..len(present), with the card's codes."""
    hd, _ = _dicom_libraries()
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name=model_name, version=model_version,
                                                   family=codes.cid7162.ArtificialIntelligence,
                                                   source="DINSegmentation")
    descriptions = []
    for number, info in enumerate(present, start=1):
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=info.name[:64], segmented_property_category=_concept(info.category),
            segmented_property_type=_concept(info.type), algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm, display_color=hd.color.CIELabColor.from_rgb(*info.color))
        if info.modifier is not None:
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                _concept(info.modifier)]
        descriptions.append(description)
    return descriptions


def write_dicom_seg(path, labels: np.ndarray, volume: ImageVolume, label_infos: Sequence[LabelInfo],
                    model_name: str, model_version: str) -> None:
    """Write labels (z, y, x) on the source series' grid as a binary DICOM SEG (atomically)."""
    hd, _ = _dicom_libraries()

    name = str(volume.source_files[0]) if volume.source_files else "the input"
    if labels.ndim != 3:
        raise InputError(f"{path}: DICOM SEG output holds one 3D frame; choose one with --frames N")
    datasets = source_datasets(volume, name)
    if len(datasets) != labels.shape[0]:
        raise InputError(f"{path}: {labels.shape[0]} label slices for {len(datasets)} source images")
    present = [info for info in label_infos if np.any(labels == info.value)]
    if not present:
        raise InputError(f"{path}: no structure was found, so there is nothing to store as DICOM SEG")
    lookup = np.zeros(256, dtype=np.uint8)
    for number, info in enumerate(present, start=1):
        lookup[info.value] = number
    segments = lookup[labels.astype(np.uint8)]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=segments, segmentation_type="BINARY",
        segment_descriptions=segment_descriptions(present, model_name, model_version),
        series_instance_uid=hd.UID(), series_number=int(getattr(datasets[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="DINSegmentation",
        manufacturer_model_name=model_name[:64], software_versions=f"dinseg {__version__}",
        device_serial_number="none", content_label="DINSEG",
        content_description=f"{model_name} {model_version}"[:64],
        series_description=f"DIN segmentation ({model_name})"[:64])
    with atomic_output(Path(path)) as temporary:
        seg.save_as(temporary)
