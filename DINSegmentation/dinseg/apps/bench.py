"""Benchmarks that print tables (not tests): network cost, and the whole segmentation pipeline.

Speed targets are ratios against a baseline measured in the same run, because shared machines
are noisy.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..core.samples import SAMPLES
from ..training.evaluate import markdown_table

SAMPLE_CT = SAMPLES["abdomen-ct"]
SAMPLE_CT_LABELS = SAMPLE_CT.with_name("abdomen_ct_totalsegmentator_labels.nii.gz")


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of scaled-dot-product attention (QK^T and AV), for FlopCounterMode's CPU kernel."""
    batch, heads, queries, dim = query
    return 4 * batch * heads * queries * key[2] * dim


def count_macs(network, inputs) -> float:
    """Multiply-accumulates of one forward pass, attention included."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        network(*inputs)
    return counter.get_total_flops() / 2


def interleaved_latencies(functions: Dict[str, Callable], device, repeats: int, warmup: int = 2) -> Dict[str, float]:
    """Median wall time in seconds of each ``functions[name]()``, GPU work synchronised.

    The functions take turns within each round, so a slow spell of a shared machine slows them
    all alike and the ratios between them stay meaningful.
    """
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = {name: [] for name in functions}
    with torch.inference_mode():
        for _ in range(warmup):
            for function in functions.values():
                function()
        sync()
        for _ in range(repeats):
            for name, function in functions.items():
                start = time.perf_counter()
                function()
                sync()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def model_rows(size: int, threads: int, devices: List[str], presets: List[str], repeats: int) -> List[Dict]:
    """One row per network: parameters, GMACs and per-slice latency (batch 1) on each device.

    Each preset's networks are timed interleaved with their same-width U-Net baseline.
    """
    import torch
    from monai.networks.nets import BasicUNet

    from ..nets import FUSION_VARIANTS, NetConfig, build_network

    torch.set_num_threads(threads)
    image = torch.rand(1, 1, size, size)
    groups = []
    for preset in presets:
        config = NetConfig.from_preset(preset, num_classes=9)
        widths = (config.stem_channels,) + config.widths + (config.stem_channels,)
        group = [(f"U-Net, same widths ({preset})", preset, "baseline",
                  lambda w=widths: BasicUNet(spatial_dims=2, in_channels=1, out_channels=9, features=w))]
        for fusion in FUSION_VARIANTS:
            group.append((f"DIN {preset} {fusion}", preset, fusion,
                          lambda p=preset, f=fusion: build_network(NetConfig.from_preset(p, fusion=f, num_classes=9))))
        groups.append(group)
    groups.append([("MONAI BasicUNet (default widths)", "-", "baseline",
                    lambda: BasicUNet(spatial_dims=2, in_channels=1, out_channels=9))])
    rows = []
    for group in groups:
        networks = {name: make().eval() for name, _, _, make in group}
        group_rows = []
        for name, preset, fusion, _ in group:
            inputs = (image, image) if fusion in FUSION_VARIANTS else (image,)
            group_rows.append({"model": name, "preset": preset, "fusion": fusion,
                               "parameters_m": sum(p.numel() for p in networks[name].parameters()) / 1e6,
                               "gmacs": count_macs(networks[name], inputs) / 1e9, "inputs": len(inputs)})
        for device_name in devices:
            device = torch.device(device_name)
            moved = image.to(device)
            functions = {row["model"]: (lambda n=networks[row["model"]].to(device), k=row["inputs"]: n(*[moved] * k))
                         for row in group_rows}
            slow = group_rows[0]["preset"] == "paper" and device.type == "cpu"
            latencies = interleaved_latencies(functions, device, max(3, repeats // 5) if slow else repeats)
            for row in group_rows:
                row[f"{device_name}_ms"] = 1000 * latencies[row["model"]]
        for row in group_rows:
            del row["inputs"]
        rows.extend(group_rows)
        del networks
    return rows


def format_model_table(rows: List[Dict], devices: List[str], threads: int, size: int) -> str:
    """Markdown table with each DIN's latency as a multiple of the same-width U-Net's."""
    import torch

    baselines = {row["preset"]: row for row in rows if row["model"].startswith("U-Net, same widths")}
    header = ["model", "params (M)", f"GMACs @{size}²"]
    for device in devices:
        header += [f"{device} ms/slice", "× same-width U-Net"]
    lines = [f"torch {torch.__version__}, {threads} CPU thread(s); devices: {', '.join(_device_names(devices))}; "
             f"batch 1, {size}x{size}, median of repeated forward passes.", ""]
    table = []
    for row in rows:
        cells = [row["model"], f"{row['parameters_m']:.2f}", f"{row['gmacs']:.2f}"]
        for device in devices:
            base = baselines.get(row["preset"])
            ratio = f"{row[f'{device}_ms'] / base[f'{device}_ms']:.2f}" if base else "-"
            cells += [f"{row[f'{device}_ms']:.1f}", ratio]
        table.append(cells)
    return "\n".join(lines) + "\n" + markdown_table(header, table)


def _device_names(devices: List[str]) -> List[str]:
    import platform

    import torch

    names = []
    for device in devices:
        if device == "cuda":
            names.append(f"cuda ({torch.cuda.get_device_name(0)})")
        else:
            names.append(f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    return names


def centred_grid(image, spacing: float, size: int, slices: Optional[int] = None,
                 direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)):
    """(shape, spacings, direction, origin) of a size x size grid of in-plane ``spacing`` mm, centred
    on ``image`` and spanning its z extent in ``slices`` slices (default: the image's own slices)."""
    import numpy as np

    if slices is None:
        slices, slice_spacing = image.GetSize()[2], image.GetSpacing()[2]
    else:
        slice_spacing = image.GetSize()[2] * image.GetSpacing()[2] / slices
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    shape, spacings = (size, size, slices), (spacing, spacing, slice_spacing)
    matrix = np.asarray(direction).reshape(3, 3)
    origin = np.asarray(centre) - matrix @ ((np.asarray(shape) - 1) / 2 * np.asarray(spacings))
    return shape, spacings, tuple(direction), tuple(float(o) for o in origin)


def synthetic_ct_volume(path: Path, slices: int, size: int = 512, spacing: float = 0.7) -> None:
    """A CT-sized volume built from the real sample CT: resampled to size x size at ``spacing`` mm
    in-plane and ``slices`` slices (interpolated along z), int16 Hounsfield units."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(SAMPLE_CT))
    shape, spacings, direction, origin = centred_grid(image, spacing, size, slices,
                                                      sitk.DICOMOrient(image, "LPS").GetDirection())
    resampled = sitk.Resample(image, shape, sitk.Transform(), sitk.sitkLinear, origin, spacings, direction,
                              -1024, sitk.sitkInt16)
    sitk.WriteImage(resampled, str(path), True)


#: DICOM SOP classes of the series write_dicom_series makes
_SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}


def write_dicom_series(image, folder: Path, modality: str = "CT") -> List[Path]:
    """Store a 3D SimpleITK image as a DICOM series of single-frame images (int16), one file per
    slice with the UIDs, positions and orientation a PACS series has; returns the files in slice order."""
    import uuid

    import SimpleITK as sitk

    def uid() -> str:
        return f"2.25.{uuid.uuid4().int}"

    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    d = image.GetDirection()
    shared = {"0008|0060": modality, "0008|0016": _SOP_CLASSES[modality], "0020|000d": uid(), "0020|000e": uid(),
              "0020|0052": uid(), "0010|0010": "DINSEG^TEST", "0010|0020": "DINSEG-TEST", "0020|0011": "1",
              "0020|0010": "1",
              "0008|0020": "20260101", "0008|0030": "120000", "0008|103e": "dinseg test series",
              "0020|0037": "\\".join(f"{v:.9f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
              "0018|0050": f"{image.GetSpacing()[2]:.6f}"}
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        for tag, value in shared.items():
            slice_image.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_image.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
        slice_image.SetMetaData("0020|0013", str(k + 1))
        slice_image.SetMetaData("0008|0018", uid())
        path = folder / f"slice{k:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(slice_image)
        files.append(path)
    return files


def segment_rows(slice_counts: List[int], model: str, device: str, threads: int, precision: str = "auto") -> List[Dict]:
    """Run ``dinseg segment`` in a fresh process per volume size; per-stage seconds and peak memory."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for slices in slice_counts:
            source = Path(folder) / f"ct_{slices}.nii.gz"
            synthetic_ct_volume(source, slices)
            output = Path(folder) / f"ct_{slices}.seg.nrrd"
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            command = [sys.executable, "-c", _MEASURE, str(source), "-o", str(output), "--model", model,
                       "--device", device, "--precision", precision]
            started = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, env=env)
            process_seconds = time.perf_counter() - started
            if result.returncode != 0:
                raise RuntimeError(result.stderr.strip().splitlines()[-1])
            events = {event["event"]: event for event in map(json.loads, result.stdout.strip().splitlines())}
            rows.append({"slices": slices, "seconds": events["done"]["seconds"], "process_s": process_seconds,
                         "peak_rss_gb": events["peak"]["bytes"] / 1e9})
    return rows


#: runs in a child process, so that its peak resident memory is the pipeline's alone; the
#: CLI's JSON progress ends with {"event": "done", "seconds": {stage: seconds}}
_MEASURE = """
import json, resource, sys
from dinseg.apps.cli import main
code = main(["segment", *sys.argv[1:], "--progress", "json"])
print(json.dumps({"event": "peak", "bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
sys.exit(code)
"""


def dicom_seg_rows(slices: int, model: str, device: str) -> List[Dict]:
    """Segment a 512 x 512 x ``slices`` CT stored as a DICOM series once, then write the labels as
    .seg.nrrd, .nii.gz and DICOM SEG; seconds of each write, of the segmentation, and file sizes."""
    import SimpleITK as sitk

    from ..reports.dicomseg import write_dicom_seg
    from ..pipeline.segmenter import Segmenter
    from ..core.io import read_volume
    from ..models import find_model
    from ..reports.segfile import write_segmentation

    card = find_model(model)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        volume_path = Path(folder) / "ct.nii.gz"
        synthetic_ct_volume(volume_path, slices)
        series = Path(folder) / "series"
        write_dicom_series(sitk.ReadImage(str(volume_path)), series)
        started = time.perf_counter()
        volume = read_volume(series)
        result = Segmenter(card, device=device).segment(volume)
        segment_seconds = time.perf_counter() - started
        writers = {".seg.nrrd": lambda path: write_segmentation(path, result.labels, result.geometry, card.labels),
                   ".nii.gz": lambda path: write_segmentation(path, result.labels, result.geometry, card.labels),
                   ".dcm (DICOM SEG)": lambda path: write_dicom_seg(path, result.labels, volume, card.labels,
                                                                    card.name, card.version)}
        for name, write in writers.items():
            path = Path(folder) / f"labels{name.split()[0]}"
            started = time.perf_counter()
            write(path)
            rows.append({"output": name, "write_s": time.perf_counter() - started, "segment_s": segment_seconds,
                         "megabytes": path.stat().st_size / 1e6})
    return rows


def format_dicom_seg_table(rows: List[Dict], slices: int, model: str) -> str:
    header = ["output", "write (s)", "write / segmentation", "file (MB)"]
    table = [[row["output"], f"{row['write_s']:.2f}", f"{100 * row['write_s'] / row['segment_s']:.1f} %",
              f"{row['megabytes']:.2f}"] for row in rows]
    return (f"512 x 512 x {slices} CT as a DICOM series, model {model}; reading and segmenting it took "
            f"{rows[0]['segment_s']:.1f} s\n\n" + markdown_table(header, table))


def format_segment_table(rows: List[Dict], model: str, device: str, threads: int, precision: str = "auto") -> str:
    stages = list(rows[0]["seconds"])
    header = ["slices (512x512, 0.7 mm)"] + [f"{stage} (s)" for stage in stages] + \
             ["total (s)", "outside network", "process (s)", "peak RSS (GB)"]
    table = []
    for row in rows:
        seconds = row["seconds"]
        total = sum(seconds.values())
        outside = (total - seconds["network"]) / total
        table.append([str(row["slices"])] + [f"{seconds[s]:.2f}" for s in stages] +
                     [f"{total:.2f}", f"{100 * outside:.0f} %", f"{row['process_s']:.2f}", f"{row['peak_rss_gb']:.2f}"])
    return (f"model {model}, device {device}, {threads} thread(s), precision {precision}; total: the stages' sum; "
            "process: the whole command, Python's start and imports included\n\n" + markdown_table(header, table))


def _resample_pair(image, labels, size, spacing, direction, origin, fill: float = -1024):
    import SimpleITK as sitk

    def resample(source, interpolator, fill, pixel):
        return sitk.Resample(source, size, sitk.Transform(), interpolator, origin, spacing, direction, fill, pixel)

    return (resample(image, sitk.sitkLinear, fill, sitk.sitkInt16),
            resample(labels, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))


def storage_variants(image, labels, names=None):
    """The same anatomy stored as real scans come: flipped or permuted axes, 0.7-1.0 mm 512 x 512
    in-plane grids, an oblique (rotated) grid. {name: (image, labels)} as SimpleITK images."""
    import numpy as np
    import SimpleITK as sitk

    lps = sitk.DICOMOrient(image, "LPS")

    angle = np.deg2rad(15)
    rotation = (np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1)
    builders = {
        "as stored (3 mm, direction -1,-1,1)": lambda: (image, labels),
        "axes flipped (identity direction)": lambda: (lps, sitk.DICOMOrient(labels, "LPS")),
        "axes permuted (x, y swapped)": lambda: (sitk.PermuteAxes(image, [1, 0, 2]),
                                                 sitk.PermuteAxes(labels, [1, 0, 2])),
        "0.7 mm, 512 x 512 in-plane": lambda: _resample_pair(image, labels, *centred_grid(image, 0.7, 512)),
        "1.0 mm, 512 x 512 in-plane": lambda: _resample_pair(image, labels, *centred_grid(image, 1.0, 512)),
        "oblique: in-plane axes rotated 15 degrees, 0.8 mm": lambda: _resample_pair(
            image, labels, *centred_grid(image, 0.8, 480, direction=rotation)),
    }
    return {name: build() for name, build in builders.items() if names is None or name in names}


def robustness_rows(model: str, device: str = "cpu", names=None) -> List[Dict]:
    """Segment each storage variant of the bundled CT; mean Dice against its (moved) labels."""
    import numpy as np
    import SimpleITK as sitk

    from ..pipeline.segmenter import Segmenter
    from ..core.io import ImageVolume
    from ..core.geometry import Geometry
    from ..core.metrics import dice_and_hd95
    from ..models import find_model

    card = find_model(model)
    segmenter = Segmenter(card, device=device)
    image, labels = sitk.ReadImage(str(SAMPLE_CT)), sitk.ReadImage(str(SAMPLE_CT_LABELS))
    rows = []
    for name, (variant, truth) in storage_variants(image, labels, names).items():
        volume = ImageVolume(array=sitk.GetArrayFromImage(variant), geometry=Geometry.from_sitk(variant))
        started = time.perf_counter()
        prediction = segmenter.segment(volume).labels
        seconds = time.perf_counter() - started
        scores = dice_and_hd95(prediction, sitk.GetArrayFromImage(truth), variant.GetSpacing()[::-1],
                               card.num_classes)
        dice = {card.labels[value - 1].name: score["dice"] for value, score in scores.items()}
        rows.append({"variant": name, "size": "x".join(map(str, variant.GetSize())),
                     "mean_dice": float(np.nanmean(list(dice.values()))), "dice": dice, "seconds": seconds})
    return rows


def _turned(image, degrees: float) -> tuple:
    """The direction of ``image`` with its in-plane axes turned by ``degrees`` (an oblique grid), flattened."""
    import numpy as np

    angle = np.deg2rad(degrees)
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) @ np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return tuple(matrix.ravel())


def cine_variants(image, labels, names=None):
    """A short-axis stack as other scanners store it: other in-plane resolutions, oblique
    in-plane axes (the heart turned in the image), other intensity ranges, a coil bias field.
    {name: (image, labels)} as SimpleITK images (MR: background 0)."""
    import numpy as np
    import SimpleITK as sitk

    def rotated(degrees: float, spacing: float, size: int):
        return _resample_pair(image, labels, *centred_grid(image, spacing, size, direction=_turned(image, degrees)),
                              fill=0)

    def bias_field():
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        y, x = np.meshgrid(np.linspace(-1, 1, array.shape[1]), np.linspace(-1, 1, array.shape[2]), indexing="ij")
        field = 1 + 0.3 * x + 0.2 * y * x
        biased = sitk.GetImageFromArray((array * field[None]).astype(np.float32))
        biased.CopyInformation(image)
        return biased, labels

    def intensities():
        scaled = sitk.Cast(image, sitk.sitkFloat32) * 3.0 + 100.0
        return scaled, labels

    builders = {
        "as stored": lambda: (image, labels),
        "1.0 mm in-plane (finer grid)": lambda: rotated(0, 1.0, 288),
        "in-plane axes rotated 30 degrees, 1.3 mm": lambda: rotated(30, 1.3, 224),
        "in-plane axes rotated 135 degrees, 1.3 mm": lambda: rotated(135, 1.3, 224),
        "intensities x 3 + 100": intensities,
        "coil bias field (+-30 %)": bias_field,
    }
    return {name: build() for name, build in builders.items() if names is None or name in names}


def ct_variants(image, labels, names=None, organ: int = 5):
    """An abdominal CT as other scanners and users store it: a 512 x 512 grid at 0.8 mm with air
    at -1024 HU around the field of view, flipped axes, an oblique grid, and a tight crop around
    one organ (label ``organ``, the liver in the Synapse order, plus 15 mm).
    {name: (image, labels)} as SimpleITK images."""
    import numpy as np
    import SimpleITK as sitk

    def tight_crop():
        array = sitk.GetArrayFromImage(labels)
        found = np.argwhere(array == organ)
        if not len(found):
            return None
        margin = np.ceil(15.0 / np.asarray(image.GetSpacing()[::-1])).astype(int)
        low = np.maximum(found.min(0) - margin, 0)
        high = np.minimum(found.max(0) + margin + 1, array.shape)
        index, size = [int(v) for v in low[::-1]], [int(v) for v in (high - low)[::-1]]
        return sitk.RegionOfInterest(image, size, index), sitk.RegionOfInterest(labels, size, index)

    builders = {
        "as stored": lambda: (image, labels),
        "0.8 mm, 512 x 512, air -1024 HU outside": lambda: _resample_pair(
            image, labels, *centred_grid(image, 0.8, 512)),
        "axes flipped (direction -1,-1,1)": lambda: (sitk.Flip(image, [True, True, False]),
                                                     sitk.Flip(labels, [True, True, False])),
        "oblique: in-plane axes rotated 15 degrees, 0.8 mm": lambda: _resample_pair(
            image, labels, *centred_grid(image, 0.8, 512, direction=_turned(image, 15))),
        "tight crop around the liver (+15 mm)": tight_crop,
    }
    variants = {name: build() for name, build in builders.items() if names is None or name in names}
    return {name: pair for name, pair in variants.items() if pair is not None}


def dataset_robustness_rows(model: str, data: str, split_file: Optional[str], split: str, patients: int,
                            device: str = "cpu") -> List[Dict]:
    """Per-structure Dice of each storage variant over ``patients`` patients of a split (every
    group's first patients for ACDC): CT variants for a CT model, MR variants otherwise.
    A structure absent from a case's labels and its prediction is left out of that case."""
    import numpy as np
    import SimpleITK as sitk

    from ..training.data import load_split_file, open_dataset, split_cases
    from ..core.geometry import Geometry
    from ..pipeline.segmenter import Segmenter
    from ..core.io import ImageVolume, array_to_sitk
    from ..core.metrics import dice_and_hd95
    from ..models import find_model

    card = find_model(model)
    segmenter = Segmenter(card, device=device)
    dataset = open_dataset(data)
    cases = split_cases(dataset, load_split_file(split_file) if split_file else None)[split] \
        if split != "all" else dataset.cases
    if all(case.group for case in cases):
        groups = list(dict.fromkeys(case.group for case in cases))[:patients]
        cases = [c for c in cases if c.group in groups]
    else:
        cases = cases[:patients]
    variants = ct_variants if card.modality.upper() == "CT" else cine_variants
    scores: Dict[str, List[Dict[str, float]]] = {}
    for case in cases:
        volume, truth = case.load()
        image = array_to_sitk(volume.array, volume.geometry)
        labels = array_to_sitk(truth, volume.geometry)
        for name, (variant, moved) in variants(image, labels).items():
            prediction = segmenter.segment(ImageVolume(array=sitk.GetArrayFromImage(variant),
                                                       geometry=Geometry.from_sitk(variant))).labels
            result = dice_and_hd95(prediction, sitk.GetArrayFromImage(moved), variant.GetSpacing()[::-1],
                                   card.num_classes)
            scores.setdefault(name, []).append({card.labels[v - 1].name: s["dice"] for v, s in result.items()})
    rows = []
    for name, per_case in scores.items():
        dice = {organ: float(np.nanmean([c[organ] for c in per_case])) for organ in per_case[0]}
        rows.append({"variant": name, "volumes": len(per_case), "dice": dice,
                     "mean_dice": float(np.nanmean(list(dice.values())))})
    return rows


def format_dataset_robustness_table(rows: List[Dict], model: str, description: str) -> str:
    structures = list(rows[0]["dice"])
    header = ["stored as", "volumes"] + [f"{s} Dice" for s in structures] + ["mean Dice"]
    table = [[row["variant"], str(row["volumes"])] + [f"{row['dice'][s]:.3f}" for s in structures]
             + [f"{row['mean_dice']:.3f}"] for row in rows]
    return f"model {model}; {description}\n\n" + markdown_table(header, table)


def format_robustness_table(rows: List[Dict], model: str) -> str:
    organs = list(rows[0]["dice"])
    header = ["stored as", "voxels"] + organs + ["mean Dice", "seconds"]
    table = [[row["variant"], row["size"]] + [f"{row['dice'][o]:.3f}" for o in organs]
             + [f"{row['mean_dice']:.3f}", f"{row['seconds']:.1f}"] for row in rows]
    return (f"model {model}; the bundled CT stored in other ways, scored against its "
            "TotalSegmentator labels moved the same way\n\n" + markdown_table(header, table))


# -- quality: training statistics for the cards, and the bench-quality table ---------------------------

#: per model: (dataset folder, split file, split) of the images its statistics are computed from
STATISTICS_SOURCES = {
    "acdc-light": ("acdc", "configs/data/acdc/splits.json", "train"),
    "btcv-ct-light": ("btcv_synapse", "configs/data/btcv/splits.json", "train"),
    "chaos-mr-light": ("chaos_mr_t2", "configs/data/chaos-mr/splits.json", "train"),
}


def _split_cases(data: str, split_file: Optional[str], split: str):
    from ..training.data import load_split_file, open_dataset, split_cases

    dataset = open_dataset(data)
    if split == "all":
        return dataset.cases
    return split_cases(dataset, load_split_file(split_file) if split_file else None)[split]


def training_statistics(model: str, data: str, split_file: Optional[str], split: str = "train",
                        max_cases: int = 40) -> Dict:
    """The card's ``training["statistics"]`` block from the expert labels and images of a split (spread
    over the split when it holds more than ``max_cases`` volumes)."""
    from ..models import find_model
    from ..reports.quality import case_statistics, summarize_statistics

    card = find_model(model)
    cases = _split_cases(data, split_file, split)
    if len(cases) > max_cases:
        step = len(cases) / max_cases
        cases = [cases[int(i * step)] for i in range(max_cases)]
    names = {int(info.value): info.name for info in card.labels}
    figures = []
    for case in cases:
        volume, truth = case.load()
        figures.append(case_statistics(volume.array, truth, volume.geometry, names, card.modality,
                                       card.preprocessing.orientation_mode))
    command = (f"dinseg bench-quality --fit-statistics {model} --data {data} --split-file {split_file} "
               f"--split {split} --max-cases {max_cases}")
    return summarize_statistics(figures, card.modality, list(names.values()),
                                f"{len(figures)} volumes of {Path(data).name} ({split} split of {split_file}), "
                                "expert labels", command)


def _reversed_axis(volume, truth, lps_axis: int):
    """The same voxels, the direction column of the index axis closest to LPS ``lps_axis`` negated."""
    import numpy as np

    from ..core.geometry import Geometry
    from ..core.io import ImageVolume

    g = volume.geometry
    matrix = g.direction_matrix.copy()
    column = int(np.argmax(np.abs(matrix[lps_axis])))
    matrix[:, column] *= -1
    geometry = Geometry(size=g.size, spacing=g.spacing, origin=g.origin, direction=tuple(matrix.ravel()))
    return ImageVolume(array=volume.array, geometry=geometry, modality=volume.modality), truth


def _slice_spacing_doubled(volume, truth):
    from ..core.geometry import Geometry
    from ..core.io import ImageVolume

    g = volume.geometry
    spacing = list(g.spacing)
    spacing[2] *= 2
    geometry = Geometry(size=g.size, spacing=tuple(spacing), origin=g.origin, direction=g.direction)
    return ImageVolume(array=volume.array, geometry=geometry, modality=volume.modality), truth


def _other_sequence(volume, truth):
    """A stand-in for another MR sequence: the contrast inverted inside the body (fluid and fat swap)."""
    import numpy as np

    from ..core.io import ImageVolume

    array = volume.array.astype(np.float32)
    high = float(np.percentile(array, 99.5))
    inverted = np.where(array > 0.05 * high, high - np.minimum(array, high), 0.0).astype(np.float32)
    return ImageVolume(array=inverted, geometry=volume.geometry, modality=volume.modality), truth


def _cut_through(volume, truth, value: int):
    """The field of view cut through the middle of structure ``value`` along the in-plane axis x
    (the first index axis): the half beyond its centre dropped."""
    import numpy as np

    from ..core.geometry import Geometry
    from ..core.io import ImageVolume

    k, j, i = np.nonzero(truth == value)
    if not i.size:
        return None
    cut = int(round(i.mean()))
    g = volume.geometry
    geometry = Geometry(size=(cut, g.size[1], g.size[2]), spacing=g.spacing, origin=g.origin, direction=g.direction)
    return (ImageVolume(array=np.ascontiguousarray(volume.array[..., :cut]), geometry=geometry,
                        modality=volume.modality), np.ascontiguousarray(truth[..., :cut]))


def quality_cases(data_root: str, acdc_patients: int, abdomen_cases: int, mnms_patients: int,
                  calibration: bool = False):
    """(set, case name, model, loader) of the validation cases: for the table, the first patients of each
    validation split; with ``calibration``, the split's other validation patients (never mnms_val)."""
    import numpy as np

    from ..core.io import read_volume

    root = Path(data_root)
    cases = []
    acdc = _split_cases(str(root / "acdc"), "configs/data/acdc/splits.json", "val")
    groups = list(dict.fromkeys(c.group for c in acdc))
    chosen = groups[acdc_patients:] if calibration else groups[:acdc_patients]
    for case in acdc:
        if case.group in chosen:
            cases.append(("ACDC val", case.case_id, "acdc-light", case.load))
    for folder, split_file, model, label in (("btcv_synapse", "configs/data/btcv/splits.json", "btcv-ct-light", "BTCV val"),
                                             ("chaos_mr_t2", "configs/data/chaos-mr/splits.json", "chaos-mr-light",
                                              "CHAOS val")):
        val = _split_cases(str(root / folder), split_file, "val")
        for case in (val[abdomen_cases:] if calibration else val[:abdomen_cases]):
            cases.append((label, case.case_id, model, case.load))
    if calibration:
        return cases

    def t1_sample():
        volume = read_volume(root / "abdomen_mr_C" / "image.nii.gz")
        synapse = read_volume(root / "abdomen_mr_C" / "labels.nii.gz").array
        truth = np.zeros(synapse.shape, np.uint8)
        for source, target in ((5, 1), (4, 2), (3, 3), (7, 4)):  # Synapse order -> CHAOS order
            truth[synapse == source] = target
        return volume, truth

    cases.append(("T1 to T2 model", "abdomen_mr_C", "chaos-mr-light", t1_sample))
    patients = sorted(p for vendor in sorted((root / "mnms_val").iterdir()) if vendor.is_dir()
                      for p in sorted(vendor.iterdir()) if p.is_dir())
    # alternate vendors: Siemens, Philips, ...
    by_vendor = [[p for p in patients if p.parent.name == v] for v in sorted({p.parent.name for p in patients})]
    order = [p for group in zip(*by_vendor) for p in group][:mnms_patients]
    for patient in order:
        for phase in ("ED", "ES"):
            def load(patient=patient, phase=phase):
                image = read_volume(patient / f"{phase}_{patient.name}_sa.nii.gz")
                return image, read_volume(patient / f"{phase}_{patient.name}_sa_gt.nii.gz").array.astype(np.uint8)
            cases.append(("M&Ms val (other vendors)", f"{patient.name} {phase}", "acdc-light", load))
    return cases


def _corruptions(card, volume, truth, include: bool):
    """name -> (volume, truth) of each corrupted copy (and "as stored")."""
    copies = {"as stored": (volume, truth)}
    if not include:
        return copies
    copies["left-right reversed in header"] = _reversed_axis(volume, truth, 0)
    copies["anterior-posterior reversed in header"] = _reversed_axis(volume, truth, 1)
    copies["slice spacing x2 in header"] = _slice_spacing_doubled(volume, truth)
    if card.modality.upper() == "MR":
        copies["other MR sequence (contrast inverted)"] = _other_sequence(volume, truth)
    organ = {"acdc-light": 3, "btcv-ct-light": 5, "chaos-mr-light": 1}.get(card.name, 1)
    cut = _cut_through(volume, truth, organ)
    if cut is not None:
        copies["field of view cut through " + card.labels[organ - 1].name] = cut
    return copies


def quality_rows(data_root: str, acdc_patients: int = 2, abdomen_cases: int = 2, mnms_patients: int = 2,
                 threads: int = 1, corrupt: bool = True, calibration: bool = False,
                 progress: Optional[Callable[[str], None]] = None) -> List[Dict]:
    """One row per (case, copy, structure): Dice against the expert labels, the verdict, predicted Dice."""
    import numpy as np
    import torch

    from ..models import find_model
    from ..pipeline.files import variant_labels
    from ..pipeline.segmenter import Segmenter
    from ..reports.quality import quality_verdict

    torch.set_num_threads(threads)
    segmenters: Dict[str, object] = {}
    rows = []
    for set_name, case_name, model, load in quality_cases(data_root, acdc_patients, abdomen_cases,
                                                          mnms_patients, calibration):
        card = find_model(model)
        segmenter = segmenters.setdefault(model, Segmenter(card, device="cpu"))
        volume, truth = load()
        for copy_name, (copy, copy_truth) in _corruptions(card, volume, truth, corrupt and not calibration).items():
            started = time.perf_counter()
            labels = segmenter.segment(copy).labels
            variants = variant_labels(segmenter, copy)
            verdict = quality_verdict(labels, copy.array, copy.geometry, card, variants=variants,
                                      modality=card.modality)
            for info in card.labels:
                value, name = info.value, info.name
                truth_mask, mask = copy_truth == value, labels == value
                if not truth_mask.any():
                    continue  # a structure absent from the expert labels (BTCV's removed gallbladder)
                score = {"dice": 2.0 * np.logical_and(mask, truth_mask).sum() / (mask.sum() + truth_mask.sum())}
                structure = verdict.structures[name]
                rows.append({"set": set_name, "case": case_name, "copy": copy_name, "model": model,
                             "structure": name, "dice": float(score["dice"]),
                             "case_status": verdict.status, "status": structure.status,
                             "predicted_dice": structure.predicted_dice, "agreement": structure.agreement,
                             "reasons": verdict.reasons + structure.reasons,
                             "seconds": time.perf_counter() - started})
            if progress:
                progress(f"{set_name} {case_name} {copy_name}: {verdict.status} "
                         f"({time.perf_counter() - started:.1f} s) {'; '.join(verdict.warnings())[:300]}")
    return rows


def fit_calibration(rows: List[Dict]) -> Dict[str, Dict]:
    """Per model: the least-squares line Dice = intercept + slope x agreement over its rows."""
    import numpy as np

    fits = {}
    for model in sorted({r["model"] for r in rows}):
        pairs = [(r["agreement"], r["dice"]) for r in rows if r["model"] == model and r["agreement"] is not None]
        x = np.array([p[0] for p in pairs])
        y = np.array([p[1] for p in pairs])
        slope, intercept = np.polyfit(x, y, 1) if len(pairs) >= 3 and np.ptp(x) > 1e-6 else (1.0, float(np.mean(y - x)))
        fits[model] = {"intercept": round(float(intercept), 4), "slope": round(float(slope), 4), "pairs": len(pairs),
                       "mae_on_fit": round(float(np.mean(np.abs(intercept + slope * x - y))), 4)}
    return fits


def format_quality_table(rows: List[Dict]) -> str:
    """Per case and copy: mean Dice, the worst structure, verdict, predicted Dice; then the targets."""
    import numpy as np

    table = []
    seen = []
    for row in rows:
        key = (row["set"], row["case"], row["copy"])
        if key not in seen:
            seen.append(key)
    for key in seen:
        group = [r for r in rows if (r["set"], r["case"], r["copy"]) == key]
        dice = " ".join(f"{r['dice']:.2f}" for r in group)
        predicted = " ".join("-" if r["predicted_dice"] is None else f"{r['predicted_dice']:.2f}" for r in group)
        flags = " ".join("R" if r["status"] == "review" else "." for r in group)
        reasons = "; ".join(dict.fromkeys(group[0]["reasons"][:2]))[:120]
        table.append([key[0], key[1], key[2], dice, flags, predicted, group[0]["case_status"], reasons])
    header = ["set", "case", "copy", "Dice per structure", "flagged", "predicted Dice", "case verdict",
              "first reasons"]
    failures = [r for r in rows if r["dice"] < 0.70]
    good = [r for r in rows if r["dice"] >= 0.85]
    with_prediction = [r for r in rows if r["predicted_dice"] is not None]
    flagged_failures = sum(r["status"] == "review" for r in failures)
    flagged_good = sum(r["status"] == "review" for r in good)
    case_failures = sum(r["case_status"] == "review" for r in failures)
    case_good = sum(r["case_status"] == "review" for r in good)
    mae = float(np.mean([abs(r["predicted_dice"] - r["dice"]) for r in with_prediction])) if with_prediction else float("nan")
    stored = [r for r in with_prediction if r["copy"] == "as stored"]
    mae_stored = float(np.mean([abs(r["predicted_dice"] - r["dice"]) for r in stored])) if stored else float("nan")
    summary = [
        ["structures scored", str(len(rows)), ""],
        ["failures (Dice < 0.70) flagged, structure verdict", f"{flagged_failures}/{len(failures)}"
         f" = {100 * flagged_failures / max(len(failures), 1):.0f} %", ">= 90 %"],
        ["failures flagged, case verdict", f"{case_failures}/{len(failures)}"
         f" = {100 * case_failures / max(len(failures), 1):.0f} %", ""],
        ["good (Dice >= 0.85) flagged, structure verdict", f"{flagged_good}/{len(good)}"
         f" = {100 * flagged_good / max(len(good), 1):.0f} %", "<= 10 %"],
        ["good flagged, case verdict", f"{case_good}/{len(good)} = {100 * case_good / max(len(good), 1):.0f} %", ""],
        ["predicted-Dice MAE, all copies", f"{mae:.3f} ({len(with_prediction)} structures)", "<= 0.05"],
        ["predicted-Dice MAE, as stored only", f"{mae_stored:.3f} ({len(stored)} structures)", ""],
    ]
    by_copy = []
    for copy in dict.fromkeys(r["copy"].split(" through ")[0] for r in rows):
        group = [r for r in rows if r["copy"].split(" through ")[0] == copy]
        f = [r for r in group if r["dice"] < 0.70]
        g = [r for r in group if r["dice"] >= 0.85]
        by_copy.append([copy, str(len(group)), f"{sum(r['status'] == 'review' for r in f)}/{len(f)}",
                        f"{sum(r['status'] == 'review' for r in g)}/{len(g)}",
                        f"{sum(r['case_status'] == 'review' for r in group)}/{len(group)}"])
    return (markdown_table(header, table) + "\n\n"
            + markdown_table(["copy", "structures", "failures flagged", "good flagged", "case verdict review"], by_copy)
            + "\n\n" + markdown_table(["measure", "value", "target"], summary))
