"""Epoch-end model selection metrics on the **validation** split (never eval).

The definitions are `evaluate.py`'s, so that what training selects on is what
the report measures:

  validation_recall@K: for each user u with >= 1 validation like (whose
    candidate u had not swiped in train), the share of u's validation likes
    ranked in u's top K of q_u . c over ALL candidates minus u's train swipes
    and u itself; macro-averaged over those users. A tied score ranks ahead of
    the liked candidate (`metrics.ranks_ties_against`): ties are never hits.
  validation_auc: like-vs-pass ROC AUC of q . c over every validation swipe.
  validation_gauc: the same AUC within each user's own validation swipes (ties
    half), averaged over users with both a like and a pass (`metrics.per_user_auc`,
    evaluate.py's `gauc`). Impression-conditioned: it compares only profiles the
    logging feed showed, so it does not reward resembling that feed.

Which one selects the model is `TrainOptions.selection_metric` (`SELECTION_METRICS`).

A collapsed model -- every evaluated user's scores equal over the corpus (e.g.
all embeddings zero after a diverging learning rate) -- raises
`CollapsedModelError` instead of reporting a meaningless recall.

Cost at scale: ranking U users against N candidates takes U x N x d
multiply-adds in [block, N] float32 score blocks; the block is sized to stay under
`SCORE_BLOCK_BYTES` (at 1M candidates ~64 rows, not 1024 rows = 4 GB). So U is
capped: with more than `max_users` (default `MAX_USERS`) validation users, both
metrics are computed on a uniform sample of `max_users` of them (seeded, the
same every epoch). Recall@K is then a sample mean over n users with standard
error s / sqrt(n) (s the per-user recall's standard deviation; at n = 20,000 and
recall near 0.05, about +-0.001); smaller data sets are evaluated whole, exactly
as without the cap. Only the sampled users' swipes are kept: their validation
rows, and their train swipes (the exclusions) as int row numbers -- from the
training's in-memory index when the trainer passes it (`train_pairs`), else read
id columns only, batch by batch -- never the train split as strings.
"""

import functools
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_two_tower import features as features_lib
from tfrs_two_tower.data import reader
from tfrs_two_tower.evaluation import metrics
from tfrs_two_tower.model import towers

SPLIT = "validation"
PREFIX = "validation_"
# Scores closer than this over a whole list are ties (float32 dot products of unit vectors).
COLLAPSE_TOLERANCE = 1e-6
SCORE_BLOCK_BYTES = 256 << 20
# Validation users ranked each epoch; more are sampled down to this many (see above).
MAX_USERS = 20_000
_READ_BATCH = 65_536
# validation_recall@K + this: its standard error over users, s / sqrt(n) (the tuning's margin).
STANDARD_ERROR_SUFFIX = "_standard_error"
# --selection_metric -> the key it watches (recall: at K = --early_stopping_k).
SELECTION_METRICS = ("recall", "gauc", "auc")


def selection_key(metric: str, k: int) -> str:
  """The `validation_*` key `metric` selects on: recall -> validation_recall@k."""
  if metric not in SELECTION_METRICS:
    raise ValueError(f"selection metric must be one of {SELECTION_METRICS}, got {metric!r}")
  return PREFIX + (f"recall@{k}" if metric == "recall" else metric)


class ValidationDataError(ValueError):
  """The validation split cannot select a model (no users with likes)."""


class CollapsedModelError(ValueError):
  """Every score tied: the model learned nothing usable."""
  exit_code = 3


class ValidationEvaluator:
  """Holds the validation swipes, the train exclusions and the corpus; call with the towers."""

  def __init__(self, dataset: reader.DatasetDir, ks: Sequence[int] = (10, 50, 100),
               batch_size: int = 1024, score_block_bytes: int = SCORE_BLOCK_BYTES,
               max_users: int = MAX_USERS, seed: int = 0,
               train_pairs: Optional[Callable[[pd.Index, pd.Index], Dict[str, np.ndarray]]] = None):
    """`train_pairs(users, corpus)`: the train swipes of `users` (bytes ids) with
    candidates as rows of `corpus` (bytes ids), e.g. `inputs.InteractionIndex.pairs_of`
    of the training index, so the train split is read once per run (a 1M-user split
    takes ~25 minutes to parse); default: read here."""
    if max_users < 1:
      raise ValueError(f"max_users must be >= 1, got {max_users}")
    self.ks = tuple(sorted(int(k) for k in ks))
    self.batch_size = batch_size
    self.score_block_bytes = score_block_bytes
    self._calls = {}
    self.corpus = reader.read_entities(dataset, "candidate")
    self.candidate_ids = self.corpus["candidate_id"].astype(str)
    column = {c: i for i, c in enumerate(self.candidate_ids)}
    chosen, sampled = _sample_users(dataset, max_users, seed)
    swipes = _read_split(dataset, SPLIT, chosen if sampled else None)
    train = (train_pairs or functools.partial(_train_pairs, dataset))(
        chosen, _bytes_index(self.candidate_ids))
    rows = np.array([column.get(c, -1) for c in swipes[features_lib.CANDIDATE_ID]], np.int64)
    known = rows >= 0
    swipes = {k: v[known] for k, v in swipes.items()}
    rows = rows[known]
    # One list per validation user; the user's features from its first validation row.
    user_ids, first, user_of_swipe = np.unique(swipes[features_lib.QUERY_ID], return_index=True,
                                               return_inverse=True)
    self.queries = {k: v[first] for k, v in swipes.items()}
    self.swipe_user, self.swipe_column = user_of_swipe, rows
    self.labels = swipes[features_lib.LABEL].astype(np.int64)
    # Exclusions: each user's train swipes and the user itself as a candidate.
    t_user = _bytes_index(user_ids).get_indexer(train[features_lib.QUERY_ID]).astype(np.int64)
    t_col = train[features_lib.CANDIDATE_ID]
    self_col = np.array([column.get(u, -1) for u in user_ids], np.int64)
    keep = (t_user >= 0) & (t_col >= 0)
    ex_user = np.concatenate([t_user[keep], np.flatnonzero(self_col >= 0)])
    ex_col = np.concatenate([t_col[keep], self_col[self_col >= 0]])
    width = np.int64(len(self.candidate_ids))
    excluded = np.unique(ex_user * width + ex_col)
    like_keys = np.unique((user_of_swipe * width + rows)[self.labels == 1])
    relevant = like_keys[~np.isin(like_keys, excluded)]
    self.relevant_user, self.relevant_column = relevant // width, relevant % width
    self.excluded_user, self.excluded_column = excluded // width, excluded % width
    self.num_users = int(np.unique(self.relevant_user).size)
    # GAUC needs a user with both a like and a pass (never on likes-only data).
    both = np.bincount(user_of_swipe, weights=self.labels == 1, minlength=len(user_ids))
    total = np.bincount(user_of_swipe, minlength=len(user_ids))
    self.has_both_labels = bool(((both > 0) & (both < total)).any())
    if self.num_users == 0:
      raise ValidationDataError(
          f"{dataset.path}: the validation split has {len(user_ids)} users and "
          f"{int((self.labels == 1).sum())} likes, none of them new to its user: nothing to "
          "select a model on; export with a larger --validation_fraction or --validation_days")

  def embed(self, tower: towers.Tower, table: Dict[str, np.ndarray], side: str) -> np.ndarray:
    """[N, d] float32 embeddings of an entity table ({feature key: [N] values}, the
    `side` ("query"/"candidate") id column among them), `batch_size` rows at a time."""
    keys = [spec["key"] for spec in tower.preprocessing.specs]
    if id(tower) not in self._calls:  # one traced function per tower, reused every epoch
      self._calls[id(tower)] = tf.function(lambda f: tf.cast(tower(f), tf.float32),
                                            reduce_retracing=True)
    call = self._calls[id(tower)]
    n = len(table[f"{side}_id"])
    out = [call({k: tf.constant(table[k][i:i + self.batch_size]) for k in keys}).numpy()
           for i in range(0, n, self.batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

  def candidate_embeddings(self, candidate_tower: towers.Tower) -> Tuple[np.ndarray, np.ndarray]:
    """(ids [N], embeddings [N, d]) of the whole corpus."""
    return self.candidate_ids, self.embed(candidate_tower, self.corpus, "candidate")

  def __call__(self, query_tower: towers.Tower, candidate_tower: towers.Tower,
               candidate_embeddings: np.ndarray = None) -> Dict[str, float]:
    """Metrics named `validation_*` (see the module docstring); raises CollapsedModelError."""
    if candidate_embeddings is None:
      _, candidate_embeddings = self.candidate_embeddings(candidate_tower)
    q = self.embed(query_tower, self.queries, "query")
    pair = np.einsum("nd,nd->n", q[self.swipe_user], candidate_embeddings[self.swipe_column])
    out = {PREFIX + "auc": metrics.roc_auc(self.labels, pair),
           PREFIX + "gauc": float(np.nanmean(metrics.per_user_auc(
               self.swipe_user, self.labels, pair, len(q))))
           if self.has_both_labels else float("nan")}
    corpus = tf.constant(candidate_embeddings)
    ranks = np.empty(self.relevant_user.size, np.int64)
    spread = 0.0
    block = int(max(1, min(self.batch_size,
                           self.score_block_bytes // (4 * max(len(candidate_embeddings), 1)))))
    for start in range(0, len(q), block):
      stop = min(start + block, len(q))
      scores = tf.matmul(tf.constant(q[start:stop]), corpus, transpose_b=True).numpy()
      ex = slice(*np.searchsorted(self.excluded_user, [start, stop]))
      scores[self.excluded_user[ex] - start, self.excluded_column[ex]] = -np.inf
      finite = np.where(np.isfinite(scores), scores, np.nan)
      spread = max(spread, float(np.nanmax(np.nanmax(finite, 1) - np.nanmin(finite, 1))))
      rel = slice(*np.searchsorted(self.relevant_user, [start, stop]))
      ranks[rel] = metrics.ranks_ties_against(scores, self.relevant_user[rel] - start,
                                              self.relevant_column[rel])
    if spread <= COLLAPSE_TOLERANCE:
      raise CollapsedModelError(
          "the model has collapsed: every user's scores are equal over the whole corpus (spread "
          f"{spread:.2g}), so it ranks nothing; typical causes are a too high --learning_rate or "
          "a too low --temperature. Nothing was written.")
    for k in self.ks:
      per_user = metrics.recall_at_k_from_ranks(ranks, self.relevant_user, len(q), k)
      out[f"{PREFIX}recall@{k}"] = float(np.nanmean(per_user))
      users = per_user[~np.isnan(per_user)]
      out[f"{PREFIX}recall@{k}{STANDARD_ERROR_SUFFIX}"] = (
          float(np.std(users, ddof=1) / np.sqrt(users.size)) if users.size > 1 else 0.0)
    out["validation_users"] = self.num_users
    out["validation_likes"] = int(self.relevant_user.size)
    return out



def _batches(dataset: reader.DatasetDir, split: str, keys=None):
  """A split's records in file order, `_READ_BATCH` at a time, as numpy (strings as bytes)."""
  return reader.interactions_dataset(dataset, split, _READ_BATCH, shuffle=False,
                                     deterministic=True, keys=keys).as_numpy_iterator()


def _bytes_index(ids) -> pd.Index:
  return pd.Index([i.encode("utf-8") for i in ids], dtype=object)


def _decode(value: np.ndarray) -> np.ndarray:
  """bytes -> str elementwise (any shape), as `reader.read_interactions` does."""
  if value.dtype != object or not value.size:
    return value
  return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(value)


def _sample_users(dataset: reader.DatasetDir, max_users: int, seed: int):
  """(the validation users to evaluate as a pd.Index of bytes ids, whether sampled).

  With more than `max_users` distinct users: a uniform sample without
  replacement of `max_users` of them, drawn by `np.random.default_rng(seed)`
  from the sorted ids; otherwise all of them.
  """
  users = np.unique(np.concatenate(
      [b[features_lib.QUERY_ID] for b in _batches(dataset, SPLIT, [features_lib.QUERY_ID])]
      or [np.array([], object)]))
  if len(users) <= max_users:
    return pd.Index(users, dtype=object), False
  return pd.Index(np.random.default_rng(seed).choice(users, max_users, replace=False),
                  dtype=object), True


def _read_split(dataset: reader.DatasetDir, split: str, users) -> Dict[str, np.ndarray]:
  """`reader.read_interactions` restricted to the rows of `users` (None: every row)."""
  if users is None:
    return reader.read_interactions(dataset, split)
  parts: Dict[str, list] = {}
  for batch in _batches(dataset, split):
    mine = users.get_indexer(batch[features_lib.QUERY_ID]) >= 0
    for key, value in batch.items():
      parts.setdefault(key, []).append(value[mine])
  return {key: _decode(np.concatenate(chunks)) for key, chunks in parts.items()}


def _train_pairs(dataset: reader.DatasetDir, users: pd.Index, corpus: pd.Index):
  """The train swipes of `users`: query ids (bytes) and candidate rows ([n] int64).

  Candidate ids become their row in `corpus` (bytes ids; -1 when not in it) batch by
  batch, so memory holds the kept rows only, never the split as strings.
  """
  queries, rows = [np.array([], object)], [np.array([], np.int64)]
  for batch in _batches(dataset, "train", [features_lib.QUERY_ID, features_lib.CANDIDATE_ID]):
    mine = users.get_indexer(batch[features_lib.QUERY_ID]) >= 0
    queries.append(batch[features_lib.QUERY_ID][mine])
    rows.append(corpus.get_indexer(batch[features_lib.CANDIDATE_ID][mine]).astype(np.int64))
  return {features_lib.QUERY_ID: np.concatenate(queries),
          features_lib.CANDIDATE_ID: np.concatenate(rows)}
