#!/usr/bin/env python3
"""Static vs streaming logQ on short runs, on two synthetic worlds of different shape.

For each world and each mode -- static (train counts), streaming started from
zero (Yi et al.'s cold start, the old default), streaming warm-started from the
train counts (`--estimator_init=static`, the new default) -- one run with
early stopping off records validation_recall@50 (evaluate.py's definition)
after every `--steps_per_epoch` steps. Prints the figures per training length
and each mode's ratio to static (the named baseline), measured in the same run.

  python benchmarks/bench_logq.py --steps_per_epoch=100 --epochs=5
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tempfile  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tfrs_two_tower import config as config_lib  # noqa: E402
from tfrs_two_tower.data import synthetic  # noqa: E402
from tfrs_two_tower.model import train_options  # noqa: E402
from tfrs_two_tower.stages import train_stage  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps_per_epoch", 100, "Steps between two validation measurements.")
flags.DEFINE_integer("epochs", 5, "Measurements per run (training length = epochs * steps).")
flags.DEFINE_string("work_dir", None, "Where datasets and runs go (default: a temp dir).")

WORLDS = {
    "default": synthetic.WorldParams(),
    # Another shape: fewer users, twice the feed, more active, weaker taste, more history.
    "other": synthetic.WorldParams(num_users=3000, days=90, feed_size=16, mean_activity=0.15,
                                   taste_weight=1.0, initial_fraction=0.5, seed=1),
}
MODES = {"static": dict(sampling_probability="static"),
         "streaming_zero_init": dict(sampling_probability="streaming", estimator_init="zero"),
         "streaming_static_init": dict(sampling_probability="streaming",
                                       estimator_init="static")}
KEY = "validation_recall@50"


def main(argv):
  del argv
  work = FLAGS.work_dir or tempfile.mkdtemp(prefix="bench_logq_")
  config = config_lib.load_config()
  for world_name, params in WORLDS.items():
    dataset = os.path.join(work, world_name, "dataset")
    if not os.path.exists(dataset):
      synthetic.write_world_dataset(synthetic.generate_world(params), config, dataset)
    curves = {}
    for mode, overrides in MODES.items():
      options = train_options.TrainOptions(
          epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch, no_tune=True,
          early_stopping_patience=0, log_every_steps=10_000, **overrides)
      result = train_stage.run(dataset, os.path.join(work, world_name, mode), options,
                               overwrite=True, log=lambda *a: None)
      curves[mode] = [h[KEY] for h in result.manifest["metrics"]["history"]]
    print(f"\n{world_name} world ({params}): {KEY} by training steps; ratio to static")
    print("steps  " + "  ".join(f"{m:>28s}" for m in MODES))
    for e in range(FLAGS.epochs):
      cells = [f"{curves[m][e]:.4f} ({curves[m][e] / curves['static'][e]:.2f}x)"
               for m in MODES]
      print(f"{(e + 1) * FLAGS.steps_per_epoch:5d}  " + "  ".join(f"{c:>28s}" for c in cells))


if __name__ == "__main__":
  app.run(main)
