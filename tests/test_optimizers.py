"""Lazy row-wise optimizers: the touched rows follow the stock rule, the others do not move."""

import numpy as np
import pytest
import tensorflow as tf

from tfrs_two_tower.data import reader
from tfrs_two_tower.model import inputs
from tfrs_two_tower.model import optimizers
from tfrs_two_tower.model import train_options
from tfrs_two_tower.model import training

ROWS, DIM = 6, 3


def _train(optimizer, batches, dense_gradient=False):
  """Applies sum(E[ids] * target) gradients for each (ids, target) batch; returns E."""
  table = tf.Variable(np.arange(ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM) / 10)
  optimizer.build([table])
  for ids, target in batches:
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.gather(table, ids) * target)
    gradient = tape.gradient(loss, table)
    assert isinstance(gradient, tf.IndexedSlices)
    if dense_gradient:
      gradient = tf.convert_to_tensor(gradient)
    optimizer.apply_gradients([(gradient, table)])
  return table.numpy(), optimizer


def _batches(ids_per_step, seed=0):
  rng = np.random.default_rng(seed)
  return [(tf.constant(ids, tf.int32),
           tf.constant(rng.normal(size=(len(ids), DIM)), tf.float32)) for ids in ids_per_step]


@pytest.mark.parametrize("lazy,dense", [
    (lambda: optimizers.LazyAdam(0.1), lambda: tf.keras.optimizers.Adam(0.1)),
    (lambda: optimizers.LazyAdam(0.1, amsgrad=True),
     lambda: tf.keras.optimizers.Adam(0.1, amsgrad=True)),
    (lambda: optimizers.LazySGD(0.1, momentum=0.9),
     lambda: tf.keras.optimizers.SGD(0.1, momentum=0.9)),
    (lambda: optimizers.LazySGD(0.1, momentum=0.9, nesterov=True),
     lambda: tf.keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)),
])
def test_equals_the_stock_optimizer_when_every_row_is_touched(lazy, dense):
  # Every row in every batch, with repeats: the lazy rule must be the dense rule,
  # duplicates summed (row 2 appears twice, row 0 three times).
  batches = _batches([[0, 1, 2, 3, 4, 5, 2, 0, 0]] * 2 + [[5, 4, 3, 2, 1, 0]])
  lazy_table, _ = _train(lazy(), batches)
  dense_table, _ = _train(dense(), batches, dense_gradient=True)
  np.testing.assert_allclose(lazy_table, dense_table, atol=1e-5)  # float32 op order


@pytest.mark.parametrize("make,stock", [
    (lambda: optimizers.LazyAdam(0.1), lambda: tf.keras.optimizers.Adam(0.1)),
    (lambda: optimizers.LazySGD(0.1, momentum=0.9),
     lambda: tf.keras.optimizers.SGD(0.1, momentum=0.9))])
def test_untouched_rows_and_their_slots_stay(make, stock):
  # Step 1 touches rows 0-3, step 2 only rows 0 and 1: rows 2, 3 (momentum
  # from step 1) must not move in step 2 (the stock optimizers move them), and
  # rows 4, 5 never.
  batches = _batches([[0, 1, 2, 3], [0, 1, 1]])
  after_one, _ = _train(make(), batches[:1])
  after_two, optimizer = _train(make(), batches)
  np.testing.assert_array_equal(after_two[2:4], after_one[2:4])
  initial = np.arange(ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM) / 10
  np.testing.assert_array_equal(after_two[4:], initial[4:])
  assert not np.allclose(after_two[:2], after_one[:2])
  stock_table, _ = _train(stock(), batches)
  assert not np.allclose(stock_table[2:4], after_one[2:4])  # what the lazy rule avoids
  for slot in optimizer.variables[1:]:
    assert not slot.numpy()[4:].any()


def test_first_touch_matches_adam_bias_correction():
  # One step of one row: Adam's first step is lr * g / (|g| + eps') = lr * sign(g).
  optimizer = optimizers.LazyAdam(0.01)
  batches = _batches([[3]])
  table, _ = _train(optimizer, batches)
  initial = np.arange(ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM) / 10
  np.testing.assert_allclose(table[3] - initial[3], -0.01 * np.sign(batches[0][1].numpy()[0]),
                             rtol=1e-3)


def test_serialisable_and_checkpoint_compatible_with_adam(tmp_path):
  optimizer = optimizers.LazyAdam(0.02, beta_2=0.99)
  config = tf.keras.optimizers.serialize(optimizer)
  again = tf.keras.optimizers.deserialize(config)
  assert isinstance(again, optimizers.LazyAdam) and again.get_config() == optimizer.get_config()
  # A stock-Adam checkpoint restores into LazyAdam (same slots).
  table = tf.Variable(tf.zeros([ROWS, DIM]))
  adam = tf.keras.optimizers.Adam(0.02)
  adam.build([table])
  adam.apply_gradients([(tf.ones([ROWS, DIM]), table)])
  path = tf.train.Checkpoint(table=table, optimizer=adam).save(str(tmp_path / "ckpt"))
  table2 = tf.Variable(tf.zeros([ROWS, DIM]))
  lazy = optimizers.LazyAdam(0.02)
  lazy.build([table2])
  tf.train.Checkpoint(table=table2, optimizer=lazy).restore(path).assert_consumed()
  assert int(lazy.iterations) == 1
  np.testing.assert_allclose(lazy.variables[1].numpy(), adam.variables[1].numpy())


@pytest.mark.parametrize("policy,l2", [("float32", 0.0), ("mixed_float16", 0.0),
                                       ("float32", 1e-3)])
def test_tower_embedding_tables_get_row_gradients(tiny_dataset_dir, policy, l2):
  # The premise of the lazy update: every embedding table of both towers
  # receives an IndexedSlices gradient (also under mixed precision, and with the
  # kernels' L2 penalty), the dense layers a dense one.
  dataset = reader.open_dataset(tiny_dataset_dir)
  options = train_options.TrainOptions(layer_sizes=[16], embedding_dim=8, l2=l2)
  specs = training.feature_specs(dataset)
  _, index = training.training_inputs(dataset, specs, options)
  batch = next(iter(inputs.training_dataset(index, 64, seed=0, epoch=0, num_batches=1)))
  previous = tf.keras.mixed_precision.global_policy()
  tf.keras.mixed_precision.set_global_policy(policy)
  try:
    model = training.build_model(options, specs)
    with tf.GradientTape() as tape:
      loss = model.loss_parts(batch, training=True)["loss"]
    gradients = tape.gradient(loss, model.trainable_variables)
  finally:
    tf.keras.mixed_precision.set_global_policy(previous)
  kinds = {v.name: isinstance(g, tf.IndexedSlices)
           for v, g in zip(model.trainable_variables, gradients)}
  tables = [name for name in kinds if "embedding" in name]
  assert any("id_embedding" in name for name in tables)
  assert all(kinds[name] for name in tables), kinds
  assert not any(kinds[name] for name in kinds if "kernel" in name)
