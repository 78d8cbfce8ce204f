"""The package's shape stays true: imports go down the layers only, and only the Slicer layer
(and the web app on top of it) imports Slicer, Qt or VTK."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "DINSegmentation" / "dinseg"
#: subpackage -> rank; a module may import its own subpackage and lower ranks only
RANKS = {"core": 0, "nets": 1, "models": 2, "reports": 3, "interactive": 3, "pipeline": 4, "training": 5,
         "slicer": 6, "cohort": 6, "apps": 7}
#: what the package root (dinseg/__init__.py) may import: the file-level API
ROOT_IMPORTS = {"pipeline"}
#: third-party names that need 3D Slicer's MRML, and the subpackages allowed to import them
SLICER_MODULES = {"slicer", "vtk", "qt", "ctk", "trame_slicer"}
SLICER_USERS = ("slicer", "apps/web")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, source: str):
    """(dinseg module, line) and (third-party top-level name, line) of every import, function-level included."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    ours, theirs = [], []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{target}.{alias.name}" if not node.module else target for alias in node.names]
                ours += [(t, node.lineno) for t in targets]
            elif node.module.split(".")[0] == "dinseg":
                ours.append((node.module, node.lineno))
            else:
                theirs.append((node.module.split(".")[0], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                (ours if top == "dinseg" else theirs).append(
                    (alias.name if top == "dinseg" else top, node.lineno))
    return ours, theirs


def layer_of(module: str):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_lives_in_a_layer_and_every_layer_says_what_it_may_import():
    loose = [str(p.relative_to(PACKAGE)) for p in SOURCES if p.parent == PACKAGE and p.name != "__init__.py"]
    assert not loose, f"modules outside the layers: {loose}"
    for layer in {p.relative_to(PACKAGE).parts[0] for p in SOURCES if p.parent != PACKAGE}:
        assert layer in RANKS, f"{layer}/ has no rank in this test"
        docstring = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text())) or ""
        assert "import" in docstring, f"{layer}/__init__.py does not say what the layer may import"


def layer_violations(path: Path, source: str):
    """Why ``source`` (the text of ``path``) breaks the layering: a list of one-line reasons."""
    importer = module_name(path)
    own = layer_of(importer)
    ours, theirs = imports_of(path, source)
    found = []
    for target, line in ours:
        layer = layer_of(target)
        if layer is None or layer == own or target.split(".")[1] in ("__version__", "assets"):
            continue
        if own is None:
            if layer not in ROOT_IMPORTS:
                found.append(f"{importer}:{line} imports {target}: the root exposes the pipeline only")
        elif RANKS[layer] >= RANKS[own]:
            found.append(f"{importer}:{line} imports {target}, a layer at or above {own}")
    if not path.relative_to(PACKAGE).as_posix().startswith(SLICER_USERS):
        found += [f"{importer}:{line} imports {name}: only slicer/ and apps/web/ may"
                  for name, line in theirs if name in SLICER_MODULES]
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers_only(path):
    assert layer_violations(path, path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("module, source, reason", [
    ("core/io.py", "from ..pipeline import files\n", "a layer at or above core"),
    ("reports/cardiac.py", "def f():\n    from ..pipeline.segmenter import Segmenter\n", "a layer at or above reports"),
    ("models/card.py", "import dinseg.training.train\n", "a layer at or above models"),
    ("pipeline/files.py", "import slicer\n", "only slicer/ and apps/web/ may"),
    ("__init__.py", "from .apps import cli\n", "the root exposes the pipeline only"),
])
def test_a_layer_violation_is_caught(module, source, reason):
    """The check itself can fail: upward, function-level, absolute and Slicer imports are refused."""
    assert any(reason in found for found in layer_violations(PACKAGE / module, source))


def test_the_engine_imports_without_slicer_or_qt_and_the_command_line_without_torch():
    """Every module outside slicer/ and apps/web/ imports where Slicer and Qt cannot be imported;
    ``import dinseg`` and the command line's parser do not import PyTorch."""
    modules = [module_name(p) for p in SOURCES
               if not p.relative_to(PACKAGE).as_posix().startswith(SLICER_USERS)]
    blocked = "import sys\nfor name in ('slicer', 'vtk', 'qt', 'ctk', 'trame_slicer'): sys.modules[name] = None\n"
    every = blocked + f"import importlib\nfor name in {modules!r}: importlib.import_module(name)\n"
    light = blocked + "import dinseg, dinseg.apps.cli\ndinseg.apps.cli.build_parser()\nprint('torch' in sys.modules)\n"
    for script in (every, light):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                              cwd=PACKAGE.parent)
        assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False", "import dinseg or the command line's parser imported torch"
