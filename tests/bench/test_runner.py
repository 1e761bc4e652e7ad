"""bench runs: the component step computes the same update as a plain step, the JSON output's
keys, the sweep's CSV columns, presets and the batch generator."""

import csv
import json

import pytest
import torch

from dlrm.bench.inputs import GeneratedBatches
from dlrm.bench.runner import BenchConfig, _Stepper, bench_model_config, model_shape, run_bench
from dlrm.bench.sweep import csv_columns, parse_vary
from dlrm.bench.timing import ComponentTimer
from dlrm.cli import main
from dlrm.config import MLPERF_DCNV2_BAG_SIZES, MLPERF_TABLE_SIZES
from dlrm.models import build_model
from dlrm.models.dlrm import DLRM

TINY = dict(preset="tiny", batch_size=64, warmup=1, trials=2, steps=1, quick_ceilings=True)


@pytest.mark.parametrize("bags", [None, 3])
def test_component_step_equals_fused_step(bags):
    """Cutting the graph per component must not change the gradients or the update."""
    cfg = BenchConfig(preset="tiny", ids_per_bag=bags, batch_size=32)
    config, bag_sizes = model_shape(cfg)
    batch = next(GeneratedBatches(config.table_sizes, bag_sizes, 13, 32, "planted", seed=3))
    models = []
    for kind in ("fused", "components"):
        torch.manual_seed(0)
        model = DLRM(config, check_inputs=False)
        stepper = _Stepper(model, iter([batch]), torch.device("cpu"), "fp32", "train", lr=0.5)
        stepper.fused() if kind == "fused" else stepper.components(
            ComponentTimer(torch.device("cpu")))
        models.append(model)
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    torch.manual_seed(0)
    untouched = DLRM(config)
    assert not torch.equal(untouched.embeddings.weight, models[0].embeddings.weight)


def test_run_bench_result_and_roofline():
    result = run_bench(BenchConfig(**TINY))
    assert result["samples_per_s"] > 0
    assert result["samples_per_s_min"] <= result["samples_per_s"] <= result["samples_per_s_max"]
    comps = result["components"]
    assert list(comps)[:2] == ["data", "to_device"] and "embedding_bwd" in comps
    for name in ("bottom_mlp_fwd", "embedding_fwd", "top_mlp_bwd", "embedding_bwd"):
        e = comps[name]
        assert e["ms_min"] <= e["ms"] <= e["ms_max"]
        assert e["bound"] in ("compute", "memory (stream)", "memory (gather)")
        assert e["fraction_of_bound"] > 0
    assert comps["embedding_fwd"]["bound"] == "memory (gather)"
    assert result["limiter"] in comps
    infer = run_bench(BenchConfig(**{**TINY, "mode": "infer", "ceilings": False}))
    assert set(infer["components"]) == {"data", "to_device", "bottom_mlp_fwd", "embedding_fwd",
                                        "interaction_fwd", "top_mlp_fwd"}


def test_run_bench_times_any_registered_kind():
    """Baselines from the registry get their step timed (no DLRM components to split)."""
    result = run_bench(BenchConfig(**{**TINY, "model": "dcnv2", "ceilings": False}))
    assert result["model_kind"] == "dcnv2" and result["samples_per_s"] > 0
    assert result["components"] == {} and result["model"]["cross_layers"] == 3


def test_cli_json_keys(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = main(["bench", "--preset", "tiny", "--batch-size", "32", "--warmup", "1",
               "--trials", "2", "--steps", "1", "--no-ceilings", "--quiet",
               "--json", str(path), "--out", str(tmp_path)])
    assert rc == 0
    result = json.loads(path.read_text())
    for key in ("samples_per_s", "step_ms", "components", "machine", "config", "model",
                "ceilings", "component_sum_ms", "bag_sizes"):
        assert key in result
    for key in ("cpu_model", "threads", "torch_version", "device_name"):
        assert key in result["machine"]
    assert all("ms" in c for c in result["components"].values())
    assert (tmp_path / "breakdown.png").stat().st_size > 1000
    assert "end to end" in capsys.readouterr().out


def test_cli_sweep_csv_columns(tmp_path):
    rc = main(["bench", "sweep", "--vary", "batch_size=16,32", "--preset", "tiny",
               "--warmup", "0", "--trials", "1", "--steps", "1", "--no-ceilings", "--quiet",
               "--out", str(tmp_path)])
    assert rc == 0
    with open(tmp_path / "sweep_batch_size.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == csv_columns()
    assert [int(r["value"]) for r in rows] == [16, 32]
    assert all(float(r["samples_per_s"]) > 0 and float(r["embedding_fwd_ms"]) > 0 for r in rows)
    assert (tmp_path / "sweep_batch_size.png").stat().st_size > 1000


def test_parse_vary_errors():
    assert parse_vary("zipf=0.5,1.2") == ("zipf", [0.5, 1.2])
    with pytest.raises(ValueError, match="can vary one of"):
        parse_vary("colour=1,2")
    with pytest.raises(ValueError, match="NAME=V1"):
        parse_vary("batch_size")


def test_presets():
    config, bags = model_shape(BenchConfig(preset="mlperf", table_rows_cap=None))
    assert config.table_sizes == list(MLPERF_TABLE_SIZES) and sum(bags) == 26
    assert config.bottom_mlp == [13, 512, 256, 128] and config.top_mlp == [1024, 1024, 512, 256, 1]
    kind, config, _, _ = bench_model_config(BenchConfig(preset="mlperf-dcnv2",
                                                        table_rows_cap=100))
    assert kind == "dlrm_dcnv2"  # the preset's model, from the one preset table
    model = build_model(kind, config)  # DLRM-DCNv2: the cat width feeds the cross network
    assert model.top_mlp.widths[0] == 27 * 128
    assert model.interaction.cross.low_rank == 512
    # Any registered kind builds from a bench config; DLRM's presets are `dlrm train`'s.
    kind, config, _, _ = bench_model_config(BenchConfig(preset="tiny", model="deepfm"))
    assert kind == "deepfm" and config["embedding_dim"] == 8 and config["deep_mlp"] == [32, 16]
    config, bags = model_shape(BenchConfig(preset="mlperf-dcnv2", interaction="dot",
                                           table_rows_cap=1000))
    assert bags == list(MLPERF_DCNV2_BAG_SIZES) and max(config.table_sizes) == 1000
    config, bags = model_shape(BenchConfig(preset="kaggle", num_tables=30, ids_per_bag=4,
                                           rows_per_table=77, embedding_dim=32))
    assert config.table_sizes == [77] * 30 and bags == [4] * 30
    assert config.bottom_mlp == [13, 512, 256, 64, 32]
    with pytest.raises(ValueError, match="needs a CUDA device"):
        BenchConfig(precision="fp16")
    # A data set's tables are its own: the cap (default 1M rows) would leave its ids outside.
    config, _ = model_shape(BenchConfig(preset="kaggle", table_rows_cap=1000), 13,
                            [5000, 20, 3_000_000])
    assert config.table_sizes == [5000, 20, 3_000_000]
    with pytest.raises(ValueError, match="rows_per_table cannot change the tables"):
        model_shape(BenchConfig(rows_per_table=10), 13, [5000, 20])


def test_generated_batches_layout_and_skew():
    gen = GeneratedBatches([1000, 7], [3, 1], 13, 500, "planted", zipf=1.2, seed=0)
    batch = next(gen)
    sp = batch.sparse
    assert sp.values.numel() == 500 * 4 and not sp.one_hot
    sp.validate([1000, 7])
    assert sp.lengths[:500].eq(3).all() and sp.lengths[500:].eq(1).all()
    first = sp.values[:1500]
    top_share = torch.unique(first, return_counts=True)[1].max().item() / 1500
    uniform = next(GeneratedBatches([1000, 7], [3, 1], 13, 500, "random", seed=0))
    top_uniform = torch.unique(uniform.sparse.values[:1500], return_counts=True)[1].max() / 1500
    assert top_share > 0.1 > top_uniform  # the power law concentrates accesses


def test_peer_torchrec_same_config():
    pytest.importorskip("torchrec", reason="TorchRec not installed (optional extra `peers`, "
                        "then pip install --no-deps torchrec==1.8.0)")
    from dlrm.bench.peers import run_peer

    out = run_peer("torchrec", BenchConfig(preset="tiny", batch_size=64, warmup=1, trials=2,
                                           steps=1))
    assert out["samples_per_s"] > 0 and out["ours_over_peer"] > 0
    with pytest.raises(ValueError, match="dot interaction only"):
        run_peer("torchrec", BenchConfig(preset="tiny", interaction="cat"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
def test_cuda_bench_runs_with_events(precision):
    result = run_bench(BenchConfig(**{**TINY, "device": "cuda", "precision": precision}))
    assert result["samples_per_s"] > 0 and result["machine"]["device_name"]
    assert all(c["ms"] >= 0 for c in result["components"].values())
    assert "matmul_fp16_gflops" in result["ceilings"]
    # The dense layers are timed as bare GEMMs on the GPU too, against the precision's peak.
    assert result["peak"]["peak_gflops"] == result["ceilings"][f"matmul_{precision}_gflops"]
    assert len(result["layers"]) == 5 and all(r["fwd_ms"] > 0 for r in result["layers"])
    assert 0 < result["peak"]["fraction_of_peak"] < 1


def test_fraction_of_peak_counts_every_dense_layer(capsys):
    """The step's fraction of the matmul peak: FLOPs per sample counted by hand from the tiny
    preset's layer widths (no input gradient for the first bottom layer), times samples/s,
    over the peak measured in the same run; one table row per nn.Linear; for every kind."""
    from dlrm.bench.layers import layer_flops
    from dlrm.bench.report import format_result

    result = run_bench(BenchConfig(**TINY))
    model = build_model("dlrm", result["model"])
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert [r["name"] for r in result["layers"]] == [n for n, _ in linears]
    batch = TINY["batch_size"]
    flops = 0
    for name, m in linears:
        k, n = m.in_features, m.out_features
        first = name == "bottom_mlp.0"
        flops += (2 * batch * k * n + batch * n) * 2 + (0 if first else 2 * batch * k * n)
        assert layer_flops(batch, k, n, not first) == (2 * batch * k * n + batch * n,
                                                      2 * batch * k * n * (1 if first else 2)
                                                      + batch * n)
    peak = result["peak"]
    assert peak["matmul_flops_per_sample"] == pytest.approx(flops / batch)
    assert peak["fraction_of_peak"] == pytest.approx(
        result["samples_per_s"] * flops / batch / 1e9 / result["ceilings"]["matmul_fp32_gflops"])
    assert peak["model_fraction_of_peak"] == pytest.approx(
        result["model_samples_per_s"] * flops / batch / 1e9
        / result["ceilings"]["matmul_fp32_gflops"])
    # Both measured; which is larger is a speed claim (docs/benchmarks.md), and at this tiny
    # shape a loaded machine's timing noise can order them either way.
    assert peak["fraction_of_peak"] > 0 and peak["gemm_fraction_of_peak"] > 0
    for row in result["layers"]:
        assert row["fwd_ms"] > 0 and row["bwd_ms"] > 0 and row["bound"] in (
            "compute", "memory (stream)")
    text = format_result(result)
    assert "of the fp32 matmul peak" in text and "bottom_mlp.0" in text
    infer = run_bench(BenchConfig(**{**TINY, "mode": "infer"}))
    assert infer["peak"]["matmul_flops_per_sample"] == pytest.approx(
        sum(2 * m.in_features * m.out_features + m.out_features for _, m in linears))
    assert "bwd_ms" not in infer["layers"][0]
    dcn = run_bench(BenchConfig(**{**TINY, "model": "dcnv2"}))
    assert dcn["layers"] and dcn["peak"]["fraction_of_peak"] > 0


def test_int8_inference_bench_runs_the_int8_mlps_against_the_int8_peak():
    """--precision int8: the MLPs' hidden layers are the int8 kernels (calibrated on the
    bench's batches) and count against the int8 GEMM peak measured in the same run; each
    MLP's last layer, float, against the fp32 peak. Training in int8 is refused."""
    from dlrm.bench.report import format_result

    result = run_bench(BenchConfig(**{**TINY, "mode": "infer", "precision": "int8"}))
    assert result["ceilings"]["matmul_int8_gflops"] > 0
    by_name = {r["name"]: r for r in result["layers"]}
    model = build_model("dlrm", result["model"])
    hidden = len(model.top_mlp.linears()) - 1
    assert [by_name[f"top_mlp.hidden.{i}"]["precision"] for i in range(hidden)] == \
        ["int8"] * hidden
    assert by_name["top_mlp.last"]["precision"] == "fp32"
    row = by_name["top_mlp.hidden.0"]
    assert row["fwd_fraction"] == pytest.approx(
        row["fwd_flops"] / row["fwd_ms"] / 1e6 / result["ceilings"]["matmul_int8_gflops"])
    peak = result["peak"]
    assert peak["peak_gflops"] == result["ceilings"]["matmul_int8_gflops"]
    assert peak["fraction_of_peak"] == pytest.approx(
        result["samples_per_s"] * peak["matmul_flops_per_sample"] / 1e9 / peak["peak_gflops"])
    assert "int8 layers: fraction of the int8 GEMM peak" in format_result(result)
    with pytest.raises(ValueError, match="precision int8 is inference on the CPU"):
        BenchConfig(**{**TINY, "precision": "int8"})
