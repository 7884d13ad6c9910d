#!/usr/bin/env python3
"""Generates the synthetic dating world and writes its dataset directory.

The world (profiles, swipes, hidden traits for the oracle) goes to --world_dir;
its dataset, split by time, to --dataset_dir (the same format export_data.py
writes from PostgreSQL). Example:

  generate_world.py --world_dir=out/world --dataset_dir=out/dataset
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow

from absl import app
from absl import flags
from absl import logging

from tfrs_two_tower.stages import cli
from tfrs_two_tower.stages import world_stage

FLAGS = flags.FLAGS
flags.DEFINE_string("world_dir", None, "Where the world goes (profiles.parquet, swipes.parquet, "
                    "feed_impressions.parquet, hidden.npz, world.json).", required=True)
flags.DEFINE_string("dataset_dir", None, "Where its dataset directory goes; empty: world only.")
flags.DEFINE_string("config", None, "Feature/data config JSON; default: the packaged dating config.")
cli.define_world_flags()
flags.DEFINE_float("eval_fraction", 0.15, "Last fraction of swipes (by time) kept for eval, "
                   "unless --split_time is given.")
cli.define_validation_flags()
flags.DEFINE_string("split_time", None, "ISO time of the train/eval boundary (overrides "
                    "--eval_fraction).")
flags.DEFINE_integer("train_shards", 4, "TFRecord shards of the train split.", lower_bound=1)
flags.DEFINE_integer("eval_shards", 2, "TFRecord shards of the eval split.", lower_bound=1)
flags.DEFINE_boolean("overwrite", False, "Replace existing outputs (atomically).")


def main(argv):
  cli.refuse_positional_arguments(argv)
  with cli.user_errors():
    world_stage.run(world_dir=FLAGS.world_dir, dataset_dir=FLAGS.dataset_dir,
                    config_path=FLAGS.config, num_users=FLAGS.num_users, days=FLAGS.days,
                    feed_size=FLAGS.feed_size, mean_activity=FLAGS.mean_activity,
                    exploration=FLAGS.exploration, seed=FLAGS.seed,
                    eval_fraction=FLAGS.eval_fraction, split_time=FLAGS.split_time,
                    validation_fraction=FLAGS.validation_fraction,
                    validation_days=FLAGS.validation_days, train_shards=FLAGS.train_shards,
                    eval_shards=FLAGS.eval_shards, overwrite=FLAGS.overwrite, log=logging.info)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
