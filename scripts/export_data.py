#!/usr/bin/env python3
"""Exports swipes and profiles from PostgreSQL/Supabase (or CSV/Parquet dumps) into a dataset.

Examples:

  # Database URL from --db_url, else $SUPABASE_DB_URL / $DATABASE_URL / .env
  export_data.py --output_dir=out/dataset
  # Supabase dashboard CSV exports (profiles.csv, swipes.csv) in a folder
  export_data.py --input_dir=dumps/ --output_dir=out/dataset
  # Four partitions in parallel, then combined
  export_data.py --num_partitions=4 --partition=0 --output_dir=out/part-0   # ... 1, 2, 3
  export_data.py --combine='out/part-*' --output_dir=out/dataset

Exit codes: 0 ok, 2 usage/config, 10 readiness gate not met, 11 database unreachable,
12 authentication failed, 13 missing table/column, 14 wrong column type, 15 empty result,
16 unknown actions, 17 NULLs in required columns, 18 swipes referencing missing profiles,
19 other bad data, 20 inconsistent partitions. See docs/export.md.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow

import sys  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tfrs_two_tower.stages import cli  # noqa: E402
from tfrs_two_tower.stages import export_stage  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Dataset directory to write (atomically).", required=True)
flags.DEFINE_string("config", None, "Feature/data config JSON (tables, columns, actions, sql); "
                    "default: the packaged dating config.")
flags.DEFINE_string("db_url", None, "PostgreSQL URL. Default: $SUPABASE_DB_URL, else "
                    "$DATABASE_URL, else the same keys in --env_file. sslmode=require is added "
                    "for non-local hosts. The password is never logged.")
flags.DEFINE_string("env_file", ".env", "Dotenv file read when neither --db_url nor the "
                    "environment gives a URL.")
flags.DEFINE_string("input_dir", None, "Read CSV/Parquet dumps instead of a database: "
                    "<table>.parquet, <table>.csv or <table>.csv.gz per config table.")
flags.DEFINE_string("interactions_file", None, "CSV/Parquet file of the interactions table "
                    "(overrides --input_dir for it).")
flags.DEFINE_string("query_entities_file", None, "CSV/Parquet file of the query entity table.")
flags.DEFINE_string("candidate_entities_file", None, "CSV/Parquet file of the candidate entity "
                    "table (when it is another table than the query entities).")
flags.DEFINE_list("combine", [], "Partition export directories (globs allowed) to combine into "
                  "--output_dir instead of exporting.")
flags.DEFINE_float("eval_fraction", 0.15, "Last fraction of interactions (by time) kept for "
                   "eval, unless --split_time is given.", lower_bound=0.0, upper_bound=1.0)
cli.define_validation_flags()
flags.DEFINE_string("split_time", None, "ISO time (or unix seconds) of the train/eval boundary; "
                    "give the same value to every partition of a partitioned export.")
flags.DEFINE_integer("num_partitions", 1, "Split the export into this many hash partitions of "
                     "the query ids (md5), e.g. to run them in parallel.", lower_bound=1)
flags.DEFINE_integer("partition", 0, "Which partition to export, in [0, --num_partitions).",
                     lower_bound=0)
flags.DEFINE_enum("unknown_actions", "fail", ["fail", "drop"], "Interactions whose action the "
                  "config does not map: fail (exit 16, with counts) or drop (counted in stats).")
flags.DEFINE_enum("missing_entities", "fail", ["fail", "drop"], "Interactions referencing a "
                  "profile that is not in the entity table: fail (exit 18) or drop (counted).")
flags.DEFINE_integer("min_users", 500, "Readiness gate: users who swiped.", lower_bound=0)
flags.DEFINE_integer("min_interactions", 5000, "Readiness gate: interactions.", lower_bound=0)
flags.DEFINE_boolean("force", False, "Write the dataset even below the readiness gate.")
flags.DEFINE_string("readiness_path", None, "Where the readiness report goes when the gate "
                    "fails; default <output_dir>.readiness.json.")
flags.DEFINE_integer("chunk_size", 100_000, "Interactions fetched and written per chunk (memory "
                     "is bounded by the entity tables plus one chunk).", lower_bound=1)
flags.DEFINE_integer("train_shards", 4, "TFRecord shards of the train split.", lower_bound=1)
flags.DEFINE_integer("eval_shards", 2, "TFRecord shards of the eval split.", lower_bound=1)
flags.DEFINE_boolean("overwrite", False, "Replace an existing --output_dir (atomically).")
flags.DEFINE_integer("connect_retries", 3, "Retries when the database is unreachable.",
                     lower_bound=0)
flags.DEFINE_float("retry_backoff_seconds", 1.0, "First retry delay; doubles each retry.",
                   lower_bound=0.0)
flags.DEFINE_float("lock_timeout", 60.0, "Seconds to wait for a table another session holds "
                   "locked (e.g. a migration) before giving up with exit 21; 0 waits forever.",
                   lower_bound=0.0)


def main(argv):
  del argv
  sys.exit(export_stage.main(
      output_dir=FLAGS.output_dir, config_path=FLAGS.config, db_url=FLAGS.db_url,
      env_file=FLAGS.env_file, input_dir=FLAGS.input_dir,
      interactions_file=FLAGS.interactions_file, query_entities_file=FLAGS.query_entities_file,
      candidate_entities_file=FLAGS.candidate_entities_file, combine=FLAGS.combine,
      eval_fraction=FLAGS.eval_fraction, split_time=FLAGS.split_time,
      validation_fraction=FLAGS.validation_fraction, validation_days=FLAGS.validation_days,
      num_partitions=FLAGS.num_partitions, partition=FLAGS.partition,
      unknown_actions=FLAGS.unknown_actions, missing_entities=FLAGS.missing_entities,
      min_users=FLAGS.min_users, min_interactions=FLAGS.min_interactions, force=FLAGS.force,
      readiness_path=FLAGS.readiness_path, chunk_size=FLAGS.chunk_size,
      train_shards=FLAGS.train_shards, eval_shards=FLAGS.eval_shards, overwrite=FLAGS.overwrite,
      connect_retries=FLAGS.connect_retries, retry_backoff_seconds=FLAGS.retry_backoff_seconds,
      lock_timeout=FLAGS.lock_timeout))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
