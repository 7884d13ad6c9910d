"""An experiment's definition: the `ab_experiments` row as a Python value."""

import dataclasses
import json
from typing import Any, Dict, Optional, Tuple

import pandas as pd

from tfrs_two_tower.abtest import assignment
from tfrs_two_tower.abtest import metrics as metrics_lib

DEFAULT_GUARDRAILS = ("likes_received_per_user", "swipes_per_user")


def to_timestamp(value, what: str) -> pd.Timestamp:
  """ISO string / datetime / Timestamp -> tz-aware UTC Timestamp; errors name `what`."""
  try:
    stamp = pd.Timestamp(value)
  except (TypeError, ValueError):
    raise ValueError(f"{what}: not a time: {value!r}") from None
  if pd.isna(stamp):
    raise ValueError(f"{what}: missing time")
  return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


@dataclasses.dataclass(frozen=True)
class Definition:
  """What the analysis needs besides the data.

  Attributes:
    experiment: name, salt and arms (first arm = control).
    starts_at: when assignment started; the pre-period ends here.
    ends_at: the planned end (outcomes after it are ignored); None = running.
    primary_metric: the metric the verdict is about.
    guardrails: metrics that must not get significantly worse.
    pre_period_days: length of the CUPED pre-period before starts_at.
    planned_users_per_arm: the fixed horizon from the power plan, if any.
  """
  experiment: assignment.Experiment
  starts_at: pd.Timestamp
  ends_at: Optional[pd.Timestamp] = None
  primary_metric: str = "match_rate"
  guardrails: Tuple[str, ...] = DEFAULT_GUARDRAILS
  pre_period_days: float = 28.0
  planned_users_per_arm: Optional[int] = None

  def __post_init__(self):
    object.__setattr__(self, "starts_at", to_timestamp(self.starts_at, "starts_at"))
    if self.ends_at is not None:
      object.__setattr__(self, "ends_at", to_timestamp(self.ends_at, "ends_at"))
      if self.ends_at <= self.starts_at:
        raise ValueError(f"ends_at {self.ends_at} must be after starts_at {self.starts_at}")
    object.__setattr__(self, "guardrails", tuple(self.guardrails))
    metrics_lib.check_metric_names((self.primary_metric,), "primary_metric")
    metrics_lib.check_metric_names(self.guardrails, "guardrails")
    if self.pre_period_days < 0:
      raise ValueError(f"pre_period_days {self.pre_period_days} must be >= 0")

  @property
  def name(self) -> str:
    return self.experiment.name

  @property
  def control(self) -> str:
    return self.experiment.arm_names[0]

  @property
  def pre_starts_at(self) -> pd.Timestamp:
    return self.starts_at - pd.Timedelta(days=self.pre_period_days)

  def to_json(self) -> Dict[str, Any]:
    return {**self.experiment.to_json(), "starts_at": self.starts_at.isoformat(),
            "ends_at": None if self.ends_at is None else self.ends_at.isoformat(),
            "primary_metric": self.primary_metric, "guardrails": list(self.guardrails),
            "pre_period_days": self.pre_period_days,
            "planned_users_per_arm": self.planned_users_per_arm}

  def row(self) -> Dict[str, Any]:
    """The `ab_experiments` columns (jsonb as JSON text)."""
    return {"name": self.name, "salt": self.experiment.salt,
            "arms": json.dumps(self.experiment.to_json()["arms"]),
            "starts_at": self.starts_at.to_pydatetime(),
            "ends_at": None if self.ends_at is None else self.ends_at.to_pydatetime(),
            "primary_metric": self.primary_metric, "guardrails": json.dumps(list(self.guardrails)),
            "pre_period": f"{self.pre_period_days * 86400:.0f} seconds",
            "planned_users_per_arm": self.planned_users_per_arm}
