import math
import statistics

import pytest
import torch

from dlrm.metrics import (
    MetricAccumulator,
    auc_covariance,
    auc_placements,
    log_loss_from_logits,
    paired_auc_difference,
    roc_auc,
)


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


def test_roc_auc_hand_examples():
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    assert roc_auc(torch.tensor([0.5] * 4), torch.tensor([0, 1, 0, 1])) == 0.5  # ties: 1/2
    assert roc_auc(torch.tensor([0.9, 0.1]), torch.tensor([1, 0])) == 1.0


def naive_delong(score_sets, labels):
    """DeLong et al. (1988) from the definition, in Python floats: placement values by a loop
    over every (positive, negative) pair, then S10 / m + S01 / n."""
    pos_idx = [i for i, y in enumerate(labels) if y == 1]
    neg_idx = [j for j, y in enumerate(labels) if y == 0]
    m, n, k = len(pos_idx), len(neg_idx), len(score_sets)

    def psi(x, y):
        return 1.0 if x > y else 0.5 if x == y else 0.0

    v10 = [[sum(psi(s[i], s[j]) for j in neg_idx) / n for i in pos_idx] for s in score_sets]
    v01 = [[sum(psi(s[i], s[j]) for i in pos_idx) / m for j in neg_idx] for s in score_sets]
    aucs = [sum(v) / m for v in v10]

    def s(v, r, c, count):
        return sum((v[r][t] - aucs[r]) * (v[c][t] - aucs[c]) for t in range(count)) / (count - 1)

    cov = [[s(v10, r, c, m) / m + s(v01, r, c, n) / n for c in range(k)] for r in range(k)]
    return aucs, cov


def test_delong_covariance_matches_pairwise_definition_with_ties():
    gen = torch.Generator().manual_seed(1)
    labels = (torch.rand(120, generator=gen) < 0.35).float()
    base = torch.randn(120, generator=gen) + labels
    score_sets = [torch.round(base * 2) / 2,  # coarse: many ties, within and across classes
                  torch.round((base + torch.randn(120, generator=gen)) * 4) / 4,
                  torch.randn(120, generator=gen)]
    aucs, cov = auc_covariance(score_sets, labels)
    want_aucs, want_cov = naive_delong([s.tolist() for s in score_sets], labels.tolist())
    assert aucs.tolist() == pytest.approx(want_aucs, abs=1e-12)
    assert cov.tolist()[0] == pytest.approx(want_cov[0], abs=1e-12)
    for r in range(3):
        assert cov[r].tolist() == pytest.approx(want_cov[r], abs=1e-12)
        assert float(aucs[r]) == pytest.approx(roc_auc(score_sets[r], labels), abs=1e-12)
    above, below = auc_placements(score_sets[0], labels)
    assert float(above.mean()) == pytest.approx(float(below.mean()), abs=1e-12)


def test_paired_difference_se_matches_the_spread_over_test_sets():
    """Two correlated scorers on 500 independent test sets: the spread of their AUC
    difference is what DeLong's SE says, and far below the unpaired sqrt(var_a + var_b)."""
    gen = torch.Generator().manual_seed(2)
    deltas, ses, unpaired = [], [], []
    for _ in range(500):
        labels = (torch.rand(400, generator=gen) < 0.25).float()
        signal = labels + torch.randn(400, generator=gen)  # what both models see
        a = signal + 0.5 * torch.randn(400, generator=gen)
        b = signal + 0.6 * torch.randn(400, generator=gen)
        result = paired_auc_difference([a], [b], labels)
        deltas.append(result["delta"])
        ses.append(result["se"])
        _, cov = auc_covariance([a, b], labels)
        unpaired.append(math.sqrt(float(cov[0, 0] + cov[1, 1])))
    spread = statistics.stdev(deltas)
    assert statistics.fmean(ses) == pytest.approx(spread, rel=0.1)
    assert statistics.fmean(unpaired) > 2 * spread  # pairing matters
    assert statistics.fmean(deltas) > 0  # a has less noise than b


def test_paired_difference_of_identical_scores_and_of_seed_means():
    gen = torch.Generator().manual_seed(3)
    labels = (torch.rand(200, generator=gen) < 0.3).float()
    a = labels + torch.randn(200, generator=gen)
    same = paired_auc_difference([a], [a.clone()], labels)
    assert same == {"delta": 0.0, "se": 0.0, "z": 0.0, "p": 1.0}
    # Two seeds against one: the mean of the two AUCs minus the other's, and the SE of that
    # linear combination of DeLong's covariance.
    b, c = a + torch.randn(200, generator=gen), torch.randn(200, generator=gen) + 0.5 * labels
    result = paired_auc_difference([a, b], [c], labels)
    aucs, cov = auc_covariance([a, b, c], labels)
    w = torch.tensor([0.5, 0.5, -1.0], dtype=torch.float64)
    assert result["delta"] == pytest.approx(float(aucs[:2].mean() - aucs[2]), abs=1e-12)
    assert result["se"] == pytest.approx(math.sqrt(float(w @ cov @ w)), abs=1e-12)
    assert result["z"] == pytest.approx(result["delta"] / result["se"])
    assert result["p"] == pytest.approx(math.erfc(abs(result["z"]) / math.sqrt(2)))
    with pytest.raises(ValueError, match="both classes"):
        auc_placements(a, torch.ones(200))
