"""Embeddings in PostgreSQL (pgvector): exact == TF index, HNSW recall, atomic versions."""
import json

import numpy as np
import psycopg2
from psycopg2 import sql
import pytest
import tensorflow as tf

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.data import reader
from tfrs_two_tower.data import seeding
from tfrs_two_tower.evaluation import retrieval
from tfrs_two_tower.model import run_dir as run_lib
from tfrs_two_tower.serving import pgvector
from tfrs_two_tower.stages import publish_stage

K = 10
_SEEKS = {"men": {"man"}, "women": {"woman"}, "everyone": {"man", "woman", "nonbinary"}}


@pytest.fixture(scope="module")
def published(make_database, tiny_world, tiny_run_dir, tiny_dataset_dir):
  """The tiny world seeded into a real database with the tiny run published."""
  url = make_database("publish")
  conn = psycopg2.connect(url)
  seeding.seed(conn, tiny_world, log=lambda *a: None)
  result = publish_stage.run(tiny_run_dir, tiny_dataset_dir, db_url=url, env_file=None,
                             log=lambda *a: None)
  yield url, conn, result
  conn.close()


def _expected_top_k(user, world, run, swiped, k):
  """The TF index SavedModel's ranking (exclusions passed in), then the default config's
  eligibility rules (mutual preference, age window)."""
  age_window = config_lib.load_config().raw["eligibility"]["age"]["window_years"]
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


@pytest.mark.slow  # trains its own (shared) run
def test_a_candidate_bias_run_ranks_in_pgvector_as_the_tf_index(make_database, tiny_world,
                                                                 tiny_bias_run_dir,
                                                                 tiny_dataset_dir):
  """--candidate_bias: vectors of d + 1 ([q, 1] / [c, b_c]), not unit-norm, same ranking."""
  url = make_database("publish_bias")
  conn = psycopg2.connect(url)
  try:
    seeding.seed(conn, tiny_world, log=lambda *a: None)
    publish_stage.run(tiny_bias_run_dir, tiny_dataset_dir, db_url=url, env_file=None,
                      log=lambda *a: None)
    run = run_lib.open_run(tiny_bias_run_dir)
    assert run.embedding_dim == 17
    user = tiny_world.swipes["swiper_id"].value_counts().index[0]
    swiped = set(tiny_world.swipes.loc[tiny_world.swipes["swiper_id"] == user, "swipee_id"])
    got = pgvector.recommend(conn, user, K, exact=True)
    expected = _expected_top_k(user, tiny_world, run, swiped, K)
    assert len(got) == len(expected) > 0
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-5)
  finally:
    conn.close()


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


def test_a_query_embedding_computed_at_request_time_replaces_the_published_one(published,
                                                                                tiny_world):
  """recommend(..., query_embedding): what the app passes with a fresh (history) embedding."""
  _, conn, result = published
  users = tiny_world.swipes["swiper_id"].value_counts().index[:2].tolist()
  with conn.cursor() as cur:
    cur.execute(sql.SQL("SELECT id, embedding::real[] FROM {} WHERE id = ANY(%s)").format(
        sql.Identifier(f"tt_query_embeddings_{result['version']}")), (users,))
    embeddings = {i: np.array(e, np.float32) for i, e in cur.fetchall()}
  conn.commit()
  me, other = users
  own = pgvector.recommend(conn, me, K, exact=True)
  assert pgvector.recommend(conn, me, K, exact=True, query_embedding=embeddings[me]) == own
  # another embedding ranks by that embedding, under my exclusions and rules
  theirs = pgvector.recommend(conn, me, K, exact=True, query_embedding=embeddings[other])
  assert [c for c, _ in theirs] != [c for c, _ in own]
  with conn.cursor() as cur:
    cur.execute(sql.SQL("SELECT id, embedding::real[] FROM {} WHERE id = ANY(%s)").format(
        sql.Identifier(f"tt_candidate_embeddings_{result['version']}")),
        ([c for c, _ in theirs],))
    candidates = {i: np.array(e, np.float32) for i, e in cur.fetchall()}
  conn.commit()
  np.testing.assert_allclose([s for _, s in theirs],
                             [candidates[c] @ embeddings[other] for c, _ in theirs], atol=1e-5)
  with pytest.raises(psycopg2.Error, match="dimension"):
    pgvector.recommend(conn, me, K, query_embedding=embeddings[me][:-1])
  conn.rollback()


def test_republish_is_idempotent_and_switch_is_atomic(published, tiny_run_dir, tiny_dataset_dir):
  url, conn, first = published
  again = publish_stage.run(tiny_run_dir, tiny_dataset_dir, db_url=url, env_file=None,
                            log=lambda *a: None)
  assert again == {"version": first["version"], "run_id": first["run_id"], "created": False,
                   "dropped": []}
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
    pgvector.publish(conn, config=config_lib.load_config(), run_id="broken-run",
                     config_hash="x", temperature=0.05,
                     query_ids=ids, query_embeddings=emb, candidate_ids=ids,
                     candidate_embeddings=broken, calibration=(1.0, 0.0), log=lambda *a: None)
  conn.rollback()
  with conn.cursor() as cur:
    cur.execute("SELECT version FROM tt_active_model")
    assert cur.fetchone()[0] == first["version"]
    cur.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE %s",
                (f"tt_%{pgvector.version_name('broken-run')}",))
    assert cur.fetchone()[0] == 0
  # A second version becomes active in one switch; the first stays for rollback.
  second = pgvector.publish(conn, config=config_lib.load_config(), run_id="second-run",
                            config_hash="x", temperature=0.05,
                            query_ids=ids, query_embeddings=emb, candidate_ids=ids,
                            candidate_embeddings=emb, calibration=(1.0, 0.0), keep_versions=2,
                            log=lambda *a: None)
  with conn.cursor() as cur:
    cur.execute("SELECT version FROM tt_active_model")
    assert cur.fetchone()[0] == second["version"] == pgvector.version_name("second-run")
    cur.execute("SELECT count(*) FROM tt_model_versions")
    assert cur.fetchone()[0] == 2
  conn.commit()
  pgvector.publish(conn, config=config_lib.load_config(), run_id=run.manifest["run_id"],
                   config_hash="x", temperature=0.05,
                   query_ids=ids, query_embeddings=emb, candidate_ids=ids,
                   candidate_embeddings=emb, calibration=(1.0, 0.0), log=lambda *a: None)


def test_version_keys_are_short_fixed_and_safe():
  hostile = pgvector.version_name("Run 2026-11-24T10:00; DROP TABLE x")
  long_a = pgvector.version_name("two_tower_streaming_v2_with_a_long_name-20261124T100000Z")
  long_b = pgvector.version_name("two_tower_streaming_v2_with_a_long_name-20261124T100001Z")
  for key in (hostile, long_a, long_b):
    assert len(key) == 13 and key[0] == "v" and set(key[1:]) <= set("0123456789abcdef")
  assert long_a != long_b
  with pytest.raises(ValueError):
    pgvector.version_name("")


def test_long_run_ids_publish_side_by_side(published, tiny_run_dir):
  """Run ids sharing a 40-character prefix once cut table names at 63 bytes and collided."""
  _, conn, _ = published
  ids, emb = run_lib.open_run(tiny_run_dir).candidate_embeddings()
  prefix = "two_tower_streaming_v2_" + "x" * 30
  results = [pgvector.publish(conn, config=config_lib.load_config(),
                              run_id=f"{prefix}-2026112{i}T100000Z", config_hash="x",
                              temperature=0.05, query_ids=ids, query_embeddings=emb,
                              candidate_ids=ids, candidate_embeddings=emb,
                              calibration=(1.0, 0.0), keep_versions=5, log=lambda *a: None)
             for i in range(2)]
  assert results[0]["version"] != results[1]["version"]
  assert all(r["created"] for r in results)
  with conn.cursor() as cur:
    for r in results:
      cur.execute("SELECT run_id FROM tt_model_versions WHERE version = %s", (r["version"],))
      assert cur.fetchone()[0] == r["run_id"]
      cur.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s",
                  (f"tt_candidate_embeddings_{r['version']}_hnsw",))
      assert cur.fetchone()[0] == 1
  assert len(pgvector.recommend(conn, ids[0], K, exact=True)) > 0
  run = run_lib.open_run(tiny_run_dir)  # switch back to the fixture's run for the tests below
  pgvector.publish(conn, config=config_lib.load_config(), run_id=run.manifest["run_id"],
                   config_hash="x", temperature=0.05, query_ids=ids, query_embeddings=emb, candidate_ids=ids,
                   candidate_embeddings=emb, calibration=(1.0, 0.0), log=lambda *a: None)


def test_hnsw_build_memory_keeps_the_graph_in_memory(published, tiny_run_dir):
  """The build's maintenance_work_mem: pgvector's notice shows when the graph spilled."""
  _, conn, _ = published
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(3000, 8)).astype(np.float32)  # ~1,350 fit into 1 MB at d=8
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  ids = [f"c{i}" for i in range(len(emb))]
  with conn.cursor() as cur:  # a small server setting: the graph of 3,000 does not fit
    cur.execute("SET maintenance_work_mem = '1MB'")
  conn.commit()
  spilled, logs = {}, {}
  for setting, run_id in ((0, "memory-server"), (None, "memory-auto"), (2, "memory-2mb")):
    del conn.notices[:]
    logs[setting] = []
    pgvector.publish(conn, config=config_lib.load_config(), run_id=run_id, config_hash="x",
                     temperature=0.05, query_ids=ids, query_embeddings=emb, candidate_ids=ids,
                     candidate_embeddings=emb, calibration=(1.0, 0.0), keep_versions=5,
                     hnsw_build_memory_mb=setting, log=logs[setting].append)
    spilled[setting] = any("no longer fits into maintenance_work_mem" in n for n in conn.notices)
  # 0 keeps the server's 1 MB; the automatic size (3 MB) holds the graph; 2 MB does not.
  assert spilled == {0: True, None: False, 2: True}
  assert pgvector.hnsw_graph_mb(3000, 8, 16) == 3
  assert any("maintenance_work_mem 3 MB" in m for m in logs[None])
  assert not any("maintenance_work_mem" in m for m in logs[0])
  assert pgvector.hnsw_graph_mb(1_000_000, 33, 16) == 919
  with conn.cursor() as cur:  # SET LOCAL: the session keeps its own setting
    cur.execute("SHOW maintenance_work_mem")
    assert cur.fetchone()[0] == "1MB"
    cur.execute("RESET maintenance_work_mem")
  conn.commit()
  run = run_lib.open_run(tiny_run_dir)  # switch back to the fixture's run for the tests below
  ids, emb = run.candidate_embeddings()
  pgvector.publish(conn, config=config_lib.load_config(), run_id=run.manifest["run_id"],
                   config_hash="x", temperature=0.05, query_ids=ids, query_embeddings=emb,
                   candidate_ids=ids, candidate_embeddings=emb, calibration=(1.0, 0.0),
                   log=lambda *a: None)


def _embeddings(conn, table):
  with conn.cursor() as cur:
    cur.execute(f"SELECT id, embedding::text FROM {table}")
    rows = cur.fetchall()
  return {i: np.asarray(json.loads(e), np.float32) for i, e in rows}


def _reference_reciprocal(conn, user, k, pool, combination):
  """The same rule through `retrieval.ReciprocalScorer`, from what the database holds: the
  exact one-way top `pool` plus every eligible user who liked `user`, P(v likes u) = the
  latest observed swipe of v on u when there is one."""
  with conn.cursor() as cur:
    cur.execute("SELECT m.version, m.calibration_scale, m.calibration_bias "
                "FROM tt_active_model JOIN tt_model_versions m USING (version)")
    version, scale, bias = cur.fetchone()
    cur.execute("SELECT swiper_id::text, swipee_id::text, action FROM swipes "
                "ORDER BY created_at, action")
    swipes = cur.fetchall()
  conn.rollback()
  queries = _embeddings(conn, f"tt_query_embeddings_{version}")
  candidates = _embeddings(conn, f"tt_candidate_embeddings_{version}")
  eligible = {c for c, _ in pgvector.recommend(conn, user, 10_000, exact=True)}
  pool_ids = [c for c, _ in pgvector.recommend(conn, user, pool, exact=True)]
  latest = {(a, b): action for a, b, action in swipes}
  admirers = sorted(c for c in eligible if latest.get((c, user)) in ("like", "superlike"))
  ids = sorted(set(pool_ids) | set(admirers))
  forward = retrieval.EmbeddingScorer([user], ids, queries[user][None],
                                      np.stack([candidates[c] for c in ids]))
  backward = retrieval.EmbeddingScorer([user], ids, candidates[user][None],
                                       np.stack([queries[c] for c in ids]))
  back = [(a, b, action in ("like", "superlike")) for (a, b), action in latest.items()]
  scorer = retrieval.ReciprocalScorer(
      forward, backward, retrieval.PlattCalibration(scale, bias), combination=combination,
      back_swipes=retrieval.BackSwipes.of_swipes(
          forward, [a for a, _, _ in back], [b for _, b, _ in back], [l for *_, l in back]))
  top, scores = scorer.top_k([user], k, exclude_self=False)
  return [(c, float(s)) for c, s in zip(top[0], scores[0]) if c is not None], admirers


def test_reciprocal_uses_observed_back_swipes(published, tiny_world):
  """A like from v makes P(v likes u) = 1 (v joins the pool however far down the one-way
  ranking), a pass makes it 0; the SQL ranks exactly as `retrieval.ReciprocalScorer`."""
  _, conn, _ = published
  pool = 30
  swipes = tiny_world.swipes
  user = swipes["swipee_id"].value_counts().index[5]
  liked_before = set(swipes.loc[(swipes["swipee_id"] == user), "swiper_id"])
  ranked = [c for c, _ in pgvector.recommend(conn, user, 10_000, exact=True)]
  fresh = [c for c in ranked if c not in liked_before]
  before = [c for c, _ in pgvector.recommend(conn, user, K, exact=True, reciprocal=True,
                                             pool=pool)]
  admirer, refuser = fresh[-1], next(c for c in before if c not in liked_before)
  assert admirer not in before and ranked.index(admirer) >= pool
  with conn.cursor() as cur:
    cur.execute("INSERT INTO swipes (swiper_id, swipee_id, action) VALUES "
                "(%s, %s, 'like'), (%s, %s, 'pass')", (admirer, user, refuser, user))
  conn.commit()
  results = {}
  try:
    for combination in ("product", "harmonic"):
      with conn.cursor() as cur:
        cur.execute("SELECT candidate_id, score FROM recommend_reciprocal(%s, %s, 10, true, %s, "
                    "%s)", (user, len(ranked), pool, combination))
        got = results[combination] = cur.fetchall()
      conn.rollback()
      expected, admirers = _reference_reciprocal(conn, user, len(ranked), pool, combination)
      assert admirer in admirers
      assert [c for c, _ in got] == [c for c, _ in expected]
      np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-4,
                                 atol=1e-6)
      scores = dict(got)
      assert scores[refuser] == 0  # a pass: never a match
      assert admirer in scores  # a like: in the pool though ranked last one-way
      if combination == "product":  # P(v likes u) = 1: the score is P(u likes v)
        with conn.cursor() as cur:
          cur.execute("SELECT calibration_scale, calibration_bias FROM tt_model_versions "
                      "JOIN tt_active_model USING (version)")
          scale, bias = cur.fetchone()
        conn.rollback()
        one_way = dict(pgvector.recommend(conn, user, 10_000, exact=True))[admirer]
        assert scores[admirer] == pytest.approx(1 / (1 + np.exp(-(scale * one_way + bias))),
                                                rel=1e-4)
    default = pgvector.recommend(conn, user, K, exact=True, reciprocal=True, pool=pool)
    assert default == results["product"][:K]  # the default combination
    with pytest.raises(psycopg2.Error, match="combination must be"):
      with conn.cursor() as cur:
        cur.execute("SELECT * FROM recommend_reciprocal(%s, 5, 10, true, 30, 'max')", (user,))
    conn.rollback()
  finally:
    with conn.cursor() as cur:
      cur.execute("DELETE FROM swipes WHERE swipee_id = %s AND swiper_id IN (%s, %s) "
                  "AND created_at > now() - interval '1 hour'", (user, admirer, refuser))
    conn.commit()


def test_a_dataset_of_another_world_does_not_belong_to_the_run(tiny_run_dir, default_config,
                                                               tmp_path):
  """Same config, other people: refused by name before anything is calibrated or written."""
  import dataclasses
  from conftest import TINY_WORLD
  from tfrs_two_tower.data import synthetic
  from tfrs_two_tower.stages import convert_stage
  other = synthetic.generate_world(dataclasses.replace(TINY_WORLD, seed=TINY_WORLD.seed + 1))
  other_dir = str(tmp_path / "other")
  synthetic.write_world_dataset(other, default_config, other_dir, num_train_shards=1,
                                num_eval_shards=1)
  with pytest.raises(reader.DatasetFormatError, match="do not belong together"):
    publish_stage.run(tiny_run_dir, other_dir, db_url="postgresql://nobody@127.0.0.1:1/x",
                      env_file=None, log=lambda *a: None)
  with pytest.raises(convert_stage.ConvertError, match="do not belong together"):
    convert_stage.run(tiny_run_dir, other_dir, str(tmp_path / "coreml"), log=lambda *a: None)
  assert not (tmp_path / "coreml").exists()
