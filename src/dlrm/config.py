"""Plain dataclass configs for the model and its training, and the reference's presets.

Architectures are written as the reference writes them: ``"13-512-256-64-16"`` for the bottom
MLP (input width first) and ``"512-256-1"`` for the top MLP (its input width is computed from
the interaction, so it is left out).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

# The 26 Criteo Kaggle table sizes with one id per distinct value (../shared/README.md).
CRITEO_KAGGLE_TABLE_SIZES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
    14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)


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
        interaction: ``"dot"`` (pairwise dot products, the paper's) or ``"cat"``.
        interaction_self: also include each vector's dot product with itself.

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
    # --- issue 7: embedding options (defaults: off) ---
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
        if self.interaction not in ("dot", "cat"):
            raise ValueError(f"interaction {self.interaction!r}: expected 'dot' or 'cat'")
        # --- issue 7: embedding options ---
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
    """The reference recipes: ``kaggle``, ``terabyte``, ``mlperf``, and ``tiny`` for tests.

    ``table_sizes`` defaults to the Criteo Kaggle sizes (``tiny``: 8 small tables);
    ``rows_cap`` caps every table (e.g. 100_000 to fit a laptop).
    """
    recipes = {
        "kaggle": (16, [512, 256, 64, 16], [512, 256, 1]),
        "terabyte": (64, [512, 256, 64], [512, 512, 256, 1]),
        "mlperf": (128, [512, 256, 128], [1024, 1024, 512, 256, 1]),
        "tiny": (8, [32, 8], [32, 16, 1]),
    }
    if name not in recipes:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(recipes)}")
    dim, bottom, top = recipes[name]
    if table_sizes is None:
        table_sizes = [200, 100, 500, 50, 1000, 20, 300, 80] if name == "tiny" \
            else list(CRITEO_KAGGLE_TABLE_SIZES)
    sizes = [min(n, rows_cap) if rows_cap else n for n in table_sizes]
    return DLRMConfig(table_sizes=sizes, embedding_dim=dim, bottom_mlp=[num_dense, *bottom],
                      top_mlp=top)


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
