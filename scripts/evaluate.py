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

from tfrs_two_tower.evaluation import segments
from tfrs_two_tower.stages import cli
from tfrs_two_tower.stages import evaluate_stage

FLAGS = flags.FLAGS
_RULES = segments.SegmentRules()
flags.DEFINE_string("dataset_dir", None, "Dataset directory (its eval split is evaluated).",
                    required=True)
flags.DEFINE_multi_string("run_dir", [], "Run directory to evaluate; repeat the flag or give a "
                          "comma-separated list to compare several runs (e.g. with/without logQ "
                          "correction, with/without passes). Omit it to evaluate the baselines only")
flags.DEFINE_string("output_dir", None, "Where the report directory goes (written atomically).",
                    required=True)
flags.DEFINE_list("k", ["10", "50", "100"], "List lengths K of recall@K, NDCG@K, ...; the "
                  "smallest is the headline K of the verdict.")
flags.DEFINE_string("world_dir", None, "Optional synthetic world the dataset was generated from "
                    "(generate_world.py): adds oracle like / like-back / match rates of the lists.")
flags.DEFINE_string("oracle", None, "Optional ground truth instead of --world_dir: "
                    "package.module:function returning P(u likes v) as a [P] float array for "
                    "[P] arrays of swiper and swipee ids (your own simulator, a labelled "
                    "panel); adds the oracle like / like-back / match rates of the lists.")
flags.DEFINE_string("db_url", None, "The app's database, when the config's baseline is its own "
                    "SQL (baseline.sql): the query is run there for every evaluated user. "
                    "Default: SUPABASE_DB_URL from the environment.")
flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples of users for the 95 % intervals.",
                     lower_bound=10)
flags.DEFINE_integer("seed", 0, "Seed of the bootstrap, the random baseline and the calibration "
                     "subsample.")
flags.DEFINE_list("baselines", list(evaluate_stage.BASELINES), "Baselines to evaluate "
                  "(random, popularity, feature_matching); lifts are over feature_matching.")
flags.DEFINE_boolean("reciprocal", True, "Also rank by a reciprocal score combining "
                     "P(u likes v) and P(v likes u) when both towers see the same entity.")
flags.DEFINE_list("reciprocal_combination", ["product"], "How the reciprocal mode combines the "
                  "two probabilities: product (= P(match)) and/or harmonic (RECON); the first is "
                  "<run>:reciprocal, others <run>:reciprocal_<combination>.")
flags.DEFINE_boolean("reciprocal_back_swipes", True, "Reciprocal mode: when v swiped on u in "
                     "train, use the observed outcome (like 1, pass 0) as P(v likes u).")
flags.DEFINE_list("popularity_penalty", [], "Betas of a serving-time popularity penalty: each "
                  "non-zero beta adds <run>:pop<beta>, the model ranked by s(u, v) - beta * "
                  "log(1 + train likes of v), to measure accuracy vs spread of exposure "
                  "(e.g. 0.002,0.01). Empty (default): no extra entries. It lowers the top "
                  "1 %'s share but RAISES Gini (docs/evaluation.md).")
flags.DEFINE_list("hubness_penalty", [], "Betas of a serving-time hubness penalty: each non-zero "
                  "beta adds <run>:hub<beta>, the model ranked by s(u, v) - beta * qbar . c_v "
                  "(qbar = mean query embedding; = centred queries), which spreads exposure "
                  "(e.g. 0.25,0.5). Empty (default): no extra entries.")
flags.DEFINE_list("exposure_cap", [], "Per-candidate caps of a serving-time exposure control: "
                  "each cap c adds <entry>:cap<c> for the one-way model, its hubness entries and "
                  "the reciprocal mode, every candidate listed at most c times in the eval lists "
                  "(one day's requests, in a seeded order). The dataset config's `exposure` "
                  "section adds its own beta and cap.")
flags.DEFINE_float("active_window_days", _RULES.active_window_days, "Segment 'active': window "
                   "before the split in which train swipes are counted.", lower_bound=0)
flags.DEFINE_integer("active_min_swipes", _RULES.active_min_swipes, "Segment 'active': minimum "
                     "train swipes in that window.", lower_bound=1)
flags.DEFINE_float("long_time_days", _RULES.long_time_days, "Segment 'long_time': minimum "
                   "account age at the split, in days.", lower_bound=0)
flags.DEFINE_integer("batch_size", 1024, "Query users scored per block ([B, N] scores in memory).",
                     lower_bound=1)
flags.DEFINE_boolean("tensorboard", True, "Write scalars and a PR curve to <run>/logs/eval.")
flags.DEFINE_boolean("verify_checksums", True, "Hash dataset and run files against their "
                     "manifests before evaluating.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --output_dir (atomically).")


def main(argv):
  del argv
  run_dirs = [p.strip() for value in FLAGS.run_dir for p in value.split(",") if p.strip()]
  with cli.user_errors():
    try:
      ks = [int(k) for k in FLAGS.k]
    except ValueError:
      raise evaluate_stage.EvaluationInputError(
          f"--k: expected comma-separated integers, got {FLAGS.k}") from None
    betas = {}
    for name in ("popularity_penalty", "hubness_penalty"):
      try:
        betas[name] = [float(b) for b in FLAGS[name].value]
      except ValueError:
        raise evaluate_stage.EvaluationInputError(
            f"--{name}: expected comma-separated numbers, got {FLAGS[name].value}") from None
    try:
      caps = [int(c) for c in FLAGS.exposure_cap]
    except ValueError:
      raise evaluate_stage.EvaluationInputError(
          f"--exposure_cap: expected comma-separated integers, got {FLAGS.exposure_cap}") from None
    rules = segments.SegmentRules(active_window_days=FLAGS.active_window_days,
                                  active_min_swipes=FLAGS.active_min_swipes,
                                  long_time_days=FLAGS.long_time_days)
    evaluate_stage.run(FLAGS.dataset_dir, run_dirs, FLAGS.output_dir, ks=ks, rules=rules,
                       world_dir=FLAGS.world_dir, bootstrap=FLAGS.bootstrap, seed=FLAGS.seed,
                       baselines=FLAGS.baselines, reciprocal=FLAGS.reciprocal,
                       reciprocal_combinations=FLAGS.reciprocal_combination,
                       back_swipes=FLAGS.reciprocal_back_swipes,
                       popularity_penalties=betas["popularity_penalty"],
                       hubness_penalties=betas["hubness_penalty"],
                       batch_size=FLAGS.batch_size, tensorboard=FLAGS.tensorboard,
                       overwrite=FLAGS.overwrite, verify_checksums=FLAGS.verify_checksums,
                       log=logging.info, oracle=FLAGS.oracle, exposure_caps=caps,
                       db_url=FLAGS.db_url or os.environ.get("SUPABASE_DB_URL"))


if __name__ == "__main__":
  app.run(main)
