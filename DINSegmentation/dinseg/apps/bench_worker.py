"""``dinseg bench-worker``: a Segment as the GUIs run it, a new process each time (cold) against the
warm worker (the model loaded once), and a click of the refiner, on 2 threads.

Prints one table: per case, the median wall time of a cold run, of a warm run and of a click, with
the targets (a second Segment of a 10-slice cine stack <= 0.5 s; a click <= 1 s on a
512 x 512 x 150 CT and <= 0.3 s on a 10-slice cine stack).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

CASES = {
    "cine 10 slices": ("acdc/training/patient001/patient001_frame01.nii.gz", 0.5, 0.3),
    "CT 512x512x150": ("sample:abdomen-ct", None, 1.0),
}


def _timed_runs(make_task, source: Path, repeats: int) -> List[float]:
    seconds = []
    for _ in range(repeats):
        task = make_task()
        shutil.copy(source, task.prepare(input_name="input" + "".join(source.suffixes)))
        started = time.perf_counter()
        task.start()
        if not task.wait(timeout=600) or task.state != "succeeded":
            raise RuntimeError(f"the run failed: {task.error}")
        seconds.append(time.perf_counter() - started)
        task.remove_temp_dir()
    return seconds


def _click_seconds(source: Path, threads: int, repeats: int) -> List[float]:
    """A positive click inside the first structure of the segmentation dinseg makes of ``source``."""
    import torch

    from ..core.io import read_volume
    from ..interactive.refiner import Refiner
    from ..pipeline.refine import bundled_refiner
    from ..pipeline.segmenter import Segmenter, model_for

    torch.set_num_threads(threads)
    volume = read_volume(source)
    card, _ = model_for(volume)
    labels = Segmenter(card, device="cpu").segment(volume).labels
    volume.modality = volume.modality or card.modality
    value = int(max(np.unique(labels[labels > 0]), key=lambda v: (labels == v).sum()))
    inside = np.argwhere(labels == value)
    z, y, x = inside[len(inside) // 2]
    refiner = Refiner(bundled_refiner())
    refiner.refine(volume, labels, value, [(x, y, z)])  # first click: the image is normalised once
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        refiner.refine(volume, labels, value, [(x, y, z)])
        seconds.append(time.perf_counter() - started)
    return seconds


def _resample_ct(path: Path, folder: Path) -> Path:
    """The bundled CT resampled to 512 x 512 x 150 (the size the targets name)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    size = (512, 512, 150)
    spacing = [image.GetSpacing()[i] * image.GetSize()[i] / size[i] for i in range(3)]
    resampled = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                              image.GetDirection(), -1024, image.GetPixelID())
    target = folder / "ct512.nii.gz"
    sitk.WriteImage(resampled, str(target))
    return target


def rows(data: Path, threads: int = 2, repeats: int = 3) -> List[Dict[str, str]]:
    import tempfile

    from ..core.samples import resolve_input
    from ..pipeline.job import SegmentationProcess
    from ..pipeline.options import SegmentOptions
    from ..pipeline.worker import Worker

    table = []
    with tempfile.TemporaryDirectory(prefix="dinseg-bench-") as folder:
        for name, (relative, segment_target, click_target) in CASES.items():
            source = resolve_input(relative) if relative.startswith("sample:") else data / relative
            if not source.exists():
                print(f"skipped {name}: {source} is missing", file=sys.stderr)
                continue
            if name.startswith("CT"):
                source = _resample_ct(source, Path(folder))
            from ..core.io import read_volume
            from ..pipeline.segmenter import model_for

            card, _ = model_for(read_volume(source))
            options = SegmentOptions(device="cpu", threads=threads)
            cold = _timed_runs(lambda: SegmentationProcess(card, options, temp_root=folder), source, repeats)
            worker = Worker(threads=threads, temp_root=folder)
            try:
                warm = _timed_runs(lambda: worker.segment(card, options), source, repeats + 1)[1:]
            finally:
                worker.close()
            click = _click_seconds(source, threads, repeats)
            table.append({"case": name, "model": f"{card.name} {card.version}",
                          "Segment, new process (s)": f"{statistics.median(cold):.2f}",
                          "Segment, warm worker (s)": f"{statistics.median(warm):.2f}",
                          "target (s)": f"{segment_target:g}" if segment_target else "-",
                          "click (s)": f"{statistics.median(click):.2f}", "click target (s)": f"{click_target:g}"})
    return table


def format_table(table: List[Dict[str, str]]) -> str:
    from ..training.evaluate import markdown_table

    if not table:
        return "no case could be measured\n"
    return markdown_table(list(table[0]), [list(row.values()) for row in table])
