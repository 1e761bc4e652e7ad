"""Predict (raw lines -> one probability per line), AUC, the data CLI commands, synth TSV."""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np
import pytest
import torch
from criteo_naive_parser import naive_parse
from criteo_samples import (
    GOOD_ROW,
    KAGGLE_HEAD,
    KAGGLE_HEAD_TEST,
    KAGGLE_SPREAD,
    require,
    write_lines,
)

from dlrm.cli import data as data_cli
from dlrm.config import preset
from dlrm.data.criteo import preprocess_kaggle
from dlrm.data.criteo_synth import write_criteo_tsv
from dlrm.data.loader import MemmapDataSource
from dlrm.data.predict import score_raw_file, write_scores
from dlrm.models.dlrm import DLRM


class FirstDenseModel(torch.nn.Module):
    """logit = first dense feature - 1: predictable scores for checking alignment."""

    def forward(self, dense, sparse):
        assert sparse.one_hot and sparse.num_features == 26
        return dense[:, 0] - 1.0


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> MemmapDataSource:
    out = tmp_path_factory.mktemp("predict") / "head"
    preprocess_kaggle(require(KAGGLE_HEAD), out, min_count=2)
    return MemmapDataSource(out)


def test_scores_align_with_input_lines_and_bad_lines_get_nan(head, tmp_path):
    lines = [GOOD_ROW, GOOD_ROW.replace("\t5\t", "\t1\t", 1), "broken", GOOD_ROW]
    path = write_lines(tmp_path / "new.txt", lines)
    result = score_raw_file(FirstDenseModel(), head, path)
    expected = 1 / (1 + np.exp(-(np.log([6, 2, 6]) - 1.0)))
    np.testing.assert_allclose(result.probabilities[[0, 1, 3]], expected, rtol=1e-6)
    assert np.isnan(result.probabilities[2])
    assert result.report["rows_read"] == 4 and result.report["rows_skipped"] == 1
    assert result.labels.tolist() == [1, 1, -1, 1]
    write_scores(tmp_path / "s.txt", result.probabilities)
    assert (tmp_path / "s.txt").read_text().splitlines()[2] == "nan"
    with pytest.raises(ValueError, match="new.txt:3"):
        score_raw_file(FirstDenseModel(), head, path, strict=True)


def test_dlrm_scores_real_rows_in_both_formats(head):
    config = preset("tiny", table_sizes=head.table_sizes)
    model = DLRM(config).eval()
    labeled = score_raw_file(model, head, require(KAGGLE_SPREAD))
    assert labeled.probabilities.shape == (4370,)
    assert np.isfinite(labeled.probabilities).all()
    assert 0.0 <= labeled.report["auc"] <= 1.0
    assert labeled.report["positives"] == sum(r[0] for r in naive_parse(
        KAGGLE_SPREAD.read_text())[0])
    unlabeled = score_raw_file(model, head, require(KAGGLE_HEAD_TEST))
    assert unlabeled.labels is None and "auc" not in unlabeled.report
    assert unlabeled.probabilities.shape == (10_000,)
    assert unlabeled.report["unseen_values"] > 0


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="dlrm")
    data_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_synth_then_preprocess(tmp_path, capsys):
    tsv = tmp_path / "synth.tsv"
    assert _cli("synth", "--format", "criteo-tsv", "--rows", "3000", "--out", str(tsv),
                "--quiet") == 0
    assert _cli("preprocess", "criteo-kaggle", "--input", str(tsv), "--out",
                str(tmp_path / "o"), "--hash-buckets", "1000", "--quiet") == 0
    out = capsys.readouterr().out
    assert "train         2,572 rows" in out and "skipped 0" in out and "lines/s" in out
    source = MemmapDataSource(tmp_path / "o")
    assert source.num_samples("train") + source.num_samples("test") + source.num_samples(
        "val") == 3000


def test_cli_strict_error_names_the_line(tmp_path, capsys):
    path = write_lines(tmp_path / "t.txt", [GOOD_ROW, "oops", GOOD_ROW])
    assert _cli("preprocess", "criteo-kaggle", "--input", str(path), "--out",
                str(tmp_path / "o"), "--strict", "--quiet") == 2
    assert "t.txt:2: 1 fields, expected 40" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_synth_tsv_looks_like_criteo(tmp_path):
    path = tmp_path / "s.tsv"
    counts = write_criteo_tsv(path, 20_000, seed=3, chunk_rows=7_000)
    text = path.read_text()
    rows, skipped = naive_parse(text)
    assert skipped == [] and len(rows) == counts["rows"] == 20_000
    share = counts["positives"] / 20_000
    assert 0.18 < share < 0.32 and share == np.mean([r[0] for r in rows])
    fields = [line.split("\t") for line in text.splitlines()[:2000]]
    assert any(f[k] == "" for f in fields for k in range(1, 14))  # empty integers
    assert any(f[k].startswith("-") for f in fields for k in range(1, 14))  # negatives
    assert any(f[k] == "" for f in fields for k in range(14, 40))  # empty categoricals
    column = [r[2][0] for r in rows if r[2][0] is not None]
    top = np.unique(column, return_counts=True)[1].max()
    assert top > 0.02 * len(column)  # power law: the top value is common
    assert write_criteo_tsv(tmp_path / "b.tsv", 100, seed=3, with_label=False)["rows"] == 100
    assert naive_parse((tmp_path / "b.tsv").read_text(), has_label=False)[1] == []


def test_cli_predict_writes_one_probability_per_line(head, tmp_path, capsys):
    """`dlrm predict` with a real checkpoint whose data spec and identity name the
    preprocessed folder; a model trained on synthetic data needs --data."""
    from dlrm.training.checkpoint import FORMAT, save_atomic
    from dlrm.training.data_identity import data_identity

    config = preset("tiny", table_sizes=head.table_sizes)
    model = DLRM(config).eval()

    def checkpoint(name: str, spec: dict, identity: dict | None) -> str:
        path = tmp_path / name
        save_atomic({"format": FORMAT, "model_kind": "dlrm", "model_config": config.to_dict(),
                     "model": model.state_dict(), "data_spec": spec,
                     "data_identity": identity}, path)
        return str(path)

    scores = tmp_path / "scores.txt"
    real = checkpoint("real.pt", head.spec(), data_identity(head))
    assert _cli("predict", "--checkpoint", real, "--input", str(require(KAGGLE_SPREAD)),
                "--out", str(scores)) == 0
    values = np.loadtxt(scores)
    assert values.shape == (4370,) and ((values > 0) & (values < 1)).all()
    out = capsys.readouterr().out
    assert "wrote 4,370 probabilities" in out and "AUC 0." in out
    synthetic = checkpoint("synthetic.pt", {"kind": "synthetic"}, None)
    assert _cli("predict", "--checkpoint", synthetic, "--input", str(KAGGLE_SPREAD),
                "--out", str(scores)) == 2


def test_cli_renders_progress_bars_with_rate(tmp_path, capsys):
    tsv = tmp_path / "synth.tsv"
    write_criteo_tsv(tsv, 3000, seed=1)
    assert _cli("preprocess", "criteo-kaggle", "--input", str(tsv), "--out",
                str(tmp_path / "o")) == 0
    err = capsys.readouterr().err
    assert "read synth.tsv" in err and "B/s" in err  # bytes read, with a rate
    assert "vocabulary" in err and "26/26" in err


HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="needs the optional extra `onnx` "
                                "(onnx, onnxscript, onnxruntime)")


def _checkpoint(path, kind: str, head: MemmapDataSource) -> str:
    from dlrm.models import build_model, model_config_for
    from dlrm.training.checkpoint import FORMAT, save_atomic
    from dlrm.training.data_identity import data_identity

    config = model_config_for(kind, "tiny", head.table_sizes, head.num_dense)
    torch.manual_seed(0)
    model = build_model(kind, config)
    save_atomic({"format": FORMAT, "model_kind": kind, "model_config": config,
                 "model": model.state_dict(), "data_spec": head.spec(),
                 "data_identity": data_identity(head)}, path)
    return str(path)


@needs_onnx
def test_cli_predict_on_onnxruntime_writes_the_pytorch_scores(head, tmp_path, capsys):
    """`dlrm predict --backend onnxruntime` (a fresh export, or the file of `dlrm export
    --format onnx`) writes the scores file of `--backend pytorch`, line for line, NaN for the
    same unparseable lines; a file of other tables is refused."""
    from dlrm.cli import main

    lines = require(KAGGLE_SPREAD).read_text().splitlines()[:600]
    lines[7] = "broken"
    raw = write_lines(tmp_path / "rows.txt", lines)
    checkpoint = _checkpoint(tmp_path / "last.pt", "dcnv2", head)
    scores = {}
    for backend, extra in (("pytorch", []), ("onnxruntime", []),
                           ("onnxruntime-file", ["--onnx", str(tmp_path / "m.onnx")])):
        if extra:
            assert main(["export", "--checkpoint", checkpoint, "--out", str(tmp_path / "m.onnx"),
                         "--format", "onnx"]) == 0
        out = tmp_path / f"{backend}.txt"
        assert main(["predict", "--checkpoint", checkpoint, "--input", str(raw), "--out",
                     str(out), "--backend", backend.split("-")[0], *extra]) == 0
        printed = capsys.readouterr().out
        assert "wrote 600 probabilities" in printed
        assert ("(ONNX Runtime)" in printed) == backend.startswith("onnxruntime")
        scores[backend] = np.loadtxt(out)
        assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no leftovers
    eager = scores["pytorch"]
    assert np.isnan(eager[7]) and np.isfinite(np.delete(eager, 7)).all()
    assert np.nanstd(eager) > 1e-2  # the rows get different scores: a real comparison
    for backend in ("onnxruntime", "onnxruntime-file"):
        np.testing.assert_allclose(scores[backend], eager, atol=1e-5, rtol=0)
        assert np.isnan(scores[backend][7])

    other = preset("tiny")  # tables that are not the vocabulary's
    from dlrm.export import export_model

    export_model(DLRM(other), 13, other.table_sizes, "onnx", tmp_path / "other.onnx")
    assert main(["predict", "--checkpoint", checkpoint, "--input", str(raw), "--out",
                 str(tmp_path / "x.txt"), "--backend", "onnxruntime", "--onnx",
                 str(tmp_path / "other.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other.onnx: a model of 13 dense features and tables " \
        "[200, 100" in err
    assert main(["predict", "--checkpoint", checkpoint, "--input", str(raw), "--out",
                 str(tmp_path / "x.txt"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "--onnx FILE is run by --backend onnxruntime" in capsys.readouterr().err
    assert not (tmp_path / "x.txt").exists()
