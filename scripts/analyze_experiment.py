#!/usr/bin/env python3
"""Analyses an A/B test (SRM check first, then effects and a verdict), or plans its size.

From the database (one read-only snapshot of ab_experiments / ab_user_outcomes):
  analyze_experiment.py --experiment=two_tower_v1 \
      --output_dir=out/ab_report [--cuped]
From CSV exports (the experiment's arms and window come from flags):
  analyze_experiment.py --exposures_csv=exposures.csv --swipes_csv=swipes.csv \
      --experiment=two_tower_v1 --arms=control=1,treatment=1 --output_dir=out/ab_report
Sample size before starting (fixed horizon):
  analyze_experiment.py --plan --baseline_rate=0.12 --mde=0.015

--config maps the app's interactions (table, columns, action -> label). Exit codes: 2 bad
flags or input, 16 action values the config does not map (named with their counts; the
export refuses the same data with the same code).
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow

from absl import app
from absl import flags
from absl import logging

from tfrs_two_tower.abtest import definition
from tfrs_two_tower.abtest import metrics
from tfrs_two_tower.stages import abtest_stage
from tfrs_two_tower.stages import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("experiment", "", "Experiment name (ab_experiments.name; in CSV mode the "
                    "`experiment` column filter and the report title).")
cli.define_database_flags()
flags.DEFINE_string("config", None, "Config JSON of the app's data: the interactions' table "
                    "and column names (the swipes CSV uses them) and each action's label; an "
                    "action value it does not map stops the analysis (exit 16). Default: the "
                    "packaged dating config.")
flags.DEFINE_string("exposures_csv", None, "CSV with user_id, arm, first_exposed_at "
                    "(optional experiment column).")
flags.DEFINE_string("swipes_csv", None, "CSV of the interactions with the --config's column "
                    "names (default: swiper_id, swipee_id, action, created_at).")
flags.DEFINE_string("arms", "control=1,treatment=1", "CSV mode: ordered arm=weight list, control "
                    "first (the database mode reads ab_experiments.arms).")
flags.DEFINE_string("starts_at", None, "CSV mode: experiment start (ISO); default: the first "
                    "exposure. The CUPED pre-period ends here.")
flags.DEFINE_string("ends_at", None, "CSV mode: experiment end (ISO); outcomes after it are "
                    "ignored. Empty: still running.")
flags.DEFINE_enum("primary_metric", "match_rate", list(metrics.METRICS), "CSV mode: the metric "
                  "the verdict is about.")
flags.DEFINE_list("guardrails", list(definition.DEFAULT_GUARDRAILS), "CSV mode: metrics that "
                  "must not get significantly worse.")
flags.DEFINE_float("pre_period_days", 28.0, "CSV mode: CUPED pre-period length in days.",
                   lower_bound=0)
flags.DEFINE_integer("planned_users_per_arm", None, "CSV mode: the planned horizon (warns when "
                     "not reached).")
flags.DEFINE_boolean("cuped", False, "Adjust per-user metrics with their pre-period value "
                     "(CUPED); ratio metrics stay unadjusted.")
flags.DEFINE_float("alpha", 0.05, "Two-sided significance level (CIs are 1 - alpha).",
                   lower_bound=1e-6, upper_bound=0.5)
flags.DEFINE_string("output_dir", None, "Where analysis.json, report.md, report.png and "
                    "manifest.json go (written atomically). Empty: log only.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --output_dir.")
flags.DEFINE_boolean("plan", False, "Power mode: print users per arm for --baseline_rate and "
                     "--mde / --relative_mde, instead of analysing.")
flags.DEFINE_float("baseline_rate", None, "--plan: control value of the metric (a rate in (0, 1), "
                   "or a mean with --std).")
flags.DEFINE_float("mde", None, "--plan: minimum detectable effect, absolute (0.015 = 12 % -> "
                   "13.5 %).")
flags.DEFINE_float("relative_mde", None, "--plan: minimum detectable effect, relative "
                   "(0.125 = +12.5 %).")
flags.DEFINE_float("std", None, "--plan: per-user standard deviation for a mean metric "
                   "(omit for rates).")
flags.DEFINE_float("power", 0.8, "--plan: power (1 - beta); also the power quoted for the "
                   "detectable effect in reports.", lower_bound=0.01, upper_bound=0.999)
flags.DEFINE_boolean("two_sided", True, "--plan: two-sided test.")
flags.DEFINE_float("daily_users", None, "--plan: newly exposed users per day (all arms), to "
                   "estimate the duration.")
flags.DEFINE_float("treatment_fraction", 0.5, "--plan: traffic share of the treatment arm.")


def main(argv):
  cli.refuse_positional_arguments(argv)
  with cli.user_errors():
    abtest_stage.run(
        experiment=FLAGS.experiment, db_url=FLAGS.db_url, env_file=FLAGS.env_file,
        config_path=FLAGS.config,
        exposures_csv=FLAGS.exposures_csv,
        swipes_csv=FLAGS.swipes_csv, arms=FLAGS.arms, starts_at=FLAGS.starts_at,
        ends_at=FLAGS.ends_at, primary_metric=FLAGS.primary_metric, guardrails=FLAGS.guardrails,
        pre_period_days=FLAGS.pre_period_days, planned_users_per_arm=FLAGS.planned_users_per_arm,
        cuped=FLAGS.cuped, alpha=FLAGS.alpha, output_dir=FLAGS.output_dir,
        overwrite=FLAGS.overwrite, plan_mode=FLAGS.plan, baseline_rate=FLAGS.baseline_rate,
        mde=FLAGS.mde, relative_mde=FLAGS.relative_mde, std=FLAGS.std, power_target=FLAGS.power,
        two_sided=FLAGS.two_sided, daily_users=FLAGS.daily_users,
        treatment_fraction=FLAGS.treatment_fraction, log=logging.info)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
