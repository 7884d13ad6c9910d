"""The experiment metrics: what each one measures per exposed user and how it is tested.

Inputs are per-user outcome rows (the `ab_user_outcomes` view, or
`outcomes.user_outcomes` for CSV): counts AFTER the user's first exposure
(`swipes`, `likes_given`, `likes_received`, `matches`) and the same counts in
the pre-period before the experiment started (`pre_*`, CUPED covariates).

Kinds:
  proportion  fraction of users with column > 0: two-proportion z-test.
  ratio       sum(column) / sum(denominator) over users: delta-method z-test.
  mean        mean of column per user: Welch t-test.
"""

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np
import pandas as pd

OUTCOME_COLUMNS = ("swipes", "likes_given", "likes_received", "matches")
PRE_COLUMNS = tuple(f"pre_{c}" for c in OUTCOME_COLUMNS)
KINDS = ("proportion", "ratio", "mean")


@dataclasses.dataclass(frozen=True)
class Metric:
  name: str
  kind: str
  column: str
  description: str
  denominator: Optional[str] = None
  higher_is_better: bool = True

  @property
  def cuped_column(self) -> Optional[str]:
    """The pre-period covariate; ratio metrics have none (CUPED here is per-user)."""
    return None if self.kind == "ratio" else f"pre_{self.column}"

  def values(self, frame: pd.DataFrame) -> np.ndarray:
    """[n] per-user values (ratio metrics: the numerator)."""
    column = frame[self.column].to_numpy(np.float64)
    return (column > 0).astype(np.float64) if self.kind == "proportion" else column

  def covariate(self, frame: pd.DataFrame) -> np.ndarray:
    """[n] the same per-user value in the pre-period."""
    column = frame[self.cuped_column].to_numpy(np.float64)
    return (column > 0).astype(np.float64) if self.kind == "proportion" else column

  def aggregate(self, frame: pd.DataFrame) -> float:
    """The arm-level value: a rate or a mean per user."""
    if self.kind == "ratio":
      den = frame[self.denominator].sum()
      return float(frame[self.column].sum() / den) if den > 0 else float("nan")
    return float(self.values(frame).mean()) if len(frame) else float("nan")


METRICS: Dict[str, Metric] = {m.name: m for m in (
    Metric("match_rate", "proportion", "matches",
           "fraction of exposed users with at least one match after first exposure"),
    Metric("like_rate", "ratio", "likes_given",
           "likes given / swipes made after first exposure (over users, delta method)",
           denominator="swipes"),
    Metric("matches_per_user", "mean", "matches", "matches per exposed user"),
    Metric("likes_given_per_user", "mean", "likes_given", "likes given per exposed user"),
    Metric("likes_received_per_user", "mean", "likes_received",
           "likes received per exposed user"),
    Metric("swipes_per_user", "mean", "swipes", "swipes per exposed user (engagement)"),
)}


def check_metric_names(names: Tuple[str, ...], what: str) -> None:
  unknown = [n for n in names if n not in METRICS]
  if unknown:
    raise ValueError(f"{what}: unknown metric(s) {unknown}; known: {sorted(METRICS)}")
