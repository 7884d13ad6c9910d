"""Evaluates recommenders (`retrieval.Scorer`s) on a dataset's time split, per user.

`prepare` turns a dataset directory into `EvalData`: who is evaluated (every
query user with an eval swipe), what each of them must not be recommended
(their train swipes, and themselves), what counts as relevant (their eval
likes; for match recall, eval likes that were liked back at any time), the
eval swipes for AUC, and the segments. `evaluate` runs one scorer over it and
keeps PER-USER numbers; `summarize` / `lift` turn them into estimates with
bootstrap intervals over users (`metrics.bootstrap_*`), paired across
recommenders because they share one resample matrix.

Relevant sets exclude pairs the user already swiped in train (they are excluded
from the lists, so no recommender could retrieve them); `EvalData.notes` counts
them.
"""

import dataclasses
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from tfrs_two_tower import eligibility as eligibility_lib
from tfrs_two_tower import features as features_lib
from tfrs_two_tower.data import dataset_format as fmt
from tfrs_two_tower.data import history as history_lib
from tfrs_two_tower.data import reader
from tfrs_two_tower.evaluation import metrics
from tfrs_two_tower.evaluation import retrieval
from tfrs_two_tower.evaluation import segments as segments_lib

_SWIPE_KEYS = (features_lib.QUERY_ID, features_lib.CANDIDATE_ID, features_lib.LABEL,
               features_lib.TIMESTAMP)


@dataclasses.dataclass
class Pairs:
  """(user index, candidate row) pairs with labels; arrays [P]."""
  users: np.ndarray
  candidates: np.ndarray
  labels: np.ndarray


@dataclasses.dataclass
class EvalData:
  """Everything the metrics need, indexed by evaluated user u = 0..U-1.

  Attributes:
    query_entities, candidate_entities: the entity tables (`reader.read_entities`).
    query_ids [Nq], candidate_ids [N]: row order of every scorer.
    users: [U] query row of each evaluated user.
    exclusions: per user, candidate rows never to recommend.
    likes: relevant eval likes (labels all 1).  matches: the liked-back subset.
    eval_swipes: every eval swipe of the evaluated users (like = 1, pass = 0).
    train_swipes: train swipes as (query row, candidate row, label), for calibration.
    validation_swipes: the validation window's swipes, the same way (history between
      train and the split: back-swipe lookups need it); None without that window.
    back_keys, back_labels: sorted keys of eval swipes by (swiper, swipee) in a
      shared id space, for "would v like u back?" lookups (`back_label`).
    likes_received: [N] train likes of each candidate (popularity).
    segments: name -> [U] bool.
    eligible: the config's eligibility rules over (query rows, candidate rows), applied
      to every ranked list; None without an eligibility section. Blocked pairs are
      in `exclusions`.
  """
  query_entities: Dict[str, np.ndarray]
  candidate_entities: Dict[str, np.ndarray]
  query_ids: np.ndarray
  candidate_ids: np.ndarray
  users: np.ndarray
  exclusions: retrieval.Exclusions
  likes: Pairs
  matches: Pairs
  eval_swipes: Pairs
  train_swipes: Pairs
  likes_received: np.ndarray
  segments: Dict[str, np.ndarray]
  split_time: int
  notes: Dict[str, int]
  _query_gid: np.ndarray
  _candidate_gid: np.ndarray
  _num_gids: int
  back_keys: np.ndarray
  back_labels: np.ndarray
  eligible: Optional[eligibility_lib.PairRules] = None
  validation_swipes: Optional[Pairs] = None

  @property
  def num_users(self) -> int:
    return self.users.size

  def back_label(self, users: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Label of candidate -> user eval swipes for [P] pairs: 1 like, 0 pass, -1 unobserved."""
    keys = (self._candidate_gid[candidates] * self._num_gids
            + self._query_gid[self.users[users]])
    pos = np.minimum(np.searchsorted(self.back_keys, keys), max(self.back_keys.size - 1, 0))
    found = (self.back_keys.size > 0) & (self.back_keys[pos] == keys)
    return np.where(found, self.back_labels[pos], -1)


def prepare(dataset: reader.DatasetDir,
            rules: segments_lib.SegmentRules = segments_lib.SegmentRules()) -> EvalData:
  """Reads the dataset's entity tables and both splits into `EvalData`."""
  query_entities = reader.read_entities(dataset, "query")
  candidate_entities = reader.read_entities(dataset, "candidate")
  query_ids = query_entities["query_id"]
  candidate_ids = candidate_entities["candidate_id"]
  q_index, c_index = retrieval.id_index(query_ids), retrieval.id_index(candidate_ids)
  train = reader.read_interactions(dataset, "train", keys=_SWIPE_KEYS)
  # The validation window is history at the split time: its swipes are excluded
  # from the lists like train's. Baselines fit on train only, as the model does.
  validation = reader.read_interactions(dataset, "validation", keys=_SWIPE_KEYS)
  held = reader.read_interactions(dataset, "eval", keys=_SWIPE_KEYS)
  history = {k: np.concatenate([train[k], validation[k]]) if validation else train[k]
             for k in train}
  t_q, t_c = q_index.get_indexer(train["query_id"]), c_index.get_indexer(train["candidate_id"])
  e_q, e_c = q_index.get_indexer(held["query_id"]), c_index.get_indexer(held["candidate_id"])
  if (t_q < 0).any() or (t_c < 0).any() or (e_q < 0).any() or (e_c < 0).any():
    raise reader.DatasetFormatError(f"{dataset.path}: interactions name entities missing from "
                                    "the entity tables")
  t_label, e_label = train["label"].astype(np.int64), held["label"].astype(np.int64)
  h_q, h_c = q_index.get_indexer(history["query_id"]), c_index.get_indexer(history["candidate_id"])
  h_label = history["label"].astype(np.int64)
  history_spec = dataset.config.history
  if history_spec:  # the query tower's history at ranking time: every swipe before the split
    query_entities.update(history_lib.histories_at(history_spec, history, query_ids))
    if dataset.config.same_entity_both_sides:  # candidates embedded as queries (two-way)
      candidate_entities.update(history_lib.histories_at(history_spec, history, candidate_ids))

  users, e_user = np.unique(e_q, return_inverse=True)  # evaluated users, sorted by query row
  user_of_row = np.full(query_ids.size, -1, np.int64)
  user_of_row[users] = np.arange(users.size)
  # Exclusions: the user's swipes before the split (train + validation), and the
  # user as a candidate.
  h_user = user_of_row[h_q]
  in_eval = h_user >= 0
  self_col = c_index.get_indexer(query_ids[users])
  eligible, blocked_rows, blocked_cols = _eligibility(dataset, q_index, c_index, user_of_row)
  ex_rows = np.concatenate([h_user[in_eval], np.flatnonzero(self_col >= 0), blocked_rows])
  ex_cols = np.concatenate([h_c[in_eval], self_col[self_col >= 0], blocked_cols])
  exclusions = retrieval.Exclusions.from_pairs(ex_rows, ex_cols, users.size)

  width = np.int64(candidate_ids.size)
  excluded_keys = exclusions.rows * width + exclusions.candidates
  seen = np.isin(e_user * width + e_c, excluded_keys)
  like = (e_label == 1) & ~seen

  # A shared id space for "who swiped whom" in both directions.
  all_ids, gid = np.unique(np.concatenate([query_ids, candidate_ids]).astype(str),
                           return_inverse=True)
  q_gid, c_gid = gid[:query_ids.size], gid[query_ids.size:]
  g = np.int64(all_ids.size)
  back_keys, order = np.unique(q_gid[e_q] * g + c_gid[e_c], return_index=True)
  back_labels = e_label[order]
  like_keys = np.unique(np.concatenate([q_gid[h_q[h_label == 1]] * g + c_gid[h_c[h_label == 1]],
                                        q_gid[e_q[e_label == 1]] * g + c_gid[e_c[e_label == 1]]]))
  liked_back = np.isin(c_gid[e_c] * g + q_gid[e_q], like_keys)

  segments = segments_lib.assign_segments(
      users.size, query_entities[features_lib.CREATED_AT][users], h_user[in_eval],
      history["timestamp"][in_eval], int(dataset.manifest["split_time"]), rules,
      training_end=dataset.manifest.get("validation_time"))
  ones = np.ones(int(like.sum()), np.int64)
  return EvalData(
      query_entities=query_entities, candidate_entities=candidate_entities,
      query_ids=query_ids, candidate_ids=candidate_ids, users=users, exclusions=exclusions,
      likes=Pairs(e_user[like], e_c[like], ones),
      matches=Pairs(e_user[like & liked_back], e_c[like & liked_back],
                    np.ones(int((like & liked_back).sum()), np.int64)),
      eval_swipes=Pairs(e_user, e_c, e_label), train_swipes=Pairs(t_q, t_c, t_label),
      likes_received=np.bincount(t_c[t_label == 1], minlength=candidate_ids.size),
      segments=segments, split_time=int(dataset.manifest["split_time"]),
      notes={"eval_swipes": int(e_label.size), "eval_likes": int((e_label == 1).sum()),
             "eval_likes_already_swiped_in_train": int(((e_label == 1) & seen).sum()),
             "evaluated_users": int(users.size),
             "users_with_eval_likes": int(np.unique(e_user[like]).size),
             "eval_matches": int((like & liked_back).sum()),
             "excluded_pairs": int(exclusions.candidates.size),
             "median_eval_swipes_per_user": int(np.median(np.bincount(e_user)))
             if e_user.size else 0},
      _query_gid=q_gid, _candidate_gid=c_gid, _num_gids=int(g), back_keys=back_keys,
      back_labels=back_labels, eligible=eligible,
      validation_swipes=(Pairs(q_index.get_indexer(validation["query_id"]),
                               c_index.get_indexer(validation["candidate_id"]),
                               validation["label"].astype(np.int64)) if validation else None))


def _eligibility(dataset: reader.DatasetDir, q_index, c_index, user_of_row: np.ndarray):
  """The dataset's eligibility rules at the split time, aligned with the entity rows, and
  the blocked pairs as (evaluated user, candidate row) exclusions."""
  config = dataset.config
  none = np.zeros(0, np.int64)
  if config.eligibility is None:
    return None, none, none
  sides = {}
  for side, index in (("query", q_index), ("candidate", c_index)):
    path = dataset.file(fmt.ELIGIBILITY_FILES[side])
    try:
      attributes = eligibility_lib.Attributes.load(path)
    except FileNotFoundError:
      raise reader.DatasetFormatError(f"{dataset.path}: the config has eligibility rules but "
                                      f"the dataset has no {fmt.ELIGIBILITY_FILES[side]}: "
                                      "export it again with this version") from None
    if not np.array_equal(attributes.ids.astype(str), np.asarray(index).astype(str)):
      raise reader.DatasetFormatError(f"{dataset.path}: {fmt.ELIGIBILITY_FILES[side]} rows "
                                      "do not match the entity table")
    sides[side] = attributes
  rules = eligibility_lib.PairRules(config.eligibility, sides["query"], sides["candidate"],
                                    now=float(dataset.manifest["split_time"]))
  if config.eligibility.blocked is None:
    return rules, none, none
  with np.load(dataset.file(fmt.BLOCKED_PAIRS), allow_pickle=False) as pairs:
    q_rows = q_index.get_indexer(pairs["query_ids"].astype(object))
    c_rows = c_index.get_indexer(pairs["candidate_ids"].astype(object))
  users = np.where(q_rows >= 0, user_of_row[np.maximum(q_rows, 0)], -1)
  keep = (users >= 0) & (c_rows >= 0)
  return rules, users[keep], c_rows[keep]


@dataclasses.dataclass
class Result:
  """One recommender on one EvalData.

  Attributes:
    per_user: metric -> [U] values, NaN where undefined for the user.
    rates: metric -> ([U] numerators, [U] denominators), pooled over users.
    top: the [U, K_max] lists.
    swipe_scores: [P] scores of the eval swipes (for AUC, ROC, PR).
    swipe_probabilities: [P] calibrated P(like), or None.
  """
  name: str
  per_user: Dict[str, np.ndarray]
  rates: Dict[str, Tuple[np.ndarray, np.ndarray]]
  top: retrieval.TopK
  swipe_scores: np.ndarray
  swipe_probabilities: Optional[np.ndarray]
  seconds: float
  info: Dict[str, object] = dataclasses.field(default_factory=dict)


OracleFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def evaluate(scorer: retrieval.Scorer, data: EvalData, ks: Sequence[int],
             calibration: Optional[retrieval.PlattCalibration] = None,
             oracle: Optional[OracleFn] = None, batch_size: int = 1024) -> Result:
  """Runs `scorer` over every evaluated user and computes per-user metrics.

  Args:
    ks: list lengths (the lists are retrieved once, at max(ks)).
    calibration: maps scores to P(like) for log loss; None: no log loss.
    oracle: optional P(swiper likes swipee) for id arrays (a synthetic world's).
  """
  started = time.time()
  ks = sorted(set(int(k) for k in ks))
  eligible = data.eligible
  # A scorer with `own_lists` (the app's own SQL) is judged on the lists it makes.
  mask = (None if eligible is None or not eligible.filters or getattr(scorer, "own_lists", False)
          else eligible.mask)
  top = retrieval.top_k(scorer, data.users, max(ks), data.exclusions, batch_size, mask)
  u = data.num_users
  like_hits = metrics.hit_matrix(top.candidates, data.likes.users, data.likes.candidates)
  match_hits = metrics.hit_matrix(top.candidates, data.matches.users, data.matches.candidates)
  n_likes = metrics.count_per_row(data.likes.users, u)
  n_matches = metrics.count_per_row(data.matches.users, u)
  per_user, rates = {}, {}
  for k in ks:
    per_user[f"recall@{k}"] = metrics.recall_at_k(like_hits, n_likes, k)
    per_user[f"hit_rate@{k}"] = metrics.hit_rate_at_k(like_hits, n_likes, k)
    per_user[f"ndcg@{k}"] = metrics.ndcg_at_k(like_hits, n_likes, k)
    per_user[f"match_recall@{k}"] = metrics.recall_at_k(match_hits, n_matches, k)
  per_user["mrr"] = metrics.reciprocal_rank(like_hits, n_likes)

  # TFRS-style factorized top-K: ranks of the eval likes over the unfiltered corpus.
  positive_scores = scorer.pair_scores(data.users[data.likes.users], data.likes.candidates)
  ranks = metrics.unmasked_ranks(top.positions(data.likes.users, data.likes.candidates),
                                 data.likes.users, positive_scores, data.exclusions.rows,
                                 top.excluded_scores)
  for k in ks:
    rates[f"factorized_top{k}_accuracy"] = (
        np.bincount(data.likes.users, weights=ranks < k, minlength=u), n_likes.astype(float))

  # Reciprocity: would the recommended user like the user back? (eval swipes, then oracle)
  rows = np.repeat(np.arange(u), top.candidates.shape[1]).reshape(top.candidates.shape)
  valid = top.candidates >= 0
  back = np.full(top.candidates.shape, -1)
  back[valid] = data.back_label(rows[valid], top.candidates[valid])
  for k in ks:
    judged = (back[:, :k] >= 0).sum(axis=1).astype(float)
    rates[f"success@{k}"] = ((back[:, :k] == 1).sum(axis=1).astype(float), judged)
  if oracle is not None:
    swiper = data.query_ids[data.users[rows[valid]]]
    swipee = data.candidate_ids[top.candidates[valid]]
    forward, backward = np.full(valid.shape, np.nan), np.full(valid.shape, np.nan)
    forward[valid] = oracle(swiper, swipee)
    backward[valid] = oracle(swipee, swiper)
    for k in ks:
      per_user[f"oracle_like@{k}"] = np.nanmean(forward[:, :k], axis=1)
      per_user[f"oracle_like_back@{k}"] = np.nanmean(backward[:, :k], axis=1)
      per_user[f"oracle_match@{k}"] = np.nanmean(forward[:, :k] * backward[:, :k], axis=1)

  swipes = data.eval_swipes
  swipe_scores = scorer.pair_scores(data.users[swipes.users], swipes.candidates)
  per_user.update(shown_metrics(data, swipe_scores, shown_k(data, ks[0])))
  probabilities = None
  if calibration is not None:
    probabilities = calibration.probability(swipe_scores)
    y = swipes.labels
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    loss = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    rates["log_loss"] = (np.bincount(swipes.users, weights=loss, minlength=u),
                         np.bincount(swipes.users, minlength=u).astype(float))
  return Result(scorer.name, per_user, rates, top, swipe_scores, probabilities,
                time.time() - started)


def shown_k(data: EvalData, k: int) -> int:
  """List length for metrics among shown profiles: half the median number of eval swipes
  per user, at most k (precision@k among n shown is the same for every ranking when k >= n)."""
  return int(max(1, min(k, data.notes.get("median_eval_swipes_per_user", 2 * k) // 2)))


def shown_metrics(data: EvalData, swipe_scores: np.ndarray, k: int) -> Dict[str, np.ndarray]:
  """Impression-conditioned per-user metrics: each user's eval swipes (what the feed
  showed) re-ranked by the recommender's scores [P]. Free of the logging feed's
  choice of WHAT to show (not of whom it showed): GAUC (per-user AUC), and among
  the top k shown (k from `shown_k`): like precision, NDCG, and match precision
  (liked and liked back).
  """
  swipes = data.eval_swipes
  u = data.num_users
  width = np.int64(data.candidate_ids.size)
  matched = np.isin(swipes.users * width + swipes.candidates,
                    data.matches.users * width + data.matches.candidates)
  ranks = metrics.rank_within_users(swipes.users, swipe_scores)
  return {"gauc": metrics.per_user_auc(swipes.users, swipes.labels, swipe_scores, u),
          "shown_precision": metrics.precision_among_shown(ranks, swipes.users, swipes.labels,
                                                           u, k),
          "shown_ndcg": metrics.ndcg_among_shown(ranks, swipes.users, swipes.labels, u, k),
          "shown_match_precision": metrics.precision_among_shown(ranks, swipes.users, matched,
                                                                 u, k)}


def eligibility_violations(result: Result, data: EvalData) -> Optional[int]:
  """Listed pairs that break the eligibility rules or the exclusions (0 = clean; None
  without rules). Every list made by `evaluate` is masked, so non-zero means a bug
  or lists made elsewhere."""
  if data.eligible is None:
    return None
  top = result.top.candidates
  users = np.repeat(np.arange(top.shape[0]), top.shape[1]).reshape(top.shape)
  listed = top >= 0
  bad = ~data.eligible.pairs(data.users[users[listed]], top[listed])
  width = np.int64(data.candidate_ids.size)
  excluded = np.isin(users[listed] * width + top[listed],
                     data.exclusions.rows * width + data.exclusions.candidates)
  return int((bad | excluded).sum())


def fit_calibration(scorer: retrieval.Scorer, data: EvalData,
                    seed: int = 0) -> Optional[retrieval.PlattCalibration]:
  """Platt calibration of a scorer on the train swipes (like vs pass).

  None when the train swipes hold one label only (likes-only, implicit
  feedback): there is no P(like) to calibrate to, so no log loss either.
  """
  train = data.train_swipes
  if np.unique(train.labels).size < 2:
    return None
  return retrieval.PlattCalibration.fit(scorer.pair_scores(train.users, train.candidates),
                                        train.labels, seed=seed)


def summarize(result: Result, data: EvalData, counts: np.ndarray, ks: Sequence[int],
              popular: np.ndarray, level: float = 0.95) -> Dict[str, object]:
  """Estimates with bootstrap CIs: per segment, every metric; exposure on all users."""
  out = {"segments": {}, "seconds": round(result.seconds, 3), **result.info}
  swipes = data.eval_swipes
  for segment, mask in data.segments.items():
    block = {"auc": metrics.bootstrap_auc(swipes.labels, result.swipe_scores, swipes.users,
                                          counts, mask, level)}
    for name, values in result.per_user.items():
      block[name] = metrics.bootstrap_mean(values, counts, mask, level)
    for name, (num, den) in result.rates.items():
      block[name] = metrics.bootstrap_ratio(num, den, counts, mask, level)
    out["segments"][segment] = block
  out["exposure"] = {
      str(k): metrics.bootstrap_exposure(result.top.candidates, k, data.candidate_ids.size,
                                         popular, counts, level=level)
      for k in sorted(set(ks))}
  return out


def lift(model: Result, baseline: Result, data: EvalData, counts: np.ndarray,
         level: float = 0.95) -> Dict[str, Dict[str, object]]:
  """Relative lift of every per-user metric, per segment, paired by user."""
  return {segment: {name: metrics.bootstrap_lift(model.per_user[name], baseline.per_user[name],
                                                 counts, mask, level)
                    for name in model.per_user if name in baseline.per_user}
          for segment, mask in data.segments.items()}
