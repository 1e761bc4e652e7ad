"""Peers, side by side: TorchRec's DLRM on the same config and batches, in the same run.

``run_peer("torchrec", cfg)`` builds ``torchrec.models.dlrm.DLRM`` (an ``EmbeddingBagCollection``
with one table per feature, the same bottom and top MLPs) and wraps it in
``DistributedModelParallel`` on a one-process gloo group, as TorchRec trains it: the tables
become FBGEMM table-batched embeddings whose SGD update is fused into the backward pass
(``apply_optimizer_in_backward``), the dense part gets ``torch.optim.SGD``. It then times
TorchRec's fused step and ours on the same batches, alternating trial by trial so load
changes on a shared machine hit both alike. Needs the ``peers`` extra (see pyproject.toml).
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from typing import Any

import torch

from dlrm.bench.inputs import GeneratedBatches, cycle_batches
from dlrm.bench.runner import BenchConfig, _Stepper, autocast_context, model_shape
from dlrm.bench.timing import synchronize
from dlrm.features import Batch
from dlrm.models import DLRM

PEERS = ("torchrec",)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_peer(name: str, cfg: BenchConfig, data: Any | None = None) -> dict[str, Any]:
    """Time peer ``name`` against our model on the same batches; returns samples/s and ratio."""
    if name not in PEERS:
        raise ValueError(f"peer {name!r}: expected one of {PEERS}")
    try:
        import torch.distributed as dist
        from torchrec.distributed import DistributedModelParallel
        from torchrec.models.dlrm import DLRM as TorchRecDLRM
        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.embedding_modules import EmbeddingBagCollection
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    except ImportError as err:
        raise RuntimeError(
            f"--peer torchrec needs TorchRec and FBGEMM ({err}); install the extra: "
            "pip install -e '.[peers]' && pip install --no-deps torchrec==1.8.0") from err
    if cfg.mode != "train":
        raise ValueError("--peer torchrec times training steps; use --mode train")
    if cfg.interaction not in (None, "dot"):
        raise ValueError("--peer torchrec: TorchRec's DLRM has the dot interaction only")
    device = torch.device(cfg.device)
    if data is not None:
        config, _ = model_shape(cfg, data.num_dense, list(data.table_sizes))
        batches = cycle_batches(data, cfg.batch_size)
    else:
        config, bags = model_shape(cfg)
        batches = GeneratedBatches(config.table_sizes, bags, config.num_dense, cfg.batch_size,
                                   cfg.ids, cfg.zipf, cfg.seed)
    created_group = False
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(_free_port())
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0,
                                world_size=1)
        created_group = True
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        keys = [f"f{k}" for k in range(config.num_sparse)]
        tables = [EmbeddingBagConfig(num_embeddings=n, embedding_dim=config.embedding_dim,
                                     name=f"t{k}", feature_names=[keys[k]])
                  for k, n in enumerate(config.table_sizes)]
        ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
        peer = TorchRecDLRM(ebc, config.num_dense, config.bottom_mlp[1:], config.top_mlp,
                            dense_device=device)
        apply_optimizer_in_backward(torch.optim.SGD, peer.sparse_arch.parameters(),
                                    {"lr": cfg.lr})
        peer = DistributedModelParallel(peer, device=device)
        dense_params = [p for n, p in peer.named_parameters() if "embedding_bag" not in n]
        peer_opt = torch.optim.SGD(dense_params, lr=cfg.lr)
        ours = _Stepper(DLRM(config, check_inputs=False).to(device), batches, device,
                        cfg.precision, "train", cfg.lr)

        def peer_step() -> None:
            batch: Batch = next(batches).to(device)
            kjt = KeyedJaggedTensor(keys=keys, values=batch.sparse.values,
                                    lengths=batch.sparse.lengths.to(torch.int32))
            with autocast_context(device, cfg.precision):
                logits = peer(batch.dense, kjt).squeeze(1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(),
                                                                        batch.labels)
            peer_opt.zero_grad()
            loss.backward()
            peer_opt.step()

        def timed(step) -> float:
            synchronize(device)
            t0 = time.perf_counter()
            step()
            synchronize(device)
            return (time.perf_counter() - t0) * 1e3

        for _ in range(cfg.warmup):
            timed(peer_step)
            ours.fused()
        peer_trials, our_trials = [], []
        for _ in range(cfg.trials):
            peer_trials.append(statistics.fmean(timed(peer_step) for _ in range(cfg.steps)))
            our_trials.append(statistics.fmean(ours.fused() for _ in range(cfg.steps)))
    finally:
        torch.set_num_threads(previous_threads)
        if created_group:
            dist.destroy_process_group()
    import torchrec

    peer_ms, our_ms = statistics.median(peer_trials), statistics.median(our_trials)
    return {
        "peer": name, "version": torchrec.__version__,
        "samples_per_s": cfg.batch_size / peer_ms * 1e3,
        "step_ms": {"median": peer_ms, "min": min(peer_trials), "max": max(peer_trials)},
        "ours_samples_per_s_same_trials": cfg.batch_size / our_ms * 1e3,
        "ours_over_peer": peer_ms / our_ms,
        "setup": "DistributedModelParallel, 1 process, FBGEMM TBE with SGD fused in backward",
    }
