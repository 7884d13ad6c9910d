"""The app's schema as SQL: the config's tables, columns and values, quoted, in SQL templates.

The SQL files under `sql/` (recommend.sql, abtest.sql) name no table, column or
value of any schema: they hold `{placeholders}` that `render` fills from the
config with `psycopg2.sql` (identifiers quoted with `Identifier`, values with
`Literal`). A source is a table (`table`) or, when the config gives one, a query
(`sql`) used as a subquery. Before anything is installed, `probe` reads each
column the config names (`SELECT col FROM source LIMIT 0`) so that a column or
table that does not exist is reported by its config key, not by PostgreSQL
half-way through an install.
"""

import os
from typing import Dict, Optional, Sequence

from psycopg2 import errors as pg_errors
from psycopg2 import sql

from tfrs_two_tower import config as config_lib

SQL_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "sql")
# Function bodies in the templates are dollar-quoted with this tag; a rendered
# value containing it would end the body early, so render refuses it.
BODY_TAG = "$tt_body$"


class SchemaSQLError(ValueError):
  """The config does not fit the database; the message names the config key."""


def source(table: str, query: Optional[str]) -> sql.Composable:
  """A FROM item: the quoted table, or the config's query as a subquery."""
  if query:
    return sql.SQL("({})").format(sql.SQL(query.strip().rstrip(";")))
  return sql.Identifier(table)


def entity_source(entity: config_lib.Entity) -> sql.Composable:
  return source(entity.table, entity.sql)


def interactions_source(config: config_lib.Config) -> sql.Composable:
  return source(config.interactions.table, config.interactions.sql)


def probe(conn, from_item: sql.Composable, column: str, key: str) -> str:
  """The SQL type of `column` in `from_item` (e.g. 'uuid', 'text[]').

  Raises:
    SchemaSQLError naming `key` (the config key that names the column) when the
    column or its table does not exist, or the query fails.
  """
  # A failed statement aborts the transaction; the savepoint keeps the caller's usable
  # (an autocommit connection has no transaction to keep).
  savepoint = not conn.autocommit
  with conn.cursor() as cur:
    if savepoint:
      cur.execute("SAVEPOINT tt_probe")
    try:
      cur.execute(sql.SQL("SELECT t.{} FROM {} AS t LIMIT 0").format(
          sql.Identifier(column), from_item))
      oid = cur.description[0].type_code
      cur.execute("SELECT format_type(%s, NULL)", (oid,))
      type_name = cur.fetchone()[0]
    except pg_errors.Error as e:
      if savepoint:
        cur.execute("ROLLBACK TO SAVEPOINT tt_probe")
      detail = (e.pgerror or str(e)).strip().splitlines()[0]
      raise SchemaSQLError(f"config {key}: column {column!r} cannot be read from "
                           f"{from_item.as_string(conn)}: {detail}") from None
    if savepoint:
      cur.execute("RELEASE SAVEPOINT tt_probe")
  return type_name


def positive_actions(config: config_lib.Config) -> sql.Composable:
  """`'a', 'b'`: the action values of label 1 (interactions.actions), for `IN (...)`."""
  return sql.SQL(", ").join(sql.Literal(a.name) for a in config.interactions.actions
                            if a.label == 1)


def interaction_fields(conn, config: config_lib.Config) -> Dict[str, sql.Composable]:
  """Placeholders of the interactions table, every column probed first."""
  cfg = config.interactions
  from_item = interactions_source(config)
  for key in ("query_id_column", "candidate_id_column", "action_column", "timestamp_column"):
    probe(conn, from_item, getattr(cfg, key), f"interactions.{key}")
  return {"interactions": from_item,
          "swiper": sql.Identifier(cfg.query_id_column),
          "swipee": sql.Identifier(cfg.candidate_id_column),
          "action": sql.Identifier(cfg.action_column),
          "swiped_at": sql.Identifier(cfg.timestamp_column),
          "positive_actions": positive_actions(config),
          "known_actions": sql.SQL(", ").join(sql.Literal(a.name) for a in cfg.actions)}


def render(conn, template_name: str, fields: Dict[str, sql.Composable]) -> str:
  """The template `sql/<template_name>` with `{name}` filled by `fields` (quoted SQL)."""
  with open(os.path.join(SQL_DIR, template_name), encoding="utf-8") as f:
    template = f.read()
  text = sql.SQL(template).format(**fields).as_string(conn)
  if text.count(BODY_TAG) != template.count(BODY_TAG):
    raise SchemaSQLError(f"a config value contains {BODY_TAG!r}, which SQL function bodies "
                         "are quoted with; rename it")
  return text


def execute_in_transaction(conn, statements: Sequence[str]) -> None:
  """Runs the statements in one transaction: all of them, or nothing on any error."""
  try:
    with conn.cursor() as cur:
      for statement in statements:
        cur.execute(statement)
  except Exception:
    conn.rollback()
    raise
  conn.commit()
