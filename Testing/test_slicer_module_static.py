"""Static checks of the Slicer module files (no Slicer needed): UI, parameter binding, imports,
Python 3.9 syntax, CMake file lists, icons, line endings and extension metadata."""

from __future__ import annotations

import ast
import glob
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "DINSegmentation"
SCRIPT = MODULE / "DINSegmentation.py"
UI_FILE = MODULE / "Resources" / "UI" / "DINSegmentation.ui"
MODULE_ICON = MODULE / "Resources" / "Icons" / "DINSegmentation.png"
EXTENSION_ICON = ROOT / "Resources" / "DINSegmentation.png"
MODULE_CMAKE = MODULE / "CMakeLists.txt"
EXTENSION_FILES = [ROOT / "CMakeLists.txt", ROOT / "DINSegmentation.s4ext", ROOT / "DINSegmentation.json"]
#: modules DINSegmentation.py may import at file scope (plus their sub-modules)
ALLOWED_TOP_LEVEL_IMPORTS = {"__future__", "logging", "os", "typing", "vtk", "qt", "ctk", "slicer"}
#: never imported at file scope by the MRML logic (Slicer imports it at startup)
HEAVY_MODULES = {"torch", "SimpleITK", "monai", "scipy", "matplotlib"}
BINARY_SUFFIXES = (".png", ".gz", ".pt", ".pth", ".nrrd", ".nii", ".mha", ".zip", ".h5", ".npz")


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def parse_script() -> ast.Module:
    return ast.parse(SCRIPT.read_text(encoding="utf-8"), filename=str(SCRIPT))


def ui_widgets():
    """{name: (class, {property: value}, {dynamic property: value})} of every widget in the .ui."""
    tree = ET.parse(UI_FILE)
    widgets = {}
    for element in tree.iter("widget"):
        name = element.get("name")
        assert name not in widgets, f"widget name {name!r} is used twice in {UI_FILE.name}"
        props, dynamic = {}, {}
        for prop in element.findall("property"):
            value = prop.find("string")
            text = value.text if value is not None else None
            if prop.find("stringlist") is not None:
                text = [s.text for s in prop.find("stringlist").findall("string")]
            (dynamic if prop.get("stdset") == "0" else props)[prop.get("name")] = text
        widgets[name] = (element.get("class"), props, dynamic)
    return widgets


def parameter_node_fields():
    """{field: annotation source} of the class decorated with @parameterNodeWrapper."""
    for node in parse_script().body:
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper")
                or (isinstance(d, ast.Attribute) and d.attr == "parameterNodeWrapper") for d in node.decorator_list):
            return {item.target.id: ast.unparse(item.annotation) for item in node.body
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}
    raise AssertionError("no class decorated with @parameterNodeWrapper in DINSegmentation.py")


def module_constant(name: str):
    for node in parse_script().body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"DINSegmentation.py has no module-level constant {name}")


def file_scope_imports(tree: ast.Module):
    """(module name, line) of every import not inside a function or class."""
    found = []

    def visit(statements):
        for statement in statements:
            if isinstance(statement, ast.Import):
                found.extend((alias.name, statement.lineno) for alias in statement.names)
            elif isinstance(statement, ast.ImportFrom):
                found.append(("." * statement.level + (statement.module or ""), statement.lineno))
            elif not isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                for child in ast.iter_child_nodes(statement):  # if / try / with blocks at file scope
                    if isinstance(child, ast.stmt):
                        visit([child])
                    elif isinstance(child, ast.ExceptHandler):
                        visit(child.body)

    visit(tree.body)
    return found


def cmake_list(text: str, variable: str):
    match = re.search(r"set\(\s*" + variable + r"\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set in {MODULE_CMAKE}"
    entries = []
    for line in match.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        entries.extend(line.split())
    return [entry.replace("${MODULE_NAME}", "DINSegmentation") for entry in entries]


def module_files():
    """Files of the module folder that belong to the source tree (git's view: ignored files such as
    __pycache__ and *.egg-info are left out), relative, with '/' separators."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "."],
                                cwd=MODULE, capture_output=True, check=True).stdout.decode().split("\0")
        files = [f for f in listed if f and (MODULE / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        files = [str(p.relative_to(MODULE)).replace(os.sep, "/") for p in MODULE.rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts and not any(x.endswith(".egg-info") for x in p.parts)
                 and p.suffix != ".pyc"]
    return sorted(f for f in files if Path(f).name != "CMakeLists.txt")


def png_size(path: Path):
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def find_python39():
    """A working Python 3.9 (on PATH, or a pyenv 3.9 installation), or None."""
    candidates = [shutil.which("python3.9")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 9)":
            return candidate
    return None


# ------------------------------------------------------------------------------------------
# UI and parameter node
# ------------------------------------------------------------------------------------------
def test_ui_parses_with_a_qmrmlwidget_on_top_and_the_expected_sections():
    root = ET.parse(UI_FILE).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "DINSegmentation"
    sections = {props.get("text") for cls, props, _ in ui_widgets().values() if cls == "ctkCollapsibleButton"}
    assert {"Inputs", "Enhancement preview", "Segmentation", "Output", "Advanced"} <= sections
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {cls for cls, _, _ in ui_widgets().values() if cls.startswith(("qMRML", "ctk"))}
    assert used <= declared, f"custom widgets used but not declared: {used - declared}"
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrml_widgets = {name for name, (cls, _, _) in ui_widgets().items() if cls == "qMRMLNodeComboBox"}
    assert mrml_widgets <= receivers, f"MRML widgets that never get the scene: {mrml_widgets - receivers}"


def test_every_ui_widget_the_script_uses_exists():
    names = set(ui_widgets())
    used = {node.attr for node in ast.walk(parse_script())
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    assert used, "the widget uses no self.ui.X at all?"
    missing = sorted(used - names)
    assert not missing, f"self.ui.{missing} used in DINSegmentation.py but not defined in {UI_FILE.name}"


def test_parameter_names_in_the_ui_match_the_parameter_node():
    fields = parameter_node_fields()
    manual = set(module_constant("MANUALLY_SYNCED_PARAMETERS"))
    assert manual <= set(fields), f"MANUALLY_SYNCED_PARAMETERS names unknown fields: {manual - set(fields)}"
    bound = {}
    for name, (cls, props, dynamic) in ui_widgets().items():
        if "SlicerParameterName" in dynamic:
            parameter = dynamic["SlicerParameterName"]
            assert parameter not in bound, f"{parameter} is bound to {bound.get(parameter)} and {name}"
            bound[parameter] = (name, cls, props)
    unknown = sorted(set(bound) - set(fields))
    assert not unknown, f"SlicerParameterName(s) {unknown} are not ParameterNode fields"
    unbound = sorted(set(fields) - set(bound) - manual)
    assert not unbound, f"ParameterNode field(s) {unbound} have no widget (or list them in MANUALLY_SYNCED_PARAMETERS)"
    assert not manual & set(bound), "a manually synchronised parameter is also bound in the .ui"
    for parameter, (_, cls, props) in bound.items():
        annotation = fields[parameter]
        if "Choice" in annotation:  # guiConnectors only fill plain QComboBox / ctkComboBox from a Choice
            assert cls in ("QComboBox", "ctkComboBox"), (parameter, cls)
        elif annotation == "bool":
            assert cls in ("QCheckBox", "ctkCheckBox"), (parameter, cls)
        elif annotation.startswith("vtkMRML"):
            assert cls == "qMRMLNodeComboBox" and props.get("nodeTypes") == [annotation], (parameter, cls, props)
        elif "float" in annotation:
            assert cls in ("ctkSliderWidget", "QDoubleSpinBox", "ctkDoubleSpinBox"), (parameter, cls)


def test_choices_of_the_module_match_the_engine():
    from dinseg.core.enhance import METHODS

    choices = module_constant("ENHANCEMENT_CHOICES")
    assert choices[0] == "model default" and set(choices[1:]) == set(METHODS)
    fields = parameter_node_fields()
    assert "ENHANCEMENT_CHOICES" in fields["enhancementMethod"] and "DEVICE_CHOICES" in fields["device"]
    assert "WithinRange(0.0, 1.0)" in fields["enhancementStrength"]
    assert module_constant("DEFAULT_MODEL") == "btcv-ct-light"


# ------------------------------------------------------------------------------------------
# Python: imports and syntax
# ------------------------------------------------------------------------------------------
def test_module_script_imports_nothing_heavy_at_file_scope():
    imports = file_scope_imports(parse_script())
    assert imports, "no imports found: the parser helper is broken"
    bad = [(name, line) for name, line in imports if name.split(".")[0] not in ALLOWED_TOP_LEVEL_IMPORTS]
    assert not bad, f"DINSegmentation.py imports at file scope (only {sorted(ALLOWED_TOP_LEVEL_IMPORTS)} allowed): {bad}"


SLICER_LAYER = sorted((MODULE / "dinseg" / "slicer").glob("*.py"))


def test_mrml_logic_does_not_import_heavy_modules_when_slicer_loads_it():
    """Slicer imports the MRML logic at startup (terminology): torch, SimpleITK and the rest come later."""
    for path in SLICER_LAYER:
        imports = file_scope_imports(ast.parse(path.read_text(encoding="utf-8")))
        bad = [(name, line) for name, line in imports if name.split(".")[0] in HEAVY_MODULES]
        assert not bad, f"{path.name} imports heavy modules at file scope: {bad}"
    script = ("import sys\nimport dinseg.slicer.logic, dinseg.slicer.job\n"
              f"print(sorted(set(sys.modules) & set({sorted(HEAVY_MODULES)!r})))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=MODULE, timeout=120)
    if "No module named 'slicer'" in done.stderr:
        pytest.skip("slicer-core is not installed")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"loading the MRML logic imported {done.stdout.strip()}"


@pytest.mark.parametrize("path", [SCRIPT, *SLICER_LAYER], ids=lambda p: p.name)
def test_slicer_side_parses_with_python_39_grammar(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))
    # "X | Y" annotations parse in 3.9 but fail when evaluated (parameterNodeWrapper evaluates them)
    annotations = [node.annotation for node in ast.walk(tree) if isinstance(node, (ast.AnnAssign, ast.arg))
                   and node.annotation is not None]
    annotations += [node.returns for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.returns]
    unions = [ast.unparse(a) for a in annotations
              if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(a))]
    assert not unions, f"{path.name}: use typing.Optional/Union, not X | Y, for Python 3.9: {unions}"


def test_every_module_file_compiles_with_python_39(tmp_path):
    python39 = find_python39()
    if python39 is None:
        pytest.skip("no working python3.9 on PATH (Slicer 5.8 runs Python 3.9)")
    files = [str(MODULE / f) for f in module_files() if f.endswith(".py")]
    code = ("import os, py_compile, sys\n"
            "for i, f in enumerate(sys.argv[2:]):\n"
            "    py_compile.compile(f, cfile=os.path.join(sys.argv[1], f'{i}.pyc'), doraise=True)\n")
    result = subprocess.run([python39, "-c", code, str(tmp_path)] + files, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"Python 3.9 cannot compile:\n{result.stderr}"


# ------------------------------------------------------------------------------------------
# CMake, resources and packaging
# ------------------------------------------------------------------------------------------
def test_cmake_lists_every_module_file_and_only_existing_ones():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    assert re.search(r"slicerMacroBuildScriptedModule\(.*NAME\s+\$\{MODULE_NAME\}.*SCRIPTS\s+\$\{MODULE_PYTHON_SCRIPTS\}"
                     r".*RESOURCES\s+\$\{MODULE_PYTHON_RESOURCES\}.*WITH_GENERIC_TESTS", text, re.S)
    assert re.search(r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text, re.S)
    scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(text, "MODULE_PYTHON_RESOURCES")
    for listed in scripts + resources:
        assert (MODULE / listed).is_file(), f"{MODULE_CMAKE.name} lists {listed}, which does not exist"
    assert all(s.endswith(".py") for s in scripts), "SCRIPTS may only hold .py files (the macro appends .py)"
    assert not any(r.endswith(".py") for r in resources), "a .py file is listed as a resource"
    assert len(set(scripts + resources)) == len(scripts + resources), "a file is listed twice"
    files = module_files()
    assert "DINSegmentation.py" in files and "dinseg/__init__.py" in files
    missing = [f for f in files if f not in scripts + resources]
    assert not missing, f"files under DINSegmentation/ missing from {MODULE_CMAKE.name}: {missing}"


def test_every_package_folder_has_an_init_listed():
    scripts = cmake_list(MODULE_CMAKE.read_text(encoding="utf-8"), "MODULE_PYTHON_SCRIPTS")
    packages = {str(Path(s).parent).replace(os.sep, "/") for s in scripts if "/" in s}
    for package in packages:
        assert f"{package}/__init__.py" in scripts, f"{package} has no __init__.py in the SCRIPTS list"


@pytest.mark.parametrize("path", [MODULE_ICON, EXTENSION_ICON], ids=["module", "extension"])
def test_icons_are_128_pixel_pngs(path):
    assert path.is_file(), f"{path} is missing"
    assert png_size(path) == (128, 128)


def test_text_files_use_lf_line_endings():
    paths = [MODULE / f for f in module_files() if not f.endswith(BINARY_SUFFIXES)] + [MODULE_CMAKE] + EXTENSION_FILES
    checked = 0
    for path in paths:
        data = path.read_bytes()
        if b"\0" in data:
            continue
        checked += 1
        assert b"\r" not in data, f"{path.relative_to(ROOT)} has CR (Windows or old Mac) line endings"
        assert data.endswith(b"\n"), f"{path.relative_to(ROOT)} does not end with a newline"
    assert checked >= 10


def test_extension_metadata_names_pytorch_as_dependency():
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"?PyTorch"?\)', cmake)
    assert re.search(r'set\(EXTENSION_CATEGORY\s+"Segmentation"\)', cmake)
    assert 'set(EXTENSION_HOMEPAGE "https://github.com/dinsegmentation/SlicerDINSegmentation")' in cmake
    assert "add_subdirectory(DINSegmentation)" in cmake
    assert "${Slicer_EXTENSION_GENERATE_CONFIG}" in cmake and "${Slicer_EXTENSION_CPACK}" in cmake
    icon_url = re.search(r'set\(EXTENSION_ICONURL\s+"([^"]+)"\)', cmake).group(1)
    assert icon_url.endswith("/" + str(EXTENSION_ICON.relative_to(ROOT)).replace(os.sep, "/"))

    s4ext = {}
    for line in (ROOT / "DINSegmentation.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            s4ext[key] = value.strip()
    assert "PyTorch" in s4ext["depends"].split()
    assert s4ext["category"] == "Segmentation" and s4ext["scm"] == "git"

    entry = json.loads((ROOT / "DINSegmentation.json").read_text(encoding="utf-8"))
    assert entry["build_dependencies"] == ["PyTorch"]
    assert {"$schema", "category", "scm_url"} <= set(entry)
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier", "dicom_support_rule"}
    assert set(entry) <= allowed, f"keys not in the ExtensionsIndex schema: {set(entry) - allowed}"
    assert entry["category"] == "Segmentation" and entry["scm_url"].startswith("https://github.com/dinsegmentation/")


def test_sample_checksums_match_the_bundled_files():
    samples = module_constant("SAMPLES")
    assert {file for _, file, _ in samples} == {"abdomen_ct.nii.gz", "abdomen_mr.nii.gz"}
    for name, file, sha256 in samples:
        path = MODULE / "dinseg" / "assets" / "sample" / file
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256, f"{name}: SHA256 of {file} changed"


def test_module_description_cites_din_and_has_the_slicer_classes():
    source = SCRIPT.read_text(encoding="utf-8")
    assert 'self.parent.title = _("DIN Segmentation")' in source
    assert 'translate("qSlicerAbstractCoreModule", "Segmentation")' in source
    for fragment in ("Noh, Jeon and Park", "Pattern Recognition Letters 197 (2025) 332-338", "arXiv:2509.05953",
                     "TotalSegmentator", "Apache"):
        assert fragment in source, f"the module text lacks {fragment!r}"
    classes = {node.name: node for node in parse_script().body if isinstance(node, ast.ClassDef)}
    for name, base in (("DINSegmentation", "ScriptedLoadableModule"), ("DINSegmentationWidget", "ScriptedLoadableModuleWidget"),
                       ("DINSegmentationLogic", "ScriptedLoadableModuleLogic"), ("DINSegmentationTest", "ScriptedLoadableModuleTest")):
        assert name in classes and base in [ast.unparse(b) for b in classes[name].bases], name
    methods = {f.name for f in classes["DINSegmentationLogic"].body if isinstance(f, ast.FunctionDef)}
    assert {"getParameterNode", "ensure", "mrml"} <= methods
    assert "__getattr__" not in methods, "the module logic forwards no names: its API is readable from the class"
    assert "installTorch(askConfirmation=False" in source and "confirmOkCancelDisplay" in source
    assert "startupCompleted()" in source and "registerCustomSampleDataSource" in source
