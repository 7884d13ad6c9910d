"""The analysis of one experiment: validity checks first, then effects, then a verdict.

Order matters and follows trusted experimentation practice:
  1. Sample-ratio mismatch (SRM): exposed users per arm vs the configured
     split, chi-square, alpha 0.001. A mismatch means assignment or logging is
     broken (e.g. a crashing treatment that logs fewer exposures), so every
     effect estimate is biased: the verdict is "invalid" and no lift is reported.
     Exposures whose logged arm differs from the assignment invalidate too.
  2. Per arm: exposed users and every metric of `metrics.METRICS`.
  3. Each treatment arm vs control (the first arm): difference, relative lift,
     95 % CI and p-value per metric; Holm-adjusted p-values on the primary
     metric when there are several treatment arms; optional CUPED.
  4. Verdict from the primary metric, vetoed by guardrails that got
     significantly worse.
"""

from typing import Any, Dict, Optional

import numpy as np
import pandas as pd

from tfrs_two_tower.abtest import definition as definition_lib
from tfrs_two_tower.abtest import metrics as metrics_lib
from tfrs_two_tower.abtest import power
from tfrs_two_tower.abtest import stats

INVALID = "invalid"
BETTER = "treatment better"
WORSE = "treatment worse"
NO_DIFFERENCE = "no significant difference"
GUARDRAIL = "guardrail violated"

PEEKING_WARNING = (
    "Fixed horizon: this test is valid when read ONCE, after the planned number of users "
    "(power plan) has been reached. Checking repeatedly and stopping at the first p < 0.05 "
    "('peeking') makes false positives far more likely than 5 %.")
INTERFERENCE_NOTE = (
    "Interference (two-sided market): arms share one pool of people. Treatment users' likes "
    "land on control users and matches need both sides, so arms are not independent (SUTVA "
    "does not hold exactly): likes received and matches of control users partly reflect the "
    "treatment, and the measured difference can under- or over-state the effect of a full "
    "launch. Read match metrics with that in mind; cluster (e.g. city-level) randomisation "
    "or a switchback design measure the market effect.")


class AnalysisError(ValueError):
  """Data that cannot be analysed (no users, unknown arms, ...)."""


def _compare(metric: metrics_lib.Metric, control: pd.DataFrame, treatment: pd.DataFrame,
             alpha: float, cuped: bool) -> Dict[str, Any]:
  if metric.kind == "ratio":
    result = stats.ratio_test(control[metric.column], control[metric.denominator],
                              treatment[metric.column], treatment[metric.denominator], alpha)
    return {**result.to_json(), "cuped": False}
  y_c, y_t = metric.values(control), metric.values(treatment)
  if cuped:
    y = np.concatenate([y_c, y_t])
    x = np.concatenate([metric.covariate(control), metric.covariate(treatment)])
    adjusted, theta, reduction = stats.cuped_adjust(y, x)
    result = stats.welch_test_samples(adjusted[:y_c.size], adjusted[y_c.size:], alpha)
    return {**result.to_json(), "test": f"CUPED + {result.test}", "cuped": True,
            "cuped_theta": theta, "variance_reduction": reduction}
  if metric.kind == "proportion":
    result = stats.two_proportion_z_test(int(y_c.sum()), y_c.size, int(y_t.sum()), y_t.size,
                                         alpha)
  else:
    result = stats.welch_test_samples(y_c, y_t, alpha)
  return {**result.to_json(), "cuped": False}


def arm_summary(outcomes: pd.DataFrame) -> Dict[str, Dict[str, float]]:
  """Per arm: exposed users, totals and every metric's arm-level value."""
  out = {}
  for arm, frame in outcomes.groupby("arm", sort=False):
    row = {"exposed_users": int(len(frame)),
           **{c: int(frame[c].sum()) for c in metrics_lib.OUTCOME_COLUMNS},
           "matched_users": int((frame["matches"] > 0).sum())}
    row.update({name: m.aggregate(frame) for name, m in metrics_lib.METRICS.items()})
    out[str(arm)] = row
  return out


def _verdict(comparisons: Dict[str, Dict[str, Any]], definition, alpha: float):
  primary = comparisons[definition.primary_metric]
  broken = [g for g in definition.guardrails
            if comparisons[g]["p_value"] < alpha
            and (comparisons[g]["difference"] < 0) == metrics_lib.METRICS[g].higher_is_better]
  p = primary.get("p_value_adjusted", primary["p_value"])
  metric = metrics_lib.METRICS[definition.primary_metric]
  better = (primary["difference"] > 0) == metric.higher_is_better
  if broken:
    return GUARDRAIL, broken
  if p < alpha:
    return (BETTER if better else WORSE), broken
  return NO_DIFFERENCE, broken


def analyze(outcomes: pd.DataFrame, definition: definition_lib.Definition, *,
            alpha: float = 0.05, cuped: bool = False, srm_alpha: float = stats.SRM_ALPHA,
            assignment_mismatches: int = 0, snapshot_at: Optional[pd.Timestamp] = None,
            power_target: float = 0.8) -> Dict[str, Any]:
  """Analyses per-user outcomes (`ab_user_outcomes` rows) of one experiment.

  Returns a JSON-ready dict: experiment, srm, arms (per-arm summary), verdict,
  verdict_detail, comparisons {treatment arm: {metric: comparison}} (absent
  when invalid), warnings, notes.
  """
  if outcomes.empty:
    raise AnalysisError(f"experiment {definition.name!r}: no exposed users")
  arms = definition.experiment.arm_names
  observed = outcomes["arm"].astype(str).value_counts().to_dict()
  unknown = sorted(set(observed) - set(arms))
  if unknown:
    raise AnalysisError(f"experiment {definition.name!r}: exposures in arm(s) {unknown} that "
                        f"the experiment does not define ({list(arms)})")
  srm = stats.sample_ratio_check(observed, definition.experiment.expected_fractions, srm_alpha)
  result: Dict[str, Any] = {
      "experiment": definition.to_json(), "alpha": alpha, "cuped": cuped,
      "snapshot_at": None if snapshot_at is None else snapshot_at.isoformat(),
      "srm": srm.to_json(), "assignment_mismatches": int(assignment_mismatches),
      "arms": arm_summary(outcomes), "warnings": [], "notes": [PEEKING_WARNING,
                                                               INTERFERENCE_NOTE]}
  problems = []
  if not srm.passed:
    problems.append(f"sample ratio mismatch: observed {srm.observed} vs expected "
                    f"{ {a: round(e, 1) for a, e in srm.expected.items()} } "
                    f"(chi2 {srm.chi2:.1f}, p = {srm.p_value:.2g} < {srm_alpha})")
  if assignment_mismatches:
    problems.append(f"{assignment_mismatches} exposure(s) logged in an arm that differs from "
                    "the assignment function")
  if problems:
    result.update(verdict=INVALID, verdict_detail="; ".join(problems) + ". Fix assignment/"
                  "logging and rerun the experiment; effects of a broken split are biased, so "
                  "none are reported.")
    return result

  control = outcomes[outcomes["arm"] == definition.control]
  treatments = [a for a in arms[1:] if (outcomes["arm"] == a).any()]
  too_small = [a for a in (definition.control, *treatments) if (outcomes["arm"] == a).sum() < 2]
  if too_small or not treatments:
    raise AnalysisError(f"experiment {definition.name!r}: need >= 2 exposed users in control "
                        f"and a treatment arm (exposed: {observed})")
  comparisons = {arm: {name: _compare(m, control, outcomes[outcomes["arm"] == arm], alpha, cuped)
                       for name, m in metrics_lib.METRICS.items()} for arm in treatments}
  if len(treatments) > 1:
    primary_p = [comparisons[a][definition.primary_metric]["p_value"] for a in treatments]
    for arm, p in zip(treatments, stats.holm_adjust(primary_p)):
      comparisons[arm][definition.primary_metric]["p_value_adjusted"] = float(p)
  verdicts = {}
  for arm in treatments:
    verdict, broken = _verdict(comparisons[arm], definition, alpha)
    verdicts[arm] = {"verdict": verdict, "guardrails_violated": broken}
  result["comparisons"] = comparisons
  result["arm_verdicts"] = verdicts
  result["verdict"] = (verdicts[treatments[0]]["verdict"] if len(treatments) == 1 else
                       "; ".join(f"{a}: {v['verdict']}" for a, v in verdicts.items()))
  result["verdict_detail"] = _detail(comparisons, verdicts, definition, alpha)
  result["detectable_difference"] = _detectable(result["arms"], definition, alpha, power_target)
  result["warnings"] = _horizon_warnings(result["arms"], definition, snapshot_at)
  return result


def _detail(comparisons, verdicts, definition, alpha) -> str:
  lines = []
  for arm, v in verdicts.items():
    c = comparisons[arm][definition.primary_metric]
    lift = ("" if c["relative_lift"] is None else
            f", relative lift {c['relative_lift']:+.1%} "
            f"[{c['lift_ci_low']:+.1%}, {c['lift_ci_high']:+.1%}]")
    text = (f"{arm} vs {definition.control}: {definition.primary_metric} {c['control']:.4g} -> "
            f"{c['treatment']:.4g}, difference {c['difference']:+.4g} "
            f"[{c['ci_low']:+.4g}, {c['ci_high']:+.4g}] (95 % CI){lift}, p = {c['p_value']:.3g}")
    if v["guardrails_violated"]:
      text += f"; guardrail(s) significantly worse: {', '.join(v['guardrails_violated'])}"
    lines.append(text)
  return "; ".join(lines)


def _detectable(arms, definition, alpha, power_target) -> Optional[Dict[str, float]]:
  """The primary-metric difference this many users could detect (80 % power), for context."""
  metric = metrics_lib.METRICS[definition.primary_metric]
  control = arms[definition.control]
  n = min(a["exposed_users"] for a in arms.values())
  if metric.kind != "proportion" or not 0 < control[metric.name] < 1:
    return None
  difference = power.detectable_difference_for_rate(control[metric.name], n, alpha, power_target)
  return {"metric": metric.name, "users_per_arm": n, "power": power_target,
          "absolute": difference, "relative": difference / control[metric.name]}


def _horizon_warnings(arms, definition, snapshot_at) -> list:
  warnings = []
  smallest = min(a["exposed_users"] for a in arms.values())
  planned = definition.planned_users_per_arm
  if planned and smallest < planned:
    warnings.append(f"horizon not reached: {smallest} users in the smallest arm, {planned} "
                    "planned. Reading the result now is peeking; the verdict is provisional.")
  if definition.ends_at is None or (snapshot_at is not None and snapshot_at < definition.ends_at):
    warnings.append("the experiment is still running (ends_at not reached): outcomes are "
                    "incomplete and reading now is peeking.")
  return warnings
