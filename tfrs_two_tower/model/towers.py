"""A tower: preprocessing (strings -> indices) followed by a numeric core.

The core is a functional Keras model over the int32/float32 inputs of
`preprocessing.core_input_specs` only:

  per vocabulary feature  e = Embedding(1 + k + vocab_size, d)(index)         [B, d]
  multi-valued            e = sum_l m_l E[i_l] / max(sum_l m_l, 1)  (mean)     [B, d]
                              or sum_l m_l E[i_l]                   (sum),  m_l = [i_l > 0]
  history list            the masked mean as above over the candidate ids the user
                          liked (or passed) before, weighted r^l for the l-th most
                          recent (r = recency_decay; 1: plain mean); E is its own
                          table, or the candidate tower's id embedding
                          (`shared_embeddings`); in training each id is masked
                          with probability `dropout` (HistoryDropout)
  numeric                 [z, missing] (+ Embedding(len(boundaries) + 2, d)(bucket))
  geo                     cell embedding and the unit-sphere xyz
  h = concat(all) -> Dense(relu) x len(layer_sizes) -> Dense(embedding_dim)
  out = h * rsqrt(max(sum(h^2), 1e-12))                                       [B, embedding_dim]

Penalties added to the model's loss: `l2` * (sum of the hidden kernels' squared
weights) and `embedding_l2` * (sum of the vocabulary tables' squared weights, Keras'
`embeddings_regularizer`). The table penalty's gradient 2 * embedding_l2 * E is dense:
every row moves every step (under Adam, rows a batch rarely uses shrink most, since
their second moment is small), so the row-wise optimizers lose their O(batch) step;
a penalty on the gathered rows only, which would keep it, was measured and does not
help (docs/training.md, "Oracle headroom").

With a score bias (`score_bias`, the `--candidate_bias` option) the cores add one
column, so that the score stays an inner product of the two outputs:

  candidate   out = [c, b_c],  b_c = w . a  (a = the last hidden ReLU layer, w
              starts at 0, no intercept: a feature- and id-based appeal) [B, embedding_dim + 1]
  query       out = [q, 1]                                                 [B, embedding_dim + 1]
  score       [q, 1] . [c, b_c] = q.c + b_c     (cosine + candidate bias)

It uses only gathers, matmuls, relu, concat, reduce_sum, maximum, rsqrt, mul,
add, cast (and, with a score bias, a slice), so that coremltools' TensorFlow
frontend converts it.
"""

import json
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfrs_two_tower.model import preprocessing as prep

DEFAULT_EMBEDDING_DIM = 8


class MaskedPooling(tf.keras.layers.Layer):
  """[B, L, d] embeddings of [B, L] indices -> [B, d], ignoring index 0 (padding).

  "mean" divides the masked sum by max(count, 1), "sum" keeps it, "sqrtn" divides it by
  sqrt(max(count, 1)) (TF's combiner of that name; count = the nonzero indices, with
  `recency_decay` below their weights' sum).

  With `recency_decay` r < 1 (lists of a fixed length L, most recent first) slot
  l weighs w_l = r^l: mean = sum_l w_l m_l E[i_l] / max(sum_l w_l m_l, 1e-6)
  (an empty list stays 0).
  """

  def __init__(self, pooling: str = "mean", recency_decay: float = 1.0, **kwargs):
    super().__init__(**kwargs)
    if pooling not in ("mean", "sum", "sqrtn"):
      raise ValueError(f"unknown pooling {pooling!r}")
    self.pooling = pooling
    self.recency_decay = float(recency_decay)

  def call(self, embeddings, indices):
    mask = tf.cast(indices > 0, embeddings.dtype)[:, :, None]
    if self.recency_decay != 1.0:  # a constant [1, L, 1]: a multiply Core ML converts
      length = int(indices.shape[1])
      mask *= tf.constant(self.recency_decay ** np.arange(length), embeddings.dtype)[None, :, None]
    total = tf.reduce_sum(embeddings * mask, axis=1)
    if self.pooling == "sum":
      return total
    count = tf.reduce_sum(mask, axis=1)
    if self.pooling == "sqrtn":
      return total * tf.math.rsqrt(tf.maximum(count, tf.ones_like(count)))
    if self.recency_decay != 1.0:  # a weight sum < 1 is a real list (one old id): divide by it
      return total / tf.maximum(count, tf.constant(1e-6, count.dtype))
    return total / tf.maximum(count, tf.ones_like(count))

  def get_config(self):
    return {**super().get_config(), "pooling": self.pooling,
            "recency_decay": self.recency_decay}


class HistoryDropout(tf.keras.layers.Layer):
  """In training, masks each history id (index -> 0, padding) with probability `rate`.

  Histories are short for new users and long for the users most of the
  training swipes come from; dropping ids teaches the tower short lists. At
  inference (`training=False`) the identity.
  """

  def __init__(self, rate: float, **kwargs):
    super().__init__(trainable=False, **kwargs)
    if not 0.0 <= rate < 1.0:
      raise ValueError(f"history dropout rate must be in [0, 1), got {rate}")
    self.rate = float(rate)

  def call(self, indices, training=False):
    if not training or self.rate == 0.0:
      return indices
    keep = tf.random.uniform(tf.shape(indices)) >= self.rate
    return tf.where(keep, indices, tf.zeros_like(indices))

  def get_config(self):
    config = super().get_config()
    config.pop("trainable", None)
    return {**config, "rate": self.rate}


class IdDropout(tf.keras.layers.Layer):
  """Trains the out-of-vocabulary rows of id features (DropoutNet-style cold start).

  Every id seen in training has its own row, so without this the OOV rows that
  serve unseen users and profiles never receive a gradient. In training, each
  known id index i (i >= 1 + k, k = num_oov_buckets) is replaced with
  probability `rate` by an OOV index, so the tower learns to embed an entity
  from its other features alone:

    i' = 1 + (i mod k)   with probability rate, else i      (padding 0 stays 0)

  `forced` names a bool batch column per id feature whose true rows are always
  replaced: the query's first swipes (`inputs.NEW_USER_COLUMN`), so that the OOV
  row learns from users when they were new, which is what an unseen user is.

  The draw is stateless, seeded by (seed, step): a resumed run replays the same
  masks. At inference (`training=False`) the layer is the identity.

  Args:
    rate: replacement probability p in [0, 1).
    num_oov_buckets: core input name -> k of each id feature it applies to.
    seed: the run's seed.
    forced: core input name -> batch column ([B] bool) of rows always replaced.
  """

  def __init__(self, rate: float, num_oov_buckets: Mapping[str, int], seed: int = 0,
               forced: Optional[Mapping[str, str]] = None, **kwargs):
    # float32 and no autocast: the batch dict also carries weights and keys that a
    # mixed-precision policy must not cast.
    kwargs.update(trainable=False, dtype="float32", autocast=False)
    super().__init__(**kwargs)
    if not 0.0 <= rate < 1.0:
      raise ValueError(f"id dropout rate must be in [0, 1), got {rate}")
    self.rate = float(rate)
    # Kept as JSON so that Keras attribute tracking does not wrap the dict.
    self._buckets_json = json.dumps({str(k): int(v) for k, v in num_oov_buckets.items()},
                                    sort_keys=True)
    self.seed = int(seed)
    self._forced_json = json.dumps(dict(forced or {}), sort_keys=True)

  @property
  def num_oov_buckets(self) -> Dict[str, int]:
    return json.loads(self._buckets_json)

  @property
  def forced(self) -> Dict[str, str]:
    return json.loads(self._forced_json)

  def call(self, features: Mapping[str, tf.Tensor], step: tf.Tensor,
           training: bool = False) -> Dict[str, tf.Tensor]:
    """features: core inputs of a batch (more keys allowed); step: int64 scalar."""
    out = dict(features)
    forced = self.forced
    if not training or (self.rate == 0.0 and not forced):
      return out
    for i, (key, k) in enumerate(sorted(self.num_oov_buckets.items())):
      index = features[key]
      seed = tf.stack([tf.cast(self.seed * 1009 + i, tf.int64), tf.cast(step, tf.int64)])
      drop = tf.random.stateless_uniform(tf.shape(index), seed) < self.rate
      if key in forced:
        drop |= tf.reshape(tf.cast(features[forced[key]], tf.bool), tf.shape(index))
      drop &= index >= 1 + k
      out[key] = tf.where(drop, 1 + index % k, index)
    return out

  def get_config(self):
    config = super().get_config()
    for key in ("trainable", "dtype", "autocast"):
      config.pop(key, None)
    return {**config, "rate": self.rate, "num_oov_buckets": self.num_oov_buckets,
            "seed": self.seed, "forced": self.forced}


def id_dropout_buckets(specs: Sequence[Mapping[str, Any]]) -> Dict[str, int]:
  """Core input name -> num_oov_buckets of the id features of one side's specs."""
  return {spec["key"]: int(spec["num_oov_buckets"]) for spec in specs
          if spec["type"] == "id" and int(spec["num_oov_buckets"]) >= 1}


class L2Normalize(tf.keras.layers.Layer):
  """x / ||x||_2 per row, as x * rsqrt(max(sum x^2, eps)), computed in float32."""

  def __init__(self, epsilon: float = 1e-12, **kwargs):
    kwargs["dtype"] = "float32"  # also when from_config passes the dtype back
    super().__init__(**kwargs)
    self.epsilon = epsilon

  def call(self, x):
    x = tf.cast(x, tf.float32)
    squares = tf.reduce_sum(x * x, axis=1, keepdims=True)
    return x * tf.math.rsqrt(tf.maximum(squares, self.epsilon))

  def get_config(self):
    return {**super().get_config(), "epsilon": self.epsilon}


class AppendOne(tf.keras.layers.Layer):
  """[B, d] -> [B, d + 1]: x with a column of ones (the query's weight on the candidate bias).

  The ones are x[:, :1] * 0 + 1 (slice, mul, add: ops coremltools converts).
  """

  def __init__(self, **kwargs):
    kwargs["dtype"] = "float32"  # also when from_config passes the dtype back
    super().__init__(**kwargs)

  def call(self, x):
    x = tf.cast(x, tf.float32)
    return tf.concat([x, x[:, :1] * 0.0 + 1.0], axis=1)


# build_core's `score_bias`: no extra column, the candidate's learned bias, the query's 1.
SCORE_BIASES = (None, "candidate", "query")


def build_core(specs: Sequence[Mapping[str, Any]], layer_sizes: Sequence[int],
               embedding_dim: int, name: str, l2: float = 0.0, embedding_l2: float = 0.0,
               default_embedding_dim: int = DEFAULT_EMBEDDING_DIM,
               shared_embeddings: Optional[Mapping[str, tf.keras.layers.Layer]] = None,
               score_bias: Optional[str] = None) -> tf.keras.Model:
  """The numeric core of a tower as a functional Keras model (dict in, [B, d] out).

  `shared_embeddings`: feature key -> an Embedding layer of another core to use
  instead of a table of its own (history lists sharing the candidate id table).
  `score_bias` ("candidate" / "query", see the module docstring): one more output
  column, [B, d + 1].
  """
  if score_bias not in SCORE_BIASES:
    raise ValueError(f"score_bias must be one of {SCORE_BIASES}, got {score_bias!r}")
  shared_embeddings = shared_embeddings or {}
  inputs = {n: tf.keras.Input(shape=s.shape[1:], dtype=s.dtype, name=n)
            for n, s in prep.core_input_specs(specs).items()}
  regularizer = tf.keras.regularizers.l2(l2) if l2 else None
  table_regularizer = tf.keras.regularizers.l2(embedding_l2) if embedding_l2 else None
  parts, unread_parts = [], []
  for spec in specs:
    key, ftype = spec["key"], spec["type"]
    if not spec.get("embed_in_core", True):
      # A list only the like residual's map reads (`with_like_residual`). A frozen zero
      # column keeps the input in the graph, so that the SavedModel, Core ML and
      # features.json take it also when the residual does not read it (TF prunes an unread
      # input, and coremltools then refuses the signature's name); it adds nothing.
      # Added after the projection, not concatenated before it: the hidden layers keep
      # their shapes and seeded initial values, so the towers train as without the list.
      unread = tf.keras.layers.Embedding(prep.num_rows(spec), 1, embeddings_initializer="zeros",
                                         trainable=False, name=f"{key}_unread")
      unread_parts.append(MaskedPooling("sum", name=f"{key}_unread_pooling")(
          unread(inputs[key]), inputs[key]))
      continue
    dim = int(spec.get("embedding_dim") or default_embedding_dim)
    if ftype in prep.VOCAB_TYPES:
      table = shared_embeddings.get(key) or tf.keras.layers.Embedding(
          prep.num_rows(spec), dim, name=f"{key}_embedding",
          embeddings_regularizer=table_regularizer)
      indices = inputs[key]
      if ftype == "history" and spec.get("dropout"):
        indices = HistoryDropout(spec["dropout"], name=f"{key}_dropout")(indices)
      embedded = table(indices)
      if ftype in prep.LIST_TYPES:
        embedded = MaskedPooling(spec.get("pooling", "mean"), spec.get("recency_decay", 1.0),
                                 name=f"{key}_pooling")(embedded, indices)
      parts.append(embedded)
      if ftype == "geo":
        parts.append(inputs[key + prep.XYZ_SUFFIX])
    elif ftype == "numeric":
      parts.append(tf.keras.layers.Reshape((1,))(inputs[key]))
      parts.append(tf.keras.layers.Reshape((1,))(inputs[key + prep.MISSING_SUFFIX]))
      if spec.get("bucket_boundaries"):
        buckets = tf.keras.layers.Embedding(len(spec["bucket_boundaries"]) + 2, dim,
                                            name=f"{key}_bucket_embedding")
        parts.append(buckets(inputs[key + prep.BUCKET_SUFFIX]))
  hidden = tf.keras.layers.Concatenate(name="features")(parts)
  for i, units in enumerate(layer_sizes):
    hidden = tf.keras.layers.Dense(units, activation="relu", name=f"hidden_{i}",
                                   kernel_regularizer=regularizer)(hidden)
  projected = tf.keras.layers.Dense(embedding_dim, name="projection")(hidden)
  if unread_parts:  # [B, 1] zeros, broadcast
    projected = tf.keras.layers.Add(name="unread_lists")([projected, *unread_parts])
  unit = L2Normalize(name="embedding")(projected)
  if score_bias == "query":
    return tf.keras.Model(inputs, AppendOne(name="embedding_with_one")(unit), name=name)
  if score_bias == "candidate":
    # Zero start: training begins as the plain cosine model. No intercept: a bias shared
    # by every candidate changes no ranking and duplicates the pairwise loss's own.
    bias = tf.keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros", dtype="float32",
                                 name="candidate_bias")(hidden)
    return tf.keras.Model(inputs, tf.keras.layers.Concatenate(
        dtype="float32", name="embedding_with_bias")([unit, bias]), name=name)
  return tf.keras.Model(inputs, unit, name=name)


def with_like_residual(core: tf.keras.Model, id_key: str, table: np.ndarray,
                       scale: float = 1.0,
                       feature_tables: Optional[Mapping[str, np.ndarray]] = None
                       ) -> tf.keras.Model:
  """core -> [scale * core(x), table[x[id_key]] + sum_f pool(T_f[x[f]])]: a fitted
  `like_residual` appended.

  `table` [rows of the id feature's embedding table, m] holds the side's extra columns
  ([1, b_u, e_u] for queries, [b_v, 1, e_v] for candidates), so that the score stays an
  inner product of the two outputs, [B, d + m]. `feature_tables`: core input key of a
  categorical or multi-categorical feature or a history list -> T_f [its rows, m], the
  maps' columns ([0, 0, V_f^T], a history list's [0, 0, Y_f^T]), "sqrtn"-pooled over a
  list (`MaskedPooling`): the same g_u (h) as `like_residual.multi_hot`, so that users
  unseen in training get V g_u (+ Y h). The tables are frozen Embeddings (gathers); the
  scale a multiply: ops coremltools converts.
  """
  # Built on the core's own graph (its input and output tensors), not by calling the
  # core: a flat functional model, which Keras serialises like the core itself.
  inputs, out = core.input, core.output
  if scale != 1.0:
    out = tf.keras.layers.Rescaling(scale, dtype="float32", name="like_residual_scale")(out)

  def gathered(name, weights, indices):
    layer = tf.keras.layers.Embedding(weights.shape[0], weights.shape[1], trainable=False,
                                      dtype="float32", name=name)
    rows = layer(indices)
    layer.set_weights([weights])
    return rows

  columns = [gathered("like_residual", table, inputs[id_key])]
  for key, weights in sorted((feature_tables or {}).items()):
    mapped = gathered(f"like_residual_{key}", weights, inputs[key])
    if mapped.shape.rank == 3:  # a list feature: [B, L, m]
      mapped = MaskedPooling("sqrtn", dtype="float32",
                             name=f"like_residual_{key}_pooling")(mapped, inputs[key])
    columns.append(mapped)
  if len(columns) > 1:
    columns = [tf.keras.layers.Add(dtype="float32", name="like_residual_sum")(columns)]
  return tf.keras.Model(inputs, tf.keras.layers.Concatenate(dtype="float32", name="with_residual")(
      [out, *columns]), name=core.name)


class Tower(tf.keras.Model):
  """Raw features -> embedding (L2-normalised, + a bias column): `core(preprocessing(raw))`."""

  def __init__(self, preprocessing: prep.FeaturePreprocessing, core: tf.keras.Model, **kwargs):
    super().__init__(**kwargs)
    self.preprocessing = preprocessing
    self.core = core

  def call(self, raw: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    return self.core(self.preprocessing(raw), training=training)


def build_tower(specs: Sequence[Mapping[str, Any]], layer_sizes: Sequence[int],
                embedding_dim: int, side: str, **core_kwargs) -> Tower:
  return Tower(prep.FeaturePreprocessing(specs, name=f"{side}_preprocessing"),
               build_core(specs, layer_sizes, embedding_dim, name=f"{side}_core", **core_kwargs),
               name=f"{side}_tower")


def core_inputs(core: tf.keras.Model, features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """The subset of `features` the core takes (a batch may carry more keys)."""
  return {name: features[name] for name in core.input_names}
