import math

import torch

from dlrm.metrics import MetricAccumulator, log_loss_from_logits, roc_auc


def naive_auc(scores, labels):
    """P(score_pos > score_neg) + 0.5 P(tie), over all pairs."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition_with_ties():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 7, (300,), generator=gen).float()  # many ties
    labels = (torch.rand(300, generator=gen) < 0.4).float()
    assert abs(roc_auc(scores, labels) - naive_auc(scores.tolist(), labels.tolist())) < 1e-12
    assert roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([0.0, 1.0])) == 1.0
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([1.0, 1.0])))


def test_accumulator_merges_and_computes():
    a, b = MetricAccumulator(), MetricAccumulator()
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0])
    a.update(logits[:2], labels[:2])
    b.update(logits[2:], labels[2:])
    a.merge(b)
    m = a.compute()
    assert m["samples"] == 4 and m["auc"] == 1.0
    assert abs(m["accuracy"] - 0.75) < 1e-12
    p = torch.sigmoid(logits.double())
    ref = float(-(labels * p.log() + (1 - labels) * (1 - p).log()).mean())
    assert abs(m["logloss"] - ref) < 1e-12
    assert abs(log_loss_from_logits(logits, labels) - ref) < 1e-12
