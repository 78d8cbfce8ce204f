"""One options object from a GUI to the child process, and the table of optional packages."""

from __future__ import annotations

import pytest

from dinseg.apps.cli import build_parser
from dinseg.core import dependencies
from dinseg.core.errors import InputError
from dinseg.models import find_model
from dinseg.pipeline.options import ENHANCEMENT_METHODS, MODEL_DEFAULT, SegmentOptions


def parsed(options: SegmentOptions) -> SegmentOptions:
    """The options as the child process reads them back from ``dinseg segment``'s command line."""
    return SegmentOptions.from_args(build_parser().parse_args(["segment", "in.nii.gz", "-o", "out.nrrd",
                                                              *options.to_cli_args()]))


@pytest.mark.parametrize("options", [
    SegmentOptions(),
    SegmentOptions(model="acdc-light", device="cpu", enhancement_method="gamma", enhancement_strength=0.25,
                   largest_component=False, fill_holes=True, rotations=4, precision="float32", batch_size=3,
                   threads=2, frame=4, strict=True),
    SegmentOptions(enhancement_strength=0.5, largest_component=True, fill_holes=False, rotations=1),
])
def test_options_survive_the_command_line_unchanged(options):
    assert parsed(options) == options


def test_every_field_reaches_the_command_line():
    """A field added to SegmentOptions but forgotten in to_cli_args would silently not reach the child."""
    changed = SegmentOptions(model="m", device="cpu", enhancement_method="none", enhancement_strength=0.1,
                             largest_component=True, fill_holes=True, rotations=2, precision="float32",
                             batch_size=1, threads=1, frame=0, strict=True)
    for field, value in vars(changed).items():
        assert getattr(parsed(SegmentOptions().replace(**{field: value})), field) == value, field


def test_a_gui_slider_applies_to_a_chosen_method_only():
    assert SegmentOptions.for_gui(MODEL_DEFAULT, 0.3).enhancement_strength is None
    assert "--enhance-strength" not in SegmentOptions.for_gui(MODEL_DEFAULT, 0.3).to_cli_args()
    chosen = SegmentOptions.for_gui("gamma", 0.3)
    assert (chosen.enhancement_method, chosen.enhancement_strength) == ("gamma", 0.3)
    card = find_model("acdc-light")
    assert SegmentOptions.for_gui(MODEL_DEFAULT, 0.3).enhancement_for(card) is None  # the model's own, unchanged
    assert SegmentOptions.for_gui("gamma", 0.3).enhancement_for(card).strength == 0.3


def test_the_models_own_enhancement_has_one_name():
    assert SegmentOptions(enhancement_method=MODEL_DEFAULT).enhancement_method is None
    assert MODEL_DEFAULT not in ENHANCEMENT_METHODS and "clahe" in ENHANCEMENT_METHODS


def test_a_model_card_stands_for_its_card_file():
    card = find_model("btcv-ct-light")
    assert SegmentOptions(model=card).model == str(card.path)


@pytest.mark.parametrize("fields, message", [
    ({"enhancement_method": "sharpen"}, "enhancement method 'sharpen' is not one of"),
    ({"enhancement_strength": 1.5}, "from 0 to 1"),
    ({"enhancement_strength": float("nan")}, "from 0 to 1"),
    ({"rotations": 3}, "rotations must be one of 1, 2, 4"),
    ({"precision": "float16"}, "precision must be one of"),
    ({"batch_size": 0}, "batch size must be a positive whole number"),
    ({"threads": True}, "threads must be a positive whole number"),
    ({"frame": -1}, "frame must be a frame index"),
])
def test_bad_options_are_refused_with_one_line(fields, message):
    with pytest.raises(InputError, match=message):
        SegmentOptions(**fields)


@pytest.mark.parametrize("version, minimum, met", [
    ("2.13.0+cpu", "2.1", True), ("2.1", "2.1.0", True), ("2.0.9", "2.1", False), ("0.21.1", "0.22", False),
    ("6.0.1", "6", True), ("1.10.0", "1.9", True), ("1.3rc1", "1.3", True),
])
def test_versions_are_compared_as_numbers(version, minimum, met):
    assert (dependencies.version_key(version) >= dependencies.version_key(minimum)) is met


def test_a_package_too_old_or_missing_is_unmet(monkeypatch):
    monkeypatch.setitem(dependencies.MINIMUM_VERSIONS, "numpy", "999")
    monkeypatch.setitem(dependencies.MINIMUM_VERSIONS, "no-such-distribution", "1")
    import numpy

    assert dependencies.unmet(["numpy", "no-such-distribution"]) == [("numpy", numpy.__version__),
                                                                     ("no-such-distribution", None)]
    assert dependencies.unmet_for("segment") == []  # torch is installed here at its minimum or newer
    assert dependencies.requirement("highdicom") == "highdicom>=0.22"


def test_the_package_table_matches_pyproject():
    """The Slicer module installs what pyproject.toml asks for: one set of minimums."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    for distribution, minimum in dependencies.MINIMUM_VERSIONS.items():
        assert re.search(rf'"{re.escape(distribution)}>={re.escape(minimum)}[";]', text), \
            f"pyproject.toml does not ask for {distribution}>={minimum}"
