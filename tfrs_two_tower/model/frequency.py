"""Streaming frequency estimation (Yi et al., RecSys 2019, Algorithms 2 and 3).

The probability that a candidate appears in a training batch is estimated from
the average number of steps between two of its appearances:

  for each array i = 1..m with hash h_i, on step t, for every candidate y in the batch:
    B_i[h_i(y)] <- (1 - alpha) B_i[h_i(y)] + alpha (t - A_i[h_i(y)])
    A_i[h_i(y)] <- t
  p(y) = 1 / max_i B_i[h_i(y)]            (clipped to [min_probability, 1])

During training the update comes first, so a candidate of the batch always has
a gap > 0; a never-updated bucket (gap 0) gives p = 1, i.e. no logQ boost.

Warm start (`initialize_from_counts`): started from B = 0, the moving average
needs ~1/alpha appearances of a candidate before it is unbiased -- thousands of
steps for a rare one, more than a whole short run (docs/training.md). Started
from the gap the train counts predict, B_i[b] = T / (batch_size * n_b) with n_b
the train interactions hashed to bucket b and T all train interactions, the
estimate is right from step 1 and the stream then tracks drift.

A hash collision makes a bucket look more frequent (smaller delta); taking the
max over m independent arrays (Algorithm 3) keeps the least collided estimate.

Hashes are universal: h_i(x) = ((a_i (x mod P) + b_i) mod P) mod H with the
Mersenne prime P = 2^31 - 1, so every product fits in int64 (XLA-friendly).
The state lives in non-trainable variables (saved by checkpoints). Under a
distribution strategy the positions of all replicas are gathered first, so
every replica applies the same update and the copies stay identical.
"""

import numpy as np
import tensorflow as tf

_PRIME = 2**31 - 1


class StreamingFrequencyEstimator(tf.keras.layers.Layer):
  """[B] int64 candidate keys -> [B] float32 sampling probabilities.

  Args:
    num_buckets: H, size of each hash array.
    num_hashes: m, number of arrays (1 = Algorithm 2).
    alpha: learning rate of the moving average of the gap between appearances.
    min_probability: floor of the estimate.
    seed: picks the hash functions.
  Calling with `training=True` updates the state (one step) before estimating.
  """

  def __init__(self, num_buckets: int = 1 << 16, num_hashes: int = 3, alpha: float = 0.01,
               min_probability: float = 1e-6, seed: int = 0, **kwargs):
    kwargs["dtype"] = "float32"  # the state stays float32 under mixed precision
    super().__init__(**kwargs)
    if num_buckets < 1 or num_hashes < 1 or not 0 < alpha <= 1:
      raise ValueError("need num_buckets >= 1, num_hashes >= 1 and 0 < alpha <= 1")
    if num_buckets * num_hashes > 2**24:
      raise ValueError("num_buckets * num_hashes must be <= 2^24 (positions travel as float32 "
                       "between replicas)")
    self.num_buckets = int(num_buckets)
    self.num_hashes = int(num_hashes)
    self.alpha = float(alpha)
    self.min_probability = float(min_probability)
    self.seed = int(seed)
    rng = np.random.RandomState(seed)
    self._a = rng.randint(1, _PRIME, size=num_hashes).astype(np.int64)
    self._b = rng.randint(0, _PRIME, size=num_hashes).astype(np.int64)

  def build(self, input_shape):
    state = dict(trainable=False, initializer="zeros",
                 synchronization=tf.VariableSynchronization.ON_WRITE,
                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    shape = (self.num_hashes * self.num_buckets,)  # array i occupies [i H, (i + 1) H)
    self.last_step = self.add_weight(name="last_step", shape=shape, dtype=tf.float32, **state)
    self.gap = self.add_weight(name="gap", shape=shape, dtype=tf.float32, **state)
    self.step = self.add_weight(name="step", shape=(), dtype=tf.float32, **state)
    super().build(input_shape)

  def initialize_from_counts(self, keys: np.ndarray, counts: np.ndarray,
                             batch_size: int) -> None:
    """Sets the gaps to those the counts predict (see the module docstring).

    Args:
      keys: [N] int64 candidate keys; counts: [N] train interactions of each;
      batch_size: global batch size (expected appearances per step = batch * n / T).
    """
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    if total <= 0:
      return
    index = self._indices(self.buckets(tf.constant(np.asarray(keys, np.int64)))).numpy()
    per_bucket = np.zeros(self.num_hashes * self.num_buckets, np.float64)
    np.add.at(per_bucket, index, np.tile(counts, self.num_hashes))
    with np.errstate(divide="ignore"):
      gap = np.where(per_bucket > 0, total / (batch_size * per_bucket), 0.0)
    self.gap.assign(gap.astype(np.float32))

  def buckets(self, keys: tf.Tensor) -> tf.Tensor:
    """[B] int64 keys -> [m, B] int64 bucket per hash."""
    x = tf.math.floormod(tf.cast(keys, tf.int64), _PRIME)[None, :]
    a = tf.constant(self._a)[:, None]
    b = tf.constant(self._b)[:, None]
    return tf.math.floormod(tf.math.floormod(a * x + b, _PRIME), self.num_buckets)

  def _indices(self, buckets: tf.Tensor) -> tf.Tensor:
    """[m, B] buckets -> [m * B] positions in the flat state."""
    offsets = tf.range(self.num_hashes, dtype=tf.int64)[:, None] * self.num_buckets
    return tf.reshape(buckets + offsets, [-1])

  def update(self, keys: tf.Tensor) -> tf.Operation:
    """One step of Algorithm 2/3 for the (global) batch of keys."""
    index = _gather_from_replicas(self._indices(self.buckets(keys)))
    t = self.step + 1.0
    last = tf.gather(self.last_step, index)
    gap = tf.gather(self.gap, index)
    new_gap = (1.0 - self.alpha) * gap + self.alpha * (t - last)
    # Duplicate indices (repeated ids, collisions) carry identical values.
    return tf.group(
        self.gap.assign(tf.tensor_scatter_nd_update(self.gap, index[:, None], new_gap)),
        self.last_step.assign(tf.tensor_scatter_nd_update(
            self.last_step, index[:, None], tf.fill(tf.shape(new_gap), t))),
        self.step.assign(t))

  def probability(self, keys: tf.Tensor) -> tf.Tensor:
    index = self._indices(self.buckets(keys))
    gap = tf.reshape(tf.gather(self.gap, index), [self.num_hashes, -1])
    gap = tf.reduce_max(gap, axis=0)
    return tf.clip_by_value(1.0 / tf.maximum(gap, 1e-12), self.min_probability, 1.0)

  def call(self, keys: tf.Tensor, training: bool = False) -> tf.Tensor:
    if training:
      with tf.control_dependencies([self.update(keys)]):
        return tf.identity(self.probability(keys))
    return self.probability(keys)

  def get_config(self):
    return {**super().get_config(), "num_buckets": self.num_buckets,
            "num_hashes": self.num_hashes, "alpha": self.alpha,
            "min_probability": self.min_probability, "seed": self.seed}


def _gather_from_replicas(index: tf.Tensor) -> tf.Tensor:
  """[N] int64 state positions of this replica -> those of every replica.

  An all-reduce of a [replicas, N] float32 matrix holding this replica's row
  (positions < 2^24 are exact in float32). `all_gather` would be the natural
  op, but MultiWorkerMirroredStrategy (TF 2.20) fails on it inside a step.
  """
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return index
  replicas = context.num_replicas_in_sync
  rows = tf.one_hot(context.replica_id_in_sync_group, replicas, dtype=tf.float32)[:, None]
  gathered = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                rows * tf.cast(index, tf.float32)[None, :])
  return tf.cast(tf.reshape(gathered, [-1]), tf.int64)
