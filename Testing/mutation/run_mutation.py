#!/usr/bin/env python3
"""Mutation testing of dinseg's safety boundaries with mutmut (a benchmark-style job: not collected by
pytest, not part of CI; docs/mutation-testing.md has the results and what each survivor means).

    pip install -e ".[mutation]"        # mutmut
    python Testing/mutation/run_mutation.py [MODULE ...] [--budget-s SECONDS] [--work DIR]

MODULE: io, io-readers, models, web-files, dicomseg, job (default: all, job last). Each module runs in a scratch copy
of the package and the tests (``--work``, default /tmp/dinseg-mutation/<module>), so the working tree is
never touched; mutmut reads its settings from a pyproject.toml written there. Per module: only the
functions named below are mutated, only the test files that cover them run, one worker process
(``--max-children 1``), ``--budget-s`` seconds of mutation at most (the run is stopped there, what was
checked counts). The report, surviving mutants per module with their diffs, goes to
``<work>/report.md`` (and stdout).

Layout: mutmut imports the mutated package from ``mutants/`` (first on sys.path), so the copy puts
``dinseg`` at the top of the scratch folder; ``mutants/DINSegmentation/dinseg`` links to it for the
tests' asset paths (conftest.py), and PYTHONPATH points child processes (the CLI a test starts) at it.
mutmut skips decorated functions: ``@contextlib.contextmanager def atomic_output`` is rewritten in the
copy as ``atomic_output = contextlib.contextmanager(atomic_output)`` after a plain definition, which
behaves the same and lets its body be mutated.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Module:
    name: str
    files: Tuple[str, ...]          # relative to the package folder dinseg/
    functions: Tuple[str, ...]      # mutmut mutant-name globs, without the "__mutmut_N" suffix
    tests: Tuple[str, ...]          # pytest arguments: the test files (or node ids) that cover them
    budget_s: int = 900
    notes: List[str] = field(default_factory=list)


MODULES = [
    Module("io", ("core/io.py",),   # the verified writer and the DICOM header check
           functions=tuple(f"dinseg.core.io.x_{name}" for name in (
               "atomic_output", "verify_written", "_gzip_stream_complete", "_header_fields", "_raw_size_complete",
               "_verify_dicom", "_sync", "check_output_path", "_check_dicom_pixel_data", "dicom_pixel_bytes")),
           tests=("Testing/test_verified_writes.py", "Testing/test_safe_io.py",
                  "Testing/test_segment.py::test_a_failing_write_leaves_nothing_behind",
                  "Testing/test_segment.py::test_preview_png_is_written",
                  # not the slow CLI runs: the tmpfs and RLIMIT_FSIZE full-disk tests, SIGTERM (test names
                  # matching these words are left out: name a fast test otherwise)
                  "-k", "not full_disk and not sigterm and not cannot_grow"),
           budget_s=720),
    Module("io-readers", ("core/io.py",),   # the input side: what read_volume refuses and how it reads
           functions=tuple(f"dinseg.core.io.x_{name}" for name in (
               "check_nifti_payload", "_integer_payload_complete", "check_extent", "check_voxels",
               "_check_declared_size", "read_volume")),
           tests=("Testing/test_input_readers.py",),
           budget_s=600),
    Module("models", ("models/card.py", "models/registry.py"),
           # read_card_file and load_checked_weights: where load_card and load_weights do their work (6e8e5e8)
           functions=("dinseg.models.card.x_load_weights", "dinseg.models.card.x_load_card",
                      "dinseg.models.card.x_read_card_file", "dinseg.models.card.x_load_checked_weights",
                      "dinseg.models.card.x_sha256_of", "dinseg.models.card.x_save_weights",
                      "dinseg.models.card.xǁWeightsInfoǁ__post_init__", "dinseg.models.card.xǁModelCardǁfrom_dict",
                      "dinseg.models.registry.x_import_models", "dinseg.models.registry.x__safe_members",
                      "dinseg.models.registry.x__is_card"),
           tests=("Testing/test_model_guards.py",),
           budget_s=600),
    Module("web-files", ("apps/web/files.py",),
           functions=("dinseg.apps.web.files.*",),
           tests=("Testing/test_web.py", "-k", "not browser and not cli"),
           budget_s=400),
    Module("dicomseg", ("reports/dicomseg.py",),
           functions=("dinseg.reports.dicomseg.*",),
           # the direct tests; the dcmqi and dciodvfy checks of test_dicom_seg.py segment first (slow per mutant)
           tests=("Testing/test_dicom_seg.py", "Testing/test_slicer_dicom_seg.py", "-k",
                  "present_structures or cannot_hold or ordered_by or refused_before or own_slice or two_frame "
                  "or without_highdicom"),
           budget_s=420),
    Module("job", ("pipeline/job.py",),   # a colleague edits job.py: only its copy is mutated
           functions=tuple(f"dinseg.pipeline.job.xǁSegmentationProcessǁ{name}" for name in (
               "cancel", "kill", "_reap", "ended", "remove_temp_dir")) + ("dinseg.pipeline.job.x__signal_group",),
           # test_job_windows.py: the Windows branches in an emulation of Windows (os.name "nt", no killpg or
           # SIGKILL, a taskkill stand-in on PATH); without it they can only be measured on Windows
           tests=("Testing/test_job.py", "Testing/test_job_cancel.py", "Testing/test_job_windows.py"),
           budget_s=420),
]
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def _prepare(module: Module, scratch: Path) -> None:
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "mutation")
    shutil.copytree(REPO / "DINSegmentation" / "dinseg", scratch / "dinseg", ignore=ignore)
    shutil.copytree(REPO / "Testing", scratch / "Testing", ignore=ignore)
    io_py = scratch / "dinseg" / "core" / "io.py"
    text = io_py.read_text(encoding="utf-8")
    decorated = "@contextlib.contextmanager\ndef atomic_output(path) -> Iterator[Path]:"
    assert decorated in text, "atomic_output changed: update run_mutation.py's rewrite"
    text = text.replace(decorated, "def atomic_output(path) -> Iterator[Path]:")
    text = text.replace("\n\ndef array_to_sitk(", "\n\natomic_output = contextlib.contextmanager(atomic_output)"
                                                  "\n\n\ndef array_to_sitk(", 1)
    io_py.write_text(text, encoding="utf-8")
    (scratch / "mutants" / "DINSegmentation").mkdir(parents=True)
    (scratch / "mutants" / "DINSegmentation" / "dinseg").symlink_to(Path("..") / "dinseg")
    toml_list = lambda items: "[" + ", ".join(json.dumps(item) for item in items) + "]"  # noqa: E731
    (scratch / "pyproject.toml").write_text(
        "[tool.mutmut]\n"
        'source_paths = ["dinseg"]\n'
        f"only_mutate = {toml_list('dinseg/' + file for file in module.files)}\n"
        'also_copy = ["Testing"]\n'
        f"pytest_add_cli_args_test_selection = {toml_list(module.tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider"]\n'
        "use_git_change_detection = false\n", encoding="utf-8")


def _run(module: Module, scratch: Path, budget_s: int, python: str) -> Tuple[int, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(scratch / "mutants"), PYTHONDONTWRITEBYTECODE="1")
    globs = [f"{function}__mutmut_*" for function in module.functions]
    started = time.monotonic()
    with open(scratch / "mutmut.log", "w") as log:
        process = subprocess.Popen([python, "-m", "mutmut", "run", "--max-children", "1", *globs], cwd=scratch,
                                   env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:  # the budget is spent: stop, keep what was checked
            os.killpg(process.pid, signal.SIGINT)
            try:
                code = process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                code = process.wait()
    return code, time.monotonic() - started


def _results(module: Module, scratch: Path) -> Dict[str, str]:
    results = {}
    for file in module.files:
        meta = scratch / "mutants" / "dinseg" / (file + ".meta")
        if not meta.exists():
            continue
        codes = json.loads(meta.read_text(encoding="utf-8")).get("exit_code_by_key", {})
        for name, code in codes.items():
            if any(fnmatch.fnmatch(name, f"{function}__mutmut_*") for function in module.functions):
                results[name] = STATUS.get(code, "suspicious")
    return results


_FUNCTIONS: Dict[Path, Dict[str, str]] = {}


def _diff(scratch: Path, name: str, module: Module) -> str:
    """The mutant against the original function, read from mutmut's mutated copy of the file."""
    import ast
    import difflib

    function = name.rsplit(".", 1)[1]
    base = function.split("__mutmut_")[0]
    for file in module.files:
        path = scratch / "mutants" / "dinseg" / file
        if path not in _FUNCTIONS:
            source = path.read_text(encoding="utf-8")
            lines = source.splitlines(keepends=True)  # whole lines (ast.get_source_segment re-splits per call: slow)
            _FUNCTIONS[path] = {node.name: "".join(lines[node.lineno - 1:node.end_lineno])
                                for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)}
        functions = _FUNCTIONS[path]
        if function in functions and base + "__mutmut_orig" in functions:
            mutant = functions[function].replace(function, base + "__mutmut_orig")
            lines = difflib.unified_diff(functions[base + "__mutmut_orig"].splitlines(), mutant.splitlines(),
                                         lineterm="", n=1)
            return "\n".join(list(lines)[2:])
    return "(diff not found)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=", ".join(m.name for m in MODULES))
    parser.add_argument("--budget-s", type=int, help="seconds of mutation per module (default: each module's own)")
    parser.add_argument("--work", default="/tmp/dinseg-mutation", help="scratch folder (default: %(default)s)")
    parser.add_argument("--python", default=sys.executable, help="the venv's python, with mutmut (default: this one)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the reports from the results already in --work (after a `mutmut run NAME...` "
                             "there re-checked survivors against new tests), running nothing")
    args = parser.parse_args()
    unknown = set(args.modules) - {m.name for m in MODULES}
    if unknown:
        parser.error(f"unknown module(s) {', '.join(sorted(unknown))}; "
                     f"choose from {', '.join(m.name for m in MODULES)}")
    chosen = [m for m in MODULES if not args.modules or m.name in args.modules]
    work = Path(args.work)
    for module in chosen:
        scratch = work / module.name
        if args.report_only:
            if not scratch.exists():
                continue
            code, seconds = "not run", 0.0
        else:
            _prepare(module, scratch)
            code, seconds = _run(module, scratch, args.budget_s or module.budget_s, args.python)
        results = _results(module, scratch)
        counts = {status: list(results.values()).count(status) for status in sorted(set(results.values()))}
        checked = sum(n for status, n in counts.items() if status in ("killed", "survived", "timeout", "suspicious"))
        killed = counts.get("killed", 0) + counts.get("timeout", 0)
        rate = 100.0 * killed / checked if checked else 0.0
        line = (f"{module.name}: {killed}/{checked} killed ({rate:.1f} %), {counts}"
                + ("" if args.report_only else f", mutmut exit {code}, {seconds:.0f} s"))
        print(line, flush=True)
        section = [f"## {module.name} ({', '.join(module.files)})", "", f"- {line}",
                   f"- reported: {time.strftime('%Y-%m-%d %H:%M')}, tests: {' '.join(module.tests)}",
                   f"- log: {scratch / 'mutmut.log'}", ""]
        untested = sorted(name for name, status in results.items() if status == "no tests")
        if untested:
            section += [f"No test runs these ({len(untested)}): " + ", ".join(untested), ""]
        for name, status in sorted(results.items()):
            if status not in ("killed", "timeout", "no tests", "not checked"):
                section += [f"### {name}: {status}", "", "```diff", _diff(scratch, name, module), "```", ""]
        (scratch / "report.md").write_text("\n".join(section) + "\n", encoding="utf-8")
    # the report: every module run so far in this work folder, in the order above
    report = ["# mutmut on dinseg's safety boundaries: surviving mutants per module", ""]
    summary = []
    for module in MODULES:
        part = work / module.name / "report.md"
        if part.exists():
            text = part.read_text(encoding="utf-8")
            report.append(text)
            summary.append(text.splitlines()[2])
    report += ["## Summary", ""] + summary
    (work / "report.md").write_text("\n".join(report) + "\n", encoding="utf-8")
    print(f"report: {work / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
