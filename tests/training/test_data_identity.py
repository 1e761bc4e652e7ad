"""Models and data must match: checkpoints record their data set's identity; eval, predict and
resume refuse another data set unless forced."""

from __future__ import annotations

import json
import shutil

import pytest

from dlrm.cli import main
from dlrm.config import preset
from dlrm.data import open_data
from dlrm.data.format import write_data_source
from dlrm.data.synthetic import SyntheticConfig, SyntheticData
from dlrm.training.checkpoint import load
from dlrm.training.data_identity import DataMismatch, check_same_data, data_identity

TINY = preset("tiny")


def folder(path, seed: int, **kw):
    """A preprocessed folder of planted data: same tables for every seed, other ids."""
    write_data_source(SyntheticData(SyntheticConfig(
        table_sizes=TINY.table_sizes, train_samples=4096, val_samples=1024, test_samples=0,
        seed=seed, **kw)), path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    a, b = folder(root / "a", seed=1), folder(root / "b", seed=2)
    run = root / "run"
    assert main(["train", "--preset", "tiny", "--data", str(a), "--batch-size", "128",
                 "--max-samples", "1280", "--threads", "1", "--quiet", "--out", str(run)]) == 0
    return {"a": a, "b": b, "run": run, "root": root}


def test_the_checkpoint_records_the_data_identity(trained):
    saved = load(trained["run"] / "last.pt")["data_identity"]
    assert saved == data_identity(open_data(str(trained["a"])))
    assert saved["schema"] == {"num_dense": 13, "num_tables": 8}
    assert saved["table_sizes"] == list(TINY.table_sizes)
    assert saved["fingerprint_of"].startswith("metadata.json of")
    config = json.loads((trained["run"] / "config.json").read_text())
    assert config["data_identity"] == saved
    # Same table sizes, another vocabulary: another fingerprint.
    other = data_identity(open_data(str(trained["b"])))
    assert other["table_sizes"] == saved["table_sizes"]
    assert other["fingerprint"] != saved["fingerprint"]


def test_eval_refuses_another_data_set_unless_forced(trained, capsys):
    ckpt = str(trained["run"] / "last.pt")
    assert main(["eval", "--checkpoint", ckpt]) == 0
    own = json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", ckpt, "--data", str(trained["a"])]) == 0
    assert json.loads(capsys.readouterr().out) == own
    assert main(["eval", "--checkpoint", ckpt, "--data", str(trained["b"])]) == 2
    err = capsys.readouterr().err
    assert f"{ckpt} was trained on {trained['a']}" in err and "another fingerprint" in err
    assert "--allow-data-mismatch" in err and err.count("\n") == 1
    assert main(["eval", "--checkpoint", ckpt, "--data", str(trained["b"]),
                 "--allow-data-mismatch"]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "accepted because of --allow-data-mismatch" \
        in captured.err
    assert json.loads(captured.out)["auc"] != own["auc"]


def test_predict_refuses_another_vocabulary_before_writing(trained, capsys, tmp_path):
    ckpt = str(trained["run"] / "last.pt")
    rows = tmp_path / "rows.tsv"
    rows.write_text("0\t" + "\t".join(["1"] * 13 + ["68fd1e64"] * 26) + "\n")
    scores = tmp_path / "scores.txt"
    assert main(["predict", "--checkpoint", ckpt, "--data", str(trained["b"]), "--input",
                 str(rows), "--out", str(scores)]) == 2
    assert "another fingerprint" in capsys.readouterr().err
    assert not scores.exists()
    assert main(["predict", "--checkpoint", ckpt, "--input", str(rows), "--out",
                 str(scores), "--batch-size", "-1"]) == 2
    assert "--batch-size -1: must be at least 1" in capsys.readouterr().err
    assert not scores.exists()


def test_another_schema_is_refused_even_when_forced(trained, tmp_path):
    narrow = folder(tmp_path / "narrow", seed=1, num_dense=5)
    saved = load(trained["run"] / "last.pt")["data_identity"]
    with pytest.raises(DataMismatch, match="another schema .5 dense, 8 tables instead of 13"):
        check_same_data(saved, open_data(str(narrow)), "ckpt", force=True)
    assert check_same_data(None, open_data(str(narrow)), "old.pt")[0].startswith(
        "old.pt records no data identity")


def test_resume_reads_a_moved_data_set_and_refuses_another(trained, capsys):
    root = trained["root"]
    run = root / "resumable"
    assert main(["train", "--preset", "tiny", "--data", str(trained["a"]), "--batch-size",
                 "128", "--max-samples", "1280", "--threads", "1", "--quiet",
                 "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--data", str(trained["b"]), "--epochs", "2",
                 "--max-samples", "2560", "--quiet"]) == 2
    assert "another fingerprint" in capsys.readouterr().err
    moved = shutil.copytree(trained["a"], root / "moved")
    assert main(["train", "--resume", str(run), "--data", str(moved), "--epochs", "2",
                 "--max-samples", "2560", "--quiet"]) == 0
    record = json.loads((run / "config.json").read_text())
    assert record["resumes"][-1]["changed"]["data"][1]["path"] == str(moved)
    assert record["data"]["path"] == str(moved) and record["args"]["data"] == str(moved)
