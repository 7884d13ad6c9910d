"""Off-policy estimates of a new ranking's like rate@k and match rate@k from the feed's log.

The log (`data.impressions`, docs/data.md) holds, for every app open in the
eval window (a *feed* f of viewer u), the profiles the feed considered (its
pool P_f), which of them it showed, and each one's propensity
p_f(v) = P(the feed shows v | P_f). The new ranking pi is evaluated as the feed's
ranker: it orders the same pool by its own score and would show its top k,
L_f = top_k(pi, P_f) (the already-swiped profiles are left out, as everywhere in
the evaluation). Target, per slot of those lists:

    V(pi) = sum_f sum_{v in L_f} E[r(u_f, v)]  /  sum_f |L_f|

with r = 1[u likes v] (like rate@k) or 1[u likes v] * 1[v likes u] (match rate@k).

Estimators (w_fv = 1[v shown in f] / p_f(v), the importance weight; r_fv observed
only where shown; q_fv = the reward model's prediction):

    IPS    V = sum_f sum_{v in L_f} w_fv r_fv / sum_f |L_f|
    SNIPS  V = sum_f sum_{v in L_f} w_fv r_fv / sum_f sum_{v in L_f} w_fv
    DR     V = sum_f sum_{v in L_f} [q_fv + w_fv (r_fv - q_fv)] / sum_f |L_f|

IPS is the item-level ("independent item") inverse propensity estimator for
rankings (Li et al. 2018, "Offline evaluation of ranking policies with click
models"; Horvitz & Thompson 1952); SNIPS divides by the realised weight sum
instead of its expectation, E[sum w] = sum |L_f| (Swaminathan & Joachims 2015):
a little bias, much less variance. DR (Dudik, Langford & Li 2011) adds the
reward model as a control variate: unbiased when the propensities are right,
whatever q is, and lower variance the better q predicts r. The reward model is
the run's Platt-calibrated P(like) (`retrieval.PlattCalibration`).

Assumptions (the estimates are unbiased only under them):
  1. Logged propensities are the true probabilities that the feed showed the
     profile given its pool and any randomness that is independent of the
     viewer's response (positivity: p > 0 for every pool member pi can list).
  2. A shown profile's reward depends on the pair only, not on its position or
     on the other profiles in the feed (no position bias, no slate effects).
     Real feeds have position bias: log positions, and treat estimates for
     lists that reorder the top of the feed as optimistic/pessimistic by it.
  3. The estimand is re-ranking the feed's pool, not ranking the whole catalogue:
     `catalogue_overlap` says how much of pi's whole-catalogue top-k the pools
     contain.
  4. Match rate: whether v likes u back is not randomised by u's feed. It is v's
     observed swipe on u where there is one (eval window, else train), else the
     reward model's P(v likes u) -- the match estimates lean on that model's
     calibration where v never swiped u.

Bootstrap: per-user sums of numerators and denominators, resampled over users
with the evaluation's shared [B, U] matrix (`metrics.bootstrap_counts`), so lifts
are paired by user.
"""

import dataclasses
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from tfrs_two_tower.evaluation import metrics
from tfrs_two_tower.evaluation import retrieval

ESTIMATORS = ("ips", "snips", "dr")
MIN_EFFECTIVE_SAMPLE = 100  # below this the weights are too few/too uneven for a trustworthy CI


class ImpressionLogError(ValueError):
  """An impressions log that cannot support estimates; the message names file/column/row."""


class NoSupportError(ImpressionLogError):
  """The new ranking's lists contain no shown impression: there is nothing to estimate from."""


@dataclasses.dataclass
class LoggedFeeds:
  """The eval window's logged feeds, one row per (feed, pool member).  Arrays [R].

  Attributes:
    feed: [R] int feed index 0..S-1, rows grouped by feed.
    users: [R] evaluated-user index of the viewer; candidates: [R] candidate row.
    position, score, propensity, shown: the log's columns.
    like: [R] 1 when the viewer liked the profile (in either split), else 0.
    back: [R] the profile's own swipe on the viewer (eval, else train): 1, 0, NaN if none.
    source: the log's file, for messages.  notes: counts of what was left out.
  """
  feed: np.ndarray
  users: np.ndarray
  candidates: np.ndarray
  position: np.ndarray
  score: np.ndarray
  propensity: np.ndarray
  shown: np.ndarray
  like: np.ndarray
  back: np.ndarray
  source: str
  notes: Dict[str, int]

  @property
  def explored(self) -> bool:
    """Whether any logged profile had propensity < 1 (the feed explored)."""
    return bool((self.propensity < 1).any())


def logged_feeds(log: pd.DataFrame, data, source: str) -> LoggedFeeds:
  """The eval-window part of a dataset's impressions log, joined to the evaluation.

  Args:
    log: `data.impressions.read(dataset)`'s frame.
    data: the `evaluator.EvalData` of the same dataset.
    source: the log's file name, for messages.
  Raises:
    ImpressionLogError for rows that name viewers or profiles missing from the
    dataset (values are checked when the log is written: `data.impressions`).
  """
  notes = {"logged_rows": int(len(log))}
  q_rows = retrieval.id_index(data.query_ids).get_indexer(log["query_id"].to_numpy())
  c_rows = retrieval.id_index(data.candidate_ids).get_indexer(log["candidate_id"].to_numpy())
  for rows, column in ((q_rows, "query_id"), (c_rows, "candidate_id")):
    if (rows < 0).any():
      row = int(np.flatnonzero(rows < 0)[0])
      raise ImpressionLogError(f"{source}: column {column!r} row {row}: "
                               f"{log[column].iloc[row]!r} is not in the dataset")
  propensity = log["propensity"].to_numpy(np.float64)  # (0, 1]: checked when written
  keep = log["timestamp"].to_numpy() >= data.split_time
  notes["rows_before_split"] = int((~keep).sum())
  pos = np.minimum(np.searchsorted(data.users, q_rows), data.users.size - 1)
  evaluated = data.users[pos] == q_rows
  notes["rows_of_viewers_without_eval_swipes"] = int((keep & ~evaluated).sum())
  keep &= evaluated
  width = np.int64(data.candidate_ids.size)
  excluded = np.isin(pos * width + c_rows,
                     data.exclusions.rows * width + data.exclusions.candidates)
  notes["rows_already_swiped_in_train"] = int((keep & excluded).sum())
  keep &= ~excluded
  feed_codes = pd.factorize(log["feed_id"].to_numpy())[0]
  has_shown = np.bincount(feed_codes, weights=keep & log["shown"].to_numpy(bool),
                          minlength=feed_codes.max(initial=-1) + 1) > 0
  keep &= has_shown[feed_codes]
  order = np.flatnonzero(keep)[np.argsort(feed_codes[keep], kind="stable")]
  feed = np.unique(feed_codes[order], return_inverse=True)[1]
  users, candidates = pos[order], c_rows[order]
  liked = _liked_keys(data, width)
  like = np.isin(data.users[users] * width + candidates, liked).astype(np.float64)
  back = _back_labels(data, users, candidates)
  notes.update(rows=int(order.size), feeds=int(feed.max(initial=-1) + 1),
               shown=int(log["shown"].to_numpy(bool)[order].sum()))
  return LoggedFeeds(feed=feed, users=users, candidates=candidates,
                     position=log["position"].to_numpy(np.int64)[order],
                     score=log["score"].to_numpy(np.float64)[order],
                     propensity=propensity[order], shown=log["shown"].to_numpy(bool)[order],
                     like=like, back=back, source=source,
                     notes=notes)


def _back_labels(data, users: np.ndarray, candidates: np.ndarray) -> np.ndarray:
  """[R] the profile's own swipe on the viewer: eval window, else train; NaN when none.

  Train back-swipes need one profile table on both sides (the profile as a query).
  """
  back = data.back_label(users, candidates).astype(np.float64)
  as_query = retrieval.id_index(data.query_ids).get_indexer(data.candidate_ids[candidates])
  viewer = retrieval.id_index(data.candidate_ids).get_indexer(data.query_ids[data.users[users]])
  train = data.train_swipes
  width = np.int64(data.candidate_ids.size)
  keys, first = np.unique(train.users * width + train.candidates, return_index=True)
  wanted = as_query.astype(np.int64) * width + viewer
  pos = np.minimum(np.searchsorted(keys, wanted), max(keys.size - 1, 0))
  found = (as_query >= 0) & (viewer >= 0) & (keys.size > 0) & (keys[pos] == wanted)
  back = np.where(back < 0, np.where(found, train.labels[first[pos]], -1), back)
  return np.where(back < 0, np.nan, back)


def _liked_keys(data, width: np.int64) -> np.ndarray:
  """query row * N + candidate row of every like, train and eval."""
  train, held = data.train_swipes, data.eval_swipes
  return np.concatenate([train.users[train.labels == 1] * width
                         + train.candidates[train.labels == 1],
                         data.users[held.users[held.labels == 1]] * width
                         + held.candidates[held.labels == 1]])


def ranked_lists(feeds: LoggedFeeds, scores: np.ndarray, k: int) -> np.ndarray:
  """[R] bool: is the row in its feed's top k by `scores` (ties: the logged position)?"""
  order = np.lexsort((feeds.position, -np.asarray(scores, np.float64), feeds.feed))
  starts = np.searchsorted(feeds.feed[order], feeds.feed[order], side="left")
  in_list = np.zeros(feeds.feed.size, bool)
  in_list[order] = (np.arange(order.size) - starts) < k
  return in_list


@dataclasses.dataclass
class PerUser:
  """Per-user sums, [U] each: numerators per estimator, and their denominators."""
  numerators: Dict[str, np.ndarray]
  denominators: Dict[str, np.ndarray]
  support: Dict[str, object]


def per_user_sums(feeds: LoggedFeeds, in_list: np.ndarray, reward_like: np.ndarray,
                  reward_back: np.ndarray, num_users: int,
                  oracle_like: Optional[np.ndarray] = None,
                  oracle_back: Optional[np.ndarray] = None) -> PerUser:
  """IPS / SNIPS / DR numerators and denominators per user, for like and match rates.

  Args:
    in_list: [R] from `ranked_lists`.
    reward_like: [R] the reward model's P(viewer likes profile).
    reward_back: [R] its P(profile likes viewer), used where `feeds.back` is NaN.
    oracle_like, oracle_back: optional [R] true probabilities (a synthetic world):
      adds "oracle_like" / "oracle_match", the truth of the same lists.
  Returns:
    PerUser with keys "<estimator>_like", "<estimator>_match" (and the oracle's).
  """
  w = np.where(in_list & feeds.shown, 1.0 / feeds.propensity, 0.0)
  back = np.where(np.isnan(feeds.back), reward_back, feeds.back)
  rewards = {"like": (feeds.like, reward_like),
             "match": (feeds.like * back, reward_like * back)}
  slots = in_list.astype(np.float64)

  def by_user(values):
    return np.bincount(feeds.users, weights=values, minlength=num_users)

  num, den = {}, {}
  for target, (r, q) in rewards.items():
    num[f"ips_{target}"], den[f"ips_{target}"] = by_user(w * r), by_user(slots)
    num[f"snips_{target}"], den[f"snips_{target}"] = by_user(w * r), by_user(w)
    num[f"dr_{target}"] = by_user(slots * q + w * (r - q))
    den[f"dr_{target}"] = by_user(slots)
  if oracle_like is not None:
    truth = {"like": oracle_like, "match": oracle_like * oracle_back}
    for target, o in truth.items():
      num[f"oracle_{target}"], den[f"oracle_{target}"] = by_user(slots * o), by_user(slots)
  matched = in_list & feeds.shown
  ess = float(w.sum() ** 2 / np.sum(w ** 2)) if matched.any() else 0.0
  support = {
      "feeds": int(feeds.feed.max(initial=-1) + 1), "list_slots": int(in_list.sum()),
      "matched_impressions": int(matched.sum()),
      "expected_matched": round(float(feeds.propensity[in_list].sum()), 1),
      "effective_sample_size": round(ess, 1),
      "min_propensity_in_lists": (float(feeds.propensity[in_list].min())
                                  if in_list.any() else None),
      "max_weight": float(w.max(initial=0.0)),
      "explored_log": feeds.explored}
  return PerUser(num, den, support)


def check_support(support: Dict[str, object], source: str, name: str) -> List[str]:
  """Refuses lists with no shown impression; returns warnings for weak support."""
  if support["matched_impressions"] == 0:
    raise NoSupportError(
        f"{source}: no shown impression falls in {name}'s top-k lists of the logged feeds "
        f"({support['list_slots']} list slots): no logged support, no estimate. Log an "
        "exploring feed (docs/evaluation.md, 'Propensity logging').")
  warnings = []
  if not support["explored_log"]:
    warnings.append("the log has no exploration (every logged profile was shown, propensity "
                    "1): the estimates only re-rank what the feed chose to show and inherit "
                    "its selection")
  if support["effective_sample_size"] < MIN_EFFECTIVE_SAMPLE:
    warnings.append(f"effective sample size {support['effective_sample_size']:.0f} < "
                    f"{MIN_EFFECTIVE_SAMPLE}: too little logged support for a trustworthy "
                    "interval")
  return warnings


def catalogue_overlap(feeds: LoggedFeeds, top_candidates: np.ndarray, k: int) -> float:
  """Share of the ranking's whole-catalogue top-k (evaluated users with a logged feed)
  that lies in those users' logged pools: how much of its real lists the estimand covers."""
  width = np.int64(max(int(top_candidates.max(initial=0)), int(feeds.candidates.max(initial=0)))
                   + 1)
  users = np.unique(feeds.users)
  top = np.asarray(top_candidates)[users, :k]
  keys = users[:, None].astype(np.int64) * width + top
  hit = np.isin(keys, feeds.users.astype(np.int64) * width + feeds.candidates) & (top >= 0)
  slots = int((top >= 0).sum())
  return float(hit.sum() / slots) if slots else float("nan")


def summarize(sums: PerUser, counts: np.ndarray, segments: Dict[str, np.ndarray],
              level: float = 0.95) -> Dict[str, Dict[str, object]]:
  """segment -> estimate name -> {"value", "ci", "users", "trials"} (bootstrap over users)."""
  return {segment: {name: metrics.bootstrap_ratio(sums.numerators[name],
                                                  sums.denominators[name], counts, mask, level)
                    for name in sums.numerators}
          for segment, mask in segments.items()}


def lift(model: PerUser, baseline: PerUser, counts: np.ndarray,
         segments: Dict[str, np.ndarray], level: float = 0.95) -> Dict[str, Dict[str, object]]:
  """Relative lift of every estimate, model over baseline, paired by user, per segment."""
  return {segment: {name: metrics.bootstrap_ratio_lift(
      model.numerators[name], model.denominators[name], baseline.numerators[name],
      baseline.denominators[name], counts, mask, level) for name in model.numerators
      if name in baseline.numerators}
      for segment, mask in segments.items()}


@dataclasses.dataclass
class RewardModel:
  """The DR reward model on the logged rows: calibrated P(like) both ways.  Arrays [R]."""
  name: str
  like: np.ndarray  # P(viewer likes profile)
  back: np.ndarray  # P(profile likes viewer)


def reward_model(scorer: retrieval.Scorer, calibration: retrieval.PlattCalibration,
                 feeds: LoggedFeeds, data, two_sided: bool) -> RewardModel:
  """A run's Platt-calibrated P(like) on the logged rows.

  With `two_sided` (one profile table on both sides) P(profile likes viewer) is the
  same model with the roles swapped; otherwise matches do not exist and back = 1.
  """
  viewers = data.users[feeds.users]
  like = calibration.probability(scorer.pair_scores(viewers, feeds.candidates))
  if not two_sided:
    return RewardModel(scorer.name, like, np.ones_like(like))
  back = calibration.probability(scorer.pair_scores(
      scorer.query_rows(data.candidate_ids[feeds.candidates]),
      scorer.candidate_rows(data.query_ids[viewers])))
  return RewardModel(scorer.name, like, back)


def evaluate_ranking(scorer: retrieval.Scorer, feeds: LoggedFeeds, data, reward: RewardModel,
                     k: int, counts: np.ndarray, oracle=None,
                     top_candidates: Optional[np.ndarray] = None,
                     level: float = 0.95):
  """Every estimate for one ranking, with its support figures (or its refusal).

  Args:
    oracle: optional callable(swiper ids, swipee ids) -> true P(like) (a world's).
    top_candidates: optional [U, K] whole-catalogue lists, for `catalogue_overlap`.
  Returns:
    (PerUser or None when refused, report section: {"support", "warnings",
    "catalogue_overlap", "segments"} or {"refused": message, "support"}).
  """
  viewers = data.users[feeds.users]
  in_list = ranked_lists(feeds, scorer.pair_scores(viewers, feeds.candidates), k)
  truth = {}
  if oracle is not None:
    ids_u, ids_v = data.query_ids[viewers], data.candidate_ids[feeds.candidates]
    truth = {"oracle_like": oracle(ids_u, ids_v), "oracle_back": oracle(ids_v, ids_u)}
  sums = per_user_sums(feeds, in_list, reward.like, reward.back, data.num_users, **truth)
  try:
    warnings = check_support(sums.support, feeds.source, scorer.name)
  except NoSupportError as e:
    return None, {"refused": str(e), "support": sums.support}
  section = {"support": sums.support, "warnings": warnings, "reward_model": reward.name,
             "segments": summarize(sums, counts, data.segments, level)}
  if top_candidates is not None:
    section["catalogue_overlap"] = round(catalogue_overlap(feeds, top_candidates, k), 4)
  return sums, section
