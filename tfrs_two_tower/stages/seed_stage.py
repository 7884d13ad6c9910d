"""seed_database.py: writes a synthetic world into PostgreSQL with the default schema.

So that the demo and the tests go through a real database exactly as production
does. Fast (COPY into temporary tables, then one set-based INSERT per table) and
re-runnable: profiles conflict on their primary key, and a swipe already present
(same swiper, swipee and time) is not inserted again.
"""

import io
import os
import time
from typing import Callable, Dict, Optional

import pandas as pd
import psycopg2.errors

from tfrs_two_tower.data import postgres_source
from tfrs_two_tower.data import sources
from tfrs_two_tower.data import synthetic

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "sql", "schema.sql")
PROFILE_COLUMNS = ("id", "gender", "seeking", "age", "city", "latitude", "longitude", "interests",
                   "photo_count", "verified", "bio_length", "created_at")
SWIPE_COLUMNS = ("swiper_id", "swipee_id", "action", "created_at")


def schema_sql() -> str:
  """The packaged default schema (`tfrs_two_tower/sql/schema.sql`)."""
  with open(SCHEMA_PATH, encoding="utf-8") as f:
    return f.read()


def array_literal(values) -> str:
  """A PostgreSQL text[] literal: {"a","b \\"c\\""}."""
  quoted = ('"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
  return "{" + ",".join(quoted) + "}"


def _copy(cur, table: str, frame: pd.DataFrame, chunk_rows: int) -> None:
  """COPY `frame` into `table` as CSV, `chunk_rows` rows per COPY (bounded memory).

  Datetime columns travel as unix seconds (formatting datetimes as text is the
  slow part of to_csv); the INSERT turns them back with to_timestamp().
  """
  columns = ", ".join(frame.columns)
  times = [c for c in frame.columns if pd.api.types.is_datetime64_any_dtype(frame[c])]
  for start in range(0, len(frame), chunk_rows):
    part = frame.iloc[start:start + chunk_rows]
    if times:
      part = part.assign(**{c: pd.to_datetime(part[c], utc=True).astype("datetime64[ns, UTC]")
                            .astype("int64") / 1e9 for c in times})
    buffer = io.StringIO()
    part.to_csv(buffer, index=False, header=False)
    buffer.seek(0)
    cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)", buffer)


def _skip_row_triggers_if_allowed(cur) -> None:
  """Bulk-load mode (as pg_restore --disable-triggers): no per-row foreign-key triggers.

  Safe here: the world's swipes reference only the world's profiles, inserted
  first in the same transaction. Needs superuser (local databases, the tests);
  elsewhere (e.g. Supabase) the triggers simply stay on and seeding is slower.
  """
  cur.execute("SAVEPOINT replica_role")
  try:
    cur.execute("SET LOCAL session_replication_role = replica")
  except psycopg2.errors.InsufficientPrivilege:
    cur.execute("ROLLBACK TO SAVEPOINT replica_role")


def seed(connection, world: synthetic.World, chunk_rows: int = 200_000,
         log: Callable[[str], None] = print) -> Dict[str, int]:
  """Creates the schema (if needed) and inserts the world; returns rows inserted per table.

  Args:
    connection: an open psycopg2 connection (committed on success).
  """
  started = time.time()
  profiles = world.profiles.loc[:, list(PROFILE_COLUMNS)].copy()
  profiles["interests"] = profiles["interests"].map(array_literal)
  swipes = world.swipes.loc[:, list(SWIPE_COLUMNS)]
  inserted = {}
  with connection, connection.cursor() as cur:
    cur.execute(schema_sql())
    _skip_row_triggers_if_allowed(cur)
    cur.execute("CREATE TEMP TABLE seed_profiles (LIKE profiles) ON COMMIT DROP")
    cur.execute("ALTER TABLE seed_profiles ALTER created_at TYPE float8 USING 0")
    _copy(cur, "seed_profiles", profiles, chunk_rows)
    selected = ", ".join("to_timestamp(created_at)" if c == "created_at" else c
                         for c in PROFILE_COLUMNS)
    cur.execute(f"INSERT INTO profiles ({', '.join(PROFILE_COLUMNS)}) SELECT {selected} "
                "FROM seed_profiles ON CONFLICT (id) DO NOTHING")
    inserted["profiles"] = cur.rowcount
    cur.execute("CREATE TEMP TABLE seed_swipes (swiper_id uuid, swipee_id uuid, action text, "
                "created_at float8) ON COMMIT DROP")
    _copy(cur, "seed_swipes", swipes, chunk_rows)
    cur.execute("INSERT INTO swipes (swiper_id, swipee_id, action, created_at) "
                "SELECT s.swiper_id, s.swipee_id, s.action, to_timestamp(s.created_at) "
                "FROM seed_swipes s WHERE NOT EXISTS (SELECT 1 FROM swipes t WHERE "
                "t.swiper_id = s.swiper_id AND t.swipee_id = s.swipee_id "
                "AND t.created_at = to_timestamp(s.created_at))")
    inserted["swipes"] = cur.rowcount
  with connection, connection.cursor() as cur:
    cur.execute("ANALYZE profiles; ANALYZE swipes")  # fresh statistics for the export's plans
  elapsed = time.time() - started
  log(f"seed: inserted {inserted['profiles']:,} of {len(profiles):,} profiles and "
      f"{inserted['swipes']:,} of {len(swipes):,} swipes in {elapsed:.1f}s "
      f"({len(swipes) / max(elapsed, 1e-9):,.0f} swipes/s)")
  return inserted


def run(db_url: Optional[str] = None, env_file: Optional[str] = ".env",
        world_dir: Optional[str] = None, num_users: int = 5000, days: int = 120,
        feed_size: int = 8, mean_activity: float = 0.11, seed_value: int = 0,
        connect_retries: int = 3, log: Callable[[str], None] = print) -> Dict[str, int]:
  """Seeds the database at --db_url (or $SUPABASE_DB_URL/$DATABASE_URL/.env).

  The world is `World.load(world_dir)` when given, else generated from the flags.
  """
  url, where = postgres_source.resolve_url(db_url, env_file)
  if world_dir:
    world = synthetic.World.load(world_dir)
    log(f"seed: world from {world_dir}: {world.summary()}")
  else:
    world = synthetic.generate_world(synthetic.WorldParams(
        num_users=num_users, days=days, feed_size=feed_size, mean_activity=mean_activity,
        seed=seed_value))
    log(f"seed: generated world: {world.summary()}")
  params = postgres_source.connection_params(url)
  log(f"seed: writing into {postgres_source.describe_url(params)} (URL from {where})")
  connection = postgres_source.connect(url, retries=connect_retries, log=log)
  try:
    return seed(connection, world, log=log)
  except Exception as e:  # psycopg2 errors can quote the DSN: never let a password out
    raise sources.ExportError(sources.redact(f"seed failed: {e}",
                                             [params.get("password", "")])) from None
  finally:
    connection.close()


def main(error: Callable[[str], None] = print, **kwargs) -> int:
  """`run` for scripts: returns the process exit code (see `sources.EXIT_CODES`)."""
  try:
    run(**kwargs)
    return 0
  except sources.ExportError as e:
    error(f"seed failed ({type(e).__name__}, exit {e.exit_code}): {e}")
    return e.exit_code
