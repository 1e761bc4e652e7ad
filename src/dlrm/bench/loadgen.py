"""MLPerf Inference LoadGen driving a trained model: ``dlrm bench loadgen``.

The real LoadGen (``mlcommons-loadgen``, module ``mlperf_loadgen``) issues the queries, times
every sample and judges the run; this module supplies what LoadGen calls the query sample
library (QSL) and the system under test (SUT):

- QSL: the first ``samples`` rows of a data set split (synthetic, drawn from a profile, or a
  preprocessed folder through ``dlrm.data.open_data``), held in memory
  (``dlrm.bench.inputs.head_rows``); LoadGen's sample index k is row k. Every row is loaded
  up front, so ``performance_sample_count`` is the whole library and load/unload are no-ops.
- SUT: ``issue_queries`` only queues the samples; one worker thread takes up to
  ``batch_size`` queued samples at a time (waiting at most ``batch_wait_ms`` for a batch to
  fill when the queue runs dry), runs the model on their rows under ``torch.no_grad`` and
  answers each with its click probability (float32) through ``QuerySamplesComplete``.
  Offline hands over all samples in one query, so batches are full; in the Server scenario
  queries arrive one sample at a time (Poisson, ``target_qps``) and the batches grow with the
  backlog: dynamic batching.

LoadGen writes its own ``mlperf_log_summary.txt``, ``mlperf_log_detail.txt``,
``mlperf_log_accuracy.json`` and ``mlperf_log_trace.json`` into the output folder;
``read_summary`` parses the summary back and ``run_loadgen`` returns it with our one line:
samples/s, p50/p99 latency, VALID/INVALID. In accuracy mode (LoadGen's summary then has no
figures) every sample is answered once and ``accuracy_auc`` computes the AUC from LoadGen's
accuracy log (the scores LoadGen recorded), as MLPerf's accuracy scripts do.

Example:
    >>> result = run_loadgen("runs/dlrm-.../last.pt", LoadGenConfig(scenario="Server",
    ...                      target_qps=20_000), "loadgen-out")  # doctest: +SKIP
    >>> print(result["line"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlrm.bench.inputs import head_rows
from dlrm.bench.runner import autocast_context
from dlrm.extras import require
from dlrm.metrics import roc_auc
from dlrm.training.checkpoint import load_model

SCENARIOS = ("Offline", "Server")
SUMMARY_FILE = "mlperf_log_summary.txt"


def _loadgen():
    return require("mlperf_loadgen", "dlrm bench loadgen (MLPerf's LoadGen)", "loadgen",
                   "mlcommons-loadgen")


@dataclass
class LoadGenConfig:
    """A LoadGen run.

    Args:
        scenario: ``Offline`` (all samples at once: throughput) or ``Server`` (Poisson
            arrivals at ``target_qps`` under a latency bound).
        batch_size: most samples per model call.
        batch_wait_ms: how long the worker waits for more samples when fewer than a batch are
            queued (0: run what is there; the backlog batches itself under load).
        target_qps: Offline: LoadGen's expected QPS, which sizes its single query (None:
            twice the rate measured first on the serving thread, a second of full batches
            after a second of warm-up, so that the query outlasts ``min_duration_ms``).
            Server: the arrival rate (None: half the measured rate).
        latency_bound_ms, latency_percentile: Server: the bound that percentile of the
            sample latencies must meet for a VALID run (MLPerf Inference DLRM-v2: 60 ms at
            the 99th percentile).
        min_duration_ms, min_query_count: LoadGen's minimum run length (MLPerf submissions:
            600 s; the defaults here give a one-minute measurement).
        samples: rows in the query sample library.
        split: the data split they come from.
        accuracy: LoadGen's AccuracyOnly mode: every sample once, scores logged; the AUC is
            computed from LoadGen's accuracy log.
        precision: ``fp32`` or ``bf16`` (autocast).
        device: where the model runs (``cpu`` or ``cuda[:k]``); the QSL stays in host memory
            and each batch is copied over, as a server would.
        threads: torch intra-op threads (None: torch's default).
        seed: LoadGen's sample-order and schedule seeds.
    """

    scenario: str = "Offline"
    batch_size: int = 2048
    batch_wait_ms: float = 0.0
    target_qps: float | None = None
    latency_bound_ms: float = 60.0
    latency_percentile: float = 0.99
    min_duration_ms: int = 60_000
    min_query_count: int = 1
    samples: int = 100_000
    split: str = "val"
    accuracy: bool = False
    precision: str = "fp32"
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario {self.scenario!r}: expected one of {SCENARIOS}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision {self.precision!r}: expected fp32 or bf16")
        for name in ("batch_size", "samples", "min_query_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}: must be at least 1")
        if self.target_qps is not None and self.target_qps <= 0:
            raise ValueError(f"target_qps = {self.target_qps}: must be positive")
        if not 0 < self.latency_percentile < 1:
            raise ValueError(f"latency_percentile = {self.latency_percentile}: expected a "
                             f"fraction in (0, 1)")


class _SystemUnderTest:
    """Queues LoadGen's samples; a worker thread scores them in batches (see the module doc)."""

    def __init__(self, lg: Any, model: torch.nn.Module, rows: Any, cfg: LoadGenConfig,
                 calibrate_s: float = 0.0) -> None:
        self.lg, self.model, self.rows, self.cfg = lg, model, rows, cfg
        self.inbox: queue.Queue[list[Any] | None] = queue.Queue()
        self.batches = 0
        self.batched_samples = 0
        self.error: BaseException | None = None
        self.measured_rate = 0.0
        self.calibrate_s = calibrate_s
        self.ready = threading.Event()
        self.worker = threading.Thread(target=self._work, name="dlrm-loadgen-sut", daemon=True)
        self.worker.start()
        self.ready.wait()
        if self.error is not None:
            raise RuntimeError(f"the model failed on a batch: {self.error}") from self.error

    def issue_queries(self, samples: list[Any]) -> None:  # LoadGen's thread: return at once
        self.inbox.put(list(samples))

    def flush_queries(self) -> None:
        pass

    def score(self, indices: np.ndarray) -> np.ndarray:
        """Click probabilities (float32) of QSL rows ``indices``."""
        device = torch.device(self.cfg.device)
        batch = self.rows.rows(torch.from_numpy(indices)).to(device)
        with torch.no_grad(), autocast_context(device, self.cfg.precision):
            logits = self.model(batch.dense, batch.sparse)
        return torch.sigmoid(logits.float()).cpu().numpy()

    def _work(self) -> None:
        # The rate is measured on the serving thread itself: torch's intra-op threading, and
        # so the speed, differs between the main thread and others (measured here under load:
        # 4x between the main thread with 2 intra-op threads and this one).
        try:
            if self.calibrate_s > 0:
                count = self.rows.num_samples("train")
                self.measured_rate = measure_rate(self, count, min(self.cfg.batch_size, count),
                                                  self.calibrate_s)
        except BaseException as err:  # noqa: BLE001 - re-raised by __init__
            self.error = err
        finally:
            self.ready.set()
        if self.error is not None:
            return
        pending: list[Any] = []
        wait = self.cfg.batch_wait_ms / 1e3
        while True:
            if not pending:
                item = self.inbox.get()
                if item is None:
                    return
                pending.extend(item)
            deadline = time.perf_counter() + wait
            while len(pending) < self.cfg.batch_size:
                try:
                    timeout = deadline - time.perf_counter()
                    item = self.inbox.get(timeout=timeout) if timeout > 0 \
                        else self.inbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.inbox.put(None)  # finish this batch, then stop
                    break
                pending.extend(item)
            take, pending = pending[:self.cfg.batch_size], pending[self.cfg.batch_size:]
            try:
                scores = self.score(np.fromiter((q.index for q in take), dtype=np.int64,
                                                count=len(take)))
            except BaseException as err:  # noqa: BLE001 - reported after the test
                self.error = err
                scores = np.zeros(len(take), dtype=np.float32)
            base = scores.ctypes.data
            self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(q.id, base + 4 * i, 4)
                                          for i, q in enumerate(take)])
            self.batches += 1
            self.batched_samples += len(take)

    def stop(self) -> None:
        self.inbox.put(None)
        self.worker.join()


def measure_rate(sut: _SystemUnderTest, samples: int, batch_size: int,
                 seconds: float = 1.0) -> float:
    """Samples/s of full batches of random library rows scored back to back, with a response
    object per sample as in serving (for a small model those cost as much as the model),
    after as long a warm-up: what sizes Offline's query and Server's default arrival rate."""
    rng = np.random.default_rng(0)
    respond = sut.lg.QuerySampleResponse
    for _phase in ("warm-up", "measure"):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or done == 0:
            base = sut.score(rng.integers(0, samples, batch_size)).ctypes.data
            [respond(i, base + 4 * i, 4) for i in range(batch_size)]
            done += batch_size
    return done / (time.perf_counter() - start)


def read_summary(path: str | Path) -> dict[str, Any]:
    """The fields of LoadGen's ``mlperf_log_summary.txt`` this module reports: scenario,
    mode, ``samples_per_s`` (Offline "Samples per second", Server "Completed samples per
    second"), ``valid`` and the ``unmet`` constraints (e.g. "Min duration"), ``p50_ms`` /
    ``p90_ms`` / ``p99_ms`` latency, and every ``key : value`` line as ``fields``."""
    fields: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        match = re.match(r"^\s*([^:=]+?)\s*:\s*(.+?)\s*$", line)
        if match:
            fields.setdefault(match.group(1), match.group(2))
    rate_key = next((k for k in ("Samples per second", "Completed samples per second")
                     if k in fields), None)
    if rate_key is None or "Result is" not in fields:
        raise ValueError(f"{path}: not a LoadGen summary (no samples per second or result)")

    def ms(percentile: str) -> float | None:
        value = fields.get(f"{percentile} percentile latency (ns)")
        return int(value) / 1e6 if value is not None else None

    unmet = [k.replace(" satisfied", "") for k, v in fields.items()
             if k.endswith("satisfied") and v.upper().startswith("NO")]
    return {"scenario": fields.get("Scenario"), "mode": fields.get("Mode"),
            "samples_per_s": float(fields[rate_key]), "valid": fields["Result is"] == "VALID",
            "result": fields["Result is"], "unmet": unmet, "p50_ms": ms("50.00"),
            "p90_ms": ms("90.00"), "p99_ms": ms("99.00"), "fields": fields}


def accuracy_auc(accuracy_log: str | Path, labels: np.ndarray) -> tuple[float, int]:
    """AUC of the scores LoadGen logged in AccuracyOnly mode (``mlperf_log_accuracy.json``:
    per sample its QSL index and the response bytes in hex), against the rows' labels;
    returns (AUC, samples scored)."""
    entries = json.loads(Path(accuracy_log).read_text())
    index = np.array([e["qsl_idx"] for e in entries], dtype=np.int64)
    scores = np.array([np.frombuffer(bytes.fromhex(e["data"]), dtype=np.float32)[0]
                       for e in entries], dtype=np.float64)
    return roc_auc(torch.from_numpy(scores), torch.from_numpy(labels[index])), len(entries)


def _claim_output(out: Path) -> Path:
    """A fresh temporary folder beside ``out``: LoadGen writes there, and it becomes ``out``
    by one rename at the end. ``out`` must not exist yet, or be an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty folder; LoadGen's logs go "
                         f"to a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def run_loadgen(checkpoint: str | Path, cfg: LoadGenConfig, out_dir: str | Path,
                data: Any | None = None, data_label: str | None = None) -> dict[str, Any]:
    """Run LoadGen on the model in ``checkpoint``; returns LoadGen's summary with our line.

    Args:
        checkpoint: a ``dlrm train`` checkpoint (``dlrm.training.checkpoint.load_model``).
        cfg: the scenario and its settings (``LoadGenConfig``).
        out_dir: the folder for LoadGen's log files (must not exist, or be empty).
        data: the ``DataSource`` whose ``cfg.split`` rows are the QSL, or a function of the
            checkpoint's model config returning one (data drawn from a profile must fit the
            model's tables); default: the data the checkpoint was trained on, as ``dlrm eval``.
    """
    lg = _loadgen()
    out = Path(out_dir)
    tmp = _claim_output(out)
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        model, ckpt = load_model(checkpoint, cfg.device)
        if data is None:
            from dlrm.data import open_data

            data, data_label = open_data(ckpt["data_spec"]), data_label or "checkpoint's data"
        elif callable(data):
            data = data(ckpt["model_config"])
        rows = head_rows(data, cfg.split, cfg.samples)
        count = rows.num_samples("train")
        # accuracy mode answers every sample once, whatever the rate: nothing to size
        calibrate = cfg.target_qps is None and not cfg.accuracy
        sut = _SystemUnderTest(lg, model, rows, cfg, calibrate_s=1.0 if calibrate else 0.0)
        try:
            measured = sut.measured_rate or None
            settings = lg.TestSettings()
            settings.scenario = getattr(lg.TestScenario, cfg.scenario)
            settings.mode = lg.TestMode.AccuracyOnly if cfg.accuracy \
                else lg.TestMode.PerformanceOnly
            settings.min_duration_ms = cfg.min_duration_ms
            settings.min_query_count = cfg.min_query_count
            settings.performance_sample_count_override = count
            settings.qsl_rng_seed = settings.sample_index_rng_seed = cfg.seed
            settings.schedule_rng_seed = cfg.seed
            if cfg.scenario == "Offline":
                # LoadGen sizes its one query as expected QPS x min duration: an estimate
                # under the real rate ends the run early (INVALID), one over it only makes
                # the run longer, and the rate of a shared machine drifts: aim 2x high.
                target = cfg.target_qps or (2 * measured if measured else 1.0)
                settings.offline_expected_qps = target
            else:
                target = cfg.target_qps or (measured / 2 if measured else 1.0)
                settings.server_target_qps = target
                settings.server_target_latency_ns = int(cfg.latency_bound_ms * 1e6)
                settings.server_target_latency_percentile = cfg.latency_percentile
            log_output = lg.LogOutputSettings()
            log_output.outdir = str(tmp)
            log_output.copy_summary_to_stdout = False
            log_settings = lg.LogSettings()
            log_settings.log_output = log_output
            qsl = lg.ConstructQSL(count, count, lambda _s: None, lambda _s: None)
            handle = lg.ConstructSUT(sut.issue_queries, sut.flush_queries)
            started = time.perf_counter()
            try:
                lg.StartTestWithLogSettings(handle, qsl, settings, log_settings)
            finally:
                lg.DestroySUT(handle)
                lg.DestroyQSL(qsl)
            wall = time.perf_counter() - started
        finally:
            sut.stop()
        if sut.error is not None:
            raise RuntimeError(f"the model failed on a LoadGen batch: {sut.error}") \
                from sut.error
        if cfg.accuracy:  # LoadGen's summary has no figures in this mode: its scores do
            auc, scored = accuracy_auc(tmp / "mlperf_log_accuracy.json", rows.labels.numpy())
            result = {"scenario": cfg.scenario, "mode": "AccuracyOnly", "auc": auc,
                      "accuracy_samples": scored}
        else:
            result = read_summary(tmp / SUMMARY_FILE)
        if out.is_dir():
            out.rmdir()  # empty (checked): the published folder takes its place
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder
        raise
    finally:
        torch.set_num_threads(previous_threads)
    result.update({
        "out_dir": str(out), "checkpoint": str(checkpoint), "data": data_label,
        "model_kind": ckpt["model_kind"], "qsl_samples": count,
        "measured_samples_per_s": measured, "target_qps": target, "wall_seconds": wall,
        "batches": sut.batches,
        "mean_batch": sut.batched_samples / sut.batches if sut.batches else 0.0,
        "config": asdict(cfg)})
    result["line"] = summary_line(result)
    (out / "dlrm_loadgen.json").write_text(json.dumps(result, indent=1))
    return result


def summary_line(result: dict[str, Any]) -> str:
    """One line: scenario, samples/s, p50/p99 latency, VALID/INVALID (accuracy mode: AUC)."""
    if result["mode"] == "AccuracyOnly":
        line = (f"{result['scenario']} accuracy: AUC {result['auc']:.4f} over "
                f"{result['accuracy_samples']:,} samples")
    else:
        line = (f"{result['scenario']}: {result['samples_per_s']:,.0f} samples/s, "
                f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                f"{result['result']}")
        if result["unmet"]:
            line += f": {', '.join(result['unmet']).lower()} not satisfied"
    return line + f" (mean batch {result['mean_batch']:.0f}; LoadGen logs in {result['out_dir']})"
