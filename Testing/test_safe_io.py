"""Nothing a user gives or gets is lost: verified writes on a full disk and at every failing step,
protected inputs, interrupts, DICOM folders read like their files."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import CINE_DICOM, SAMPLE_CT
from dinseg.apps.cli import main
from dinseg.core.errors import OutputError
from dinseg.core.geometry import Geometry
from dinseg.core.io import atomic_output, read_volume, write_image

FORMATS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha")


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ct") / "small_ct.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_CT))[:, :, 80:92], str(path))
    return path


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("dinseg: error:"), lines
    return lines[-1]


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
    write_image(complete, labels, geometry) if extension != ".seg.nrrd" else write_image(
        complete, labels, geometry)
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


def test_sigterm_during_a_run_leaves_no_temporary_file(tmp_path, small_ct, random_ct_model):
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "dinseg.apps.cli", "segment", str(small_ct), str(small_ct),
                                str(small_ct), "-o", str(out), "--model", str(random_ct_model), "--device", "cpu"],
                               stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode in (130, 2, 0), stderr
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


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
    code = main(["segment", str(folder), "-o", str(tmp_path / "f.nii.gz"), "--model", str(random_ct_model),
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
