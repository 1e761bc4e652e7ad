"""Exact ROC AUC, log loss and accuracy over a whole split, mergeable across ranks; the
uncertainty of AUCs measured on a finite set (one AUC, and several scored on the same rows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _midranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of ``values`` (float64, in input order), tied values sharing their mean rank."""
    order = torch.argsort(values, stable=True)
    _, inverse, counts = torch.unique_consecutive(values[order], return_inverse=True,
                                                  return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    ranks = torch.empty(values.numel(), dtype=torch.float64)
    ranks[order] = (ends - (counts.double() - 1) / 2)[inverse]
    return ranks


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact ROC AUC (Mann-Whitney U with average ranks for ties), in float64.

    Returns NaN when only one class is present.
    """
    scores = torch.as_tensor(scores).detach().reshape(-1).double().cpu()
    labels = torch.as_tensor(labels).detach().reshape(-1).double().cpu()
    positives = float(labels.sum())
    negatives = scores.numel() - positives
    if positives == 0 or negatives == 0:
        return math.nan
    rank_sum_pos = float((_midranks(scores) * labels).sum())
    return (rank_sum_pos - positives * (positives + 1) / 2) / (positives * negatives)


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC measured on a finite set."""
    if positives <= 0 or negatives <= 0 or math.isnan(auc):
        return math.nan
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc)
           + (negatives - 1) * (q2 - auc * auc)) / (positives * negatives)
    return math.sqrt(max(var, 0.0))


def auc_placements(scores: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """DeLong's placement values, float64: for each positive, the fraction of negatives it
    outscores, ``(m,)``; for each negative, the fraction of positives that outscore it,
    ``(n,)``; a tie counts one half. Both have the AUC as their mean.

    From midranks (Sun & Xu 2014): a positive's rank among all rows minus its rank among the
    positives is the number of negatives below it (ties one half).
    """
    scores = torch.as_tensor(scores).detach().reshape(-1).double().cpu()
    is_pos = torch.as_tensor(labels).detach().reshape(-1).cpu() > 0.5
    pos, neg = scores[is_pos], scores[~is_pos]
    m, n = pos.numel(), neg.numel()
    if m == 0 or n == 0:
        raise ValueError(f"AUC placements need both classes ({m} positives, {n} negatives)")
    ranks = _midranks(torch.cat([pos, neg]))
    above_negatives = (ranks[:m] - _midranks(pos)) / n
    below_positives = 1 - (ranks[m:] - _midranks(neg)) / m
    return above_negatives, below_positives


def auc_covariance(score_sets: Sequence[torch.Tensor], labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """AUCs ``(k,)`` of k scorers on the same labelled rows and their covariance ``(k, k)`` as
    measured on this finite set (DeLong, DeLong & Clarke-Pearson 1988), float64.

    Two models scored on the same rows err on the same hard rows, so their AUCs move
    together from one test set to the next: the variance of their difference is
    ``var_a + var_b - 2 cov_ab``, usually far below ``var_a + var_b``.
    """
    placements = [auc_placements(s, labels) for s in score_sets]
    v10 = torch.stack([p[0] for p in placements])  # (k, m)
    v01 = torch.stack([p[1] for p in placements])  # (k, n)
    k, m, n = v10.shape[0], v10.shape[1], v01.shape[1]

    def cov(v: torch.Tensor) -> torch.Tensor:  # (k, k), 1/(count - 1) as DeLong's S10, S01
        if v.shape[1] < 2:
            return torch.zeros(k, k, dtype=torch.float64)
        centered = v - v.mean(1, keepdim=True)
        return centered @ centered.T / (v.shape[1] - 1)

    return v10.mean(1), cov(v10) / m + cov(v01) / n


def paired_auc_difference(scores_a: Sequence[torch.Tensor], scores_b: Sequence[torch.Tensor],
                          labels: torch.Tensor) -> dict[str, float]:
    """Mean AUC of the scorers ``scores_a`` minus that of ``scores_b`` (e.g. the seeds of two
    model kinds), all scored on the same rows, with its standard error from the finite set
    (DeLong's covariance of all of them, so the pairing counts), z and the two-sided p-value.

    Returns ``delta``, ``se``, ``z``, ``p``; an SE of 0 (identical scores) gives z 0, p 1.
    """
    if not scores_a or not scores_b:
        raise ValueError("each side needs at least one set of scores")
    aucs, covariance = auc_covariance([*scores_a, *scores_b], labels)
    weights = torch.cat([torch.full((len(scores_a),), 1 / len(scores_a), dtype=torch.float64),
                         torch.full((len(scores_b),), -1 / len(scores_b), dtype=torch.float64)])
    delta = float(weights @ aucs)
    se = math.sqrt(max(float(weights @ covariance @ weights), 0.0))
    return {"delta": delta, "se": se, **z_test(delta, se)}


def z_test(delta: float, se: float) -> dict[str, float]:
    """``z = delta / se`` and its two-sided p-value under a normal null; an SE of 0 gives z 0
    and p 1 when ``delta`` is 0 too, else an infinite z and p 0."""
    z = delta / se if se > 0 else (0.0 if delta == 0 else math.copysign(math.inf, delta))
    return {"z": z, "p": math.erfc(abs(z) / math.sqrt(2))}


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
