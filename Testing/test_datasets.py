"""Tests for the dataset readers (dinseg.training.data.datasets), on tiny folders built from real images."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from dinseg.training.data import BTCV_TO_SYNAPSE, check_labels, load_split_file, open_dataset, split_cases, validate
from dinseg.core.errors import InputError
from dinseg.core.terminology import ACDC_STRUCTURES, SYNAPSE_ORGANS

from conftest import SAMPLE_CT, SAMPLE_CT_LABELS, SAMPLE_MR, SAMPLE_MR_LABELS

#: Synapse organ value -> BTCV value (inverse of BTCV_TO_SYNAPSE on the 8 organs)
SYNAPSE_TO_BTCV = {1: 8, 2: 4, 3: 3, 4: 2, 5: 6, 6: 11, 7: 1, 8: 7}
#: NOT cardiac anatomy: abdominal MR organs stand in for ACDC's 3 classes so that the ACDC
#: reader is tested on real images (liver -> 1, kidneys -> 2, spleen -> 3).
MR_TO_ACDC = {5: 1, 3: 2, 4: 2, 7: 3}
INFO_CFG = "ED: 1\nES: {es}\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n"


def _remap(labels: np.ndarray, mapping: dict) -> np.ndarray:
    out = np.zeros_like(labels)
    for source, target in mapping.items():
        out[labels == source] = target
    return out


def _with_array(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    return image


@pytest.fixture(scope="module")
def ct():
    """CT crop: 20 slices holding all 8 organs (image, labels as SimpleITK images)."""
    image = sitk.ReadImage(str(SAMPLE_CT))
    labels = sitk.ReadImage(str(SAMPLE_CT_LABELS))
    return image[:, :, 88:108], labels[:, :, 88:108]


@pytest.fixture(scope="module")
def mr():
    image = sitk.ReadImage(str(SAMPLE_MR))
    labels = sitk.ReadImage(str(SAMPLE_MR_LABELS))
    return image, labels


# -- builders --------------------------------------------------------------------------------

def make_acdc(folder: Path, mr, patients=(1, 2, 3, 4, 5), es=12, unlabelled_es=False) -> dict:
    """ACDC patient folders from MR crops (ED: slices 0..9, ES: 10..19); returns expected labels per case."""
    image, labels = mr
    expected = {}
    for pid in patients:
        name = f"patient{pid:03d}"
        patient = folder / name
        patient.mkdir(parents=True)
        (patient / "Info.cfg").write_text(INFO_CFG.format(es=es))
        for frame, z in ((1, slice(0, 10)), (es, slice(10, 20))):
            stem = f"{name}_frame{frame:02d}"
            sitk.WriteImage(image[:, :, z], str(patient / f"{stem}.nii.gz"))
            gt = _remap(sitk.GetArrayFromImage(labels[:, :, z]), MR_TO_ACDC)
            if not (unlabelled_es and frame == es):
                sitk.WriteImage(_with_array(gt, labels[:, :, z]), str(patient / f"{stem}_gt.nii.gz"))
            expected[stem] = gt
        # the 4D cine file of real ACDC folders must be ignored
        (patient / f"{name}_4d.nii.gz").write_bytes(b"not read")
    return expected


def make_synapse(root: Path, ct, lists_dir="lists/lists_Synapse") -> np.ndarray:
    """case0005 as train_npz slices and case0001 as a test_vol_h5 volume, scaled like TransUNet."""
    hu = sitk.GetArrayFromImage(ct[0]).astype(np.float32)
    labels = sitk.GetArrayFromImage(ct[1]).astype(np.float32)
    scaled = (np.clip(hu, -125, 275) + 125) / 400
    (root / "train_npz").mkdir(parents=True)
    for z in range(scaled.shape[0]):
        np.savez(root / "train_npz" / f"case0005_slice{z:03d}.npz", image=scaled[z], label=labels[z])
    (root / "test_vol_h5").mkdir()
    with h5py.File(root / "test_vol_h5" / "case0001.npy.h5", "w") as f:
        f["image"], f["label"] = scaled, labels
    lists = root / lists_dir
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("".join(f"case0005_slice{z:03d}\n" for z in range(scaled.shape[0])))
    (lists / "test_vol.txt").write_text("case0001\n")
    return np.clip(hu, -125, 275)


def make_btcv(root: Path, ct, ids=(1, 2, 3), sub=".") -> np.ndarray:
    """BTCV img/label pairs; the 8 organs get their BTCV values, plus esophagus, IVC, veins and
    adrenals drawn on background voxels (which must come back as background)."""
    base = root / sub
    (base / "img").mkdir(parents=True)
    (base / "label").mkdir()
    organs = sitk.GetArrayFromImage(ct[1])
    btcv = _remap(organs, SYNAPSE_TO_BTCV)
    background = np.flatnonzero(organs == 0)
    for k, value in enumerate((5, 9, 10, 12, 13)):
        btcv.flat[background[k * 40:(k + 1) * 40]] = value
    for i in ids:
        sitk.WriteImage(ct[0], str(base / "img" / f"img{i:04d}.nii.gz"))
        sitk.WriteImage(_with_array(btcv, ct[1]), str(base / "label" / f"label{i:04d}.nii.gz"))
    return organs


MSD_LABELS = {5: 1, 3: 2}  # liver -> 1, left kidney -> 2


def make_msd(root: Path, ct, form: str, channels=None) -> dict:
    """Two cases (organs, and an all-background crop) in the nnU-Net v2 or old MSD form."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    full = sitk.ReadImage(str(SAMPLE_CT))
    full_labels = sitk.ReadImage(str(SAMPLE_CT_LABELS))
    crops = {"abd_001": ct, "abd_002": (full[:, :, 0:10], full_labels[:, :, 0:10])}
    expected, training = {}, []
    for case_id, (image, labels) in crops.items():
        gt = _remap(sitk.GetArrayFromImage(labels), MSD_LABELS)
        image_name = f"{case_id}_0000.nii.gz" if form == "v2" else f"{case_id}.nii.gz"
        sitk.WriteImage(image, str(root / "imagesTr" / image_name))
        sitk.WriteImage(_with_array(gt, labels), str(root / "labelsTr" / f"{case_id}.nii.gz"))
        training.append({"image": f"./imagesTr/{image_name}", "label": f"./labelsTr/{case_id}.nii.gz"})
        expected[case_id] = gt
    if form == "v2":
        meta = {"channel_names": channels or {"0": "CT"}, "labels": {"background": 0, "liver": 1, "left_kidney": 2},
                "numTraining": 2, "file_ending": ".nii.gz"}
    else:
        meta = {"name": "Abdomen", "modality": channels or {"0": "MRI"},
                "labels": {"0": "background", "1": "liver", "2": "left_kidney"},
                "numTraining": 2, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    return expected


# -- layouts ---------------------------------------------------------------------------------

def test_acdc_frames_become_cases(tmp_path, mr):
    expected = make_acdc(tmp_path / "training", mr)
    dataset = open_dataset(tmp_path / "training")
    assert dataset.layout == "acdc" and dataset.modality == "MR"
    assert dataset.class_names == list(ACDC_STRUCTURES)
    assert [c.case_id for c in dataset.cases] == sorted(expected)
    assert dataset.case("patient002_frame12").group == "patient002"
    assert dataset.default_splits == {}
    image, labels = dataset.case("patient003_frame12").load()
    assert image.geometry.matches(sitk_geometry(mr[0][:, :, 10:20]))
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(mr[0][:, :, 10:20]))
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, expected["patient003_frame12"])
    assert set(np.unique(labels)) == {0, 1, 2, 3}


def sitk_geometry(image):
    from dinseg.core.geometry import Geometry

    return Geometry.from_sitk(image)


def test_acdc_database_folder_splits_and_unlabelled_frames(tmp_path, mr):
    make_acdc(tmp_path / "training", mr, patients=(1, 2))
    make_acdc(tmp_path / "testing", mr, patients=(101,), es=9, unlabelled_es=True)
    dataset = open_dataset(tmp_path, layout="ACDC")
    assert dataset.default_splits == {"train": ["patient001_frame01", "patient001_frame12",
                                                "patient002_frame01", "patient002_frame12"],
                                      "test": ["patient101_frame01", "patient101_frame09"]}
    splits = split_cases(dataset)
    assert [c.case_id for c in splits["test"]] == ["patient101_frame01", "patient101_frame09"]
    unlabelled = dataset.case("patient101_frame09")
    assert not unlabelled.has_labels and dataset.case("patient101_frame01").has_labels
    assert unlabelled.load()[1] is None
    assert validate(dataset, splits["test"], require_labels=False) == [unlabelled]
    with pytest.raises(InputError, match="patient101_frame09: has no labels"):
        validate(dataset, splits["test"])
    validate(dataset, splits["train"])


@pytest.mark.parametrize("info, message", [
    (None, "Info.cfg: missing"),
    ("ED: 1\nGroup: NOR\n", "integer 'ED:' and 'ES:'"),
    ("ED: one\nES: 12\n", "integer 'ED:' and 'ES:'"),
    ("ED 1\nES: 12\n", "malformed line"),
])
def test_acdc_info_cfg_errors(tmp_path, mr, info, message):
    make_acdc(tmp_path, mr, patients=(1, 2))
    cfg = tmp_path / "patient002" / "Info.cfg"
    cfg.unlink() if info is None else cfg.write_text(info)
    with pytest.raises(InputError, match=message) as error:
        open_dataset(tmp_path)
    assert "patient002" in str(error.value) and "\n" not in str(error.value)


def test_acdc_frame_image_named_in_info_cfg_must_exist(tmp_path, mr):
    make_acdc(tmp_path, mr, patients=(1,))
    (tmp_path / "patient001" / "patient001_frame12.nii.gz").unlink()
    with pytest.raises(InputError, match="patient001_frame12.nii.gz: missing"):
        open_dataset(tmp_path)


@pytest.mark.parametrize("lists_dir", ["lists/lists_Synapse", "lists_Synapse"])
def test_synapse_npz_and_h5_give_back_hounsfield_units(tmp_path, ct, lists_dir):
    clipped = make_synapse(tmp_path, ct, lists_dir)
    dataset = open_dataset(tmp_path, assumed_spacing=(0.8, 0.7, 2.5))
    assert dataset.layout == "synapse" and dataset.modality == "CT"
    assert dataset.class_names == list(SYNAPSE_ORGANS)
    assert dataset.default_splits == {"train": ["case0005"], "test": ["case0001"]}
    organs = sitk.GetArrayFromImage(ct[1])
    for case_id in ("case0005", "case0001"):
        record = dataset.case(case_id)
        assert record.has_labels
        image, labels = record.load()
        assert image.array.shape == clipped.shape
        assert np.abs(image.array - clipped).max() < 0.01
        np.testing.assert_array_equal(labels, organs)
        assert labels.dtype == np.uint8
        assert image.geometry.spacing == (0.8, 0.7, 2.5)
        assert image.geometry.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        assert image.geometry.size == (clipped.shape[2], clipped.shape[1], clipped.shape[0])
    splits = split_cases(dataset)
    assert {k: [c.case_id for c in v] for k, v in splits.items()} == {"train": ["case0005"], "test": ["case0001"]}


def test_synapse_gap_in_slices_is_an_error_when_opened(tmp_path, ct):
    make_synapse(tmp_path, ct)
    (tmp_path / "train_npz" / "case0005_slice003.npz").unlink()
    with pytest.raises(InputError, match=r"case0005 is missing slice number\(s\) 3 of 0..19"):
        open_dataset(tmp_path)


def test_synapse_refuses_unscaled_images(tmp_path, ct):
    make_synapse(tmp_path, ct)
    with h5py.File(tmp_path / "test_vol_h5" / "case0001.npy.h5", "r+") as f:
        f["image"][...] = f["image"][...] * 400 - 125
    dataset = open_dataset(tmp_path)
    with pytest.raises(InputError, match=r"case0001.npy.h5: image values span .*\[0, 1\]"):
        dataset.case("case0001").load()


@pytest.mark.parametrize("sub", [".", "Training", "RawData/Training"])
def test_btcv_13_labels_map_to_8_organs(tmp_path, ct, sub):
    organs = make_btcv(tmp_path, ct, sub=sub)
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "btcv" and dataset.modality == "CT"
    assert dataset.class_names == list(SYNAPSE_ORGANS)
    assert [c.case_id for c in dataset.cases] == ["case0001", "case0002", "case0003"]
    image, labels = dataset.case("case0002").load()
    assert image.geometry.direction[0] == -1.0
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(ct[0]))
    np.testing.assert_array_equal(labels, organs)


def test_label_map_applies_after_the_layout_mapping(tmp_path, ct):
    organs = make_btcv(tmp_path, ct, ids=(1,))
    # BTCV liver (6) -> Synapse liver (5) -> user map 5 -> 0; the user's 6 must not see BTCV's 6
    dataset = open_dataset(tmp_path, label_map={"5": 0, 6: 2})
    _, labels = dataset.cases[0].load()
    expected = organs.copy()
    expected[organs == 5] = 0
    expected[organs == 6] = 2
    np.testing.assert_array_equal(labels, expected)
    assert BTCV_TO_SYNAPSE[6] == 5


@pytest.mark.parametrize("form, modality", [("v2", "CT"), ("msd", "MR")])
def test_msd_and_nnunet_v2(tmp_path, ct, form, modality):
    expected = make_msd(tmp_path, ct, form)
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "msd" and dataset.modality == modality
    assert dataset.class_names == ["liver", "left kidney"]
    assert [c.case_id for c in dataset.cases] == ["abd_001", "abd_002"]
    for case_id, gt in expected.items():
        _, labels = dataset.case(case_id).load()
        np.testing.assert_array_equal(labels, gt)
    assert not expected["abd_002"].any()  # an all-background label volume is legal
    assert validate(dataset) == []


# -- errors ----------------------------------------------------------------------------------

def test_multichannel_msd_is_refused(tmp_path, ct):
    make_msd(tmp_path, ct, "v2", channels={"0": "T2", "1": "ADC"})
    with pytest.raises(InputError, match=r"dataset.json: 2 image channels \(T2, ADC\); only single-channel"):
        open_dataset(tmp_path)


def test_missing_label_file(tmp_path, ct):
    make_btcv(tmp_path, ct)
    (tmp_path / "label" / "label0002.nii.gz").unlink()
    with pytest.raises(InputError, match=r"img0002.nii.gz: its label file .*label0002.nii.gz is missing"):
        open_dataset(tmp_path)


def test_missing_image_file(tmp_path, ct):
    make_msd(tmp_path, ct, "v2")
    (tmp_path / "imagesTr" / "abd_002_0000.nii.gz").unlink()
    with pytest.raises(InputError, match=r"labelsTr/abd_002.nii.gz: its image file .*abd_002_0000.nii.gz is missing"):
        open_dataset(tmp_path)


def test_missing_file_listed_in_msd_json(tmp_path, ct):
    make_msd(tmp_path, ct, "msd")
    (tmp_path / "labelsTr" / "abd_001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"labelsTr/abd_001.nii.gz: missing \(listed in dataset.json\)"):
        open_dataset(tmp_path)


@pytest.mark.parametrize("change, what", [
    (lambda label: label.SetSpacing((3.0, 3.0, 2.5)), "spacing"),
    (lambda label: label.SetOrigin(np.add(label.GetOrigin(), (0, 1.5, 0)).tolist()), "origin"),
])
def test_label_on_another_grid(tmp_path, ct, change, what):
    make_btcv(tmp_path, ct, ids=(1, 2))
    path = tmp_path / "label" / "label0002.nii.gz"
    label = sitk.ReadImage(str(path))
    change(label)
    sitk.WriteImage(label, str(path))
    dataset = open_dataset(tmp_path)
    dataset.case("case0001").load()
    with pytest.raises(InputError, match=f"case0002: label label0002.nii.gz is not on the image grid \\({what} "):
        validate(dataset)


def test_label_of_another_size(tmp_path, ct):
    make_btcv(tmp_path, ct, ids=(1,))
    sitk.WriteImage(ct[1][:, :, 1:], str(tmp_path / "label" / "label0001.nii.gz"))
    with pytest.raises(InputError, match=r"case0001: .*\(size \(122, 101, 20\) in the image, \(122, 101, 19\)"):
        open_dataset(tmp_path).cases[0].load()


def test_out_of_range_label_value(tmp_path, ct):
    make_msd(tmp_path, ct, "v2")
    path = tmp_path / "labelsTr" / "abd_002.nii.gz"
    label = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(label)
    array[0, :3, :3] = 7
    sitk.WriteImage(_with_array(array, label), str(path))
    with pytest.raises(InputError, match=r"abd_002: label value\(s\) 7 outside the class map 0..2"):
        validate(open_dataset(tmp_path))
    _, labels = open_dataset(tmp_path, label_map={7: 2}).case("abd_002").load()
    assert (labels == 2).sum() == 9


def test_check_labels():
    check_labels(np.array([[0, 1], [2, 3]]), 4, "c1")
    with pytest.raises(InputError, match=r"^c1: label value\(s\) -1, 4 outside the class map 0..3"):
        check_labels(np.array([[0, -1], [4, 4]]), 4, "c1")


def test_unreadable_image(tmp_path, ct):
    make_btcv(tmp_path, ct, ids=(1,))
    (tmp_path / "img" / "img0001.nii.gz").write_bytes(b"this is not a NIfTI file")
    dataset = open_dataset(tmp_path)
    with pytest.raises(InputError, match=r"img0001.nii.gz: cannot read this image"):
        validate(dataset)


def test_empty_dataset(tmp_path, ct):
    (tmp_path / "img").mkdir()
    (tmp_path / "label").mkdir()
    with pytest.raises(InputError, match="no cases found for the btcv layout"):
        open_dataset(tmp_path)
    msd = tmp_path / "msd"
    make_msd(msd, ct, "msd")
    meta = json.loads((msd / "dataset.json").read_text())
    (msd / "dataset.json").write_text(json.dumps({**meta, "training": []}))
    with pytest.raises(InputError, match=f"{msd}: no cases found for the msd layout"):
        open_dataset(msd)


def test_unknown_layout(tmp_path):
    (tmp_path / "README.txt").write_text("not a dataset")
    with pytest.raises(InputError, match=r"not a known dataset layout \(looked for ") as error:
        open_dataset(tmp_path)
    for looked_for in ("patientNNN/", "train_npz/", "img/ and label/", "dataset.json"):
        assert looked_for in str(error.value)
    with pytest.raises(InputError, match="unknown dataset layout 'kits'"):
        open_dataset(tmp_path, layout="kits")
    with pytest.raises(InputError, match="no such dataset folder"):
        open_dataset(tmp_path / "absent")


# -- splits ----------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_explicit_split_file(tmp_path, ct, suffix):
    make_btcv(tmp_path / "btcv", ct)
    content = {"train": ["case0001", "case0003"], "val": ["case0002"]}
    path = tmp_path / f"splits{suffix}"
    path.write_text(json.dumps(content) if suffix == ".json" else yaml.safe_dump(content))
    splits = load_split_file(path)
    assert splits == content
    cases = split_cases(open_dataset(tmp_path / "btcv"), splits)
    assert {k: [c.case_id for c in v] for k, v in cases.items()} == content


def test_unknown_split_name(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"training": ["case0001"], "val": []}))
    with pytest.raises(InputError, match=r"splits.json: unknown split name\(s\) training; use train, val, test"):
        load_split_file(path)


def test_split_ids_must_exist(tmp_path, ct):
    make_btcv(tmp_path, ct)
    with pytest.raises(InputError, match=r"split 'val' names case\(s\) not in .*: case0009"):
        split_cases(open_dataset(tmp_path), {"train": ["case0001"], "val": ["case0009"]})


def test_empty_train_split(tmp_path, ct, mr):
    make_btcv(tmp_path / "btcv", ct)
    with pytest.raises(InputError, match="the train split is empty"):
        split_cases(open_dataset(tmp_path / "btcv"), {"train": [], "val": ["case0001"]})
    make_acdc(tmp_path / "acdc" / "testing", mr, patients=(101,))
    with pytest.raises(InputError, match="the acdc default splits: the train split is empty"):
        split_cases(open_dataset(tmp_path / "acdc"))


def test_fallback_split_is_deterministic_and_keeps_acdc_patients_together(tmp_path, mr):
    make_acdc(tmp_path, mr)
    dataset = open_dataset(tmp_path)
    seen = set()
    for seed in range(6):
        splits = split_cases(dataset, val_fraction=0.4, seed=seed)
        again = split_cases(dataset, val_fraction=0.4, seed=seed)
        assert [c.case_id for c in splits["val"]] == [c.case_id for c in again["val"]]
        assert len(splits["val"]) == 4 and len(splits["train"]) == 6
        train_patients = {c.group for c in splits["train"]}
        val_patients = {c.group for c in splits["val"]}
        assert not train_patients & val_patients
        assert all(sum(c.group == p for c in splits["val"]) == 2 for p in val_patients)
        seen.add(tuple(sorted(val_patients)))
    assert len(seen) > 1


def test_acdc_explicit_split_by_patient(tmp_path, mr):
    make_acdc(tmp_path, mr, patients=(1, 2, 3))
    dataset = open_dataset(tmp_path)
    splits = split_cases(dataset, {"train": ["patient001", "patient003"], "test": ["patient002_frame12"]})
    assert [c.case_id for c in splits["train"]] == ["patient001_frame01", "patient001_frame12",
                                                    "patient003_frame01", "patient003_frame12"]
    assert [c.case_id for c in splits["test"]] == ["patient002_frame12"]
    with pytest.raises(InputError, match="patient001 is in both the 'train' and 'test' splits"):
        split_cases(dataset, {"train": ["patient001_frame01"], "test": ["patient001_frame12"]})


def test_train_val_overlap_is_allowed_with_a_warning(tmp_path, mr, caplog):
    """One-patient training (the bundled models) validates on its training patient, and says so."""
    make_acdc(tmp_path, mr, patients=(1,))
    splits = split_cases(open_dataset(tmp_path), {"train": ["patient001"], "val": ["patient001"]})
    assert len(splits["train"]) == len(splits["val"]) == 2
    assert "fit to training data" in caplog.text


def test_shared_btcv_and_chaos_name_their_structures_as_the_cards_do():
    """nnU-Net names such as "kidney_left" become "left kidney", which has its SNOMED-CT code."""
    from conftest import SHARED_DATA
    from dinseg.core.terminology import KNOWN_STRUCTURES, SYNAPSE_ORGANS

    if not (SHARED_DATA / "btcv_synapse").is_dir():
        pytest.skip(f"needs {SHARED_DATA} (../shared/data beside the clone)")
    assert open_dataset(SHARED_DATA / "btcv_synapse").class_names == list(SYNAPSE_ORGANS)
    chaos = open_dataset(SHARED_DATA / "chaos_mr_t2").class_names
    assert chaos == ["liver", "right kidney", "left kidney", "spleen"] and set(chaos) <= set(KNOWN_STRUCTURES)
