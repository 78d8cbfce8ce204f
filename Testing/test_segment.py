"""`dinseg segment`: orientation-independent results, exact output geometry, formats, 4D, bad input."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from dinseg.apps.cli import main
from dinseg.core.errors import ModelError
from dinseg.pipeline.segmenter import Segmenter
from dinseg.core.io import read_volume
from dinseg.models import import_models, load_card, load_network

from conftest import CINE_DICOM, SAMPLES

CT = SAMPLES / "abdomen_ct.nii.gz"
MR = SAMPLES / "abdomen_mr.nii.gz"


@pytest.fixture(scope="module")
def ct_crop(tmp_path_factory) -> Path:
    """The real CT cut to 24 slices through the upper abdomen (direction (-1, -1, 1) kept)."""
    image = sitk.ReadImage(str(CT))[:, :, 76:100]
    path = tmp_path_factory.mktemp("ct") / "ct_crop.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def _segment(card, path, out, *extra) -> int:
    return main(["segment", str(path), "-o", str(out), "--model", str(card), "--device", "cpu", *extra])


def _labels_in_lps_grid_of(reference: sitk.Image, labels_path: Path) -> np.ndarray:
    """Labels resampled (nearest, exact for grids that coincide) onto the reference's grid."""
    labels = sitk.ReadImage(str(labels_path))
    resampled = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(resampled)


def test_flipped_and_permuted_storage_give_the_same_segmentation(random_ct_model, ct_crop, tmp_path):
    """The same anatomy stored with flipped axes (identity direction) or permuted axes segments identically."""
    original = sitk.ReadImage(str(ct_crop))
    identity = sitk.DICOMOrient(original, "LPS")          # flips x and y: identity direction
    assert identity.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    permuted = sitk.PermuteAxes(original, [1, 0, 2])       # x and y swapped, direction matrix to match
    results = {}
    for name, image in (("original", original), ("identity", identity), ("permuted", permuted)):
        source = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(image, str(source))
        assert _segment(random_ct_model, source, tmp_path / f"{name}_labels.nii.gz") == 0
        results[name] = _labels_in_lps_grid_of(original, tmp_path / f"{name}_labels.nii.gz")
    assert len(np.unique(results["original"])) > 2, "the model output should have structure"
    assert np.array_equal(results["identity"], results["original"])
    assert np.array_equal(results["permuted"], results["original"])


@pytest.mark.parametrize("extension", [".nii.gz", ".nrrd", ".seg.nrrd", ".mha"])
def test_output_geometry_equals_the_input_exactly(random_ct_model, ct_crop, tmp_path, extension):
    out = tmp_path / f"labels{extension}"
    assert _segment(random_ct_model, ct_crop, out) == 0
    source, result = sitk.ReadImage(str(ct_crop)), sitk.ReadImage(str(out))
    assert result.GetSize() == source.GetSize()
    assert result.GetSpacing() == source.GetSpacing()
    assert result.GetOrigin() == source.GetOrigin()
    assert result.GetDirection() == source.GetDirection()
    assert result.GetPixelID() == sitk.sitkUInt8


def test_fine_in_plane_resolution_keeps_the_input_grid(random_ct_model, ct_crop, tmp_path):
    """A 0.7 mm, 512 x 512 in-plane copy (as real scans are stored) comes back on its own grid."""
    image = sitk.ReadImage(str(ct_crop))[:, :, :6]
    fine = sitk.Resample(image, (512, 512, image.GetSize()[2]), sitk.Transform(), sitk.sitkLinear,
                         image.GetOrigin(), (0.7, 0.7, image.GetSpacing()[2]), image.GetDirection(), -1000)
    source, out = tmp_path / "fine.nii.gz", tmp_path / "fine_labels.nrrd"
    sitk.WriteImage(fine, str(source))
    assert _segment(random_ct_model, source, out) == 0
    result = sitk.ReadImage(str(out))
    assert result.GetSize() == (512, 512, 6)
    assert np.allclose(result.GetSpacing(), (0.7, 0.7, 3.0), atol=1e-6)  # NIfTI stores float32


def test_seg_nrrd_has_named_coloured_coded_segments(random_ct_model, ct_crop, tmp_path):
    import slicerio

    out = tmp_path / "ct.seg.nrrd"
    assert _segment(random_ct_model, ct_crop, out) == 0
    segmentation = slicerio.read_segmentation(str(out))
    names = [segment["name"] for segment in segmentation["segments"]]
    assert names == ["aorta", "gallbladder", "left kidney", "right kidney", "liver", "pancreas", "spleen", "stomach"]
    liver = segmentation["segments"][4]
    assert liver["labelValue"] == 5
    assert liver["terminology"]["type"] == ["SCT", "10200004", "Liver"]
    assert np.allclose(liver["color"], [213 / 255, 94 / 255, 0], atol=1e-5)  # Okabe-Ito vermillion (core/colors.py)
    left_kidney = segmentation["segments"][2]["terminology"]
    assert left_kidney["type"][1] == "64033007" and left_kidney["typeModifier"][1] == "7771000"
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert np.array_equal(np.transpose(segmentation["voxels"], (2, 1, 0)), expected)


def test_preview_png_is_written(random_ct_model, ct_crop, tmp_path):
    preview = tmp_path / "preview.png"
    assert _segment(random_ct_model, ct_crop, tmp_path / "l.nii.gz", "--preview", str(preview)) == 0
    image = sitk.ReadImage(str(preview))
    assert image.GetSize()[0] > 600 and image.GetSize()[1] > 600
    assert len(list(tmp_path.glob(".*"))) == 0, "no temporary files left behind"
    umask = os.umask(0)
    os.umask(umask)
    for output in (preview, tmp_path / "l.nii.gz"):
        assert output.stat().st_mode & 0o777 == 0o666 & ~umask, "outputs get a normal file's mode, not mkstemp's 0600"


def test_preview_overlay_outlines_each_label_on_its_own_pixels():
    from dinseg.reports.preview import label_overlay

    labels = np.zeros((8, 9), dtype=np.uint8)
    labels[2:6, 1:4] = 1
    labels[2:6, 4:7] = 2
    colors = np.zeros((256, 3))
    colors[1], colors[2] = (1, 0, 0), (0, 0, 1)
    overlay = label_overlay(labels, colors, fill_alpha=0.4)
    assert np.array_equal(overlay[..., :3], colors[labels])
    assert (overlay[labels == 0, 3] == 0).all()
    interior = np.zeros_like(labels, dtype=bool)
    interior[3:5, 2:3] = interior[3:5, 5:6] = True
    assert (overlay[interior, 3] == 0.4).all()
    assert (overlay[(labels > 0) & ~interior, 3] == 1.0).all()


def _four_d(tmp_path, frames=3) -> Path:
    image = sitk.ReadImage(str(CT))[:, :, 80:88]
    series = sitk.JoinSeries([image + 10 * t for t in range(frames)])
    path = tmp_path / "cine.nii.gz"
    sitk.WriteImage(series, str(path))
    return path


def test_time_series_is_segmented_frame_by_frame(random_ct_model, tmp_path):
    path = _four_d(tmp_path)
    out = tmp_path / "cine_labels.nii.gz"
    assert _segment(random_ct_model, path, out) == 0
    result = sitk.ReadImage(str(out))
    assert result.GetDimension() == 4 and result.GetSize() == (122, 101, 8, 3)
    labels = sitk.GetArrayFromImage(result)
    one = tmp_path / "frame2.nii.gz"
    assert _segment(random_ct_model, path, one, "--frames", "2") == 0
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(one))), labels[1])


def test_multiframe_cine_dicom_reads_as_a_time_series():
    volume = read_volume(CINE_DICOM)
    assert volume.is_time_series and volume.array.shape == (16, 1, 256, 256)
    assert volume.modality == "MR" and volume.frame_spacing == pytest.approx(69.47)


def test_dicom_series_folder_reads_like_the_nifti(tmp_path):
    import locale

    saved_locale = locale.setlocale(locale.LC_ALL)  # GDCM's writer switches the process locale to "C"
    image = sitk.Cast(sitk.ReadImage(str(CT))[:, :, 80:84], sitk.sitkInt16)
    folder = tmp_path / "dicom"
    folder.mkdir()
    for k in range(image.GetSize()[2]):
        plane = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in (("0008|0060", "CT"), ("0020|000d", "1.2.3"), ("0020|000e", "1.2.3.4"),
                           ("0020|0032", "\\".join(map(str, position))),
                           ("0020|0037", "\\".join(map(str, image.GetDirection()[0:7:3] + image.GetDirection()[1:8:3]))),
                           ("0020|0013", str(k + 1))):
            plane.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)
    locale.setlocale(locale.LC_ALL, saved_locale)
    volume = read_volume(folder)
    assert volume.modality == "CT"
    assert np.array_equal(volume.array, sitk.GetArrayFromImage(image))
    assert np.allclose(volume.geometry.direction, image.GetDirection(), atol=1e-5)


def test_out_of_memory_halves_the_batch_and_gives_the_same_labels(random_ct_model, ct_crop, monkeypatch):
    card = load_card(random_ct_model)
    volume = read_volume(ct_crop)
    expected = Segmenter(card, device="cpu", batch_size=2).segment(volume).labels
    segmenter = Segmenter(card, device="cpu", batch_size=16)
    forward = segmenter.network.forward
    seen = []

    def forward_with_small_memory(image, enhanced=None):
        seen.append(image.shape[0])
        if image.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        return forward(image, enhanced)

    monkeypatch.setattr(segmenter.network, "forward", forward_with_small_memory)
    assert np.array_equal(segmenter.segment(volume).labels, expected)
    assert seen[:3] == [16, 8, 4] and max(seen[3:]) == 2


# ---- bad input: one clear line, non-zero exit, nothing written -----------------------------

def _expect_failure(capsys, args, message, out_path):
    """Exit 2, the whole of stderr one line ``dinseg: error: ...`` holding ``message``, nothing written."""
    code = main(args)
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(error) == 1 and error[0].startswith("dinseg: error:") and message in error[0], error
    folder = Path(out_path).parent
    assert not Path(out_path).exists()
    assert not folder.exists() or not any(p.name.startswith(".") for p in folder.iterdir()), "temporary file left"


def _write(array, path, spacing=(3.0, 3.0, 3.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("truncated", "cannot read this image: the file is cut short or damaged"),
    ("truncated_plain", "truncated"),
    ("empty_file", "the file is empty"),
    ("two_d", "2D image"),
    ("constant", "constant"),
    ("nan", "NaN or infinite"),
    ("inf", "NaN or infinite"),
    ("rgb", "components per voxel"),
])
def test_bad_images_fail_cleanly(random_ct_model, tmp_path, capsys, case, message):
    path = tmp_path / f"{case}.nii.gz"
    if case == "truncated":
        path.write_bytes(CT.read_bytes()[:50_000])
    elif case == "truncated_plain":
        path = tmp_path / "truncated.nii"
        path.write_bytes(gzip.decompress(CT.read_bytes())[:-1000])
    elif case == "empty_file":
        path.write_bytes(b"")
    elif case == "two_d":
        _write(np.ones((20, 20), np.int16), path, spacing=(1.0, 1.0))
    elif case == "constant":
        _write(np.full((4, 20, 20), -1000, np.int16), path)
    elif case in ("nan", "inf"):
        # ITK writes NaN as 0 in NIfTI, so store the float voxels raw behind an ITK-written header
        array = np.random.default_rng(0).normal(size=(4, 20, 20)).astype(np.float32)
        array[1, 2, 3] = np.nan if case == "nan" else np.inf
        plain = tmp_path / "plain.nii"
        _write(array, plain)
        data = plain.read_bytes()
        path.write_bytes(gzip.compress(data[:352] + array.tobytes()))
    elif case == "rgb":
        sitk.WriteImage(sitk.Compose([sitk.Image(8, 8, 3, sitk.sitkUInt8)] * 3), str(path))
    out = tmp_path / "out" / "labels.seg.nrrd"
    out.parent.mkdir()
    _expect_failure(capsys, ["segment", str(path), "-o", str(out), "--model", str(random_ct_model)], message, out)


def test_wrong_weights_checksum_is_refused(random_ct_model, ct_crop, tmp_path, capsys):
    card = json.loads(Path(random_ct_model).read_text(encoding="utf-8"))
    card["weights"]["sha256"] = "0" * 64
    folder = tmp_path / "tampered"
    folder.mkdir()
    (folder / "random-ct.pt").write_bytes((Path(random_ct_model).parent / "random-ct.pt").read_bytes())
    (folder / "random-ct.json").write_text(json.dumps(card))
    out = tmp_path / "o" / "labels.nii.gz"
    out.parent.mkdir()
    _expect_failure(capsys, ["segment", str(ct_crop), "-o", str(out), "--model", str(folder / "random-ct.json")],
                    "refusing to load", out)


def test_unknown_model_and_missing_output_folder(random_ct_model, ct_crop, tmp_path, capsys):
    out = tmp_path / "labels.nii.gz"
    _expect_failure(capsys, ["segment", str(ct_crop), "-o", str(out), "--model", "no-such-model"],
                    "unknown model 'no-such-model'", out)
    _expect_failure(capsys, ["segment", str(ct_crop), "-o", str(tmp_path / "missing" / "l.nii.gz"),
                             "--model", str(random_ct_model)], "does not exist", tmp_path / "missing" / "l.nii.gz")


def test_modality_mismatch_warns_or_refuses_with_strict(random_ct_model, tmp_path, capsys):
    out = tmp_path / "mr_labels.nii.gz"
    assert _segment(random_ct_model, MR, out) == 0
    assert "looks like MR" in capsys.readouterr().err
    strict_out = tmp_path / "o" / "strict.nii.gz"
    strict_out.parent.mkdir()
    _expect_failure(capsys, ["segment", str(MR), "-o", str(strict_out), "--model", str(random_ct_model),
                             "--strict"], "--strict", strict_out)


def test_time_series_cannot_go_into_one_seg_nrrd(random_ct_model, tmp_path, capsys):
    path = _four_d(tmp_path, frames=2)
    out = tmp_path / "o" / "cine.seg.nrrd"
    out.parent.mkdir()
    _expect_failure(capsys, ["segment", str(path), "-o", str(out), "--model", str(random_ct_model)],
                    "time series", out)


def test_command_line_exit_status_and_single_error_line(tmp_path):
    """The installed command, not just main(): exit status 2 and one line on stderr."""
    result = subprocess.run([sys.executable, "-m", "dinseg.apps.cli", "segment", str(tmp_path / "nothing.nii.gz"),
                             "-o", str(tmp_path / "x.seg.nrrd")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"dinseg: error: {tmp_path / 'nothing.nii.gz'}: no such file or folder"]


# ---- model cards -------------------------------------------------------------------------

def test_weights_load_without_unpickling_objects(random_ct_model, tmp_path):
    card = load_card(random_ct_model)
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"not_a_tensor": __import__("collections").OrderedDict(a=sum)}, evil / "random-ct.pt")
    from dinseg.models import sha256_of

    data = json.loads(Path(random_ct_model).read_text(encoding="utf-8"))
    data["weights"]["sha256"] = sha256_of(evil / "random-ct.pt")
    (evil / "random-ct.json").write_text(json.dumps(data))
    with pytest.raises(Exception, match="Unsupported global|weights_only|GLOBAL"):
        load_network(load_card(evil / "random-ct.json"))
    assert load_network(card).training is False


def test_model_import_refuses_paths_that_escape(random_ct_model, tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.json", "{}")
    with pytest.raises(ModelError, match="escape"):
        import_models(archive, tmp_path / "models")
    assert not (tmp_path / "outside.json").exists()


def test_model_import_installs_a_checked_model(random_ct_model, tmp_path, monkeypatch, capsys):
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in Path(random_ct_model).parent.iterdir():
            zf.write(file, f"random-ct/{file.name}")
    monkeypatch.setenv("DINSEG_HOME", str(tmp_path / "home"))
    assert main(["models", "import", str(archive)]) == 0
    assert (tmp_path / "home" / "models" / "random-ct-0.0.1" / "random-ct.json").is_file()
    capsys.readouterr()
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "random-ct" in listing and load_card(random_ct_model).weights.sha256[:8] in listing


def test_a_model_name_selects_its_highest_installed_version(random_ct_model, tmp_path, monkeypatch):
    import shutil

    from dinseg.models import find_model, newest_models

    monkeypatch.setenv("DINSEG_HOME", str(tmp_path / "home"))
    for version in ("0.9.0", "0.10.0", "0.2.0"):
        folder = tmp_path / "home" / "models" / f"random-ct-{version}"
        folder.mkdir(parents=True)
        shutil.copy(load_card(random_ct_model).weights_path, folder)
        card = load_card(random_ct_model)
        card.version = version
        card.save(folder / "random-ct.json")
    assert find_model("random-ct").version == "0.10.0"
    listed = [card for card in newest_models() if card.name == "random-ct"]
    assert [card.version for card in listed] == ["0.10.0"]
    names = [card.name for card in newest_models()]
    assert names == sorted(set(names))


def test_model_cards_are_listed_without_importing_torch():
    """The Slicer module lists models before PyTorch is installed."""
    code = "import sys; import dinseg.models as m, dinseg.apps.cli; m.list_models(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_enhancement_override_changes_the_input_and_warns(random_ct_model, ct_crop, tmp_path, capsys):
    plain, weak = tmp_path / "plain.nii.gz", tmp_path / "weak.nii.gz"
    assert _segment(random_ct_model, ct_crop, plain, "--enhance-strength", "1") == 0
    assert "instead of the model's" not in capsys.readouterr().err  # same as the card: no override
    assert _segment(random_ct_model, ct_crop, weak, "--enhance", "gamma", "--enhance-strength", "0.5") == 0
    assert "enhancing with gamma at strength 0.5" in capsys.readouterr().err
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (plain, weak))
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("source, target", [((30, 28), (128, 97)), ((7, 5), (23, 17)), ((16, 16), (16, 50)),
                                            ((20, 20), (12, 33)), ((9, 9), (9, 9))])
def test_labels_at_size_equal_full_bilinear_resampling(source, target):

    from dinseg.core.preprocess import labels_at_size, resize_slices

    generator = torch.Generator().manual_seed(1)
    coarse_logits = 4 * torch.randn(3, 5, source[0] // 3 + 2, source[1] // 3 + 2, generator=generator)
    probabilities = resize_slices(coarse_logits, source).softmax(dim=1)
    expected = resize_slices(probabilities, target).max(dim=1).indices
    assert torch.equal(labels_at_size(probabilities, target, chunk=97).long(), expected)
    noise = torch.randn(2, 4, *source, generator=generator).softmax(dim=1)
    assert torch.equal(labels_at_size(noise, target).long(), resize_slices(noise, target).max(dim=1).indices)


# ---- batches and unwritable outputs --------------------------------------------------------

def test_batch_segments_each_case_once_reports_failures_and_skips_existing(random_ct_model, ct_crop, tmp_path,
                                                                           capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(ct_crop))[:, :, :8], str(cases / "first.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(ct_crop))[:, :, 8:16], str(cases / "second.nrrd"))
    (cases / "broken.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = main(["segment", str(cases), "-o", f"{out}/", "--model", str(random_ct_model), "--device", "cpu",
                 "--format", "nii.gz"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == ["first.nii.gz", "second.nii.gz"]
    assert any(line.startswith("[1/3] broken: error:") for line in lines)
    assert lines[-1].endswith("2 of 3 case(s) segmented into " + str(out) + ", 0 skipped, 1 failed")
    single = tmp_path / "single.nii.gz"
    assert main(["segment", str(cases / "first.nii.gz"), "-o", str(single), "--model", str(random_ct_model),
                 "--device", "cpu"]) == 0
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(single))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(out / "first.nii.gz"))))
    (cases / "broken.nii.gz").unlink()
    before = (out / "first.nii.gz").stat().st_mtime_ns
    assert main(["segment", str(cases / "first.nii.gz"), str(cases / "second.nrrd"), "-o", str(out),
                 "--model", str(random_ct_model), "--device", "cpu", "--format", "nii.gz", "--skip-existing"]) == 0
    assert "2 skipped, 0 failed" in capsys.readouterr().err
    assert (out / "first.nii.gz").stat().st_mtime_ns == before
    # a new case after two to skip: each case read ahead of its turn, the lines still in order
    sitk.WriteImage(sitk.ReadImage(str(ct_crop))[:, :, 4:12], str(cases / "third.nii.gz"))
    assert main(["segment", str(cases), "-o", str(out), "--model", str(random_ct_model), "--device", "cpu",
                 "--format", "nii.gz", "--skip-existing"]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["[1/3] first", "[2/3] second", "[3/3] third"]
    assert "skipped" in lines[0] and "skipped" in lines[1] and "wrote" in lines[2]
    assert lines[-1].endswith("1 of 3 case(s) segmented into " + str(out) + ", 2 skipped, 0 failed")
    assert (out / "third.nii.gz").is_file()


def test_batch_names_cases_of_one_stem_by_their_folders_and_refuses_one_folder_one_stem(ct_crop, tmp_path, capsys):
    from dinseg.pipeline.files import batch_cases

    image = sitk.ReadImage(str(ct_crop))
    for path in (tmp_path / "first" / "ct.nii.gz", tmp_path / "second" / "ct.nrrd", tmp_path / "first" / "ct.nrrd"):
        path.parent.mkdir(exist_ok=True)
        sitk.WriteImage(image, str(path))
    assert batch_cases([str(tmp_path / "first" / "ct.nii.gz"), str(tmp_path / "second" / "ct.nrrd")]) == \
        [("first", tmp_path / "first" / "ct.nii.gz"), ("second", tmp_path / "second" / "ct.nrrd")]
    _expect_failure(capsys, ["segment", str(tmp_path / "first"), "-o", str(tmp_path / "out")],
                    "the same output 'ct'", tmp_path / "out" / "x")


def test_a_folder_of_case_folders_gives_each_case_folder_s_image_named_by_its_folder(ct_crop, tmp_path, capsys):
    """cases/case_0000N/imaging.nii.gz (KiTS) given as the folder ``cases``; a DICOM series folder stays one case."""
    from dinseg.pipeline.files import batch_cases

    for case in ("case_00000", "case_00001"):
        (tmp_path / "cases" / case).mkdir(parents=True)
        shutil.copy(ct_crop, tmp_path / "cases" / case / "imaging.nii.gz")
    series = tmp_path / "cases" / "series_0002"
    series.mkdir()
    (series / "IM0001.dcm").write_bytes(b"")
    assert batch_cases([str(tmp_path / "cases")]) == [
        ("case_00000", tmp_path / "cases" / "case_00000" / "imaging.nii.gz"),
        ("case_00001", tmp_path / "cases" / "case_00001" / "imaging.nii.gz"), ("series_0002", series)]
    # a folder of cases with an output that names a file: refused, no folder of that name made
    _expect_failure(capsys, ["segment", str(tmp_path / "cases" / "case_00000"), "-o", str(tmp_path / "x.nii.gz")],
                    "names a file, but the input holds 1 case(s)", tmp_path / "x.nii.gz")


@pytest.mark.parametrize("target", ["/proc/dinseg_out.nii.gz", "/sys/dinseg_out.seg.nrrd"])
def test_unwritable_output_is_one_line_before_any_work(random_ct_model, ct_crop, capsys, target):
    _expect_failure(capsys, ["segment", str(ct_crop), "-o", target, "--model", str(random_ct_model)],
                    "cannot write in", Path(target))


def test_a_failing_write_leaves_nothing_behind(tmp_path, monkeypatch):
    from dinseg.core.errors import OutputError
    from dinseg.core.geometry import Geometry
    from dinseg.reports.segfile import write_segmentation
    from dinseg.core.terminology import label_infos_for

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    labels = np.zeros((2, 4, 4), np.uint8)
    geometry = Geometry(size=(4, 4, 2), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    with pytest.raises(OutputError, match="cannot write .No space left on device"):
        write_segmentation(tmp_path / "l.seg.nrrd", labels, geometry, label_infos_for(["liver"]))
    assert list(tmp_path.iterdir()) == []


def test_preview_gives_every_structure_its_own_colour():
    from dinseg.reports.preview import preview_colors
    from dinseg.core.terminology import SYNAPSE_ORGANS, label_infos_for

    infos = label_infos_for(SYNAPSE_ORGANS)
    colors = preview_colors(infos)[[info.value for info in infos]]
    distances = np.linalg.norm(colors[:, None] - colors[None], axis=-1)[np.triu_indices(len(infos), 1)]
    assert distances.min() > 0.15
    assert [tuple(np.round(c * 255).astype(int)) for c in colors] == [info.color for info in infos], \
        "the preview shows the colours the segments carry"


def test_models_list_and_show_fit_100_columns_and_show_the_whole_card(random_ct_model, capsys):
    from dinseg.models import list_models

    assert main(["models"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert max(map(len, listing)) <= 100 and len(listing) == len(list_models()) + 2
    assert main(["models", "show", str(random_ct_model)]) == 0
    shown = capsys.readouterr().out
    card = load_card(random_ct_model)
    assert max(len(line) for line in shown.splitlines()) <= 100
    assert f"sha256: {card.weights.sha256}" in shown and str(card.weights_path) in shown
    assert "DINSEG_HOME" in shown and "liver (SCT 10200004)" in shown
    assert "test-time rotations" not in shown
    assert main(["models", "show", "acdc-light"]) == 0                # the bundled cardiac card averages two
    assert "softmax averaged over 2 test-time rotations" in capsys.readouterr().out
    assert main(["models", "show", "no-such-model"]) == 2


def test_device_index_and_threads(random_ct_model, ct_crop, tmp_path, capsys):
    from dinseg.core.errors import InputError
    from dinseg.pipeline.segmenter import resolve_device

    assert str(resolve_device("cpu")) == "cpu"
    for bad in ("cuda:x", "cpu:1", "tpu"):
        with pytest.raises(InputError, match="unknown device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda:1")
    threads = torch.get_num_threads()
    try:
        assert _segment(random_ct_model, ct_crop, tmp_path / "l.nii.gz", "--threads", "1") == 0
        assert "device cpu, 1 CPU threads" in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)
    assert main(["segment", str(ct_crop), "-o", str(tmp_path / "m.nii.gz"), "--threads", "0"]) == 2


def test_rotation_averaging_is_exact_for_one_rotation_and_changes_little_otherwise(random_ct_model, ct_crop):
    from dinseg.core.errors import InputError

    card = load_card(random_ct_model)
    volume = read_volume(ct_crop)
    plain = Segmenter(card, device="cpu").segment(volume).labels
    assert np.array_equal(Segmenter(card, device="cpu", rotations=1).segment(volume).labels, plain)
    averaged = Segmenter(card, device="cpu", rotations=4).segment(volume).labels
    assert averaged.shape == plain.shape and not np.array_equal(averaged, plain)  # random weights: not invariant
    with pytest.raises(InputError, match="one of 1, 2, 4"):
        Segmenter(card, device="cpu", rotations=3)
    four = Segmenter(card, device="cpu", rotations=4)  # averaging over all quarter turns commutes with them
    slices, enhanced = torch.rand(2, 1, 64, 96), torch.rand(2, 1, 64, 96)
    with torch.inference_mode():
        turned = four._probabilities(torch.rot90(slices, 1, dims=(-2, -1)), torch.rot90(enhanced, 1, dims=(-2, -1)))
        expected = torch.rot90(four._probabilities(slices, enhanced), 1, dims=(-2, -1))
    assert torch.allclose(turned, expected, atol=1e-5)


def test_rotation_averaging_is_refused_for_a_model_trained_on_small_rotations(random_ct_model, ct_crop):
    """Quarter turns that a model never saw in training make it fail: say so instead."""
    import dataclasses

    from dinseg.core.errors import InputError

    card = load_card(random_ct_model)
    config = dict(card.training.get("config", {}), augmentation={"rotate_degrees": 20})
    narrow = dataclasses.replace(card, training=dict(card.training, config=config))
    with pytest.raises(InputError, match="up to 20 degrees"):
        Segmenter(narrow, device="cpu", rotations=4)
    assert Segmenter(narrow, device="cpu", rotations=1).rotations == 1


def test_reduced_precision_only_on_cuda_so_cpu_labels_are_float32s(ct_crop, tmp_path, capsys, monkeypatch):
    """float16 on CUDA only: on every CPU the default is float32's path; and --precision float32 reaches
    the network, shown where "auto" does reduce precision (a GPU's rule, bfloat16 standing in on a CPU)."""
    from dinseg.core.errors import InputError
    from dinseg.pipeline import segmenter as segmenter_module
    from dinseg.pipeline.segmenter import half_precision_dtype
    from dinseg.models import find_model

    cpu = torch.device("cpu")
    assert half_precision_dtype(torch.device("cuda"), "auto") == torch.float16
    assert half_precision_dtype(torch.device("cuda"), "float32") is None
    assert half_precision_dtype(cpu, "auto") is None
    assert half_precision_dtype(cpu, "float32") is None
    with pytest.raises(InputError, match="precision"):
        half_precision_dtype(cpu, "float8")
    card = find_model("btcv-ct-light")
    assert Segmenter(card, device="cpu").half_dtype is None  # auto on a CPU: no autocast at all
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exact = Segmenter(card, device="cpu", precision="float32").segment(read_volume(ct_crop)).labels

        def as_on_a_gpu(device, precision="auto"):  # the real rule for CUDA; bfloat16 is what a CPU can run
            return None if half_precision_dtype(torch.device("cuda"), precision) is None else torch.bfloat16

        monkeypatch.setattr(segmenter_module, "half_precision_dtype", as_on_a_gpu)
        outputs = {}
        for name, flags in (("auto", []), ("float32", ["--precision", "float32"])):
            outputs[name] = tmp_path / f"{name}.nii.gz"
            assert main(["segment", str(ct_crop), "-o", str(outputs[name]), "--device", "cpu", "--threads", "1",
                         *flags]) == 0
    finally:
        torch.set_num_threads(threads)
    reduced, forced = (sitk.GetArrayFromImage(sitk.ReadImage(str(outputs[name]))) for name in ("auto", "float32"))
    assert not np.array_equal(reduced, exact), "auto did not reduce precision: the comparison below proves nothing"
    assert np.array_equal(forced, exact)
    with pytest.raises(SystemExit):
        main(["segment", str(ct_crop), "-o", str(tmp_path / "x.nii.gz"), "--precision", "half"])
    assert "invalid choice" in capsys.readouterr().err and not (tmp_path / "x.nii.gz").exists()
