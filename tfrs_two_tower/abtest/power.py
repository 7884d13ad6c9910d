"""Sample size before the experiment: how many users per arm a fixed-horizon test needs.

Decide the number of users (and so the duration) BEFORE starting, then analyse
once at the end. Looking at p-values along the way and stopping at the first
p < 0.05 ("peeking") inflates the false-positive rate far above alpha.

Why these formulas are written out rather than taken from `statsmodels`
(`NormalIndPower`, `proportion_effectsize`): statsmodels' two-proportion power uses
Cohen's arcsine effect size h, which gives a different n than the pooled-variance
z-test this project analyses with (`stats.two_proportion_z_test`); the formulas here
match that test, and scipy supplies the normal quantiles and the root finder.
Adding statsmodels for three closed-form lines would not remove code.
"""

import dataclasses
import math
from typing import Dict, Optional

from scipy import optimize
from scipy import stats as _stats


@dataclasses.dataclass(frozen=True)
class Plan:
  """A sample-size plan.

  Attributes:
    users_per_arm: users needed in EACH arm (control and treatment).
    baseline, target: the metric in control and the smallest treatment value
      worth detecting (target - baseline is the minimum detectable effect).
    alpha, power, two_sided: the error rates the plan guarantees.
    days: users_per_arm / (daily_new_exposed_users * treatment fraction), when
      the daily number of newly exposed users was given.
  """
  metric: str
  users_per_arm: int
  baseline: float
  target: float
  alpha: float
  power: float
  two_sided: bool
  days: Optional[float] = None

  def to_json(self) -> Dict[str, object]:
    return dataclasses.asdict(self)


def _z(alpha: float, power: float, two_sided: bool):
  if not 0 < alpha < 1 or not 0 < power < 1:
    raise ValueError(f"alpha ({alpha}) and power ({power}) must be in (0, 1)")
  return (_stats.norm.ppf(1 - alpha / 2 if two_sided else 1 - alpha), _stats.norm.ppf(power))


def users_per_arm_for_rate(baseline: float, target: float, alpha: float = 0.05,
                           power: float = 0.8, two_sided: bool = True) -> int:
  """Users per arm to tell rate `target` from `baseline` with a two-proportion z-test.

  n = (z_{1-a/2} sqrt(2 pbar (1 - pbar)) + z_{1-b} sqrt(p1 (1-p1) + p2 (1-p2)))^2 / (p2 - p1)^2,
  pbar = (p1 + p2) / 2 (equal arms). Check value: 0.12 -> 0.135, alpha 0.05
  two-sided, power 0.8 -> 7,761 (7,760.06 rounded up).
  """
  if not (0 < baseline < 1 and 0 < target < 1) or baseline == target:
    raise ValueError(f"rates must be in (0, 1) and differ (baseline {baseline}, target {target})")
  return math.ceil(_users_for_rate(baseline, target, *_z(alpha, power, two_sided)))


def _users_for_rate(baseline: float, target: float, z_alpha: float, z_power: float) -> float:
  pbar = (baseline + target) / 2
  numerator = (z_alpha * math.sqrt(2 * pbar * (1 - pbar))
               + z_power * math.sqrt(baseline * (1 - baseline) + target * (1 - target)))
  return numerator ** 2 / (target - baseline) ** 2


def detectable_difference_for_rate(baseline: float, users_per_arm: int, alpha: float = 0.05,
                                   power: float = 0.8, two_sided: bool = True) -> float:
  """The smallest increase over `baseline` that `users_per_arm` detect with `power`.

  Inverts `users_per_arm_for_rate` (root of n(target) = users_per_arm).
  """
  z_alpha, z_power = _z(alpha, power, two_sided)
  high = 1 - 1e-9
  if _users_for_rate(baseline, high, z_alpha, z_power) > users_per_arm:
    return high - baseline
  target = optimize.brentq(
      lambda t: _users_for_rate(baseline, t, z_alpha, z_power) - users_per_arm,
      baseline + 1e-9, high)
  return float(target - baseline)


def users_per_arm_for_mean(std: float, difference: float, alpha: float = 0.05,
                           power: float = 0.8, two_sided: bool = True) -> int:
  """Users per arm to detect `difference` in a per-user mean with standard deviation `std`.

  n = 2 std^2 (z_{1-a/2} + z_{1-b})^2 / difference^2 (normal approximation).
  """
  if std <= 0 or difference == 0:
    raise ValueError(f"std ({std}) must be > 0 and difference ({difference}) non-zero")
  z_alpha, z_power = _z(alpha, power, two_sided)
  return math.ceil(2 * std ** 2 * (z_alpha + z_power) ** 2 / difference ** 2)


def plan(baseline: float, *, mde: Optional[float] = None, relative_mde: Optional[float] = None,
         std: Optional[float] = None, alpha: float = 0.05, power: float = 0.8,
         two_sided: bool = True, daily_exposed_users: Optional[float] = None,
         treatment_fraction: float = 0.5) -> Plan:
  """The sample-size plan for a rate (std None) or a per-user mean (std given).

  Exactly one of `mde` (absolute: target = baseline + mde) and `relative_mde`
  (target = baseline * (1 + relative_mde)) must be given.
  """
  if (mde is None) == (relative_mde is None):
    raise ValueError("give exactly one of mde (absolute) and relative_mde")
  target = baseline + mde if mde is not None else baseline * (1 + relative_mde)
  if std is None:
    n, metric = users_per_arm_for_rate(baseline, target, alpha, power, two_sided), "rate"
  else:
    n, metric = users_per_arm_for_mean(std, target - baseline, alpha, power, two_sided), "mean"
  days = None
  if daily_exposed_users:
    if not 0 < treatment_fraction < 1:
      raise ValueError(f"treatment_fraction {treatment_fraction} must be in (0, 1)")
    # The smaller arm sets the duration.
    days = n / (daily_exposed_users * min(treatment_fraction, 1 - treatment_fraction))
  return Plan(metric, n, baseline, target, alpha, power, two_sided, days)
