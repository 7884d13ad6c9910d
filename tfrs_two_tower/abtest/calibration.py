"""A/A calibration: how often the analysis calls a difference when there is none.

Given the per-user outcomes of ONE population that received a single policy
(an A/A simulation), every new salt of the real assignment function splits it
into arms that differ only by chance. Analysing many such splits measures the
false-positive rate of each test; a calibrated test is significant in about
`alpha` of them. The binomial standard error of the rate over S splits is
sqrt(alpha (1 - alpha) / S) (0.7 points for S = 1000 at alpha = 0.05).

Re-splitting one population reuses its outcomes, so the splits are not
independent experiments: it checks the tests, not the simulator's randomness
(full database round trips with fresh simulations do that).
"""

import dataclasses
from typing import Any, Dict

import numpy as np
import pandas as pd

from tfrs_two_tower.abtest import analysis
from tfrs_two_tower.abtest import assignment
from tfrs_two_tower.abtest import definition as definition_lib
from tfrs_two_tower.abtest import metrics as metrics_lib
from tfrs_two_tower.abtest import stats


def naive_swipe_level_like_rate_test(frame: pd.DataFrame, control: str, treatment: str):
  """The WRONG test, for contrast: likes / swipes as independent Bernoulli swipes."""
  c, t = frame[frame["arm"] == control], frame[frame["arm"] == treatment]
  return stats.two_proportion_z_test(int(c["likes_given"].sum()), int(c["swipes"].sum()),
                                     int(t["likes_given"].sum()), int(t["swipes"].sum()))


def resplit(outcomes: pd.DataFrame, definition: definition_lib.Definition, num_splits: int,
            *, alpha: float = 0.05, cuped: bool = False, salt_prefix: str = "aa") -> Dict[str, Any]:
  """Analyses `num_splits` re-randomisations of one population.

  Returns:
    {"splits", "alpha", "false_positive_rate": {metric: rate}, "srm_failures",
     "invalid_verdicts", "naive_like_rate_false_positive_rate", "standard_error"}.
  """
  experiment = definition.experiment
  user_ids = outcomes["user_id"].astype(str).tolist()
  significant = {name: 0 for name in metrics_lib.METRICS}
  naive = srm_failures = 0
  for i in range(num_splits):
    salted = assignment.Experiment(experiment.name, f"{salt_prefix}{i}", experiment.arms)
    split = outcomes.assign(arm=salted.assign_many(user_ids))
    result = analysis.analyze(split, dataclasses.replace(definition, experiment=salted),
                              alpha=alpha, cuped=cuped)
    if result["verdict"] == analysis.INVALID:
      srm_failures += 1
      continue
    treatment = experiment.arm_names[1]
    for name, comparison in result["comparisons"][treatment].items():
      significant[name] += comparison["p_value"] < alpha
    naive += naive_swipe_level_like_rate_test(split, experiment.arm_names[0],
                                              treatment).p_value < alpha
  valid = max(num_splits - srm_failures, 1)
  return {"splits": num_splits, "alpha": alpha, "cuped": cuped, "users": len(outcomes),
          "srm_failures": srm_failures,
          "false_positive_rate": {k: v / valid for k, v in significant.items()},
          "naive_like_rate_false_positive_rate": naive / valid,
          "standard_error": float(np.sqrt(alpha * (1 - alpha) / valid))}

