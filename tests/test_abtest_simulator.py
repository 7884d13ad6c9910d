"""The simulator through a real PostgreSQL: A/A, injected SRM, a real lift, SQL == pandas."""
import dataclasses

import numpy as np
import pandas as pd
import psycopg2
import pytest

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.abtest import analysis
from tfrs_two_tower.abtest import assignment
from tfrs_two_tower.abtest import calibration
from tfrs_two_tower.abtest import database
from tfrs_two_tower.abtest import outcomes as outcomes_lib
from tfrs_two_tower.abtest import simulator
from tfrs_two_tower.data import history as history_lib
from tfrs_two_tower.data import seeding
from tfrs_two_tower.data import synthetic
from tfrs_two_tower.stages import abtest_stage
from tfrs_two_tower.stages import train_stage

# Every test here runs subprocesses, conversions or a pipeline: minutes, not seconds.
pytestmark = pytest.mark.slow

PARAMS = simulator.SimulationParams(days=10, seed=3)


@pytest.fixture(scope="module")
def recommenders(tiny_world):
  return {"feature_matching": simulator.feature_matching(tiny_world, config_lib.load_config()),
          "oracle": simulator.oracle(tiny_world, reciprocal=True)}


@pytest.fixture
def world_database(fresh_database, tiny_world):
  conn = psycopg2.connect(fresh_database)
  simulator.check_empty(conn)
  seeding.seed(conn, tiny_world, log=lambda *a: None)
  database.install_schema(conn, config_lib.load_config())
  yield conn
  conn.close()


def _round_trip(conn, simulation):
  simulator.write_experiment(conn, simulation, config_lib.load_config())
  definition, outcomes, mismatches, snapshot = database.read_snapshot(
      conn, simulation.definition.name, config_lib.load_config())
  return analysis.analyze(outcomes, definition, assignment_mismatches=mismatches,
                          snapshot_at=snapshot), outcomes, definition


def test_aa_round_trip_srm_injection_and_sql_equals_pandas(world_database, tiny_world,
                                                          recommenders):
  fm = recommenders["feature_matching"]
  exp = assignment.Experiment.from_weights("aa", {"control": 1, "treatment": 1})
  simulation = simulator.simulate(tiny_world, {"control": fm, "treatment": fm}, exp, PARAMS,
                                  log=lambda *a: None)
  # Users were assigned by the real hash; everyone active was exposed once.
  exposed = simulation.exposures.set_index("user_id")["arm"]
  assert (exposed == exp.assign_many(list(exposed.index))).all()
  assert len(simulation.exposures) > 300
  # The arms' feeds are logged in the impressions schema: one shown row per swipe.
  log = simulation.impressions
  assert len(log) == len(simulation.swipes) and log["shown"].all()
  assert (log["propensity"] == 1).all()
  assert log["position"].between(0, tiny_world.params.feed_size - 1).all()
  assert set(zip(log["viewer_id"], log["profile_id"])) == set(
      zip(simulation.swipes["swiper_id"], simulation.swipes["swipee_id"]))
  result, outcomes, definition = _round_trip(world_database, simulation)
  assert result["srm"]["passed"] and result["assignment_mismatches"] == 0
  assert result["verdict"] != analysis.INVALID
  assert sum(a["exposed_users"] for a in result["arms"].values()) == len(simulation.exposures)
  # The SQL view and the CSV path compute the same outcomes from the same data.
  swipes = outcomes_lib.clean_swipes(pd.concat([tiny_world.swipes, simulation.swipes]), "all",
                                       config_lib.load_config())
  expected = outcomes_lib.user_outcomes(outcomes_lib.clean_exposures(simulation.exposures, "e"),
                                        swipes, definition)
  got = outcomes.sort_values("user_id").reset_index(drop=True)
  expected = expected.sort_values("user_id").reset_index(drop=True)
  pd.testing.assert_frame_equal(got.drop(columns="first_exposed_at"),
                                expected.drop(columns="first_exposed_at"), check_dtype=False)
  assert got["matches"].sum() > 50 and got["pre_swipes"].sum() > 1000
  # Re-randomised A/A splits of this population: significant about alpha of the time.
  aa = calibration.resplit(outcomes, definition, 100)
  assert aa["false_positive_rate"]["match_rate"] <= 0.05 + 3 * aa["standard_error"]
  assert aa["false_positive_rate"]["like_rate"] <= 0.05 + 3 * aa["standard_error"]
  assert aa["naive_like_rate_false_positive_rate"] > aa["false_positive_rate"]["like_rate"]

  # A client that loses 40 % of the treatment's exposure logs: SRM -> invalid (with ~230
  # users per arm; the loss SRM can catch shrinks as 1 / sqrt(users), see docs/abtest.md).
  simulator.remove_experiment(world_database, simulation)
  broken = simulator.simulate(
      tiny_world, {"control": fm, "treatment": fm},
      assignment.Experiment.from_weights("srm", {"control": 1, "treatment": 1}),
      dataclasses.replace(PARAMS, exposure_log_loss={"treatment": 0.4}), log=lambda *a: None)
  result, *_ = _round_trip(world_database, broken)
  assert not result["srm"]["passed"]
  assert result["verdict"] == analysis.INVALID and "comparisons" not in result


def test_a_real_lift_is_detected(world_database, fresh_database, tiny_world, recommenders,
                                 tmp_path):
  exp = assignment.Experiment.from_weights("lift", {"control": 1, "treatment": 1})
  simulation = simulator.simulate(
      tiny_world, {"control": recommenders["feature_matching"],
                   "treatment": recommenders["oracle"]}, exp, PARAMS, log=lambda *a: None)
  truth = simulation.true_like_probability
  assert truth["treatment"] > truth["control"] * 1.3
  result, *_ = _round_trip(world_database, simulation)
  assert result["srm"]["passed"]
  like_rate = result["comparisons"]["treatment"]["like_rate"]
  assert like_rate["p_value"] < 1e-6 and like_rate["ci_low"] > 0
  # The CI covers the true difference in what the arms showed (means of the oracle's P(like)).
  assert like_rate["ci_low"] < truth["treatment"] - truth["control"] < like_rate["ci_high"]
  assert result["comparisons"]["treatment"]["matches_per_user"]["difference"] > 0
  # The script's stage reads the same snapshot through the URL and writes the report.
  out = tmp_path / "report"
  staged = abtest_stage.run(experiment="lift", db_url=fresh_database, env_file=None,
                            output_dir=str(out), log=lambda *a: None)
  assert staged["verdict"] == result["verdict"]
  assert staged["comparisons"] == result["comparisons"]
  manifest = (out / "manifest.json").read_text()
  assert '"database": "postgresql://postgres@' in manifest


def test_simulation_refuses_a_database_with_data(world_database):
  with pytest.raises(ValueError, match="EMPTY database"):
    simulator.check_empty(world_database)


def test_reciprocal_treatment_knows_the_swipes_so_far(tiny_world, tiny_run_dir):
  """two_tower_reciprocal is re-armed each day with every swipe made before that day: people
  who already liked the user are shown (P(v likes u) = 1), people who passed on them never
  (P(v likes u) = 0); the one-way towers know neither."""
  one_way = simulator.two_tower(tiny_world, tiny_run_dir)
  reciprocal = simulator.two_tower(tiny_world, tiny_run_dir, reciprocal=True)
  assert reciprocal.combination == "product" and reciprocal.back_swipes is None
  exp = assignment.Experiment.from_weights("recip", {"control": 1, "treatment": 1})
  params = dataclasses.replace(PARAMS, days=3)
  shares = {}
  for name, recommender in (("one_way", one_way), ("reciprocal", reciprocal)):
    simulation = simulator.simulate(tiny_world, {"control": recommender,
                                                 "treatment": recommender}, exp, params,
                                    log=lambda *a: None)
    # What the other side had said before each shown pair's day (history + earlier days).
    swipes = pd.concat([tiny_world.swipes, simulation.swipes], ignore_index=True)
    day = (swipes["created_at"] - simulation.definition.starts_at).dt.days
    shown = simulation.swipes.assign(day=day[len(tiny_world.swipes):].to_numpy())
    back = swipes.assign(day=day).rename(columns={"swiper_id": "swipee_id",
                                                  "swipee_id": "swiper_id",
                                                  "action": "back", "day": "back_day"})
    pairs = shown.merge(back[["swiper_id", "swipee_id", "back", "back_day"]],
                        on=["swiper_id", "swipee_id"], how="left")
    known = pairs[pairs["back_day"] < pairs["day"]]
    shares[name] = {"liked_me": known["back"].isin(["like", "superlike"]).sum() / len(shown),
                    "passed_me": (known["back"] == "pass").sum() / len(shown)}
  assert shares["reciprocal"]["passed_me"] == 0
  assert shares["one_way"]["passed_me"] > 0.01
  assert shares["reciprocal"]["liked_me"] > 3 * shares["one_way"]["liked_me"]
  # The re-armed scorer holds exactly the observed outcomes.
  observed = simulator.retrieval.BackSwipes.from_swipes(
      tiny_world.user_index(tiny_world.swipes["swipee_id"]),
      tiny_world.user_index(tiny_world.swipes["swiper_id"]),
      (tiny_world.swipes["action"] != "pass").to_numpy(), len(tiny_world.profiles))
  armed = simulator._observing(reciprocal, observed, tiny_world.profiles["id"].to_numpy(str))
  last = tiny_world.swipes.drop_duplicates(["swiper_id", "swipee_id"], keep="last")
  np.testing.assert_array_equal(
      armed.back_swipes.lookup(armed.query_rows(last["swipee_id"]),
                               armed.candidate_rows(last["swiper_id"])),
      (last["action"] != "pass").to_numpy())
  assert simulator._observing(one_way, observed, None) is one_way


def test_a_history_treatment_ranks_with_the_history_of_each_day(tiny_world, tmp_path):
  """A run whose query tower reads the history is rebuilt each simulated day: day 1's feeds
  are the top-k of the query embeddings with the world's swipes plus day 0's."""
  raw = config_lib.load_config().raw
  raw["history"] = {"max_length": 5, "lists": ["liked", "passed"]}
  ds, run_path = str(tmp_path / "ds"), str(tmp_path / "run")
  synthetic.write_world_dataset(tiny_world, config_lib.parse_config(raw), ds)
  train_stage.run(ds, run_path, train_stage.TrainOptions(
      epochs=1, steps_per_epoch=4, batch_size=128, layer_sizes=[16], embedding_dim=8),
      log=lambda *a: None)
  recommender = simulator.two_tower(tiny_world, run_path)
  assert isinstance(recommender, simulator.HistoryTwoTower)
  ids = tiny_world.profiles["id"].to_numpy(str)
  run = recommender.run
  at_end = history_lib.histories_at(run.config.history,
                                    simulator.swipe_interactions(tiny_world.swipes), ids)
  queries = dict(simulator.world_entities(tiny_world, run.config, "query"), **at_end)
  np.testing.assert_allclose(recommender.current.query_embeddings, run.embed("query", queries),
                             atol=1e-6)

  exp = assignment.Experiment.from_weights("hist", {"control": 1, "treatment": 1})
  simulation = simulator.simulate(tiny_world, {"control": recommender, "treatment": recommender},
                                  exp, dataclasses.replace(PARAMS, days=2), log=lambda *a: None)
  day = (simulation.swipes["created_at"] - simulation.definition.starts_at).dt.days.to_numpy()
  day0 = simulation.swipes[day == 0]
  today = recommender.as_of(simulator.swipe_interactions(
      pd.concat([tiny_world.swipes, day0], ignore_index=True)))
  feeds = simulation.impressions[simulation.impressions["feed_id"].str.split(":").str[1] == "1"]
  users = feeds["viewer_id"].unique()
  before = pd.concat([tiny_world.swipes, day0], ignore_index=True)
  exclude = [before.loc[before["swiper_id"] == u, "swipee_id"].tolist() for u in users]
  expected, _ = today.current.top_k(users, tiny_world.params.feed_size, exclude=exclude)
  got = feeds.sort_values(["viewer_id", "position"]).groupby("viewer_id")["profile_id"].apply(list)
  for user, row in zip(users, expected):
    assert got[user] == [c for c in row if c is not None][:len(got[user])], user
  # the day-0 swipers' embeddings moved: a stale (world-end) history would rank otherwise
  moved = np.isin(ids, day0["swiper_id"].unique())
  assert not np.allclose(today.current.query_embeddings[moved],
                         recommender.current.query_embeddings[moved], atol=1e-4)
