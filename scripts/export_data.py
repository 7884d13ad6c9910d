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
cli.define_option_flags(export_stage.ExportOptions)
cli.define_database_flags()
cli.define_retry_flags()
cli.define_validation_flags()


def main(argv):
  cli.refuse_positional_arguments(argv)
  sys.exit(export_stage.main(FLAGS.output_dir, cli.options_from_flags(export_stage.ExportOptions)))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
