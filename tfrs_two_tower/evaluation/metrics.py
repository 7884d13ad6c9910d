"""Metric functions on numpy arrays (shapes in each docstring)."""

import numpy as np
from scipy import stats as _stats


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve, ties counted half (Mann-Whitney U / (n_pos * n_neg)).

  Args:
    labels: [n] 0/1 (or bool).
    scores: [n] real scores; higher means more likely positive.
  Returns:
    AUC in [0, 1]; NaN when one class is absent.
  """
  labels = np.asarray(labels).astype(bool)
  scores = np.asarray(scores, np.float64)
  n_pos = int(labels.sum())
  n_neg = labels.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = _stats.rankdata(scores)  # average ranks for ties
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
