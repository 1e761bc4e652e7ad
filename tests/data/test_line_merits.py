"""Every line accounted for and judged on its own merits; messages instead of tracebacks;
a data set without validation rows refused at preprocessing time."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from criteo_samples import GOOD_ROW, read_part, write_lines

from dlrm.cli import main
from dlrm.data.criteo import BadLineError, preprocess_kaggle, preprocess_terabyte
from dlrm.data.pipeline.parse import cells_from_arrow, parse_float, parse_int64
from dlrm.data.table import TableSchema, preprocess_table

SRC = Path(__file__).resolve().parents[2] / "src"
PAD = [GOOD_ROW] * 14  # the 7-day reference split needs a few rows for validation


def _with(field: int, value: str) -> str:
    fields = GOOD_ROW.split("\t")
    fields[field] = value
    return "\t".join(fields)


# ---------------------------------------------------------------- cell rules, against Python
def _naive_int(text: str):
    """The integer rule written plainly: '-'? digits, inside int64; else None."""
    body = text[1:] if text.startswith("-") else text
    if not body or not all("0" <= ch <= "9" for ch in body):
        return "bad"
    value = int(text)
    return value if -(2**63) <= value < 2**63 else "range"


def test_integer_cells_against_a_naive_rule():
    import pyarrow as pa

    rng = np.random.default_rng(0)
    cells = ["", "0", "-0", "7", "-7", "12345678", "123456789", "1234567890123456",
             "12345678901234567", "9223372036854775807", "9223372036854775808",
             "-9223372036854775808", "-9223372036854775809", "00000000000000000000001",
             "99999999999999999999", " 5", "5 ", "+5", "0x10", "1e3", "1.0", "-", "--1", "5-",
             "١٢", "１２", "12a", "a12"]
    cells += [str(int(x)) for x in rng.integers(-(10**12), 10**12, 200)]
    cells += ["".join(rng.choice(list("0123456789-x "), rng.integers(1, 12))) for _ in
              range(300)]
    values, empty, bad, out_of_range = parse_int64(cells_from_arrow(pa.array(cells)))
    for i, text in enumerate(cells):
        want = 0 if text == "" else _naive_int(text)
        got = "bad" if bad[i] else "range" if out_of_range[i] else int(values[i])
        assert got == want, text
        assert empty[i] == (text == "")


def test_float_cells_out_of_float32_range_are_bad_not_infinite():
    import pyarrow as pa

    cells = ["1.5", " 2 ", "-3e2", "1e38", "3.5e38", "1e200", "1e400", "-1e400", "nan", "inf",
             "1,5", "", ".5", "5."]
    values, empty, bad, out_of_range = parse_float(cells_from_arrow(pa.array(cells)))
    assert values[:4].tolist() == [1.5, 2.0, -300.0, 1e38]
    assert out_of_range.tolist() == [False] * 4 + [True] * 4 + [False] * 6
    assert bad.tolist() == [False] * 8 + [True] * 3 + [False] * 3
    assert np.isfinite(values).all()


# ---------------------------------------------------------------- neighbours never matter
@pytest.mark.parametrize("line, accepted", [
    (_with(1, "1234567890123456789"), True),   # 19 digits, inside int64
    (_with(1, "12345678901234567890"), False),  # outside int64: a bad cell, not a value
    (_with(1, "0x10"), False),
    (_with(1, " 5"), False),
    (_with(0, "01"), False),
    (_with(14, "ABCDEF01"), True),
])
def test_a_value_is_judged_alone_whatever_shares_its_chunk(tmp_path, line, accepted):
    alone = write_lines(tmp_path / "alone.txt", [line] + PAD)
    mixed = write_lines(tmp_path / "mixed.txt", [line, "garbage"] + PAD)
    a = preprocess_kaggle(alone, tmp_path / "a", hash_buckets=100)
    b = preprocess_kaggle(mixed, tmp_path / "b", hash_buckets=100)
    assert a["rows_skipped"] == (0 if accepted else 1)
    assert b["rows_skipped"] == a["rows_skipped"] + 1
    assert [e["line"] for e in b["skipped_examples"]] == ([2] if accepted else [1, 2])
    for meta in (a, b):
        assert meta["rows_read"] == meta["rows_written"] + meta["rows_skipped"]
    if accepted:
        np.testing.assert_array_equal(read_part(tmp_path / "a", "all")[1][0],
                                      read_part(tmp_path / "b", "all")[1][0])


def test_lone_cr_and_invalid_utf8_skip_one_line_each_and_strict_names_it(tmp_path):
    lines = PAD[:3] + [GOOD_ROW.replace("\t5\t", "\t5\r5\t", 1)] + PAD[:3] \
        + [GOOD_ROW.replace("68fd1e64", "68fd1e\xff")] + PAD
    path = tmp_path / "t.txt"
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    meta = preprocess_kaggle(path, tmp_path / "o", hash_buckets=10)
    assert meta["rows_read"] == len(lines) and meta["rows_skipped"] == 2
    assert meta["skip_reasons"] == {"carriage return inside a line": 1,
                                    "categorical is not 8 hex digits": 1}
    assert [e["line"] for e in meta["skipped_examples"]] == [4, 8]
    with pytest.raises(BadLineError, match=r"t\.txt:4: a carriage return"):
        preprocess_kaggle(path, tmp_path / "s", hash_buckets=10, strict=True)


TABLE = {"name": "t", "reader": "text", "delimiter": ",", "header": True,
         "label": {"column": "y"},
         "dense": [{"column": "x", "transform": "standardize"}],
         "categorical": [{"column": "c"}],
         "split": {"order": "file", "fractions": {"train": 0.8, "val": 0.2}}}


def test_stray_quote_skips_its_line_only(tmp_path):
    rows = [f"{k % 2},{k},c{k % 3}" for k in range(20)]
    rows[5] = '1,5,"c1'  # an unclosed quote
    rows[9] = '0,9,"c,0"'  # a quoted value with the delimiter inside
    path = tmp_path / "t.csv"
    path.write_text("y,x,c\n" + "\n".join(rows) + "\n")
    meta = preprocess_table(TableSchema.from_dict(TABLE), path, tmp_path / "o")
    assert meta["rows_read"] == 20 and meta["rows_written"] == 19 and meta["rows_skipped"] == 1
    assert meta["skip_reasons"] == {"unbalanced quote": 1}
    assert meta["skipped_examples"][0]["line"] == 7
    assert meta["rows"] == {"train": 15, "val": 4}


def test_invalid_utf8_in_a_table_is_one_bad_cell(tmp_path):
    rows = [f"{k % 2},{k},c{k % 3}".encode() for k in range(20)]
    rows[3] = b"1,3,caf\xe9"
    path = tmp_path / "t.csv"
    path.write_bytes(b"y,x,c\n" + b"\n".join(rows) + b"\n")
    meta = preprocess_table(TableSchema.from_dict(TABLE), path, tmp_path / "o")
    assert meta["rows_skipped"] == 1 and meta["skip_reasons"] == {"invalid text": 1}
    assert "caf\\xe9" in meta["skipped_examples"][0]["reason"]


def test_huge_numbers_are_bad_cells_and_standardize_stays_exact(tmp_path):
    xs = [float(k) for k in range(20)]
    cells = [str(x) for x in xs]
    cells[4], cells[11] = "1e200", "1e400"
    rows = [f"{k % 2},{c},c{k % 3}" for k, c in enumerate(cells)]
    path = tmp_path / "t.csv"
    path.write_text("y,x,c\n" + "\n".join(rows) + "\n")
    meta = preprocess_table(TableSchema.from_dict(TABLE), path, tmp_path / "o")
    assert meta["rows_skipped"] == 2 and meta["skip_reasons"] == {"number out of range": 2}
    kept = [x for k, x in enumerate(xs) if k not in (4, 11)]
    train = np.array(kept[:14])  # file order: the first 80% of the 18 good rows (14.4 -> 14)
    mean, std = train.mean(), train.std()
    assert meta["dense_stats"]["x"] == pytest.approx({"mean": mean, "std": std})
    dense = np.load(tmp_path / "o" / "parts" / "main" / "dense.npy")[:, 0]
    np.testing.assert_allclose(dense, (np.array(kept) - mean) / std, rtol=1e-6)
    assert np.isfinite(dense).all() and dense.std() > 0.5


# ---------------------------------------------------------------- messages, not tracebacks
def _cli_error(capsys, *argv: str) -> str:
    try:
        rc = main(list(argv))
    except SystemExit as exit_:  # argparse refusals
        rc = exit_.code
    assert rc == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_nonsense_flags_and_inputs_get_one_line_messages(tmp_path, capsys):
    good = write_lines(tmp_path / "train.txt", [GOOD_ROW] * 30)
    out = str(tmp_path / "o")
    kaggle = ["preprocess", "criteo-kaggle", "--input", str(good), "--out", out, "--quiet"]
    assert "chunk size in MiB must be at least 1" in _cli_error(capsys, *kaggle, "--chunk-mb",
                                                                "0")
    assert "hash buckets must be at least 1" in _cli_error(capsys, *kaggle, "--hash-buckets",
                                                           "0")
    assert "workers must be at least 1" in _cli_error(capsys, *kaggle, "--workers", "0")
    assert "fractions sum to 1.1" in _cli_error(capsys, *kaggle, "--split",
                                                "random:0.8,0.2,0.1")
    err = _cli_error(capsys, "preprocess", "criteo-kaggle", "--input", str(tmp_path), "--out",
                     out, "--quiet")
    assert f"input {tmp_path} is a directory" in err
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    err = _cli_error(capsys, "preprocess", "criteo-kaggle", "--input", str(fifo), "--out", out)
    assert "is not a regular file" in err
    assert "no such file" in _cli_error(capsys, "preprocess", "criteo-kaggle", "--input",
                                        str(tmp_path / "nope.txt"), "--out", out)
    days = tmp_path / "days"
    days.mkdir()
    tera = ["preprocess", "criteo-terabyte", "--input", str(days), "--out", out]
    assert "inverted" in _cli_error(capsys, *tera, "--days", "5-3")
    assert "not a directory" in _cli_error(capsys, "preprocess", "criteo-terabyte", "--input",
                                           str(good), "--out", out)
    assert "does not exist" in _cli_error(capsys, "preprocess", "table", "--schema",
                                          str(tmp_path / "none.json"), "--input", str(good),
                                          "--out", out)
    (tmp_path / "file").write_text("x")
    err = _cli_error(capsys, *kaggle[:-3], "--out", str(tmp_path / "file" / "sub"),
                     "--quiet")
    assert f"{tmp_path / 'file'} is a file, not a folder" in err
    assert not (tmp_path / "o").exists()


def test_disk_full_is_a_message_and_leaves_no_data_set(tmp_path, capsys, monkeypatch):
    import errno

    from dlrm.data import format as fmt

    good = write_lines(tmp_path / "train.txt", [GOOD_ROW] * 30)

    def full(self, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    monkeypatch.setattr(fmt.NpyAppender, "append", full)
    err = _cli_error(capsys, "preprocess", "criteo-kaggle", "--input", str(good), "--out",
                     str(tmp_path / "o"), "--quiet")
    assert "No space left on device" in err and "labels.npy" in err
    assert not (tmp_path / "o").exists()


def test_a_real_process_prints_the_message_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dlrm", "preprocess", "criteo-kaggle",
                           "--input", str(tmp_path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("dlrm preprocess: error: input ")
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- no validation split
def test_no_validation_split_is_refused_before_any_work(tmp_path, capsys):
    good = write_lines(tmp_path / "train.txt", [GOOD_ROW] * 30)
    err = _cli_error(capsys, "preprocess", "criteo-kaggle", "--input", str(good), "--out",
                     str(tmp_path / "o"), "--split", "random:0.9,0,0.1", "--quiet")
    assert "no validation split" in err
    write_lines(tmp_path / "days" / "day_0", [GOOD_ROW] * 5) if (tmp_path / "days").mkdir() \
        is None else None
    with pytest.raises(ValueError, match="no validation split"):
        preprocess_terabyte(tmp_path / "days", tmp_path / "o", days=[0], test_day=23)
    schema = TableSchema.from_dict({**TABLE, "split": {"order": "random",
                                                       "fractions": {"train": 0.8,
                                                                     "test": 0.2}}})
    path = tmp_path / "t.csv"
    path.write_text("y,x,c\n" + "\n".join(f"{k % 2},{k},c" for k in range(20)) + "\n")
    with pytest.raises(ValueError, match="no validation fraction"):
        preprocess_table(schema, path, tmp_path / "o")
    # A train/test table with a validation file is fine.
    preprocess_table(schema, {"main": path, "val": path}, tmp_path / "o")
    assert not (tmp_path / ".o.dlrm-build").exists()
    # Too few rows for the reference split's validation half: refused after parsing.
    tiny = write_lines(tmp_path / "tiny.txt", [GOOD_ROW] * 8)
    with pytest.raises(ValueError, match="no validation rows"):
        preprocess_kaggle(tiny, tmp_path / "tiny")
    assert not (tmp_path / "tiny").exists()
    assert math.isfinite(1.0)


def test_latin1_text_is_transcoded_once(tmp_path):
    from dlrm.data.pipeline.vocabulary import Vocabulary

    rows = [f"{k % 2},{k},{'café' if k % 2 else 'crème'}" for k in range(20)]
    path = tmp_path / "t.csv"
    path.write_bytes(("y,x,c\n" + "\n".join(rows) + "\n").encode("latin-1"))
    schema = TableSchema.from_dict({**TABLE, "encoding": "latin-1"})
    meta = preprocess_table(schema, path, tmp_path / "o")
    assert meta["rows_skipped"] == 0
    assert Vocabulary.load(tmp_path / "o" / "vocab").kept[0].to_pylist() == ["café", "crème"]
