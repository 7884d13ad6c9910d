"""Baselines scored by the same retrieval code as the model: random, popularity, feature matching.

`FeatureMatching` is the users' Phase 1&2 recommender as the config's
`baseline.terms` declare it (`rules.py`): a weighted sum of terms over profile
columns and features, for user u and candidate v,

  eligible:        w * (eligible(u, v) - 1)        the config's eligibility rules
  age_closeness:   -w * max(0, |x_u - x_v| - window_years)     a numeric column x
  distance_decay:  -w * min(max(0, km(u, v) - radius_km) / radius_km, cap)   a geo feature
  shared_values:   w * |values_u ∩ values_v|                   a multi_categorical feature

A term whose value is missing for a pair (NaN number, no location) contributes 0.
With the default config (weight 10 on `eligible`) the rules outweigh every
other term together, so they act as the filter the app applies, yet keep a
total order for pair scores (AUC); ranked lists are filtered by the rules
anyway, like every recommender's (`evaluator.evaluate`).

Numbers and locations come from the eligibility attributes exported with the
dataset (`eligibility.Attributes`), shared values from the entity tables.
"""

from typing import Dict, Sequence, Tuple

import numpy as np

from tfrs_two_tower import eligibility as eligibility_lib
from tfrs_two_tower import features as features_lib
from tfrs_two_tower.evaluation import retrieval



class RandomScorer(retrieval.Scorer):
  """Uniformly random ranking (independent scores), reproducible from `seed`."""
  name = "random"

  def __init__(self, query_ids, candidate_ids, seed: int = 0):
    super().__init__(query_ids, candidate_ids)
    self.seed = seed

  def score_block(self, query_rows):
    import tensorflow as tf
    # Seeded by the block's first row: reproducible for a given batching.
    return tf.random.stateless_uniform([len(query_rows), self.num_candidates],
                                       seed=[self.seed, int(query_rows[0]) if len(query_rows)
                                             else 0])

  def pair_scores(self, query_rows, candidate_rows):
    return np.random.default_rng(self.seed).random(len(query_rows)).astype(np.float32)


class PopularityScorer(retrieval.Scorer):
  """Everyone gets the most liked candidates: score(u, v) = log(1 + train likes received by v)."""
  name = "popularity"
  traceable = True

  def __init__(self, query_ids, candidate_ids, likes_received: np.ndarray):
    super().__init__(query_ids, candidate_ids)
    # A tiny index-based tie-break keeps the order deterministic among equals.
    tie_break = -np.arange(self.num_candidates) * 1e-9
    self.scores = (np.log1p(np.asarray(likes_received, np.float64)) + tie_break).astype(np.float32)

  def score_block(self, query_rows):
    import tensorflow as tf
    return tf.tile(tf.constant(self.scores)[None, :], [tf.shape(query_rows)[0], 1])

  def pair_scores(self, query_rows, candidate_rows):
    return self.scores[np.asarray(candidate_rows)]


class FeatureMatching(retrieval.Scorer):
  """The Phase 1&2 hand-written recommender: the config's `baseline.terms`.

  Usage (the A/B simulator builds one over the world's profiles):
    fm = FeatureMatching(config, query_entities, candidate_entities, pair_rules)
    ids, scores = fm.top_k(query_ids, k=10, exclude=already_swiped_lists, eligible=pair_rules)
    s = fm.score(query_ids, candidate_ids)   # elementwise

  Args:
    config: its `baseline` gives the terms (required, with `terms`).
    query_entities, candidate_entities: `reader.read_entities`-style tables.
    rules: `eligibility.PairRules` over the same rows (its attributes give the
      numbers and locations the terms read).
  """
  name = "feature_matching"

  def __init__(self, config, query_entities: Dict[str, np.ndarray],
               candidate_entities: Dict[str, np.ndarray], rules):
    if config.baseline is None or not config.baseline.terms:
      raise ValueError("feature matching needs the config's baseline.terms")
    super().__init__(query_entities["query_id"], candidate_entities["candidate_id"])
    self.terms, self.rules = config.baseline.terms, rules
    self._shared = {}
    for term in self.terms:
      if term.type == "shared_values":
        q = query_entities[f"query_{term.feature}"]
        c = candidate_entities[f"candidate_{term.feature}"]
        vocab = sorted({t for rows in (q, c) for row in rows for t in row
                        if t != features_lib.MISSING_TOKEN})
        self._shared[term.feature] = (_multi_hot(q, vocab), _multi_hot(c, vocab))

  @property
  def active_terms(self) -> Tuple[str, ...]:
    return tuple(t.type for t in self.terms)

  def score(self, query_ids: Sequence[str], candidate_ids: Sequence[str]) -> np.ndarray:
    """Elementwise score of [P] (query id, candidate id) pairs -> [P] float32."""
    return self.pair_scores(self.query_rows(query_ids), self.candidate_rows(candidate_ids))

  def score_block(self, query_rows):
    import tensorflow as tf
    return tf.constant(self._score(np.asarray(query_rows)[:, None],
                                   np.arange(self.num_candidates)[None, :]))

  def pair_scores(self, query_rows, candidate_rows):
    return self._score(np.asarray(query_rows), np.asarray(candidate_rows))

  def _score(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Scores for broadcastable query rows u and candidate rows v."""
    q, c = self.rules.query, self.rules.candidate
    shape = np.broadcast_shapes(u.shape, v.shape)
    score = np.zeros(shape, np.float64)
    for t in self.terms:
      if t.type == "eligible":
        score += t.weight * (self.rules.pairs(u, v) - 1.0)
      elif t.type == "age_closeness":
        gap = np.abs(q.numeric[t.column][u] - c.numeric[t.column][v])
        score -= np.nan_to_num(t.weight * np.maximum(gap - t.window_years, 0.0))
      elif t.type == "distance_decay":
        km = haversine_km(q.geo[t.feature][u], c.geo[t.feature][v])
        beyond = np.maximum(km - t.radius_km, 0.0) / t.radius_km
        score -= np.nan_to_num(t.weight * np.minimum(beyond, t.cap))
      else:  # shared_values
        qi, ci = self._shared[t.feature]
        if u.ndim == 2 and u.shape[1] == 1 and v.ndim == 2 and v.shape[0] == 1:
          shared = qi[u[:, 0]] @ ci[v[0]].T  # block: one matrix product
        else:
          shared = np.einsum("...t,...t->...", qi[u], ci[v])
        score += t.weight * shared
    return np.broadcast_to(score, shape).astype(np.float32)


def _multi_hot(rows, vocabulary: Sequence[str]) -> np.ndarray:
  """[n, L] token lists (padded with "") -> [n, V] float32 multi-hot."""
  lookup = {t: i for i, t in enumerate(vocabulary)}
  out = np.zeros((len(rows), len(vocabulary)), np.float32)
  for i, row in enumerate(rows):
    for token in row:
      if token != features_lib.MISSING_TOKEN:
        out[i, lookup[token]] = 1.0
  return out


haversine_km = eligibility_lib.haversine_km


class SqlBaselineError(ValueError):
  """The app's own baseline SQL failed or returned unusable rows; the message says which."""


class SqlBaseline(retrieval.Scorer):
  """The app's own Phase 1/2 matching: the config's `baseline.sql`, run per user.

  The query gets one parameter, `%(user_id)s`, and returns rows (candidate_id,
  score). Its lists are evaluated AS THE APP SERVES THEM: no eligibility mask
  (`own_lists`), so lists that break the rules show up as violations and the
  verdict refuses a lift over them. Pairs the query does not return score below
  every returned one (for AUC).

  Args:
    conn: an open DB-API connection (psycopg2) to the app's database.
    sql: the query.  query_rows: rows of `query_ids` to fetch lists for.
  """
  name = "feature_matching"
  own_lists = True

  def __init__(self, query_ids, candidate_ids, conn, sql: str, query_rows: np.ndarray):
    super().__init__(query_ids, candidate_ids)
    self._lists: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
    lowest = np.inf
    with conn.cursor() as cur:
      for row in np.asarray(query_rows):
        user_id = str(self.query_ids[row])
        try:
          cur.execute(sql, {"user_id": user_id})
          rows = cur.fetchall()
        except Exception as e:  # any driver error: name the config key, not the driver
          conn.rollback()
          raise SqlBaselineError(f"config baseline.sql failed for user {user_id!r}: "
                                 f"{type(e).__name__}: {str(e).strip().splitlines()[0]}") from None
        if rows and len(rows[0]) != 2:
          raise SqlBaselineError(f"config baseline.sql: expected rows (candidate_id, score), "
                                 f"got {len(rows[0])} columns")
        ids = np.array([str(r[0]) for r in rows], dtype=object)
        cols = self._candidate_index.get_indexer(ids) if ids.size else np.zeros(0, np.int64)
        if (cols < 0).any():
          raise SqlBaselineError(f"config baseline.sql returned candidate id "
                                 f"{ids[cols < 0][0]!r} for user {user_id!r}: not in the "
                                 "dataset's profiles")
        scores = np.array([float(r[1]) for r in rows], np.float64)
        self._lists[int(row)] = (cols.astype(np.int64), scores)
        lowest = min(lowest, scores.min(initial=np.inf))
    self._unlisted = np.float32((lowest if np.isfinite(lowest) else 0.0) - 1.0)
    width = np.int64(self.num_candidates)
    keys = np.concatenate([np.full(c.size, u, np.int64) * width + c
                           for u, (c, _) in self._lists.items()] + [np.zeros(0, np.int64)])
    values = np.concatenate([s for _, s in self._lists.values()] + [np.zeros(0)])
    order = np.argsort(keys, kind="stable")
    self._keys, self._values = keys[order], values[order].astype(np.float32)

  def score_block(self, query_rows):
    import tensorflow as tf
    return tf.constant(self._block(np.asarray(query_rows)))

  def _block(self, query_rows: np.ndarray) -> np.ndarray:
    """[B, N]: the returned scores, -inf for candidates the query did not return."""
    out = np.full((query_rows.size, self.num_candidates), -np.inf, np.float32)
    for i, row in enumerate(query_rows):
      cols, scores = self._lists.get(int(row), (np.zeros(0, np.int64), np.zeros(0)))
      out[i, cols] = scores
    return out

  def pair_scores(self, query_rows, candidate_rows):
    wanted = (np.asarray(query_rows, np.int64) * np.int64(self.num_candidates)
              + np.asarray(candidate_rows, np.int64))
    if self._keys.size == 0:
      return np.full(wanted.shape, self._unlisted, np.float32)
    pos = np.minimum(np.searchsorted(self._keys, wanted), self._keys.size - 1)
    return np.where(self._keys[pos] == wanted, self._values[pos], self._unlisted).astype(
        np.float32)
