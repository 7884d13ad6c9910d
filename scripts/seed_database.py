#!/usr/bin/env python3
"""Writes a synthetic dating world into PostgreSQL with the default schema.

Creates profiles, swipes and the matches view (tfrs_two_tower/sql/schema.sql) if
missing, then inserts the world with COPY. Re-running inserts nothing twice.
Examples:

  seed_database.py --db_url=postgresql://postgres@localhost/app --world_dir=out/world
  seed_database.py --num_users=20000 --days=120      # generate a world on the fly
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow

import sys  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from tfrs_two_tower.data import synthetic  # noqa: E402
from tfrs_two_tower.stages import cli  # noqa: E402
from tfrs_two_tower.stages import seed_stage  # noqa: E402

FLAGS = flags.FLAGS
cli.define_database_flags()
flags.DEFINE_string("world_dir", None, "A world written by generate_world.py; empty: generate "
                    "one from the flags below.")
cli.define_world_flags()  # used when --world_dir is empty
cli.define_retry_flags()


def main(argv):
  cli.refuse_positional_arguments(argv)
  world = synthetic.WorldParams(num_users=FLAGS.num_users, days=FLAGS.days,
                                feed_size=FLAGS.feed_size, mean_activity=FLAGS.mean_activity,
                                exploration=FLAGS.exploration, seed=FLAGS.seed)
  sys.exit(seed_stage.main(
      db_url=FLAGS.db_url, env_file=FLAGS.env_file, world_dir=FLAGS.world_dir, world=world,
      connect_retries=FLAGS.connect_retries, retry_backoff_seconds=FLAGS.retry_backoff_seconds,
      log=logging.info, error=logging.error))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
