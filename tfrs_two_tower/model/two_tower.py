"""The two-tower retrieval model: a `tfrs.Model` over the two tower cores.

A training batch is a flat dict of the core inputs of both sides (see
`preprocessing.core_input_specs`; keys are `query_*` / `candidate_*`) plus

  label        [B] int   1 like/superlike, 0 pass
  weight       [B] float sample weight of the action (from the config)
  candidate_key [B] int64  Fingerprint64 of the candidate id mod 2^63-1: the id
               for accidental-hit removal and frequency estimation
  candidate_sampling_probability [B] float (only with sampling "static")

Loss (all sums are global over replicas, so a distributed step equals the
single-machine step on the global batch):

  softmax = sum_i w_i y_i CE_i / sum_i w_i y_i     sampled softmax of likes over the
            in-batch candidates: logits_ij = q_i.c_j / temperature - log p_j
            (logQ correction, p from the sampling mode), accidental hits
            (c_j == c_i, j != i) removed; passes contribute their candidates as
            in-batch negatives (columns) but no rows.
  pairwise = sum_i w_i BCE(y_i, a q_i.c_i + b) / sum_i w_i
            like-vs-pass logistic loss on the same dot product (a, b learned):
            passes are explicit negatives for their own query.
  loss = softmax + pass_loss_weight * pairwise

In training, `id_dropout` (a `towers.IdDropout`) first replaces a share of the
batch's query and candidate id indices by their OOV index, so the rows that
serve unseen ids are trained.
"""

import contextlib
from typing import Dict, Optional

import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrs_two_tower.model import towers

SAMPLING_MODES = ("none", "static", "streaming")


def global_sum(value: tf.Tensor) -> tf.Tensor:
  """Sum over the replicas of a distribution strategy (identity without one)."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return value
  return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


@contextlib.contextmanager
def float32_policy():
  """Layers created inside run in float32, also under mixed precision.

  The loss (q.c / temperature, softmax, logQ) is fragile in float16, and
  `tfrs.tasks.Retrieval` takes no dtype: it follows the global policy.
  """
  policy = tf.keras.mixed_precision.global_policy()
  tf.keras.mixed_precision.set_global_policy("float32")
  try:
    yield
  finally:
    tf.keras.mixed_precision.set_global_policy(policy)


class TwoTowerModel(tfrs.Model):
  """Query and candidate cores trained with a bias-corrected retrieval task.

  Args:
    query_core, candidate_core: `towers.build_core` models.
    temperature: softmax temperature tau (logits are q.c / tau).
    sampling: "none", "static" (p from the batch) or "streaming" (p from
      `frequency_estimator`, updated every training step).
    frequency_estimator: a layer mapping [B] int64 candidate keys to [B]
      probabilities (required for "streaming").
    pass_loss_weight: weight of the like-vs-pass logistic loss (0 disables it).
    num_hard_negatives: keep only the hardest negatives per row in the softmax.
    id_dropout: a `towers.IdDropout` applied to training batches (None: off).
  """

  def __init__(self, query_core: tf.keras.Model, candidate_core: tf.keras.Model,
               temperature: float = 0.05, sampling: str = "none",
               frequency_estimator: Optional[tf.keras.layers.Layer] = None,
               pass_loss_weight: float = 1.0, num_hard_negatives: Optional[int] = None,
               id_dropout: Optional[towers.IdDropout] = None, **kwargs):
    super().__init__(**kwargs)
    if sampling not in SAMPLING_MODES:
      raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    if sampling == "streaming" and frequency_estimator is None:
      raise ValueError("sampling 'streaming' needs a frequency_estimator")
    self.query_core = query_core
    self.candidate_core = candidate_core
    self.sampling = sampling
    self.frequency_estimator = frequency_estimator
    self.pass_loss_weight = float(pass_loss_weight)
    self.id_dropout = id_dropout
    with float32_policy():
      self.task = tfrs.tasks.Retrieval(
          loss=tf.keras.losses.CategoricalCrossentropy(
              from_logits=True, reduction=tf.keras.losses.Reduction.SUM),
          temperature=temperature, remove_accidental_hits=True,
          num_hard_negatives=num_hard_negatives)
    # Affine map of the cosine q.c to a like-vs-pass logit.
    self.pair_scale = tf.Variable(5.0, name="pair_scale", dtype=tf.float32)
    self.pair_bias = tf.Variable(0.0, name="pair_bias", dtype=tf.float32)

  def embed(self, batch: Dict[str, tf.Tensor], training: bool = False):
    q = self.query_core(towers.core_inputs(self.query_core, batch), training=training)
    c = self.candidate_core(towers.core_inputs(self.candidate_core, batch), training=training)
    return tf.cast(q, tf.float32), tf.cast(c, tf.float32)

  def sampling_probability(self, batch: Dict[str, tf.Tensor],
                           training: bool) -> Optional[tf.Tensor]:
    if self.sampling == "static":
      return batch["candidate_sampling_probability"]
    if self.sampling == "streaming":
      return self.frequency_estimator(batch["candidate_key"], training=training)
    return None

  def pair_logits(self, q: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
    """[B] like-vs-pass logits of aligned query/candidate embeddings."""
    return self.pair_scale * tf.reduce_sum(q * c, axis=1) + self.pair_bias

  def loss_parts(self, batch: Dict[str, tf.Tensor], training: bool = False
                 ) -> Dict[str, tf.Tensor]:
    if training and self.id_dropout is not None:
      # The optimizer's step seeds the draw (a resumed run replays it); a model stepped
      # by hand, without compile(), draws as at step 0.
      step = self.optimizer.iterations if self.optimizer is not None else 0
      batch = self.id_dropout(batch, step, training=True)
    q, c = self.embed(batch, training=training)
    label = tf.cast(batch["label"], tf.float32)
    weight = tf.cast(batch["weight"], tf.float32)
    positive_weight = weight * label
    with float32_policy():  # Retrieval builds its helper layers inside call()
      softmax = self.task(q, c, sample_weight=positive_weight,
                          candidate_sampling_probability=self.sampling_probability(batch,
                                                                                   training),
                          candidate_ids=batch["candidate_key"], compute_metrics=False,
                          compute_batch_metrics=False)
    softmax = softmax / tf.maximum(global_sum(tf.reduce_sum(positive_weight)), 1e-6)
    pairwise = tf.nn.sigmoid_cross_entropy_with_logits(labels=label,
                                                       logits=self.pair_logits(q, c))
    pairwise = tf.reduce_sum(weight * pairwise) / tf.maximum(global_sum(tf.reduce_sum(weight)),
                                                             1e-6)
    loss = softmax + self.pass_loss_weight * pairwise
    if self.losses:
      replicas = tf.distribute.get_strategy().num_replicas_in_sync
      loss += tf.add_n(self.losses) / replicas
    return {"loss": loss, "softmax_loss": softmax, "pairwise_loss": pairwise}

  def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
    return self.loss_parts(inputs, training=training)["loss"]

  def train_step(self, batch):
    """One optimizer step; returns this replica's loss parts (already global means)."""
    with tf.GradientTape() as tape:
      parts = self.loss_parts(batch, training=True)
      loss = parts["loss"]
      scaled = (self.optimizer.get_scaled_loss(loss)
                if hasattr(self.optimizer, "get_scaled_loss") else loss)
    variables = self.trainable_variables
    gradients = tape.gradient(scaled, variables)
    if hasattr(self.optimizer, "get_unscaled_gradients"):
      gradients = self.optimizer.get_unscaled_gradients(gradients)
    self.optimizer.apply_gradients(zip(gradients, variables))
    return parts
