"""Fixed-horizon tests for A/B comparisons: one function per test, summary statistics in.

The distributions and the standard tests come from `scipy.stats` (chisquare for the
sample ratio, the Welch t-test); what is kept here is the project's rules around them:
the user as the unit, delta-method intervals for lifts and ratios, CUPED and Holm.

Every comparison returns a `Comparison` of treatment (t) against control (c):
difference t - c with a two-sided (1 - alpha) confidence interval and p-value,
and the relative lift t / c - 1 with a delta-method interval
(Var(t/c) ~= Var(t)/c^2 + t^2 Var(c)/c^4, independent arms).

The randomisation unit is the USER, so each user is one observation. Rates of
swipes (likes / swipes) are ratios of per-user sums: their variance comes from
the delta method over users (`ratio_test`), not from a swipe-level binomial,
which would treat a user's correlated swipes as independent and overstate
significance.
"""

import dataclasses
from typing import Dict, Sequence

import numpy as np
from scipy import stats as _stats

SRM_ALPHA = 0.001  # the usual SRM threshold: a false alarm once per 1000 healthy tests


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Treatment vs control on one metric.

  Attributes:
    control, treatment: the metric's value per arm.
    difference: treatment - control; ci_low/ci_high its confidence interval.
    relative_lift: treatment / control - 1; lift_ci_low/high its interval
      (NaN when control is 0).
    p_value: two-sided p-value of "no difference".
    test: which test produced it.
  """
  control: float
  treatment: float
  difference: float
  ci_low: float
  ci_high: float
  relative_lift: float
  lift_ci_low: float
  lift_ci_high: float
  p_value: float
  test: str

  def significant(self, alpha: float = 0.05) -> bool:
    return bool(self.p_value < alpha)

  def to_json(self) -> Dict[str, object]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in dataclasses.asdict(self).items()}


def _comparison(c: float, t: float, var_c: float, var_t: float, quantile: float,
                p_value: float, test: str) -> Comparison:
  """Assembles a Comparison from per-arm estimates and their sampling variances."""
  diff, se = t - c, np.sqrt(var_c + var_t)
  lift = lift_low = lift_high = float("nan")
  if c != 0:
    lift = t / c - 1.0
    lift_se = np.sqrt(var_t / c ** 2 + t ** 2 * var_c / c ** 4)
    lift_low, lift_high = lift - quantile * lift_se, lift + quantile * lift_se
  return Comparison(float(c), float(t), float(diff), float(diff - quantile * se),
                    float(diff + quantile * se), float(lift), float(lift_low), float(lift_high),
                    float(p_value), test)


def two_proportion_z_test(successes_c: int, n_c: int, successes_t: int, n_t: int,
                          alpha: float = 0.05) -> Comparison:
  """Two-proportion z-test (e.g. the fraction of exposed users who matched).

  p-value from the pooled standard error (the null says both rates are equal);
  the interval from the unpooled one (Wald):
    z  = (p_t - p_c) / sqrt(p (1 - p) (1/n_c + 1/n_t)),  p = pooled rate
    CI = (p_t - p_c) +- z_{1-alpha/2} sqrt(p_c (1-p_c)/n_c + p_t (1-p_t)/n_t)
  """
  if min(n_c, n_t) <= 0:
    raise ValueError(f"both arms need users (control {n_c}, treatment {n_t})")
  p_c, p_t = successes_c / n_c, successes_t / n_t
  pooled = (successes_c + successes_t) / (n_c + n_t)
  se_null = np.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_t))
  # se_null = 0 only when every user in both arms has the same outcome: no difference.
  p_value = 2 * _stats.norm.sf(abs(p_t - p_c) / se_null) if se_null > 0 else 1.0
  return _comparison(p_c, p_t, p_c * (1 - p_c) / n_c, p_t * (1 - p_t) / n_t,
                     _stats.norm.ppf(1 - alpha / 2), p_value, "two-proportion z-test")


def welch_test(mean_c: float, var_c: float, n_c: int, mean_t: float, var_t: float, n_t: int,
               alpha: float = 0.05) -> Comparison:
  """Welch's unequal-variance t-test on per-user means (sample variances, ddof=1).

  The p-value is scipy's (`ttest_ind_from_stats(equal_var=False)`); the interval
  uses the Welch-Satterthwaite degrees of freedom
    df = (s_c + s_t)^2 / (s_c^2 / (n_c - 1) + s_t^2 / (n_t - 1)),  s = var / n,
  which scipy does not return from summary statistics.
  """
  if min(n_c, n_t) < 2:
    raise ValueError(f"both arms need >= 2 users (control {n_c}, treatment {n_t})")
  sv_c, sv_t = var_c / n_c, var_t / n_t  # sampling variances of the two means
  diff = mean_t - mean_c
  if sv_c + sv_t == 0:  # scipy returns NaN here; with no spread any difference is certain
    p_value, q = (1.0 if diff == 0 else 0.0), 0.0
  else:
    p_value = _stats.ttest_ind_from_stats(mean_t, np.sqrt(var_t), n_t, mean_c, np.sqrt(var_c),
                                          n_c, equal_var=False).pvalue
    df = (sv_c + sv_t) ** 2 / (sv_c ** 2 / (n_c - 1) + sv_t ** 2 / (n_t - 1))
    q = _stats.t.ppf(1 - alpha / 2, df)
  return _comparison(mean_c, mean_t, sv_c, sv_t, q, p_value, "Welch t-test")


def welch_test_samples(y_c: np.ndarray, y_t: np.ndarray, alpha: float = 0.05) -> Comparison:
  y_c, y_t = np.asarray(y_c, np.float64), np.asarray(y_t, np.float64)
  return welch_test(y_c.mean(), y_c.var(ddof=1), y_c.size, y_t.mean(), y_t.var(ddof=1), y_t.size,
                    alpha)


def _ratio_and_variance(num: np.ndarray, den: np.ndarray):
  """R = sum(num) / sum(den) over users and its delta-method variance.

  Var(R) ~= (Var(x) - 2 R Cov(x, y) + R^2 Var(y)) / (n mean(y)^2), x = num, y = den.
  """
  n = num.size
  mean_x, mean_y = num.mean(), den.mean()
  ratio = mean_x / mean_y
  cov = np.cov(num, den, ddof=1)
  var = (cov[0, 0] - 2 * ratio * cov[0, 1] + ratio ** 2 * cov[1, 1]) / (n * mean_y ** 2)
  return ratio, var


def ratio_test(num_c: np.ndarray, den_c: np.ndarray, num_t: np.ndarray, den_t: np.ndarray,
               alpha: float = 0.05) -> Comparison:
  """z-test of a ratio of per-user sums (like rate = likes / swipes), delta method.

  Users with den = 0 contribute to neither sum and are kept (they are part of
  the randomised population); an arm whose den sums to 0 is an error.
  """
  arrays = [np.asarray(a, np.float64) for a in (num_c, den_c, num_t, den_t)]
  if min(arrays[0].size, arrays[2].size) < 2 or arrays[1].sum() <= 0 or arrays[3].sum() <= 0:
    raise ValueError("ratio test needs >= 2 users and a positive denominator in each arm")
  r_c, var_c = _ratio_and_variance(arrays[0], arrays[1])
  r_t, var_t = _ratio_and_variance(arrays[2], arrays[3])
  se = np.sqrt(var_c + var_t)
  p_value = 2 * _stats.norm.sf(abs(r_t - r_c) / se) if se > 0 else float(r_t == r_c)
  return _comparison(r_c, r_t, var_c, var_t, _stats.norm.ppf(1 - alpha / 2), p_value,
                     "delta-method z-test (ratio of per-user sums)")


def cuped_adjust(y: np.ndarray, x: np.ndarray):
  """CUPED (Deng et al. 2013): y - theta (x - mean(x)), theta = Cov(y, x) / Var(x).

  `x` is the same metric measured BEFORE the experiment, so it is independent
  of the assignment and the adjustment keeps the estimate unbiased while
  removing the variance that x explains. theta is estimated on all users of
  both arms together (one theta, as in the paper).

  Returns:
    (adjusted y [n], theta, variance reduction 1 - Var(adjusted)/Var(y)).
  """
  y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
  var_x = x.var(ddof=1)
  if not var_x > 0:
    return y.copy(), 0.0, 0.0
  theta = np.cov(y, x, ddof=1)[0, 1] / var_x
  adjusted = y - theta * (x - x.mean())
  var_y = y.var(ddof=1)
  return adjusted, float(theta), float(1 - adjusted.var(ddof=1) / var_y) if var_y > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class SampleRatioCheck:
  """Chi-square goodness of fit of exposed users per arm against the configured split."""
  observed: Dict[str, int]
  expected: Dict[str, float]
  chi2: float
  p_value: float
  alpha: float

  @property
  def passed(self) -> bool:
    return bool(self.p_value >= self.alpha)

  def to_json(self) -> Dict[str, object]:
    return {"observed": self.observed, "expected": self.expected, "chi2": self.chi2,
            "p_value": self.p_value, "alpha": self.alpha, "passed": self.passed}


def sample_ratio_check(observed: Dict[str, int], fractions: Dict[str, float],
                       alpha: float = SRM_ALPHA) -> SampleRatioCheck:
  """SRM check: chi2 = sum (O - E)^2 / E over arms, df = arms - 1 (`scipy.stats.chisquare`).

  Arms configured with fraction 0 are left out (nobody can land there; a
  user observed there fails the check with p = 0).
  """
  unknown = set(observed) - set(fractions)
  if unknown:
    raise ValueError(f"exposures name arms {sorted(unknown)} that the experiment does not have "
                     f"({sorted(fractions)})")
  total = sum(observed.values())
  if total == 0:
    raise ValueError("no exposed users")
  arms = [a for a in fractions if fractions[a] > 0]
  stray = sum(observed.get(a, 0) for a in fractions if fractions[a] == 0)
  obs = np.array([observed.get(a, 0) for a in arms], np.float64)
  exp = np.array([fractions[a] for a in arms]) / sum(fractions[a] for a in arms) * total
  if len(arms) > 1:
    chi2, p_value = (float(v) for v in _stats.chisquare(obs, exp))
  else:  # one arm takes everyone: nothing to compare
    chi2, p_value = 0.0, 1.0
  p_value = 0.0 if stray else p_value
  return SampleRatioCheck({a: int(observed.get(a, 0)) for a in fractions},
                          {a: float(e) for a, e in zip(arms, exp)}, chi2, p_value, alpha)


def holm_adjust(p_values: Sequence[float]) -> np.ndarray:
  """Holm-Bonferroni adjusted p-values (for several treatment arms vs control)."""
  p = np.asarray(p_values, np.float64)
  order = np.argsort(p)
  adjusted = np.empty_like(p)
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (p.size - rank) * p[i]))
    adjusted[i] = running
  return adjusted
