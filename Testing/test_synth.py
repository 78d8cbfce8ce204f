"""Tests for the synthetic cardiac short-axis phantom generator (dinseg.training.synth)."""
from __future__ import annotations


import numpy as np
import pytest
import SimpleITK as sitk

from dinseg.training.synth import DEGRADATION_LEVELS, synthesize_case, write_acdc_phantom  # noqa: E402

SEEDS = (0, 1, 2, 3)


def _case(seed, level):
    return synthesize_case(np.random.default_rng(seed), level)


@pytest.fixture(scope="module")
def clean_cases():
    return [_case(s, 0.0) for s in SEEDS]


def _dilate(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """8-connected binary dilation of each (Y, X) slice of a (Z, Y, X) mask."""
    for _ in range(iterations):
        p = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
        out = np.zeros_like(mask)
        for dy in range(3):
            for dx in range(3):
                out |= p[:, dy:dy + mask.shape[1], dx:dx + mask.shape[2]]
        mask = out
    return mask


def _mid(nz: int) -> list:
    return [nz // 2 - 1, nz // 2]


def test_deterministic_for_seed():
    a, b, c = _case(5, 0.5), _case(5, 0.5), _case(6, 0.5)
    for name in ("ed_image", "ed_labels", "es_image", "es_labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.spacing == b.spacing
    assert a.ed_image.shape != c.ed_image.shape or not np.array_equal(a.ed_image, c.ed_image)


def test_anatomy_does_not_depend_on_degradation():
    clean, severe = _case(4, 0.0), _case(4, DEGRADATION_LEVELS["severe"])
    np.testing.assert_array_equal(clean.ed_labels, severe.ed_labels)
    np.testing.assert_array_equal(clean.es_labels, severe.es_labels)
    assert clean.spacing == severe.spacing
    assert not np.array_equal(clean.ed_image, severe.ed_image)


def test_shapes_types_and_spacing(clean_cases):
    for case in clean_cases:
        nz, ny, nx = case.ed_image.shape
        assert 6 <= nz <= 10 and 128 <= ny <= 160 and 128 <= nx <= 160
        for img, lab in ((case.ed_image, case.ed_labels), (case.es_image, case.es_labels)):
            assert img.shape == lab.shape == case.ed_image.shape
            assert img.dtype == np.float32 and lab.dtype == np.uint8
            assert img.min() >= 0 and 300 < np.percentile(img, 99.9) < 2000
        sx, sy, sz = case.spacing
        assert sx == sy and 1.25 <= sx <= 1.8 and 5.0 <= sz <= 10.0


def test_label_topology(clean_cases):
    for case in clean_cases:
        for lab in (case.ed_labels, case.es_labels):
            assert set(np.unique(lab)) <= {0, 1, 2, 3}
            mid = lab[_mid(lab.shape[0])]
            rv, myo, lv = mid == 1, mid == 2, mid == 3
            for z in range(mid.shape[0]):
                assert rv[z].any() and myo[z].any() and lv[z].any()
                assert (_dilate(rv[z:z + 1]) & myo[z:z + 1]).any(), "RV must touch the myocardium"
            lv_all = lab == 3
            ring = _dilate(lv_all, 2) & ~lv_all
            covered = np.isin(lab[ring], (2, 3)).mean()
            assert covered > 0.97, covered
            near = lab[_dilate(lv_all) & ~lv_all]
            assert np.all(near == 2), "LV may only border myocardium"
        assert (case.es_labels == 3).sum() < 0.8 * (case.ed_labels == 3).sum()
        assert (case.es_labels == 1).sum() < (case.ed_labels == 1).sum()


def _cnr(case, robust: bool) -> float:
    """LV blood vs myocardium contrast-to-noise ratio on the ED mid slices, masks eroded by 1 px.

    Plain: (mean blood - mean myo) / std blood. Robust: medians and 1.4826 * MAD, so the
    papillary muscles (labelled LV, myocardial signal) do not dominate the blood spread.
    """
    z = _mid(case.ed_labels.shape[0])
    lab, img = case.ed_labels[z], case.ed_image[z].astype(float)
    blood, myo = img[~_dilate(lab != 3)], img[~_dilate(lab != 2)]
    if not robust:
        return (blood.mean() - myo.mean()) / blood.std()
    spread = 1.4826 * np.median(np.abs(blood - np.median(blood)))
    return (np.median(blood) - np.median(myo)) / spread


def test_cnr_decreases_with_degradation():
    names = ("clean", "mild", "moderate", "severe")
    levels = (0.0,) + tuple(DEGRADATION_LEVELS[n] for n in names[1:])
    for seed in SEEDS:
        cases = [_case(seed, lv) for lv in levels]
        plain = [_cnr(c, robust=False) for c in cases]
        robust = [_cnr(c, robust=True) for c in cases]
        for kind, cnr in (("mean/std", plain), ("median/MAD", robust)):
            print(f"seed {seed} CNR {kind}: " + ", ".join(f"{n} {c:.2f}" for n, c in zip(names, cnr)))
        # Plain CNR over clean > moderate > severe; robust CNR also strictly through "mild"
        # (blur at mild smooths the papillary muscles, which can raise the plain figure).
        assert plain[0] > plain[2] > plain[3], plain
        assert all(a > b for a, b in zip(robust, robust[1:])), robust
        assert robust[0] > 8.0 and robust[3] < 3.0


def test_rejects_bad_levels(tmp_path):
    with pytest.raises(ValueError):
        _case(0, 1.5)
    with pytest.raises(KeyError):
        write_acdc_phantom(tmp_path, 1, "extreme", seed=0)


def test_write_acdc_phantom_layout(tmp_path):
    seed, first = 11, 5
    folders = write_acdc_phantom(tmp_path / "acdc", 2, "moderate", seed=seed, first_id=first)
    root = tmp_path / "acdc"
    assert folders == [root / "patient005", root / "patient006"]
    assert sorted(p.name for p in root.iterdir()) == ["README.txt", "patient005", "patient006"]
    readme = (root / "README.txt").read_text(encoding="utf-8")
    assert "phantom" in readme.lower() and f"seed {seed}" in readme and "moderate" in readme
    write_acdc_phantom(root, 1, 0.9, seed=3, first_id=7)  # a second batch in the same folder is recorded too
    lines = (root / "README.txt").read_text(encoding="utf-8").splitlines()
    assert lines[-2:] == ["patients 005..006: seed 11, degradation moderate (0.5)",
                          "patients 007..007: seed 3, degradation 0.9"]

    for pid, folder in zip((5, 6), folders):
        name = f"patient{pid:03d}"
        lines = (folder / "Info.cfg").read_text().splitlines()
        info = dict(line.split(": ") for line in lines)
        assert list(info) == ["ED", "ES", "Group", "Height", "NbFrame", "Weight"]
        ed, es = int(info["ED"]), int(info["ES"])
        assert ed == 1 and 10 <= es <= 14 and int(info["NbFrame"]) > es and info["Group"] == "NOR"
        # placeholders drawn as synth.write_acdc_phantom does: 155..195 cm, 55..100 kg, one decimal
        assert 155.0 <= float(info["Height"]) <= 195.0 and info["Height"] == f"{float(info['Height']):.1f}", info
        assert 55.0 <= float(info["Weight"]) <= 100.0 and info["Weight"] == f"{float(info['Weight']):.1f}", info
        assert 25 <= int(info["NbFrame"]) <= 35, info
        expected = {f"{name}_frame{f:02d}{s}.nii.gz" for f in (ed, es) for s in ("", "_gt")} | {"Info.cfg"}
        assert {p.name for p in folder.iterdir()} == expected

        case = synthesize_case(np.random.default_rng([seed, pid]), DEGRADATION_LEVELS["moderate"])
        for frame, arr, lab in ((ed, case.ed_image, case.ed_labels), (es, case.es_image, case.es_labels)):
            img = sitk.ReadImage(str(folder / f"{name}_frame{frame:02d}.nii.gz"))
            gt = sitk.ReadImage(str(folder / f"{name}_frame{frame:02d}_gt.nii.gz"))
            for im in (img, gt):
                np.testing.assert_allclose(im.GetSpacing(), case.spacing, rtol=1e-6)
                assert im.GetOrigin() == (0.0, 0.0, 0.0)
                np.testing.assert_allclose(im.GetDirection(), np.eye(3).ravel())
                assert "phantom" in im.GetMetaData("descrip")
            assert gt.GetPixelID() == sitk.sitkUInt8
            np.testing.assert_array_equal(sitk.GetArrayFromImage(img), arr)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(gt), lab)
