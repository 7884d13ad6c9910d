"""Streaming frequency estimation (Yi et al. Algorithms 2 and 3) on known streams."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfrs_two_tower.model import frequency

NUM_ITEMS, BATCH = 40, 16


def _stream(probabilities, steps, rng):
  return rng.choice(len(probabilities), size=(steps, BATCH), p=probabilities).astype(np.int64)


def _per_step_probability(probabilities):
  """Probability that an item appears in a batch of BATCH independent draws."""
  return 1.0 - (1.0 - probabilities) ** BATCH


def _run(estimator, stream, jit_compile=False):
  @tf.function(jit_compile=jit_compile)
  def step(keys):
    return estimator(keys, training=True)
  for keys in stream:
    step(tf.constant(keys))


def _relative_error(estimator, probabilities, items, key=lambda item: item):
  estimate = estimator(tf.constant(key(items), tf.int64)).numpy()
  truth = _per_step_probability(probabilities)[items]
  return np.abs(estimate - truth) / truth


def test_converges_and_adapts_to_a_shift():
  rng = np.random.RandomState(0)
  probabilities = 1.0 / np.arange(1, NUM_ITEMS + 1) ** 1.1
  probabilities /= probabilities.sum()
  estimator = frequency.StreamingFrequencyEstimator(num_buckets=1024, num_hashes=2, alpha=0.05)
  _run(estimator, _stream(probabilities, 1500, rng), jit_compile=True)
  items = np.arange(20)  # per-step probability >= ~0.1
  assert _relative_error(estimator, probabilities, items).mean() < 0.15
  assert _relative_error(estimator, probabilities, items).max() < 0.35

  shifted = probabilities[::-1].copy()  # the popular items become rare and vice versa
  stale = _relative_error(estimator, shifted, np.arange(20, 40)).mean()
  _run(estimator, _stream(shifted, 1500, rng))
  adapted = _relative_error(estimator, shifted, np.arange(20, 40))
  assert stale > 0.5  # before the shift, the estimates of the new head are far too low
  assert adapted.mean() < 0.15
  # An empty bucket (never updated) gives p = 1: no logQ boost, never an infinity.
  fresh = frequency.StreamingFrequencyEstimator(num_buckets=16)
  assert fresh(tf.constant([5], tf.int64)).numpy()[0] == 1.0


def test_more_hash_arrays_resist_collisions():
  rng = np.random.RandomState(1)
  probabilities = np.full(NUM_ITEMS, 1.0 / NUM_ITEMS)
  key = lambda item: item * 7919 + 13  # spread the keys over the key space
  stream = key(_stream(probabilities, 1500, rng))
  errors = {}
  for hashes in (1, 4):
    estimator = frequency.StreamingFrequencyEstimator(num_buckets=32, num_hashes=hashes,
                                                      alpha=0.05, seed=3)
    _run(estimator, stream)
    errors[hashes] = _relative_error(estimator, probabilities, np.arange(NUM_ITEMS), key)
  # 40 items in 32 buckets collide; the max over 4 arrays picks a clean estimate.
  assert errors[4].mean() < errors[1].mean()
  assert errors[4].mean() < 0.2


def test_state_is_checkpointed(tmp_path):
  estimator = frequency.StreamingFrequencyEstimator(num_buckets=64, num_hashes=2, alpha=0.1)
  keys = tf.constant([1, 2, 2, 3], tf.int64)
  for _ in range(5):
    estimator(keys, training=True)
  before = estimator(keys).numpy()
  path = tf.train.Checkpoint(estimator=estimator).save(str(tmp_path / "ckpt"))
  restored = frequency.StreamingFrequencyEstimator(num_buckets=64, num_hashes=2, alpha=0.1)
  restored(keys)  # build the variables
  tf.train.Checkpoint(estimator=restored).restore(path).assert_consumed()
  np.testing.assert_array_equal(restored(keys).numpy(), before)
  assert float(restored.step.numpy()) == 5.0


_MIRRORED = r"""
import numpy as np
import tfrs_two_tower
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from tfrs_two_tower.model import frequency
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
  est = frequency.StreamingFrequencyEstimator(num_buckets=128, num_hashes=2, alpha=0.2)
  est.build(None)
single = frequency.StreamingFrequencyEstimator(num_buckets=128, num_hashes=2, alpha=0.2)
rng = np.random.RandomState(0)
@tf.function
def step(keys):
  return strategy.run(lambda k: est(k, training=True), args=(keys,))
for _ in range(30):
  keys = rng.randint(0, 20, size=8).astype(np.int64)
  ds = strategy.experimental_distribute_values_from_function(
      lambda ctx: tf.constant(keys[ctx.replica_id_in_sync_group * 4:][:4]))
  step(ds)
  single(tf.constant(keys), training=True)
copies = [v.numpy() for v in est.gap.values]
np.testing.assert_array_equal(copies[0], copies[1])
np.testing.assert_allclose(copies[0], single.gap.numpy(), rtol=1e-6)
print("OK")
"""


@pytest.mark.slow  # subprocess with two virtual CPU devices
def test_mirrored_replicas_update_identically_to_one_global_batch():
  out = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True,
                       env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
