"""Reads the config's tables from PostgreSQL (Supabase) for `sources.export`.

Everything happens in one `REPEATABLE READ READ ONLY` transaction, so the
audit, the split time, the entity tables and the interactions all see the same
snapshot: swipes committed while the export streams are not in it. Interactions
stream through a server-side (named) cursor, `chunk_size` rows at a time;
deduplication (latest swipe per pair) and time order are done by the server.

Identifiers from the config are quoted with `psycopg2.sql.Identifier` (a
"table" called `swipes; DROP TABLE profiles` is just a table that does not
exist); values are query parameters. A config `sql` (entity or interactions)
replaces the table: it is the user's own SQL and runs as a subquery.

The connection retry (`connect`) is a plain loop rather than `tenacity` or
`backoff`: it must tell a refused login and a missing database (fail at once)
from an unreachable server (retry), redact the password from every message and
name the flags in the final error, which leaves a retry library only the
doubling sleep of a ten-line loop.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import pandas as pd
import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from tfrs_two_tower import config as config_lib
from tfrs_two_tower import files
from tfrs_two_tower.data import sources
from tfrs_two_tower.data import timestamps

URL_ENV_VARS = ("SUPABASE_DB_URL", "DATABASE_URL")
LOCAL_HOSTS = ("", "localhost", "127.0.0.1", "::1")
_AUTH_MARKERS = ("password authentication failed", "authentication failed", "no password supplied",
                 "fe_sendauth", "no pg_hba.conf entry", "role \"", "permission denied")


class MissingUrlError(sources.ExportError):
  """No --db_url and no SUPABASE_DB_URL/DATABASE_URL: a usage error."""
  exit_code = 2


def read_env_file(path: str) -> Dict[str, str]:
  """KEY=VALUE lines of a .env file (comments, `export ` and quotes allowed); {} if absent."""
  if not path or not os.path.exists(path):
    return {}
  out = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith("#") or "=" not in line:
        continue
      key, _, value = line.removeprefix("export ").partition("=")
      value = value.strip()
      if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
      out[key.strip()] = value
  return out


def resolve_url(db_url: Optional[str], env_file: Optional[str] = ".env",
                environ: Mapping[str, str] = os.environ) -> Tuple[str, str]:
  """The database URL and where it came from: --db_url, else the environment, else .env."""
  if db_url:
    return db_url, "--db_url"
  for name in URL_ENV_VARS:
    if environ.get(name):
      return environ[name], f"${name}"
  dotenv = read_env_file(env_file) if env_file else {}
  for name in URL_ENV_VARS:
    if dotenv.get(name):
      return dotenv[name], f"{name} in {env_file}"
  raise MissingUrlError(f"no database URL: pass --db_url or set {' or '.join(URL_ENV_VARS)} in "
                        f"the environment or in {env_file or 'a .env file'} (see .env.example)")


def is_local(host: Optional[str]) -> bool:
  """True for unix sockets and loopback hosts (every host of a multi-host list)."""
  hosts = (host or "").split(",")
  return all(h.strip().startswith("/") or h.strip() in LOCAL_HOSTS for h in hosts)


def connection_params(url: str) -> Dict[str, str]:
  """libpq parameters of `url`; `sslmode=require` added for non-local hosts without one."""
  try:
    params = psycopg2.extensions.parse_dsn(url)
  except psycopg2.ProgrammingError as e:
    raise MissingUrlError(f"invalid database URL {sources.redact(url)}: "
                          f"{sources.redact(e)}") from None
  if "sslmode" not in params and not is_local(params.get("host")):
    params["sslmode"] = "require"
  params.setdefault("connect_timeout", "10")
  params.setdefault("application_name", "tfrs_two_tower export")
  return params


def describe_url(params: Mapping[str, str]) -> str:
  """user@host:port/dbname?sslmode=... without the password."""
  host = params.get("host") or "localhost"
  port = f":{params['port']}" if params.get("port") else ""
  ssl = f"?sslmode={params['sslmode']}" if params.get("sslmode") else ""
  return f"postgresql://{params.get('user', '')}@{host}{port}/{params.get('dbname', '')}{ssl}"


def connect(url: str, retries: int = 3, backoff_seconds: float = 1.0,
            log: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep):
  """Connects, retrying an unreachable server `retries` times (backoff doubling).

  Raises:
    AuthenticationError at once for a refused login (retrying cannot help).
    UnreachableError after the last attempt.
  """
  params = connection_params(url)
  secrets = [params.get("password", "")]
  where = describe_url(params)
  delay = backoff_seconds
  for attempt in range(retries + 1):
    try:
      return psycopg2.connect(**params)
    except psycopg2.OperationalError as e:
      message = sources.redact(str(e).strip(), secrets)
      if any(marker in message for marker in _AUTH_MARKERS):
        raise sources.AuthenticationError(
            f"{where}: authentication failed: {message} (check the user and password in "
            "--db_url / SUPABASE_DB_URL)") from None
      if "does not exist" in message:
        raise sources.UnreachableError(f"{where}: {message}") from None
      if attempt == retries:
        raise sources.UnreachableError(
            f"{where}: database unreachable after {retries + 1} attempts: {message}") from None
      log(f"export: {where} unreachable ({message.splitlines()[0]}); retry "
          f"{attempt + 1}/{retries} in {delay:.1f}s")
      sleep(delay)
      delay *= 2


def partition_sql(column: sql.Composable, partition: sources.Partition) -> sql.Composable:
  """SQL twin of `sources.partition_of`.

  NULL ids fall in every partition, so that every partition's audit reports them.
  """
  if partition.whole:
    return sql.SQL("TRUE")
  return sql.SQL("({c} IS NULL OR mod(('x' || lpad(substr(md5({c}::text), 1, 8), 16, '0'))"
                 "::bit(64)::bigint, {n}) = {i})").format(c=column, n=sql.Literal(partition.count),
                                        i=sql.Literal(partition.index))


def _relation(name: str, query: Optional[str]) -> sql.Composable:
  if query:
    return sql.SQL("(") + sql.SQL(query.strip().rstrip(";")) + sql.SQL(")")
  return sql.Identifier(*name.split("."))


class PostgresSource:
  """The config's tables in one read-only snapshot; a context manager.

  Times leave the database as int64 unix seconds (converted in SQL, numeric
  columns by the config's `interactions.timestamp_unit`), hence `timestamp_unit`.
  """

  timestamp_unit = "s"

  def __init__(self, config: config_lib.Config, url: str, *, connect_retries: int = 3,
               retry_backoff_seconds: float = 1.0, lock_timeout_seconds: float = 60.0,
               log: Callable[[str], None] = print):
    self.config, self.log = config, log
    self._url, self._retries, self._backoff = url, connect_retries, retry_backoff_seconds
    self.lock_timeout_seconds = lock_timeout_seconds  # 0: wait for locks forever
    params = connection_params(url)
    self._secrets = [params.get("password", "")]
    self.description: Dict[str, Any] = {"kind": "postgres", "url": describe_url(params),
                                        "label": describe_url(params)}
    self._conn = None
    self._types: Dict[str, Dict[str, Tuple[str, str]]] = {}

  # -- connection ------------------------------------------------------------------
  def __enter__(self) -> "PostgresSource":
    self._conn = connect(self._url, self._retries, self._backoff, self.log)
    self._conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    with self._conn.cursor() as cur:
      # The snapshot is taken by the first statement; everything below shares it.
      # Between FETCHes the session is idle in transaction while the writer works.
      cur.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
      cur.execute("SET LOCAL work_mem = '64MB'")  # dedup and time order sort in memory
      # A migration's ACCESS EXCLUSIVE lock would block every read without a word.
      cur.execute("SET LOCAL lock_timeout = %s", (f"{round(self.lock_timeout_seconds * 1000)}ms",))
      cur.execute("SELECT now(), pg_current_snapshot()::text, current_setting('server_version')")
      now, snapshot, version = cur.fetchone()
    self.description.update(snapshot={"isolation": "REPEATABLE READ READ ONLY",
                                      "taken_at": now.isoformat(), "txid_snapshot": snapshot},
                            server_version=version)
    return self

  def __exit__(self, *exc) -> None:
    if self._conn is not None:
      try:
        self._conn.rollback()
      finally:
        self._conn.close()
        self._conn = None

  @contextlib.contextmanager
  def _waiting(self, what: str) -> Iterator[None]:
    """Logs every few seconds while a statement runs (it may be waiting for a lock)."""
    every = min(10.0, self.lock_timeout_seconds / 2) if self.lock_timeout_seconds else 10.0
    started, done = time.time(), threading.Event()

    def report():
      while not done.wait(every):
        self.log(f"export: still waiting for {what} after {time.time() - started:.0f}s (a "
                 "lock held by another session, e.g. a migration, blocks reads; giving up "
                 + (f"after --lock_timeout={self.lock_timeout_seconds:g}s)"
                    if self.lock_timeout_seconds else "never: --lock_timeout=0)"))

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    try:
      yield
    finally:
      done.set()
      thread.join()

  def _execute(self, query: sql.Composable, params=None, what: str = "query") -> List[tuple]:
    try:
      with self._conn.cursor() as cur, self._waiting(what):
        cur.execute(query, params)
        return cur.fetchall()
    except psycopg2.Error as e:
      raise self._translate(e, what) from None

  def _translate(self, error: psycopg2.Error, what: str) -> sources.ExportError:
    message = sources.redact(str(error).strip(), self._secrets)
    if isinstance(error, psycopg2.errors.LockNotAvailable):
      return sources.LockTimeoutError(
          f"{what}: waited --lock_timeout={self.lock_timeout_seconds:g}s for a table another "
          f"session holds locked ({message}); run the export again later, or raise --lock_timeout")
    if isinstance(error, psycopg2.errors.InsufficientPrivilege):
      return sources.AuthenticationError(f"{what}: {message} (grant SELECT on the config's "
                                         "tables to the export role)")
    if isinstance(error, (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn,
                          psycopg2.errors.InvalidSchemaName)):
      return sources.MissingTableError(f"{what}: {message}")
    if isinstance(error, psycopg2.OperationalError):
      return sources.UnreachableError(f"{what}: connection lost: {message}")
    return sources.ExportError(f"{what}: {message}")

  # -- schema: relations, columns, types ----------------------------------------------
  def _kind_relation(self, kind: str) -> Tuple[sql.Composable, str, str]:
    """(relation SQL, description, config key) of "interactions" or a side."""
    if kind == "interactions":
      section, key = self.config.interactions, "interactions"
    else:
      section = self.config.entity(kind)
      key = f"entities.{section.name}"
    if section.sql:
      return _relation(section.table, section.sql), f"config {key}.sql", f"{key}.sql"
    return _relation(section.table, None), f"table {section.table!r}", f"{key}.table"

  def _column_types(self, kind: str) -> Dict[str, Tuple[str, str]]:
    """Column -> (type name, typcategory) of a kind's relation; checks presence and types."""
    if kind in self._types:
      return self._types[kind]
    relation, where, key = self._kind_relation(kind)
    try:
      with self._conn.cursor() as cur, self._waiting(where):
        cur.execute(sql.SQL("SELECT * FROM {} AS r LIMIT 0").format(relation))
        columns = [(d.name, d.type_code) for d in cur.description]
    except psycopg2.errors.UndefinedTable as e:
      raise sources.MissingTableError(
          f"{where} does not exist (config {key}): {sources.redact(str(e).strip().splitlines()[0])}"
      ) from None
    except psycopg2.Error as e:
      raise self._translate(e, f"{where} (config {key})") from None
    sources.check_columns_present(self.config, kind, [c for c, _ in columns], where)
    oids = sorted({oid for _, oid in columns})
    names = {oid: (name, cat) for oid, name, cat in self._execute(
        sql.SQL("SELECT oid, format_type(oid, NULL), typcategory FROM pg_type "
                "WHERE oid = ANY(%s)"), (oids,), "pg_type")}
    types = {c: names.get(oid, (str(oid), "X")) for c, oid in columns}
    sources.check_column_types(self.config, kind, {c: t[1] for c, t in types.items()},
                               {c: t[0] for c, t in types.items()}, where)
    self._types[kind] = types
    return types

  def _cast(self, kind: str, column: str, role: str) -> sql.Composable:
    """`column` converted to what the writer expects, aliased to its own name.

    Roles: text (ids, categories, actions), time (-> int64 unix seconds),
    list (text[] or text), number (float8; booleans stay boolean).
    """
    category = self._column_types(kind)[column][1]
    ident = sql.Identifier(column)
    if role == "time" and category == "D":
      expr = sql.SQL("floor(extract(epoch FROM r.{}))::bigint").format(ident)
    elif role == "time":
      unit = self.config.interactions.timestamp_unit
      if unit is None:
        raise sources.ColumnTypeError(
            f"{self._kind_relation(kind)[1]}: column {column!r} holds numbers; set "
            f"interactions.timestamp_unit to one of {list(config_lib.TIMESTAMP_UNITS)} in the "
            "config (unix seconds are about 1.7e9 today, milliseconds 1.7e12)")
      per_second = round(1 / timestamps.SECONDS_PER_UNIT[unit])
      expr = sql.SQL("floor(r.{}::numeric / {})::bigint").format(ident, sql.Literal(per_second))
    elif role == "list":
      expr = sql.SQL("r.{}::text[]" if category == "A" else "r.{}::text").format(ident)
    elif role == "number":
      expr = sql.SQL("r.{}" if category == "B" else "r.{}::float8").format(ident)
    else:
      expr = sql.SQL("r.{}::text").format(ident)
    return expr

  # -- audit ----------------------------------------------------------------------------------
  def _interactions_sql(self) -> sql.Composable:
    """SELECT q, c, a, ts[, w] over the interactions relation (no dedup, no partition).

    The ids keep their own type (a uuid sorts and hashes much faster than its
    text); they become text on the way out.
    """
    cfg = self.config.interactions
    relation, _, _ = self._kind_relation("interactions")
    parts = [sql.SQL("r.{} AS q").format(sql.Identifier(cfg.query_id_column)),
             sql.SQL("r.{} AS c").format(sql.Identifier(cfg.candidate_id_column)),
             sql.SQL("{} AS a").format(self._cast("interactions", cfg.action_column, "text")),
             sql.SQL("{} AS ts").format(self._cast("interactions", cfg.timestamp_column, "time"))]
    if cfg.weight_column:
      parts.append(sql.SQL("{} AS w").format(self._cast("interactions", cfg.weight_column,
                                                          "number")))
    return sql.SQL("SELECT {} FROM {} AS r").format(sql.SQL(", ").join(parts), relation)

  def _entity_ids_sql(self, side: str) -> sql.Composable:
    relation, _, _ = self._kind_relation(side)
    return sql.SQL("SELECT {} AS id FROM {} AS r").format(
        self._cast(side, self.config.entity(side).id_column, "text"), relation)

  def audit(self, partition: sources.Partition) -> sources.InteractionAudit:
    cfg = self.config.interactions
    for kind in ("query", "candidate", "interactions"):
      self._column_types(kind)
    entities = {}
    for side in ("query", "candidate"):
      (rows, null_ids), = self._execute(
          sql.SQL("SELECT count(*), count(*) FILTER (WHERE id IS NULL) FROM ({}) AS e").format(
              self._entity_ids_sql(side)), what=f"{self.config.entity(side).table} ids")
      if null_ids:
        raise sources.NullValueError(
            f"{self.description['label']}: {null_ids} rows of the {side} entity table have a "
            f"NULL {self.config.entity(side).id_column!r} (config entities."
            f"{self.config.entity(side).name}.id_column)")
      entities[side] = rows
    src = sql.SQL("WITH src AS ({}) ").format(self._interactions_sql())
    where = partition_sql(sql.SQL("q"), partition)
    groups = self._execute(src + sql.SQL(
        "SELECT a, count(*), count(*) FILTER (WHERE q IS NULL), count(*) FILTER (WHERE c IS "
        "NULL), count(*) FILTER (WHERE ts IS NULL) FROM src WHERE {} GROUP BY a").format(where),
        what="interactions audit")
    nulls = {cfg.query_id_column: 0, cfg.candidate_id_column: 0, cfg.action_column: 0,
             cfg.timestamp_column: 0}
    actions = {}
    for action, n, null_q, null_c, null_ts in groups:
      nulls[cfg.query_id_column] += null_q
      nulls[cfg.candidate_id_column] += null_c
      nulls[cfg.timestamp_column] += null_ts
      if action is None:
        nulls[cfg.action_column] += n
      else:
        actions[action] = n
    missing, examples = {}, {}
    for side, column in (("query", "q"), ("candidate", "c")):
      absent = sql.SQL("FROM src WHERE {w} AND src.{c} IS NOT NULL AND NOT EXISTS "
                       "(SELECT 1 FROM ({ids}) AS e WHERE e.id = src.{c}::text)").format(
                           w=where, c=sql.Identifier(column), ids=self._entity_ids_sql(side))
      (missing[side],), = self._execute(src + sql.SQL("SELECT count(*) ") + absent,
                                        what="missing entities")
      examples[side] = [r[0] for r in self._execute(
          src + sql.SQL("SELECT DISTINCT src.{}::text ").format(sql.Identifier(column)) + absent
          + sql.SQL(" LIMIT 3"), what="missing entities")] if missing[side] else []
    return sources.InteractionAudit(rows=sum(n for _, n, *_ in groups), nulls=nulls,
                                    actions=actions, missing=missing, missing_examples=examples,
                                    entities=entities)

  def split_time(self, eval_fraction: float, before: Optional[int] = None) -> int:
    """The time leaving the last `eval_fraction` of deduplicated interactions (all partitions),
    counting only those before `before` (unix seconds) when given."""
    sources.split_index(2, eval_fraction)  # validates eval_fraction
    rows = self._execute(sql.SQL(
        "WITH src AS ({}) SELECT ts FROM (SELECT ts, row_number() OVER (ORDER BY ts) - 1 AS i, "
        "count(*) OVER () AS n FROM (SELECT max(ts) AS ts FROM src GROUP BY q, c) AS latest "
        "WHERE ts < %s) t WHERE i = ceil((n - 1)::float8 * %s::float8)").format(
            self._interactions_sql()),
        (2**62 if before is None else int(before), 1.0 - eval_fraction), what="split time")
    if not rows:
      raise sources.EmptyResultError(f"{self.description['label']}: no interactions")
    return int(rows[0][0])

  def blocked_pairs(self) -> Optional[pd.DataFrame]:
    """The config's eligibility.blocked pairs (table or query), ids as text; None without."""
    rules = self.config.eligibility
    if rules is None or rules.blocked is None:
      return None
    b = rules.blocked
    columns = [b.query_id_column, b.candidate_id_column]
    query = sql.SQL("SELECT {} FROM {} AS r").format(
        sql.SQL(", ").join(sql.SQL("r.{}::text").format(sql.Identifier(c)) for c in columns),
        _relation(b.table, b.sql))
    what = f"config eligibility.blocked ({b.table or 'sql'})"
    return pd.DataFrame.from_records(self._execute(query, what=what), columns=columns)

  # -- reading ----------------------------------------------------------------------------------
  def _stream(self, query: sql.Composable, columns: List[str], chunk_size: int,
              name: str) -> Iterator[pd.DataFrame]:
    """Rows of `query` through a named (server-side) cursor, `chunk_size` at a time."""
    try:
      with self._conn.cursor(name=name) as cur:
        cur.itersize = chunk_size
        with self._waiting(name):
          cur.execute(query)
        while True:
          rows = cur.fetchmany(chunk_size)
          if not rows:
            return
          yield pd.DataFrame.from_records(rows, columns=columns)
    except psycopg2.Error as e:
      raise self._translate(e, name) from None

  def entities(self, side: str) -> pd.DataFrame:
    """The raw entity table of a side: config columns only, converted by type."""
    entity = self.config.entity(side)
    roles = {entity.id_column: "text"}
    if entity.created_at_column:
      roles[entity.created_at_column] = "time"
    kinds = {"id": "text", "categorical": "text", "multi_categorical": "list",
             "numeric": "number", "geo": "number"}
    for feature in entity.features:
      for column in feature.columns:
        roles.setdefault(column, kinds[feature.type])
    for column, role in entity.attributes:  # read by the serving rules only
      roles.setdefault(column, role)
    relation, _, _ = self._kind_relation(side)
    # Ordered by id so that two exports of the same data write identical files.
    query = sql.SQL("SELECT {} FROM {} AS r ORDER BY r.{}").format(
        sql.SQL(", ").join(sql.SQL("{} AS {}").format(self._cast(side, c, role),
                                                      sql.Identifier(c))
                           for c, role in roles.items()), relation,
        sql.Identifier(entity.id_column))
    chunks = list(self._stream(query, list(roles), 50_000, f"tfrs_export_{side}_entities"))
    return pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=list(roles))

  def impressions(self) -> Optional[Tuple[Iterator[pd.DataFrame], str]]:
    """(the impressions log's rows in chunks, where it came from) per config `impressions`
    (table or sql), or None when the table does not exist. Ids as text. Streamed
    through a server-side cursor: a big log never sits whole in memory."""
    cfg = self.config.impressions
    if not cfg.sql and self._execute(sql.SQL("SELECT to_regclass(%s) IS NULL"), (cfg.table,),
                                     "impressions table")[0][0]:
      return None
    names = cfg.columns
    casts = {"feed_id": "::text", "query_id": "::text", "candidate_id": "::text"}
    select = sql.SQL(", ").join(sql.SQL("r.{}{} AS {}").format(
        sql.Identifier(column), sql.SQL(casts.get(role, "")), sql.Identifier(column))
        for role, column in names.items())
    query = sql.SQL("SELECT {} FROM {} AS r ORDER BY r.{}, r.{}").format(
        select, _relation(cfg.table, cfg.sql), sql.Identifier(names["timestamp"]),
        sql.Identifier(names["feed_id"]))
    chunks = self._stream(query, list(names.values()), 100_000, "tfrs_export_impressions")
    return chunks, (f"{self.description['label']} config impressions.sql" if cfg.sql
                   else f"{self.description['label']} table {cfg.table!r}")

  def interaction_chunks(self, chunk_size: int,
                         partition: sources.Partition) -> Iterator[pd.DataFrame]:
    """Deduplicated interactions (latest per pair; ties: greatest action), in time order."""
    cfg = self.config.interactions
    names = cfg.columns
    inner = ["q", "c", "a", "ts"] + (["w"] if cfg.weight_column else [])
    select = sql.SQL(", ").join(
        sql.SQL("latest.{}{} AS {}").format(sql.Identifier(i),
                                            sql.SQL("::text" if i in ("q", "c") else ""),
                                            sql.Identifier(n))
        for i, n in zip(inner, names))
    # COLLATE "C": ties keep the greatest action in code point order, as in Python.
    query = sql.SQL(
        "WITH src AS ({src}) SELECT {select} FROM (SELECT DISTINCT ON (q, c) {inner} FROM src "
        "WHERE {where} ORDER BY q, c, ts DESC, a COLLATE \"C\" DESC) AS latest "
        "ORDER BY latest.ts, latest.q, latest.c").format(
            src=self._interactions_sql(), select=select,
            inner=sql.SQL(", ").join(map(sql.Identifier, inner)),
            where=partition_sql(sql.SQL("q"), partition))
    yield from self._stream(query, names, chunk_size, "tfrs_export_interactions")


@contextlib.contextmanager
def embedded_postgres(data_dir: Optional[str] = None,
                      log: Callable[[str], None] = print) -> Iterator[str]:
  """Starts pgserver (PostgreSQL 16 + pgvector) and yields its URI; stops it on exit.

  With `data_dir` the data persists there (the pipeline's demo database);
  without, a temporary directory is used and removed afterwards.
  """
  import pgserver
  temporary = data_dir is None
  data_dir = tempfile.mkdtemp(prefix="tfrs-pg-") if temporary else data_dir
  os.makedirs(data_dir, exist_ok=True)
  forget_dead_users(data_dir, log)
  started = time.time()
  server = pgserver.get_server(data_dir, cleanup_mode="stop")
  log(f"database: embedded PostgreSQL at {data_dir} up in {time.time() - started:.1f}s")
  # A kill -9 runs no clean-up: a watchdog process stops the server once we are gone.
  watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), data_dir],
                              start_new_session=True, stdin=subprocess.DEVNULL)
  try:
    yield server.get_uri()
  finally:
    watchdog.kill()
    watchdog.wait()
    server.cleanup()
    if temporary:
      shutil.rmtree(data_dir, ignore_errors=True)


# pgserver stops a server when its last user (a pid in .handle_pids.json) lets go.
_HANDLES = ".handle_pids.json"
_WATCHDOG = """
import os, sys, time
from tfrs_two_tower.data import postgres_source
parent, data_dir = int(sys.argv[1]), sys.argv[2]
while postgres_source.process_alive(parent):
  time.sleep(1)
postgres_source.stop_orphaned(data_dir)
"""


def process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def forget_dead_users(data_dir: str, log: Callable[[str], None] = print) -> List[int]:
  """Drops killed processes from pgserver's user list of `data_dir`; returns their pids.

  Without this a server left by a killed run is never stopped: pgserver stops
  it only when the last listed user lets go, and a dead pid never does.
  """
  path = os.path.join(data_dir, _HANDLES)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    pids = json.load(f)
  dead = [p for p in pids if not process_alive(p)]
  if dead:
    files.write_json(path, [p for p in pids if p not in dead])
    log(f"database: {data_dir} was left running by killed process(es) {dead}; this run stops "
        "it when it ends")
  return dead


def stop_orphaned(data_dir: str) -> None:
  """Stops the embedded server of `data_dir` if it runs and nobody alive uses it."""
  import pgserver
  if not os.path.exists(os.path.join(data_dir, "postmaster.pid")):
    return  # stopped already (a normal exit)
  forget_dead_users(data_dir, log=lambda m: None)
  path = os.path.join(data_dir, _HANDLES)
  if os.path.exists(path) and files.read_json(path):
    return  # someone alive still uses it
  pgserver.get_server(data_dir, cleanup_mode="stop").cleanup()

