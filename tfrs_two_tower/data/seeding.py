"""Writes a synthetic world into PostgreSQL with the packaged default schema.

So that the demo and the tests go through a real database exactly as production
does. The tables and key columns come from the config (the packaged default
config matches `sql/schema.sql` and the world's frames); the columns written are
those a frame and its table share. Fast (COPY into temporary tables, then one
set-based INSERT per table) and re-runnable: entities and impressions conflict on
their primary key, and an interaction already present (same query, candidate
and time) is not inserted again.

Tables, in order (each world frame -> its config table):
  World.profiles     -> the query entity's table (`entities.<query entity>.table`)
  World.swipes       -> `interactions.table`
  World.impressions  -> `impressions.table`, when the world has an impressions log
                        and the config declares one (as `synthetic.write_dataset`
                        does), so an export from the database carries the log too;
                        the table is created then (`sql/impressions.sql`), so a
                        database seeded without a log has none.
"""

import io
import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import pandas as pd
import psycopg2.errors
from psycopg2 import sql

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.data import synthetic

SQL_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "sql")
SCHEMA_PATH = os.path.join(SQL_DIR, "schema.sql")
IMPRESSIONS_SCHEMA_PATH = os.path.join(SQL_DIR, "impressions.sql")


def schema_sql(path: str = SCHEMA_PATH) -> str:
  """The packaged default schema (`tfrs_two_tower/sql/schema.sql`), or another of its files."""
  with open(path, encoding="utf-8") as f:
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
  columns = sql.SQL(", ").join(map(sql.Identifier, frame.columns))
  times = [c for c in frame.columns if pd.api.types.is_datetime64_any_dtype(frame[c])]
  statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
      sql.Identifier(table), columns).as_string(cur)
  for start in range(0, len(frame), chunk_rows):
    part = frame.iloc[start:start + chunk_rows]
    if times:
      part = part.assign(**{c: pd.to_datetime(part[c], utc=True).astype("datetime64[ns, UTC]")
                            .astype("int64") / 1e9 for c in times})
    buffer = io.StringIO()
    part.to_csv(buffer, index=False, header=False)
    buffer.seek(0)
    cur.copy_expert(statement, buffer)


def _skip_row_triggers_if_allowed(cur) -> None:
  """Bulk-load mode (as pg_restore --disable-triggers): no per-row foreign-key triggers.

  Safe here: the world's interactions and impressions reference only the world's
  entities, inserted first in the same transaction. Needs superuser (local
  databases, the tests); elsewhere (e.g. Supabase) the triggers simply stay on
  and seeding is slower.
  """
  cur.execute("SAVEPOINT replica_role")
  try:
    cur.execute("SET LOCAL session_replication_role = replica")
  except psycopg2.errors.InsufficientPrivilege:
    cur.execute("ROLLBACK TO SAVEPOINT replica_role")


def _table_columns(cur, table: str) -> List[str]:
  cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
              "AND NOT attisdropped ORDER BY attnum", (table,))
  return [row[0] for row in cur.fetchall()]


def _as_table_rows(frame: pd.DataFrame, columns: List[str]) -> pd.DataFrame:
  """The frame's columns the table has, list values as text[] literals."""
  out = frame.loc[:, [c for c in frame.columns if c in columns]].copy()
  for column in out.columns:
    first = out[column].dropna().head(1)
    if out[column].dtype == object and len(first) and isinstance(
        first.iloc[0], (list, tuple, np.ndarray)):
      out[column] = out[column].map(array_literal)
  return out


def _insert(cur, table: str, frame: pd.DataFrame, chunk_rows: int,
            same_row: Optional[List[str]] = None) -> int:
  """Inserts `frame` into `table` through a temporary table; returns rows inserted.

  A row already in `table` is skipped: by the table's primary key, or, with
  `same_row`, when a row with equal values in those columns exists.
  """
  staging = "seed_" + table
  columns = list(frame.columns)
  times = [c for c in columns if pd.api.types.is_datetime64_any_dtype(frame[c])]
  cur.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA")
              .format(sql.Identifier(staging), sql.SQL(", ").join(map(sql.Identifier, columns)),
                      sql.Identifier(table)))
  for column in times:
    cur.execute(sql.SQL("ALTER TABLE {} ALTER {} TYPE float8 USING NULL").format(
        sql.Identifier(staging), sql.Identifier(column)))
  _copy(cur, staging, frame, chunk_rows)
  selected = sql.SQL(", ").join(
      sql.SQL("to_timestamp(s.{})").format(sql.Identifier(c)) if c in times
      else sql.SQL("s.{}").format(sql.Identifier(c)) for c in columns)
  if same_row:
    def value(c):
      return (sql.SQL("to_timestamp(s.{})") if c in times else sql.SQL("s.{}")).format(
          sql.Identifier(c))
    skip = sql.SQL("WHERE NOT EXISTS (SELECT 1 FROM {} t WHERE {})").format(
        sql.Identifier(table), sql.SQL(" AND ").join(
            sql.SQL("t.{} = {}").format(sql.Identifier(c), value(c)) for c in same_row))
  else:
    skip = sql.SQL("ON CONFLICT DO NOTHING")
  cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} s {}").format(
      sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)), selected,
      sql.Identifier(staging), skip))
  return cur.rowcount


def seed(connection, world: synthetic.World, chunk_rows: int = 200_000,
         log: Callable[[str], None] = print,
         config: Optional[config_lib.Config] = None) -> Dict[str, int]:
  """Creates the schema (if needed) and inserts the world; returns rows inserted per table.

  Args:
    connection: an open psycopg2 connection (committed on success).
    config: names the tables (default: the packaged default config, whose tables
      `sql/schema.sql` creates).
  """
  config = config or config_lib.load_config()
  started = time.time()
  interactions = config.interactions
  frames = [(config.entities[config.query_entity].table, world.profiles, None),
            (interactions.table, world.swipes,
             [interactions.query_id_column, interactions.candidate_id_column,
              interactions.timestamp_column])]
  if world.impressions is not None and config.impressions is not None:
    frames.append((config.impressions.table, world.impressions, None))
  inserted, given = {}, {}
  with connection, connection.cursor() as cur:
    cur.execute(schema_sql())
    if len(frames) > 2:
      cur.execute(schema_sql(IMPRESSIONS_SCHEMA_PATH))
    _skip_row_triggers_if_allowed(cur)
    for table, frame, same_row in frames:
      rows = _as_table_rows(frame, _table_columns(cur, table))
      given[table] = len(rows)
      inserted[table] = _insert(cur, table, rows, chunk_rows, same_row)
  with connection, connection.cursor() as cur:
    for table in inserted:  # fresh statistics for the export's plans
      cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
  elapsed = time.time() - started
  swipes = given[interactions.table]
  log("seed: inserted %s in %.1fs (%s rows/s of %s)" % (
      ", ".join(f"{inserted[t]:,} of {given[t]:,} {t}" for t in inserted), elapsed,
      f"{swipes / max(elapsed, 1e-9):,.0f}", interactions.table))
  return inserted
