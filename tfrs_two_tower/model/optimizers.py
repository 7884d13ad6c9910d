"""Optimizers whose embedding rows move only when a batch touches them (lazy updates).

The gradient of an embedding table E [N, d] looked up with `tf.gather` (what
`tf.keras.layers.Embedding` does) is a `tf.IndexedSlices`: values g [n, d] at
row indices i [n], n = the ids in the batch, N = the rows of the table. The
stock tf-keras optimizers turn this into O(N) work per step: `Adam` decays the
whole of both moment slots (`m.assign_add(-m * (1 - beta_1))`) and then
rewrites the whole table (`variable.assign_sub(m * alpha / ...)`), `SGD` with
momentum decays its whole momentum slot. At 1M rows x 32 that is ~0.6 s per
step on 2 CPU cores, whatever the batch touched. (`Adagrad` is already
row-wise in tf-keras: it scatter-adds into the touched rows only.)

The optimizers here apply, for an `IndexedSlices` gradient, the dense rule to
the touched rows only, and leave the other rows and their slots as they are
(the "lazy" updates of TF Addons' `LazyAdam`). Dense gradients (the Dense
layers, and every table under `--embedding_l2`, whose penalty is dense) get exactly
the parent optimizer's update, so `--optimizer` keeps its meaning for them.

Duplicate ids in a batch are first summed, so a row that appears twice gets
one update with the sum of its gradients (as a dense gradient would):

  u, j = unique(i);  G_r = sum_{k: j_k = r} g_k                           [U, d]

Checkpoints hold the same slot variables as the parent optimizer (`m`, `v`
for Adam; `m` for SGD), so a checkpoint written by `tf.keras.optimizers.Adam`
restores into `LazyAdam` and back.
"""

from typing import Tuple

import tensorflow as tf

PACKAGE = "tfrs_two_tower"


def summed_rows(gradient: tf.IndexedSlices) -> Tuple[tf.Tensor, tf.Tensor]:
  """(unique row indices u [U], summed gradient rows G [U, d]) of an IndexedSlices."""
  unique, positions = tf.unique(gradient.indices)
  summed = tf.math.unsorted_segment_sum(gradient.values, positions, tf.shape(unique)[0])
  return unique, summed


@tf.keras.utils.register_keras_serializable(package=PACKAGE)
class LazyAdam(tf.keras.optimizers.Adam):
  """Adam; for sparse (IndexedSlices) gradients only the touched rows and their moments move.

  With G the summed gradient rows at the unique touched rows u, t the global
  step (`iterations + 1`), the update of each touched row r is Adam's

    m_r <- beta_1 m_r + (1 - beta_1) G_r
    v_r <- beta_2 v_r + (1 - beta_2) G_r^2
    (amsgrad: v_r <- max(vhat_r, v_r), stored in vhat_r)
    w_r <- w_r - alpha_t m_r / (sqrt(v_r) + eps_hat),
    alpha_t = lr sqrt(1 - beta_2^t) / (1 - beta_1^t)

  and rows not in u keep w, m and v unchanged. The bias correction uses the
  global step t, as TF Addons' LazyAdam and TF1's `LazyAdamOptimizer` do, so
  the step a row takes when it is touched equals dense Adam's step at the same
  t and state. Where they differ is after it: dense Adam also decays m and v of
  every untouched row by beta_1, beta_2 each step and keeps moving it by
  alpha_t m_r / (sqrt(v_r) + eps) — a row touched once at step t0 (m = (1 -
  beta_1) G, v = (1 - beta_2) G^2, a step of ~3.2 lr sign(G)) drifts on by
  ~3.2 lr beta_1^k (sqrt(beta_2)^-k) sign(G) at step t0 + k, about 10x its
  first step in all; lazily it moves once. Momentum on a row that got no
  gradient is not information, so this is the intended difference (the
  quality comparison is in docs/training.md). Cost per step: O(U d)
  instead of O(N d).
  """

  def update_step(self, gradient, variable):
    if not isinstance(gradient, tf.IndexedSlices):
      return super().update_step(gradient, variable)
    dtype = variable.dtype
    lr = tf.cast(self.learning_rate, dtype)
    step = tf.cast(self.iterations + 1, dtype)
    beta_1 = tf.cast(self.beta_1, dtype)
    beta_2 = tf.cast(self.beta_2, dtype)
    beta_1_power, beta_2_power = tf.pow(beta_1, step), tf.pow(beta_2, step)
    alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
    epsilon = tf.cast(self.epsilon, dtype)
    if self.adaptive_epsilon:
      epsilon = epsilon * tf.sqrt(1 - beta_2_power)

    index = self._index_dict[self._var_key(variable)]
    m, v = self._momentums[index], self._velocities[index]
    rows, grad = summed_rows(gradient)
    grad = tf.cast(grad, dtype)
    m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * grad
    v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(grad)
    m.scatter_update(tf.IndexedSlices(m_rows, rows))
    v.scatter_update(tf.IndexedSlices(v_rows, rows))
    if self.amsgrad:
      v_hat = self._velocity_hats[index]
      v_rows = tf.maximum(tf.gather(v_hat, rows), v_rows)
      v_hat.scatter_update(tf.IndexedSlices(v_rows, rows))
    variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon), rows))


@tf.keras.utils.register_keras_serializable(package=PACKAGE)
class LazySGD(tf.keras.optimizers.SGD):
  """SGD (with momentum); for sparse gradients only the touched rows and their momentum move.

  With G the summed gradient rows at the unique touched rows u, for each r in u
  (Keras' SGD rule, restricted to the touched rows):

    momentum = 0:  w_r <- w_r - lr G_r
    otherwise:     m_r <- mu m_r - lr G_r
                   w_r <- w_r + m_r                      (nesterov: w_r + mu m_r - lr G_r)

  Rows not in u keep w and m: dense SGD would keep moving them by their
  decaying momentum mu^k m_r. Cost per step: O(U d) instead of O(N d).
  """

  def update_step(self, gradient, variable):
    if not isinstance(gradient, tf.IndexedSlices) or not self.momentum:
      # Plain SGD on IndexedSlices is already a row-wise scatter in tf-keras.
      return super().update_step(gradient, variable)
    dtype = variable.dtype
    lr = tf.cast(self.learning_rate, dtype)
    mu = tf.cast(self.momentum, dtype)
    m = self.momentums[self._index_dict[self._var_key(variable)]]
    rows, grad = summed_rows(gradient)
    grad = tf.cast(grad, dtype)
    m_rows = mu * tf.gather(m, rows) - lr * grad
    m.scatter_update(tf.IndexedSlices(m_rows, rows))
    step = mu * m_rows - lr * grad if self.nesterov else m_rows
    variable.scatter_add(tf.IndexedSlices(step, rows))
