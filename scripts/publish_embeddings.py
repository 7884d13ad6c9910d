#!/usr/bin/env python3
"""Publishes a run's embeddings into PostgreSQL/Supabase (pgvector) and installs recommend().

Writes query and candidate embeddings into versioned `vector(d)` tables (HNSW index on the
candidates), switches the active version atomically, and installs the SQL functions
`recommend(user_id, k)` and `recommend_reciprocal(user_id, k)` (callable as Supabase RPCs).
Re-running with the same run is a no-op switch. Example:

  publish_embeddings.py --run_dir=out/run --dataset_dir=out/dataset --db_url=postgresql://...
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow

from absl import app
from absl import flags
from absl import logging

from tfrs_two_tower.stages import cli
from tfrs_two_tower.stages import publish_stage

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", None, "Run directory written by train_model.py.", required=True)
flags.DEFINE_string("dataset_dir", None, "The dataset the run was trained on (query entities, "
                    "train swipes for calibration).", required=True)
cli.define_database_flags()
flags.DEFINE_integer("keep_versions", 3, "Model versions kept in the database (active included).",
                     lower_bound=1)
flags.DEFINE_boolean("republish", False, "Rewrite this run's tables even if already published "
                     "(not allowed while it is the active version).")
flags.DEFINE_integer("hnsw_m", 16, "HNSW graph degree (pgvector `m`).", lower_bound=2)
flags.DEFINE_integer("hnsw_ef_construction", 64, "HNSW build beam (pgvector `ef_construction`).",
                     lower_bound=4)
flags.DEFINE_integer("hnsw_build_memory_mb", None, "maintenance_work_mem (MB) of the HNSW build, "
                     "for this transaction only. Default: enough to hold the graph in memory "
                     "(~0.9 kB a candidate at d=33, at most 1024 MB); 0 keeps the server's "
                     "setting. Never lowers it.", lower_bound=0)


def main(argv):
  cli.refuse_positional_arguments(argv)
  with cli.user_errors():
    publish_stage.run(FLAGS.run_dir, FLAGS.dataset_dir, db_url=FLAGS.db_url,
                      env_file=FLAGS.env_file, keep_versions=FLAGS.keep_versions,
                      republish=FLAGS.republish, hnsw_m=FLAGS.hnsw_m,
                      hnsw_ef_construction=FLAGS.hnsw_ef_construction,
                      hnsw_build_memory_mb=FLAGS.hnsw_build_memory_mb, log=logging.info)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
