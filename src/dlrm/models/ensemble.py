"""Several trained models as one: the mean of their click probabilities (``dlrm ensemble``).

On small data a deep model's seeds differ by as much as its recipes do; the mean of a few
seeds' probabilities is steadier and better than any one of them (docs/results.md: three
DLRMs on Criteo head10k 0.7458 -> 0.7507). ``dlrm compare --ensemble`` measures that;
``Ensemble`` is the model to serve it.

Math: for members f_1..f_K (logits), p = (1/K) sum_k sigmoid(f_k). The model returns
logit(p), so it is a drop-in model (``BCEWithLogits``, ``dlrm eval``, ``predict``, export),
computed stably as ``logsumexp_k(logsigmoid(f_k)) - logsumexp_k(logsigmoid(-f_k))``
(log p - log(1 - p); the 1/K cancels), finite for logits of any size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional

from dlrm.features import SparseFeatures
from dlrm.models.registry import ModelSpec, build_model, register


class Ensemble(nn.Module):
    """The mean click probability of ``members``, as a logit.

    Args:
        members: trained models of any kinds that read the same input (the same dense width
            and tables).

    Call: ``(dense (B, num_dense), sparse) -> (B,)`` logits.

    Example:
        >>> ensemble = Ensemble([model_seed0, model_seed1, model_seed2])
        >>> torch.sigmoid(ensemble(batch.dense, batch.sparse))  # mean of the 3 probabilities
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        shapes = {(getattr(m, "num_dense", None), tuple(getattr(m, "table_sizes", None) or ()))
                  for m in members}
        if len(shapes) > 1:
            raise ValueError(f"the members read different inputs (dense width, table sizes): "
                             f"{sorted(shapes, key=str)}; an ensemble's members share one "
                             f"data set's input")
        self.members = nn.ModuleList(members)
        self.num_dense = getattr(members[0], "num_dense", None)
        self.table_sizes = getattr(members[0], "table_sizes", None)

    def forward(self, dense: torch.Tensor, sparse: SparseFeatures) -> torch.Tensor:
        logits = torch.stack([m(dense, sparse).float().reshape(-1) for m in self.members])
        return (torch.logsumexp(functional.logsigmoid(logits), 0)
                - torch.logsumexp(functional.logsigmoid(-logits), 0))  # (B,)


def build_ensemble(config: dict[str, Any]) -> Ensemble:
    """Model kind ``ensemble``: ``{"members": [{"kind": ..., "config": {...}}, ...]}`` -> the
    members built (fresh weights, for load_state_dict)."""
    return Ensemble([build_model(m["kind"], m["config"]) for m in config["members"]])


register(ModelSpec("ensemble", "several trained models' mean click probability (made by "
                   "`dlrm ensemble`, inference only)", build=build_ensemble, trainable=False))
