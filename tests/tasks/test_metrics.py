"""Metric functions on small cases computed by hand."""

from __future__ import annotations

import math

import pytest

from autolora.tasks import metrics


def test_accuracy_and_f1_by_hand():
    """labels 1,1,0,0,1 vs predictions 1,0,0,1,1: 3/5 right; TP=2, FP=1, FN=1 -> F1 = 2/3."""
    labels, predictions = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    assert metrics.accuracy(labels, predictions) == pytest.approx(0.6)
    assert metrics.binary_f1(labels, predictions) == pytest.approx(2 / 3)


def test_mcc_by_hand():
    """TP=2, TN=1, FP=1, FN=1: MCC = (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6."""
    assert metrics.mcc([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(1 / 6)
    assert metrics.mcc([1, 0, 1], [1, 1, 1]) == 0.0  # constant predictions: defined as 0


def test_pearson_and_spearman_by_hand():
    """x = 1,2,3; y = 1,3,2: Pearson 0.5; ranks give Spearman 0.5. Constant sides give 0."""
    assert metrics.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert metrics.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert metrics.pearson([1, 2, 3], [2, 2, 2]) == 0.0
    y = [0.1, 0.4, 0.35, 0.8]
    assert metrics.spearman([1, 2, 3, 4], [v ** 3 for v in y]) == pytest.approx(metrics.spearman([1, 2, 3, 4], y))
    assert not math.isnan(metrics.regression_scores([1, 1], [1, 2])["pearson"])


def test_named_classification_scores():
    """classification_scores returns exactly the requested metrics."""
    scores = metrics.classification_scores([1, 0], [1, 0], ["mcc", "accuracy"])
    assert scores == {"mcc": 1.0, "accuracy": 1.0}
