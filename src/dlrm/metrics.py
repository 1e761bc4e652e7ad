"""Exact ROC AUC, log loss and accuracy over a whole split, mergeable across ranks."""

from __future__ import annotations

import math

import torch


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact ROC AUC (Mann-Whitney U with average ranks for ties), in float64.

    Returns NaN when only one class is present.
    """
    scores = scores.detach().reshape(-1).double().cpu()
    labels = labels.detach().reshape(-1).double().cpu()
    n = scores.numel()
    positives = float(labels.sum())
    negatives = n - positives
    if positives == 0 or negatives == 0:
        return math.nan
    order = torch.argsort(scores, stable=True)
    sorted_scores = scores[order]
    # Average rank of each tie group (ranks 1..n).
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True,
                                                  return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg_rank = ends - (counts.double() - 1) / 2
    ranks = avg_rank[inverse]
    rank_sum_pos = float((ranks * labels[order]).sum())
    return (rank_sum_pos - positives * (positives + 1) / 2) / (positives * negatives)


def log_loss_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean binary cross-entropy, computed from logits in float64 (no clipping needed)."""
    return float(torch.nn.functional.binary_cross_entropy_with_logits(
        logits.double().reshape(-1), labels.double().reshape(-1)))


def log_loss_from_probs(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-15) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [eps, 1-eps])."""
    p = probs.double().reshape(-1).clamp(eps, 1 - eps)
    y = labels.double().reshape(-1)
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


class MetricAccumulator:
    """Collects logits and labels of a split; ``compute()`` gives exact metrics.

    Exact AUC needs every score, so this keeps them (4 bytes each); ``merge`` joins the
    accumulators of several ranks or shards.
    """

    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.logits.append(logits.detach().float().reshape(-1).cpu())
        self.labels.append(labels.detach().float().reshape(-1).cpu())

    def merge(self, other: MetricAccumulator) -> None:
        self.logits.extend(other.logits)
        self.labels.extend(other.labels)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.logits:
            return torch.empty(0), torch.empty(0)
        return torch.cat(self.logits), torch.cat(self.labels)

    def compute(self) -> dict[str, float]:
        logits, labels = self.tensors()
        if logits.numel() == 0:
            raise ValueError("no samples were evaluated")
        return {
            "auc": roc_auc(logits, labels),
            "logloss": log_loss_from_logits(logits, labels),
            "accuracy": float(((logits > 0).float() == labels).double().mean()),
            "samples": int(labels.numel()),
            "ctr": float(labels.double().mean()),
        }
