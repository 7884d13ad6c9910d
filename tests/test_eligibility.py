"""Eligibility rules: config validation, checks against the data, masks pair by pair, the
feature-matching baseline from config terms, exposure caps, the verdict and oracles.

Two schemas: the default one (the tiny world's dataset) and a second one built from the
same world with other table/column names, `Male`/`Female` casing, an array-valued
seeking column (Postgres `text[]` dump form "{a,b}") and per-user age ranges.
"""
import json
import os
import sys

import numpy as np
import pandas as pd
import pytest

from tfrs_two_tower import config as config_lib
from tfrs_two_tower import eligibility
from tfrs_two_tower.abtest import assignment
from tfrs_two_tower.abtest import simulator
from tfrs_two_tower.data import reader
from tfrs_two_tower.data import timestamps
from tfrs_two_tower.data import writer as writer_lib
from tfrs_two_tower.evaluation import baselines
from tfrs_two_tower.evaluation import evaluator
from tfrs_two_tower.evaluation import oracle as oracle_lib
from tfrs_two_tower.evaluation import report as report_lib
from tfrs_two_tower.evaluation import retrieval

SEX = {"man": "Male", "woman": "Female", "nonbinary": "Non-binary"}
LOOKING_FOR = {"men": "{MALE}", "women": "{female}", "everyone": "{Male,Female,Non-binary}"}


def second_schema_config():
  """Members/likes schema: other names, Male/Female casing, text[] seeking, age ranges."""
  return config_lib.parse_config({
      "format_version": 1,
      "interactions": {"table": "likes", "query_id_column": "actor", "candidate_id_column":
                       "target", "action_column": "kind", "timestamp_column": "at",
                       "weight_column": None, "sql": None,
                       "actions": {"LIKE": {"label": 1, "weight": 1.0},
                                   "SUPER": {"label": 1, "weight": 2.0},
                                   "NOPE": {"label": 0, "weight": 1.0}}},
      "query": {"entity": "member"}, "candidate": {"entity": "member"},
      "entities": {"member": {
          "table": "members", "id_column": "member_id", "created_at_column": "joined_at",
          "sql": None,
          "features": [
              {"name": "id", "type": "id", "embedding_dim": 8},
              {"name": "years", "type": "numeric"},
              {"name": "home", "type": "geo", "latitude_column": "lat",
               "longitude_column": "lng", "cell_degrees": 0.5, "embedding_dim": 4},
              {"name": "hobbies", "type": "multi_categorical", "embedding_dim": 8}]}},
      "eligibility": {
          "entity": "member",
          "preference": {"gender_column": "sex", "seeking_column": "looking_for",
                         "genders": {"m": ["Male"], "f": ["Female"], "x": ["Non-binary"]},
                         "seeking": {"Male": ["m"], "Female": ["f"], "Non-binary": ["x"]}},
          "age": {"column": "years", "min_column": "age_min", "max_column": "age_max"},
          "distance": {"feature": "home", "max_km": 150},
          "blocked": {"table": "blocks", "query_id_column": "blocker",
                      "candidate_id_column": "blocked"}},
      "baseline": {"terms": [
          {"type": "eligible", "weight": 10},
          {"type": "age_closeness", "column": "years", "window_years": 3, "weight": 0.5},
          {"type": "shared_values", "feature": "hobbies", "weight": 1.0}]},
      "verdict": {"expected_lift_low": 0.1, "expected_lift_high": 0.3, "auc_gate": 0.65},
  }, source="second schema")


def second_schema_tables(world):
  p = world.profiles
  members = pd.DataFrame({
      "member_id": p["id"], "joined_at": p["created_at"],
      "sex": p["gender"].map(SEX), "looking_for": p["seeking"].map(LOOKING_FOR),
      "years": p["age"], "age_min": p["age"] - 4, "age_max": p["age"] + 6,
      "lat": p["latitude"], "lng": p["longitude"], "hobbies": p["interests"]})
  members.loc[members.index[::50], "age_max"] = np.nan  # no upper bound: the rule passes
  kinds = {"like": "LIKE", "superlike": "SUPER", "pass": "NOPE"}
  likes = pd.DataFrame({"actor": world.swipes["swiper_id"], "target": world.swipes["swipee_id"],
                        "kind": world.swipes["action"].map(kinds),
                        "at": world.swipes["created_at"]})
  return members, likes


@pytest.fixture(scope="module")
def second_dataset(tmp_path_factory, tiny_world):
  config = second_schema_config()
  members, likes = second_schema_tables(tiny_world)
  path = str(tmp_path_factory.mktemp("second") / "dataset")
  split = writer_lib.default_split_time(
      timestamps.to_unix_seconds(likes["at"], "likes", "at", check_dates=False), 0.15)
  # The first 200 members block 3 members each.
  ids = members["member_id"].to_numpy()
  blocks = pd.DataFrame({"blocker": np.repeat(ids[:200], 3),
                         "blocked": np.roll(ids, -1)[np.arange(600) % 200 + np.arange(600) // 200]})
  with writer_lib.DatasetWriter(config, path, split, members, members,
                                num_train_shards=1, num_eval_shards=1, blocked_pairs=blocks,
                                check_dates=False) as w:
    w.add_interactions(likes)
  return reader.open_dataset(path), members, blocks


def by_hand(members: pd.DataFrame, a: int, b: int) -> bool:
  """The second schema's rules written out for one pair, from the raw table."""
  u, v = members.iloc[a], members.iloc[b]
  seeks = lambda row: {s.strip().lower() for s in row["looking_for"].strip("{}").split(",")}  # noqa: E731
  if v["sex"].lower() not in seeks(u) or u["sex"].lower() not in seeks(v):
    return False
  for x, y in ((u, v), (v, u)):
    if y["years"] < x["age_min"] or (not np.isnan(x["age_max"]) and y["years"] > x["age_max"]):
      return False
  return eligibility.haversine_km([u["lat"], u["lng"]], [v["lat"], v["lng"]]) <= 150


# -- config ----------------------------------------------------------------------------------

def test_default_config_declares_todays_rules(default_config):
  e = default_config.eligibility
  assert e.names == ["preference", "age", "exclude_self", "exclude_swiped"]
  assert dict(e.preference.seeking)["everyone"] == ("*",)
  assert [t.type for t in default_config.baseline.terms] == [
      "eligible", "age_closeness", "distance_decay", "shared_values"]
  assert default_config.rules.verdict.auc_gate == 0.7
  assert not default_config.rules.exposure.active
  # rules are not part of the hash: changing them needs no new dataset or run
  raw = json.loads(default_config.to_json())
  raw["eligibility"]["age"]["window_years"] = 7
  assert config_lib.parse_config(raw).hash == default_config.hash


def test_bad_rules_are_named_by_config_key(default_config):
  raw = json.loads(default_config.to_json())
  raw["eligibility"]["preference"]["seeking"]["men"] = ["male"]
  raw["eligibility"]["age"] = {"column": "age", "window_years": 5, "min_column": "lo"}
  raw["eligibility"]["distance"] = {"feature": "city", "max_km": 10}
  raw["eligibility"]["blocked"] = {"query_id_column": "a", "candidate_id_column": "b"}
  raw["baseline"]["sql"] = "SELECT 1"
  raw["verdict"] = {"auc_gate": 1.5}
  raw["exposure"] = {"max_impressions_per_day": 0}
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.parse_config(raw)
  text = str(e.value)
  for expected in ("eligibility.preference.seeking.men: ['male'] are not canonical genders",
                   "eligibility.age: expected either window_years or both min_column and max_column",
                   "eligibility.distance.feature: 'city' is not a geo feature",
                   "eligibility.blocked: expected either table or sql",
                   "baseline: expected either a non-empty terms list or sql",
                   "verdict.auc_gate: must be a number < 1, got 1.5",
                   "exposure.max_impressions_per_day: must be an integer >= 1"):
    assert expected in text, text


# -- the data --------------------------------------------------------------------------------

def test_values_the_mapping_does_not_name_are_one_error_per_rule(tiny_world, default_config,
                                                                 tmp_path):
  profiles = tiny_world.profiles.copy()
  profiles["seeking"] = profiles["seeking"].map({"men": "Male", "women": "Female",
                                                 "everyone": "Both"})
  with pytest.raises(writer_lib.DataError) as e:
    writer_lib.DatasetWriter(default_config, str(tmp_path / "ds"), 0, profiles, profiles,
                             check_dates=False)
  text = str(e.value)
  assert "eligibility.preference.seeking: column 'seeking' has values ['both', 'female', " \
         "'male'] that the mapping does not name" in text
  assert "none of the mapped values ['everyone', 'men', 'women'] occur" in text
  assert "eligibility.preference.genders" not in text  # genders match: no error for them
  assert not os.path.exists(tmp_path / "ds")
  del profiles["seeking"]
  with pytest.raises(writer_lib.DataError, match="missing column 'seeking'"):
    writer_lib.DatasetWriter(default_config, str(tmp_path / "ds"), 0, profiles, profiles,
                             check_dates=False)


def test_cells_split_arrays_and_postgres_array_text():
  assert eligibility.cell_values("{Male,\"Non-binary\"}") == ["Male", "Non-binary"]
  assert eligibility.cell_values(["a", None, " b "]) == ["a", "b"]
  assert eligibility.cell_values(np.array(["x"], dtype=object)) == ["x"]
  assert eligibility.cell_values(None) == [] and eligibility.cell_values("") == []
  assert eligibility.cell_values(float("nan")) == []


def test_second_schema_exports_rule_attributes_and_counts_users_without_candidates(
    second_dataset):
  dataset, members, _ = second_dataset
  stats = json.load(open(dataset.file("stats.json")))
  assert stats["eligibility"]["rules"] == ["preference", "age", "distance", "blocked",
                                           "exclude_self", "exclude_swiped"]
  expected = sum(not any(by_hand(members, a, b) for b in range(len(members)) if b != a)
                 for a in range(0, len(members), 35))
  share = stats["eligibility"]["users_without_candidates_share"]
  assert abs(share - expected / len(range(0, len(members), 35))) < 0.1
  attributes = eligibility.Attributes.load(dataset.file("entities/eligibility_query.npz"))
  assert set(attributes.numeric) == {"years", "age_min", "age_max"}
  # The count does not depend on how many pairs are masked at once (a 1M-user
  # corpus gets blocks of 16 rows): one row per block gives the same count.
  rules = eligibility.for_tables(dataset.config, attributes, eligibility.Attributes.load(
      dataset.file("entities/eligibility_candidate.npz")), now=2e9)
  rows = np.arange(len(members))
  whole = rules.users_without_candidates(rows)
  assert whole > 0 and rules.users_without_candidates(rows, block_pairs=1) == whole


# -- every ranked list respects the rules, pair by pair -----------------------------------------

def _assert_lists_eligible(top, data, members, name):
  checked = 0
  for user, row in enumerate(top.candidates[::5]):
    a = data.users[user * 5]
    for b in row[row >= 0]:
      assert by_hand(members, a, b), (name, a, b)
      checked += 1
  assert checked > 100, name


def test_every_recommender_respects_the_second_schemas_rules(second_dataset):
  dataset, members, blocks = second_dataset
  data = evaluator.prepare(dataset)
  index = pd.Index(members["member_id"])
  blocked = set(zip(index.get_indexer(blocks["blocker"]), index.get_indexer(blocks["blocked"])))
  blocked |= {(b, a) for a, b in blocked}  # a block hides both ways
  excluded = set(zip(data.users[data.exclusions.rows], data.exclusions.candidates))
  evaluated = set(data.users)
  assert {p for p in blocked if p[0] in evaluated} <= excluded
  assert data.eligible is not None and np.array_equal(data.query_ids, members["member_id"])
  fm = baselines.FeatureMatching(dataset.config, data.query_entities, data.candidate_entities,
                                 data.eligible)
  rng = np.random.default_rng(0)
  dim = 6
  q_emb, c_emb = rng.normal(size=(len(members), dim)), rng.normal(size=(len(members), dim))
  model = retrieval.EmbeddingScorer(data.query_ids, data.candidate_ids, q_emb, c_emb)
  backward = retrieval.EmbeddingScorer(data.query_ids, data.candidate_ids, c_emb, q_emb)
  recip = retrieval.ReciprocalScorer(model, backward, retrieval.PlattCalibration(1.0, 0.0))
  scorers = [baselines.RandomScorer(data.query_ids, data.candidate_ids),
             baselines.PopularityScorer(data.query_ids, data.candidate_ids, data.likes_received),
             fm, model, recip, retrieval.CandidatePenalty.hubness(model, 0.5),
             retrieval.ExposureControl(model, 3)]
  for scorer in scorers:
    result = evaluator.evaluate(scorer, data, [10])
    _assert_lists_eligible(result.top, data, members, scorer.name)
    assert evaluator.eligibility_violations(result, data) == 0
    listed = {(data.users[u], c) for u, row in enumerate(result.top.candidates) for c in row}
    assert not listed & blocked, scorer.name
  # the baseline is the config's terms
  u, v = rng.integers(0, len(members), 50), rng.integers(0, len(members), 50)
  hobbies = members["hobbies"].tolist()
  expected = [10 * (by_hand(members, a, b) - 1)
              - 0.5 * max(abs(members["years"][a] - members["years"][b]) - 3, 0)
              + len(set(hobbies[a]) & set(hobbies[b])) for a, b in zip(u, v)]
  np.testing.assert_allclose(fm.pair_scores(u, v), expected, atol=1e-4)


def test_simulator_feeds_respect_the_rules(tiny_world, default_config):
  rules = simulator.world_rules(tiny_world, default_config)
  fm = simulator.feature_matching(tiny_world, default_config)
  exp = assignment.Experiment.from_weights("rules", {"control": 1, "capped": 1})
  capped = retrieval.ExposureControl(simulator.oracle(tiny_world), 2)
  sim = simulator.simulate(tiny_world, {"control": fm, "capped": capped}, exp,
                           simulator.SimulationParams(days=3, seed=1, rules=rules,
                                                      attention_per_day=4.0),
                           log=lambda *a: None)
  index = tiny_world.user_index
  u, v = index(sim.swipes["swiper_id"]), index(sim.swipes["swipee_id"])
  assert len(u) > 200 and rules.pairs(u, v).all()
  assert (u != v).all()
  assert set(sim.true_match_probability_limited) == {"control", "capped"}
  for arm in ("control", "capped"):  # limited attention can only lose matches
    assert sim.true_match_probability_limited[arm] <= sim.true_match_probability[arm] + 1e-12


def test_simulator_draws_swipes_from_a_pluggable_oracle(tiny_world):
  exp = assignment.Experiment.from_weights("truth", {"a": 1, "b": 1})
  fm = simulator.oracle(tiny_world)
  for p, actions in ((0.0, {"pass"}), (1.0, {"superlike"})):
    truth = oracle_lib.checked(lambda a, b, p=p: np.full(len(a), p), "test oracle")
    sim = simulator.simulate(tiny_world, {"a": fm, "b": fm}, exp,
                             simulator.SimulationParams(days=1, like_probability=truth),
                             log=lambda *a: None)
    assert set(sim.swipes["action"]) == actions and sim.true_like_probability["a"] == p


# -- exposure cap --------------------------------------------------------------------------------

def test_exposure_cap_bounds_every_candidates_slots_and_keeps_list_order():
  rng = np.random.default_rng(1)
  ids = np.array([f"u{i}" for i in range(300)], dtype=object)
  q, c = rng.normal(size=(300, 4)), rng.normal(size=(300, 4))
  c[:5] += 5.0  # hubs
  model = retrieval.EmbeddingScorer(ids, ids, q, c)
  plain = retrieval.top_k(model, np.arange(300), 10)
  capped = retrieval.top_k(retrieval.ExposureControl(model, 20), np.arange(300), 10)
  assert np.bincount(plain.candidates.ravel()).max() > 20
  assert np.bincount(capped.candidates[capped.candidates >= 0].ravel()).max() <= 20
  listed = capped.candidates >= 0
  assert (np.diff(np.where(listed, capped.scores, -1e9), axis=1) <= 0).all()
  assert listed.mean() > 0.99
  # Only the shown places count impressions; longer lists continue uncapped, full.
  long = retrieval.top_k(retrieval.ExposureControl(model, 20, shown_slots=10), np.arange(300), 30)
  assert np.bincount(long.candidates[:, :10].ravel()).max() <= 20
  assert (long.candidates >= 0).all()
  assert all(len(set(row)) == 30 for row in long.candidates)


# -- verdict and oracle --------------------------------------------------------------------------

def _estimate(value, low=None, high=None):
  return {"value": value, "ci": [low if low is not None else value - 0.01,
                                 high if high is not None else value + 0.01]}


def _report(lift_value, mode="one_way", violations=0):
  return {"k": [10], "lift_baseline": "feature_matching",
          "verdict_thresholds": {"auc_gate": 0.65, "expected_lift_low": 0.1,
                                 "expected_lift_high": 0.3},
          "recommenders": {
              "feature_matching": {"kind": "baseline", "eligibility_violations": violations,
                                   "segments": {"all": {"auc": _estimate(0.6)}}},
              "m": {"kind": "model", "mode": mode,
                    "segments": {"all": {"auc": _estimate(0.68)}}}},
          "lifts": {"m": {"all": {"recall@10": _estimate(lift_value),
                                  "match_recall@10": _estimate(lift_value)}}},
          "answer": {"m": {"beats": lift_value > 0.01, "estimator": "impression_conditioned",
                           "line": f"like precision lift {lift_value:+.0%}",
                           "lift": _estimate(lift_value), "match_lift": _estimate(lift_value)}}}


def test_verdict_gates_by_what_scores_mean():
  one_way = report_lib.verdict(_report(0.25))["m"]
  assert one_way["auc_gate"] is True and "> 0.65" in one_way["line"]  # the config's gate
  assert one_way["lift_gate"] and not one_way["alarm"] and one_way["judged_on"] == "like"
  recip = report_lib.verdict(_report(0.25, mode="reciprocal"))["m"]
  assert recip["auc_gate"] is None and "AUC gate not applied" in recip["line"]
  assert recip["judged_on"] == "match" and recip["lift_gate"]
  assert "match lift over feature matching" in recip["line"] and "+10% to +30%" in recip["line"]
  alarm = report_lib.verdict(_report(158.13))["m"]
  assert "probably a broken baseline" in alarm["line"] and alarm["alarm"]
  broken = report_lib.verdict(_report(0.25, violations=12))["m"]
  assert broken["lift_gate"] is None and "break the eligibility rules (12" in broken["line"]
  assert "lift over" not in broken["line"]


def test_oracle_is_loaded_and_checked(tmp_path, monkeypatch):
  (tmp_path / "panel.py").write_text(
      "import numpy as np\n"
      "def good(a, b):\n  return np.full(len(a), 0.25)\n"
      "def short(a, b):\n  return np.zeros(len(a) - 1)\n"
      "def big(a, b):\n  return np.full(len(a), 2.0)\n")
  (tmp_path / "broken.py").write_text("raise RuntimeError('no panel today')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  ids = np.array(["a", "b", "c"], dtype=object)
  np.testing.assert_allclose(oracle_lib.load("panel:good")(ids, ids), 0.25)
  for spec, message in (("panel", "expected package.module:function"),
                        ("missing_module_x:f", "cannot import 'missing_module_x'"),
                        ("broken:f", "RuntimeError: no panel today"),
                        ("panel:nope", "has no function 'nope'")):
    with pytest.raises(oracle_lib.OracleError, match="--oracle"):
      oracle_lib.load(spec)
    with pytest.raises(oracle_lib.OracleError, match=message):
      oracle_lib.load(spec)
  with pytest.raises(oracle_lib.OracleError, match=r"returned shape \(2,\) for 3 pairs"):
    oracle_lib.load("panel:short")(ids, ids)
  with pytest.raises(oracle_lib.OracleError, match="outside \\[0, 1\\]"):
    oracle_lib.load("panel:big")(ids, ids)
  sys.modules.pop("panel", None)


# -- the app's own SQL baseline ------------------------------------------------------------------

@pytest.fixture
def sql_baseline_dataset(tmp_path, tiny_world, default_config, fresh_database):
  """The tiny world's dataset with `baseline.sql`, and the app's matches in a real database:
  for each user the 10 nearest ages among everyone (the gender filter forgotten)."""
  import psycopg2
  raw = json.loads(default_config.to_json())
  raw["baseline"] = {"sql": "SELECT candidate_id, score FROM todays_matches "
                            "WHERE user_id = %(user_id)s"}
  config = config_lib.parse_config(raw)
  profiles = tiny_world.profiles
  path = str(tmp_path / "ds")
  seconds = timestamps.to_unix_seconds(tiny_world.swipes["created_at"], "swipes", "created_at",
                                       check_dates=False)
  with writer_lib.DatasetWriter(config, path, writer_lib.default_split_time(seconds, 0.15),
                                profiles, profiles, num_train_shards=1, num_eval_shards=1,
                                check_dates=False) as w:
    w.add_interactions(tiny_world.swipes)
  ages = profiles["age"].to_numpy()
  ids = profiles["id"].to_numpy()
  rows = []
  for i in range(len(ids)):
    gap = np.abs(ages - ages[i]).astype(float)
    gap[i] = np.inf
    for j in np.argsort(gap, kind="stable")[:10]:
      rows.append((ids[i], ids[j], float(-gap[j])))
  conn = psycopg2.connect(fresh_database)
  with conn.cursor() as cur:
    cur.execute("CREATE TABLE todays_matches (user_id text, candidate_id text, score real)")
    cur.executemany("INSERT INTO todays_matches VALUES (%s, %s, %s)", rows)
  conn.commit()
  conn.close()
  return path, fresh_database, raw


@pytest.mark.slow
def test_sql_baseline_lists_are_judged_as_served(sql_baseline_dataset, tmp_path):
  from tfrs_two_tower.stages import evaluate_stage
  path, db_url, raw = sql_baseline_dataset
  report = evaluate_stage.run(path, [], str(tmp_path / "eval"),
                              evaluate_stage.EvaluateOptions(ks=[10], bootstrap=20,
                                                             baselines=["feature_matching"],
                                                             db_url=db_url), log=lambda *a: None)
  fm = report["recommenders"]["feature_matching"]
  assert fm["eligibility_violations"] > 100  # same-sex pairs: the app's SQL forgot the filter
  assert "break the eligibility rules" in report_lib._baseline_error(report)
  with pytest.raises(evaluate_stage.EvaluationInputError, match="give the app's database"):
    evaluate_stage.run(path, [], str(tmp_path / "e2"),
                       evaluate_stage.EvaluateOptions(baselines=["feature_matching"]))


@pytest.mark.slow
def test_bad_sql_baselines_are_named(sql_baseline_dataset, tmp_path):
  import psycopg2
  path, db_url, raw = sql_baseline_dataset
  data = evaluator.prepare(reader.open_dataset(path))
  conn = psycopg2.connect(db_url)
  for sql, message in (
      ("SELECT candidate_id, score FROM no_such_table WHERE %(user_id)s IS NOT NULL",
       "config baseline.sql failed for user .*UndefinedTable"),
      ("SELECT 'stranger', 1.0 WHERE %(user_id)s IS NOT NULL",
       "returned candidate id 'stranger' .* not in the dataset's profiles")):
    with pytest.raises(baselines.SqlBaselineError, match=message):
      baselines.SqlBaseline(data.query_ids, data.candidate_ids, conn, sql, data.users[:3])
  conn.close()
  assert not os.path.exists(tmp_path / "eval")
