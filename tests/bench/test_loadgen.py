"""`dlrm bench loadgen`: MLPerf Inference's LoadGen (the real one) drives a trained model; the
suite reads back the files LoadGen wrote (its summary, detail and accuracy logs)."""

import json

import pytest
import torch

from dlrm.cli import main

pytest.importorskip("mlperf_loadgen", reason="mlcommons-loadgen is not installed: the optional "
                                              "extra `pip install 'dlrm[loadgen]'`")
from dlrm.bench.loadgen import read_summary  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("loadgen") / "run"
    assert main(["train", "--preset", "tiny", "--train-samples", "4096", "--val-samples",
                 "1024", "--batch-size", "256", "--optimizer", "adagrad", "--lr", "0.05",
                 "--quiet", "--out", str(run)]) == 0
    return run / "last.pt"


def detail(folder):
    """LoadGen's detail log: its ``:::MLLOG`` records by key."""
    out = {}
    for line in (folder / "mlperf_log_detail.txt").read_text().splitlines():
        if line.startswith(":::MLLOG "):
            record = json.loads(line[len(":::MLLOG "):])
            out[record["key"]] = record["value"]
    return out


def test_server_scenario_valid_at_its_target_rate(checkpoint, tmp_path, capsys):
    out = tmp_path / "server"
    rc = main(["bench", "loadgen", "--checkpoint", str(checkpoint), "--scenario", "Server",
               "--target-qps", "400", "--latency-bound-ms", "1000", "--min-duration-ms", "2000",
               "--samples", "1024", "--batch-size", "128", "--out", str(out)])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    summary = read_summary(out / "mlperf_log_summary.txt")  # LoadGen's own file
    assert summary["scenario"] == "Server" and summary["mode"] == "PerformanceOnly"
    assert summary["valid"] and summary["result"] == "VALID" and not summary["unmet"]
    # LoadGen's early stopping wants ~460 queries for a 99th percentile: 800 here
    assert summary["samples_per_s"] == pytest.approx(400, rel=0.15)  # Poisson arrivals
    assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= 1000
    assert line.startswith(f"Server: {summary['samples_per_s']:,.0f} samples/s, "
                           f"p50 {summary['p50_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms, "
                           f"VALID")
    records = detail(out)
    assert records["result_validity"] == "VALID"
    assert records["result_completed_samples_per_sec"] == pytest.approx(
        summary["samples_per_s"], rel=1e-3)
    assert records["result_99.00_percentile_latency_ns"] / 1e6 == pytest.approx(
        summary["p99_ms"])
    ours = json.loads((out / "dlrm_loadgen.json").read_text())
    assert ours["target_qps"] == 400 and ours["qsl_samples"] == 1024
    # every sample answered: the batches the SUT ran hold LoadGen's query count
    assert ours["batches"] * ours["mean_batch"] == pytest.approx(records["result_query_count"])


def test_offline_accuracy_mode_auc_from_loadgens_log(checkpoint, tmp_path, capsys):
    """AccuracyOnly: every sample of the library scored once; the AUC computed from the
    scores in LoadGen's accuracy log equals `evaluate` on the same rows."""
    from dlrm.bench.inputs import head_rows
    from dlrm.data import open_data
    from dlrm.metrics import roc_auc
    from dlrm.training.checkpoint import load_model

    out = tmp_path / "accuracy"
    rc = main(["bench", "loadgen", "--checkpoint", str(checkpoint), "--scenario", "Offline",
               "--accuracy", "--samples", "1000", "--batch-size", "256", "--min-duration-ms",
               "100", "--out", str(out)])
    assert rc == 0
    ours = json.loads((out / "dlrm_loadgen.json").read_text())
    entries = json.loads((out / "mlperf_log_accuracy.json").read_text())
    assert sorted(e["qsl_idx"] for e in entries) == list(range(1000))
    model, ckpt = load_model(checkpoint)
    rows = head_rows(open_data(ckpt["data_spec"]), "val", 1000)
    batch = next(rows.batches("train", 1000))
    with torch.no_grad():
        expected = roc_auc(model(batch.dense, batch.sparse), batch.labels)
    assert ours["accuracy_samples"] == 1000
    assert ours["auc"] == pytest.approx(expected, abs=1e-9)
    assert f"AUC {expected:.4f} over 1,000 samples" in capsys.readouterr().out


def test_offline_on_profile_data_and_output_folder_kept(checkpoint, tmp_path, capsys):
    from dlrm.data import open_data
    from dlrm.data.profile import fit_profile, save_profile
    from dlrm.training.checkpoint import load

    profile = tmp_path / "p.json"  # a profile of the data the model was trained on
    save_profile(fit_profile(open_data(load(checkpoint)["data_spec"]), "val"), profile)
    out = tmp_path / "offline"
    args = ["bench", "loadgen", "--checkpoint", str(checkpoint), "--profile", str(profile),
            "--samples", "2000", "--batch-size", "512", "--min-duration-ms", "300",
            "--out", str(out)]
    assert main(args) == 0
    summary = read_summary(out / "mlperf_log_summary.txt")
    ours = json.loads((out / "dlrm_loadgen.json").read_text())
    assert summary["scenario"] == "Offline" and ours["samples_per_s"] == summary["samples_per_s"]
    assert ours["data"].startswith("profile:") and ours["qsl_samples"] == 2000
    assert detail(out)["result_samples_per_second"] == pytest.approx(
        summary["samples_per_s"], rel=1e-3)
    # LoadGen's files are never written over: a second run into the folder is refused
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".offline")] == []


def test_read_summary_rejects_other_files(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("Scenario : Offline\n")
    with pytest.raises(ValueError, match="not a LoadGen summary"):
        read_summary(path)
