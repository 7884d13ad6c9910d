"""Embeddings in PostgreSQL (pgvector): exact == TF index, HNSW recall, atomic versions."""
import numpy as np
import psycopg2
import pytest
import tensorflow as tf

from tfrs_two_tower.data import reader
from tfrs_two_tower.data import synthetic
from tfrs_two_tower.model import run_dir as run_lib
from tfrs_two_tower.serving import pgvector
from tfrs_two_tower.stages import publish_stage
from tfrs_two_tower.stages import seed_stage

K = 10
_SEEKS = {"men": {"man"}, "women": {"woman"}, "everyone": {"man", "woman", "nonbinary"}}


@pytest.fixture(scope="module")
def published(postgres, tiny_world, tiny_run_dir, tiny_dataset_dir):
  """The tiny world seeded into a real database with the tiny run published."""
  import uuid
  name = f"publish_{uuid.uuid4().hex[:8]}"
  admin = psycopg2.connect(postgres)
  admin.autocommit = True
  admin.cursor().execute(f'CREATE DATABASE "{name}"')
  admin.close()
  base, _, query = postgres.partition("?")
  url = f"{base.rsplit('/', 1)[0]}/{name}?{query}"
  conn = psycopg2.connect(url)
  seed_stage.seed(conn, tiny_world, log=lambda *a: None)
  result = publish_stage.run(tiny_run_dir, tiny_dataset_dir, db_url=url, env_file=None,
                             log=lambda *a: None)
  yield url, conn, result
  conn.close()


def _expected_top_k(user, world, run, swiped, k, age_window=10):
  """The TF index SavedModel's ranking (exclusions passed in), then the SQL's hard filters."""
  profiles = world.profiles.set_index("id")
  me = profiles.loc[user]
  dataset = reader.open_dataset(run.manifest["dataset"]["path"])
  queries = reader.read_entities(dataset, "query")
  row = int(np.flatnonzero(queries["query_id"] == user)[0])
  features = {key: tf.constant(value[row:row + 1]) for key, value in queries.items()
              if key in run.raw_input_specs("query")}
  exclude = sorted(swiped) or [""]
  out = run.index().signatures["serving_default"](
      **features, exclude_ids=tf.constant([exclude]), k=tf.constant(len(profiles)))
  ranked = []
  for cid, score in zip(out["ids"].numpy()[0].astype(str), out["scores"].numpy()[0]):
    if cid == user or cid in swiped or cid == "":
      continue
    other = profiles.loc[cid]
    if (other["gender"] in _SEEKS[me["seeking"]] and me["gender"] in _SEEKS[other["seeking"]]
        and abs(other["age"] - me["age"]) <= age_window):
      ranked.append((cid, float(score)))
  return ranked[:k]


def test_exact_search_equals_the_tf_index(published, tiny_world, tiny_run_dir):
  _, conn, _ = published
  run = run_lib.open_run(tiny_run_dir)
  swipes = tiny_world.swipes
  users = swipes["swiper_id"].value_counts().index[:3].tolist() + [
      swipes["swiper_id"].iloc[-1]]
  for user in users:
    swiped = set(swipes.loc[swipes["swiper_id"] == user, "swipee_id"])
    got = pgvector.recommend(conn, user, K, exact=True)
    expected = _expected_top_k(user, tiny_world, run, swiped, K)
    assert len(got) == len(expected) > 0
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-5)
    # The same candidates, up to ties at the k-th score.
    kth = expected[-1][1]
    assert ({c for c, s in got if s > kth + 1e-5}
            == {c for c, s in expected if s > kth + 1e-5})
    assert not swiped & {c for c, _ in got} and user not in {c for c, _ in got}


def test_hnsw_recall_against_exact(published, tiny_world):
  _, conn, _ = published
  users = tiny_world.profiles["id"].iloc[::25].tolist()
  hits = total = 0
  for user in users:
    try:
      exact = {c for c, _ in pgvector.recommend(conn, user, K, exact=True)}
    except psycopg2.Error:
      conn.rollback()  # a user without a query embedding (not in the dataset)
      continue
    approx = {c for c, _ in pgvector.recommend(conn, user, K)}
    hits += len(exact & approx)
    total += len(exact)
  assert total > 100 and hits / total >= 0.95


def test_reciprocal_variant_scores_are_probabilities(published, tiny_world):
  _, conn, _ = published
  user = tiny_world.swipes["swiper_id"].iloc[0]
  rows = pgvector.recommend(conn, user, K, reciprocal=True)
  scores = [s for _, s in rows]
  assert rows and all(0 < s < 1 for s in scores) and scores == sorted(scores, reverse=True)


def test_republish_is_idempotent_and_switch_is_atomic(published, tiny_run_dir, tiny_dataset_dir):
  url, conn, first = published
  again = publish_stage.run(tiny_run_dir, tiny_dataset_dir, db_url=url, env_file=None,
                            log=lambda *a: None)
  assert again == {"version": first["version"], "created": False, "dropped": []}
  with conn.cursor() as cur:
    cur.execute(f"SELECT count(*) FROM tt_candidate_embeddings_{first['version']}")
    count = cur.fetchone()[0]
  run = run_lib.open_run(tiny_run_dir)
  assert count == len(run.candidate_embeddings()[0])
  # A failing publish (NaN embeddings are refused by pgvector) leaves the active version.
  ids, emb = run.candidate_embeddings()
  broken = emb.copy()
  broken[3, 0] = np.nan
  with pytest.raises(psycopg2.Error):
    pgvector.publish(conn, run_id="broken-run", config_hash="x", temperature=0.05,
                     query_ids=ids, query_embeddings=emb, candidate_ids=ids,
                     candidate_embeddings=broken, calibration=(1.0, 0.0), log=lambda *a: None)
  conn.rollback()
  with conn.cursor() as cur:
    cur.execute("SELECT version FROM tt_active_model")
    assert cur.fetchone()[0] == first["version"]
    cur.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'tt_%broken_run'")
    assert cur.fetchone()[0] == 0
  # A second version becomes active in one switch; the first stays for rollback.
  second = pgvector.publish(conn, run_id="second-run", config_hash="x", temperature=0.05,
                            query_ids=ids, query_embeddings=emb, candidate_ids=ids,
                            candidate_embeddings=emb, calibration=(1.0, 0.0), keep_versions=2,
                            log=lambda *a: None)
  with conn.cursor() as cur:
    cur.execute("SELECT version FROM tt_active_model")
    assert cur.fetchone()[0] == second["version"] == "second_run"
    cur.execute("SELECT count(*) FROM tt_model_versions")
    assert cur.fetchone()[0] == 2
  conn.commit()
  pgvector.publish(conn, run_id=run.manifest["run_id"], config_hash="x", temperature=0.05,
                   query_ids=ids, query_embeddings=emb, candidate_ids=ids,
                   candidate_embeddings=emb, calibration=(1.0, 0.0), log=lambda *a: None)


def test_version_names_are_safe():
  assert pgvector.version_name("Run 2026-11-24T10:00; DROP TABLE x") == \
      "run_2026_11_24t10_00_drop_table_x"
  with pytest.raises(ValueError):
    pgvector.version_name("---")
