"""The report's off-policy section: every recommender judged on the logged feeds.

When the dataset carries an impressions log (`data/impressions.py`), the
estimators of `off_policy.py` (IPS, SNIPS, doubly robust) estimate each
recommender's like/match rate@k from what the logging policy showed, with one
reward model for all so the doubly robust figures compare alike.
"""

from typing import Callable, Dict, List, Optional

import numpy as np

from tfrs_two_tower.data import impressions as impressions_lib
from tfrs_two_tower.evaluation import evaluator
from tfrs_two_tower.evaluation import off_policy
from tfrs_two_tower.evaluation import recommenders
from tfrs_two_tower.evaluation import report as report_lib


def section(dataset, data: evaluator.EvalData, entries: List[recommenders.Entry],
                results: Dict[str, evaluator.Result], counts: np.ndarray, k: int, oracle,
                log: Callable[..., None]) -> Optional[Dict[str, object]]:
  """Off-policy estimates of like/match rate@k for every recommender from the dataset's
  impressions log (None without one). Reward model: the first one-way run's calibrated
  P(like), else the lift baseline's; the same for every recommender so DR compares alike."""
  log_frame = impressions_lib.read(dataset)
  if log_frame is None:
    return None
  source = dataset.file(impressions_lib.FILE)
  try:
    feeds = off_policy.logged_feeds(log_frame, data, source)
  except off_policy.ImpressionLogError as e:
    raise recommenders.EvaluationInputError(str(e)) from None
  if feeds.feed.size == 0:
    return {"refused": f"{source}: no logged feed of an evaluated user in the eval window",
            "log": feeds.notes}
  ranked = [e for e in entries if e.calibration is not None]
  reference = next((e for e in ranked if e.kind == "model"),
                   next((e for e in ranked if e.scorer.name == recommenders.LIFT_BASELINE),
                        ranked[0]))
  reward = off_policy.reward_model(reference.scorer, reference.calibration, feeds, data,
                                   dataset.config.same_entity_both_sides)
  sections, sums = {}, {}
  for entry in entries:
    name = entry.scorer.name
    sums[name], sections[name] = off_policy.evaluate_ranking(
        entry.scorer, feeds, data, reward, k, counts, oracle, results[name].top.candidates)
    support = sections[name]["support"]
    log("evaluate: off-policy %-24s %s (matched %d, ESS %.0f)" % (
        name, "refused" if sums[name] is None else "DR like@%d %s" % (
            k, report_lib.format_estimate(sections[name]["segments"]["all"]["dr_like"])),
        support["matched_impressions"], support["effective_sample_size"]))
  lifts = {}
  if sums.get(recommenders.LIFT_BASELINE) is not None:
    lifts = {name: off_policy.lift(s, sums[recommenders.LIFT_BASELINE], counts, data.segments)
             for name, s in sums.items()
             if s is not None and results[name].info["kind"] == "model"}
  return {"file": impressions_lib.FILE, "k": k, "log": feeds.notes,
          "explored": feeds.explored, "reward_model": reward.name,
          "min_effective_sample_size": off_policy.MIN_EFFECTIVE_SAMPLE,
          "recommenders": sections, "lifts": lifts}
