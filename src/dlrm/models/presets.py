"""Config dicts for every model kind from one DLRM preset name, so that models compared with
each other share the embedding size and have deep networks of the same widths.

``model_config_for("dcn", "kaggle", data)`` gives a DCN with the ``kaggle`` preset's D=16 and
a deep network as wide as its top MLP (512-256); ``dlrm_dcnv2`` with the ``mlperf`` preset is
the MLPerf DLRM-DCNv2 recipe.
"""

from __future__ import annotations

from typing import Any

from dlrm.config import dlrm_config_for_data, parse_arch, preset

MODEL_KINDS = ("dlrm", "dcn", "dcnv2", "dlrm_dcnv2", "wdl", "deepfm", "lr")

# Overrides each kind understands (anything else is an error naming the key).
_KNOWN_OVERRIDES = {
    "dlrm": {"embedding_dim", "bottom_mlp", "top_mlp", "interaction", "interaction_self"},
    "dcn": {"embedding_dim", "deep_mlp", "cross_layers"},
    "dcnv2": {"embedding_dim", "deep_mlp", "cross_layers", "low_rank", "structure"},
    "dlrm_dcnv2": {"embedding_dim", "bottom_mlp", "top_mlp", "cross_layers", "low_rank"},
    "wdl": {"embedding_dim", "deep_mlp"},
    "deepfm": {"embedding_dim", "deep_mlp"},
    "lr": set(),
}


def model_config_for(kind: str, preset_name: str, table_sizes: list[int], num_dense: int,
                     overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config dict of a ``kind`` model shaped by a DLRM preset and a data set.

    Args:
        kind: one of ``MODEL_KINDS``.
        preset_name: ``tiny``, ``kaggle``, ``terabyte`` or ``mlperf`` (``dlrm.config.preset``):
            gives D, and the deep networks' hidden widths (the preset's top MLP without its
            final 1). DCN / DCN-v2 default to 6 / 3 cross layers; DCN-v2 to full rank,
            parallel; DLRM-DCNv2 to 3 layers of rank 512 (MLPerf), at most a quarter of the
            cross width (F+1) D so that smaller presets stay low-rank.
        table_sizes, num_dense: the data's.
        overrides: fields to set, e.g. ``{"embedding_dim": 8, "cross_layers": 2}``; None
            values are ignored. A field that ``kind`` does not have raises ``ValueError``.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose from {', '.join(MODEL_KINDS)}")
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(over) - _KNOWN_OVERRIDES[kind])
    if unknown:
        raise ValueError(f"model {kind!r} has no option {', '.join(unknown)}; it takes "
                         f"{', '.join(sorted(_KNOWN_OVERRIDES[kind])) or 'none'}")
    base = preset(preset_name, table_sizes=list(table_sizes), num_dense=num_dense)
    dim = int(over.get("embedding_dim", base.embedding_dim))
    deep = parse_arch(over.get("deep_mlp", base.top_mlp[:-1] or [dim]))
    sizes = [int(n) for n in table_sizes]
    if kind == "dlrm":
        return dlrm_config_for_data(
            preset_name, sizes, num_dense, over.get("embedding_dim"), over.get("bottom_mlp"),
            over.get("top_mlp"), over.get("interaction"),
            bool(over.get("interaction_self", False))).to_dict()
    if kind in ("dcn", "dcnv2"):
        cfg = {"table_sizes": sizes, "num_dense": num_dense, "embedding_dim": dim,
               "cross_layers": int(over.get("cross_layers", 6 if kind == "dcn" else 3)),
               "deep_mlp": deep}
        if kind == "dcnv2":
            cfg["low_rank"] = over.get("low_rank")
            cfg["structure"] = over.get("structure", "parallel")
        return cfg
    if kind == "dlrm_dcnv2":
        bottom = parse_arch(over.get("bottom_mlp", base.bottom_mlp[1:-1]))
        if bottom[0] != num_dense:
            bottom = [num_dense, *bottom]
        if bottom[-1] != dim:
            bottom = [*bottom, dim]
        top = parse_arch(over.get("top_mlp", base.top_mlp))
        width = (len(sizes) + 1) * dim
        rank = over.get("low_rank", min(512, max(1, width // 4)))  # MLPerf: 512 of 3456
        return {"table_sizes": sizes, "embedding_dim": dim, "bottom_mlp": bottom,
                "top_mlp": top, "cross_layers": int(over.get("cross_layers", 3)),
                "low_rank": rank}
    return {"table_sizes": sizes, "num_dense": num_dense, "embedding_dim": dim,
            "deep_mlp": deep}


def parse_model_options(items: list[str] | None) -> dict[str, Any]:
    """``["cross_layers=6", "deep_mlp=512-256"]`` -> a dict of overrides.

    Integers become ints, the rest stay strings (widths like ``512-256`` are parsed by the
    configs).
    """
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-option {item!r}: expected KEY=VALUE")
        if value.lstrip("-").isdigit():
            options[key] = int(value)
        else:
            options[key] = value
    return options
