"""``dinseg cohort`` on Dask: real ACDC frames (../shared/data; skipped where absent) on a LocalCluster
of one-thread workers, a corrupt case in the middle, a rerun, a killed worker, --part shares, the
KiTS-style layout (one folder per case, one file name), and bad input refused before any work."""

from __future__ import annotations

import csv
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("distributed")
pytest.importorskip("pyarrow")

from conftest import acdc_patient  # noqa: E402
from dinseg.apps.cli import main  # noqa: E402
from dinseg.core.errors import InputError  # noqa: E402
from dinseg.pipeline import cohort  # noqa: E402
from dinseg.pipeline.files import case_names  # noqa: E402

#: (patient, frame) of the smallest ACDC frames: 6 and 7 slices of 154 x 224, ED and ES of two patients
FRAMES = ((41, 1), (41, 11), (90, 4), (90, 11))
FAST = ["--quality-variants", "0", "--threads", "1", "--progress", "lines"]


def frame_path(patient: int, frame: int) -> Path:
    return acdc_patient(patient) / f"patient{patient:03d}_frame{frame:02d}.nii.gz"


def table(path: Path):
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def labels_of(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def kits(tmp_path_factory) -> Path:
    """cases/case_0000N/imaging.nii.gz as KiTS ships it: three real frames and, third, a truncated file."""
    root = tmp_path_factory.mktemp("kits")
    sources = [frame_path(41, 1), frame_path(41, 11), None, frame_path(90, 4)]
    for number, source in enumerate(sources):
        case = root / "cases" / f"case_{number:05d}"
        case.mkdir(parents=True)
        if source is None:
            (case / "imaging.nii.gz").write_bytes(frame_path(90, 11).read_bytes()[:20000])
        else:
            shutil.copy(source, case / "imaging.nii.gz")
    return root


@pytest.fixture(scope="module")
def first_run(kits):
    """One cohort over the four cases, plus a list naming the first case again and a missing file."""
    listed = kits / "more.txt"
    listed.write_text("cases/case_00000/imaging.nii.gz\n# a comment\nnowhere/imaging.nii.gz\n")
    inputs = [str(path) for path in sorted((kits / "cases").glob("*/imaging.nii.gz"))] + [str(listed)]
    status = main(["cohort", *inputs, str(kits / "cases" / "case_00000" / "imaging.nii.gz"), "-o",
                   str(kits / "out"), "--workers", "2", *FAST])
    return status, inputs, {row["case"]: row for row in table(kits / "out" / "cohort.csv")}


def test_a_cohort_segments_the_good_cases_as_segment_does_and_fails_the_bad_one(kits, first_run, capsys):
    status, inputs, rows = first_run
    assert status == 2  # a case failed
    assert sorted(rows) == ["case_00000", "case_00001", "case_00002", "case_00003", "imaging"]  # each once
    assert [rows[name]["status"] for name in ("case_00000", "case_00001", "case_00003")] == ["ok"] * 3
    bad = rows["case_00002"]
    assert bad["status"] == "failed" and "cannot read this image: the file is cut short or damaged" in bad["error"]
    assert "\n" not in bad["error"]
    assert not (kits / "out" / "case_00002.seg.nrrd").exists()
    assert rows["imaging"]["status"] == "failed" and "no such file" in rows["imaging"]["error"]
    ok = rows["case_00000"]
    assert ok["model"] == "acdc-light" and ok["model_version"] and ok["worker"] and float(ok["seconds"]) > 0
    assert ok["quality"] in ("ok", "review") and float(ok["left_ventricle_ml"]) > 10
    assert ok["quality_reasons"].endswith("no test-time variants were computed: no predicted Dice")  # a note, last
    import pyarrow.parquet as pq

    parquet = pq.read_table(kits / "out" / "cohort.parquet").to_pydict()
    assert sorted(parquet["case"]) == sorted(rows)
    assert dict(zip(parquet["case"], parquet["left_ventricle_ml"]))["case_00000"] == \
        pytest.approx(float(ok["left_ventricle_ml"]))
    # dinseg segment's batch names the KiTS layout the same way and writes the same labels
    assert main(["segment", *inputs[:4], "-o", str(kits / "segment"), "--quality-variants", "0", "--threads",
                 "1"]) == 2
    for name in ("case_00000", "case_00001", "case_00003"):
        assert np.array_equal(labels_of(kits / "segment" / f"{name}.seg.nrrd"),
                              labels_of(kits / "out" / f"{name}.seg.nrrd"))
    assert "case_00002: error: " in capsys.readouterr().err


def test_a_rerun_skips_every_finished_case_without_starting_a_cluster(kits, first_run, capsys, monkeypatch):
    _, inputs, rows = first_run
    good = [path for path in inputs[:4] if "case_00002" not in path]
    written = {path: path.stat().st_mtime_ns for path in (kits / "out").glob("*.seg.nrrd")}

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started with nothing to segment")

    monkeypatch.setattr(cohort, "open_cluster", no_cluster)
    assert main(["cohort", *good, "-o", str(kits / "out"), *FAST]) == 0
    assert "3 case(s): 0 to segment, 3 finished before" in capsys.readouterr().err
    again = {row["case"]: row for row in table(kits / "out" / "cohort.csv")}
    assert sorted(again) == ["case_00000", "case_00001", "case_00003"]
    for name, row in again.items():
        assert row["status"] == "skipped" and row["left_ventricle_ml"] == rows[name]["left_ventricle_ml"]
    assert {path: path.stat().st_mtime_ns for path in (kits / "out").glob("*.seg.nrrd")} == written
    # an output changed since its row was written does not verify: it is segmented again
    changed = kits / "out" / "case_00001.seg.nrrd"
    saved = changed.read_bytes()
    changed.write_bytes(saved[:-10] + b"0123456789")
    plan = cohort.plan_cohort(good, kits / "out")
    changed.write_bytes(saved)
    assert [task.name for task in plan.tasks] == ["case_00001"] and len(plan.kept) == 2


def test_parts_cover_the_cases_exactly_once(kits):
    inputs = [str(kits / "cases")]
    everything = [task.source for task in cohort.plan_cohort(inputs, kits / "parts").tasks]
    assert len(everything) == 4
    for count in (1, 2, 3, 5):
        shares = []
        for share in range(1, count + 1):
            try:
                shares += [task.source for task in cohort.plan_cohort(inputs, kits / "parts",
                                                                      part=(share, count)).tasks]
            except InputError as error:  # a share with no case (5 shares of 4)
                assert "no cases in share" in str(error)
        assert sorted(shares) == sorted(everything)
    assert cohort.parse_part("2/8") == (2, 8)
    for bad in ("0/3", "4/3", "a/b", "3"):
        with pytest.raises(InputError, match="K/N"):
            cohort.parse_part(bad)


def test_outputs_are_named_by_stem_then_by_folder():
    assert case_names([Path("/d/cases/case_00000/imaging.nii.gz"), Path("/d/cases/case_00001/imaging.nii.gz")]) \
        == ["case_00000", "case_00001"]
    assert case_names([Path("/d/a/p1.nii.gz"), Path("/d/b/p2.nrrd")]) == ["p1", "p2"]
    assert case_names([Path("/d/a/x/img.nii"), Path("/d/b/x/img.nii"), Path("/d/c/y.nii")]) == ["a_x", "b_x", "y"]
    with pytest.raises(InputError, match="the same output 'img'"):
        case_names([Path("/d/a/img.nii"), Path("/d/a/img.nrrd")])


def test_a_killed_worker_loses_nothing_and_ed_es_pairs_get_their_function(tmp_path):
    """Two patient folders (ED/ES pairs) on two workers; the worker still busy when the first case
    finishes is killed: its case runs again elsewhere and every case is ok once. Then Ctrl-C, and a
    case whose task raises twice."""
    for patient, frame in FRAMES:
        (tmp_path / f"p{patient}").mkdir(exist_ok=True)
        shutil.copy(frame_path(patient, frame), tmp_path / f"p{patient}")
    options = cohort.SegmentOptions(threads=1)
    plan = cohort.plan_cohort([str(tmp_path / "p41"), str(tmp_path / "p90")], tmp_path / "out", options,
                              quality_variants=0, cardiac=True)
    assert len(plan.tasks) == 4 and len(plan.pairs) == 2
    killed = []
    with cohort.open_cluster(None, 2) as client:
        pids = client.run(os.getpid)
        names = {info["name"]: address for address, info in client.scheduler_info()["workers"].items()}

        def kill_the_other_worker(row, counts):
            if not killed:
                other = next(address for name, address in names.items() if str(name) != row["worker"])
                os.kill(pids[other], signal.SIGKILL)
                killed.append(other)

        counts = cohort.run_cohort(plan, client, kill_the_other_worker)
        assert killed and counts.by_status == {"ok": 4, "failed": 0, "skipped": 0}
        rows = table(tmp_path / "out" / "cohort.csv")
        assert sorted(row["case"] for row in rows) == sorted(task.name for task in plan.tasks)
        assert all(cohort.output_verifies(Path(row["output"]), row["output_sha256"]) for row in rows)
        for patient in ("p41", "p90"):
            pair = sorted((row for row in rows if f"/{patient}/" in row["input"]), key=lambda row: row["phase"])
            assert [row["phase"] for row in pair] == ["ED", "ES"]
            assert pair[0]["lv_ef_percent"] == pair[1]["lv_ef_percent"] and 0 < float(pair[0]["lv_ef_percent"]) < 100
            assert float(pair[0]["lv_edv_ml"]) == pytest.approx(float(pair[0]["left_ventricle_ml"]), rel=1e-4)

        # Ctrl-C after the first case: the rest cancelled, the finished one kept in both tables
        def interrupt(row, counts):
            raise KeyboardInterrupt

        again = cohort.plan_cohort([str(tmp_path / "p41"), str(tmp_path / "p90")], tmp_path / "stopped", options,
                                   quality_variants=0)
        with pytest.raises(KeyboardInterrupt):
            cohort.run_cohort(again, client, interrupt)

        # a case whose task raises (not a DinsegError) is tried twice, then failed; the cohort goes on
        attempts = tmp_path / "attempts.txt"

        def break_segment_file():
            import importlib

            def broken(*args, **kwargs):
                with open(attempts, "a") as stream:
                    stream.write("tried\n")
                raise RuntimeError("a bug\nover two lines")

            setattr(importlib.import_module("dinseg.pipeline.files"), "segment_file", broken)

        client.run(break_segment_file)
        plan = cohort.plan_cohort([str(tmp_path / "p41" / "patient041_frame01.nii.gz")], tmp_path / "broken", options)
        assert cohort.run_cohort(plan, client).by_status["failed"] == 1
        assert attempts.read_text() == "tried\ntried\n"
        assert table(tmp_path / "broken" / "cohort.csv")[0]["error"] == "RuntimeError: a bug over two lines"
    kept = table(tmp_path / "stopped" / "cohort.csv")
    assert len(kept) == 1 and kept[0]["status"] == "ok"
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "stopped" / "cohort.parquet").num_rows == 1


def _refused(capsys, argv, text, never_written: Path):
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dinseg: error: ") and text in lines[0], lines
    assert not never_written.exists()


def test_bad_input_is_one_line_before_any_work(kits, tmp_path, capsys, monkeypatch):
    case = str(kits / "cases" / "case_00000" / "imaging.nii.gz")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    _refused(capsys, ["cohort", str(empty), "-o", str(tmp_path / "a")], "no cases", tmp_path / "a")
    (tmp_path / "empty_folder").mkdir()
    _refused(capsys, ["cohort", str(tmp_path / "empty_folder"), "-o", str(tmp_path / "a")], "no cases",
             tmp_path / "a")
    _refused(capsys, ["cohort", case, "-o", str(kits / "cases" / "case_00000")], "is the folder of the input",
             kits / "cases" / "case_00000" / "cohort.csv")
    _refused(capsys, ["cohort", str(kits / "cases"), "-o", str(kits / "cases" / "results")],
             "inside the input folder", kits / "cases" / "results")
    _refused(capsys, ["cohort", case, "-o", "/proc/dinseg_cohort"], "cannot write in", Path("/proc/dinseg_cohort"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cohort.csv").write_text(f"input\n{case}\n")
    _refused(capsys, ["cohort", str(tmp_path / "b" / "cohort.csv"), "-o", str(tmp_path / "b")],
             "lies where the table goes", tmp_path / "b" / "cohort.parquet")
    _refused(capsys, ["cohort", str(tmp_path / "absent.nii.gz"), "-o", str(tmp_path / "a")], "no such file",
             tmp_path / "a")
    _refused(capsys, ["cohort", case, "-o", str(tmp_path / "a"), "--part", "3/2"], "K/N", tmp_path / "a")
    _refused(capsys, ["cohort", case, "-o", str(tmp_path / "a"), "--scheduler", "tcp://127.0.0.1:9",
                      "--connect-timeout", "1"], "cannot reach the Dask scheduler at tcp://127.0.0.1:9",
             tmp_path / "a")
    from dinseg.core import dependencies

    monkeypatch.setitem(dependencies.MINIMUM_VERSIONS, "distributed", "9999")
    _refused(capsys, ["cohort", case, "-o", str(tmp_path / "a")], "pip install 'dinseg[cohort]'", tmp_path / "a")
