"""A DICOM SEG opened onto the DICOM series shown in the page: its segments as a labelmap on that grid.

A DICOM SEG references its source images by SOP Instance UID; it fits the shown image when it
references that series' images, and is refused in one line otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np

from ...core.errors import InputError
from ...core.io import ImageVolume
from ...core.terminology import ANATOMICAL_STRUCTURE, Code, LabelInfo

#: the SOP Class UID of a DICOM Segmentation Storage object
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def is_dicom_seg(path: Path) -> bool:
    """Whether ``path`` is a DICOM file holding a segmentation (read from its header only)."""
    try:
        with open(path, "rb") as stream:
            if stream.read(132)[128:] != b"DICM":
                return False
        import pydicom

        header = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (OSError, ImportError, ValueError, EOFError):
        return False
    return str(getattr(header, "SOPClassUID", "")) == SEGMENTATION_STORAGE


def read_dicom_seg(path: Path, image: ImageVolume, name: str) -> Tuple[np.ndarray, List[LabelInfo]]:
    """(labels (z, y, x) uint8 on ``image``'s grid, one LabelInfo per segment) of the DICOM SEG at ``path``.

    name: how the page calls the file, in messages.
    """
    try:
        import highdicom as hd
        import pydicom
    except ImportError:
        raise InputError(f"{name}: opening a DICOM SEG needs highdicom and pydicom (pip install highdicom)") from None
    if not image.source_files:
        raise InputError(f"{name}: a DICOM SEG opens onto the DICOM series it was made on; the image shown is "
                         "not a DICOM series")
    try:
        seg = hd.seg.segread(str(path))
    except Exception:  # highdicom and pydicom raise many kinds for a damaged file
        raise InputError(f"{name}: cannot read this DICOM SEG (damaged, or not a segmentation)") from None
    sources = [str(pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID) for file in image.source_files]
    referenced = {str(uids[2]) for uids in seg.get_source_image_uids()}
    if not referenced or not referenced <= set(sources):
        raise InputError(f"{name}: was made on another series than the image shown (it references "
                         f"{len(referenced - set(sources))} images that are not in it); open the series it was made on")
    segments = seg.get_segment_numbers()
    if max(segments, default=0) > 255:
        raise InputError(f"{name}: has more than 255 segments")
    try:
        labels = seg.get_pixels_by_source_instance(sources, combine_segments=True, skip_overlap_checks=False,
                                                   assert_missing_frames_are_empty=True, dtype=np.uint8)
    except (ValueError, RuntimeError) as error:
        raise InputError(f"{name}: its segments cannot be put on the image shown ({error})") from None
    infos = []
    for number in segments:
        description = seg.get_segment_description(number)
        category, kind = description.segmented_property_category, description.segmented_property_type
        infos.append(LabelInfo(value=int(number), name=str(description.segment_label), color=(128, 128, 128),
                               type=Code(str(kind.scheme_designator), str(kind.value), str(kind.meaning)),
                               category=Code(str(category.scheme_designator), str(category.value),
                                             str(category.meaning)) if category else ANATOMICAL_STRUCTURE))
    return np.asarray(labels, dtype=np.uint8).reshape(image.array.shape), infos
