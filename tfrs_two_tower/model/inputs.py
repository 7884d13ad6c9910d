"""`tf.data` pipelines that feed the two-tower model with core inputs.

An interaction record repeats its two entities' features (the dataset writer
joins them from the entity tables). So the training input is built in two
parts, each computed once before training:

* `EntityFeatures`: the core inputs (all string work: lookups, hashing,
  normalisation) of every entity of a side, one row per entity;
* `InteractionIndex`: the split read once from its TFRecord shards, parsing only
  ids and targets, as int/float arrays (entity rows, label, weight, candidate key
  and, for static logQ, the sampling probability): ~30 bytes per interaction.

A training batch is then a shuffled slice of the index plus row gathers: the
per-step input work is tiny and numeric, the training step compiles with XLA,
and a resumed run sees exactly the batches it would have seen. The batch layout
is described in `two_tower.py`.
"""

from typing import Dict, Optional, Tuple

import numpy as np
import pandas as pd
import tensorflow as tf

from tfrs_two_tower import features as features_lib
from tfrs_two_tower.data import dataset_format as fmt
from tfrs_two_tower.data import reader
from tfrs_two_tower.model import preprocessing as prep

# Fingerprint64 mod this: a non-negative int64 id per candidate.
KEY_SPACE = 2**63 - 1
# Record keys the training input parses; the features come from `EntityFeatures`.
RECORD_KEYS = (features_lib.QUERY_ID, features_lib.CANDIDATE_ID, features_lib.LABEL,
               features_lib.WEIGHT)


# The index column (bool) marking each query's first `new_user_swipes` interactions.
NEW_USER_COLUMN = "query_is_new"


def first_swipes(query_rows: np.ndarray, timestamps: np.ndarray, n: int) -> np.ndarray:
  """[m] bool: the interaction is among its query's first n by time (ties: input order).

  Args:
    query_rows: [m] the query of each interaction.
    timestamps: [m] its time.
    n: how many of each query's interactions count as the query's first.

  The same marks as `metrics.rank_within_users(query_rows, -timestamps) < n`, which
  is not called here for its memory: it holds per-swipe ranks, positions and a
  tie-break key (44 bytes a swipe at 20M swipes, measured with tracemalloc, against
  14 here), and this runs on every train swipe of a run (68M at 1M users).
  """
  order = np.lexsort((timestamps, query_rows))  # stable: ties keep the input order
  sorted_rows = query_rows[order]
  starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
  del sorted_rows
  lengths = np.diff(np.r_[starts, order.size])
  out = np.zeros(query_rows.size, bool)
  # The k-th swipe of every query with more than k: n passes over the queries, so no
  # per-swipe temporaries beyond the sort order (memory: 8 bytes a swipe, not 32).
  for k in range(n):
    longer = lengths > k
    if not longer.any():
      break
    out[order[starts[longer] + k]] = True
  return out


def candidate_key(ids: tf.Tensor) -> tf.Tensor:
  """[B] id strings -> [B] int64 keys (for accidental hits and frequency estimation)."""
  return tf.strings.to_hash_bucket_fast(ids, KEY_SPACE)


def candidate_interaction_counts(dataset: reader.DatasetDir) -> Tuple[np.ndarray, np.ndarray]:
  """(keys [N] int64 `candidate_key`, train interactions [N] int64) of every candidate."""
  counts = dataset.candidate_counts()
  keys = candidate_key(tf.constant(counts["candidate_id"].astype(str).tolist())).numpy()
  return keys, counts["interactions"].to_numpy(np.int64)


class StaticSamplingProbability:
  """p(candidate) = its train interactions / all train interactions (candidate_counts.tsv).

  A candidate with no train interaction gets the probability of a single one.
  Every swipe (like or pass) puts its candidate into a batch, so interactions,
  not positives, are the right count for in-batch sampling.
  """

  def __init__(self, dataset: reader.DatasetDir):
    counts = dataset.candidate_counts()
    total = float(max(counts["interactions"].sum(), 1))
    self.table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(counts["candidate_id"].astype(str).tolist()),
            tf.constant((counts["interactions"].to_numpy() / total).astype("float32"))),
        default_value=1.0 / total)

  def __call__(self, ids: tf.Tensor) -> tf.Tensor:
    return self.table.lookup(ids)


class EntityFeatures:
  """Core inputs of every entity of one side, computed once; looked up by row."""

  def __init__(self, dataset: reader.DatasetDir, side: str,
               preprocessing: prep.FeaturePreprocessing, batch_size: int = 65536):
    self.side = side
    self.preprocessing = preprocessing
    parts: Dict[str, list] = {}
    id_chunks = []
    for raw in reader.entity_dataset(dataset, side, batch_size=batch_size):
      for key, value in preprocessing(raw, history=False).items():
        parts.setdefault(key, []).append(value)
      id_chunks.append(raw[f"{side}_id"])
    ids = tf.concat(id_chunks, axis=0)
    self.ids = ids.numpy()  # [N] bytes: row -> id
    self.values = {key: tf.concat(chunks, axis=0) for key, chunks in parts.items()}
    self.rows = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(ids, tf.range(tf.shape(ids, out_type=tf.int64)[0])),
        default_value=-1)

  def row(self, ids: tf.Tensor) -> tf.Tensor:
    """[B] ids -> [B] int64 entity rows (-1: not in the entity table)."""
    return self.rows.lookup(ids)

  def gather(self, rows: tf.Tensor) -> Dict[str, tf.Tensor]:
    return {key: tf.gather(value, rows) for key, value in self.values.items()}


class InteractionIndex:
  """One split as arrays: entity rows of both sides and the training targets.

  With a swipe history the query user's history lists of each interaction
  (core inputs, int32 [n, N] each) are columns of the index too. With
  `new_user_swipes` N > 0, `NEW_USER_COLUMN` (bool [n]) marks each query's first
  N interactions of the split by time (ties in split order).
  """

  def __init__(self, dataset: reader.DatasetDir, split: str, query: EntityFeatures,
               candidate: EntityFeatures,
               static_probability: Optional[StaticSamplingProbability] = None,
               new_user_swipes: int = 0):
    self.query, self.candidate = query, candidate
    parts: Dict[str, list] = {}
    history_keys = query.preprocessing.history_keys
    times = (features_lib.TIMESTAMP,) if new_user_swipes else ()
    records = reader.interactions_dataset(dataset, split, 65536, shuffle=False,
                                          deterministic=True,
                                          keys=RECORD_KEYS + times + tuple(history_keys))
    for batch in records:
      ids = batch[features_lib.CANDIDATE_ID]
      columns = {"query_row": query.row(batch[features_lib.QUERY_ID]),
                 "candidate_row": candidate.row(ids),
                 "label": tf.cast(batch[features_lib.LABEL], tf.int32),
                 "weight": tf.cast(batch[features_lib.WEIGHT], tf.float32),
                 "candidate_key": candidate_key(ids)}
      if static_probability is not None:
        columns["candidate_sampling_probability"] = static_probability(ids)
      if history_keys:
        columns.update(query.preprocessing.history_inputs(batch))  # string work once
      if times:
        columns[features_lib.TIMESTAMP] = batch[features_lib.TIMESTAMP]
      for key, value in columns.items():
        parts.setdefault(key, []).append(value.numpy())
    columns = {key: np.concatenate(chunks) for key, chunks in parts.items()}
    if times:
      columns[NEW_USER_COLUMN] = first_swipes(columns["query_row"],
                                              columns.pop(features_lib.TIMESTAMP),
                                              new_user_swipes)
    for side in ("query", "candidate"):
      missing = int((columns[f"{side}_row"] < 0).sum())
      if missing:
        raise reader.DatasetFormatError(
            f"{dataset.path}: {missing} {split} interactions name a {side} id that is not in "
            f"{dataset.file(fmt.ENTITY_FILES[side])}")
    self.tensors = {key: tf.constant(value) for key, value in columns.items()}

  def __len__(self) -> int:
    return int(self.tensors["label"].shape[0])

  def pairs_of(self, users: pd.Index, corpus: pd.Index) -> Dict[str, np.ndarray]:
    """The split's interactions of `users` without another pass over its shards.

    Args:
      users: query ids (bytes) to keep.
      corpus: candidate ids (bytes); the result's candidates are rows in it.
    Returns:
      {QUERY_ID: [n] bytes ids, CANDIDATE_ID: [n] int64 rows in `corpus` (-1: absent)},
      the same as reading the split and keeping `users`' rows (in split order).
    """
    wanted = pd.Index(self.query.ids).get_indexer(users)
    query_rows = self.tensors["query_row"].numpy()
    keep = np.isin(query_rows, wanted[wanted >= 0])
    column_of_row = corpus.get_indexer(self.candidate.ids).astype(np.int64)
    return {features_lib.QUERY_ID: self.query.ids[query_rows[keep]],
            features_lib.CANDIDATE_ID: column_of_row[self.tensors["candidate_row"].numpy()[keep]]}

  def batch(self, rows: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Model batch of the interactions at `rows` (see `two_tower.py`)."""
    picked = {key: tf.gather(value, rows) for key, value in self.tensors.items()}
    out = dict(self.query.gather(picked.pop("query_row")))
    out.update(self.candidate.gather(picked.pop("candidate_row")))
    out.update(picked)
    return out


def training_dataset(index: InteractionIndex, batch_size: int, seed: int, epoch: int,
                     num_batches: int, skip_batches: int = 0) -> tf.data.Dataset:
  """Batches `skip_batches` .. `skip_batches + num_batches` of one epoch.

  An epoch walks through random permutations of the split (seeded by seed and
  epoch; as many passes as the epoch needs) in full batches, so the same seed
  gives the same batches, also after a resume.
  """
  n = len(index)
  if n < batch_size:
    raise ValueError(f"the split has {n} interactions, fewer than a batch ({batch_size})")
  per_pass = n // batch_size
  passes = -(-(skip_batches + num_batches) // per_pass)
  rng = np.random.RandomState([seed % 2**32, epoch])
  order = np.concatenate([rng.permutation(n)[:per_pass * batch_size] for _ in range(passes)])
  order = tf.constant(order.reshape(-1, batch_size).astype(np.int64))
  return (tf.data.Dataset.range(skip_batches, skip_batches + num_batches)
          .map(lambda i: index.batch(order[i]), num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))
