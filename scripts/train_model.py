#!/usr/bin/env python3
"""Trains the two-tower retrieval model on a dataset directory; writes a run directory.

The run directory holds the query/candidate SavedModels (raw features in), their
numeric cores (what Core ML converts), a top-k index SavedModel, the candidate
embeddings, checkpoints and TensorBoard logs (see docs/training.md). Example:

  train_model.py --dataset_dir=out/dataset --run_dir=out/run
  tensorboard --logdir=out/run.incomplete/logs   # while training; out/run/logs after

Killed and started again with the same flags, training resumes from the last
checkpoint and stops at the same step.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow

from absl import app
from absl import flags
from absl import logging

from tfrs_two_tower.model import train_options
from tfrs_two_tower.model import tuning
from tfrs_two_tower.stages import cli
from tfrs_two_tower.stages import train_stage

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset_dir", None, "Dataset directory (export_data.py / generate_world.py "
                    "output).", required=True)
flags.DEFINE_string("run_dir", None, "Where the run directory goes; training state lives in "
                    "<run_dir>.incomplete until the run ends.", required=True)
flags.DEFINE_boolean("overwrite", False, "Replace an existing run directory (atomically).")
cli.define_option_flags(train_options.TrainOptions)  # every training knob, help included


def main(argv):
  cli.refuse_positional_arguments(argv)
  options = cli.options_from_flags(train_options.TrainOptions)
  with cli.user_errors():
    train_stage.run(FLAGS.dataset_dir, FLAGS.run_dir, options, overwrite=FLAGS.overwrite,
                    log=logging.info,
                    fixed=cli.given_flags(train_options.TrainOptions, tuning.TUNED))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
