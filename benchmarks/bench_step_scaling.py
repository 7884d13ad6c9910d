#!/usr/bin/env python3
"""The two-tower training step at 5k .. 1M users: lazy vs dense embedding updates, interleaved.

What a step costs depends on the rows of the id embedding tables (one per user
and tower), not on the number of swipes. This builds the real model
(`training.build_model`, default flags) on a dataset's specs with the id
tables of both towers sized to N rows for each N of `--users`, compiles it with
`training.make_optimizer` (lazy: `--sparse_embedding_updates`, dense: the
stock tf-keras Adam), and times `train_stage`'s step function on the same
batches of the dataset (batch `--batch_size`). The variants are timed in
alternating rounds, so load from other jobs on the box hits them alike; the
median step time over rounds is kept, and also the process CPU seconds per step.
Target: lazy steps/s at the largest N >= 0.75 x at the smallest.

  python benchmarks/bench_step_scaling.py --dataset_dir=/tmp/ds --users=5000,50000,500000,1000000
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import copy  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tfrs_two_tower.data import reader  # noqa: E402
from tfrs_two_tower.model import inputs  # noqa: E402
from tfrs_two_tower.model import train_options  # noqa: E402
from tfrs_two_tower.model import training  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset_dir", "/tmp/ds", "Dataset directory (its specs and batches).")
flags.DEFINE_list("users", ["5000", "50000", "500000", "1000000"], "Rows of each id table.")
flags.DEFINE_integer("batch_size", 1024, "Batch size.")
flags.DEFINE_integer("steps", 10, "Timed steps per variant and round.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds.")
flags.DEFINE_list("variants", ["lazy", "dense"], "lazy and/or dense.")


def _specs_with_users(specs, users: int):
  """The specs with every id table at `users` vocabulary rows (the batches' ids stay valid)."""
  out = copy.deepcopy(specs)
  for side in out.values():
    for spec in side:
      if spec["type"] == "id":
        spec["vocab_size"] = max(users, spec["vocab_size"])
        spec["tokens"] = []  # the core only needs the row count
  return out


def main(argv):
  del argv
  dataset = reader.open_dataset(FLAGS.dataset_dir)
  specs = training.feature_specs(dataset)
  # The default options' inputs (static logQ: the batches carry the sampling probability).
  _, index = training.training_inputs(dataset, specs,
                                      train_options.TrainOptions(batch_size=FLAGS.batch_size))
  batches = list(inputs.training_dataset(index, FLAGS.batch_size, 0, 0,
                                         num_batches=FLAGS.steps + 2))
  steps = {}
  for users in (int(u) for u in FLAGS.users):
    for variant in FLAGS.variants:
      options = train_options.TrainOptions(batch_size=FLAGS.batch_size,
                                         sparse_embedding_updates=variant == "lazy")
      model = training.build_model(options, _specs_with_users(specs, users))
      if model.frequency_estimator is not None:
        model.frequency_estimator.build(None)
      model.compile(optimizer=training.make_optimizer(options))
      model.optimizer.build(model.trainable_variables)
      step = training.distributed_step(tf.distribute.get_strategy(), model, False)  # noqa
      for batch in batches[:2]:  # tracing
        float(step(batch)["loss"])
      steps[(users, variant)] = step
  wall = {key: [] for key in steps}
  cpu = {key: [] for key in steps}
  for _ in range(FLAGS.rounds):
    for key, step in steps.items():
      started, started_cpu = time.perf_counter(), time.process_time()
      for batch in batches[2:]:
        float(step(batch)["loss"])
      wall[key].append((time.perf_counter() - started) / FLAGS.steps)
      cpu[key].append((time.process_time() - started_cpu) / FLAGS.steps)
  print(f"training step, batch {FLAGS.batch_size}, id tables of N rows in both towers; median of "
        f"{FLAGS.rounds} alternating rounds of {FLAGS.steps} steps")
  print(f"{'N users':>9s} " + " ".join(f"{v + ' steps/s':>16s} {v + ' cpu s/step':>16s}"
                                      for v in FLAGS.variants))
  rate = {}
  for users in (int(u) for u in FLAGS.users):
    cells = []
    for variant in FLAGS.variants:
      rate[(users, variant)] = 1 / float(np.median(wall[(users, variant)]))
      cells.append(f"{rate[(users, variant)]:16.2f} {np.median(cpu[(users, variant)]):16.3f}")
    print(f"{users:9d} " + " ".join(cells))
  first, last = int(FLAGS.users[0]), int(FLAGS.users[-1])
  for variant in FLAGS.variants:
    cpu_ratio = np.median(cpu[(first, variant)]) / np.median(cpu[(last, variant)])
    print(f"{variant}: steps/s at {last:,} / at {first:,} users = "
          f"{rate[(last, variant)] / rate[(first, variant)]:.2f} wall-clock, {cpu_ratio:.2f} "
          "per CPU second (target for lazy >= 0.75)")


if __name__ == "__main__":
  app.run(main)
