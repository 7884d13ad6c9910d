"""Another team's schema end to end on a real PostgreSQL: nothing of the default schema assumed.

tests/second_schema/ holds the schema (members/votes/blocks, Male/Female values,
looking_for text[], min_age/max_age) and its config. The tiny synthetic world is
mapped into it, then: export -> train -> evaluate -> convert (Core ML) -> publish
-> recommend() / recommend_reciprocal() -> A/B views and analysis. Every SQL-ranked
list is checked pair by pair against the Python eligibility implementation, and
SQL eligibility equals it on every (user, candidate) pair of a sample of users.
A user-to-item config (cards, no eligibility) runs through the same stages.
"""
import io
import json
import os
import time

import numpy as np
import pandas as pd
import psycopg2
import pytest

from tfrs_two_tower import config as config_lib
from tfrs_two_tower import eligibility as eligibility_lib
from tfrs_two_tower.abtest import assignment
from tfrs_two_tower.abtest import database as ab_database
from tfrs_two_tower.abtest import definition as definition_lib
from tfrs_two_tower.abtest import outcomes as outcomes_lib
from tfrs_two_tower.coreml import features_json
from tfrs_two_tower.data import seeding
from tfrs_two_tower.model import train_options
from tfrs_two_tower.serving import pgvector
from tfrs_two_tower.serving import schema_sql
from tfrs_two_tower.stages import abtest_stage
from tfrs_two_tower.stages import convert_stage
from tfrs_two_tower.stages import evaluate_stage
from tfrs_two_tower.stages import export_stage
from tfrs_two_tower.stages import publish_stage
from tfrs_two_tower.stages import train_stage

HERE = os.path.join(os.path.dirname(__file__), "second_schema")
CONFIG = os.path.join(HERE, "config.json")
QUIET = dict(log=lambda *a: None)
GATE = dict(min_users=10, min_interactions=100)
TRAINING = train_options.TrainOptions(epochs=1, steps_per_epoch=8, batch_size=128,
                                    layer_sizes=[16], embedding_dim=8)
# The world's values in the other schema's spelling.
SEX = {"man": "Male", "woman": "Female", "nonbinary": "NonBinary"}
LOOKING_FOR = {"men": ["Male"], "women": ["Female"], "everyone": ["Male", "Female", "NonBinary"]}
VERDICT = {"like": "Like", "superlike": "Superlike", "pass": "Pass"}


def second_schema_tables(world, seed=0):
  """The world mapped into tests/second_schema/schema.sql: members, votes, blocks frames.

  Age ranges: own age -/+ 4..15 years, a tenth without a lower bound (no filter);
  last seen 0..90 days ago (a third inactive under the 60-day rule), a twentieth
  never; 30 blocked pairs. Arrays are Python lists, times pandas Timestamps.
  """
  rng = np.random.default_rng(seed)
  p = world.profiles
  n = len(p)
  members = pd.DataFrame({
      "member_id": p["id"].astype(str), "sex": p["gender"].map(SEX),
      "looking_for": p["seeking"].map(LOOKING_FOR), "age_years": p["age"],
      "min_age": (p["age"] - rng.integers(4, 16, n)).astype(float),
      "max_age": (p["age"] + rng.integers(4, 16, n)).astype(float),
      "town": p["city"], "lat": p["latitude"], "lng": p["longitude"],
      "hobbies": p["interests"], "pics": p["photo_count"], "is_verified": p["verified"],
      "bio_chars": p["bio_length"], "joined_at": p["created_at"],
      "last_seen_at": pd.Timestamp.now(tz="UTC") - pd.to_timedelta(rng.uniform(0, 90, n),
                                                                   unit="D")})
  members.loc[rng.random(n) < 0.1, "min_age"] = np.nan
  members.loc[rng.random(n) < 0.05, "last_seen_at"] = pd.NaT
  votes = pd.DataFrame({"voter": world.swipes["swiper_id"].astype(str),
                        "target": world.swipes["swipee_id"].astype(str),
                        "verdict": world.swipes["action"].map(VERDICT),
                        "ts": world.swipes["created_at"]})
  pairs = rng.choice(n, size=(30, 2), replace=True)
  blocks = pd.DataFrame({"blocker": members["member_id"].to_numpy()[pairs[:, 0]],
                         "blocked": members["member_id"].to_numpy()[pairs[:, 1]]})
  blocks = blocks[blocks["blocker"] != blocks["blocked"]].drop_duplicates()
  return members, votes, blocks


def seed_second_schema(conn, world):
  """Creates tests/second_schema/schema.sql and COPYs the mapped world into it."""
  members, votes, blocks = second_schema_tables(world)
  members = members.assign(**{c: members[c].map(seeding.array_literal)
                              for c in ("looking_for", "hobbies")},
                           min_age=members["min_age"].astype("Int64"),
                           max_age=members["max_age"].astype("Int64"))
  with open(os.path.join(HERE, "schema.sql"), encoding="utf-8") as f, conn.cursor() as cur:
    cur.execute(f.read())
    for table, frame in (("members", members), ("votes", votes), ("blocks", blocks)):
      buffer = io.StringIO()
      frame.to_csv(buffer, index=False, header=False)
      buffer.seek(0)
      cur.copy_expert(f"COPY {table} ({', '.join(frame.columns)}) FROM STDIN WITH (FORMAT csv)",
                      buffer)
    cur.execute("ANALYZE members; ANALYZE votes; ANALYZE blocks")
  conn.commit()


def test_features_json_rules_equal_the_python_rules(tiny_world):
  """features.json's eligibility (what the app applies, `eligible_pair`) == eligibility.py's
  masks on every pair of 60 members x all members, for the second schema and the default."""
  now = time.time()
  members = second_schema_tables(tiny_world)[0]
  for config, table in ((config_lib.load_config(CONFIG), members),
                        (config_lib.load_config(), tiny_world.profiles)):
    attrs = eligibility_lib.encode(config, table, "table")
    rules = eligibility_lib.for_tables(config, attrs, attrs, now=now)
    shipped = features_json.eligibility_rules(config)
    json.dumps(shipped)  # JSON as it is written
    rows = table.to_dict("records")
    for row in rows:
      for c in (config.eligibility.active.column,) if config.eligibility.active else ():
        row[c] = None if pd.isna(row[c]) else row[c].timestamp()
    users = np.arange(0, len(rows), len(rows) // 60)[:60]
    mask = rules.mask(users)
    got = np.array([[features_json.eligible_pair(shipped, rows[u], rows[v], now)
                     for v in range(len(rows))] for u in users])
    np.testing.assert_array_equal(got, mask)
    assert 0.01 < mask.mean() < 0.9  # the rules both admit and exclude


def _python_eligible(conn, config, users):
  """{user: set of candidate ids} by tfrs_two_tower.eligibility (masks + exclusions), from
  what the database holds now."""
  members = pd.read_sql("SELECT * FROM members ORDER BY member_id", conn)
  votes = pd.read_sql("SELECT voter, target FROM votes", conn)
  blocks = pd.read_sql("SELECT * FROM blocks", conn)
  conn.rollback()
  attrs = eligibility_lib.encode(config, members, "members")
  rules = eligibility_lib.for_tables(config, attrs, attrs, now=time.time())
  ids = attrs.ids.astype(str)
  row = {u: i for i, u in enumerate(ids)}
  mask = rules.mask(np.array([row[u] for u in users]))
  bq, bc = eligibility_lib.blocked_pairs(blocks, config.eligibility)
  excluded = set(zip(votes["voter"], votes["target"])) | set(zip(bq, bc))
  return {u: {c for c in ids[mask[i]] if c != u and (u, c) not in excluded}
          for i, u in enumerate(users)}


@pytest.fixture(scope="module")
def second(tmp_path_factory, make_database, tiny_world):
  """The second schema seeded, exported, trained and published; (url, conn, config, dirs)."""
  url = make_database("second_schema")
  conn = psycopg2.connect(url)
  seed_second_schema(conn, tiny_world)
  root = tmp_path_factory.mktemp("second")
  dirs = {k: str(root / k) for k in ("dataset", "run", "eval", "coreml")}
  export_stage.run(dirs["dataset"], export_stage.ExportOptions(
      config_path=CONFIG, db_url=url, env_file=None, **GATE), **QUIET)
  train_stage.run(dirs["dataset"], dirs["run"], TRAINING, **QUIET)
  published = publish_stage.run(dirs["run"], dirs["dataset"], db_url=url, env_file=None, **QUIET)
  yield url, conn, config_lib.load_config(CONFIG), dirs, published
  conn.close()


@pytest.mark.slow
def test_sql_lists_follow_the_rules_and_sql_eligibility_equals_python(second):
  url, conn, config, dirs, _ = second
  with conn.cursor() as cur:
    cur.execute("SELECT member_id FROM members ORDER BY md5(member_id) LIMIT 40")
    users = [r[0] for r in cur.fetchall()]
  conn.rollback()
  expected = _python_eligible(conn, config, users)
  with conn.cursor() as cur:
    cur.execute("SELECT array_agg(id) FROM (SELECT member_id AS id FROM members) m")
    everyone = cur.fetchone()[0]
  checked = ranked = 0
  for user in users:
    with conn.cursor() as cur:
      cur.execute("SELECT candidate_id FROM tt_eligible(%s, %s, NULL)", (user, everyone))
      sql_eligible = {r[0] for r in cur.fetchall()}
    conn.rollback()
    assert sql_eligible == expected[user], user  # the same pairs, both ways
    checked += len(everyone)
    try:
      lists = [pgvector.recommend(conn, user, 10, exact=True),
               pgvector.recommend(conn, user, 10),
               pgvector.recommend(conn, user, 10, exact=True, reciprocal=True, pool=50)]
    except psycopg2.Error:  # no query embedding: not in the dataset
      conn.rollback()
      continue
    for rows in lists:
      assert {c for c, _ in rows} <= expected[user], user
      ranked += len(rows)
  assert checked > 20_000 and ranked > 200
  # The rules bite: each one excludes someone in this sample.
  assert 0 < np.mean([len(v) for v in expected.values()]) < 0.5 * len(everyone)


@pytest.mark.slow
def test_evaluate_convert_and_ab_analysis_on_the_second_schema(second, tmp_path):
  url, conn, config, dirs, _ = second
  report = evaluate_stage.run(dirs["dataset"], [dirs["run"]], dirs["eval"],
                              evaluate_stage.EvaluateOptions(bootstrap=20, tensorboard=False),
                              **QUIET)
  assert report is not None and os.path.exists(os.path.join(dirs["eval"], "report.json"))
  converted = convert_stage.run(dirs["run"], dirs["dataset"], dirs["coreml"], num_examples=300,
                                num_queries=50, **QUIET)
  assert converted["gate"]["passed"]
  features = json.load(open(os.path.join(dirs["coreml"], "features.json")))
  assert features["eligibility"]["preference"]["seeking_column"] == "looking_for"
  # A/B: an experiment over the members, outcomes from the votes table.
  ab_database.install_schema(conn, config)
  with conn.cursor() as cur:
    cur.execute("SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ts) FROM votes")
    start = cur.fetchone()[0]
    cur.execute("SELECT member_id FROM members")
    members = [r[0] for r in cur.fetchall()]
  conn.rollback()
  experiment = assignment.Experiment.from_weights("second", {"control": 1, "treatment": 1})
  definition = definition_lib.Definition(experiment, start, None, "match_rate", (), 7.0, None)
  ab_database.create_experiment(conn, definition)
  ab_database.log_exposures(conn, "second", members, [start] * len(members))
  result = abtest_stage.run(experiment="second", db_url=url, env_file=None, config_path=CONFIG,
                            **QUIET)
  assert sum(a["exposed_users"] for a in result["arms"].values()) == len(members)
  # The SQL view == the CSV path over the same votes, with the config's names and labels.
  votes = pd.read_sql("SELECT voter, target, verdict, ts FROM votes", conn)
  conn.rollback()
  exposures = pd.DataFrame({"user_id": members, "arm": experiment.assign_many(members),
                            "first_exposed_at": [start] * len(members)})
  got = ab_database.read_snapshot(conn, "second", config)[1]
  expected = outcomes_lib.user_outcomes(outcomes_lib.clean_exposures(exposures, "x"),
                                        outcomes_lib.clean_swipes(votes, "votes", config),
                                        definition)
  columns = ["user_id", "swipes", "likes_given", "likes_received", "matches", "pre_swipes"]
  pd.testing.assert_frame_equal(got[columns].sort_values("user_id").reset_index(drop=True),
                                expected[columns].sort_values("user_id").reset_index(drop=True),
                                check_dtype=False)
  assert got["matches"].sum() > 20 and got["likes_given"].sum() > 100
  # An action value the config does not map stops the analysis (as the export would).
  with conn.cursor() as cur:
    cur.execute("INSERT INTO votes (voter, target, verdict) VALUES (%s, %s, 'LIKE')",
                (members[0], members[1]))
  conn.commit()
  try:
    with pytest.raises(ValueError, match=r"'LIKE' x1"):
      abtest_stage.run(experiment="second", db_url=url, env_file=None, config_path=CONFIG,
                       **QUIET)
  finally:
    with conn.cursor() as cur:
      cur.execute("DELETE FROM votes WHERE verdict = 'LIKE'")
    conn.commit()


@pytest.mark.slow
def test_exposure_cap_leaves_out_candidates_listed_enough_today(second):
  """exposure.max_impressions_per_day = 1: once in one list today, in no other list."""
  url, conn, config, _, published = second
  with conn.cursor() as cur:
    cur.execute(f"SELECT id FROM tt_query_embeddings_{published['version']} ORDER BY id LIMIT 30")
    users = [r[0] for r in cur.fetchall()]
  conn.rollback()
  uncapped = {u: {c for c, _ in pgvector.recommend(conn, u, 10, exact=True)} for u in users}
  raw = json.loads(config.to_json())
  raw["exposure"] = {"max_impressions_per_day": 1}
  pgvector.install_sql(conn, config_lib.parse_config(raw, "capped"))
  try:
    listed, overlap = set(), 0
    for u in users:
      got = {c for c, _ in pgvector.recommend(conn, u, 10, exact=True)}
      assert not got & listed
      overlap += len(uncapped[u] & listed)
      listed |= got
    assert overlap > 0  # without the cap some of them would have been listed again
    with conn.cursor() as cur:
      cur.execute("SELECT max(impressions), count(*) FROM tt_impressions")
      assert cur.fetchone() == (1, len(listed))
    conn.rollback()
  finally:
    pgvector.install_sql(conn, config)
    with conn.cursor() as cur:
      cur.execute("TRUNCATE tt_impressions")
    conn.commit()


def _embeddings(conn, table):
  with conn.cursor() as cur:
    cur.execute(f"SELECT id, embedding::text FROM {table} ORDER BY id")
    rows = cur.fetchall()
  conn.rollback()
  return [r[0] for r in rows], np.array([json.loads(e) for _, e in rows], np.float32)


@pytest.mark.slow
def test_hubness_penalty_ranks_by_the_adjusted_score(second):
  """exposure.hubness_beta = b: recommend() ranks eligible candidates by s(u, v) - b qbar.c_v
  (qbar = mean published query embedding) and returns s(u, v)."""
  url, conn, config, _, published = second
  version = published["version"]
  with conn.cursor() as cur:
    cur.execute("SELECT run_id FROM tt_model_versions WHERE version = %s", (version,))
    run_id = cur.fetchone()[0]
  conn.rollback()
  q_ids, q_emb = _embeddings(conn, f"tt_query_embeddings_{version}")
  c_ids, c_emb = _embeddings(conn, f"tt_candidate_embeddings_{version}")
  raw = json.loads(config.to_json())
  raw["exposure"] = {"hubness_beta": 2.0}
  pgvector.publish(conn, config=config_lib.parse_config(raw, "hub"), run_id="hubness-run",
                   config_hash="x", temperature=0.1, query_ids=q_ids, query_embeddings=q_emb,
                   candidate_ids=c_ids, candidate_embeddings=c_emb, calibration=(1.0, 0.0),
                   **QUIET)
  try:
    adjusted = c_emb @ (2.0 * q_emb.mean(axis=0))
    changed = 0
    for i in range(0, len(q_ids), max(1, len(q_ids) // 15)):
      user = q_ids[i]
      got = pgvector.recommend(conn, user, 10, exact=True)
      with conn.cursor() as cur:
        cur.execute("SELECT candidate_id FROM tt_eligible(%s, %s, NULL)", (user, c_ids))
        eligible = np.isin(c_ids, [r[0] for r in cur.fetchall()])
      conn.rollback()
      raw_scores = c_emb @ q_emb[i]
      rank = np.where(eligible, raw_scores - adjusted, -np.inf)
      order = [j for j in np.argsort(-rank, kind="stable")[:10] if eligible[j]]
      assert [c for c, _ in got] == [c_ids[j] for j in order]
      np.testing.assert_allclose([s for _, s in got], raw_scores[order], atol=1e-5)
      changed += [c for c, _ in got] != [c_ids[j] for j in np.argsort(
          -np.where(eligible, raw_scores, -np.inf), kind="stable")[:len(order)]]
    assert changed > 0  # the penalty reorders some lists
  finally:
    pgvector.publish(conn, config=config, run_id=run_id, config_hash="x",
                     temperature=0.1, query_ids=q_ids, query_embeddings=q_emb,
                     candidate_ids=c_ids, candidate_embeddings=c_emb, calibration=(1.0, 0.0),
                     **QUIET)


@pytest.mark.slow
def test_bad_rule_column_is_named_by_its_config_key_and_nothing_is_written(second, tmp_path):
  url, conn, config, dirs, published = second
  raw = json.loads(config.to_json())
  raw["eligibility"]["age"]["max_column"] = "oldest_wanted"
  broken = config_lib.parse_config(raw, "broken.json")
  with conn.cursor() as cur:
    cur.execute("SELECT prosrc FROM pg_proc WHERE proname = 'tt_eligible'")
    before = cur.fetchone()[0]
  conn.rollback()
  with pytest.raises(schema_sql.SchemaSQLError,
                     match=r"config eligibility.age.max_column: column 'oldest_wanted'"):
    pgvector.publish(conn, config=broken, run_id="broken-rule", config_hash="x",
                     temperature=0.1, query_ids=["a"], query_embeddings=np.ones((1, 8)),
                     candidate_ids=["a"], candidate_embeddings=np.ones((1, 8)),
                     calibration=(1.0, 0.0), **QUIET)
  with conn.cursor() as cur:
    cur.execute("SELECT prosrc FROM pg_proc WHERE proname = 'tt_eligible'")
    assert cur.fetchone()[0] == before
    cur.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE %s", ("%broken_rule%",))
    assert cur.fetchone()[0] == 0
    cur.execute("SELECT version FROM tt_active_model")
    assert cur.fetchone()[0] == published["version"]
  conn.rollback()


@pytest.mark.slow
def test_user_to_item_config_through_the_same_stages(second, tmp_path):
  """Cards (another entity, no eligibility, no reciprocity): export -> train -> evaluate ->
  convert -> publish -> recommend(); recommend_reciprocal() refuses."""
  url, conn, _, _, _ = second
  with conn.cursor() as cur:
    cur.execute("DROP TABLE IF EXISTS cards; CREATE TABLE cards AS SELECT member_id AS card_id, "
                "town, age_years, joined_at FROM members WHERE age_years < 40")
  conn.commit()
  raw = json.loads(config_lib.load_config(CONFIG).to_json())
  for key in ("eligibility", "baseline"):
    raw.pop(key, None)
  raw["interactions"]["sql"] = ("SELECT v.voter, v.target, v.verdict, v.ts FROM votes v "
                                "JOIN cards c ON c.card_id = v.target")
  raw["entities"]["card"] = {
      "table": "cards", "id_column": "card_id", "created_at_column": "joined_at", "sql": None,
      "features": [{"name": "id", "type": "id", "embedding_dim": 8},
                   {"name": "town", "type": "categorical", "embedding_dim": 4},
                   {"name": "age", "type": "numeric", "column": "age_years"}]}
  raw["candidate"] = {"entity": "card"}
  config_path = tmp_path / "items.json"
  config_path.write_text(json.dumps(raw))
  d = {k: str(tmp_path / k) for k in ("dataset", "run", "eval", "coreml")}
  export_stage.run(d["dataset"], export_stage.ExportOptions(
      config_path=str(config_path), db_url=url, env_file=None, **GATE), **QUIET)
  train_stage.run(d["dataset"], d["run"], TRAINING, **QUIET)
  evaluate_stage.run(d["dataset"], [d["run"]], d["eval"],
                     evaluate_stage.EvaluateOptions(bootstrap=20, tensorboard=False,
                                                    baselines=("random", "popularity")), **QUIET)
  assert convert_stage.run(d["run"], d["dataset"], d["coreml"], num_examples=300,
                           num_queries=50, **QUIET)["gate"]["passed"]
  publish_stage.run(d["run"], d["dataset"], db_url=url, env_file=None, **QUIET)
  with conn.cursor() as cur:
    cur.execute("SELECT v.voter, count(*) FROM votes v JOIN cards c ON c.card_id = v.target "
                "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3")
    users = [r[0] for r in cur.fetchall()]
    cur.execute("SELECT card_id FROM cards")
    cards = {r[0] for r in cur.fetchall()}
  conn.rollback()
  for user in users:
    rows = pgvector.recommend(conn, user, 10, exact=True)
    with conn.cursor() as cur:
      cur.execute("SELECT target FROM votes WHERE voter = %s", (user,))
      seen = {r[0] for r in cur.fetchall()}
    conn.rollback()
    assert len(rows) == 10 and {c for c, _ in rows} <= cards - seen
  with pytest.raises(psycopg2.Error, match="users on both sides"):
    pgvector.recommend(conn, users[0], 10, reciprocal=True)
  conn.rollback()
