"""publish_embeddings.py: a run's embeddings into PostgreSQL (pgvector) for recommend()."""

import time
from typing import Any, Callable, Dict, Optional

from tfrs_two_tower.data import history as history_lib
from tfrs_two_tower.data import postgres_source
from tfrs_two_tower.data import reader
from tfrs_two_tower.data import sources
from tfrs_two_tower.evaluation import retrieval
from tfrs_two_tower.model import run_dir as run_lib
from tfrs_two_tower.serving import pgvector


def run(run_dir: str, dataset_dir: str, db_url: Optional[str] = None,
        env_file: Optional[str] = ".env", keep_versions: int = 3, republish: bool = False,
        hnsw_m: int = 16, hnsw_ef_construction: int = 64,
        hnsw_build_memory_mb: Optional[int] = None, connect_retries: int = 3,
        log: Callable[[str], None] = print) -> Dict[str, Any]:
  """Embeds every query entity, calibrates, and publishes the run as the active version."""
  run = run_lib.open_run(run_dir)
  dataset = reader.open_dataset(dataset_dir)
  reader.check_config_matches(dataset, run.manifest["config_hash"], f"run dir {run_dir}")
  candidate_ids, candidate_embeddings = run.candidate_embeddings()
  reader.check_same_candidates(dataset, candidate_ids, f"run dir {run_dir}")
  started = time.time()
  queries = reader.read_entities(dataset, "query")
  queries.update(history_lib.split_histories(dataset, queries["query_id"]))
  query_embeddings = run.embed("query", queries)
  calibration = retrieval.calibrate_on_train_swipes(
      dataset, queries["query_id"], query_embeddings, candidate_ids, candidate_embeddings)
  log(f"publish: embedded {len(query_embeddings):,} query users in {time.time() - started:.1f}s; "
      f"calibration P(like) = sigmoid({calibration.slope:.3f} * score + "
      f"{calibration.intercept:.3f})")
  url, where = postgres_source.resolve_url(db_url, env_file)
  params = postgres_source.connection_params(url)
  secrets = [params.get("password", "")]
  log(f"publish: into {postgres_source.describe_url(params)} (URL from {where})")
  conn = postgres_source.connect(url, retries=connect_retries,
                                 log=lambda m: log(sources.redact(m, secrets)))
  try:
    result = pgvector.publish(
        conn, config=dataset.config, run_id=run.manifest["run_id"],
        config_hash=run.manifest["config_hash"],
        temperature=float(run.manifest["temperature"]), query_ids=queries["query_id"],
        query_embeddings=query_embeddings, candidate_ids=candidate_ids,
        candidate_embeddings=candidate_embeddings,
        calibration=(calibration.slope, calibration.intercept), hnsw_m=hnsw_m,
        hnsw_ef_construction=hnsw_ef_construction, hnsw_build_memory_mb=hnsw_build_memory_mb,
        keep_versions=keep_versions,
        republish=republish, log=log)
  except Exception as e:  # psycopg2 errors can quote the DSN: never let a password out
    if isinstance(e, ValueError):
      raise
    raise sources.ExportError(sources.redact(f"publish failed: {e}", secrets)) from None
  finally:
    conn.close()
  log(f"publish: active version {result['version']} (run {result['run_id']}) "
      f"({'new' if result['created'] else 'already there'}); dropped old: {result['dropped']}")
  return result
