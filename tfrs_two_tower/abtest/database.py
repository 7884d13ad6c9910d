"""PostgreSQL side of the A/B framework: schema, experiment rows, exposures, snapshots.

All reads of one analysis happen in ONE `REPEATABLE READ READ ONLY`
transaction, so the experiment row, the exposures and the outcomes come from
the same snapshot even while the app keeps writing swipes.
"""

import io
import json
from typing import Sequence, Tuple

import numpy as np
import pandas as pd
from psycopg2 import sql

from tfrs_two_tower import config as config_lib

from tfrs_two_tower.abtest import assignment
from tfrs_two_tower.abtest import definition as definition_lib
from tfrs_two_tower.abtest import metrics as metrics_lib
from tfrs_two_tower.data import sources
from tfrs_two_tower.serving import schema_sql


def install_schema(conn, config: config_lib.Config) -> None:
  """Creates the ab_* functions, tables and views (idempotent), in one transaction.

  The outcome views read the config's interactions table (or query) and count
  the actions of label 1 as likes (sql/abtest.sql is a template).
  Raises:
    schema_sql.SchemaSQLError naming the config key of a column that cannot be read.
  """
  text = schema_sql.render(conn, "abtest.sql", schema_sql.interaction_fields(conn, config))
  conn.rollback()  # the probes' read-only transaction
  schema_sql.execute_in_transaction(conn, [text])


def create_experiment(conn, definition: definition_lib.Definition) -> None:
  """Inserts the `ab_experiments` row; an existing name is an error."""
  row = definition.row()
  with conn.cursor() as cur:
    cur.execute("SELECT 1 FROM ab_experiments WHERE name = %s", (row["name"],))
    if cur.fetchone():
      raise ValueError(f"experiment {row['name']!r} already exists in ab_experiments")
    cur.execute(
        "INSERT INTO ab_experiments (name, salt, arms, starts_at, ends_at, primary_metric, "
        "guardrails, pre_period, planned_users_per_arm) VALUES (%(name)s, %(salt)s, "
        "%(arms)s::jsonb, %(starts_at)s, %(ends_at)s, %(primary_metric)s, %(guardrails)s::jsonb, "
        "%(pre_period)s::interval, %(planned_users_per_arm)s)", row)
  conn.commit()


def log_exposures(conn, experiment: str, user_ids: Sequence[str], times: Sequence) -> None:
  """Logs exposures through `ab_log_exposure` (the arm comes from the SQL assignment)."""
  times = pd.to_datetime(pd.Series(times), utc=True)
  with conn.cursor() as cur:
    cur.execute("SELECT count(ab_log_exposure(%s, u, t)) FROM unnest(%s::text[], "
                "%s::timestamptz[]) AS x(u, t)",
                (experiment, [str(u) for u in user_ids], [t.isoformat() for t in times]))
  conn.commit()


def copy_swipes(conn, swipes: pd.DataFrame, config: config_lib.Config) -> None:
  """Appends swipes (a frame of swiper_id, swipee_id, action, created_at) with COPY into the
  config's interactions table."""
  cfg = config.interactions
  buffer = io.StringIO()
  frame = swipes[["swiper_id", "swipee_id", "action"]].copy()
  frame["created_at"] = pd.to_datetime(swipes["created_at"], utc=True).map(
      lambda t: t.isoformat())
  frame.to_csv(buffer, index=False, header=False)
  buffer.seek(0)
  with conn.cursor() as cur:
    cur.copy_expert(sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
        sql.Identifier(cfg.table), sql.SQL(", ").join(map(sql.Identifier, (
            cfg.query_id_column, cfg.candidate_id_column, cfg.action_column,
            cfg.timestamp_column)))).as_string(conn), buffer)
  conn.commit()


def _definition_from_row(row) -> definition_lib.Definition:
  (name, salt, arms, starts_at, ends_at, primary_metric, guardrails, pre_seconds,
   planned) = row
  arms = arms if isinstance(arms, list) else json.loads(arms)
  guardrails = guardrails if isinstance(guardrails, list) else json.loads(guardrails)
  experiment = assignment.Experiment(name, salt, tuple((a["name"], int(a["buckets"]))
                                                       for a in arms))
  return definition_lib.Definition(
      experiment, starts_at, ends_at, primary_metric, tuple(guardrails),
      float(pre_seconds) / 86400, planned)


def read_snapshot(conn, experiment: str, config: config_lib.Config
                  ) -> Tuple[definition_lib.Definition, pd.DataFrame, int, pd.Timestamp]:
  """Reads one consistent snapshot of an experiment (rolls back an open transaction of conn).

  Returns:
    (definition, per-user outcomes (the ab_user_outcomes view), number of
    exposures whose logged arm differs from ab_assign, snapshot time).
  Raises:
    ValueError when the experiment does not exist; sources.UnknownActionError
    (as the export) when the interactions hold action values the config does
    not map (the ab_unknown_actions view).
  """
  autocommit = conn.autocommit
  conn.rollback()
  conn.autocommit = False
  try:
    with conn.cursor() as cur:
      # First statement of the transaction: every read below sees one snapshot.
      cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
      cur.execute("SELECT now()")
      snapshot_at = pd.Timestamp(cur.fetchone()[0]).tz_convert("UTC")
      cur.execute("SELECT name, salt, arms, starts_at, ends_at, primary_metric, guardrails, "
                  "extract(epoch FROM pre_period), planned_users_per_arm "
                  "FROM ab_experiments WHERE name = %s", (experiment,))
      row = cur.fetchone()
      if row is None:
        cur.execute("SELECT name FROM ab_experiments ORDER BY name")
        known = [r[0] for r in cur.fetchall()]
        raise ValueError(f"experiment {experiment!r} not found in ab_experiments "
                         f"(known: {known})")
      definition = _definition_from_row(row)
      cur.execute("SELECT coalesce(action, 'NULL'), interactions FROM ab_unknown_actions")
      sources.check_actions(config, dict(cur.fetchall()), f"table {config.interactions.table!r}")
      columns = ("user_id", "arm", "first_exposed_at") + metrics_lib.OUTCOME_COLUMNS \
          + metrics_lib.PRE_COLUMNS
      cur.execute(f"SELECT {', '.join(columns)} FROM ab_user_outcomes WHERE experiment = %s "
                  "ORDER BY user_id", (experiment,))
      outcomes = pd.DataFrame(cur.fetchall(), columns=list(columns))
      cur.execute("SELECT count(*) FROM ab_assignment_mismatches WHERE experiment = %s",
                  (experiment,))
      mismatches = int(cur.fetchone()[0])
  finally:
    conn.rollback()  # read-only: nothing to commit
    conn.autocommit = autocommit
  for c in metrics_lib.OUTCOME_COLUMNS + metrics_lib.PRE_COLUMNS:
    outcomes[c] = outcomes[c].astype(np.int64)
  outcomes["first_exposed_at"] = pd.to_datetime(outcomes["first_exposed_at"], utc=True)
  return definition, outcomes, mismatches, snapshot_at
