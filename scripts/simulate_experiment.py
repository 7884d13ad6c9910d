#!/usr/bin/env python3
"""Simulates an A/B test on the synthetic world through a real PostgreSQL, then analyses it.

Users are assigned by the real hash, get feeds from their arm's recommender
(control: feature matching; treatment: the two towers of --run_dir), swipe by
the world's hidden model; swipes and exposures go into PostgreSQL with the
A/B schema and analyze_experiment's analysis reads them back. Examples:

  # two-tower vs feature matching on the default world, 14 days
  simulate_experiment.py --run_dir=/tmp/run_default --output_dir=out/ab_sim
  # A/A calibration: 1000 re-splits + 20 full database round trips
  simulate_experiment.py --output_dir=out/ab_aa --aa_splits=1000 --aa_db_runs=20
  # a broken treatment client that loses 5 % of its exposure logs: SRM -> invalid
  simulate_experiment.py --output_dir=out/ab_srm --exposure_log_loss=treatment=0.05
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow

from absl import app
from absl import flags
from absl import logging

from tfrs_two_tower.stages import abtest_simulation_stage
from tfrs_two_tower.stages import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Where report/ and manifest.json (truth, verdicts, "
                    "calibration) go.", required=True)
flags.DEFINE_string("world_dir", None, "A world written by generate_world.py; empty: generate "
                    "one from --num_users/--world_days/--world_seed.")
flags.DEFINE_integer("num_users", 5000, "Users of a generated world.", lower_bound=2)
flags.DEFINE_integer("world_days", 120, "History days of a generated world.", lower_bound=1)
flags.DEFINE_integer("world_seed", 0, "Seed of a generated world (0 = the default world, the "
                     "one /tmp/ds-style datasets come from).")
flags.DEFINE_string("run_dir", None, "Treatment: a trained run dir (train_model.py). Empty: the "
                    "treatment is feature matching too (an A/A test).")
flags.DEFINE_enum("treatment", None, list(abtest_simulation_stage.TREATMENTS), "Treatment arm's "
                  "recommender: two_tower (P(u likes v)), two_tower_reciprocal (P(match): product "
                  "of both directions, observed back-swipes used) or "
                  "two_tower_reciprocal_harmonic (RECON harmonic mean) from --run_dir; "
                  "oracle / oracle_reciprocal (the world's "
                  "hidden model: a ceiling); feature_matching (A/A). Default: two_tower with "
                  "--run_dir, else feature_matching.")
flags.DEFINE_string("config", None, "Feature config for feature matching; default: the packaged "
                    "dating config.")
cli.define_database_flags(embedded=True)  # the database must be EMPTY (checked)
flags.DEFINE_string("experiment", "two_tower_v1", "Experiment name (also the salt unless --salt).")
flags.DEFINE_string("salt", "", "Assignment salt; default: the experiment name.")
flags.DEFINE_string("arms", "control=1,treatment=1", "Ordered arm=weight list, control first.")
flags.DEFINE_integer("experiment_days", 14, "Experiment length in simulated days.",
                     lower_bound=1)
flags.DEFINE_integer("feed_size", None, "Profiles per app open; default: the world's.",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of activity, timing and responses.")
flags.DEFINE_string("exposure_log_loss", "", "arm=fraction of users whose exposure log is lost "
                    "(e.g. treatment=0.05): injects a sample-ratio mismatch.")
flags.DEFINE_boolean("cuped", False, "CUPED-adjust per-user metrics with the pre-period.")
flags.DEFINE_integer("aa_splits", 0, "A/A calibration: re-randomisations of an A/A population "
                     "analysed (0 = skip).", lower_bound=0)
flags.DEFINE_integer("aa_db_runs", 0, "A/A calibration: full simulate-write-analyse round trips "
                     "through the database (0 = skip).", lower_bound=0)
flags.DEFINE_string("oracle", None, "Ground truth of the simulated users instead of the world's "
                    "hidden model: package.module:function returning P(u likes v) for [P] "
                    "arrays of swiper and swipee ids (e.g. your own simulator).")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --output_dir.")


def main(argv):
  cli.refuse_positional_arguments(argv)
  with cli.user_errors():
    abtest_simulation_stage.run(
        FLAGS.output_dir, world_dir=FLAGS.world_dir, num_users=FLAGS.num_users,
        world_days=FLAGS.world_days, world_seed=FLAGS.world_seed, run_dir=FLAGS.run_dir,
        treatment_kind=FLAGS.treatment or "",
        config_path=FLAGS.config, db_url=cli.database_url(), experiment=FLAGS.experiment,
        salt=FLAGS.salt, arms=FLAGS.arms, days=FLAGS.experiment_days, feed_size=FLAGS.feed_size,
        seed=FLAGS.seed, exposure_log_loss=FLAGS.exposure_log_loss, cuped=FLAGS.cuped,
        aa_splits=FLAGS.aa_splits, aa_db_runs=FLAGS.aa_db_runs, overwrite=FLAGS.overwrite,
        log=logging.info, oracle=FLAGS.oracle)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
