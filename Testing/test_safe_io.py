"""Nothing a user gives or gets is lost: verified writes on a full disk and at every failing step,
protected inputs, interrupts, DICOM folders read like their files."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import CINE_DICOM, SAMPLE_CT
from dinseg.apps.cli import main
from dinseg.core.errors import OutputError
from dinseg.core.geometry import Geometry
from dinseg.core.io import atomic_output, read_volume, write_image
from dinseg.core.terminology import label_infos_for
from dinseg.reports.segfile import write_segmentation

FORMATS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha")


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ct") / "small_ct.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_CT))[:, :, 80:92], str(path))
    return path


@pytest.fixture(scope="module")
def tiny_ct(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_ct") / "tiny_ct.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_CT))[:, :, 84:88], str(path))
    return path


def _one_error_line(capsys) -> str:
    """The command's whole stderr, which must be exactly one line, ``dinseg: error: ...``."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dinseg: error:"), lines
    return lines[0]


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KB tmpfs filled to the last byte (mounting needs root: skipped where not allowed)."""
    mount = tmp_path / "full"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.decode().strip() or 'not root'})")
    try:
        with open(mount / "filler", "wb") as filler:
            try:
                for _ in range(64):
                    filler.write(b"\1" * 1024)
                    filler.flush()
            except OSError:
                pass
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.parametrize("extension", FORMATS + (".png", ".json", ".csv"))
def test_full_disk_is_one_line_exit_2_and_nothing_left(full_disk, small_ct, random_ct_model, capsys, extension):
    if extension in (".png", ".json", ".csv"):
        flag = "--preview" if extension == ".png" else "--statistics"
        args = ["-o", str(full_disk.parent / "labels.nii.gz"), flag, str(full_disk / f"extra{extension}")]
    else:
        args = ["-o", str(full_disk / f"labels{extension}")]
    code = main(["segment", str(small_ct), *args, "--model", str(random_ct_model), "--device", "cpu"])
    assert code == 2
    assert str(full_disk) in _one_error_line(capsys)
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


#: a full disk without root: the command runs in a child process whose files may not grow past
#: FSIZE_LIMIT bytes (RLIMIT_FSIZE; SIGXFSZ ignored, so a write past it fails with EFBIG). The
#: limit is set when the file under test is written: from the start for the output, on entering
#: the writer for --statistics and --preview (the output before it must be written whole). It
#: reaches every writer, ITK's C++ ones included; the tmpfs test above gives the real ENOSPC where root.
FSIZE_LIMIT = 512
FULL_DISK_RUNNER = r"""
import contextlib, functools, io, json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot  # matplotlib's font cache is written before any limit
from dinseg.apps.cli import main
import dinseg.reports.preview, dinseg.reports.statistics

limit, cases = int(sys.argv[1]), json.loads(sys.argv[2])
_, unlimited = resource.getrlimit(resource.RLIMIT_FSIZE)

def full(size):
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, unlimited))

def filling(function):
    @functools.wraps(function)
    def writer(*args, **kwargs):
        full(limit)  # the disk fills as this file is written
        return function(*args, **kwargs)
    return writer

for module, name in ((dinseg.reports.statistics, "write_statistics"), (dinseg.reports.preview, "render_preview")):
    setattr(module, name, filling(getattr(module, name)))
for case in cases:
    stderr = io.StringIO()
    if case["full_from_start"]:
        full(limit)
    try:
        with contextlib.redirect_stderr(stderr):
            code = main(case["args"])
    finally:
        full(unlimited)
    print(json.dumps({"name": case["name"], "code": code, "stderr": stderr.getvalue()}), flush=True)
"""


@pytest.fixture(scope="module")
def size_limited_runs(tmp_path_factory, tiny_ct, random_ct_model):
    """{extension: (folder, target, exit status, stderr)}: each output type written where it cannot grow
    past FSIZE_LIMIT bytes, an older file of the same name in place (one child process for all)."""
    root = tmp_path_factory.mktemp("size_limited")
    cases, runs = [], {}
    for extension in FORMATS + (".png", ".json", ".csv"):
        folder = root / extension.strip(".").replace(".", "_")
        folder.mkdir()
        target = folder / f"target{extension}"
        target.write_bytes(b"the old file")
        args = ["segment", str(tiny_ct), "--model", str(random_ct_model), "--device", "cpu", "--threads", "1"]
        if extension in (".png", ".json", ".csv"):
            args += ["-o", str(folder / "labels.nii.gz"), "--preview" if extension == ".png" else "--statistics",
                     str(target)]
        else:
            args += ["-o", str(target)]
        cases.append({"name": extension, "args": args, "full_from_start": extension in FORMATS})
        runs[extension] = (folder, target)
    result = subprocess.run([sys.executable, "-c", FULL_DISK_RUNNER, str(FSIZE_LIMIT), json.dumps(cases)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = {event["name"]: event for event in map(json.loads, result.stdout.splitlines())}
    return {name: (*runs[name], outcomes[name]["code"], outcomes[name]["stderr"]) for name in runs}


@pytest.mark.parametrize("extension", FORMATS + (".png", ".json", ".csv"))
def test_a_file_that_cannot_grow_is_one_line_exit_2_and_the_old_file_kept(size_limited_runs, extension):
    folder, target, code, stderr = size_limited_runs[extension]
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"dinseg: error: {target}: "), stderr
    assert target.read_bytes() == b"the old file"
    left = sorted(p.name for p in folder.iterdir())
    assert left == (["labels.nii.gz", target.name] if extension in (".png", ".json", ".csv") else [target.name])


class _DiskThatFills:
    """``open`` for files in ``folder``: their writes raise ENOSPC once ``room`` bytes are written (a disk
    filling up under a Python writer: json, csv, matplotlib, pydicom); other files open as usual."""

    def __init__(self, folder: Path, room: int):
        self.folder, self.room, self.real_open = folder.resolve(), room, io.open

    def __call__(self, file, mode="r", *args, **kwargs):
        stream = self.real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and Path(file).resolve().parent == self.folder and \
                any(flag in mode for flag in "wax+"):
            return _FillingStream(stream, self)
        return stream


class _FillingStream:
    def __init__(self, stream, disk: _DiskThatFills):
        self._stream, self._disk = stream, disk

    def write(self, data):
        if len(data) > self._disk.room:
            self._disk.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._disk.room -= len(data)
        return self._stream.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stream.close()

    def __iter__(self):
        return iter(self._stream)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _write_statistics(path):
    from dinseg.reports.statistics import structure_statistics, write_statistics

    labels, geometry = _labels_and_geometry()
    infos = label_infos_for(["liver", "spleen", "aorta"])
    write_statistics(path, structure_statistics(labels, labels.astype(np.float32), geometry, infos), units="HU")


def _write_preview(path):
    from dinseg.core.preprocess import Preprocessing
    from dinseg.reports.preview import render_preview

    labels, geometry = _labels_and_geometry()
    image = np.random.default_rng(1).normal(size=labels.shape).astype(np.float32)
    render_preview(path, image, labels, geometry, Preprocessing(), label_infos_for(["liver", "spleen", "aorta"]))


def _write_cardiac_csv(path):
    from dinseg.reports.cardiac import cardiac_function, write_csv

    ed = np.zeros((4, 20, 20), np.uint8)
    ed[:, 4:16, 4:16], ed[:, 8:12, 8:12] = 2, 3
    es = np.where(ed == 3, 0, ed)
    es[:, 9:11, 9:11] = 3
    write_csv(path, cardiac_function([ed, es], (1.5, 1.5, 8.0), label_infos_for(["right ventricle", "myocardium",
                                                                                  "left ventricle"])))


@pytest.mark.parametrize("name, write", [("stats.json", _write_statistics), ("stats.csv", _write_statistics),
                                         ("preview.png", _write_preview), ("function.csv", _write_cardiac_csv)])
def test_enospc_in_a_python_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, name, write):
    """No root, no mount: the disk fills after 100 bytes of the file (ENOSPC from the write call)."""
    target = tmp_path / name
    target.write_bytes(b"the old file")
    disk = _DiskThatFills(tmp_path, room=100)
    monkeypatch.setattr(io, "open", disk)
    monkeypatch.setattr(builtins, "open", disk)
    with pytest.raises(OutputError) as refused:
        write(target)
    monkeypatch.undo()
    assert str(refused.value).startswith(f"{target}: ") and "No space left on device" in str(refused.value)
    assert disk.room == 0, "the writer never reached the full disk"
    assert target.read_bytes() == b"the old file" and sorted(p.name for p in tmp_path.iterdir()) == [name]


def _labels_and_geometry():
    labels = np.random.default_rng(0).integers(0, 4, size=(6, 40, 40), dtype=np.uint8)
    return labels, Geometry(size=(40, 40, 6), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0))


@pytest.mark.parametrize("step", ["fsync", "replace", "chmod"])
def test_a_failure_at_each_write_step_keeps_the_old_output_and_leaves_no_temporary(tmp_path, monkeypatch, step):
    labels, geometry = _labels_and_geometry()
    target = tmp_path / "labels.nii.gz"
    write_image(target, labels, geometry)
    before = target.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, step, fail)
    with pytest.raises(OutputError, match="labels.nii.gz: cannot write .Input/output error"):
        write_image(target, np.zeros_like(labels), geometry)
    monkeypatch.undo()
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz"]


@pytest.mark.parametrize("extension", FORMATS)
def test_a_cut_file_is_caught_before_it_replaces_the_target(tmp_path, extension):
    """A writer that stops short without saying so (what ITK does on a full disk) is detected."""
    labels, geometry = _labels_and_geometry()
    complete = tmp_path / f"complete{extension}"
    if extension == ".seg.nrrd":  # Slicer's segmentation: named segments in the header, then the labels
        write_segmentation(complete, labels, geometry, label_infos_for(["liver", "spleen", "aorta"]))
        assert "Segment0_Name:=liver" in complete.read_bytes()[:4096].decode("latin-1")
    else:
        write_image(complete, labels, geometry)
    data = complete.read_bytes()
    target = tmp_path / f"target{extension}"
    with pytest.raises(OutputError, match="incomplete|empty"):
        with atomic_output(target) as temporary:
            temporary.write_bytes(data[:len(data) * 2 // 3])
    assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == [complete.name]


def test_an_interrupted_writer_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(tmp_path / "x.nii.gz") as temporary:
            temporary.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_a_run_interrupts_it_and_leaves_no_temporary_file(tmp_path, small_ct, random_ct_model):
    """SIGTERM (a killed job, Cancel in Slicer) mid-batch unwinds like Ctrl-C: exit 130, the finished
    case kept, nothing partial. Without the CLI's SIGTERM handler Python dies of the signal (-15)."""
    cases = tmp_path / "cases"
    cases.mkdir()
    # three names, three outputs (one name thrice is refused before any work); the second and third are
    # the whole CT, seconds of work left when the first is written
    for name, source in (("a", small_ct), ("b", SAMPLE_CT), ("c", SAMPLE_CT)):
        shutil.copy(source, cases / f"{name}.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "dinseg.apps.cli", "segment",
                                *(str(cases / f"{name}.nii.gz") for name in "abc"), "-o", str(out),
                                "--model", str(random_ct_model), "--device", "cpu"],
                               stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in process.stderr:  # the run is under way once the first case is written
            seen.append(line)
            if line.startswith("[1/3]"):
                break
        process.send_signal(signal.SIGTERM)
        stderr = "".join(seen) + process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert seen and seen[-1].startswith("[1/3] a: wrote"), stderr
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "dinseg: interrupted", stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.seg.nrrd"], "a temporary or partial file was left"


@pytest.mark.parametrize("where", ["the input", "inside the input folder"])
def test_an_output_onto_an_input_is_refused_before_any_work(tmp_path, random_ct_model, capsys, where):
    if where == "the input":
        source = tmp_path / "ct.nii.gz"
        shutil.copy(SAMPLE_CT, source)
        target = source
    else:
        source = tmp_path / "cine"
        source.mkdir()
        shutil.copy(CINE_DICOM, source)
        target = source / "labels.nii.gz"
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(["segment", str(source), "-o", str(target), "--model", str(random_ct_model)]) == 2
    assert f"is {where}" in _one_error_line(capsys)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_dicom_folder_is_read_as_its_file_is(tmp_path, random_ct_model, capsys):
    folder = tmp_path / "cine"
    folder.mkdir()
    shutil.copy(CINE_DICOM, folder)
    (folder / "report.txt").write_text("not an image")
    (folder / "DICOMDIR").write_bytes(b"\0" * 200)
    from_folder, from_file = read_volume(folder), read_volume(CINE_DICOM)
    assert from_folder.frames == from_file.frames == 16
    assert np.array_equal(from_folder.array, from_file.array)
    # the cine is a cardiac MR: with the CT test model the refusal would follow a (rightful) modality
    # warning; the short-axis model it would get leaves the error line alone on stderr
    code = main(["segment", str(folder), "-o", str(tmp_path / "f.nii.gz"), "--model", "acdc-light",
                 "--frames", "17"])
    assert code == 2 and "frame 17 does not exist; the series has frames 1..16" in _one_error_line(capsys)


def test_an_empty_file_says_so(tmp_path, random_ct_model, capsys):
    empty = tmp_path / "empty.nii.gz"
    empty.touch()
    assert main(["segment", str(empty), "-o", str(tmp_path / "l.nii.gz"), "--model", str(random_ct_model)]) == 2
    assert _one_error_line(capsys) == f"dinseg: error: {empty}: the file is empty (0 bytes)"


def test_dicom_whose_header_contradicts_its_pixel_data_is_refused(tmp_path, random_ct_model, capsys):
    pydicom = pytest.importorskip("pydicom")
    dataset = pydicom.dcmread(CINE_DICOM)
    dataset.Columns = 769
    dataset.save_as(tmp_path / "bad.dcm")
    assert main(["segment", str(tmp_path / "bad.dcm"), "-o", str(tmp_path / "l.nii.gz"),
                 "--model", str(random_ct_model)]) == 2
    assert "contradictory header" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.dcm"]


def test_a_writer_failing_mid_write_is_one_line_and_leaves_the_old_output(tmp_path):
    """The flush step: a writer that hits a full disk part-way (Python raises ENOSPC on flush)."""
    target = tmp_path / "report.json"
    target.write_text('{"old": true}')
    with pytest.raises(OutputError, match="report.json: cannot write .No space left on device"):
        with atomic_output(target) as temporary:
            with open(temporary, "w") as stream:
                stream.write('{"new": ')
                raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == '{"old": true}' and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_corrupt_spacing_is_refused_before_it_blows_up_the_grid(tmp_path, random_ct_model, capsys):
    image = sitk.ReadImage(str(SAMPLE_CT))[:, :, 80:84]
    image.SetSpacing((900.0, 900.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "wide.nii.gz"))
    assert main(["segment", str(tmp_path / "wide.nii.gz"), "-o", str(tmp_path / "l.nii.gz"),
                 "--model", str(random_ct_model)]) == 2
    assert "more than any body: a corrupt spacing?" in _one_error_line(capsys)
