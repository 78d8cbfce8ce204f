"""The guards of models: weights load only when their whole SHA-256 matches the card, and an import
installs nothing that fails a check. Small weights files, no network: fast enough for mutation testing."""

from __future__ import annotations

import dataclasses
import json
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from dinseg.core.errors import ModelError
from dinseg.models import import_models, load_card, load_weights, save_weights, sha256_of
from dinseg.models.card import ModelCard, WeightsInfo


@pytest.fixture
def tiny_model(random_ct_model, tmp_path) -> Path:
    """A model folder: the test model's card with a small weights file of its own (name tiny, 1.0.0)."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    weights = save_weights({"layer.weight": torch.arange(64, dtype=torch.float32).reshape(8, 8),
                            "layer.count": torch.tensor([3, 4])}, folder / "tiny.pt")
    card = dataclasses.replace(load_card(random_ct_model), name="tiny", version="1.0.0", weights=weights, path=None)
    card.save(folder / "tiny.json")
    return folder


def _with_sha256(folder: Path, sha256: str) -> Path:
    card_path = folder / "tiny.json"
    data = json.loads(card_path.read_text(encoding="utf-8"))
    data["weights"]["sha256"] = sha256
    card_path.write_text(json.dumps(data), encoding="utf-8")
    return card_path


def _tamper(path: Path) -> None:
    """Change one byte in the middle of the file: same size, other content."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_weights_whose_checksum_matches_load_as_float32(tiny_model):
    state = load_weights(load_card(tiny_model / "tiny.json"))
    assert sorted(state) == ["layer.count", "layer.weight"]
    assert state["layer.weight"].dtype == torch.float32 and float(state["layer.weight"][7, 7]) == 63.0
    assert state["layer.count"].dtype == torch.int64 and state["layer.count"].tolist() == [3, 4]  # stay integers


def test_float16_weights_are_stored_as_float16_and_load_as_float32(tiny_model):
    weights = save_weights({"w": torch.full((4,), 0.5), "n": torch.tensor([7])}, tiny_model / "half.pt",
                           dtype="float16")
    assert weights.dtype == "float16" and weights.sha256 == sha256_of(tiny_model / "half.pt")
    assert weights.file == "half.pt" and weights.bytes == (tiny_model / "half.pt").stat().st_size
    stored = torch.load(tiny_model / "half.pt", weights_only=True)
    assert stored["w"].dtype == torch.float16 and stored["n"].dtype == torch.int64  # half the bytes, ints kept
    card = dataclasses.replace(load_card(tiny_model / "tiny.json"), weights=weights)
    assert load_weights(card)["w"].dtype == torch.float32
    with pytest.raises(ValueError, match="float32 or float16"):
        save_weights({"w": torch.zeros(1)}, tiny_model / "x.pt", dtype="bfloat16")


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_checksum_that_differs_in_one_hex_digit_is_refused(tiny_model, where):
    """The whole SHA-256 is compared: one digit off, first or last, refuses the weights."""
    actual = sha256_of(tiny_model / "tiny.pt")
    index = 0 if where == "first" else len(actual) - 1
    wrong = actual[:index] + ("0" if actual[index] != "0" else "1") + actual[index + 1:]
    assert wrong != actual and wrong[:index] + wrong[index + 1:] == actual[:index] + actual[index + 1:]
    card = load_card(_with_sha256(tiny_model, wrong))
    with pytest.raises(ModelError) as refused:
        load_weights(card)
    assert str(refused.value) == (f"model tiny: weights tiny.pt have SHA-256 {actual[:16]}..., the card says "
                                  f"{wrong[:16]}...; refusing to load them")


def test_tampered_or_missing_weights_are_refused(tiny_model):
    card = load_card(tiny_model / "tiny.json")
    _tamper(tiny_model / "tiny.pt")
    with pytest.raises(ModelError, match="refusing to load"):
        load_weights(card)
    (tiny_model / "tiny.pt").unlink()
    with pytest.raises(ModelError, match="weights file .*tiny.pt is missing"):
        load_weights(card)


def test_sha256_of_reads_the_whole_file(tmp_path):
    import hashlib

    data = bytes(range(256)) * 8192 + b"tail"  # over two of its 1 MiB chunks
    (tmp_path / "blob").write_bytes(data)
    assert sha256_of(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def _zip(folder: Path, archive: Path, prefix: str = "tiny/") -> Path:
    with zipfile.ZipFile(archive, "w") as bundle:
        for file in sorted(folder.iterdir()):
            bundle.write(file, prefix + file.name)
    return archive


def _installed(destination: Path):
    return sorted(p.relative_to(destination).as_posix() for p in destination.rglob("*")) if destination.exists() else []


@pytest.mark.parametrize("packed", ["folder", "zip"])
def test_an_import_with_tampered_weights_installs_nothing(tiny_model, tmp_path, packed):
    """Weights changed after the card was written (same size): refused before anything is installed."""
    _tamper(tiny_model / "tiny.pt")
    source = tiny_model if packed == "folder" else _zip(tiny_model, tmp_path / "tiny.zip")
    destination = tmp_path / "models"
    with pytest.raises(ModelError, match="refusing to load"):
        import_models(source, destination)
    assert _installed(destination) == [], "a refused import left files behind"


def test_one_bad_model_in_an_archive_stops_the_whole_import(tiny_model, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    card = json.loads((other / "tiny.json").read_text(encoding="utf-8"))
    card["name"] = "other"
    (other / "tiny.json").write_text(json.dumps(card), encoding="utf-8")
    _tamper(other / "tiny.pt")
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for folder in (tiny_model, other):
            for file in folder.iterdir():
                bundle.write(file, f"{folder.name}/{file.name}")
    with pytest.raises(ModelError, match="model other: .*refusing to load"):
        import_models(archive, tmp_path / "models")
    assert _installed(tmp_path / "models") == []


@pytest.mark.parametrize("packed", ["folder", "zip"])
def test_a_checked_import_installs_the_card_and_its_weights(tiny_model, tmp_path, packed):
    source = tiny_model if packed == "folder" else _zip(tiny_model, tmp_path / "tiny.zip")
    destination = tmp_path / "models"
    installed = import_models(source, destination)
    assert [(card.name, card.version) for card in installed] == [("tiny", "1.0.0")]
    assert _installed(destination) == ["tiny-1.0.0", "tiny-1.0.0/tiny.json", "tiny-1.0.0/tiny.pt"]
    assert installed[0].path == destination / "tiny-1.0.0" / "tiny.json"
    assert sha256_of(destination / "tiny-1.0.0" / "tiny.pt") == sha256_of(tiny_model / "tiny.pt")
    assert load_weights(installed[0])["layer.count"].tolist() == [3, 4]
    # the same version again replaces it (no stale file stays)
    (destination / "tiny-1.0.0" / "stale.txt").write_text("old")
    import_models(source, destination)
    assert _installed(destination) == ["tiny-1.0.0", "tiny-1.0.0/tiny.json", "tiny-1.0.0/tiny.pt"]


@pytest.mark.parametrize("member", ["../outside.json", "/tmp/absolute.json", "c:/drive.json", "tiny\\back.json",
                                    "tiny/../../up.json"])
def test_archive_members_that_would_escape_are_refused(tiny_model, tmp_path, member):
    archive = _zip(tiny_model, tmp_path / "evil.zip")
    with zipfile.ZipFile(archive, "a") as bundle:
        bundle.writestr(member, "{}")
    with pytest.raises(ModelError, match="would escape the target folder"):
        import_models(archive, tmp_path / "models")
    assert _installed(tmp_path / "models") == [] and not (tmp_path / "outside.json").exists()


def test_a_symbolic_link_in_an_archive_is_refused(tiny_model, tmp_path):
    archive = _zip(tiny_model, tmp_path / "link.zip")
    with zipfile.ZipFile(archive, "a") as bundle:
        link = zipfile.ZipInfo("tiny/link.pt")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        bundle.writestr(link, "/etc/passwd")
    with pytest.raises(ModelError, match="'tiny/link.pt' would escape"):
        import_models(archive, tmp_path / "models")
    assert _installed(tmp_path / "models") == []


def test_an_import_of_nothing_usable_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.json").write_text('{"format": "something else"}')
    with pytest.raises(ModelError, match="no model card found"):
        import_models(tmp_path / "empty", tmp_path / "models")
    (tmp_path / "plain.txt").write_text("not a model")
    with pytest.raises(ModelError, match="not a ZIP archive or a model folder"):
        import_models(tmp_path / "plain.txt", tmp_path / "models")
    with pytest.raises(ModelError, match="no such file or folder"):
        import_models(tmp_path / "missing.zip", tmp_path / "models")
    assert _installed(tmp_path / "models") == []


def test_a_card_is_read_from_its_file_or_a_folder_with_exactly_one(tiny_model, tmp_path):
    assert load_card(tiny_model).name == "tiny" and load_card(tiny_model).path == tiny_model / "tiny.json"
    shutil.copy(tiny_model / "tiny.json", tiny_model / "second.json")
    with pytest.raises(ModelError, match="expected one model card .* found 2"):
        load_card(tiny_model)
    (tmp_path / "none").mkdir()
    with pytest.raises(ModelError, match="found 0"):
        load_card(tmp_path / "none")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read model card"):
        load_card(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text('{"format": "other/1"}')
    with pytest.raises(ModelError, match="not a DINSegmentation model card"):
        load_card(tmp_path / "other.json")
    data = json.loads((tiny_model / "tiny.json").read_text(encoding="utf-8"))
    del data["labels"]
    (tmp_path / "incomplete.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="invalid model card"):
        load_card(tmp_path / "incomplete.json")


@pytest.mark.parametrize("name", ["../tiny.pt", "sub/tiny.pt", "", ".", ".."])
def test_a_weights_file_must_lie_beside_its_card(name):
    with pytest.raises(ValueError, match="plain file name beside the card"):
        WeightsInfo(file=name, sha256="0" * 64)


class _Unpickled:
    """An object whose unpickling makes a folder: proof that a weights file ran code when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.mkdir, (str(self.marker),)


def test_weights_that_would_run_code_are_refused_even_with_the_right_checksum(tiny_model, tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"layer.weight": torch.zeros(2), "payload": _Unpickled(marker)}, tiny_model / "tiny.pt")
    card = load_card(_with_sha256(tiny_model, sha256_of(tiny_model / "tiny.pt")))
    with pytest.raises(Exception, match="Unsupported global|weights_only|GLOBAL"):
        load_weights(card)
    assert not marker.exists(), "loading the weights ran code from the file"


def test_a_card_round_trips_and_optional_fields_default(tiny_model):
    card = load_card(tiny_model / "tiny.json")
    data = card.to_dict()
    data.update(version=2, description="made for tests", training={"data": "phantoms"},
                metrics={"summary": "none measured"}, limitations="toy only", anatomy="heart",
                postprocessing={"rotations": 2})
    read = ModelCard.from_dict(data, path=tiny_model / "tiny.json")
    assert (read.name, read.version, read.task, read.modality) == ("tiny", "2", "plumbing tests only", "CT")
    assert (read.description, read.training, read.metrics, read.limitations, read.anatomy, read.postprocessing) == (
        "made for tests", {"data": "phantoms"}, {"summary": "none measured"}, "toy only", "heart", {"rotations": 2})
    assert read.labels == card.labels and read.weights == card.weights and read.network == card.network
    assert read.preprocessing == card.preprocessing and read.path == tiny_model / "tiny.json"
    read.postprocessing["rotations"] = 4
    assert data["postprocessing"] == {"rotations": 2}, "the card shares the dictionary it was read from"
    for key in ("description", "training", "metrics", "limitations", "anatomy", "postprocessing"):
        del data[key]
    bare = ModelCard.from_dict(data)
    assert (bare.description, bare.training, bare.metrics, bare.limitations, bare.anatomy, bare.postprocessing,
            bare.path) == ("", {}, {}, "", "", {}, None)
    with pytest.raises(ModelError) as refused:
        ModelCard.from_dict({**data, "format": "other/1"})
    assert str(refused.value) == "not a DINSegmentation model card (format 'other/1', expected 'dinseg-model-card/1')"


def test_an_import_stages_inside_the_models_folder_and_creates_it(tiny_model, tmp_path, monkeypatch):
    """Staging beside the installed models (one file system: the final rename is atomic), never in the
    system's temporary folder, here one that does not exist."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-system-temp"))
    destination = tmp_path / "home" / "dinseg" / "models"   # parents created too
    for source in (tiny_model, _zip(tiny_model, tmp_path / "tiny.zip")):
        assert [card.name for card in import_models(source, destination)] == ["tiny"]
    assert _installed(destination) == ["tiny-1.0.0", "tiny-1.0.0/tiny.json", "tiny-1.0.0/tiny.pt"]


@pytest.mark.parametrize("other", ['{"format": "dinseg-model-card/1"', "[1, 2]", '"text"', "\udcff"])
def test_other_json_files_beside_a_card_are_not_taken_for_cards(tiny_model, tmp_path, other):
    (tiny_model / "notes.json").write_bytes(other.encode("utf-8", "surrogateescape"))
    assert [card.name for card in import_models(tiny_model, tmp_path / "models")] == ["tiny"]


def test_cards_are_read_as_utf8_whatever_the_locale(tiny_model, tmp_path):
    """A card with non-ASCII text imports and loads where the locale's encoding is ASCII (or Windows' cp1252)."""
    import os
    import subprocess
    import sys

    card = json.loads((tiny_model / "tiny.json").read_text(encoding="utf-8"))
    card["description"] = "Herzkammer — ventricule gauche, ½ mm"
    (tiny_model / "tiny.json").write_text(json.dumps(card, ensure_ascii=False), encoding="utf-8")
    assert [c.description for c in import_models(tiny_model, tmp_path / "here")] == [card["description"]]
    code = ("import sys; from dinseg.models import import_models, load_card; "
            "cards = import_models(sys.argv[1], sys.argv[2]); print(sys.getfilesystemencoding(), "
            "ascii(load_card(cards[0].path).description))")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run([sys.executable, "-c", code, str(tiny_model), str(tmp_path / "models")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().split(maxsplit=1) == ["ascii", ascii(card["description"])], result.stdout
