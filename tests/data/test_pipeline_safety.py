"""A user's data set is never lost or mixed: private build folder, one-rename publish, refusal
of foreign folders, resume from verified state, one writer at a time (real processes and a
real SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from criteo_samples import GOOD_ROW, KAGGLE_HEAD, read_part, require, write_lines

from dlrm.cli import main
from dlrm.data import open_data
from dlrm.data.criteo import preprocess_kaggle
from dlrm.data.criteo_synth import write_criteo_tsv
from dlrm.data.pipeline.io import BuildFolder
from dlrm.data.pipeline.metadata import DataError, Progress

SRC = Path(__file__).resolve().parents[2] / "src"


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _dlrm(*argv: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-m", "dlrm", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> Path:
    """Four synthetic Terabyte days of 80k rows each (~20 MB each): long enough to kill a
    run between two days."""
    folder = tmp_path_factory.mktemp("days")
    for day in (0, 1, 2, 3):
        write_criteo_tsv(folder / f"day_{day}", 80_000, seed=day)
    return folder


@pytest.fixture(scope="module")
def small_days(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("small_days")
    for day in (0, 1, 3):
        write_criteo_tsv(folder / f"day_{day}", 5_000, seed=day)
    return folder


def test_failed_rerun_keeps_the_previous_data_set(tmp_path, capsys):
    good = write_lines(tmp_path / "train.txt", [GOOD_ROW] * 30)
    out = tmp_path / "out"
    assert main(["preprocess", "criteo-kaggle", "--input", str(good), "--out", str(out),
                 "--quiet"]) == 0
    before = _snapshot(out)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert main(["preprocess", "criteo-kaggle", "--input", str(empty), "--out", str(out),
                 "--overwrite", "--quiet"]) == 2
    assert "no rows to preprocess" in capsys.readouterr().err
    assert _snapshot(out) == before
    assert open_data(str(out)).num_samples("train") == 26
    # Without --overwrite a finished data set is refused before any work, by name.
    assert main(["preprocess", "criteo-kaggle", "--input", str(good), "--out", str(out),
                 "--quiet"]) == 2
    assert "already holds a data set" in capsys.readouterr().err
    assert _snapshot(out) == before
    # With it, the new data set replaces the old one (built beside it, then renamed).
    bigger = write_lines(tmp_path / "b.txt", [GOOD_ROW] * 70)
    assert main(["preprocess", "criteo-kaggle", "--input", str(bigger), "--out", str(out),
                 "--overwrite", "--quiet"]) == 0
    assert open_data(str(out)).num_samples("train") == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt", "empty.txt", "out",
                                                          "train.txt"]


def test_foreign_folder_is_refused_and_untouched(tmp_path, capsys):
    good = write_lines(tmp_path / "train.txt", [GOOD_ROW] * 30)
    mine = tmp_path / "mine"
    (mine / "parts").mkdir(parents=True)
    (mine / "parts" / "notes.txt").write_text("my notes")
    (mine / "vocab").mkdir()
    (mine / "metadata.json").write_text('{"who": "me"}')
    before = _snapshot(mine)
    assert main(["preprocess", "criteo-kaggle", "--input", str(good), "--out", str(mine),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--out {mine} is not empty and holds no dlrm data set" in err
    assert "metadata.json, parts, vocab" in err and "--overwrite" in err
    assert _snapshot(mine) == before
    assert not (tmp_path / ".mine.dlrm-build").exists()
    # An empty folder is fine; a file at --out is refused.
    (tmp_path / "empty").mkdir()
    assert main(["preprocess", "criteo-kaggle", "--input", str(good), "--out",
                 str(tmp_path / "empty"), "--quiet"]) == 0
    notes = tmp_path / "notes.txt"
    notes.write_text("a user's file")
    assert main(["preprocess", "criteo-kaggle", "--input", str(good), "--out",
                 str(notes), "--quiet"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert notes.read_text() == "a user's file"
    # The input itself as --out: refused before anything runs (an input is never replaced).
    assert main(["preprocess", "criteo-kaggle", "--input", str(good), "--out", str(good),
                 "--quiet"]) == 2
    assert "an input is never replaced" in capsys.readouterr().err


def test_sigkill_leaves_the_old_data_set_and_the_rerun_resumes(days, tmp_path):
    out = tmp_path / "tb"
    common = ["preprocess", "criteo-terabyte", "--input", str(days), "--days", "0-3",
              "--test-day", "3", "--quiet", "--workers", "1"]
    args = [*common, "--out", str(out)]
    from dlrm.data.criteo import preprocess_terabyte

    # An existing data set at the target (days 2-3), which the killed run must not touch.
    preprocess_terabyte(days, out, days=[2, 3], test_day=3, hash_buckets=50)
    old = _snapshot(out)
    build = tmp_path / ".tb.dlrm-build"
    proc = _dlrm(*args, "--overwrite")
    stage = build / "parts" / "day_0" / "stage.json"
    deadline = time.time() + 120
    while not stage.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert _snapshot(out) == old  # the old data set, whole, untouched
    assert stage.exists()
    # The rerun resumes the verified day and gives exactly an uninterrupted run's data.
    rerun = _dlrm(*args, "--overwrite")
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert "resuming the unfinished run" in stderr and "day_0" in stdout
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["resumed"] is True and "day_0" in meta["reused_parts"]
    assert meta["rows_read"] == meta["rows_written"] + meta["rows_skipped"] == 320_000
    clean = tmp_path / "clean"
    assert main([*common, "--out", str(clean)]) == 0
    for part in ("day_0", "day_1", "day_3"):
        for a, b in zip(read_part(out, part), read_part(clean, part), strict=True):
            np.testing.assert_array_equal(a, b)
    assert not build.exists()


def test_resume_state_is_validated_before_it_is_trusted(small_days, tmp_path):
    """A stage record that lies (damaged JSON, wrong counts, a truncated array) is redone."""
    from dlrm.data.criteo import preprocess_terabyte

    out = tmp_path / "tb"
    build = tmp_path / ".tb.dlrm-build"
    kw = dict(days=[0, 1, 3], test_day=3, workers=1)
    clean = preprocess_terabyte(small_days, tmp_path / "clean", **kw)

    def interrupted(damage) -> dict:
        # A run that staged every day and then failed (stopped as the vocabulary began).
        with pytest.raises(DataError):
            preprocess_terabyte(small_days, out, progress=_fail_at("vocabulary"),
                                overwrite=True, **kw)
        damage(build / "parts" / "day_0")
        return preprocess_terabyte(small_days, out, overwrite=True, **kw)

    def bad_json(folder):
        (folder / "stage.json").write_text("{not json")

    def wrong_count(folder):
        record = json.loads((folder / "stage.json").read_text())
        record["rows_written"] += 1
        (folder / "stage.json").write_text(json.dumps(record))

    def truncated(folder):
        path = folder / "raw" / "C3.npy"
        path.write_bytes(path.read_bytes()[:-4])

    for damage in (bad_json, wrong_count, truncated):
        meta = interrupted(damage)
        assert meta["reused_parts"] == ["day_1", "day_3"], damage.__name__
        assert meta["table_sizes"] == clean["table_sizes"]
        np.testing.assert_array_equal(read_part(out, "day_0")[2],
                                      read_part(tmp_path / "clean", "day_0")[2])


def _fail_at(stage: str):
    def progress(event: Progress) -> None:
        if event.stage == stage:
            raise DataError(f"stopped at {stage}")
    return progress


def test_settings_change_starts_the_build_afresh_and_says_so(tmp_path):
    path = write_lines(tmp_path / "t.txt", [GOOD_ROW] * 30)
    with pytest.raises(DataError):
        preprocess_kaggle(path, tmp_path / "o", progress=_fail_at("vocabulary"))
    messages = []

    def listen(event: Progress) -> None:
        if event.message:
            messages.append(event.message)

    meta = preprocess_kaggle(path, tmp_path / "o", min_count=2, progress=listen)
    assert meta["resumed"] is False and meta["vocab_mode"] == "min-count"
    assert any("starting afresh" in m and "other settings" in m for m in messages)


def test_two_writers_of_one_target_are_refused(tmp_path):
    good = write_lines(tmp_path / "train.txt", [GOOD_ROW] * 30)
    out = tmp_path / "out"
    with BuildFolder(out, {"held": "by this test"}):  # a second process holds the lock
        proc = _dlrm("preprocess", "criteo-kaggle", "--input", str(good), "--out", str(out),
                     "--quiet")
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "another dlrm process is building" in stderr and "Traceback" not in stderr
    assert not out.exists()


def test_predict_and_loader_read_a_format_1_folder(tmp_path):
    """Folders written before the one pipeline (format 1: one sparse.npy per part) still
    open and give the same batches."""
    out = tmp_path / "new"
    preprocess_kaggle(require(KAGGLE_HEAD), out, hash_buckets=1000)
    old = tmp_path / "old"
    (old / "parts" / "all").mkdir(parents=True)
    labels, dense, ids = read_part(out, "all")
    np.save(old / "parts" / "all" / "labels.npy", labels)
    np.save(old / "parts" / "all" / "dense.npy", dense)
    np.save(old / "parts" / "all" / "sparse.npy", ids)
    meta = json.loads((out / "metadata.json").read_text())
    for key in ("features", "schema", "sparse_names"):
        meta.pop(key)
    meta["format_version"] = 1
    (old / "metadata.json").write_text(json.dumps(meta))
    (old / "vocab").mkdir()
    (old / "vocab" / "vocab.json").write_text(json.dumps(
        {"vocab_mode": "hash", "hash_buckets": 1000, "min_count": None}))
    a = next(open_data(str(out)).batches("train", 64, shuffle=True, seed=1))
    b = next(open_data(str(old)).batches("train", 64, shuffle=True, seed=1))
    assert a.sparse.values.tolist() == b.sparse.values.tolist()
    assert a.dense.tolist() == b.dense.tolist()
    rows = open_data(str(old)).encode_raw_file(require(KAGGLE_HEAD))
    np.testing.assert_array_equal(rows.ids, ids)


def test_table_rerun_killed_keeps_the_old_data_set_whole(tmp_path):
    """The issue's case: `dlrm preprocess table` re-run into an existing folder and killed
    must not leave the old metadata.json beside new arrays."""
    rng = np.random.default_rng(0)
    n = 400_000
    lines = [f"{y},{x},c{c}" for y, x, c in zip(rng.integers(0, 2, n), rng.integers(0, 99, n),
                                                rng.integers(0, 5000, n))]
    big = tmp_path / "big.csv"
    big.write_text("y,x,c\n" + "\n".join(lines) + "\n")
    small = tmp_path / "small.csv"
    small.write_text("y,x,c\n" + "\n".join(lines[:2000]) + "\n")
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({
        "name": "t", "delimiter": ",", "header": True, "label": {"column": "y"},
        "dense": [{"column": "x"}], "categorical": [{"column": "c"}],
        "split": {"order": "random", "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}}}))
    out = tmp_path / "out"
    assert main(["preprocess", "table", "--schema", str(schema), "--input", str(small),
                 "--out", str(out), "--quiet"]) == 0
    old = _snapshot(out)
    proc = _dlrm("preprocess", "table", "--schema", str(schema), "--input", str(big), "--out",
                 str(out), "--overwrite", "--quiet", "--chunk-mb", "1")
    build = tmp_path / ".out.dlrm-build" / "parts" / "main" / "labels.npy"
    deadline = time.time() + 120
    while not build.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _snapshot(out) == old
    data = open_data(str(out))
    assert sum(data.num_samples(s) for s in data.splits()) == 2000


def test_a_dlrm_table_v1_folder_still_opens(tmp_path):
    """Folders of the old `dlrm preprocess table` (format dlrm-table-v1) keep training."""
    folder = tmp_path / "old"
    (folder / "train").mkdir(parents=True)
    np.save(folder / "train" / "labels.npy", np.array([1, 0, 1], dtype=np.float32))
    np.save(folder / "train" / "dense.npy", np.ones((3, 1), dtype=np.float32))
    np.save(folder / "train" / "sparse.npy", np.array([[1], [2], [0]], dtype=np.int64))
    np.save(folder / "train" / "tags.values.npy", np.array([1, 2, 1], dtype=np.int64))
    np.save(folder / "train" / "tags.offsets.npy", np.array([0, 2, 2, 3], dtype=np.int64))
    (folder / "metadata.json").write_text(json.dumps({
        "format": "dlrm-table-v1", "rows": {"train": 3}, "num_dense": 1, "table_sizes": [3, 3],
        "features": [{"name": "c", "multi_hot": False}, {"name": "tags", "multi_hot": True}]}))
    data = open_data(str(folder))
    batch = next(data.batches("train", 3))
    assert batch.labels.tolist() == [1.0, 0.0, 1.0]
    assert batch.sparse.values.tolist() == [1, 2, 0, 1, 2, 1]
    assert open_data(data.spec()).num_samples("train") == 3
