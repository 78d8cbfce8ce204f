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
from typing import Dict, List

SAMPLE_CT = Path(__file__).resolve().parent / "assets" / "sample" / "abdomen_ct.nii.gz"


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


def median_latency(function, device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``function()`` in seconds (GPU work synchronised)."""
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        for _ in range(warmup):
            function()
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            function()
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def model_rows(size: int, threads: int, devices: List[str], presets: List[str], repeats: int) -> List[Dict]:
    """One row per network: parameters, GMACs and per-slice latency (batch 1) on each device."""
    import torch
    from monai.networks.nets import BasicUNet

    from .nets import FUSION_VARIANTS, NetConfig, build_network

    torch.set_num_threads(threads)
    image = torch.rand(1, 1, size, size)
    candidates = []
    for preset in presets:
        config = NetConfig.from_preset(preset, num_classes=9)
        widths = (config.stem_channels,) + config.widths + (config.stem_channels,)
        candidates.append((f"U-Net, same widths ({preset})", preset, "baseline",
                           lambda w=widths: BasicUNet(spatial_dims=2, in_channels=1, out_channels=9, features=w)))
        for fusion in FUSION_VARIANTS:
            candidates.append((f"DIN {preset} {fusion}", preset, fusion,
                               lambda p=preset, f=fusion: build_network(NetConfig.from_preset(p, fusion=f,
                                                                                              num_classes=9))))
    candidates.append(("MONAI BasicUNet (default widths)", "-", "baseline",
                       lambda: BasicUNet(spatial_dims=2, in_channels=1, out_channels=9)))
    rows = []
    for name, preset, fusion, make in candidates:
        network = make().eval()
        takes_two = fusion in FUSION_VARIANTS
        inputs = (image, image) if takes_two else (image,)
        row = {"model": name, "preset": preset, "fusion": fusion,
               "parameters_m": sum(p.numel() for p in network.parameters()) / 1e6,
               "gmacs": count_macs(network, inputs) / 1e9}
        for device_name in devices:
            device = torch.device(device_name)
            network = network.to(device)
            moved = tuple(t.to(device) for t in inputs)
            slow = preset == "paper" and device.type == "cpu"
            row[f"{device_name}_ms"] = 1000 * median_latency(lambda n=network, m=moved: n(*m), device,
                                                            max(3, repeats // 5) if slow else repeats)
        rows.append(row)
    return rows


def format_model_table(rows: List[Dict], devices: List[str], threads: int, size: int) -> str:
    """Markdown table with each DIN's latency as a multiple of the same-width U-Net's."""
    import torch

    baselines = {row["preset"]: row for row in rows if row["model"].startswith("U-Net, same widths")}
    header = ["model", "params (M)", f"GMACs @{size}²"]
    for device in devices:
        header += [f"{device} ms/slice", "× same-width U-Net"]
    lines = [f"torch {torch.__version__}, {threads} CPU thread(s); devices: {', '.join(_device_names(devices))}; "
             f"batch 1, {size}x{size}, median of repeated forward passes.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], f"{row['parameters_m']:.2f}", f"{row['gmacs']:.2f}"]
        for device in devices:
            base = baselines.get(row["preset"])
            ratio = f"{row[f'{device}_ms'] / base[f'{device}_ms']:.2f}" if base else "-"
            cells += [f"{row[f'{device}_ms']:.1f}", ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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


def synthetic_ct_volume(path: Path, slices: int, size: int = 512, spacing: float = 0.7) -> None:
    """A CT-sized volume built from the real sample CT: resampled to size x size at ``spacing`` mm
    in-plane and ``slices`` slices (interpolated along z), int16 Hounsfield units."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(SAMPLE_CT))
    extent_z = image.GetSize()[2] * image.GetSpacing()[2]
    new_spacing = (spacing, spacing, extent_z / slices)
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    direction = sitk.DICOMOrient(image, "LPS").GetDirection()
    origin = [c - (n - 1) / 2 * sp for c, n, sp in zip(centre, (size, size, slices), new_spacing)]
    resampled = sitk.Resample(image, (size, size, slices), sitk.Transform(), sitk.sitkLinear, origin,
                              new_spacing, direction, -1024, sitk.sitkInt16)
    sitk.WriteImage(resampled, str(path), True)


def segment_rows(slice_counts: List[int], model: str, device: str, threads: int) -> List[Dict]:
    """Run ``dinseg segment`` in a fresh process per volume size; per-stage seconds and peak memory."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for slices in slice_counts:
            source = Path(folder) / f"ct_{slices}.nii.gz"
            synthetic_ct_volume(source, slices)
            output = Path(folder) / f"ct_{slices}.seg.nrrd"
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            command = [sys.executable, "-c", _MEASURE, str(source), "-o", str(output), "--model", model,
                       "--device", device]
            result = subprocess.run(command, capture_output=True, text=True, env=env)
            if result.returncode != 0:
                raise RuntimeError(result.stderr.strip().splitlines()[-1])
            events = {event["event"]: event for event in map(json.loads, result.stdout.strip().splitlines())}
            rows.append({"slices": slices, "seconds": events["done"]["seconds"],
                         "peak_rss_gb": events["peak"]["bytes"] / 1e9})
    return rows


#: runs in a child process, so that its peak resident memory is the pipeline's alone; the
#: CLI's JSON progress ends with {"event": "done", "seconds": {stage: seconds}}
_MEASURE = """
import json, resource, sys
from dinseg.cli import main
code = main(["segment", *sys.argv[1:], "--progress", "json"])
print(json.dumps({"event": "peak", "bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
sys.exit(code)
"""


def format_segment_table(rows: List[Dict], model: str, device: str, threads: int) -> str:
    stages = list(rows[0]["seconds"])
    header = ["slices (512x512, 0.7 mm)"] + [f"{stage} (s)" for stage in stages] + \
             ["total (s)", "outside network", "peak RSS (GB)"]
    lines = [f"model {model}, device {device}, {threads} thread(s)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        seconds = row["seconds"]
        total = sum(seconds.values())
        outside = (total - seconds["network"]) / total
        lines.append("| " + " | ".join([str(row["slices"])] + [f"{seconds[s]:.2f}" for s in stages] +
                                       [f"{total:.2f}", f"{100 * outside:.0f} %", f"{row['peak_rss_gb']:.2f}"]) + " |")
    return "\n".join(lines) + "\n"
