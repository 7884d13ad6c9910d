"""Reciprocal probes: the world fires them, the log carries them, match estimates use them.

A probe shows the profile v the viewer u right after u was shown v, with a known
probability; the probed rows' back-swipes make the match-rate estimators unbiased
(`evaluation.off_policy`, module docstring 4a). Real worlds, real datasets.
"""
import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.data import impressions
from tfrs_two_tower.data import reader
from tfrs_two_tower.data import synthetic
from tfrs_two_tower.data import writer as writer_lib
from tfrs_two_tower.evaluation import evaluator
from tfrs_two_tower.evaluation import off_policy

SMALL = synthetic.WorldParams(num_users=400, days=30, seed=3, exploration=0.2,
                              exploration_local=0.0)
RHO = 0.5


def probe_config(default_config, **columns):
  raw = copy.deepcopy(default_config.raw)  # the session's config stays as it is
  raw["impressions"].update(columns or {"probe_column": "probed",
                                        "probe_propensity_column": "probe_propensity"})
  return config_lib.parse_config(raw, source="probe config")


@pytest.fixture(scope="module")
def plain_world():
  return synthetic.generate_world(SMALL)


@pytest.fixture(scope="module")
def probed_world():
  return synthetic.generate_world(dataclasses.replace(SMALL, reciprocal_probe=RHO,
                                                      probe_scope="all"))


def probe_pairs(world):
  """(viewer, profile) of the probed rows, and the reversed pairs (the probe swipes)."""
  rows = world.impressions[world.impressions["probed"]]
  return (set(zip(rows["viewer_id"], rows["profile_id"])),
          set(zip(rows["profile_id"], rows["viewer_id"])))


def test_no_probes_leave_the_world_identical(plain_world, probed_world):
  """rho = 0 draws nothing (no probe columns); rho > 0 draws from its own stream, so the
  feeds are the same and only the probed pairs' swipes differ."""
  assert "probed" not in plain_world.impressions
  pd.testing.assert_frame_equal(
      probed_world.impressions.drop(columns=["probed", "probe_propensity"]),
      plain_world.impressions)
  _, reversed_pairs = probe_pairs(probed_world)

  def without_probed(swipes):
    keep = [pair not in reversed_pairs for pair in zip(swipes["swiper_id"], swipes["swipee_id"])]
    return swipes[keep].reset_index(drop=True)
  pd.testing.assert_frame_equal(without_probed(probed_world.swipes),
                                without_probed(plain_world.swipes))
  assert len(probed_world.swipes) > len(plain_world.swipes)


def test_probed_rows_carry_the_flag_and_the_back_swipe(probed_world):
  log = probed_world.impressions
  assert abs(log["probed"].mean() - RHO) < 0.05
  np.testing.assert_allclose(log["probe_propensity"], RHO * log["propensity"])
  pairs = set(zip(probed_world.swipes["swiper_id"], probed_world.swipes["swipee_id"]))
  _, reversed_pairs = probe_pairs(probed_world)
  assert reversed_pairs <= pairs
  # Probes only on exploring feeds' impressions: the explore-branch probability is logged.
  explored = synthetic.generate_world(dataclasses.replace(SMALL, reciprocal_probe=1.0)
                                      ).impressions  # the default scope: "explored"
  below = explored["propensity"] < 1 - SMALL.exploration  # only an exploring feed shows these
  assert explored.loc[below, "probed"].all()
  assert (explored["probe_propensity"] <= explored["propensity"] + 1e-12).all()
  fired = explored.groupby("feed_id")["probed"].agg(["any", "all"])
  assert (fired["any"] == fired["all"]).all()  # a feed explored (all probed) or not (none)
  assert 0.5 * SMALL.exploration < fired["any"].mean() < 1.5 * SMALL.exploration


def test_probed_log_reaches_the_estimator_with_every_back_swipe(probed_world, default_config,
                                                                tmp_path):
  path = str(tmp_path / "dataset")
  synthetic.write_world_dataset(probed_world, probe_config(default_config), path,
                                num_train_shards=1, num_eval_shards=1)
  dataset = reader.open_dataset(path)
  assert dataset.stats["impressions"]["probed_rows"] == int(
      probed_world.impressions["probed"].sum())
  data = evaluator.prepare(dataset)
  feeds = off_policy.logged_feeds(impressions.read(dataset), data, impressions.FILE)
  assert feeds.probes and feeds.notes["probed"] > 100
  # Every probed row's back-swipe is in the data (eval window, train or validation).
  assert not np.isnan(feeds.back[feeds.probed]).any()
  # The packaged config declares no probe columns: the same log read with it has none.
  assert "probed" not in impressions.from_log(default_config, probed_world.impressions,
                                              "world impressions")


def hand_feeds():
  """Feed 0 (user 0): a (row 0, p .5, probe p .25, probed) liked, liked back; c (2) p 1
  passed. Feed 1 (user 1): d (3) p .8 passed; e (4) p .4, probe p .2, probed, liked,
  passed back."""
  return off_policy.LoggedFeeds(
      feed=np.array([0, 0, 1, 1]), users=np.array([0, 0, 1, 1]),
      candidates=np.array([0, 2, 3, 4]), position=np.array([0, 1, 0, 1]),
      score=np.zeros(4), propensity=np.array([.5, 1., .8, .4]),
      shown=np.ones(4, bool), like=np.array([1., 0, 0, 1]),
      back=np.array([1., np.nan, np.nan, 0.]), feed_users=np.array([0, 1]),
      feed_times=np.array([100, 200]), source="hand.parquet", notes={},
      probed=np.array([True, False, False, True]),
      probe_propensity=np.array([.25, np.nan, .4, .2]))


def test_probe_estimators_match_a_hand_computed_example():
  feeds = hand_feeds()
  # Lists {b, a} for user 0 and {e, f} for user 1: a and e were shown and probed.
  feed, candidates = np.array([0, 0, 1, 1]), np.array([1, 0, 4, 5])
  lists = off_policy.Lists(feed, feed, candidates, np.full(4, 0.3), np.full(4, 0.9), None,
                           None, 0, q_match_model=np.full(4, 0.1))
  sums = off_policy.per_user_sums(feeds, lists, np.full(4, 0.3), np.full(4, 0.5), num_users=2)

  def pooled(name):
    return sums.numerators[name].sum() / sums.denominators[name].sum()
  # probe weights: a 1/.25 = 4 (match 1), e 1/.2 = 5 (match 0). Four list slots.
  assert pooled("ips_match") == pytest.approx(4 / 4)
  assert pooled("snips_match") == pytest.approx(4 / 9)
  # DR: the model's P(like) P(back) = .3 * .5 on rows and q_match_model .1 on slots --
  # never the observed back-swipe (q_match .9 is not used).
  assert pooled("dr_match") == pytest.approx((4 * 0.1 + 4 * (1 - 0.15) + 5 * (0 - 0.15)) / 4)
  assert pooled("ips_like") == pytest.approx((2 + 2.5) / 4)  # like rate: unchanged
  support = sums.support
  assert support["match_from"] == "reciprocal probes" and support["match_supported"]
  assert support["probes"] == {"matched_probed_impressions": 2,
                               "effective_sample_size": pytest.approx(81 / 41, abs=0.1),
                               "max_weight": 5.0, "unanswered_probes": 0}
  assert off_policy.match_refusal(support, "x") is None
  # An unanswered probe counts as no match, and is said.
  feeds.back[0] = np.nan
  sums = off_policy.per_user_sums(feeds, lists, np.full(4, 0.3), np.full(4, 0.5), num_users=2)
  assert pooled("ips_match") == 0.0
  assert sums.support["probes"]["unanswered_probes"] == 1
  warnings = off_policy.check_support(sums.support, "hand.parquet", "x")
  assert any("1 probed impressions in the lists have no back-swipe" in w for w in warnings)
  # Probes in the log, none on a listed pair: refused, saying so.
  feeds.probed = np.array([False, True, False, False])
  sums = off_policy.per_user_sums(feeds, lists, np.full(4, 0.3), np.full(4, 0.5), num_users=2)
  assert not sums.support["match_supported"]
  assert "no probed impression falls in its lists" in off_policy.match_refusal(sums.support,
                                                                              "x")


@pytest.mark.parametrize("scope", ["all", "explored"])
def test_match_estimators_are_unbiased_over_replications_of_the_probes(scope,
                                                                        exploring_replications):
  """The `exploring_replications` world; probes fire on every impression (rho .5) or on
  exploring feeds' only (rho 1). Over 300 replications the mean IPS and DR (with a
  wrong reward model) of match rate@5 equal the truth sum P(u likes v) P(v likes u) of
  a new ranking's lists; SNIPS within its small bias."""
  s = exploring_replications(1)
  rho = 0.5 if scope == "all" else 1.0
  p_back = s.rng.beta(2, 3, (s.feeds_n, s.n))
  truth_match = s.p_like[s.feed, s.candidates] * p_back[s.feed, s.candidates]
  lists = off_policy.Lists(s.feed, s.feed % 50, s.candidates, np.full(s.feed.size, 0.5),
                           np.full(s.feed.size, 0.5), s.p_like[s.feed, s.candidates],
                           truth_match, 0,
                           q_match_model=np.full(s.feed.size, 0.5 * 0.7))  # = the rows' q
  estimates = {"ips_match": [], "snips_match": [], "dr_match": []}
  for _ in range(300):
    row, col, v, propensity, explored, shown = s.replicate()
    probed = s.rng.random(row.size) < rho
    if scope == "all":
      probe_propensity = rho * propensity
    else:
      probed &= explored[row]
      probe_propensity = rho * s.eps * synthetic.exploration_inclusion(s.strata,
                                                                       shown)[row, col]
    # The back-swipe is observed where probed, and on some other rows by chance.
    seen = probed | (s.rng.random(row.size) < 0.3)
    back = np.where(seen, (s.rng.random(row.size) < p_back[row, v]).astype(float), np.nan)
    logged = off_policy.LoggedFeeds(
        feed=row, users=row % 50, candidates=v, position=col, score=np.zeros(row.size),
        propensity=propensity, shown=np.ones(row.size, bool),
        like=(s.rng.random(row.size) < s.p_like[row, v]).astype(float), back=back,
        feed_users=np.arange(s.feeds_n) % 50, feed_times=np.zeros(s.feeds_n, np.int64),
        source="replication", notes={}, probed=probed, probe_propensity=probe_propensity)
    sums = off_policy.per_user_sums(logged, lists, np.full(row.size, 0.5),
                                    np.full(row.size, 0.7), 50)
    for name in estimates:
      estimates[name].append(sums.numerators[name].sum() / sums.denominators[name].sum())
  s.assert_unbiased(estimates, truth_match.sum() / s.feed.size, "snips_match", (scope,))


@pytest.mark.parametrize("column,value,message", [
    ("probed", "maybe", r"column 'probed' row 3: probed must be true/false \(got 'maybe'\)"),
    ("probed", None, r"column 'probed' row 3: missing probed"),
    ("probe_propensity", 1.5, r"column 'probe_propensity' row 3: probe propensity must be in "
                              r"\(0, 1\] where probed"),
    ("probe_propensity", "x", r"column 'probe_propensity' row 3: probe propensity must be a "
                              "number"),
])
def test_bad_probe_values_are_refused_naming_column_and_row(probed_world, default_config,
                                                            column, value, message):
  log = probed_world.impressions.head(10).copy()
  log[column] = log[column].astype(object)
  log.loc[3, column] = value
  with pytest.raises(writer_lib.DataError, match=message):
    impressions.from_log(probe_config(default_config), log, "feed.csv")


def test_probe_propensity_rules_where_probed_and_not(probed_world, default_config):
  config = probe_config(default_config)
  log = probed_world.impressions.head(10).copy()
  log["probed"] = [True] + [False] * 9
  log.loc[0, "probe_propensity"] = 0.0  # a probed row needs P(shown and probed) > 0
  with pytest.raises(writer_lib.DataError, match=r"'probe_propensity' row 0: .*\(0, 1\]"):
    impressions.from_log(config, log, "feed.csv")
  log.loc[0, "probe_propensity"] = 0.2
  log.loc[1:, "probe_propensity"] = np.nan  # may be empty where not probed
  log.loc[2, "probe_propensity"] = 0.0  # or 0 (the pair could not be probed)
  got = impressions.from_log(config, log, "feed.csv")
  assert got["probed"].tolist() == [True] + [False] * 9 and got["probe_propensity"][0] == 0.2
  log.loc[0, "probe_propensity"] = log.loc[0, "propensity"] * 1.01
  with pytest.raises(writer_lib.DataError, match="exceeds the row's propensity"):
    impressions.from_log(config, log, "feed.csv")
  with pytest.raises(writer_lib.DataError, match=r"impressions column\(s\) \['probed'\]"):
    impressions.from_log(config, log.drop(columns="probed"), "feed.csv")


def test_bad_probe_parameters_and_config_are_refused(default_config):
  for bad in (dict(reciprocal_probe=1.5), dict(reciprocal_probe=-0.1)):
    with pytest.raises(ValueError, match=r"WorldParams.reciprocal_probe must be in \[0, 1\]"):
      synthetic.WorldParams(**bad)
  with pytest.raises(ValueError, match="WorldParams.probe_scope must be one of"):
    synthetic.WorldParams(probe_scope="some")
  with pytest.raises(ValueError, match=r"'explored' \(the default\) needs exploration > 0"):
    synthetic.WorldParams(reciprocal_probe=0.5)  # the default scope, without exploration
  assert synthetic.WorldParams(reciprocal_probe=0.5, probe_scope="all").reciprocal_probe == 0.5
  with pytest.raises(config_lib.ConfigError, match="probe_column and probe_propensity_column"):
    probe_config(default_config, probe_column="probed")
  assert not default_config.impressions.probes
  assert "probed" not in default_config.impressions.columns


def test_report_prints_the_probe_support_beside_the_match_estimates():
  from tfrs_two_tower.evaluation import report as report_lib
  estimate = {"value": 0.25, "ci": (0.2, 0.3)}
  support = {"matched_impressions": 500, "effective_sample_size": 250.0,
             "min_propensity_in_lists": 0.001, "max_weight": 1000.0,
             "probes": {"matched_probed_impressions": 480, "effective_sample_size": 247.0,
                        "max_weight": 1020.0, "unanswered_probes": 3}}
  section = {"support": support, "warnings": [],
             "segments": {"all": {n: estimate for n in ("ips_like", "snips_like", "dr_like",
                                                        "ips_match", "snips_match",
                                                        "dr_match")}}}
  report = {"off_policy": {"file": "impressions.parquet", "k": 10, "explored": True,
                           "reward_model": "run", "recommenders": {"run": section},
                           "log": {"feeds": 9, "rows": 90, "shown": 90, "probed": 40},
                           "lifts": {}}}
  text = "\n".join(report_lib.render_off_policy(report))
  assert ("Match rates from reciprocal probes (40 probed rows in the eval window): run 480 "
          "probed impressions in its lists, ESS 247, max weight 1020.0, 3 unanswered.") in text


def test_postgres_export_carries_the_probe_columns(make_database, probed_world, default_config,
                                                   tmp_path):
  import json
  import os
  import psycopg2
  from tfrs_two_tower.data import seeding
  from tfrs_two_tower.stages import export_stage
  config = probe_config(default_config)
  config_path = str(tmp_path / "config.json")
  with open(config_path, "w") as f:
    json.dump(config.raw, f)
  url = make_database(f"probes_{os.getpid()}")
  conn = psycopg2.connect(url)
  seeding.seed(conn, probed_world, log=lambda m: None, config=config)
  conn.close()
  out, direct = str(tmp_path / "db"), str(tmp_path / "direct")
  export_stage.run(out, export_stage.ExportOptions(db_url=url, config_path=config_path,
                                                   train_shards=1, eval_shards=1, force=True),
                   log=lambda m: None)
  synthetic.write_world_dataset(probed_world, config, direct, num_train_shards=1,
                                num_eval_shards=1)

  def log_of(path):
    log = impressions.read(reader.open_dataset(path))
    return log.sort_values(["feed_id", "candidate_id"]).reset_index(drop=True)
  exported = log_of(out)
  assert exported["probed"].sum() == probed_world.impressions["probed"].sum() > 0
  pd.testing.assert_frame_equal(exported, log_of(direct), check_dtype=False)
