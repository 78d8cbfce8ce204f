"""Tests for click correction (dinseg.interactive): robot clicks, click maps, the refiner's label
rules and input checks, and the refiner card's SHA-256 check. Fast: a tiny random network."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dinseg.core.errors import InputError, ModelError
from dinseg.core.io import ImageVolume, read_volume
from dinseg.interactive.card import load_refiner_card, load_refiner_network, write_refiner
from dinseg.interactive.clicks import Click, click_map, robot_click
from dinseg.interactive.crop import crop_box
from dinseg.interactive.network import RefinerConfig, build_refiner_network
from dinseg.interactive.refiner import Refiner
from dinseg.training.click_benchmark import ball_step, run_session

from conftest import SAMPLE_CT, SAMPLE_CT_LABELS

#: the refiner trained on ACDC, BTCV and CHAOS (python -m dinseg.training.refiner)
from dinseg.interactive.card import BUNDLED_REFINER as TRAINED_REFINER  # noqa: E402
TINY = RefinerConfig(channels=[4, 8], size=16)
LIVER = 5


def _tiny_card(folder, head_bias: float = 0.0, prior_gain: float = 0.0):
    """A refiner card with a tiny random network; with ``head_bias`` or ``prior_gain`` the head is
    zeroed: a large positive / negative bias forces every window voxel in / out, a large prior
    gain returns the input mask."""
    import torch

    torch.manual_seed(0)
    network = build_refiner_network(TINY)
    if head_bias or prior_gain:
        with torch.no_grad():
            network.head.weight.zero_()
            network.head.bias.fill_(head_bias)
            network.prior_gain.fill_(prior_gain)
    return write_refiner(network.state_dict(), folder, TINY, name="tiny")


@pytest.fixture(scope="module")
def sample_ct():
    """The bundled real CT (3 mm, direction (-1, -1, 1)) and its labels (z, y, x)."""
    import SimpleITK as sitk

    volume = read_volume(SAMPLE_CT)
    volume.modality = "CT"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CT_LABELS))).astype(np.uint8)
    return volume, labels


def _inside_liver(labels) -> tuple:
    """(i, j, k) of a voxel deep inside the liver."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(labels == LIVER)
    z, y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return (float(x), float(y), float(z))


# -- robot user ------------------------------------------------------------------------------

def test_robot_clicks_centre_of_largest_error_region():
    reference = np.zeros((20, 40, 40), bool)
    reference[2:18, 5:35, 5:35] = True
    current = reference.copy()
    current[6:13, 10:17, 20:27] = False  # missed 7x7x7 cube, centre (9, 13, 23)
    current[14:16, 28:30, 28:30] = False  # a smaller miss elsewhere
    click = robot_click(current, reference)
    assert click == Click(point=(9.0, 13.0, 23.0), positive=True)

    extra = reference.copy()
    extra[2:18, 35:40, 10:25] = True  # false positive slab, thicker than any miss: touches the image border
    click = robot_click(extra, reference)
    assert not click.positive
    assert 2 <= click.point[0] < 18 and click.point[1] == 37.0 and 10 <= click.point[2] < 25
    assert robot_click(reference, reference) is None


def test_robot_click_uses_millimetres():
    """A region 3 slices thick at 10 mm is deepest at its middle slice, whatever its in-plane size."""
    reference = np.zeros((5, 60, 60), bool)
    reference[1:4, 10:50, 10:50] = True
    click = robot_click(np.zeros_like(reference), reference, spacing_zyx=(10.0, 1.0, 1.0))
    assert click.positive and click.point[0] == 2.0
    assert 25 <= click.point[1] <= 34 and 25 <= click.point[2] <= 34


# -- click maps ------------------------------------------------------------------------------

def _voxel_map(point, shape, spacing, radius_mm=5.0):
    """click_map of one voxel-index point on a voxel grid of ``spacing`` (z, y, x) mm."""
    axes = [np.arange(n) * s for n, s in zip(shape, spacing)]
    return click_map([np.asarray(point) * np.asarray(spacing)], axes, radius_mm)


def test_gaussian_click_map_is_in_millimetres():
    thin = _voxel_map((5, 10, 10), (11, 21, 21), (1.0, 1.0, 1.0))
    thick = _voxel_map((1, 10, 10), (3, 21, 21), (5.0, 1.0, 1.0))
    assert thin.max() == pytest.approx(1.0) and thin[5, 10, 10] == pytest.approx(1.0)
    # one slice away at 5 mm spacing = five slices away at 1 mm = one sigma
    assert thick[2, 10, 10] == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert thin[10, 10, 10] == pytest.approx(thick[2, 10, 10], rel=1e-5)
    assert thin[5, 10, 15] == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert click_map([], [np.arange(3.0)] * 3, 5.0).max() == 0


def test_disk_click_map_and_bad_settings():
    axes = [np.arange(5.0), np.arange(9.0), np.arange(9.0)]
    disk = click_map([(2.0, 4.0, 4.0), (2.0, 0.0, 0.0)], axes, radius_mm=2.0, shape="disk")
    assert disk[2, 4, 6] == 1 and disk[2, 4, 7] == 0 and disk[2, 0, 0] == 1 and set(np.unique(disk)) == {0, 1}
    with pytest.raises(ValueError):
        click_map([(0, 0, 0)], axes, radius_mm=0.0)
    with pytest.raises(ValueError):
        click_map([(0, 0, 0)], axes, radius_mm=1.0, shape="square")


def test_crop_box_holds_mask_and_clicks():
    mask = np.zeros((10, 100, 100), bool)
    mask[3:5, 40:50, 40:45] = True
    box = crop_box(mask, [(8.0, 70.0, 20.0)], (2.0, 0.8, 0.8), TINY)
    assert box.z0 == 2 and box.z1 == 10
    assert box.y0 < 40 and box.y1 > 70 and box.x0 < 20 and box.x1 > 45
    assert box.window[0] == box.window[1]  # square in mm for square pixels


# -- the refiner -----------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [50.0, -50.0])
def test_refiner_claims_and_releases_only_its_structure(tmp_path, sample_ct, bias):
    volume, labels = sample_ct
    refiner = Refiner(_tiny_card(tmp_path, head_bias=bias))
    result = refiner.refine(volume, labels, LIVER, positive=[_inside_liver(labels)])
    changed = result != labels
    assert changed.any()
    if bias > 0:  # everything in the crop is claimed by the liver
        assert np.all(result[changed] == LIVER)
        assert np.any(labels[changed] != 0)  # other organs lost voxels to it
    else:  # the liver released all its voxels in the crop, to background only
        assert np.all(labels[changed] == LIVER) and np.all(result[changed] == 0)
    others = (labels != LIVER) & (result != LIVER)
    assert np.array_equal(result[others], labels[others])
    assert result.dtype == labels.dtype and result.shape == labels.shape


def test_refiner_returning_its_input_changes_nothing(tmp_path, sample_ct):
    """No resampling loss: the liver's full-resolution border survives a network that agrees with it."""
    volume, labels = sample_ct
    refiner = Refiner(_tiny_card(tmp_path, prior_gain=50.0))
    result = refiner.refine(volume, labels, LIVER, positive=[_inside_liver(labels)])
    assert np.array_equal(result, labels)


def test_local_refiner_changes_only_within_reach(tmp_path, sample_ct):
    volume, labels = sample_ct
    refiner = Refiner(_tiny_card(tmp_path, head_bias=-50.0), reach_mm=10.0)
    i, j, k = _inside_liver(labels)
    first = refiner.refine(volume, labels, LIVER, negative=[(i, j, k)])  # a first click: the whole crop
    assert np.linalg.norm((np.argwhere(first != labels) - np.array([k, j, i])) * volume.geometry.spacing[::-1],
                          axis=1).max() > 10.0
    result = refiner.refine(volume, labels, LIVER, negative=[(i, j, k), (i, j, k)])
    changed = np.argwhere(result != labels)
    assert len(changed) and np.all(result[result != labels] == 0)
    distance = np.linalg.norm((changed - np.array([k, j, i])) * volume.geometry.spacing[::-1], axis=1)
    assert distance.max() <= 10.0
    with pytest.raises(InputError, match="reach"):
        Refiner(refiner.card, reach_mm=0.0)


def test_refiner_points_in_lps_match_voxel_indices(tmp_path, sample_ct):
    volume, labels = sample_ct
    refiner = Refiner(_tiny_card(tmp_path))
    ijk = _inside_liver(labels)
    lps = (volume.geometry.index_to_lps() @ np.array([*ijk, 1.0]))[:3]
    by_index = refiner.refine(volume, labels, LIVER, negative=[ijk])
    by_mm = refiner.refine(volume, labels, LIVER, negative=[tuple(lps)], space="lps")
    assert np.array_equal(by_index, by_mm)


def test_refiner_refuses_bad_input(tmp_path, sample_ct):
    volume, labels = sample_ct
    refiner = Refiner(_tiny_card(tmp_path))
    point = _inside_liver(labels)
    bad = [
        dict(positive=[]),
        dict(positive=[(-5.0, 3.0, 3.0)]),
        dict(negative=[(volume.geometry.size[0] + 2.0, 3.0, 3.0)]),
        dict(positive=[(1.0, 2.0)]),
        dict(positive=[(float("nan"), 1.0, 1.0)]),
        dict(positive=[point], space="ras"),
    ]
    for arguments in bad:
        with pytest.raises(InputError) as error:
            refiner.refine(volume, labels, LIVER, **arguments)
        assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="modality"):
        refiner.refine(volume, labels, LIVER, positive=[point], modality="PET")
    with pytest.raises(InputError, match="not on the image grid"):
        refiner.refine(volume, labels[:-1], LIVER, positive=[point])
    with pytest.raises(InputError, match="structure"):
        refiner.refine(volume, labels, 0, positive=[point])
    cine = ImageVolume(array=np.stack([volume.array] * 2), geometry=volume.geometry)
    with pytest.raises(InputError, match="3D volume"):
        refiner.refine(cine, labels, LIVER, positive=[point])


# -- the card --------------------------------------------------------------------------------

def test_card_round_trip_and_tampered_weights_are_refused(tmp_path):
    card = _tiny_card(tmp_path)
    loaded = load_refiner_card(tmp_path)
    assert loaded.network == TINY and loaded.weights.dtype == "float16"
    assert loaded.normalisation["CT"].kind == "window" and loaded.normalisation["MR"].kind == "percentile"
    load_refiner_network(loaded)
    data = bytearray(card.weights_path.read_bytes())
    data[-20] ^= 0xFF
    card.weights_path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256"):
        Refiner(card.path)
    card_json = json.loads(card.path.read_text())
    card_json["format"] = "something-else/1"
    card.path.write_text(json.dumps(card_json))
    with pytest.raises(ModelError, match="not a DINSegmentation refiner card"):
        load_refiner_card(card.path)


def test_trained_refiner_loads_and_is_small():
    card = load_refiner_card(TRAINED_REFINER)
    assert card.weights.dtype == "float16" and card.weights_path.stat().st_size < 4_000_000
    assert "CC BY-NC-SA" in card.training["data"]
    load_refiner_network(card)


# -- the benchmark loop ----------------------------------------------------------------------

def test_ball_baseline_session_reaches_a_small_structure():
    reference = np.zeros((6, 30, 30), bool)
    reference[2:4, 10:16, 10:16] = True
    start = np.zeros(reference.shape, np.uint8)
    start[0, 0:3, 0:3] = 2  # another structure, must survive
    session = run_session(ball_step(1, (2.0, 1.0, 1.0), radius_mm=3.0), start, reference, 1, (2.0, 1.0, 1.0),
                          max_clicks=20, min_clicks=3)
    assert session["dice"][0] == 0.0 and session["dice"][-1] > session["dice"][1] > 0.0
    assert len(session["seconds"]) == len(session["dice"]) - 1 and 1 <= session["noc"] <= 20


def test_session_ends_when_the_mask_is_perfect():
    reference = np.zeros((4, 10, 10), bool)
    reference[1:3, 3:7, 3:7] = True
    session = run_session(ball_step(1, (1.0, 1.0, 1.0)), reference.astype(np.uint8), reference, 1, (1.0, 1.0, 1.0))
    assert session == {"dice": [1.0] * 11, "seconds": [], "noc": 0}
