"""Parsing raw Criteo lines: values against hand computation and a naive parser, bad input."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from criteo_naive_parser import naive_exact_ids, naive_parse
from criteo_samples import GOOD_ROW, KAGGLE_HEAD, LOW_CTR, read_part, require, write_lines

from dlrm.data.criteo import BadLineError, preprocess_kaggle, preprocess_terabyte
from dlrm.data.pipeline.parse import RowParser, cells_from_arrow, parse_hex32
from dlrm.data.pipeline.raw import parse_raw_file as parse_with_schema
from dlrm.data.pipeline.schema import load_schema
from dlrm.data.pipeline.vocabulary import Vocabulary

SCHEMA = load_schema("criteo-kaggle")
NAMES = [f"C{k}" for k in range(1, 27)]


def parse_block(block: bytes, first_line: int, source: str, strict: bool = False):
    return RowParser(SCHEMA).parse_text(block, source, strict, "\t", first_line + 1)


def parse_raw_file(path, vocab, **kw):
    return parse_with_schema(path, SCHEMA, vocab, **kw)


def _exact_vocab_of(path: Path) -> Vocabulary:
    text = path.read_text()
    rows, _ = naive_parse(text)
    columns = list(zip(*[r[2] for r in rows], strict=True))
    kept = [pa.array(np.array(sorted({v for v in c if v is not None}), dtype=np.uint32))
            for c in columns]
    return Vocabulary("exact", NAMES, ["hex32"] * 26, kept=kept)


def hash_vocab(buckets: int) -> Vocabulary:
    return Vocabulary("hash", NAMES, ["hex32"] * 26, hash_buckets=buckets)


def test_decode_hex8_values_and_errors():
    col = pa.array([b"00000000", b"ffffffff", b"68fd1e64", b"ABCDEF01", b"", b"1234567",
                    b"12345678a", b"g0000000"], pa.binary())
    values, empty, bad = parse_hex32(cells_from_arrow(col))
    assert values[:4].tolist() == [0, 0xFFFFFFFF, 0x68FD1E64, 0xABCDEF01]
    assert empty.tolist() == [False] * 4 + [True] + [False] * 3
    assert bad.tolist() == [False] * 5 + [True] * 3


def test_dense_transform_matches_hand_computation(tmp_path):
    # GOOD_ROW dense: 5, -3, empty, 0, 12, then eight 1s.
    block = (GOOD_ROW + "\n").encode()
    parsed = parse_block(block, 0, "x")
    expected = [math.log(6), 0.0, 0.0, 0.0, math.log(13)] + [math.log(2)] * 8
    np.testing.assert_allclose(parsed.dense[0], expected, rtol=1e-6)
    assert parsed.dense.dtype == np.float32
    assert parsed.labels.tolist() == [1]
    assert [c.values[0] for c in parsed.categorical[:3]] == [0x68FD1E64, 0, 0xABCDEF01]
    assert [c.empty[0] for c in parsed.categorical[:3]] == [False, True, False]


def test_parity_with_naive_parser_on_real_rows():
    path = require(KAGGLE_HEAD)
    vocab = _exact_vocab_of(path)
    fast = parse_raw_file(path, vocab)
    rows, skipped = naive_parse(path.read_text())
    ids, sizes = naive_exact_ids(rows)
    assert skipped == [] and fast.skips.count == 0
    assert fast.lines_read == len(rows) == 10_000
    assert fast.labels.tolist() == [r[0] for r in rows]
    np.testing.assert_allclose(fast.dense, np.array([r[1] for r in rows]), rtol=1e-6)
    np.testing.assert_array_equal(fast.ids, np.array(ids))
    assert vocab.table_sizes() == sizes


def test_parity_with_naive_parser_on_messy_input(tmp_path):
    real = require(LOW_CTR).read_text().splitlines()[:50]
    lines = list(real)
    lines[3] = lines[3].replace("\t", "\t\t", 1)  # 41 fields
    lines[7] = "x" + lines[7][1:]  # bad label
    fields = lines[9].split("\t")
    fields[2] = "12a"  # text in an integer field
    lines[9] = "\t".join(fields)
    fields = lines[11].split("\t")
    fields[20] = "zz"  # not 8 hex digits
    lines[11] = "\t".join(fields)
    lines[13] = ""  # empty line
    path = write_lines(tmp_path / "messy.txt", lines, final_newline=False)
    vocab = _exact_vocab_of(path)
    fast = parse_raw_file(path, vocab, chunk_bytes=4096)  # several blocks
    rows, skipped = naive_parse(path.read_text())
    assert skipped == [4, 8, 10, 12, 14]
    assert sorted(ex["line"] for ex in fast.skips.examples) == skipped
    assert fast.line_numbers.tolist() == [n for n in range(1, 51) if n not in skipped]
    assert fast.lines_read == 50 == len(rows) + fast.skips.count
    np.testing.assert_allclose(fast.dense, np.array([r[1] for r in rows]), rtol=1e-6)
    np.testing.assert_array_equal(fast.ids, np.array(naive_exact_ids(rows)[0]))


# ---------------------------------------------------------------- bad input, one case per test
PAD = 14  # good rows appended, so that the 7-day reference split has validation rows


def _preprocess(tmp_path: Path, lines: list[str], strict: bool = False, **kw) -> dict:
    path = write_lines(tmp_path / "train.txt", lines + [GOOD_ROW] * PAD, **kw)
    return preprocess_kaggle(path, tmp_path / "out", strict=strict, hash_buckets=1000)


def _check_accounting(meta: dict, read: int, skipped: int) -> None:
    assert meta["rows_read"] == read + PAD
    assert meta["rows_skipped"] == skipped
    assert meta["rows_read"] == meta["rows_written"] + meta["rows_skipped"]
    assert sum(meta["rows"].values()) == meta["rows_written"]


@pytest.mark.parametrize("bad_line, reason", [
    ("\t".join(GOOD_ROW.split("\t")[:-1]), "wrong number of fields"),  # 39 fields
    (GOOD_ROW + "\t00000001", "wrong number of fields"),  # 41 fields
    (GOOD_ROW.replace("\t5\t", "\tfive\t", 1), "not an integer"),
    (GOOD_ROW.replace("68fd1e64", "68fd1e6"), "categorical is not 8 hex digits"),
    (GOOD_ROW.replace("68fd1e64", "68fd1e6x"), "categorical is not 8 hex digits"),
    ("2" + GOOD_ROW[1:], "label is not 0 or 1"),
])
def test_bad_line_skipped_counted_and_located(tmp_path, bad_line, reason):
    meta = _preprocess(tmp_path, [GOOD_ROW] * 3 + [bad_line] + [GOOD_ROW] * 6)
    _check_accounting(meta, read=10, skipped=1)
    assert meta["skip_reasons"] == {reason: 1}
    example = meta["skipped_examples"][0]
    assert example["line"] == 4 and example["file"].endswith("train.txt")


@pytest.mark.parametrize("bad_line", [GOOD_ROW + "\tx", GOOD_ROW.replace("\t5\t", "\tfive\t", 1),
                                      GOOD_ROW.replace("68fd1e64", "68fd1e6x")])
def test_strict_stops_at_first_bad_line_naming_file_and_line(tmp_path, bad_line):
    with pytest.raises(BadLineError, match=r"train\.txt:5: "):
        _preprocess(tmp_path, [GOOD_ROW] * 4 + [bad_line, bad_line] + [GOOD_ROW] * 4,
                    strict=True)


def test_empty_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"train\.txt: no rows .*empty"):
        preprocess_kaggle(path, tmp_path / "out")


def test_last_line_without_newline_is_read(tmp_path):
    meta = _preprocess(tmp_path, [GOOD_ROW] * 7, final_newline=False)
    _check_accounting(meta, read=7, skipped=0)


def test_crlf_line_endings(tmp_path):
    meta = _preprocess(tmp_path, [GOOD_ROW] * 7, newline="\r\n")
    _check_accounting(meta, read=7, skipped=0)
    _, _, ids = read_part(tmp_path / "out", "all")
    # The last categorical must not carry the '\r': 0000000a -> 1 + 10 % 1000.
    assert ids[:, -1].tolist() == [11] * (7 + PAD)


def test_empty_lines_are_skipped_and_counted(tmp_path):
    meta = _preprocess(tmp_path, [GOOD_ROW, "", GOOD_ROW, "\r"] + [GOOD_ROW] * 5)
    _check_accounting(meta, read=9, skipped=2)
    assert [e["line"] for e in meta["skipped_examples"]] == [2, 4]
    assert {e["reason"] for e in meta["skipped_examples"]} == {"empty line"}


def test_gzip_input_equals_plain(tmp_path):
    lines = [GOOD_ROW] * 30
    plain = preprocess_kaggle(write_lines(tmp_path / "a.txt", lines), tmp_path / "o1")
    gz = tmp_path / "a.txt.gz"
    gz.write_bytes(gzip.compress((tmp_path / "a.txt").read_bytes()))
    zipped = preprocess_kaggle(gz, tmp_path / "o2")
    assert zipped["rows"] == plain["rows"]
    np.testing.assert_array_equal(read_part(tmp_path / "o1", "all")[1],
                                  read_part(tmp_path / "o2", "all")[1])


def test_truncated_gzip_keeps_complete_lines_and_counts_the_cut_one(tmp_path):
    real = require(LOW_CTR).read_bytes()
    whole = gzip.compress(real)
    gz = tmp_path / "day_0.gz"
    gz.write_bytes(whole[: len(whole) // 2])
    (tmp_path / "day_23").write_bytes(real[:20_000])
    meta = preprocess_terabyte(tmp_path, tmp_path / "out", days=[0, 23], hash_buckets=100)
    day0 = meta["inputs"][0]
    assert day0["truncated_gzip"] is True
    assert day0["skip_reasons"] == {"truncated gzip stream": 1}
    assert 0 < day0["rows_written"] < 1000
    assert day0["rows_read"] == day0["rows_written"] + 1
    # The kept rows are exactly the first lines of the file.
    rows, _ = naive_parse(real.decode())
    dense = read_part(tmp_path / "out", "day_0")[1]
    np.testing.assert_allclose(dense, [r[1] for r in rows[: day0["rows_written"]]],
                               rtol=1e-6)
    with pytest.raises(BadLineError, match="truncated"):
        preprocess_terabyte(tmp_path, tmp_path / "strict", days=[0, 23], hash_buckets=100,
                            strict=True)


def test_directory_missing_day_files_names_them(tmp_path):
    write_lines(tmp_path / "day_0", [GOOD_ROW] * 3)
    write_lines(tmp_path / "day_2", [GOOD_ROW] * 3)
    with pytest.raises(ValueError, match=r"missing day files for days \[1, 3, 4,"):
        preprocess_terabyte(tmp_path, tmp_path / "out", hash_buckets=10)
    meta = preprocess_terabyte(tmp_path, tmp_path / "out", days=[0, 2], test_day=2,
                               hash_buckets=10)
    assert meta["rows"] == {"train": 3, "test": 2, "val": 1}


def test_real_samples_pass_with_zero_rejects():
    vocab = hash_vocab(1000)
    for path in (KAGGLE_HEAD, LOW_CTR):
        rows = parse_raw_file(require(path), vocab)
        assert rows.skips.count == 0 and rows.lines_read == rows.line_numbers.size


def test_block_boundaries_do_not_change_results(tmp_path):
    """Tiny blocks (smaller than a line), gzip with two members, and strict mode's line
    number when the bad line is in a later block."""
    real = require(LOW_CTR).read_text().splitlines()[:40]
    path = write_lines(tmp_path / "a.txt", real)
    vocab = hash_vocab(1000)
    whole = parse_raw_file(path, vocab)
    for chunk in (100, 1000, 5000):
        part = parse_raw_file(path, vocab, chunk_bytes=chunk)
        np.testing.assert_array_equal(part.ids, whole.ids)
        assert part.line_numbers.tolist() == list(range(1, 41))
    data = path.read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 1
    gz = tmp_path / "a.txt.gz"
    gz.write_bytes(gzip.compress(data[:cut]) + gzip.compress(data[cut:]))
    np.testing.assert_array_equal(parse_raw_file(gz, vocab, chunk_bytes=1000).ids, whole.ids)
    bad = write_lines(tmp_path / "b.txt", real[:33] + ["bad"] + real[33:])
    with pytest.raises(BadLineError, match=r"b\.txt:34: "):
        parse_raw_file(bad, vocab, chunk_bytes=1000, strict=True)
