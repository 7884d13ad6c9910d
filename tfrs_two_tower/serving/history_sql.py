"""The query tower's history inputs read from the app's swipes table, in SQL.

With a `history` section the query embedding depends on the user's latest
swipes, so a published query embedding goes stale as soon as the user swipes
again. The app (or an edge function) then computes the query embedding at
request time -- the Core ML query tower on the phone, or the query SavedModel --
from the profile plus the lists this SQL returns, and passes it to
`recommend(..., query_embedding => ...)`.

For one list (e.g. `liked`: the actions of label 1) the SQL returns the same
list as the export's history (`data/history.py`) at the moment of the call:

  the candidates of the user's latest swipe per pair (ties at the same time:
  the greatest action, as the export deduplicates) whose action is in the list,
  most recent first, the last `max_length` of them.

Index-friendly: each list is one range scan of an index on
(query id column, timestamp column, candidate id column) read backwards from the
newest swipe (the order of the list, ties included: no sort) and stopped after
`max_length` rows of the list; each row's "no later swipe of the pair" check
probes an index on (query id column, candidate id column, ...). `index_statement`
gives the first index for any config.
"""

from typing import Dict, Optional

from psycopg2 import sql

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.serving import schema_sql

INDEX_NAME = "tt_history_swiper_time_idx"


def list_actions(config: config_lib.Config, name: str) -> sql.Composable:
  """`'a', 'b'`: the action values of one history list (its label in config.HISTORY_LISTS)."""
  label = config_lib.HISTORY_LISTS[name]
  return sql.SQL(", ").join(sql.Literal(a.name) for a in config.interactions.actions
                            if a.label == label)


def query_history(config: config_lib.Config, fields: Dict[str, sql.Composable],
                  swiper_type: str) -> sql.Composable:
  """SELECT (input_name text, candidate_ids text[]) rows for user `$1`, one per list.

  Args:
    fields: `schema_sql.interaction_fields` (quoted identifiers of the swipes table).
    swiper_type: SQL type of the query id column (`$1` is cast to it, so the
      index on that column can be used).
  Returns:
    A statement for a SQL function body; with no `history` in the config, one
    that returns no rows.
  """
  history = config.history
  if not history:
    return sql.SQL("SELECT NULL::text, NULL::text[] WHERE false")
  selects = []
  for name in history.lists:
    selects.append(sql.SQL(
        "SELECT {input}::text, ARRAY(\n"
        "    SELECT s.{swipee}::text FROM {interactions} s\n"
        "    WHERE s.{swiper} = $1::{swiper_type} AND s.{action} IN ({actions})\n"
        "      AND NOT EXISTS (SELECT 1 FROM {interactions} l\n"
        "                      WHERE l.{swiper} = s.{swiper} AND l.{swipee} = s.{swipee}\n"
        "                        AND (l.{swiped_at} > s.{swiped_at}\n"
        "                             OR (l.{swiped_at} = s.{swiped_at}\n"
        "                                 AND l.{action} COLLATE \"C\" > s.{action} COLLATE \"C\")))\n"
        "    ORDER BY s.{swiped_at} DESC, s.{swipee} DESC\n"
        "    LIMIT {n})").format(
            input=sql.Literal(history.key(name)), swipee=fields["swipee"],
            swiper=fields["swiper"], action=fields["action"], swiped_at=fields["swiped_at"],
            interactions=fields["interactions"], swiper_type=sql.SQL(swiper_type),
            actions=list_actions(config, name), n=sql.Literal(history.max_length)))
  return sql.SQL("\nUNION ALL\n").join(selects)


def index_statement(config: config_lib.Config) -> Optional[sql.Composable]:
  """CREATE INDEX CONCURRENTLY on (query id, timestamp, candidate id) of the swipes table.

  None when the config's interactions are a query (`interactions.sql`): index the
  table behind it the same way. CONCURRENTLY does not block the app's writes but
  cannot run inside a transaction (use an autocommit connection).
  """
  cfg = config.interactions
  if cfg.sql:
    return None
  return sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({}, {}, {})").format(
      sql.Identifier(INDEX_NAME), schema_sql.source(cfg.table, None),
      sql.Identifier(cfg.query_id_column), sql.Identifier(cfg.timestamp_column),
      sql.Identifier(cfg.candidate_id_column))
