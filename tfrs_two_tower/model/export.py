"""SavedModels of a trained model: raw-feature towers, numeric cores, the top-k index.

All signatures are `serving_default` with named inputs and a dict output, so a
consumer needs no Python code of ours to call them.
"""

from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfrs_two_tower.model import preprocessing as prep
from tfrs_two_tower.model import towers

SERVING = "serving_default"


class _Serving(tf.Module):
  """Holds the resources (variables, lookup tables) a serving function captures.

  Tracking the resources instead of the Keras model keeps Keras from tracing and
  serialising every layer: saving is ~8x faster and the SavedModel smaller.
  """

  def __init__(self, model: tf.keras.Model):
    super().__init__()
    self.model_variables = list(model.variables)
    self.tables = [table for layer in model.submodules
                   if isinstance(layer, prep.FeaturePreprocessing) for table in layer.tables]


def save_tower(path: str, tower: towers.Tower) -> None:
  """Raw features by dataset key -> {"embedding": [B, d] float32}."""
  module = _Serving(tower)
  specs = prep.raw_input_specs(tower.preprocessing.specs)
  fn = tf.function(lambda features: {"embedding": tf.cast(tower(features), tf.float32)})
  tf.saved_model.save(module, path, signatures={SERVING: fn.get_concrete_function(specs)})


def save_core(path: str, core: tf.keras.Model, specs: Sequence[Mapping]) -> None:
  """Core inputs (int32/float32, see `preprocessing`) -> {"embedding": [B, d] float32}."""
  module = _Serving(core)
  fn = tf.function(lambda features: {"embedding": tf.cast(core(features), tf.float32)})
  tf.saved_model.save(module, path,
                      signatures={SERVING: fn.get_concrete_function(prep.core_input_specs(specs))})


class BruteForceIndex(_Serving):
  """Exact top-k over every candidate: scores = q C^T, excluded ids masked out.

  Inputs: the raw query features, `exclude_ids` [B, E] string ("" pads) and the
  scalar `k`. Outputs `ids` [B, k] string and `scores` [B, k] float32 (q . c: the cosine,
  + b_c with --candidate_bias).
  """

  def __init__(self, query_tower: towers.Tower, candidate_ids: np.ndarray,
               candidate_embeddings: np.ndarray):
    super().__init__(query_tower)
    self.query_tower = query_tower.__call__  # a method: not tracked, its resources are
    self.ids = tf.constant(np.asarray(candidate_ids, dtype=str).astype(object))
    self.embeddings = tf.Variable(np.asarray(candidate_embeddings, np.float32), trainable=False,
                                  name="candidate_embeddings")
    self.rows = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            self.ids, tf.range(len(candidate_ids), dtype=tf.int64)), default_value=-1)

  def top_k(self, features, exclude_ids, k):
    q = tf.cast(self.query_tower(features), tf.float32)
    scores = tf.matmul(q, self.embeddings, transpose_b=True)
    rows = self.rows.lookup(exclude_ids)  # [B, E], -1 for "" and unknown ids
    batch = tf.broadcast_to(tf.range(tf.shape(rows)[0], dtype=tf.int64)[:, None], tf.shape(rows))
    hit = rows >= 0
    hits = tf.scatter_nd(tf.stack([tf.boolean_mask(batch, hit), tf.boolean_mask(rows, hit)],
                                  axis=1),
                         tf.ones([tf.reduce_sum(tf.cast(hit, tf.int32))], tf.float32),
                         tf.shape(scores, out_type=tf.int64))
    excluded = hits > 0
    scores = tf.where(excluded, tf.fill(tf.shape(scores), -np.inf), scores)
    k = tf.minimum(k, tf.shape(scores)[1])
    top_scores, top_rows = tf.math.top_k(scores, k=k)
    return {"ids": tf.gather(self.ids, top_rows), "scores": top_scores}


class ScannIndex(_Serving):
  """Approximate top-k with ScaNN (`tfrs.layers.factorized_top_k.ScaNN`).

  Same signature as `BruteForceIndex`. ScaNN is asked for k + E neighbours so
  that the excluded ids can be dropped and k remain. Loading needs `import scann`.
  """

  def __init__(self, query_tower: towers.Tower, candidate_ids: np.ndarray,
               candidate_embeddings: np.ndarray):
    import tensorflow_recommenders as tfrs
    super().__init__(query_tower)
    self.query_tower = query_tower.__call__  # a method: not tracked, its resources are
    leaves = max(1, min(100, int(np.sqrt(len(candidate_ids)))))
    self.scann = tfrs.layers.factorized_top_k.ScaNN(
        k=10, distance_measure="dot_product", num_leaves=leaves,
        num_leaves_to_search=max(1, leaves // 4), num_reordering_candidates=500)
    self.scann.index(tf.constant(np.asarray(candidate_embeddings, np.float32)),
                     tf.constant(np.asarray(candidate_ids, dtype=str).astype(object)))

  def top_k(self, features, exclude_ids, k):
    q = tf.cast(self.query_tower(features), tf.float32)
    scores, ids = self.scann(q, k=k + tf.shape(exclude_ids)[1])
    excluded = tf.reduce_any(tf.equal(ids[:, :, None], exclude_ids[:, None, :]) &
                             tf.not_equal(exclude_ids, "")[:, None, :], axis=2)
    scores = tf.where(excluded, tf.fill(tf.shape(scores), -np.inf), scores)
    k = tf.minimum(k, tf.shape(scores)[1])
    top_scores, top = tf.math.top_k(scores, k=k)
    return {"ids": tf.gather(ids, top, batch_dims=1), "scores": top_scores}


def scann_available() -> bool:
  try:
    import scann  # noqa: F401
    return True
  except ImportError:
    return False


INDEX_TYPES = ("brute_force", "scann")


def save_index(path: str, query_tower: towers.Tower, candidate_ids: np.ndarray,
               candidate_embeddings: np.ndarray, index_type: str = "brute_force") -> str:
  """Writes the top-k SavedModel (`INDEX_TYPES`); returns the index type written."""
  if index_type not in INDEX_TYPES:
    raise ValueError(f"index type must be one of {INDEX_TYPES}, got {index_type!r}")
  options = None
  if index_type == "scann":
    if not scann_available():
      raise ValueError("--index=scann needs the scann package (pip install scann)")
    index = ScannIndex(query_tower, candidate_ids, candidate_embeddings)
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])
  else:
    index = BruteForceIndex(query_tower, candidate_ids, candidate_embeddings)
  specs = dict(prep.raw_input_specs(query_tower.preprocessing.specs))
  fn = tf.function(lambda features, exclude_ids, k: index.top_k(features, exclude_ids, k))
  concrete = fn.get_concrete_function(specs, tf.TensorSpec([None, None], tf.string,
                                                           name="exclude_ids"),
                                      tf.TensorSpec([], tf.int32, name="k"))
  tf.saved_model.save(index, path, signatures={SERVING: concrete}, options=options)
  return index_type
