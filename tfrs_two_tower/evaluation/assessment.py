"""One evaluation: every recommender ranked on one EvalData, with CIs, lifts and the off-policy section.

`assess` is the computation behind evaluate.py, callable from a notebook: it
builds the recommenders (baselines from the config, each run one-way, reciprocal
and with its penalties and caps: `recommenders`), ranks every evaluated user
with each (`evaluator.evaluate`), summarises each with user-level bootstrap CIs
(`evaluator.summarize`, B resamples of the U evaluated users), pairs every model
with feature matching (`evaluator.lift`: relative lift per user-level metric,
same resamples) and later runs with the first, and estimates the off-policy
section when the dataset has an impressions log. It reads the runs and the
dataset it is given and writes nothing; evaluate_stage opens the inputs and
writes the report directory.
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

from tfrs_two_tower.evaluation import evaluator
from tfrs_two_tower.evaluation import metrics
from tfrs_two_tower.evaluation import off_policy_section as off_policy_lib
from tfrs_two_tower.evaluation import recommenders as recommenders_lib
from tfrs_two_tower.evaluation import report as report_lib
from tfrs_two_tower.evaluation.recommenders import LIFT_BASELINE


@dataclasses.dataclass
class Assessment:
  """What `assess` computed.

  Attributes:
    entries: the recommenders (`recommenders.Entry`), baselines first.
    results: name -> `evaluator.Result` (per-user values, lists, swipe scores).
    recommenders: name -> summary with CIs per segment (the report's section).
    lifts: model name -> segment -> metric -> lift over feature matching (when evaluated).
    comparisons: "<run> vs <first run>" -> the same paired lifts.
    off_policy: the report's off-policy section (None without an impressions log).
  """
  entries: list
  results: Dict[str, evaluator.Result]
  recommenders: Dict[str, Dict[str, object]]
  lifts: Dict[str, Dict[str, object]]
  comparisons: Dict[str, Dict[str, object]]
  off_policy: Optional[Dict[str, object]]


def assess(dataset, data: evaluator.EvalData, runs: Sequence, names: Sequence[str],
           ks: Sequence[int], *, truth: Optional[evaluator.OracleFn] = None,
           baselines: Sequence[str] = (), seed: int = 0, db_url: Optional[str] = None,
           reciprocal_combinations: Sequence[str] = (), back_swipes: bool = True,
           penalties: Optional[Dict[str, List[float]]] = None, caps: Sequence[int] = (),
           bootstrap: int = 1000, batch_size: int = 1024,
           log: Callable[..., None] = print) -> Assessment:
  """Evaluates the baselines and every run (named `names`) on `data`; writes nothing.

  Args:
    dataset: the `reader.DatasetDir` that `data` was prepared from.
    runs: opened run directories (`run_dir.open_run`), trained on `dataset`.
    ks: sorted list lengths; ks[0] is the headline K.
    truth: P(u likes v) for id arrays (a world's oracle), or None.
    reciprocal_combinations: reciprocal modes of each run (empty: one-way only).
    penalties: {"popularity": [beta...], "hubness": [beta...]}; caps: exposure caps.
  """
  penalties = penalties or {"popularity": [], "hubness": []}
  entries = recommenders_lib.baseline_entries(baselines, data, dataset, seed, db_url)
  for name, run in zip(names, runs):
    entries += recommenders_lib.model_entries(
        name, run, data, dataset, reciprocal_combinations, back_swipes, penalties, caps,
        shown_slots=ks[0], log=log)

  counts = metrics.bootstrap_counts(data.num_users, bootstrap, seed)
  popular = metrics.top_popular_mask(data.likes_received, 0.01)
  results, recommenders = {}, {}
  for entry in entries:
    result = evaluator.evaluate(entry.scorer, data, ks, entry.calibration, truth, batch_size)
    result.info = {"kind": entry.kind, **entry.info}
    results[entry.scorer.name] = result
    recommenders[entry.scorer.name] = evaluator.summarize(result, data, counts, ks, popular)
    recommenders[entry.scorer.name]["eligibility_violations"] = evaluator.eligibility_violations(
        result, data)
    all_users = recommenders[entry.scorer.name]["segments"]["all"]
    log("evaluate: %-28s AUC %s  recall@%d %s  (%.1fs)" % (
        entry.scorer.name, report_lib.format_estimate(all_users["auc"]), ks[0],
        report_lib.format_estimate(all_users[f"recall@{ks[0]}"]), result.seconds))

  lifts = {}
  if LIFT_BASELINE in results:
    for name, result in results.items():
      if result.info["kind"] == "model":
        lifts[name] = evaluator.lift(result, results[LIFT_BASELINE], data, counts)
  comparisons = {}
  model_names = [n for n, r in results.items() if r.info["kind"] == "model"
                 and r.info["mode"] == "one_way"]
  for name in model_names[1:]:
    comparisons[f"{name} vs {model_names[0]}"] = evaluator.lift(
        results[name], results[model_names[0]], data, counts)

  off_policy = off_policy_lib.section(dataset, data, entries, results, counts, ks[0],
                                      truth, log)
  return Assessment(entries, results, recommenders, lifts, comparisons, off_policy)


def notes(data: evaluator.EvalData, with_world: bool) -> List[str]:
  """The report's reading notes (how each metric is defined and what biases it)."""
  out = [
      "Eval likes of pairs already swiped in train are not counted as relevant (they are "
      f"excluded from every list): {data.notes['eval_likes_already_swiped_in_train']} of "
      f"{data.notes['eval_likes']}.",
      "Offline recall only credits candidates the live feed happened to show: if that feed "
      "was feature matching, the logged likes favour feature matching (exposure bias).",
      "success@K = share of recommended users who liked the user back, among recommended "
      "users whose swipe on the user is observed in the eval window (`trials` = observed).",
      "factorized_topK_accuracy: TFRS FactorizedTopK definition (share of eval likes ranked "
      "in the top K of ALL candidates, nothing excluded), for comparison with TFRS tutorials.",
      "Log loss uses a Platt calibration fitted on train swipes; reciprocal scores combine "
      "two probabilities (product or harmonic mean), not P(like), so they have no log loss.",
      "Reciprocal modes (back_swipes on) take P(v likes u) = 1 / 0 when v liked / passed on u "
      "in train; such v rarely swipe u again in the eval window, so success@K judges them "
      "less often (fewer trials).",
  ]
  if with_world:
    out.append("oracle_*@K: mean hidden probability from the synthetic world over the top-K "
                 "pairs (like: u likes v, like_back: v likes u, match: both); a pair already "
                 "swiped in train counts with its observed outcome (1 like, 0 pass).")
  return out
