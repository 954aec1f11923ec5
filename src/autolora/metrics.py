"""Pure metric functions on arrays, computed with scikit-learn and scipy (no hub scripts).

All scores are returned as plain floats on the 0–1 scale (correlations on -1..1); tables print x100.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Share of exact matches."""
    return float(accuracy_score(labels, predictions))


def binary_f1(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0))


def mcc(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Matthews correlation coefficient (CoLA); 0 when a side is constant."""
    return float(matthews_corrcoef(labels, predictions))


def pearson(labels: Sequence[float], predictions: Sequence[float]) -> float:
    """Pearson r (STS-B); 0 when either side is constant (undefined correlation)."""
    labels, predictions = np.asarray(labels, float), np.asarray(predictions, float)
    if labels.std() == 0 or predictions.std() == 0:
        return 0.0
    return float(pearsonr(labels, predictions).statistic)


def spearman(labels: Sequence[float], predictions: Sequence[float]) -> float:
    """Spearman rho (STS-B); 0 when either side is constant."""
    labels, predictions = np.asarray(labels, float), np.asarray(predictions, float)
    if labels.std() == 0 or predictions.std() == 0:
        return 0.0
    return float(spearmanr(labels, predictions).statistic)


def classification_scores(labels: Sequence[int], predictions: Sequence[int], names: Sequence[str]) -> dict[str, float]:
    """The named classification metrics (accuracy, f1, mcc)."""
    table = {"accuracy": accuracy, "f1": binary_f1, "mcc": mcc}
    return {name: table[name](labels, predictions) for name in names}


def regression_scores(labels: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation."""
    return {"pearson": pearson(labels, predictions), "spearman": spearman(labels, predictions)}
