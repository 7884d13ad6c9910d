#!/usr/bin/env python3
"""Swipes to phone in one command: world/database -> export -> train -> evaluate -> Core ML -> pgvector.

With --embedded_db it runs on the demo: a synthetic dating world written into an embedded
PostgreSQL (pgserver, started and stopped by this command). Otherwise it exports from your
database (--db_url, else $SUPABASE_DB_URL / $DATABASE_URL / --env_file, as every script) and
publishes embeddings back to it. Finished stages are skipped on a re-run; --rerun=train (for
example) redoes a stage and the ones after it. Example:

  run_pipeline.py --output_dir=out --embedded_db
  run_pipeline.py --output_dir=out --embedded_db --rerun=train --epochs=10
  run_pipeline.py --output_dir=prod --stages=export,train,evaluate   # the URL from .env
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow

from absl import app
from absl import flags
from absl import logging

from tfrs_two_tower.stages import cli
from tfrs_two_tower.stages import pipeline_stage

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "out", "Where every stage writes (world/, dataset/, run/, "
                    "report/, coreml/, pgdata/, summary.md).")
cli.define_database_flags(embedded=True)
flags.DEFINE_string("config", None, "Feature/data config JSON; default: the packaged dating config.")
flags.DEFINE_list("stages", list(pipeline_stage.STAGES), "Stages to run, in pipeline order.")
flags.DEFINE_list("rerun", [], "Stages to redo even if complete (later stages are redone too).")
cli.define_world_flags()  # --embedded_db only; --seed also seeds training and the bootstrap
flags.DEFINE_float("eval_fraction", 0.15, "Last fraction of swipes (by time) held out for eval.")
flags.DEFINE_boolean("force", False, "Export even when the readiness gate is not met.")
flags.DEFINE_integer("epochs", None, "Training epochs at most (early stopping on the "
                     "validation split picks the best); default: train_model.py's.",
                     lower_bound=1)
flags.DEFINE_integer("batch_size", 1024, "Training batch size.", lower_bound=1)
flags.DEFINE_enum("sampling_probability", None, ["none", "static", "streaming"],
                  "logQ correction of the sampled softmax; given, it is not tuned.")
flags.DEFINE_boolean("no_tune", False, "Train with the default values instead of choosing them "
                     "on the validation split.")
flags.DEFINE_float("tune_budget_minutes", None, "Wall-clock budget of the training stage's "
                   "search and final model; default: train_model.py's.")
flags.DEFINE_integer("bootstrap", 500, "Bootstrap resamples for the report's CIs.", lower_bound=10)
flags.DEFINE_enum("coreml_precision", "float16", ["float32", "float16"], "Core ML precision.")
flags.DEFINE_enum("coreml_compress", "none",
                  ["none", "int8", "palettize4", "palettize6", "palettize8"],
                  "Core ML weight compression.")


def main(argv):
  cli.refuse_positional_arguments(argv)
  with cli.user_errors():
    db_url = cli.database_url()  # None: --embedded_db
  options = pipeline_stage.PipelineOptions(
      output_dir=FLAGS.output_dir, db_url=db_url, env_file=FLAGS.env_file,
      config_path=FLAGS.config, stages=FLAGS.stages, rerun=FLAGS.rerun,
      num_users=FLAGS.num_users, days=FLAGS.days, feed_size=FLAGS.feed_size,
      mean_activity=FLAGS.mean_activity, exploration=FLAGS.exploration, seed=FLAGS.seed,
      eval_fraction=FLAGS.eval_fraction, force=FLAGS.force, epochs=FLAGS.epochs,
      batch_size=FLAGS.batch_size, sampling_probability=FLAGS.sampling_probability,
      no_tune=FLAGS.no_tune, tune_budget_minutes=FLAGS.tune_budget_minutes,
      fixed=[n for n in ("sampling_probability",) if FLAGS[n].present],
      bootstrap=FLAGS.bootstrap, coreml_precision=FLAGS.coreml_precision,
      coreml_compress=FLAGS.coreml_compress)
  with cli.user_errors():
    pipeline_stage.run(options, log=logging.info)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
