"""Fuzzing the readers: corrupted copies of the real samples must end as a correct segmentation or
as one clear error line, never a traceback, a crash, a hang or exit 0 with a bad file.

A fixed seed makes 30 cases in the suite; ``DINSEG_FUZZ_CASES=500 python -m pytest
Testing/test_fuzz.py`` runs a longer campaign. All cases run in one child process, so that a
crash in a native reader names the case instead of killing the test run. Memory: a declared
size over ``dinseg.core.io.MAX_INPUT_VOXELS`` is refused before reading, and the child's peak
resident memory must stay under ``MEMORY_BOUND_GB`` (batches of 4 slices: by default the batch grows
with free memory, up to a quarter of it). A spacing that makes an image longer than
``dinseg.core.io.MAX_EXTENT_MM`` is refused too.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import CINE_DICOM, SAMPLE_CT
from dinseg.core.io import read_volume

SEED = 2026
CASES = int(os.environ.get("DINSEG_FUZZ_CASES", "30"))
MEMORY_BOUND_GB = 3.0
CASE_TIMEOUT_S = 60

RUNNER = r"""
import contextlib, io, json, resource, signal, sys
from pathlib import Path
from dinseg.apps.cli import main

def timeout(signum, frame):
    raise TimeoutError("hang")

def peak_gb():
    # VmHWM restarts at exec; ru_maxrss on Linux keeps the parent's (pytest's) peak from before it
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

signal.signal(signal.SIGALRM, timeout)
model, cases = sys.argv[1], sys.argv[2:]
for case in cases:
    output = Path(case + ".labels.nii.gz")
    print(json.dumps({"started": case}), flush=True)
    stderr = io.StringIO()
    signal.alarm(%d)
    try:
        with contextlib.redirect_stderr(stderr):
            code = main(["segment", case, "-o", str(output), "--model", model, "--device", "cpu", "--batch-size", "4"])
        failure = None
    except BaseException as error:
        code, failure = None, f"{type(error).__name__}: {error}"
    signal.alarm(0)
    print(json.dumps({"case": case, "code": code, "failure": failure, "stderr": stderr.getvalue().splitlines(),
                      "output": output.is_file(),
                      "peak_gb": peak_gb()}), flush=True)
print(json.dumps({"peak_gb": peak_gb()}), flush=True)
""" % CASE_TIMEOUT_S


def _sources(folder: Path):
    """Small real images in each format the readers take: {name: bytes}."""
    ct = sitk.ReadImage(str(SAMPLE_CT))[20:84, 20:84, 80:88]
    sources = {}
    for extension in (".nii", ".nii.gz", ".nrrd", ".mha"):
        path = folder / f"source{extension}"
        sitk.WriteImage(ct, str(path), extension != ".nii")
        sources[extension] = path.read_bytes()
    sources[".dcm"] = Path(CINE_DICOM).read_bytes()
    return sources


def _nifti(mutate, data: bytes) -> bytes:
    header = bytearray(data[:352])
    mutate(header)
    return bytes(header) + data[352:]


def _mutations(rng: np.random.Generator, sources):
    """(name, extension, bytes) corrupted cases, deterministic in the seed."""
    plain = sources[".nii"]
    kinds = ["truncate", "flip_header", "nifti_dims", "nifti_type", "huge_text_header", "dicom_tag"]
    for index in range(CASES):
        kind = kinds[index % len(kinds)]
        if kind == "truncate":
            extension = [".nii", ".nii.gz", ".nrrd", ".mha", ".dcm"][int(rng.integers(5))]
            data = sources[extension]
            yield f"{index}-truncate", extension, data[:int(rng.integers(1, len(data)))]
        elif kind == "flip_header":
            extension = [".nii", ".nrrd", ".mha", ".dcm"][int(rng.integers(4))]
            data = bytearray(sources[extension])
            for position in rng.integers(0, min(len(data), 352 if extension == ".nii" else 600), size=4):
                data[position] ^= int(rng.integers(1, 256))
            yield f"{index}-flip", extension, bytes(data)
        elif kind == "nifti_dims":
            dims = [int(rng.integers(0, 9))] + [int(v) for v in rng.choice([0, 1, 8, 64, 32767, -3], size=7)]

            def set_dims(header, dims=dims):
                header[40:56] = struct.pack("<8h", *dims)
            data = _nifti(set_dims, plain)
            yield f"{index}-dims", ".nii.gz", gzip.compress(data) if index % 2 else data
        elif kind == "nifti_type":
            code = int(rng.choice([0, 1, 2, 4, 8, 16, 32, 64, 128, 255, 511, 1024, 2304]))

            def set_type(header, code=code):
                header[70:72] = struct.pack("<h", code)
            yield f"{index}-type{code}", ".nii", _nifti(set_type, plain)
        elif kind == "huge_text_header":
            extension = [".nrrd", ".mha"][index % 2]
            text = sources[extension]
            key = b"sizes: " if extension == ".nrrd" else b"DimSize = "
            start = text.index(key) + len(key)
            end = text.index(b"\n", start)
            yield f"{index}-huge", extension, text[:start] + b"100000 100000 5000" + text[end:]
        else:
            import pydicom

            dataset = pydicom.dcmread(CINE_DICOM)
            keyword = ["Rows", "Columns", "BitsAllocated", "PixelData", "NumberOfFrames", "SamplesPerPixel"][
                int(rng.integers(6))]
            if rng.random() < 0.5 and keyword != "PixelData":
                setattr(dataset, keyword, int(getattr(dataset, keyword, 1)) * 3 + 1)  # contradicts the pixel data
            else:
                delattr(dataset, keyword)
            buffer = __import__("io").BytesIO()
            dataset.save_as(buffer)
            yield f"{index}-dicom-{keyword}", ".dcm", buffer.getvalue()


def test_corrupted_inputs_end_cleanly(tmp_path, random_ct_model):
    pytest.importorskip("pydicom", reason="the DICOM cases need pydicom")
    rng = np.random.default_rng(SEED)
    sources = _sources(tmp_path)
    cases = []
    for name, extension, data in _mutations(rng, sources):
        path = tmp_path / f"case{name}{extension}"
        path.write_bytes(data)
        cases.append(str(path))
    result = subprocess.run([sys.executable, "-c", RUNNER, str(random_ct_model), *cases], capture_output=True,
                            text=True, timeout=CASE_TIMEOUT_S * len(cases) + 120)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    finished = {event["case"]: event for event in events if "case" in event}
    started = [event["started"] for event in events if "started" in event]
    assert result.returncode == 0 and len(finished) == len(cases), \
        f"the child died (exit {result.returncode}) on {started[-1] if started else '?'}: {result.stderr[-2000:]}"
    outcomes = {"segmented": 0, "refused": 0}
    for case, event in finished.items():
        assert event["failure"] is None, f"{case}: {event['failure']}"
        assert event["code"] in (0, 2), f"{case}: exit {event['code']}"
        if event["code"] == 2:  # the whole of stderr is the one error line
            assert len(event["stderr"]) == 1 and event["stderr"][0].startswith("dinseg: error:"), \
                f"{case}: {event['stderr']}"
            assert not event["output"], f"{case}: refused but wrote an output"
            outcomes["refused"] += 1
        else:
            output = sitk.GetArrayFromImage(sitk.ReadImage(case + ".labels.nii.gz"))
            source = read_volume(case).array
            assert output.shape == source.shape or output.shape == source.shape[1:], case
            outcomes["segmented"] += 1
    peaks = [(event["peak_gb"], event.get("case")) for event in events if "peak_gb" in event]
    assert events[-1]["peak_gb"] < MEMORY_BOUND_GB, f"peak memory after each case: {peaks}"
    assert outcomes["refused"] > 0 and outcomes["segmented"] > 0, outcomes
