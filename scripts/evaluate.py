#!/usr/bin/env python3
"""Evaluates trained runs against random, popularity and feature-matching baselines.

Ranks ALL candidates for every user with eval swipes (train swipes and self
excluded), on the dataset's time split; writes report.json / report.md / plots
to --output_dir (atomically) and TensorBoard scalars + a PR curve to
<run>/logs/eval. Example:

  evaluate.py --dataset_dir=out/dataset --run_dir=out/run_logq,out/run_nologq
      --world_dir=out/world --output_dir=out/eval
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow

from absl import app
from absl import flags
from absl import logging

from tfrs_two_tower.stages import cli
from tfrs_two_tower.stages import evaluate_stage

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset_dir", None, "Dataset directory (its eval split is evaluated).",
                    required=True)
flags.DEFINE_multi_string("run_dir", [], "Run directory to evaluate; repeat the flag or give a "
                          "comma-separated list to compare several runs (e.g. with/without logQ "
                          "correction, with/without passes). Omit it to evaluate the baselines only")
flags.DEFINE_string("output_dir", None, "Where the report directory goes (written atomically).",
                    required=True)
cli.define_option_flags(evaluate_stage.EvaluateOptions)
cli.define_database_flags()  # only for a config whose baseline is its own SQL (baseline.sql)


def main(argv):
  cli.refuse_positional_arguments(argv)
  run_dirs = [p.strip() for value in FLAGS.run_dir for p in value.split(",") if p.strip()]
  with cli.user_errors():
    options = cli.options_from_flags(evaluate_stage.EvaluateOptions,
                                     db_url=cli.database_url(required=False))
    evaluate_stage.run(FLAGS.dataset_dir, run_dirs, FLAGS.output_dir, options, log=logging.info)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
