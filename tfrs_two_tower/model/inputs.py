"""`tf.data` pipelines that feed the two-tower model with core inputs.

String work (vocabulary lookups, hashing, normalisation) runs in the input
pipeline, in parallel with training, so that the training step itself is
numeric only (and compiles with XLA). The batch layout is described in
`two_tower.py`.
"""

from typing import Dict, Optional

import tensorflow as tf

from tfrs_two_tower import features as features_lib
from tfrs_two_tower.data import reader
from tfrs_two_tower.model import preprocessing as prep

# Fingerprint64 mod this: a non-negative int64 id per candidate.
KEY_SPACE = 2**63 - 1


def candidate_key(ids: tf.Tensor) -> tf.Tensor:
  """[B] id strings -> [B] int64 keys (for accidental hits and frequency estimation)."""
  return tf.strings.to_hash_bucket_fast(ids, KEY_SPACE)


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


class BatchBuilder:
  """Raw interaction batch -> model batch (core inputs of both sides + targets)."""

  def __init__(self, query_preprocessing: prep.FeaturePreprocessing,
               candidate_preprocessing: prep.FeaturePreprocessing,
               static_probability: Optional[StaticSamplingProbability] = None):
    self.query_preprocessing = query_preprocessing
    self.candidate_preprocessing = candidate_preprocessing
    self.static_probability = static_probability

  def __call__(self, raw: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    out = dict(self.query_preprocessing(raw))
    out.update(self.candidate_preprocessing(raw))
    out["label"] = tf.cast(raw[features_lib.LABEL], tf.int32)
    out["weight"] = tf.cast(raw[features_lib.WEIGHT], tf.float32)
    out["candidate_key"] = candidate_key(raw[features_lib.CANDIDATE_ID])
    if self.static_probability is not None:
      out["candidate_sampling_probability"] = self.static_probability(
          raw[features_lib.CANDIDATE_ID])
    return out


def training_dataset(dataset: reader.DatasetDir, builder: BatchBuilder, batch_size: int,
                     seed: int, epoch: int, num_batches: int, skip_batches: int = 0,
                     split: str = "train") -> tf.data.Dataset:
  """Batches `skip_batches` .. `skip_batches + num_batches` of one epoch.

  An epoch is a shuffled pass (shuffle seed = seed + epoch) over the split in
  full batches, repeated if it holds fewer than the epoch's batches. A resumed
  run skips the batches its checkpoint already trained on.
  """
  ds = reader.interactions_dataset(dataset, split, batch_size, shuffle=True, seed=seed + epoch,
                                   drop_remainder=True, repeat=True)
  return (ds.skip(skip_batches).take(num_batches)
          .map(builder, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
