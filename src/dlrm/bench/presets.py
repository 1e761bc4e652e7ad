"""Benchmark model shapes: the reference recipes plus MLPerf's multi-hot DCN-v2 setup.

``mlperf`` is the MLPerf DLRM (v1) recipe on Criteo Terabyte hashed to 40M rows; its 26 table
sizes are the reference DLRM's ``--max-ind-range=40000000`` list (``ln_emb`` of the MLPerf
"Criteo Terabyte MLPerf training" configuration). ``mlperf-dcnv2`` is MLPerf's DLRM-DCNv2
recipe (facebookresearch/dlrm ``torchrec_dlrm``, e.g.
``scripts/materialize_synthetic_multihot_dataset.py``, and MLCommons' run scripts): its
``--num_embeddings_per_feature`` list (not the v1 list: three tables rounded up to 40M, others
a few rows larger), multi-hot ``--multi_hot_sizes`` bags, D=128, dense arch 512-256-128, over
arch 1024-1024-512-256-1 and a 3-layer low-rank (512) cross network.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlrm.config import CRITEO_KAGGLE_TABLE_SIZES

# Criteo Terabyte, MLPerf hashing at 40M rows (reference DLRM, --max-ind-range=40000000).
MLPERF_TABLE_SIZES: tuple[int, ...] = (
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10,
    2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36,
)
# MLPerf DLRM-DCNv2 (--num_embeddings_per_feature of TorchRec's dlrm_v2 / MLCommons scripts).
MLPERF_DCNV2_TABLE_SIZES: tuple[int, ...] = (
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10,
    2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
)
# MLPerf DLRM-DCNv2 --multi_hot_sizes: ids per bag of each of the 26 features.
MLPERF_DCNV2_BAG_SIZES: tuple[int, ...] = (
    3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1,
)


@dataclass
class BenchPreset:
    """A benchmark shape: tables, D, MLPs (bottom with its input width), interaction, bags."""

    name: str
    table_sizes: tuple[int, ...]
    embedding_dim: int
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]
    interaction: str
    bag_sizes: tuple[int, ...]


PRESETS: dict[str, BenchPreset] = {
    "tiny": BenchPreset("tiny", (200, 100, 500, 50, 1000, 20, 300, 80), 8, (13, 32, 8),
                        (32, 16, 1), "dot", (1,) * 8),
    "kaggle": BenchPreset("kaggle", CRITEO_KAGGLE_TABLE_SIZES, 16, (13, 512, 256, 64, 16),
                          (512, 256, 1), "dot", (1,) * 26),
    "terabyte": BenchPreset("terabyte", CRITEO_KAGGLE_TABLE_SIZES, 64, (13, 512, 256, 64),
                            (512, 512, 256, 1), "dot", (1,) * 26),
    "mlperf": BenchPreset("mlperf", MLPERF_TABLE_SIZES, 128, (13, 512, 256, 128),
                          (1024, 1024, 512, 256, 1), "dot", (1,) * 26),
    "mlperf-dcnv2": BenchPreset("mlperf-dcnv2", MLPERF_DCNV2_TABLE_SIZES, 128,
                                (13, 512, 256, 128), (1024, 1024, 512, 256, 1), "dcnv2",
                                MLPERF_DCNV2_BAG_SIZES),
}


def get_preset(name: str) -> BenchPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown bench preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
