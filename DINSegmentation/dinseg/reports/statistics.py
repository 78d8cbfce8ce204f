"""Numbers for reports: per structure volume, intensity statistics, centroid and bounding box.

The CLI (``--statistics``), the Slicer module (a table node after Segment) and the tests call
:func:`structure_statistics`. Volumes are voxel counts times the voxel volume; intensities
are the input's own values (Hounsfield units for CT) on the input grid; positions are in
patient LPS millimetres (DICOM's convention; Slicer shows RAS, which negates x and y).
"""

from __future__ import annotations

import csv
import json
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..core.geometry import Geometry
from ..core.io import atomic_output, output_extension
from ..core.terminology import LabelInfo

#: columns of the CSV file, in order (``frame`` only for a time series)
COLUMNS = ("structure", "label", "frame", "voxels", "volume_ml", "mean", "std", "median", "p5", "p95",
           "centroid_lps_x_mm", "centroid_lps_y_mm", "centroid_lps_z_mm",
           "bbox_min_i", "bbox_min_j", "bbox_min_k", "bbox_max_i", "bbox_max_j", "bbox_max_k")
#: columns a quality verdict (reports.quality) adds to the CSV: the structure's, then the whole result's
QUALITY_COLUMNS = ("incomplete", "quality_status", "predicted_dice", "quality_reasons",
                   "result_quality_status", "result_quality_reasons")


def structure_statistics(labels: np.ndarray, image: np.ndarray, geometry: Geometry,
                         label_infos: Sequence[LabelInfo]) -> List[Dict[str, object]]:
    """One row per structure (and per frame of a time series).

    labels, image: (z, y, x), or (t, z, y, x) for a cine, on ``geometry``. A structure absent
    from a frame has 0 voxels and None for everything measured inside it. Bounding boxes are
    inclusive voxel indices (i, j, k) = (x, y, z).
    """
    frames = [(None, labels, image)] if labels.ndim == 3 else \
        [(t, labels[t], image[t]) for t in range(labels.shape[0])]
    voxel_ml = geometry.voxel_ml
    to_lps = geometry.index_to_lps()
    rows = []
    for frame, frame_labels, frame_image in frames:
        for info in label_infos:
            mask = frame_labels == info.value
            count = int(np.count_nonzero(mask))
            row: Dict[str, object] = {"structure": info.name, "label": info.value, "frame": frame,
                                      "voxels": count, "volume_ml": count * voxel_ml}
            if count:
                values = frame_image[mask].astype(np.float64)
                p5, median, p95 = np.percentile(values, [5, 50, 95])
                k, j, i = np.nonzero(mask)
                centroid = to_lps @ np.array([i.mean(), j.mean(), k.mean(), 1.0])
                row.update(mean=float(values.mean()), std=float(values.std()), median=float(median),
                           p5=float(p5), p95=float(p95),
                           centroid_lps_x_mm=float(centroid[0]), centroid_lps_y_mm=float(centroid[1]),
                           centroid_lps_z_mm=float(centroid[2]),
                           bbox_min_i=int(i.min()), bbox_min_j=int(j.min()), bbox_min_k=int(k.min()),
                           bbox_max_i=int(i.max()), bbox_max_j=int(j.max()), bbox_max_k=int(k.max()))
            rows.append({column: row.get(column) for column in COLUMNS})
    return rows


def with_quality(rows: List[Dict[str, object]], quality) -> List[Dict[str, object]]:
    """Rows with the verdict's per-structure fields: "incomplete" (touches the image's border, so its
    volume is a lower bound) and "quality" {status, predicted_dice, reasons}."""
    verdict = quality.to_dict()
    marked = []
    for row in rows:
        structure = verdict["structures"].get(row["structure"], {})
        marked.append({**row, "incomplete": bool(structure.get("incomplete", False)),
                       "quality": {key: structure.get(key) for key in ("status", "predicted_dice", "reasons")}})
    return marked


def write_statistics(path, rows: List[Dict[str, object]], units: Optional[str] = None, quality=None) -> None:
    """``.json`` (with the units and the coordinate convention) or ``.csv``, atomically. quality: a
    reports.quality.QualityVerdict: a top-level "quality" {status, reasons} and per structure "quality"
    and "incomplete" (CSV: the same as columns, reasons joined with " | ")."""
    extension = output_extension(path, (".json", ".csv"))
    if quality is not None:
        rows = with_quality(rows, quality)
    with atomic_output(path) as temporary:
        if extension == ".json":
            document = {"coordinates": "LPS (DICOM patient coordinates), mm", "intensity_units": units or "",
                        "volume_units": "mL", "bounding_box": "inclusive voxel indices (i, j, k)",
                        "structures": rows}
            if quality is not None:
                summary = quality.to_dict()
                document["quality"] = {"status": summary["status"], "reasons": summary["reasons"]}
            temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
            return
        columns = COLUMNS
        if quality is not None:
            columns = COLUMNS + QUALITY_COLUMNS
            summary = quality.to_dict()
            rows = [{**{k: v for k, v in row.items() if k != "quality"},
                     "quality_status": row["quality"]["status"], "predicted_dice": row["quality"]["predicted_dice"],
                     "quality_reasons": " | ".join(row["quality"]["reasons"] or []),
                     "result_quality_status": summary["status"],
                     "result_quality_reasons": " | ".join(summary["reasons"])} for row in rows]
        with open(temporary, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def write_masks(folder, labels: np.ndarray, geometry: Geometry, label_infos: Sequence[LabelInfo],
                frame_spacing: Optional[float] = None) -> List[str]:
    """One binary NIfTI per structure in ``folder`` (created), named after it ("left kidney" ->
    ``left_kidney.nii.gz``), as TotalSegmentator writes them; returns the file names."""
    from pathlib import Path

    from ..core.io import write_image

    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    names = []
    for info in label_infos:
        name = "_".join(info.name.lower().split()) + ".nii.gz"
        write_image(folder / name, (labels == info.value).astype(np.uint8), geometry, frame_spacing)
        names.append(name)
    return names
