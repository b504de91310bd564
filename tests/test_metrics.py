"""hepms.metrics: ROC AUC, ROC points and background rejection against hand computations."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from hepms import metrics


def _pairwise_auc(labels, scores) -> float:
    """P(score_signal > score_background) + 0.5 P(tie): the AUC by definition."""
    sig = [s for y, s in zip(labels, scores) if y == 1]
    bkg = [s for y, s in zip(labels, scores) if y == 0]
    wins = sum((a > b) + 0.5 * (a == b) for a, b in itertools.product(sig, bkg))
    return wins / (len(sig) * len(bkg))


def test_auc_matches_the_pairwise_definition_with_ties():
    labels = [0, 1, 0, 1, 1, 0, 0, 1]
    scores = [0.1, 0.9, 0.4, 0.4, 0.7, 0.2, 0.8, 0.3]
    assert metrics.roc_auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores))
    assert metrics.roc_auc([0, 1], [0.0, 1.0]) == 1.0
    assert metrics.roc_auc([0, 1], [1.0, 0.0]) == 0.0


def test_auc_accepts_tensors_arrays_and_weights():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (500,), generator=g).float()
    scores = torch.randn(500, generator=g) + labels
    expected = _pairwise_auc(labels.tolist(), scores.tolist())
    assert metrics.roc_auc(labels, scores) == pytest.approx(expected)
    assert metrics.roc_auc(labels.numpy(), scores.numpy()) == pytest.approx(expected)
    assert metrics.roc_auc(labels, scores[:, None]) == pytest.approx(expected)  # [n, 1] logits
    # integer weights = repeating entries
    weights = torch.randint(1, 4, (500,), generator=g)
    repeated = metrics.roc_auc(labels.repeat_interleave(weights), scores.repeat_interleave(weights))
    assert metrics.roc_auc(labels, scores, weights) == pytest.approx(repeated)
    # monotone transformations of the scores (logit vs probability) keep the AUC
    assert metrics.roc_auc(labels, torch.sigmoid(scores)) == pytest.approx(expected)


def test_roc_curve_points():
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.4, 0.35, 0.8]
    sig_eff, bkg_eff, thresholds = metrics.roc_curve(labels, scores)
    assert sig_eff[0] == 0.0 and bkg_eff[0] == 0.0
    assert sig_eff[-1] == 1.0 and bkg_eff[-1] == 1.0
    assert np.all(np.diff(sig_eff) >= 0) and np.all(np.diff(bkg_eff) >= 0)
    # every point is the efficiency of the cut score >= threshold
    y, s = np.array(labels), np.array(scores)
    for t, se, be in zip(thresholds[1:], sig_eff[1:], bkg_eff[1:]):
        assert se == pytest.approx(np.mean(s[y == 1] >= t))
        assert be == pytest.approx(np.mean(s[y == 0] >= t))
    assert np.trapezoid(sig_eff, bkg_eff) == pytest.approx(metrics.roc_auc(labels, scores))


def test_background_rejection_at_fixed_signal_efficiency():
    # signal uniform on [1, 2], background uniform on [0, 2]: at signal efficiency e the cut is
    # 2 - e and the background efficiency e / 2, so the rejection is 2 / e.
    signal = np.linspace(1.0, 2.0, 2001)
    background = np.linspace(0.0, 2.0, 4001)
    labels = np.r_[np.ones_like(signal), np.zeros_like(background)]
    scores = np.r_[signal, background]
    for eff in (0.3, 0.5, 0.9):
        assert metrics.background_efficiency(labels, scores, eff) == pytest.approx(eff / 2, abs=2e-3)
        assert metrics.background_rejection(labels, scores, eff) == pytest.approx(2 / eff, rel=1e-2)
    # perfectly separated: no background passes
    assert metrics.background_rejection([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 0.5) == math.inf
    # identical distributions: rejection ~ 1 / efficiency
    g = np.random.default_rng(0)
    same = g.normal(size=20000)
    labels = np.r_[np.ones(10000), np.zeros(10000)]
    assert metrics.background_rejection(labels, same, 0.25) == pytest.approx(4.0, rel=0.1)


def test_metric_errors_are_clear():
    with pytest.raises(ValueError, match="both classes"):
        metrics.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="same length"):
        metrics.roc_auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0 \\(background\\) or 1"):
        metrics.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="signal_efficiency"):
        metrics.background_rejection([0, 1], [0.1, 0.2], 1.5)
