#!/usr/bin/env python3
"""Quality of lazy (sparse) embedding updates vs dense Adam, on two worlds of different shape.

For each world (the default one, and one with 4x the users and a fifth of the
activity each: many users with few swipes, where lazy and dense updates differ
most) and each seed, the same model is trained twice with the default flags:
`--sparse_embedding_updates` (LazyAdam) and `--nosparse_embedding_updates`
(tf-keras Adam). All runs of a world are evaluated together by the
evaluation stage (evaluate.py: eval split, bootstrap 95 % intervals over
users). Printed per world: recall@50 and AUC of each run, the mean of each
variant and the lazy - dense difference next to the seed-to-seed spread.
Target: |lazy - dense| within the noise (seed spread and bootstrap interval).

  python benchmarks/bench_sparse_quality.py --work_dir=/tmp/sparse_quality
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import dataclasses  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tfrs_two_tower import config as config_lib  # noqa: E402
from tfrs_two_tower.data import synthetic  # noqa: E402
from tfrs_two_tower.model import train_options  # noqa: E402
from tfrs_two_tower.stages import evaluate_stage  # noqa: E402
from tfrs_two_tower.stages import train_stage  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", "/tmp/sparse_quality", "Worlds, runs and reports go here.")
flags.DEFINE_list("seeds", ["0", "1"], "Training seeds.")
flags.DEFINE_integer("epochs", train_options.TrainOptions.epochs, "Training epochs.")
flags.DEFINE_integer("bootstrap", 200, "Bootstrap resamples of the evaluation.")

WORLDS = {
    "default": synthetic.WorldParams(),
    "many_sparse_users": synthetic.WorldParams(num_users=20000, mean_activity=0.03, seed=3),
}
VARIANTS = {"lazy": True, "dense": False}


def _world_dataset(name: str, params: synthetic.WorldParams) -> str:
  path = os.path.join(FLAGS.work_dir, name, "dataset")
  if not os.path.exists(path):
    world = synthetic.generate_world(params)
    synthetic.write_world_dataset(world, config_lib.load_config(), path)
    print(f"{name}: {len(world.profiles)} users, {len(world.swipes)} swipes")
  return path


def main(argv):
  del argv
  for name, params in WORLDS.items():
    dataset = _world_dataset(name, params)
    runs, seconds = {}, {}
    for seed in FLAGS.seeds:
      for variant, lazy in VARIANTS.items():
        run_dir = os.path.join(FLAGS.work_dir, name, f"{variant}_seed{seed}")
        options = train_options.TrainOptions(epochs=FLAGS.epochs, seed=int(seed),
                                           sparse_embedding_updates=lazy)
        started = time.time()
        if not os.path.exists(run_dir):
          train_stage.run(dataset, run_dir, options, log=lambda *a: None)
          seconds[run_dir] = time.time() - started
        runs[run_dir] = (variant, seed)
    report = evaluate_stage.run(dataset, list(runs), os.path.join(FLAGS.work_dir, name, "report"),
                                evaluate_stage.EvaluateOptions(ks=(10, 50, 100),
                                                               bootstrap=FLAGS.bootstrap,
                                                               baselines=(), reciprocal=False,
                                                               tensorboard=False, overwrite=True),
                                log=lambda *a: None)
    print(f"\n== {name}: {dataclasses.asdict(params)}")
    print(f"{'run':22s} {'recall@50':>22s} {'AUC':>22s} {'train s':>8s}")
    values = {v: {"recall@50": [], "auc": []} for v in VARIANTS}
    for run_dir, (variant, seed) in runs.items():
      segment = report["recommenders"][os.path.basename(run_dir)]["segments"]["all"]
      cells = []
      for metric in ("recall@50", "auc"):
        entry = segment[metric]
        values[variant][metric].append(entry["value"])
        low, high = entry.get("ci", (np.nan, np.nan))
        cells.append(f"{entry['value']:.4f} [{low:.4f},{high:.4f}]")
      print(f"{os.path.basename(run_dir):22s} {cells[0]:>22s} {cells[1]:>22s} "
            f"{seconds.get(run_dir, float('nan')):8.0f}")
    for metric in ("recall@50", "auc"):
      lazy, dense = (np.array(values[v][metric]) for v in VARIANTS)
      spread = max(np.ptp(lazy), np.ptp(dense))
      print(f"{metric}: lazy {lazy.mean():.4f} dense {dense.mean():.4f} "
            f"lazy - dense {lazy.mean() - dense.mean():+.4f} (seed spread {spread:.4f})")


if __name__ == "__main__":
  app.run(main)
