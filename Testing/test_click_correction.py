"""Click correction from the command line (``dinseg refine``) and in a MRML scene (slicer-core):
the corrected structure takes what the network claims, the others only lose those voxels, bad
input is one line with nothing written, and a click is undone exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SAMPLE_CT, SAMPLE_CT_LABELS
from dinseg.apps.cli import main
from dinseg.core.terminology import SYNAPSE_ORGANS, label_infos_for
from dinseg.interactive.card import write_refiner
from dinseg.interactive.network import RefinerConfig, build_refiner_network
from dinseg.reports.segfile import read_labels, write_segmentation

TINY = RefinerConfig(channels=[4, 8], size=16)
LIVER, STOMACH = SYNAPSE_ORGANS.index("liver") + 1, SYNAPSE_ORGANS.index("stomach") + 1


@pytest.fixture(scope="module")
def claiming_refiner(tmp_path_factory):
    """A tiny refiner whose output is "in" everywhere in its window: every click claims its crop."""
    import torch

    torch.manual_seed(0)
    network = build_refiner_network(TINY)
    with torch.no_grad():
        network.head.weight.zero_()
        network.head.bias.fill_(20.0)
        network.prior_gain.fill_(0.0)
    card = write_refiner(network.state_dict(), tmp_path_factory.mktemp("refiner"), TINY, name="claiming")
    return card.path


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory):
    """A 12-slice crop of the bundled CT, its reference labels as a .seg.nrrd, and a liver point (LPS mm)."""
    folder = tmp_path_factory.mktemp("ct")
    image = sitk.ReadImage(str(SAMPLE_CT))[:, :, 60:72]
    labels = sitk.ReadImage(str(SAMPLE_CT_LABELS))[:, :, 60:72]
    sitk.WriteImage(image, str(folder / "ct.nii.gz"))
    array = sitk.GetArrayFromImage(labels).astype(np.uint8)
    from dinseg.core.geometry import Geometry

    write_segmentation(folder / "current.seg.nrrd", array, Geometry.from_sitk(image), label_infos_for(SYNAPSE_ORGANS))
    sitk.WriteImage(labels, str(folder / "labels.nii.gz"))
    z, y, x = (int(v) for v in np.argwhere(array == LIVER).mean(axis=0))
    while array[z, y, x] != LIVER:
        x += 1
    point = image.TransformIndexToPhysicalPoint((x, y, z))
    return folder, array, point


def _run(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


def test_refine_corrects_one_structure_and_keeps_the_others_outside_its_claim(ct_case, claiming_refiner, capsys,
                                                                               tmp_path):
    folder, before, point = ct_case
    out = tmp_path / "refined.seg.nrrd"
    code, err = _run(["refine", str(folder / "ct.nii.gz"), "--segmentation", str(folder / "current.seg.nrrd"),
                      "-o", str(out), "--structure", "Stomach", "--positive=" + ",".join(map(str, point)),
                      "--refiner", str(claiming_refiner)], capsys)
    assert code == 0, err
    after, _, _, infos = read_labels(out, [])
    assert [info.name for info in infos] == list(SYNAPSE_ORGANS)
    claimed = (after == STOMACH) & (before != STOMACH)
    assert claimed.sum() > 0 and (before[claimed] == LIVER).any(), "the click inside the liver claimed nothing"
    untouched = ~claimed & (before != STOMACH)
    assert np.array_equal(after[untouched], before[untouched]), "a structure changed outside the claim"
    assert "stomach" in err and "1 positive and 0 negative" in err


def test_a_labelmap_names_its_structures_by_the_images_model_and_a_value_works_too(ct_case, claiming_refiner,
                                                                                   capsys, tmp_path):
    folder, before, point = ct_case
    results = []
    for structure in ("liver", str(LIVER)):
        out = tmp_path / f"{structure}.nii.gz"
        code, err = _run(["refine", str(folder / "ct.nii.gz"), "--segmentation", str(folder / "labels.nii.gz"),
                          "-o", str(out), "--structure", structure, "--negative=" + ",".join(map(str, point)),
                          "--refiner", str(claiming_refiner)], capsys)
        assert code == 0, err
        assert "liver" in err
        results.append(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))
    assert np.array_equal(*results), "the name and the value chose different structures"
    assert (results[0] == LIVER).sum() != (before == LIVER).sum()


def _markups(path, points, system="RAS", name="clicks"):
    path.write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": system, "name": name,
                                             "controlPoints": points}]}))
    return path


def test_markups_in_ras_or_lps_give_the_same_result(ct_case, claiming_refiner, capsys, tmp_path):
    folder, _, (x, y, z) = ct_case
    results = []
    for system, position in (("LPS", [x, y, z]), ("RAS", [-x, -y, z])):
        points = _markups(tmp_path / f"{system}.mrk.json", [{"label": "+1", "position": position}], system)
        out = tmp_path / f"{system}.nii.gz"
        code, err = _run(["refine", str(folder / "ct.nii.gz"), "--segmentation", str(folder / "current.seg.nrrd"),
                          "-o", str(out), "--structure", "stomach", "--points", str(points),
                          "--refiner", str(claiming_refiner)], capsys)
        assert code == 0, err
        results.append(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))
    assert np.array_equal(*results)


@pytest.mark.parametrize("case, message", [
    ("outside", "lies outside the image"),
    ("unknown", "unknown structure 'kidney'; this segmentation has: aorta (1)"),
    ("grid", "lies on another grid than"),
    ("no points", "no points: give --positive"),
    ("not json", "not a markups JSON file"),
    ("no control points", "has no control points"),
    ("unsigned", "is neither positive nor negative: start its label with + or -"),
    ("bad point", "a point is X,Y,Z in millimetres"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(ct_case, claiming_refiner, capsys, tmp_path, case,
                                                           message):
    folder, _, point = ct_case
    segmentation, structure, extra = folder / "current.seg.nrrd", "stomach", ["--positive=" + ",".join(map(str, point))]
    if case == "outside":
        extra = ["--positive=9999,0,0"]
    elif case == "unknown":
        structure = "kidney"
    elif case == "grid":
        segmentation = tmp_path / "other.nii.gz"
        sitk.WriteImage(sitk.ReadImage(str(folder / "labels.nii.gz"))[:, :, 2:], str(segmentation))
    elif case == "no points":
        extra = []
    elif case == "not json":
        (tmp_path / "p.mrk.json").write_text("{not json")
        extra = ["--points", str(tmp_path / "p.mrk.json")]
    elif case == "no control points":
        extra = ["--points", str(_markups(tmp_path / "p.mrk.json", []))]
    elif case == "unsigned":
        extra = ["--points", str(_markups(tmp_path / "p.mrk.json", [{"label": "F-1", "position": [0, 0, 0]}]))]
    elif case == "bad point":
        extra = ["--positive=1,2"]
    out = tmp_path / "out.seg.nrrd"
    before = (folder / "current.seg.nrrd").read_bytes()
    code, err = _run(["refine", str(folder / "ct.nii.gz"), "--segmentation", str(segmentation), "-o", str(out),
                      "--structure", structure, "--refiner", str(claiming_refiner), *extra], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("dinseg: error: ") and message in err, err
    assert not out.exists() and (folder / "current.seg.nrrd").read_bytes() == before


def test_a_4d_image_needs_a_frame(tmp_path, capsys, claiming_refiner):
    frames = sitk.JoinSeries([sitk.ReadImage(str(SAMPLE_CT))[:, :, 60:64]] * 2)
    sitk.WriteImage(frames, str(tmp_path / "cine.nrrd"))
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_CT_LABELS))[:, :, 60:64], str(tmp_path / "labels.nrrd"))
    code, err = _run(["refine", str(tmp_path / "cine.nrrd"), "--segmentation", str(tmp_path / "labels.nrrd"),
                      "-o", str(tmp_path / "out.nrrd"), "--structure", "1", "--positive", "0,0,0",
                      "--refiner", str(claiming_refiner)], capsys)
    assert code == 2 and "is a time series of 2 frames: choose one with --frame N" in err
    assert not (tmp_path / "out.nrrd").exists()


# ------------------------------------------------------------------------------------------
# in a MRML scene
# ------------------------------------------------------------------------------------------
def test_clicks_in_a_scene_correct_a_segment_and_undo_restores_it_exactly(ct_case, claiming_refiner):
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    from slicer_scene import load_volume, make_scene

    from dinseg.slicer import convert
    from dinseg.slicer.clicks import ClickCorrectionLogic
    from dinseg.slicer.logic import DINSegmentationMRMLLogic

    folder, before, (x, y, z) = ct_case
    env = make_scene()
    logic = DINSegmentationMRMLLogic(env.scene, env.sequences_logic, env.terminologies_logic)
    volume = load_volume(env, folder / "ct.nii.gz", "CT")
    infos = label_infos_for(SYNAPSE_ORGANS)
    node = logic.segmentation.labels_to_segmentation(before, volume, infos)
    clicks = ClickCorrectionLogic(env.scene, claiming_refiner)
    session = clicks.start(volume, node, f"Segment_{STOMACH}")
    voxels = clicks.add_click((-x, -y, z), positive=True)  # RAS
    after = convert.segmentation_to_labels(node, volume, infos)
    claimed = (after == STOMACH) & (before != STOMACH)
    assert voxels == int((after == STOMACH).sum()) and claimed.sum() > 0 and (before[claimed] == LIVER).any()
    assert np.array_equal(after[~claimed], before[~claimed]), "a segment changed outside the claim"
    assert session.positive.GetNumberOfControlPoints() == 1 and session.negative.GetNumberOfControlPoints() == 0
    from dinseg.core.errors import InputError

    with pytest.raises(InputError, match="outside the image"):
        clicks.add_click((1e5, 0, 0), positive=False)
    assert session.negative.GetNumberOfControlPoints() == 0, "a failed click kept its point"
    assert np.array_equal(convert.segmentation_to_labels(node, volume, infos), after)
    assert clicks.undo() and not clicks.undo()
    assert np.array_equal(convert.segmentation_to_labels(node, volume, infos), before), "undo is not exact"
    assert session.positive.GetNumberOfControlPoints() == 0
    clicks.end()
    assert session.positive.GetScene() is None and clicks.session is None
