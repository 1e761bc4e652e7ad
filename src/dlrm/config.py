"""Plain dataclass configs for the DLRM model, and the one preset table of the project.

Architectures are written as the reference writes them: ``"13-512-256-64-16"`` for the bottom
MLP (input width first) and ``"512-256-1"`` for the top MLP (its input width is computed from
the interaction, so it is left out).

``PRESETS`` holds the recipes every command uses (``dlrm train``, ``dlrm bench``,
``dlrm compare``, ``dlrm plan``): embedding size, MLP widths, interaction, the tables of the
data set the recipe was made for, and its ids per bag. Other model kinds take their D and deep
widths from the same presets (``dlrm.models.registry``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

# The 26 Criteo Kaggle table sizes with one id per distinct value (../shared/README.md).
CRITEO_KAGGLE_TABLE_SIZES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
    14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
# Criteo Terabyte hashed to 40M rows: the reference DLRM's --max-ind-range=40000000 table
# sizes (``ln_emb`` of the MLPerf "Criteo Terabyte MLPerf training" configuration).
MLPERF_TABLE_SIZES: tuple[int, ...] = (
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10,
    2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36,
)
# MLPerf DLRM-DCNv2: --num_embeddings_per_feature of TorchRec's dlrm_v2 / MLCommons scripts
# (three tables rounded up to 40M, others a few rows larger than the v1 list).
MLPERF_DCNV2_TABLE_SIZES: tuple[int, ...] = (
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10,
    2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
)
# MLPerf DLRM-DCNv2 --multi_hot_sizes: ids per bag of each of the 26 features.
MLPERF_DCNV2_BAG_SIZES: tuple[int, ...] = (
    3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1,
)
# The reference's Terabyte recipe hashes ids to 10M rows (--max-ind-range=10000000).
TERABYTE_TABLE_SIZES: tuple[int, ...] = tuple(min(n, 10_000_000) for n in MLPERF_TABLE_SIZES)
TINY_TABLE_SIZES: tuple[int, ...] = (200, 100, 500, 50, 1000, 20, 300, 80)


@dataclass(frozen=True)
class Preset:
    """A recipe: model shape, the tables of its data set, ids per bag.

    Attributes:
        name: what ``--preset`` says.
        embedding_dim: D.
        bottom_mlp: hidden widths from the dense input to D (the input width is the data's).
        top_mlp: widths after the interaction, ending at 1.
        interaction: ``dot``, ``cat`` or ``cross`` (DLRM-DCNv2's low-rank cross network).
        table_sizes: the recipe's data set's tables (synthetic data and benchmarks use them;
            a real data set brings its own).
        bag_sizes: ids per bag of each table (1: one-hot).
        cross_layers, low_rank: the cross network of ``cross`` (MLPerf: 3 layers, rank 512).
        model: the model kind the recipe was made for.
        source: where the recipe comes from.
    """

    name: str
    embedding_dim: int
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]
    table_sizes: tuple[int, ...]
    bag_sizes: tuple[int, ...] | None = None
    interaction: str = "dot"
    cross_layers: int = 3
    low_rank: int | None = 512
    model: str = "dlrm"
    source: str = ""

    def bags(self) -> list[int]:
        return list(self.bag_sizes) if self.bag_sizes else [1] * len(self.table_sizes)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("tiny", 8, (32, 8), (32, 16, 1), TINY_TABLE_SIZES,
           source="small tables for tests and `make run`"),
    Preset("kaggle", 16, (512, 256, 64, 16), (512, 256, 1), CRITEO_KAGGLE_TABLE_SIZES,
           source="reference DLRM, Criteo Kaggle (run_and_time.sh --arch-sparse-feature-size=16)"),
    Preset("terabyte", 64, (512, 256, 64), (512, 512, 256, 1), TERABYTE_TABLE_SIZES,
           source="reference DLRM, Criteo Terabyte, ids hashed to 10M rows"),
    Preset("mlperf", 128, (512, 256, 128), (1024, 1024, 512, 256, 1), MLPERF_TABLE_SIZES,
           source="MLPerf DLRM (v1), Criteo Terabyte hashed to 40M rows"),
    Preset("mlperf-dcnv2", 128, (512, 256, 128), (1024, 1024, 512, 256, 1),
           MLPERF_DCNV2_TABLE_SIZES, MLPERF_DCNV2_BAG_SIZES, interaction="cross",
           model="dlrm_dcnv2",
           source="MLPerf DLRM-DCNv2, Criteo multi-hot (synthetic), 3 low-rank cross layers"),
)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def parse_arch(spec: str | list[int] | tuple[int, ...]) -> list[int]:
    """``"13-512-256"`` -> ``[13, 512, 256]``; lists pass through. Widths must be positive."""
    if isinstance(spec, str):
        try:
            widths = [int(part) for part in spec.strip().split("-") if part != ""]
        except ValueError as err:
            raise ValueError(f"architecture {spec!r}: expected widths like '13-512-256'") from err
    else:
        widths = [int(w) for w in spec]
    if not widths or any(w <= 0 for w in widths):
        raise ValueError(f"architecture {spec!r}: every width must be a positive integer")
    return widths


@dataclass
class DLRMConfig:
    """Shape of a DLRM.

    Args:
        table_sizes: rows of each categorical feature's embedding table (F tables).
        embedding_dim: D, the width of every embedding row and of the bottom MLP's output.
        bottom_mlp: widths from the dense input to D, e.g. ``[13, 512, 256, 64, 16]``.
        top_mlp: widths after the interaction, ending at 1, e.g. ``[512, 256, 1]``.
        interaction: ``"dot"`` (pairwise dot products, the paper's), ``"cat"``, or
            ``"cross"`` (a low-rank DCN-v2 cross network: MLPerf's DLRM-DCNv2).
        interaction_self: also include each vector's dot product with itself (``dot``).
        cross_layers, low_rank: the cross network of ``cross`` (MLPerf: 3 layers of rank 512;
            ``low_rank`` None: full rank).
        embedding_init: how embedding rows start (``dlrm.models.embeddings.RowInit.parse``):
            ``uniform`` (the reference's U(-sqrt(1/n), sqrt(1/n))), ``normal:SCALE``, ...

    Embedding options (docs/model-options.md; the defaults keep the plain fused tables):
        qr_threshold: tables with more rows than this use quotient-remainder embeddings
            (0: off).
        qr_collisions: c, the remainder table's rows; the quotient table has ceil(n/c).
        qr_operation: how the two pooled vectors combine: ``mult``, ``add`` or ``concat``.
        md_alpha: mixed dimensions by the power-law rule with temperature alpha (None: off).
        md_round_dims: round mixed dimensions to powers of two (the reference's option).
        max_ind_range: hash ids modulo this many rows at lookup time (0: off).
    """

    table_sizes: list[int]
    embedding_dim: int = 16
    bottom_mlp: list[int] = field(default_factory=lambda: [13, 512, 256, 64, 16])
    top_mlp: list[int] = field(default_factory=lambda: [512, 256, 1])
    interaction: str = "dot"
    interaction_self: bool = False
    cross_layers: int = 3
    low_rank: int | None = 512
    embedding_init: str = "uniform"
    # --- embedding options (defaults: off) ---
    qr_threshold: int = 0
    qr_collisions: int = 4
    qr_operation: str = "mult"
    md_alpha: float | None = None
    md_round_dims: bool = False
    max_ind_range: int = 0

    def __post_init__(self) -> None:
        self.bottom_mlp = parse_arch(self.bottom_mlp)
        self.top_mlp = parse_arch(self.top_mlp)
        self.table_sizes = [int(n) for n in self.table_sizes]
        self.validate()

    @property
    def num_dense(self) -> int:
        return self.bottom_mlp[0]

    @property
    def num_sparse(self) -> int:
        return len(self.table_sizes)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field that is wrong."""
        for k, n in enumerate(self.table_sizes):
            if n <= 0:
                raise ValueError(f"table_sizes[{k}] = {n}: every table needs at least one row")
        if self.embedding_dim <= 0:
            raise ValueError(f"embedding_dim = {self.embedding_dim}: must be positive")
        if len(self.bottom_mlp) < 2:
            raise ValueError(f"bottom_mlp {self.bottom_mlp}: needs an input width and an output")
        if self.bottom_mlp[-1] != self.embedding_dim:
            raise ValueError(
                f"bottom_mlp {'-'.join(map(str, self.bottom_mlp))} ends at {self.bottom_mlp[-1]},"
                f" but it must end at the embedding dimension D={self.embedding_dim}"
            )
        if self.top_mlp[-1] != 1:
            raise ValueError(f"top_mlp {self.top_mlp}: must end with width 1 (one logit)")
        if self.interaction not in ("dot", "cat", "cross"):
            raise ValueError(f"interaction {self.interaction!r}: expected dot, cat or cross")
        if self.cross_layers < 0:
            raise ValueError(f"cross_layers = {self.cross_layers}: must be >= 0")
        if self.low_rank is not None and self.low_rank <= 0:
            raise ValueError(f"low_rank = {self.low_rank}: must be positive (None: full rank)")
        # --- embedding options ---
        if self.qr_threshold < 0:
            raise ValueError(f"qr_threshold = {self.qr_threshold}: must be >= 0 (0: off)")
        if self.qr_collisions < 1:
            raise ValueError(f"qr_collisions = {self.qr_collisions}: must be >= 1")
        if self.qr_operation not in ("mult", "add", "concat"):
            raise ValueError(f"qr_operation {self.qr_operation!r}: expected mult, add or concat")
        if self.qr_threshold and self.qr_operation == "concat" and self.embedding_dim < 2:
            raise ValueError("qr_operation concat needs embedding_dim >= 2 (it splits D in two)")
        if self.md_alpha is not None and self.md_alpha < 0:
            raise ValueError(f"md_alpha = {self.md_alpha}: must be >= 0")
        if self.qr_threshold and self.md_alpha is not None:
            raise ValueError("qr_threshold and md_alpha cannot be combined: pick one of "
                             "quotient-remainder or mixed-dimension embeddings")
        if self.max_ind_range < 0:
            raise ValueError(f"max_ind_range = {self.max_ind_range}: must be >= 0 (0: off)")

    @property
    def lookup_table_sizes(self) -> list[int]:
        """Rows each table really has: ``min(n, max_ind_range)`` when hashing is on."""
        if not self.max_ind_range:
            return list(self.table_sizes)
        return [min(n, self.max_ind_range) for n in self.table_sizes]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DLRMConfig:
        return cls(**d)


def preset(name: str, table_sizes: list[int] | None = None, rows_cap: int | None = None,
           num_dense: int = 13) -> DLRMConfig:
    """The DLRM of preset ``name`` (``PRESETS``): ``tiny``, ``kaggle``, ``terabyte``, ``mlperf``
    or ``mlperf-dcnv2``.

    ``table_sizes`` defaults to the preset's own; ``rows_cap`` caps every table (e.g. 100_000
    to fit a laptop); ``num_dense`` is the dense input width.
    """
    p = get_preset(name)
    sizes = list(p.table_sizes if table_sizes is None else table_sizes)
    sizes = [min(n, rows_cap) if rows_cap else n for n in sizes]
    return DLRMConfig(table_sizes=sizes, embedding_dim=p.embedding_dim,
                      bottom_mlp=[num_dense, *p.bottom_mlp], top_mlp=list(p.top_mlp),
                      interaction=p.interaction, cross_layers=p.cross_layers,
                      low_rank=p.low_rank)


def with_tables(config: DLRMConfig, table_sizes: list[int]) -> DLRMConfig:
    """A copy of ``config`` with other table sizes."""
    return replace(config, table_sizes=list(table_sizes))


def dlrm_config_for_data(name: str, table_sizes: list[int], num_dense: int,
                         embedding_dim: int | None = None, bottom_mlp: str | None = None,
                         top_mlp: str | None = None, interaction: str | None = None,
                         interaction_self: bool = False) -> DLRMConfig:
    """A preset's DLRM shaped for a data set's tables and dense width, with overrides.

    ``bottom_mlp`` given without its input width (``"512-256-16"``) gets ``num_dense``
    prepended; with it (``"13-512-256-16"``), the first width must equal ``num_dense``.
    """
    cfg = preset(name, table_sizes=table_sizes, num_dense=num_dense)
    if embedding_dim is not None:
        cfg.embedding_dim = embedding_dim
    if bottom_mlp is not None:
        widths = parse_arch(bottom_mlp)
        if widths[0] != num_dense:
            widths = [num_dense, *widths]
        cfg.bottom_mlp = widths
    elif embedding_dim is not None:
        cfg.bottom_mlp = [*cfg.bottom_mlp[:-1], embedding_dim]
    if top_mlp is not None:
        cfg.top_mlp = parse_arch(top_mlp)
    if interaction is not None:
        cfg.interaction = interaction
    cfg.interaction_self = interaction_self
    cfg.validate()
    return cfg
