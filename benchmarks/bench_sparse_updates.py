#!/usr/bin/env python3
"""One optimizer step on an embedding table: dense tf-keras optimizers vs lazy row updates.

For each table size N (rows x `--dim`), the same batch of `--batch_ids` ids
(drawn once, with repeats, like the ids of a training batch) is looked up,
a loss sum(E[i] * c) is differentiated (an IndexedSlices gradient, as in the
towers) and the optimizer applies it. Reported: median ms per step (gradient +
apply, in one tf.function, after warm-up) of each pair side by side, and the
ratio baseline / ours. Target: the lazy optimizers' step time does not grow
with N (ratio 1M / 10k rows close to 1).

  python benchmarks/bench_sparse_updates.py --rows=10000,100000,1000000
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tfrs_two_tower.model import optimizers  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("rows", ["10000", "100000", "1000000"], "Table sizes (rows).")
flags.DEFINE_integer("dim", 32, "Embedding size (columns).")
flags.DEFINE_integer("batch_ids", 1024, "Ids per step.")
flags.DEFINE_integer("steps", 20, "Timed steps (after 3 warm-up steps); the median is kept.")

PAIRS = (
    ("adam", lambda: tf.keras.optimizers.Adam(0.003), lambda: optimizers.LazyAdam(0.003)),
    ("sgd+momentum", lambda: tf.keras.optimizers.SGD(0.003, momentum=0.9),
     lambda: optimizers.LazySGD(0.003, momentum=0.9)),
    ("adagrad", lambda: tf.keras.optimizers.Adagrad(0.003), None),
)


def step_ms(optimizer, rows: int, ids: np.ndarray) -> float:
  """Median wall time (ms) of one gradient + apply step on a [rows, dim] table."""
  table = tf.Variable(tf.random.normal([rows, FLAGS.dim], stddev=0.05, seed=1))
  optimizer.build([table])
  ids = tf.constant(ids)
  target = tf.random.normal([len(ids), FLAGS.dim], seed=2)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.gather(table, ids) * target)
    optimizer.apply_gradients([(tape.gradient(loss, table), table)])
    return loss

  for _ in range(3):
    step()
  times = []
  for _ in range(FLAGS.steps):
    started = time.perf_counter()
    float(step())
    times.append(time.perf_counter() - started)
  return 1000 * float(np.median(times))


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  sizes = [int(r) for r in FLAGS.rows]
  print(f"one step, {FLAGS.batch_ids} ids (with repeats) from N x {FLAGS.dim} tables, "
        f"median of {FLAGS.steps}, ms")
  print(f"{'optimizer':14s} {'N':>9s} {'dense':>9s} {'lazy':>9s} {'dense/lazy':>10s}")
  lazy_by_size = {}
  for name, dense, lazy in PAIRS:
    for rows in sizes:
      ids = rng.integers(0, rows, FLAGS.batch_ids).astype(np.int32)
      dense_ms = step_ms(dense(), rows, ids)
      lazy_ms = step_ms(lazy(), rows, ids) if lazy else float("nan")
      lazy_by_size.setdefault(name, []).append(lazy_ms if lazy else dense_ms)
      print(f"{name:14s} {rows:9d} {dense_ms:9.2f} {lazy_ms:9.2f} {dense_ms / lazy_ms:10.1f}")
  for name, times in lazy_by_size.items():
    print(f"{name}: lazy (adagrad: stock) step at {sizes[-1]} rows / at {sizes[0]} rows = "
          f"{times[-1] / times[0]:.2f}")


if __name__ == "__main__":
  app.run(main)
