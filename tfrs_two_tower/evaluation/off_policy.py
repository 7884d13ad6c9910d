"""Off-policy estimates of a ranking's like rate@k and match rate@k from the feed's log.

The log (`data.impressions`, docs/data.md) holds, for every app open in the
eval window (a *feed* f of viewer u, opened at t_f), the profiles the feed
showed and each one's propensity p_f(v) = P(the feed shows v | what it drew
independently of any response). The ranking pi is evaluated on the lists it
would show: its whole-catalogue top k for u, L_f = the evaluation's list
(eligibility rules applied, u's swipes before the split left out; the lists the
A/B simulator's arms show), skipping profiles created after t_f (they could not
be shown; deeper entries fill in). Target, per slot of those lists:

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

Only shown profiles inside the lists carry weight, so the log needs only its
shown rows; an exploring feed (docs/evaluation.md) that draws uniformly from the
viewer's eligible catalogue E_f with probability eps gives every listed profile
p >= eps F / |E_f| > 0, but weights up to |E_f| / (eps F): the effective sample
size (Kish, (sum w)^2 / sum w^2) is printed with every estimate.

Assumptions (the estimates are unbiased only under them):
  1. Logged propensities are the true probabilities that the feed showed the
     profile given any randomness that is independent of the viewer's response
     (positivity: p > 0 for every profile pi lists: an exploring feed over the
     same eligible catalogue the lists come from).
  2. A shown profile's reward depends on the pair only, not on its position or
     on the other profiles in the feed (no position bias, no slate effects).
     Real feeds have position bias: log positions.
  3. The list is fixed at the split time (the evaluation's lists); profiles the
     viewer swipes during the eval window stay in it, their reward is that swipe.
  4. Match rate: whether v likes u back is not randomised by u's feed.
     a. A log with reciprocal probes (`probed`, `probe_propensity` columns,
        docs/data.md): when u was shown v, with a known probability drawn
        independently of any response, v was shown u (a probe) and answered.
        On probed rows the back-like is v's observed swipe on u (the probe's, or an
        earlier one: every observed swipe is an unbiased draw, since no feed depends
        on responses), and the match estimators use only those rows, weighted by
        wp_fv = 1[v shown in f AND probed] / pp_f(v), pp = probe_propensity:
            IPS    sum wp r / sum |L_f|        SNIPS  sum wp r / sum wp
            DR     sum [q^m + wp (r - q^m)] / sum |L_f|,  q^m = P(like) * P(back)
        (the reward model both ways, never an observed swipe: the control variate
        must not depend on whether a probe fired). Unbiased for any ranking whose
        listed profiles all have pp > 0. A probed row whose back-swipe is missing
        (the probe was never answered) counts as no match (r = 0): the estimate is
        then of the realised mutual-like rate, and `unanswered_probes` in the
        support says how many rows that concerns. The probe impression itself (v
        shown u) is not a row of the log -- it is not part of v's feed's draw -- so the
        like estimators never see it (docs/data.md).
     b. A log without probes: the back-like is v's observed swipe on u where there
        is one (eval window, else train), else the reward model's P(v likes u) --
        the match estimates lean on that model's calibration where v never swiped
        u. No importance weight corrects that part, so the match estimates are given
        only when the back-swipe is observed for at least MIN_BACK_OBSERVED of the
        list slots and of the weighted matched rows (`back_observed_share`);
        otherwise they are refused as "not supported by this log" (`match_supported`
        False in the support, value None with the reason) and the answer's match lift
        falls back to impression-conditioned match precision. Why: on the default
        world the modelled back-likes biased the match estimates (docs/evaluation.md,
        "Off-policy estimates").

Bootstrap: per-user sums of numerators and denominators, resampled over users
with the evaluation's shared [B, U] matrix (`metrics.bootstrap_counts`), so lifts
are paired by user.
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from tfrs_two_tower import features as features_lib
from tfrs_two_tower.evaluation import metrics
from tfrs_two_tower.evaluation import retrieval

ESTIMATORS = ("ips", "snips", "dr")
MIN_EFFECTIVE_SAMPLE = 100  # below this the weights are too few/too uneven for a trustworthy CI
# Match estimates need the back-like observed, not modelled, for at least this share of the
# list slots and of the weighted matched rows: below it the reward model's P(v likes u)
# carries most of the estimate and no weight corrects its bias. One half = "observed
# for the majority", a stated rule, not a fitted value.
MIN_BACK_OBSERVED = 0.5
MATCH_TARGETS = tuple(f"{e}_match" for e in ESTIMATORS)


class ImpressionLogError(ValueError):
  """An impressions log that cannot support estimates; the message names file/column/row."""


class NoSupportError(ImpressionLogError):
  """The ranking's lists contain no shown impression: there is nothing to estimate from."""


@dataclasses.dataclass
class LoggedFeeds:
  """The eval window's logged feeds, one row per (feed, profile shown).  Arrays [R].

  Attributes:
    feed: [R] int feed index 0..S-1, rows grouped by feed.
    users: [R] evaluated-user index of the viewer; candidates: [R] candidate row.
    position, score, propensity, shown: the log's columns (shown is all True: rows
      of profiles a feed considered but did not show carry no weight and are dropped).
    like: [R] 1 when the viewer liked the profile (in either split), else 0.
    back: [R] the profile's own swipe on the viewer (eval, else train): 1, 0, NaN if none.
    feed_users: [S] evaluated-user index of each feed's viewer; feed_times: [S] unix
      seconds it was opened. Every eval-window feed of an evaluated viewer counts, also
      one whose shown profiles were all swiped before the split.
    source: the log's file, for messages.  notes: counts of what was left out.
    probed, probe_propensity: [R] the reciprocal-probe columns, None for a log
      without them (probe_propensity NaN where unknown and not probed).
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
  feed_users: np.ndarray
  feed_times: np.ndarray
  source: str
  notes: Dict[str, int]
  probed: Optional[np.ndarray] = None
  probe_propensity: Optional[np.ndarray] = None

  @property
  def probes(self) -> bool:
    """Whether the log carries reciprocal probes (the columns, and at least one fired)."""
    return self.probed is not None and bool(self.probed.any())

  @property
  def explored(self) -> bool:
    """Whether any logged profile had propensity < 1 (the feed explored)."""
    return bool((self.propensity < 1).any())

  @property
  def num_feeds(self) -> int:
    return int(self.feed_users.size)


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
                     data.exclusions.rows * width + data.exclusions.candidates) & keep
  notes["rows_already_swiped_in_train"] = int((keep & excluded).sum())
  # A feed counts (its list slots are estimated) even when every row it showed is left out.
  codes = pd.factorize(log["feed_id"].to_numpy())[0]
  kept_codes, first = np.unique(codes[keep], return_index=True)
  first_row = np.flatnonzero(keep)[first]  # [S] a row of each feed: its viewer and time
  feed_of_code = np.full(codes.max(initial=-1) + 1, -1)
  feed_of_code[kept_codes] = np.arange(kept_codes.size)
  shown = log["shown"].to_numpy(bool)
  notes["unshown_rows"] = int((keep & ~excluded & ~shown).sum())
  keep &= ~excluded & shown
  order = np.flatnonzero(keep)[np.argsort(codes[keep], kind="stable")]
  users, candidates = pos[order], c_rows[order]
  liked = _liked_keys(data, width)
  like = np.isin(data.users[users] * width + candidates, liked).astype(np.float64)
  back = _back_labels(data, users, candidates)
  notes.update(rows=int(order.size), feeds=int(kept_codes.size), shown=int(order.size))
  probes = {}
  if "probed" in log:
    probes = {"probed": log["probed"].to_numpy(bool)[order],
              "probe_propensity": log["probe_propensity"].to_numpy(np.float64)[order]}
    notes["probed"] = int(probes["probed"].sum())
  return LoggedFeeds(feed=feed_of_code[codes[order]], users=users, candidates=candidates,
                     position=log["position"].to_numpy(np.int64)[order],
                     score=log["score"].to_numpy(np.float64)[order],
                     propensity=propensity[order], shown=shown[order],
                     like=like, back=back, feed_users=pos[first_row],
                     feed_times=log["timestamp"].to_numpy(np.int64)[first_row], source=source,
                     notes=notes, **probes)


def _back_labels(data, users: np.ndarray, candidates: np.ndarray) -> np.ndarray:
  """[R] the profile's own swipe on the viewer: eval window, else history (train, then
  validation); NaN when none.

  History back-swipes need one profile table on both sides (the profile as a query).
  """
  back = data.back_label(users, candidates).astype(np.float64)
  as_query = retrieval.id_index(data.query_ids).get_indexer(data.candidate_ids[candidates])
  viewer = retrieval.id_index(data.candidate_ids).get_indexer(data.query_ids[data.users[users]])
  width = np.int64(data.candidate_ids.size)
  wanted = as_query.astype(np.int64) * width + viewer
  for swipes in (data.train_swipes, data.validation_swipes):
    if swipes is None:
      continue
    keys, first = np.unique(swipes.users * width + swipes.candidates, return_index=True)
    pos = np.minimum(np.searchsorted(keys, wanted), max(keys.size - 1, 0))
    found = (as_query >= 0) & (viewer >= 0) & (keys.size > 0) & (keys[pos] == wanted)
    back = np.where(back < 0, np.where(found, swipes.labels[first[pos]], -1), back)
  return np.where(back < 0, np.nan, back)


def _liked_keys(data, width: np.int64) -> np.ndarray:
  """query row * N + candidate row of every like, train and eval."""
  train, held = data.train_swipes, data.eval_swipes
  return np.concatenate([train.users[train.labels == 1] * width
                         + train.candidates[train.labels == 1],
                         data.users[held.users[held.labels == 1]] * width
                         + held.candidates[held.labels == 1]])


@dataclasses.dataclass
class Lists:
  """A ranking's list at every logged feed, one row per slot.  Arrays [L].

  Attributes:
    feed: [L] feed index; users: [L] evaluated-user index; candidates: [L] candidate row.
    q_like, q_match: [L] the reward model's P(like) and P(like) * back, back = the
      observed back-swipe where there is one, else the reward model's P(v likes u).
    q_match_model: [L] the reward model's P(like) * P(v likes u), never an observed
      swipe: the DR control variate of a probed log; None = q_match.
    oracle_like, oracle_match: [L] the true probabilities (a synthetic world), or None.
    not_yet_created: top-k entries skipped because the profile was created after the
      feed was opened (they could not have been shown then).
    back_observed: [L] bool, the listed profile's own swipe on the viewer is in the
      data (eval window or train); None when unknown.
  """
  feed: np.ndarray
  users: np.ndarray
  candidates: np.ndarray
  q_like: np.ndarray
  q_match: np.ndarray
  oracle_like: Optional[np.ndarray]
  oracle_match: Optional[np.ndarray]
  not_yet_created: int
  back_observed: Optional[np.ndarray] = None
  q_match_model: Optional[np.ndarray] = None


def list_slots(feeds: LoggedFeeds, top_candidates: np.ndarray, k: int,
               created_at: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, int]:
  """(feed [L], candidate [L], skipped): each feed's list = its viewer's first k entries
  of `top_candidates` [U, K] (-1 = none) that existed when the feed was opened
  (`created_at` [N] unix seconds, -1 unknown = existed)."""
  viewers, times = feeds.feed_users, feeds.feed_times
  top = np.asarray(top_candidates)[viewers]  # [S, K]
  valid = top >= 0
  existed = valid.copy()
  if created_at is not None:
    born = np.asarray(created_at)[np.maximum(top, 0)]
    existed &= (born < 0) | (born <= times[:, None])
  in_list = existed & (np.cumsum(existed, axis=1) <= k)
  skipped = int((valid & ~existed & (np.cumsum(valid, axis=1) <= k)).sum())
  feed, slot = np.nonzero(in_list)
  return feed, top[feed, slot], skipped


def matched_rows(feeds: LoggedFeeds, lists: Lists) -> np.ndarray:
  """[R] index of the list slot each logged row fills (same feed and profile), -1 if none."""
  width = np.int64(max(int(lists.candidates.max(initial=0)),
                       int(feeds.candidates.max(initial=0))) + 1)
  keys = lists.feed.astype(np.int64) * width + lists.candidates
  order = np.argsort(keys, kind="stable")
  wanted = feeds.feed.astype(np.int64) * width + feeds.candidates
  pos = np.minimum(np.searchsorted(keys[order], wanted), max(keys.size - 1, 0))
  found = (keys.size > 0) & (keys[order][pos] == wanted)
  return np.where(found, order[pos], -1)


@dataclasses.dataclass
class PerUser:
  """Per-user sums, [U] each: numerators per estimator, and their denominators."""
  numerators: Dict[str, np.ndarray]
  denominators: Dict[str, np.ndarray]
  support: Dict[str, object]


def per_user_sums(feeds: LoggedFeeds, lists: Lists, reward_like: np.ndarray,
                  reward_back: np.ndarray, num_users: int) -> PerUser:
  """IPS / SNIPS / DR numerators and denominators per user, for like and match rates.

  Args:
    lists: the ranking's slots (`ranking_lists`), q and truth on them.
    reward_like, reward_back: [R] the reward model on the logged rows (`RewardModel`):
      q of the correction term, and P(v likes u) where the back-swipe is unobserved.
  Returns:
    PerUser with keys "<estimator>_like", "<estimator>_match" (and "oracle_like" /
    "oracle_match" when `lists` carries the truth). The match keys come from the
    probed rows when the log has probes (module docstring, 4a), else 4b.
  """
  matched = (matched_rows(feeds, lists) >= 0) & feeds.shown
  w = np.where(matched, 1.0 / feeds.propensity, 0.0)
  if feeds.probes:
    probed = matched & feeds.probed
    w_match = np.where(probed, 1.0 / np.where(probed, feeds.probe_propensity, 1.0), 0.0)
    # An unanswered probe (no back-swipe) is no match: the realised mutual-like rate.
    back = np.nan_to_num(feeds.back, nan=0.0)
    q_match_slots = lists.q_match if lists.q_match_model is None else lists.q_match_model
    match = (feeds.like * back, reward_like * reward_back, q_match_slots, w_match)
  else:
    back = np.where(np.isnan(feeds.back), reward_back, feeds.back)
    match = (feeds.like * back, reward_like * back, lists.q_match, w)
  rewards = {"like": (feeds.like, reward_like, lists.q_like, w), "match": match}

  def by_user(users, values):
    return np.bincount(users, weights=values, minlength=num_users)

  slots = by_user(lists.users, np.ones(lists.users.size))
  num, den = {}, {}
  for target, (r, q, q_slots, weight) in rewards.items():
    weighted = by_user(feeds.users, weight * r)  # IPS and SNIPS share the numerator
    num[f"ips_{target}"], den[f"ips_{target}"] = weighted, slots
    num[f"snips_{target}"], den[f"snips_{target}"] = weighted, by_user(feeds.users, weight)
    num[f"dr_{target}"] = (by_user(lists.users, q_slots)
                           + by_user(feeds.users, weight * (r - q)))
    den[f"dr_{target}"] = slots
  if lists.oracle_like is not None:
    for target, truth in (("like", lists.oracle_like), ("match", lists.oracle_match)):
      num[f"oracle_{target}"], den[f"oracle_{target}"] = by_user(lists.users, truth), slots
  ess = _kish(w)
  observed_rows = ~np.isnan(feeds.back)
  back_share = {"weighted_matched_rows": (float(np.sum(w * observed_rows) / w.sum())
                                          if matched.any() else 0.0)}
  if lists.back_observed is not None and lists.back_observed.size:
    back_share["list_slots"] = float(lists.back_observed.mean())
  support = {
      "feeds": feeds.num_feeds, "list_slots": int(lists.users.size),
      "matched_impressions": int(matched.sum()),
      "effective_sample_size": round(ess, 1),
      "min_propensity_in_lists": (float(feeds.propensity[matched].min())
                                  if matched.any() else None),
      "max_weight": round(float(w.max(initial=0.0)), 1),
      "not_yet_created": lists.not_yet_created,
      "explored_log": feeds.explored,
      "back_observed_share": {key: round(v, 3) for key, v in back_share.items()},
      "match_supported": min(back_share.values()) >= MIN_BACK_OBSERVED,
      "match_from": "back-likes observed or modelled"}
  if feeds.probes:
    w_match = rewards["match"][3]
    support.update(match_from="reciprocal probes", match_supported=bool(probed.any()),
                   probes={"matched_probed_impressions": int(probed.sum()),
                           "effective_sample_size": round(_kish(w_match), 1),
                           "max_weight": round(float(w_match.max(initial=0.0)), 1),
                           "unanswered_probes": int((probed & np.isnan(feeds.back)).sum())})
  return PerUser(num, den, support)


def _kish(w: np.ndarray) -> float:
  """Kish's effective sample size (sum w)^2 / sum w^2 of weights [R] (0 when all are 0)."""
  return float(w.sum() ** 2 / np.sum(w ** 2)) if w.any() else 0.0


def match_refusal(support: Dict[str, object], name: str) -> Optional[str]:
  """Why the log cannot support `name`'s match estimates (None when it can)."""
  if support.get("match_supported", True):
    return None
  if "probes" in support:
    return (f"match rate not supported by this log for {name}: no probed impression falls "
            "in its lists (the log has reciprocal probes, but none on a listed pair)")
  shares = ", ".join(f"{key.replace('_', ' ')} {v:.0%}"
                     for key, v in support["back_observed_share"].items())
  return (f"match rate not supported by this log for {name}: the back-like (does the listed "
          f"profile like the viewer?) is observed for only {shares} (< "
          f"{MIN_BACK_OBSERVED:.0%}); the rest would come from the reward model, which no "
          "importance weight corrects")


def _refused_estimate(reason: str) -> Dict[str, object]:
  return {"value": None, "ci": None, "reason": reason}


def check_support(support: Dict[str, object], source: str, name: str) -> List[str]:
  """Refuses lists with no shown impression; returns warnings for weak support."""
  if support["matched_impressions"] == 0:
    raise NoSupportError(
        f"{source}: no shown impression falls in {name}'s top-k lists of the logged feeds "
        f"({support['list_slots']} list slots): no logged support, no estimate. Log an "
        "exploring feed (docs/evaluation.md, 'Propensity logging').")
  warnings = []
  if not support["explored_log"]:
    warnings.append("the log has no exploration (every logged profile was shown with "
                    "propensity 1): profiles the feed never shows get no weight, so the "
                    "estimates inherit its selection")
  if support["effective_sample_size"] < MIN_EFFECTIVE_SAMPLE:
    warnings.append(f"effective sample size {support['effective_sample_size']:.0f} < "
                    f"{MIN_EFFECTIVE_SAMPLE}: too little logged support for a trustworthy "
                    "interval")
  probes = support.get("probes")
  if probes and probes["matched_probed_impressions"]:
    if probes["effective_sample_size"] < MIN_EFFECTIVE_SAMPLE:
      warnings.append(f"match rate: probe effective sample size "
                      f"{probes['effective_sample_size']:.0f} < {MIN_EFFECTIVE_SAMPLE}: too "
                      "few probed impressions for a trustworthy interval")
    if probes["unanswered_probes"]:
      warnings.append(f"match rate: {probes['unanswered_probes']} probed impressions in the "
                      "lists have no back-swipe (unanswered probes), counted as no match")
  return warnings


def summarize(sums: PerUser, counts: np.ndarray, segments: Dict[str, np.ndarray],
              level: float = 0.95) -> Dict[str, Dict[str, object]]:
  """segment -> estimate name -> {"value", "ci", "users", "trials"} (bootstrap over users).

  Match estimates the log cannot support (`match_refusal`) are {"value": None, "reason"}.
  """
  refusal = match_refusal(sums.support, "this ranking")
  return {segment: {name: (_refused_estimate(refusal) if refusal and name in MATCH_TARGETS
                           else metrics.bootstrap_ratio(sums.numerators[name],
                                                        sums.denominators[name], counts, mask,
                                                        level))
                    for name in sums.numerators}
          for segment, mask in segments.items()}


def lift(model: PerUser, baseline: PerUser, counts: np.ndarray,
         segments: Dict[str, np.ndarray], level: float = 0.95) -> Dict[str, Dict[str, object]]:
  """Relative lift of every estimate, model over baseline, paired by user, per segment.

  Match lifts are refused ({"value": None, "reason"}) when either side's match
  estimates are not supported by the log.
  """
  refusal = (match_refusal(model.support, "the model")
             or match_refusal(baseline.support, "the baseline"))
  return {segment: {name: (_refused_estimate(refusal) if refusal and name in MATCH_TARGETS
                           else metrics.bootstrap_ratio_lift(
                               model.numerators[name], model.denominators[name],
                               baseline.numerators[name], baseline.denominators[name], counts,
                               mask, level))
                    for name in model.numerators if name in baseline.numerators}
          for segment, mask in segments.items()}


@dataclasses.dataclass
class RewardModel:
  """The DR reward model: a run's calibrated P(like) both ways.

  `like` / `back` [R] hold it on the logged rows (the DR correction terms); `predict`
  scores any (evaluated user [P], candidate row [P]) pairs -> (like, back) [P], e.g. a
  ranking's list slots (the DR sum of q).
  """
  name: str
  like: np.ndarray  # P(viewer likes profile)
  back: np.ndarray  # P(profile likes viewer)
  predict: Callable[[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]


def reward_model(scorer: retrieval.Scorer, calibration: retrieval.PlattCalibration,
                 feeds: LoggedFeeds, data, two_sided: bool) -> RewardModel:
  """A run's Platt-calibrated P(like), on the logged rows and for any pairs.

  With `two_sided` (one profile table on both sides) P(profile likes viewer) is the
  same model with the roles swapped; otherwise matches do not exist and back = 1.
  """
  def predict(users: np.ndarray, candidates: np.ndarray):
    viewers = data.users[users]
    like = calibration.probability(scorer.pair_scores(viewers, candidates))
    if not two_sided:
      return like, np.ones_like(like)
    return like, calibration.probability(scorer.pair_scores(
        scorer.query_rows(data.candidate_ids[candidates]),
        scorer.candidate_rows(data.query_ids[viewers])))

  like, back = predict(feeds.users, feeds.candidates)
  return RewardModel(scorer.name, like, back, predict)


def ranking_lists(feeds: LoggedFeeds, data, reward: RewardModel, top_candidates: np.ndarray,
                  k: int, oracle=None) -> Lists:
  """The ranking's list slots at every feed, with the reward model and the truth on them."""
  created = data.candidate_entities.get(features_lib.CREATED_AT)
  feed, candidates, skipped = list_slots(feeds, top_candidates, k, created)
  users = feeds.feed_users[feed]
  q_like, q_back = reward.predict(users, candidates)
  observed = _back_labels(data, users, candidates)
  q_match = q_like * np.where(np.isnan(observed), q_back, observed)
  truth_like = truth_match = None
  if oracle is not None:
    ids_u, ids_v = data.query_ids[data.users[users]], data.candidate_ids[candidates]
    truth_like = oracle(ids_u, ids_v)
    truth_match = truth_like * oracle(ids_v, ids_u)
  return Lists(feed, users, candidates, q_like, q_match, truth_like, truth_match, skipped,
               back_observed=~np.isnan(observed), q_match_model=q_like * q_back)


def evaluate_ranking(scorer: retrieval.Scorer, feeds: LoggedFeeds, data, reward: RewardModel,
                     k: int, counts: np.ndarray, oracle=None,
                     top_candidates: Optional[np.ndarray] = None,
                     level: float = 0.95):
  """Every estimate for one ranking's whole-catalogue lists, with its support (or refusal).

  Args:
    top_candidates: [U, K >= k] the ranking's lists as the evaluation made them
      (`evaluator.Result.top.candidates`: eligibility applied, swipes before the
      split excluded); required.
    oracle: optional callable(swiper ids, swipee ids) -> true P(like) (a world's).
  Returns:
    (PerUser or None when refused, report section: {"support", "warnings",
    "reward_model", "segments"} or {"refused": message, "support"}).
  """
  if top_candidates is None:
    raise ValueError(f"evaluate_ranking({scorer.name}): top_candidates (the evaluation's "
                     "lists) are required")
  lists = ranking_lists(feeds, data, reward, top_candidates, k, oracle)
  sums = per_user_sums(feeds, lists, reward.like, reward.back, data.num_users)
  try:
    warnings = check_support(sums.support, feeds.source, scorer.name)
  except NoSupportError as e:
    return None, {"refused": str(e), "support": sums.support}
  refusal = match_refusal(sums.support, scorer.name)
  if refusal:
    warnings.append(refusal)
  return sums, {"support": sums.support, "warnings": warnings, "reward_model": reward.name,
                "segments": summarize(sums, counts, data.segments, level)}
