"""Top-K retrieval over the whole corpus, in batches, with already-swiped candidates excluded.

Every recommender evaluated here (the model, its reciprocal mode, the
baselines) is a `Scorer`: it scores a block of query rows against ALL N
candidates at once ([B, N], one matrix product for the model), and scores
arbitrary (query, candidate) pairs. `top_k` runs the same loop for all of them:

  for each block of B query rows:           (B = batch_size; no loop per user)
    scores   = scorer.score_block(rows)     [B, N]
    excluded = scores[exclusion pairs]      kept for TFRS-style unfiltered ranks
    scores[exclusion pairs] = -inf          train swipes of the user, and the user
    values, indices = tf.math.top_k(scores, K)

Reciprocal ranking combines both directions of a user-to-user pair, each
calibrated to a probability:

  P(u likes v) = sigmoid(a * s(u, v) + b),   s(u, v) = q_u . c_v
  P(v likes u) = 1 / 0 when v already liked / passed on u before ranking time
                 (`BackSwipes`), else sigmoid(a * s(v, u) + b),  s(v, u) = q_v . c_u
  product:  P(u->v) P(v->u)                                 = P(match), independence
  harmonic: 2 P(u->v) P(v->u) / (P(u->v) + P(v->u))          (RECON, Pizzato et al. 2010)

(a, b) is a Platt (logistic) fit of like-vs-pass on TRAIN swipes
(`PlattCalibration`), so the probabilities mean what they say on the swipes
the model was trained on, and the eval split stays untouched. The product is
what a match rate rewards; the harmonic mean is a softer trade-off that ranks
a sure back-like (P(v->u) = 1) at 2p / (1 + p) instead of p.

`CandidatePenalty` subtracts a per-candidate penalty (popularity or hubness)
from any scorer: serving-time knobs trading some accuracy for spreading exposure.
"""

import dataclasses
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

from tfrs_two_tower import features as features_lib
from tfrs_two_tower.data import reader


@dataclasses.dataclass
class Exclusions:
  """Candidates to leave out of each ranked list, as CSR.

  Attributes:
    indptr: [U + 1] int64; list i excludes candidates[indptr[i]:indptr[i + 1]].
    candidates: [E] int64 candidate indices, sorted and unique within each list.
  """
  indptr: np.ndarray
  candidates: np.ndarray

  @classmethod
  def from_pairs(cls, rows: np.ndarray, candidates: np.ndarray, num_lists: int) -> "Exclusions":
    """From (list index, candidate index) pairs in any order, duplicates allowed."""
    indptr, candidates, _ = _csr(rows, candidates, num_lists)
    return cls(indptr, candidates)

  @classmethod
  def none(cls, num_lists: int) -> "Exclusions":
    return cls(np.zeros(num_lists + 1, np.int64), np.zeros(0, np.int64))

  @property
  def rows(self) -> np.ndarray:
    """[E] list index of each excluded candidate."""
    return _csr_rows(self.indptr)

  def block(self, start: int, stop: int) -> np.ndarray:
    """[E_b, 2] int64 (row within the block, candidate) pairs of lists start..stop-1."""
    lo, hi = self.indptr[start], self.indptr[stop]
    counts = np.diff(self.indptr[start:stop + 1])
    rows = np.repeat(np.arange(stop - start, dtype=np.int64), counts)
    return np.stack([rows, self.candidates[lo:hi]], axis=1)


def _csr_rows(indptr: np.ndarray) -> np.ndarray:
  """[E] row of each CSR entry."""
  return np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr))


def _csr(rows: np.ndarray, candidates: np.ndarray, num_rows: int):
  """(row, candidate) pairs -> CSR (indptr [R + 1], candidates [E]) + [E] index of each
  kept pair in the input: the first occurrence of duplicates; sorted within each row."""
  rows = np.asarray(rows, np.int64)
  candidates = np.asarray(candidates, np.int64)
  width = np.int64(max(int(candidates.max(initial=0)) + 1, 1))
  keys, first = np.unique(rows * width + candidates, return_index=True)
  indptr = np.zeros(num_rows + 1, np.int64)
  np.cumsum(np.bincount(keys // width, minlength=num_rows), out=indptr[1:])
  return indptr, keys % width, first


@dataclasses.dataclass
class BackSwipes:
  """Swipes of candidates ON query users, observed before ranking time, as CSR by query row.

  Attributes:
    indptr: [Nq + 1] int64; query row u was swiped by candidates[indptr[u]:indptr[u + 1]].
    candidates: [E] int64 candidate rows, sorted and unique within each query row.
    liked: [E] float32, 1 for a like or superlike, 0 for a pass.
  """
  indptr: np.ndarray
  candidates: np.ndarray
  liked: np.ndarray

  @classmethod
  def from_swipes(cls, swipee_rows: np.ndarray, swiper_rows: np.ndarray, liked: np.ndarray,
                  num_queries: int) -> "BackSwipes":
    """From swipes in time order: swipee = query row, swiper = candidate row; pairs with a
    negative row (someone outside the tables) are dropped; the LAST swipe of a pair wins."""
    swipee_rows, swiper_rows = np.asarray(swipee_rows), np.asarray(swiper_rows)
    liked = np.asarray(liked, np.float32)
    known = (swipee_rows >= 0) & (swiper_rows >= 0)
    indptr, candidates, first = _csr(swipee_rows[known][::-1], swiper_rows[known][::-1],
                                     num_queries)
    return cls(indptr, candidates, liked[known][::-1][first])

  @classmethod
  def of_swipes(cls, scorer: "Scorer", swiper_ids: Sequence[str], swipee_ids: Sequence[str],
                liked: np.ndarray) -> "BackSwipes":
    """For `scorer`'s tables, from swipes by id in time order (swipee = a query user,
    swiper = a candidate); swipes naming someone outside the tables are ignored."""
    swipee_rows = scorer._query_index.get_indexer(np.asarray(swipee_ids, dtype=object))
    swiper_rows = scorer._candidate_index.get_indexer(np.asarray(swiper_ids, dtype=object))
    return cls.from_swipes(swipee_rows, swiper_rows, liked, scorer.query_ids.size)

  @property
  def rows(self) -> np.ndarray:
    """[E] query row (the swiped user) of each observed swipe."""
    return _csr_rows(self.indptr)

  def lookup(self, query_rows: np.ndarray, candidate_rows: np.ndarray) -> np.ndarray:
    """[P] pairs -> [P] float32: 1 liked, 0 passed, NaN not observed."""
    query_rows = np.asarray(query_rows, np.int64)
    candidate_rows = np.asarray(candidate_rows, np.int64)
    if self.candidates.size == 0:
      return np.full(query_rows.shape, np.nan, np.float32)
    # CSR order is (row, candidate) key order: one binary search over all pairs.
    width = np.int64(max(self.candidates.max(), candidate_rows.max(initial=0)) + 1)
    keys = self.rows * width + self.candidates
    wanted = query_rows * width + candidate_rows
    pos = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
    return np.where(keys[pos] == wanted, self.liked[pos], np.nan).astype(np.float32)


@dataclasses.dataclass
class TopK:
  """Result of `top_k` for U lists.

  Attributes:
    candidates: [U, K] int64 candidate indices, best first; -1 where fewer than K
      candidates remain after exclusion.
    scores: [U, K] float32 (-inf where candidates is -1).
    excluded_scores: [E] float32, the score each excluded pair had, aligned with
      the `Exclusions` given (for ranks over the unfiltered corpus).
  """
  candidates: np.ndarray
  scores: np.ndarray
  excluded_scores: np.ndarray

  def positions(self, rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """[P] 0-based position of candidate in list `row`, K when absent."""
    k = self.candidates.shape[1]
    match = self.candidates[np.asarray(rows)] == np.asarray(candidates)[:, None]
    return np.where(match.any(axis=1), np.argmax(match, axis=1), k)


class Scorer:
  """A recommender seen by the evaluation: scores of query rows against all candidates.

  Rows index the query entity table (`query_ids`) and the candidate entity table
  (`candidate_ids`) the scorer was built on. Subclasses implement `score_block`
  and `pair_scores`; `top_k` / `recommend` come for free.
  """
  name = "scorer"
  traceable = False  # True: score_block is TF ops on a [B] int64 row tensor (tf.function-safe)

  def __init__(self, query_ids: Sequence[str], candidate_ids: Sequence[str]):
    self.query_ids = np.asarray(query_ids, dtype=object)
    self.candidate_ids = np.asarray(candidate_ids, dtype=object)
    self._query_index = id_index(self.query_ids)
    self._candidate_index = id_index(self.candidate_ids)

  @property
  def num_candidates(self) -> int:
    return self.candidate_ids.size

  def score_block(self, query_rows):
    """[B] query rows (numpy, or a tensor when `traceable`) -> [B, N] float32 tf.Tensor."""
    raise NotImplementedError

  def pair_scores(self, query_rows: np.ndarray, candidate_rows: np.ndarray) -> np.ndarray:
    """[P] query rows, [P] candidate rows -> [P] float32 scores."""
    raise NotImplementedError

  def query_rows(self, ids: Sequence[str]) -> np.ndarray:
    return _lookup(self._query_index, ids, "query")

  def candidate_rows(self, ids: Sequence[str]) -> np.ndarray:
    return _lookup(self._candidate_index, ids, "candidate")

  def top_k(self, query_ids: Sequence[str], k: int,
            exclude: Optional[Sequence[Sequence[str]]] = None, exclude_self: bool = True,
            batch_size: int = 1024, eligible=None) -> Tuple[np.ndarray, np.ndarray]:
    """The K best candidates for each query id, by id.

    Args:
      query_ids: [U] ids of the query entity table.
      k: list length.
      exclude: optional per-query lists of candidate ids never to recommend
        (e.g. everyone the user already swiped); unknown ids are ignored.
      exclude_self: also exclude the query id itself from its own list.
      eligible: optional `eligibility.PairRules` over this scorer's query and
        candidate rows: only eligible candidates are listed.
    Returns:
      ids [U, k] object (None where fewer than k candidates remain), scores [U, k] float32.
    """
    query_ids = np.asarray(query_ids, dtype=object)
    rows, cols = [], []
    if exclude is not None:
      if len(exclude) != len(query_ids):
        raise ValueError(f"exclude has {len(exclude)} lists for {len(query_ids)} query ids")
      lengths = [len(e) for e in exclude]
      flat = np.asarray([c for e in exclude for c in e], dtype=object)
      rows.append(np.repeat(np.arange(len(query_ids)), lengths))
      cols.append(self._candidate_index.get_indexer(flat) if flat.size else np.zeros(0, int))
    if exclude_self:
      rows.append(np.arange(len(query_ids)))
      cols.append(self._candidate_index.get_indexer(query_ids))
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    known = cols >= 0
    exclusions = Exclusions.from_pairs(rows[known], cols[known], len(query_ids))
    result = top_k(self, self.query_rows(query_ids), k, exclusions, batch_size,
                   eligible.mask if eligible is not None and eligible.filters else None)
    ids = np.where(result.candidates >= 0,
                   self.candidate_ids[np.maximum(result.candidates, 0)], None)
    return ids, result.scores


def id_index(ids: np.ndarray):
  import pandas as pd
  index = pd.Index(ids)
  if not index.is_unique:
    raise ValueError(f"entity ids are not unique (e.g. {index[index.duplicated()][0]!r})")
  return index


def _lookup(index, ids, what: str) -> np.ndarray:
  rows = index.get_indexer(np.asarray(ids, dtype=object))
  if (rows < 0).any():
    raise KeyError(f"unknown {what} id {np.asarray(ids, dtype=object)[rows < 0][0]!r}")
  return rows.astype(np.int64)


def _masked_top_k(scores, exclusions, k, eligible=None):
  """Gathers the excluded pairs' scores, masks them to -inf, then top-k (TF ops).

  `eligible` ([B, N] bool or None): ineligible pairs are masked too, after the
  excluded scores are gathered (those stay the scorer's own, for unfiltered ranks).
  """
  import tensorflow as tf
  excluded = tf.gather_nd(scores, exclusions)
  minus_inf = tf.constant(-np.inf, tf.float32)
  masked = tf.tensor_scatter_nd_update(scores, exclusions, tf.fill(tf.shape(excluded), minus_inf))
  if eligible is not None:
    masked = tf.where(eligible, masked, minus_inf)
  values, indices = tf.math.top_k(masked, k=k, sorted=True)
  return values, indices, excluded


def _block_top_k_fn(scorer: "Scorer", with_mask: bool = False):
  """The block step (rows, exclusions, k[, eligible]) -> (values, indices, excluded) of
  `scorer`, cached per `with_mask`.

  For a `traceable` scorer (score_block is TF ops on a row tensor) scoring is
  traced together with masking and top-k: the score block then has a single
  consumer and TF can update it in place instead of copying [B, N] floats.
  Otherwise the block is scored eagerly and only masking + top-k are traced.
  """
  cache = scorer.__dict__.setdefault("_block_top_k", {})
  if with_mask in cache:
    return cache[with_mask]
  import tensorflow as tf
  specs = [tf.TensorSpec([None, 2], tf.int64), tf.TensorSpec([], tf.int32)]
  specs += [tf.TensorSpec([None, None], tf.bool)] if with_mask else []
  if scorer.traceable:
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)] + specs)
    def traced(rows, *args):
      return _masked_top_k(scorer.score_block(rows), *args)

    def fn(rows, *args):
      return traced(tf.constant(rows), *args)
  else:
    masked = tf.function(_masked_top_k,
                         input_signature=[tf.TensorSpec([None, None], tf.float32)] + specs)

    def fn(rows, *args):
      return masked(scorer.score_block(rows), *args)
  cache[with_mask] = fn
  return fn


def top_k(scorer: Scorer, query_rows: np.ndarray, k: int,
          exclusions: Optional[Exclusions] = None, batch_size: int = 1024,
          eligible: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> TopK:
  """Top-K candidates of each query row over the whole corpus, exclusions removed.

  Args:
    scorer: what scores the rows.
    query_rows: [U] rows of the scorer's query table, one list each.
    k: list length (capped at the corpus size).
    exclusions: per list (aligned with query_rows) candidates to leave out.
    batch_size: query rows per block; the [B, N] score block is the memory peak.
    eligible: [B] query rows -> [B, N] bool, the eligibility rules
      (`eligibility.PairRules.mask`); ineligible candidates are never listed.
  Returns:
    TopK with [U, K] candidates/scores and the scores of the excluded pairs.
  """
  import tensorflow as tf
  query_rows = np.asarray(query_rows, np.int64)
  num_lists = query_rows.size
  exclusions = exclusions or Exclusions.none(num_lists)
  if getattr(scorer, "max_impressions", None):
    return _capped_top_k(scorer, query_rows, k, exclusions, batch_size, eligible)
  if exclusions.indptr.size != num_lists + 1:
    raise ValueError(f"exclusions cover {exclusions.indptr.size - 1} lists, not {num_lists}")
  k = min(int(k), scorer.num_candidates)
  fn = _block_top_k_fn(scorer, with_mask=eligible is not None)
  candidates = np.empty((num_lists, k), np.int64)
  scores = np.empty((num_lists, k), np.float32)
  excluded = np.empty(exclusions.candidates.size, np.float32)
  k_tensor = tf.constant(k, tf.int32)
  for start in range(0, num_lists, batch_size):
    stop = min(start + batch_size, num_lists)
    mask = () if eligible is None else (tf.constant(eligible(query_rows[start:stop])),)
    values, indices, excluded_block = fn(query_rows[start:stop],
                                         tf.constant(exclusions.block(start, stop)), k_tensor,
                                         *mask)
    scores[start:stop] = values.numpy()
    candidates[start:stop] = indices.numpy()
    excluded[exclusions.indptr[start]:exclusions.indptr[stop]] = excluded_block.numpy()
  candidates[~np.isfinite(scores)] = -1
  return TopK(candidates, scores, excluded)


def _capped_top_k(scorer: "ExposureControl", query_rows: np.ndarray, k: int,
                  exclusions: Exclusions, batch_size: int, eligible) -> TopK:
  """Top-K under a per-candidate cap: the lists of one call are one day's requests.

  The first S = min(K, `shown_slots`) places of a list are what the user sees
  (one feed): each list takes there its best candidates among the scorer's top
  `pool_factor * K` that have been SHOWN fewer than `max_impressions` times so
  far, lists filled in a seeded random order (the order requests arrive). Places
  S..K (for recall@50, @100) continue with the best remaining candidates of the
  pool, uncapped, as they count no impression. A list can come out shorter when
  its pool runs out (padded with -1).
  """
  wide = top_k(scorer.scored, query_rows, k * scorer.pool_factor, exclusions, batch_size,
               eligible)
  k = min(int(k), wide.candidates.shape[1])
  shown_slots = min(k, scorer.shown_slots or k)
  candidates = np.full((query_rows.size, k), -1, np.int64)
  scores = np.full((query_rows.size, k), -np.inf, np.float32)
  shown = np.zeros(scorer.num_candidates, np.int64)
  for i in np.random.default_rng(scorer.seed).permutation(query_rows.size):
    pool = wide.candidates[i]
    listed = pool >= 0
    free = np.flatnonzero(listed & (shown[np.maximum(pool, 0)] < scorer.max_impressions))
    seen = free[:shown_slots]
    rest = np.setdiff1d(np.flatnonzero(listed), seen, assume_unique=True)[:k - seen.size]
    take = np.concatenate([seen, rest])
    candidates[i, :take.size] = pool[take]
    scores[i, :take.size] = wide.scores[i, take]
    shown[pool[seen]] += 1
  return TopK(candidates, scores, wide.excluded_scores)


class ExposureControl:
  """A scorer served under the config's exposure cap (`exposure.max_impressions_per_day`).

  Scores are the wrapped scorer's; `top_k` (module function and method) fills
  the lists of one call as one day's requests, each candidate listed at most
  `max_impressions` times in its first `shown_slots` places (None: all K;
  evaluation passes its smallest K, one feed) (`_capped_top_k`). Named
  `<scored>:cap<max>`.
  """

  def __init__(self, scored: "Scorer", max_impressions: int, pool_factor: int = 5,
               seed: int = 0, shown_slots: Optional[int] = None):
    if max_impressions < 1:
      raise ValueError(f"max_impressions must be >= 1, got {max_impressions}")
    self.scored, self.max_impressions = scored, int(max_impressions)
    self.pool_factor, self.seed, self.shown_slots = pool_factor, seed, shown_slots
    self.name = f"{scored.name}:cap{max_impressions}"

  def __getattr__(self, attribute):  # everything else is the wrapped scorer's
    return getattr(self.scored, attribute)

  def top_k(self, *args, **kwargs):
    return Scorer.top_k(self, *args, **kwargs)

  def with_back_swipes(self, back_swipes) -> "ExposureControl":
    return ExposureControl(self.scored.with_back_swipes(back_swipes), self.max_impressions,
                           self.pool_factor, self.seed, self.shown_slots)


class EmbeddingScorer(Scorer):
  """Dot products of precomputed tower outputs: s(u, v) = q_u . c_v.

  Args:
    query_embeddings: [Nq, d] float32, row i for query_ids[i].
    candidate_embeddings: [N, d] float32, row j for candidate_ids[j].
  """
  name = "model"
  traceable = True

  def __init__(self, query_ids, candidate_ids, query_embeddings: np.ndarray,
               candidate_embeddings: np.ndarray, name: Optional[str] = None):
    super().__init__(query_ids, candidate_ids)
    import tensorflow as tf
    query_embeddings = np.asarray(query_embeddings, np.float32)
    candidate_embeddings = np.asarray(candidate_embeddings, np.float32)
    if query_embeddings.shape[0] != self.query_ids.size or \
        candidate_embeddings.shape[0] != self.candidate_ids.size:
      raise ValueError(f"embeddings {query_embeddings.shape}/{candidate_embeddings.shape} do not "
                       f"match {self.query_ids.size} query / {self.candidate_ids.size} "
                       "candidate ids")
    if query_embeddings.shape[1] != candidate_embeddings.shape[1]:
      raise ValueError(f"query dim {query_embeddings.shape[1]} != candidate dim "
                       f"{candidate_embeddings.shape[1]}")
    self.query_embeddings = query_embeddings
    self.candidate_embeddings = candidate_embeddings
    self._queries_t = tf.constant(query_embeddings)
    self._candidates_t = tf.constant(candidate_embeddings)
    self.name = name or self.name

  def score_block(self, query_rows):
    import tensorflow as tf
    return tf.matmul(tf.gather(self._queries_t, query_rows), self._candidates_t,
                     transpose_b=True)

  def pair_scores(self, query_rows, candidate_rows):
    return np.einsum("pd,pd->p", self.query_embeddings[np.asarray(query_rows)],
                     self.candidate_embeddings[np.asarray(candidate_rows)]).astype(np.float32)


class CandidatePenalty(Scorer):
  """Serving-time knobs that spread exposure: s'(u, v) = s(u, v) - penalty_v.

  The penalty is one [N] vector broadcast over every [B, N] block, so ranking
  stays one matrix product plus a subtraction. It moves pair scores too: AUC,
  log loss and calibration change with it (measured, not assumed). Two choices:

    popularity: penalty_v = beta * log(1 + n_v), n_v = train likes of v
      (candidate_counts.tsv `positives`). Pushes the most liked down, but the
      zero-like cold tail then rises in EVERY list: fewer slots for the top 1 %,
      yet a higher Gini (docs/evaluation.md).
    hubness: penalty_v = beta * qbar . c_v, qbar = mean query embedding. Hubs,
      candidates close to everybody's query, lose the most; the same as ranking
      with centred queries (q_u - beta * qbar) . c_v, so an ANN index or
      pgvector serves it unchanged (Radovanovic et al. 2010, on hubness).

  Args:
    scored: the scorer to penalise.
    penalty: [N] float, subtracted from every score of candidate row v.
  """

  def __init__(self, scored: Scorer, penalty: np.ndarray, name: str):
    super().__init__(scored.query_ids, scored.candidate_ids)
    penalty = np.asarray(penalty, np.float32)
    if penalty.shape != (self.num_candidates,):
      raise ValueError(f"penalty has shape {penalty.shape}, expected ({self.num_candidates},) "
                       "(one value per candidate)")
    self.scored, self.penalty, self.name = scored, penalty, name
    self.traceable = scored.traceable

  @classmethod
  def popularity(cls, scored: Scorer, likes_received: np.ndarray,
                 beta: float) -> "CandidatePenalty":
    """s(u, v) - beta * log(1 + likes_received[v]), named `<scored>:pop<beta>`."""
    _check_beta(beta)
    return cls(scored, beta * np.log1p(np.asarray(likes_received, np.float64)),
               f"{scored.name}:pop{beta:g}")

  @classmethod
  def hubness(cls, scored: "EmbeddingScorer", beta: float) -> "CandidatePenalty":
    """s(u, v) - beta * qbar . c_v with qbar the mean of ALL the scorer's query embeddings
    (no eval data involved), named `<scored>:hub<beta>`."""
    _check_beta(beta)
    qbar = scored.query_embeddings.mean(axis=0, dtype=np.float64)
    return cls(scored, beta * (scored.candidate_embeddings @ qbar), f"{scored.name}:hub{beta:g}")

  def score_block(self, query_rows):
    import tensorflow as tf
    return self.scored.score_block(query_rows) - tf.constant(self.penalty)[None, :]

  def pair_scores(self, query_rows, candidate_rows):
    return (self.scored.pair_scores(query_rows, candidate_rows)
            - self.penalty[np.asarray(candidate_rows)]).astype(np.float32)


def _check_beta(beta: float):
  if not beta >= 0:
    raise ValueError(f"penalty beta must be >= 0, got {beta}")


@dataclasses.dataclass(frozen=True)
class PlattCalibration:
  """P(like) = sigmoid(slope * score + intercept), a logistic fit of labels on scores."""
  slope: float
  intercept: float

  @classmethod
  def fit(cls, scores: np.ndarray, labels: np.ndarray, max_pairs: int = 200_000,
          seed: int = 0) -> "PlattCalibration":
    """Fits on (a random subsample of at most `max_pairs`) scored, labelled pairs."""
    from sklearn.linear_model import LogisticRegression
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).astype(int)
    if scores.size > max_pairs:
      pick = np.random.default_rng(seed).choice(scores.size, max_pairs, replace=False)
      scores, labels = scores[pick], labels[pick]
    if np.unique(labels).size < 2:
      raise ValueError("calibration needs both likes and passes in the train swipes")
    spread = scores.std() or 1.0  # fit on standardised scores: well conditioned for any scale
    center = scores.mean()
    model = LogisticRegression(C=1e6, max_iter=1000).fit(((scores - center) / spread)[:, None],
                                                         labels)
    slope = float(model.coef_[0, 0] / spread)
    return cls(slope, float(model.intercept_[0] - slope * center))

  def probability(self, scores):
    """numpy or tf scores -> probabilities of the same kind."""
    if isinstance(scores, np.ndarray) or np.isscalar(scores):
      return 1.0 / (1.0 + np.exp(-(self.slope * np.asarray(scores, np.float64)
                                   + self.intercept)))
    import tensorflow as tf
    return tf.sigmoid(self.slope * scores + self.intercept)


COMBINATIONS = ("product", "harmonic")


def calibrate_on_train_swipes(dataset, query_ids: np.ndarray, query_embeddings: np.ndarray,
                              candidate_ids: np.ndarray, candidate_embeddings: np.ndarray,
                              seed: int = 0) -> PlattCalibration:
  """Platt calibration of the dot product q.c on a dataset's train swipes (like vs pass).

  For consumers that hold embeddings rather than an `EvalData` (pgvector
  publishing, the Core ML pair's features.json). The split is read batch by
  batch (ids as bytes, mapped to embedding rows): memory holds one float32 score
  and one label per swipe, not the split's ids as strings nor its [n, d]
  embedding gathers (11 GB at 45M swipes).
  """
  q_index = id_index(np.array([str(i).encode("utf-8") for i in query_ids], dtype=object))
  c_index = id_index(np.array([str(i).encode("utf-8") for i in candidate_ids], dtype=object))
  scores, labels = [np.zeros(0, np.float32)], [np.zeros(0, np.int64)]
  for batch in reader.interactions_dataset(
      dataset, "train", 65_536, shuffle=False, deterministic=True,
      keys=["query_id", "candidate_id", "label"]).as_numpy_iterator():
    q_rows = q_index.get_indexer(batch["query_id"])
    c_rows = c_index.get_indexer(batch["candidate_id"])
    known = (q_rows >= 0) & (c_rows >= 0)
    scores.append(np.einsum("pd,pd->p", query_embeddings[q_rows[known]],
                            candidate_embeddings[c_rows[known]]))
    labels.append(batch["label"][known])
  return PlattCalibration.fit(np.concatenate(scores), np.concatenate(labels), seed=seed)


class ReciprocalScorer(Scorer):
  """Ranks for matches: combines P(u likes v) and P(v likes u) (module docstring).

  Args:
    forward: scores u -> v (query u, candidate v).
    backward: scores v -> u laid out like `forward`: backward.score_block(rows)[b, j]
      is the score of candidate j liking query rows[b] (for the model: an
      EmbeddingScorer of the candidate-tower embeddings of the query users against
      the query-tower embeddings of the candidate users).
    calibration: turns both directions' scores into probabilities.
    combination: "product" (P(match) under independence) or "harmonic" (RECON).
    back_swipes: swipes of candidates on query users known at ranking time; they
      replace the model's P(v likes u) by the observed 1 (like) / 0 (pass).
  """

  def __init__(self, forward: Scorer, backward: Scorer, calibration: PlattCalibration,
               name: Optional[str] = None, combination: str = "product",
               back_swipes: Optional[BackSwipes] = None):
    super().__init__(forward.query_ids, forward.candidate_ids)
    if combination not in COMBINATIONS:
      raise ValueError(f"reciprocal combination must be one of {COMBINATIONS}, "
                       f"got {combination!r}")
    if back_swipes is not None and back_swipes.indptr.size != self.query_ids.size + 1:
      raise ValueError(f"back swipes cover {back_swipes.indptr.size - 1} query rows, "
                       f"not {self.query_ids.size}")
    self.forward, self.backward, self.calibration = forward, backward, calibration
    self.combination, self.back_swipes = combination, back_swipes
    self.traceable = forward.traceable and backward.traceable
    self.name = name or f"{forward.name}:reciprocal"
    self._observed = None
    if back_swipes is not None:
      import tensorflow as tf
      # [Nq, None] ragged rows: gathering a block's rows is then one traceable op.
      self._observed = (
          tf.RaggedTensor.from_row_splits(back_swipes.candidates, back_swipes.indptr),
          tf.RaggedTensor.from_row_splits(back_swipes.liked, back_swipes.indptr))

  def with_back_swipes(self, back_swipes: Optional[BackSwipes]) -> "ReciprocalScorer":
    """The same scorer knowing other observed swipes (e.g. the swipes so far, each day)."""
    return ReciprocalScorer(self.forward, self.backward, self.calibration, self.name,
                            self.combination, back_swipes)

  def _combine(self, p_uv, p_vu):
    if self.combination == "product":
      return p_uv * p_vu
    # + 1e-12: an observed pass (P(v->u) = 0) with P(u->v) underflowing to 0 scores 0, not NaN.
    return 2.0 * p_uv * p_vu / (p_uv + p_vu + 1e-12)

  def score_block(self, query_rows):
    import tensorflow as tf
    p_uv = self.calibration.probability(self.forward.score_block(query_rows))
    p_vu = self.calibration.probability(self.backward.score_block(query_rows))
    if self._observed is not None:
      candidates, liked = (tf.gather(r, query_rows) for r in self._observed)
      observed = tf.stack([candidates.value_rowids(), candidates.flat_values], axis=1)
      p_vu = tf.tensor_scatter_nd_update(p_vu, observed, liked.flat_values)
    return self._combine(p_uv, p_vu)

  def pair_scores(self, query_rows, candidate_rows):
    p_uv = self.calibration.probability(self.forward.pair_scores(query_rows, candidate_rows))
    p_vu = self.calibration.probability(self.backward.pair_scores(query_rows, candidate_rows))
    if self.back_swipes is not None:
      observed = self.back_swipes.lookup(query_rows, candidate_rows)
      p_vu = np.where(np.isnan(observed), p_vu, observed)
    return self._combine(p_uv, p_vu).astype(np.float32)


def as_other_side(entities, from_side: str, to_side: str):
  """Renames one side's entity-table keys to the other side's (`query_age` -> `candidate_age`).

  For user-to-user data, where both towers read the same profile table: the
  candidate tower can then embed the query users and the other way round.
  """
  prefix = f"{from_side}_"
  return {(to_side + "_" + key[len(prefix):] if key.startswith(prefix) else key): value
          for key, value in entities.items() if key != features_lib.CREATED_AT}
