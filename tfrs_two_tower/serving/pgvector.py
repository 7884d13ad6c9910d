"""Publishes a run's embeddings into PostgreSQL (pgvector) for the `recommend()` RPC.

A model version (key `v` + 12 hex digits of sha256(run id), see `version_name`)
is a pair of tables, `tt_query_embeddings_<v>` and
`tt_candidate_embeddings_<v>` (`vector(d)`, HNSW index with inner-product ops on
the candidates), plus a row in `tt_model_versions`. Publishing writes the pair
and the row in one transaction, then switches `tt_active_model` in a second
one; `recommend()` resolves the active version once per call. So a reader sees
the old version or the new one, never a half-published one, and publishing the
same run again is a no-op (unless `republish`).
"""

import hashlib
import io
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from psycopg2 import sql

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.serving import eligibility_sql
from tfrs_two_tower.serving import history_sql
from tfrs_two_tower.serving import schema_sql

VERSION_HEX_DIGITS = 12  # 48 bits: a collision needs ~16 million published runs
# pgvector builds an HNSW graph in maintenance_work_mem and falls back to a much slower
# on-disk build for the elements that do not fit (PostgreSQL's default 64 MB held 76,884
# elements of dim 33, m 16: ~873 B each). Per element: the vector (8 + 4 d bytes), the
# level-0 neighbour list (2 m entries of 16 B) and ~224 B of element and upper-level data.
HNSW_ELEMENT_OVERHEAD_BYTES = 224
# The automatic setting never asks the server for more than this.
HNSW_AUTO_BUILD_MEMORY_CAP_MB = 1024


def version_name(run_id: str) -> str:
  """The version key of a run: "v" + the first 12 hex digits of sha256(run id).

  Fixed length (13 characters), so every table and index name derived from it
  stays far below PostgreSQL's 63-byte identifier limit whatever the run id;
  the run id itself is kept as data (`tt_model_versions.run_id`).
  """
  if not run_id:
    raise ValueError("an empty run id has no version key")
  return "v" + hashlib.sha256(run_id.encode("utf-8")).hexdigest()[:VERSION_HEX_DIGITS]


def serving_sql(conn, config: config_lib.Config) -> str:
  """sql/recommend.sql for the config's schema: its tables, columns, actions and rules.

  Raises:
    schema_sql.SchemaSQLError naming the config key of a column or table that
    cannot be read (nothing is installed then).
  """
  query, candidate = config.entity("query"), config.entity("candidate")
  sources = {"query": schema_sql.entity_source(query),
             "candidate": schema_sql.entity_source(candidate)}
  id_types = {side: schema_sql.probe(conn, sources[side], config.entity(side).id_column,
                                     f"entities.{config.entity(side).name}.id_column")
              for side in ("query", "candidate")}
  fields = schema_sql.interaction_fields(conn, config)
  swiper_type = schema_sql.probe(conn, fields["interactions"],
                                 config.interactions.query_id_column,
                                 "interactions.query_id_column")
  if config.same_entity_both_sides:
    back_swipes = sql.SQL(
        "SELECT DISTINCT ON (s.{swiper}) s.{swiper}::text, s.{action} IN ({positive})\n"
        "  FROM {interactions} s\n"
        "  WHERE s.{swipee} = $1::{id_type}\n"
        "  ORDER BY s.{swiper}, s.{swiped_at} DESC, s.{action} DESC").format(
            swiper=fields["swiper"], swipee=fields["swipee"], action=fields["action"],
            swiped_at=fields["swiped_at"], positive=fields["positive_actions"],
            interactions=fields["interactions"], id_type=sql.SQL(id_types["candidate"]))
  else:  # items never swipe back
    back_swipes = sql.SQL("SELECT NULL::text, NULL::boolean WHERE false")
  return schema_sql.render(conn, "recommend.sql", {
      "query_source": sources["query"], "candidate_source": sources["candidate"],
      "query_id": sql.Identifier(query.id_column),
      "candidate_id": sql.Identifier(candidate.id_column),
      "query_id_type": sql.SQL(id_types["query"]),
      "candidate_id_type": sql.SQL(id_types["candidate"]),
      "eligible": eligibility_sql.condition(conn, config),
      "back_swipes": back_swipes,
      "query_history": history_sql.query_history(config, fields, swiper_type),
      "reciprocal": sql.Literal(config.same_entity_both_sides),
      "max_impressions": sql.Literal(config.rules.exposure.max_impressions_per_day)})


def install_sql(conn, config: config_lib.Config) -> None:
  """Creates the version tables and the recommend functions for `config` (idempotent).

  The SQL is generated and every column it names checked before anything runs;
  it then runs in one transaction.
  """
  text = serving_sql(conn, config)
  conn.rollback()  # the probes' read-only transaction
  schema_sql.execute_in_transaction(conn, [text])


def hnsw_graph_mb(count: int, dim: int, m: int) -> int:
  """MB of maintenance_work_mem that hold the HNSW graph of `count` [dim] vectors in memory.

    bytes = 1.1 * count * (8 + 4 dim + 32 m + HNSW_ELEMENT_OVERHEAD_BYTES)

  (10 % headroom over the per-element size measured with pgvector 0.6.)
  """
  per_element = 8 + 4 * dim + 32 * m + HNSW_ELEMENT_OVERHEAD_BYTES
  return int(np.ceil(1.1 * count * per_element / 2**20))


def _raise_build_memory(cur, count: int, dim: int, m: int, build_memory_mb: Optional[int],
                        log: Callable[[str], None]) -> None:
  """SET LOCAL maintenance_work_mem for the index build (this transaction only).

  `build_memory_mb`: None sets the estimate of `hnsw_graph_mb` (at most
  HNSW_AUTO_BUILD_MEMORY_CAP_MB), a number sets that many MB, 0 keeps the server's
  setting. The server's setting is never lowered.
  """
  if build_memory_mb == 0:
    return
  graph_mb = hnsw_graph_mb(count, dim, m)
  wanted = (min(graph_mb, HNSW_AUTO_BUILD_MEMORY_CAP_MB) if build_memory_mb is None
            else int(build_memory_mb))
  cur.execute("SELECT pg_size_bytes(current_setting('maintenance_work_mem'))")
  current_mb = cur.fetchone()[0] // 2**20
  if wanted > current_mb:
    cur.execute("SET LOCAL maintenance_work_mem = %s", (f"{wanted}MB",))
    log(f"publish: HNSW build with maintenance_work_mem {wanted} MB (server setting "
        f"{current_mb} MB; the graph of {count:,} vectors needs ~{graph_mb} MB)")


def _copy_embeddings(cur, table: str, ids: Sequence[str], embeddings: np.ndarray) -> None:
  """COPY rows "id<TAB>[x1,x2,...]" (pgvector's text form) into `table`."""
  values = np.char.mod("%.8g", embeddings.astype(np.float32))
  body = "\n".join(f"{i}\t[{','.join(row)}]" for i, row in zip(ids, values)) + "\n"
  cur.copy_expert(sql.SQL("COPY {} (id, embedding) FROM STDIN").format(sql.Identifier(table)),
                  io.StringIO(body))


def publish(conn, *, config: config_lib.Config, run_id: str, config_hash: str,
            temperature: float,
            query_ids: Sequence[str], query_embeddings: np.ndarray,
            candidate_ids: Sequence[str], candidate_embeddings: np.ndarray,
            calibration: Tuple[float, float], hnsw_m: int = 16, hnsw_ef_construction: int = 64,
            hnsw_build_memory_mb: Optional[int] = None, keep_versions: int = 3,
            republish: bool = False,
            log: Callable[[str], None] = print) -> Dict[str, object]:
  """Writes one model version and makes it the active one.

  Args:
    conn: a psycopg2 connection to a database with pgvector and the app's tables.
    config: the config the run was trained with: recommend() reads its tables,
      columns, actions and eligibility rules (`serving_sql`).
    query_ids, query_embeddings: [Nq] ids and [Nq, d] query-tower embeddings.
    candidate_ids, candidate_embeddings: [Nc] ids and [Nc, d] candidate embeddings.
    calibration: (scale, bias) with P(like) = sigmoid(scale * dot + bias), used
      by `recommend_reciprocal`.
    hnsw_build_memory_mb: maintenance_work_mem of the index build in MB; None: enough
      for the graph (`hnsw_graph_mb()`, at most HNSW_AUTO_BUILD_MEMORY_CAP_MB);
      0: the server's setting. Never lowers the server's setting.
    keep_versions: older inactive versions beyond this many are dropped.
  Returns:
    {"version", "run_id", "created" (False when it already existed), "dropped": [...]}.
  """
  dim = int(candidate_embeddings.shape[1])
  if query_embeddings.shape[1] != dim:
    raise ValueError(f"query embeddings have dim {query_embeddings.shape[1]}, candidates {dim}")
  version = version_name(run_id)
  tables = {side: f"tt_{side}_embeddings_{version}" for side in ("query", "candidate")}
  install_sql(conn, config)
  with conn.cursor() as cur:
    cur.execute("SELECT EXISTS (SELECT 1 FROM tt_model_versions WHERE version = %s), "
                "EXISTS (SELECT 1 FROM tt_active_model WHERE version = %s)", (version, version))
    exists, active = cur.fetchone()
  if republish and active:
    raise ValueError(f"version {version} is the active one; publish another run before "
                     "republishing it")
  created = not exists or republish
  if created:
    with conn.cursor() as cur:  # one transaction: all of the version or none of it
      cur.execute("DELETE FROM tt_model_versions WHERE version = %s", (version,))
      for side, ids, emb in (("query", query_ids, query_embeddings),
                             ("candidate", candidate_ids, candidate_embeddings)):
        table = sql.Identifier(tables[side])
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        cur.execute(sql.SQL("CREATE TABLE {} (id text PRIMARY KEY, embedding vector({}) NOT NULL)")
                    .format(table, sql.Literal(dim)))
        _copy_embeddings(cur, tables[side], ids, emb)
        log(f"publish: {len(ids)} {side} embeddings -> {tables[side]}")
      _raise_build_memory(cur, len(candidate_ids), dim, hnsw_m, hnsw_build_memory_mb, log)
      cur.execute(sql.SQL("CREATE INDEX {} ON {} USING hnsw (embedding vector_ip_ops) "
                          "WITH (m = {}, ef_construction = {})").format(
          sql.Identifier(f"{tables['candidate']}_hnsw"), sql.Identifier(tables["candidate"]),
          sql.Literal(hnsw_m), sql.Literal(hnsw_ef_construction)))
      for table in tables.values():
        cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
      cur.execute("INSERT INTO tt_model_versions (version, run_id, dim, temperature, "
                  "calibration_scale, calibration_bias, config_hash, candidates, queries, "
                  "hubness_offset) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::vector)",
                  (version, run_id, dim, float(temperature), float(calibration[0]),
                   float(calibration[1]), config_hash, len(candidate_ids), len(query_ids),
                   hubness_offset(config, query_embeddings)))
    conn.commit()
  else:
    log(f"publish: version {version} (run {run_id}) already published; switching to it")
  with conn.cursor() as cur:  # the atomic switch
    cur.execute("INSERT INTO tt_active_model (singleton, version) VALUES (true, %s) "
                "ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version, "
                "switched_at = now()", (version,))
  conn.commit()
  dropped = _drop_old_versions(conn, keep_versions)
  return {"version": version, "run_id": run_id, "created": created, "dropped": dropped}


def hubness_offset(config: config_lib.Config, query_embeddings: np.ndarray) -> Optional[str]:
  """beta * mean query embedding (pgvector text) for exposure.hubness_beta = beta > 0, else None.

  recommend() ranks by (q_u - offset) . c_v = s(u, v) - beta * qbar . c_v.
  """
  beta = config.rules.exposure.hubness_beta
  if not beta:
    return None
  offset = beta * np.asarray(query_embeddings, np.float64).mean(axis=0)
  return "[" + ",".join("%.8g" % x for x in offset.astype(np.float32)) + "]"


def _drop_old_versions(conn, keep: int) -> list:
  with conn.cursor() as cur:
    cur.execute("SELECT version FROM tt_model_versions WHERE version <> "
                "(SELECT version FROM tt_active_model) ORDER BY published_at DESC")
    old = [r[0] for r in cur.fetchall()][max(keep - 1, 0):]
    for version in old:
      cur.execute("DELETE FROM tt_model_versions WHERE version = %s", (version,))
      for side in ("query", "candidate"):
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
            sql.Identifier(f"tt_{side}_embeddings_{version}")))
  conn.commit()
  return old


def recommend(conn, user_id: str, k: int = 20, *, exact: bool = False, reciprocal: bool = False,
              age_window: Optional[int] = None, pool: int = 400,
              combination: str = "product",
              query_embedding: Optional[np.ndarray] = None) -> list:
  """Calls the SQL RPC; returns [(candidate_id, score), ...] best first.

  `age_window` (years) replaces the config's age rule when given. `combination`
  ("product" = P(match), or "harmonic" for RECON) applies to `reciprocal` only.
  `query_embedding` ([d], one-way only): the user's embedding computed at request
  time (with a history: from `query_history`), instead of the published one.
  Commits: under an exposure cap the call counts its list (tt_impressions).
  """
  if query_embedding is not None and reciprocal:
    raise ValueError("query_embedding: the reciprocal ranking reads published embeddings only")
  with conn.cursor() as cur:
    if reciprocal:
      cur.execute("SELECT candidate_id, score FROM recommend_reciprocal(%s, %s, %s, %s, %s, %s)",
                  (user_id, k, age_window, exact, pool, combination))
    else:
      embedding = (None if query_embedding is None
                   else np.asarray(query_embedding, np.float32).ravel().tolist())
      cur.execute("SELECT candidate_id, score FROM recommend(%s, %s, %s, %s, %s, %s::real[])",
                  (user_id, k, age_window, exact, pool, embedding))
    rows = cur.fetchall()
  conn.commit()  # the impressions counted under an exposure cap (planner settings are local)
  return rows


def query_history(conn, user_id: str) -> Dict[str, List[str]]:
  """The query tower's history inputs of `user_id` now (`tt_query_history`).

  Returns:
    input name (query_history_<list>) -> candidate ids, most recent first; {}
    when the config has no history.
  """
  with conn.cursor() as cur:
    cur.execute("SELECT input_name, candidate_ids FROM tt_query_history(%s)", (user_id,))
    rows = cur.fetchall()
  conn.commit()  # ends the read-only transaction, as recommend() does
  return {name: list(ids) for name, ids in rows}
