"""Impressions log, off-policy estimators and impression-conditioned metrics, on real data.

The exploring tiny world knows the truth: P(like) of every pair. Estimators must
cover the truth of the lists they estimate; a hand-computed example pins the
formulas; bad logs and rankings without support are refused by name.
"""
import numpy as np
import pandas as pd
import pytest

from tfrs_two_tower.data import impressions
from tfrs_two_tower.data import reader
from tfrs_two_tower.data import synthetic
from tfrs_two_tower.data import writer as writer_lib
from tfrs_two_tower.evaluation import baselines
from tfrs_two_tower.evaluation import evaluator
from tfrs_two_tower.evaluation import metrics
from tfrs_two_tower.evaluation import off_policy


# -- the formulas, by hand ------------------------------------------------------------

def hand_feeds():
  """Two feeds. Feed 0 (user 0): a (row 0) shown p=.5 liked (a liked back), c (row 2)
  shown p=1 passed. Feed 1 (user 1): d (3) shown p=.8 passed, e (4) shown p=.4 liked."""
  return off_policy.LoggedFeeds(
      feed=np.array([0, 0, 1, 1]), users=np.array([0, 0, 1, 1]),
      candidates=np.array([0, 2, 3, 4]), position=np.array([0, 1, 0, 1]),
      score=np.zeros(4), propensity=np.array([.5, 1., .8, .4]),
      shown=np.ones(4, bool), like=np.array([1., 0, 0, 1]),
      back=np.array([1., np.nan, np.nan, np.nan]), feed_users=np.array([0, 1]),
      feed_times=np.array([100, 200]), source="hand.parquet", notes={})


def hand_lists(feed, candidates, q=0.3):
  feed, candidates = np.asarray(feed), np.asarray(candidates)
  users = np.array([0, 1])[feed]
  return off_policy.Lists(feed, users, candidates, np.full(feed.size, q),
                          np.full(feed.size, q * 0.5), None, None, 0)


def test_estimators_match_a_hand_computed_example():
  feeds = hand_feeds()
  # The ranking lists {b, a} for user 0 and {e, f} for user 1: b and f were never shown.
  lists = hand_lists([0, 0, 1, 1], [1, 0, 4, 5])
  np.testing.assert_array_equal(off_policy.matched_rows(feeds, lists), [1, -1, -1, 2])
  sums = off_policy.per_user_sums(feeds, lists, np.full(4, 0.3), np.full(4, 0.5), num_users=2)

  def pooled(name):
    return sums.numerators[name].sum() / sums.denominators[name].sum()
  # weights: a 1/.5 = 2, e 1/.4 = 2.5. Four list slots.
  assert pooled("ips_like") == pytest.approx((2 * 1 + 2.5 * 1) / 4)            # 1.125
  assert pooled("snips_like") == pytest.approx((2 + 2.5) / (2 + 2.5))          # 1.0
  assert pooled("dr_like") == pytest.approx((4 * 0.3 + 2 * 0.7 + 2.5 * 0.7) / 4)  # 1.0875
  # match: a liked back (observed 1); e's back-swipe unobserved -> reward model 0.5.
  assert pooled("ips_match") == pytest.approx((2 * 1 + 2.5 * 0.5) / 4)         # 0.8125
  assert pooled("dr_match") == pytest.approx(
      (4 * 0.15 + 2 * (1 - 0.3) + 2.5 * (0.5 - 0.15)) / 4)
  assert sums.support["matched_impressions"] == 2
  assert sums.support["effective_sample_size"] == pytest.approx(4.5 ** 2 / (4 + 6.25), abs=0.1)
  assert sums.support["list_slots"] == 4 and sums.support["max_weight"] == 2.5


def test_match_estimates_are_refused_when_the_back_like_is_mostly_modelled():
  """a's back-swipe is observed, e's is not: weight 2 of 4.5 (44 %) observed < 50 %, so
  the match estimates and lifts are refused with the support figures; likes stay."""
  feeds = hand_feeds()
  lists = hand_lists([0, 0, 1, 1], [1, 0, 4, 5])
  counts = metrics.bootstrap_counts(2, 20, seed=0)
  everyone = {"all": np.ones(2, bool)}
  sums = off_policy.per_user_sums(feeds, lists, np.full(4, 0.3), np.full(4, 0.5), num_users=2)
  assert sums.support["back_observed_share"] == {"weighted_matched_rows": pytest.approx(0.444)}
  assert not sums.support["match_supported"]
  estimates = off_policy.summarize(sums, counts, everyone)["all"]
  for name in off_policy.MATCH_TARGETS:
    assert estimates[name]["value"] is None
    assert "not supported by this log" in estimates[name]["reason"]
    assert "weighted matched rows 44%" in estimates[name]["reason"]
  assert estimates["dr_like"]["value"] == pytest.approx(1.0875)
  lifts = off_policy.lift(sums, sums, counts, everyone)["all"]
  assert lifts["dr_match"]["value"] is None and lifts["dr_like"]["value"] is not None
  # e's back-swipe observed too (and every listed pair's): the match estimates are given.
  feeds.back = np.array([1., np.nan, np.nan, 0.])
  lists.back_observed = np.array([True, True, True, False])
  sums = off_policy.per_user_sums(feeds, lists, np.full(4, 0.3), np.full(4, 0.5), num_users=2)
  assert sums.support["back_observed_share"] == {"weighted_matched_rows": 1.0,
                                                 "list_slots": 0.75}
  assert sums.support["match_supported"]
  assert off_policy.summarize(sums, counts, everyone)["all"]["ips_match"]["value"] == (
      pytest.approx(2 * 1 / 4))
  assert off_policy.match_refusal(sums.support, "x") is None


def test_the_answer_falls_back_to_match_precision_when_match_is_refused():
  from tfrs_two_tower.evaluation import report as report_lib
  refused = {"value": None, "ci": None, "reason": "match rate not supported by this log"}
  lifts = {f"{e}_like": {"value": 0.1, "ci": (0.0, w)} for e, w in
           (("dr", 0.2), ("snips", 0.3), ("ips", 0.4))}
  lifts.update({f"{e}_match": refused for e in ("dr", "snips", "ips")})
  precision = {"value": -0.05, "ci": (-0.1, 0.01)}
  report = {"off_policy": {"explored": True, "k": 10, "reward_model": "run",
                           "min_effective_sample_size": 100, "lifts": {"run": {"all": lifts}},
                           "recommenders": {n: {"support": {"effective_sample_size": 250}}
                                            for n in ("run", "feature_matching")}},
            "lift_baseline": "feature_matching",
            "lifts": {"run": {"all": {"shown_match_precision": precision}}}}
  chosen = report_lib._off_policy_choice(report, "run")
  assert chosen["estimator"] == "off_policy_dr" and chosen["lift"] is lifts["dr_like"]
  assert chosen["match_lift"] is precision
  assert chosen["match_estimator"] == "impression_conditioned"
  assert "not supported by this log" in chosen["match_why"]
  report.update(k=[10], data={"shown_k": 5}, recommenders={"run": {"kind": "model"}})
  report["lifts"]["run"]["all"]["shown_precision"] = precision
  report["answer"] = report_lib.answer(report)
  assert "; match (impression_conditioned): -5%" in report["answer"]["run"]["line"]
  assert "match lift from match precision among shown: off-policy match refused" in "\n".join(
      report_lib.render_answer(report))


def test_list_slots_skip_profiles_not_yet_created():
  feeds = hand_feeds()
  top = np.array([[5, 4, 3, -1], [4, 5, 3, 0]])  # [U, K] whole-catalogue lists
  created = np.array([-1, 0, 0, 0, 0, 150])  # profile 5 joined at t=150; -1 = unknown
  feed, candidates, skipped = off_policy.list_slots(feeds, top, 2, created)
  # feed 0 (t=100): 5 not there yet -> 4, 3; feed 1 (t=200): 4, 5.
  assert feed.tolist() == [0, 0, 1, 1] and candidates.tolist() == [4, 3, 4, 5]
  assert skipped == 1


def test_a_ranking_without_logged_support_is_refused_by_name():
  feeds = hand_feeds()
  lists = hand_lists([0, 1], [1, 5])  # never shown
  sums = off_policy.per_user_sums(feeds, lists, np.zeros(4), np.zeros(4), num_users=2)
  with pytest.raises(off_policy.NoSupportError, match="hand.parquet.*newrank.*no logged support"):
    off_policy.check_support(sums.support, feeds.source, "newrank")


def test_weak_support_and_no_exploration_are_warned():
  feeds = hand_feeds()
  feeds.propensity = np.ones(4)
  lists = hand_lists([0, 0, 1, 1], [0, 2, 3, 4])
  sums = off_policy.per_user_sums(feeds, lists, np.zeros(4), np.zeros(4), num_users=2)
  warnings = " ".join(off_policy.check_support(sums.support, feeds.source, "x"))
  assert "no exploration" in warnings and "effective sample size" in warnings


# -- the exploring feed: its propensities are the true inclusion probabilities ----------

def small_catalogue(rng, feeds=4, n=12, f=4):
  """Exploit lists with a repeat and the viewer in them; eligible catalogues of 2..11,
  drawn as 3 from a local half (a stratum smaller than its draws in row 0) + 1 from all."""
  viewers = np.arange(feeds)
  eligible = rng.random((feeds, n)) < np.linspace(0.15, 0.95, feeds)[:, None]
  eligible[viewers, viewers] = False
  exploit = rng.integers(0, n, (feeds, f))
  exploit[0, :2] = [7, 7]
  exploit[1, 0] = viewers[1]
  local = eligible & (np.arange(n) < n // 2)[None, :]
  return viewers, [(local, 3), (eligible, f - 3)], exploit


def test_exploring_feed_shows_each_profile_with_its_logged_propensity():
  """Monte Carlo: over 20,000 draws the share of feeds showing each profile equals
  `inclusion_probability` (mixture of the uniform eligible draw and the exploit list)."""
  rng = np.random.default_rng(0)
  viewers, strata, exploit = small_catalogue(rng)
  eligible = strata[1][0]
  eps, draws, n = 0.3, 20_000, eligible.shape[1]
  a = len(viewers)
  shown, explored = synthetic.exploring_feed(  # every draw at once: the feeds tiled
      np.tile(exploit, (draws, 1)), np.tile(viewers, draws),
      [(np.tile(mask, (draws, 1)), k) for mask, k in strata], eps, rng)
  hit = np.zeros((draws * a, n + 1), bool)
  hit[np.arange(draws * a)[:, None], shown] = True  # repeats count once
  hit[np.arange(draws * a), np.tile(viewers, draws)] = False  # the viewer is never shown
  frequency = hit[:, :n].reshape(draws, a, n).mean(axis=0)
  expected = synthetic.inclusion_probability(exploit, viewers, strata, eps,
                                             np.tile(np.arange(n), (a, 1)))
  assert abs(explored.mean() - eps) < 0.01
  assert (expected[eligible] >= eps / n).all()
  never = ~eligible & ~(np.arange(n)[None, :, None] == exploit[:, None, :]).any(axis=2)
  assert (expected[never] == 0).all() and (frequency[never] == 0).all()
  se = np.sqrt(expected * (1 - expected) / draws)
  assert (np.abs(frequency - expected) <= 4.5 * se + 1e-12).all(), (frequency, expected)


def test_exploring_world_logs_shown_profiles_with_propensities(exploring_world, tiny_world,
                                                               default_config):
  log = exploring_world.impressions
  eps = exploring_world.params.exploration
  assert log["shown"].all() and ((log["propensity"] > 0) & (log["propensity"] <= 1)).all()
  # Below 1 - eps only the exploring draw can show a profile: those pairs obey the config's
  # eligibility rules, and about eps of the feeds are such draws.
  rules = synthetic.eligibility_rules(exploring_world.profiles, default_config)
  explored = log[log["propensity"] < 1 - eps]
  assert rules.pairs(exploring_world.user_index(explored["viewer_id"]),
                     exploring_world.user_index(explored["profile_id"])).all()
  share = explored["feed_id"].nunique() / log["feed_id"].nunique()
  assert 0.5 * eps < share < 1.5 * eps, share
  # Every shown pair was swiped (the first time it was shown).
  swiped = set(zip(exploring_world.swipes["swiper_id"], exploring_world.swipes["swipee_id"]))
  assert all(pair in swiped for pair in zip(log["viewer_id"], log["profile_id"]))
  # Without exploration only the shown profiles are logged, with propensity 1.
  assert tiny_world.params.exploration == 0
  assert tiny_world.impressions["shown"].all()
  assert (tiny_world.impressions["propensity"] == 1).all()


def test_exploration_zero_keeps_the_world_identical():
  params = synthetic.WorldParams(num_users=300, days=20, seed=3)
  same = synthetic.generate_world(params)
  explored = synthetic.generate_world(synthetic.WorldParams(num_users=300, days=20, seed=3,
                                                            exploration=0.0))
  pd.testing.assert_frame_equal(same.swipes, explored.swipes)
  pd.testing.assert_frame_equal(same.impressions, explored.impressions)
  with pytest.raises(ValueError, match="exploration"):
    synthetic.WorldParams(exploration=1.5)


@pytest.fixture(scope="module")
def exploring_eval(exploring_dataset_dir, exploring_world):
  dataset = reader.open_dataset(exploring_dataset_dir)
  data = evaluator.prepare(dataset)
  feeds = off_policy.logged_feeds(impressions.read(dataset), data, impressions.FILE)
  fm = baselines.FeatureMatching(dataset.config, data.query_entities,
                                 data.candidate_entities, data.eligible)
  reward = off_policy.reward_model(fm, evaluator.fit_calibration(fm, data), feeds, data, True)
  return dataset, data, feeds, fm, reward


def test_estimates_cover_the_truth_of_the_same_lists(exploring_eval, exploring_world):
  """Feature matching's and a random ranking's whole-catalogue lists: the truth of the
  lists lies in every estimator's interval."""
  dataset, data, feeds, fm, reward = exploring_eval
  assert dataset.stats["impressions"]["explored_rows"] > 0
  counts = metrics.bootstrap_counts(data.num_users, 300, seed=0)
  for scorer in (fm, baselines.RandomScorer(data.query_ids, data.candidate_ids)):
    top = evaluator.evaluate(scorer, data, [10, 30]).top.candidates
    _, section = off_policy.evaluate_ranking(scorer, feeds, data, reward, 10, counts,
                                             exploring_world.like_probability, top)
    estimates = section["segments"]["all"]
    truth = estimates["oracle_like"]["value"]
    for name in ("ips_like", "snips_like", "dr_like"):
      low, high = estimates[name]["ci"]
      assert low <= truth <= high, (scorer.name, name, estimates[name], truth)
    assert section["support"]["matched_impressions"] > 20, section["support"]


def test_estimators_are_unbiased_over_replications_of_the_exploring_feed(
    exploring_replications):
  """The `exploring_replications` world: over 300 replications the mean IPS and DR (with
  a wrong reward model) equal the true like rate of a new ranking's top-5 lists drawn
  from the whole eligible catalogue; SNIPS within its small bias."""
  s = exploring_replications(0)
  truth_like = s.p_like[s.feed, s.candidates]
  lists = off_policy.Lists(s.feed, s.feed % 50, s.candidates, np.full(s.feed.size, 0.5),
                           np.full(s.feed.size, 0.5), truth_like, truth_like, 0)
  estimates = {"ips_like": [], "snips_like": [], "dr_like": []}
  for _ in range(300):
    row, col, v, propensity, _, _ = s.replicate()
    logged = off_policy.LoggedFeeds(
        feed=row, users=row % 50, candidates=v, position=col, score=np.zeros(row.size),
        propensity=propensity, shown=np.ones(row.size, bool),
        like=(s.rng.random(row.size) < s.p_like[row, v]).astype(float), back=np.ones(row.size),
        feed_users=np.arange(s.feeds_n) % 50, feed_times=np.zeros(s.feeds_n, np.int64),
        source="replication", notes={})
    sums = off_policy.per_user_sums(logged, lists, np.full(row.size, 0.5), np.ones(row.size),
                                    50)
    for name in estimates:
      estimates[name].append(sums.numerators[name].sum() / sums.denominators[name].sum())
  truth = sums.numerators["oracle_like"].sum() / sums.denominators["oracle_like"].sum()
  s.assert_unbiased(estimates, truth, "snips_like")


def test_log_with_unknown_profile_is_refused_naming_the_row(exploring_world, default_config,
                                                             tmp_path):
  world = synthetic.World(exploring_world.params, exploring_world.profiles,
                          exploring_world.swipes, exploring_world.hidden,
                          exploring_world.impressions.copy())
  world.impressions.loc[5, "profile_id"] = "nobody"
  with pytest.raises(writer_lib.DataError, match=r"column 'profile_id' row 5: 'nobody'"):
    synthetic.write_world_dataset(world, default_config, str(tmp_path / "d"))
  assert not (tmp_path / "d").exists()


def test_impressions_written_chunk_by_chunk_read_back_the_same(exploring_world, default_config,
                                                               exploring_dataset_dir, tmp_path,
                                                               monkeypatch):
  # A 1M-user log is validated and written CHUNK_ROWS rows at a time; small chunks give
  # the same file contents and stats, and a bad row is named by its row in the whole log.
  monkeypatch.setattr(impressions, "CHUNK_ROWS", 1000)
  assert len(exploring_world.impressions) > 3000
  path = str(tmp_path / "chunked")
  synthetic.write_world_dataset(exploring_world, default_config, path)
  whole, chunked = (reader.open_dataset(d) for d in (exploring_dataset_dir, path))
  pd.testing.assert_frame_equal(impressions.read(chunked), impressions.read(whole))
  assert chunked.stats["impressions"] == whole.stats["impressions"]
  world = synthetic.World(exploring_world.params, exploring_world.profiles,
                          exploring_world.swipes, exploring_world.hidden,
                          exploring_world.impressions.copy())
  world.impressions.loc[2500, "profile_id"] = "nobody"
  with pytest.raises(writer_lib.DataError, match=r"column 'profile_id' row 2500: 'nobody'"):
    synthetic.write_world_dataset(world, default_config, str(tmp_path / "bad"))


@pytest.mark.parametrize("column,value,message", [
    ("propensity", 0.0, r"column 'propensity' row 3: propensity must be in \(0, 1\]"),
    ("propensity", 1.5, r"column 'propensity' row 3: propensity must be in \(0, 1\]"),
    ("position", None, r"column 'position' row 3: missing position"),
    ("position", -1, r"column 'position' row 3: position must be an integer >= 0"),
    ("shown", "maybe", r"column 'shown' row 3: shown must be true/false"),
])
def test_bad_log_values_are_refused_naming_column_and_row(exploring_world, default_config,
                                                          column, value, message):
  log = exploring_world.impressions.head(10).copy()
  log[column] = log[column].astype(object)
  log.loc[3, column] = value
  with pytest.raises(writer_lib.DataError, match=message):
    impressions.from_log(default_config, log, "feed.csv")


def test_missing_log_column_is_refused(exploring_world, default_config):
  with pytest.raises(writer_lib.DataError, match=r"feed.csv: impressions column\(s\) \['score'\]"):
    impressions.from_log(default_config, exploring_world.impressions.drop(columns="score"),
                         "feed.csv")


# -- impression-conditioned metrics --------------------------------------------------

def test_per_user_auc_and_precision_among_shown_by_hand():
  users = np.array([0, 0, 0, 1, 1, 2, 2, 2])
  labels = np.array([1, 0, 1, 0, 0, 1, 0, 0])
  scores = np.array([.9, .5, .5, .1, .2, .3, .3, .9])
  auc = metrics.per_user_auc(users, labels, scores, 4)
  assert auc[0] == pytest.approx(metrics.roc_auc(labels[:3], scores[:3]))  # 0.75
  assert np.isnan(auc[1]) and np.isnan(auc[3])  # one class only / no pairs
  assert auc[2] == pytest.approx(0.25)
  ranks = metrics.rank_within_users(users, scores)
  precision = metrics.precision_among_shown(ranks, users, labels, 4, 2)
  np.testing.assert_allclose(precision[:3], [0.5, 0.0, 0.5])
  ndcg = metrics.ndcg_among_shown(ranks, users, labels, 4, 2)
  assert ndcg[0] == pytest.approx(1 / (1 + 1 / np.log2(3)))
  assert ndcg[2] == pytest.approx(1 / np.log2(3))


def test_impression_conditioned_metrics_rank_the_oracle_first(exploring_eval, exploring_world):
  _, data, _, fm, _ = exploring_eval
  swipes = data.eval_swipes
  truth = exploring_world.like_probability(data.query_ids[data.users[swipes.users]],
                                           data.candidate_ids[swipes.candidates])
  k = evaluator.shown_k(data, 10)
  best = evaluator.shown_metrics(data, truth, k)
  worst = evaluator.shown_metrics(data, -truth, k)
  for name in ("gauc", "shown_precision", "shown_ndcg"):
    assert np.nanmean(best[name]) > np.nanmean(worst[name]), name
  assert np.nanmean(best["gauc"]) > 0.7


@pytest.mark.slow
def test_evaluate_answers_with_off_policy_on_an_exploring_log(exploring_dataset_dir,
                                                               exploring_world, tmp_path):
  from conftest import TINY_TRAINING
  from tfrs_two_tower.stages import evaluate_stage
  from tfrs_two_tower.model import train_options
  from tfrs_two_tower.stages import train_stage
  world_dir, run_dir = str(tmp_path / "world"), str(tmp_path / "run")
  exploring_world.save(world_dir)
  train_stage.run(exploring_dataset_dir, run_dir, train_options.TrainOptions(**TINY_TRAINING),
                  log=lambda *a: None)
  report = evaluate_stage.run(exploring_dataset_dir, [run_dir], str(tmp_path / "eval"),
                              evaluate_stage.EvaluateOptions(world_dir=world_dir, bootstrap=100,
                                                             reciprocal=False, tensorboard=False),
                              log=lambda *a: None)
  off = report["off_policy"]
  assert off["explored"] and off["reward_model"] == "run"
  for name, section in off["recommenders"].items():
    assert section["support"]["matched_impressions"] > 0, name
    assert section["support"]["list_slots"] >= section["support"]["feeds"]
    assert {"ips_like", "snips_like", "dr_like", "dr_match", "oracle_like"} <= set(
        section["segments"]["all"])
    support = section["support"]
    assert support["match_supported"] == (
        min(support["back_observed_share"].values()) >= off_policy.MIN_BACK_OBSERVED)
    if not support["match_supported"]:
      assert section["segments"]["all"]["dr_match"]["value"] is None
      assert any("not supported by this log" in w for w in section["warnings"])
  # Off-policy answers when both rankings' ESS reach the minimum; this tiny log is thin
  # (uniform draws over ~200 eligible profiles), so the answer says why it fell back.
  answer = report["answer"]["run"]
  ess = min(off["recommenders"][n]["support"]["effective_sample_size"]
            for n in ("run", "feature_matching"))
  if ess >= off["min_effective_sample_size"]:
    assert answer["lift"] is off["lifts"]["run"]["all"][answer["estimator"][11:] + "_like"]
  else:
    assert answer["estimator"] == "impression_conditioned"
    assert "effective sample size is below" in answer["why"]
  assert "biased toward the logging feed, not used" in report["verdict"]["run"]["line"]
  md = open(str(tmp_path / "eval" / "report.md")).read()
  assert "## Does it beat feature matching?" in md and "why this estimator" in md
  assert "| matched | ESS |" in md and "**logged** metrics" in md


# -- export: PostgreSQL and files carry the log into the dataset ---------------------------

def _dataset_log(path):
  log = impressions.read(reader.open_dataset(path))
  return log.sort_values(["feed_id", "candidate_id"]).reset_index(drop=True)


def test_postgres_export_carries_the_impressions_log(make_database, exploring_world,
                                                     exploring_dataset_dir, tmp_path):
  import os
  import psycopg2
  from tfrs_two_tower.stages import export_stage
  from tfrs_two_tower.data import seeding
  url = make_database(f"offpolicy_{os.getpid()}")
  conn = psycopg2.connect(url)
  inserted = seeding.seed(conn, exploring_world, log=lambda m: None)  # the log goes in too
  assert inserted["feed_impressions"] == len(exploring_world.impressions)
  assert seeding.seed(conn, exploring_world, log=lambda m: None)["feed_impressions"] == 0
  conn.close()
  out = str(tmp_path / "db")
  logs = []
  export_stage.run(out, export_stage.ExportOptions(db_url=url, train_shards=2, eval_shards=1),
      log=logs.append)
  assert any("impressions from" in line and "'feed_impressions'" in line for line in logs)
  pd.testing.assert_frame_equal(_dataset_log(out), _dataset_log(exploring_dataset_dir))


def test_file_export_carries_the_log_and_refuses_a_bad_row(exploring_world,
                                                           exploring_dataset_dir, tmp_path):
  from tfrs_two_tower.stages import export_stage
  world_dir = str(tmp_path / "world")
  exploring_world.save(world_dir)  # profiles, swipes and feed_impressions .parquet
  out = str(tmp_path / "files")
  export_stage.run(out, export_stage.ExportOptions(input_dir=world_dir, train_shards=2,
      eval_shards=1), log=lambda m: None)
  pd.testing.assert_frame_equal(_dataset_log(out), _dataset_log(exploring_dataset_dir))
  bad = exploring_world.impressions.copy()
  bad.loc[7, "propensity"] = 0.0
  bad.to_csv(str(tmp_path / "world" / "feed_impressions.csv"), index=False)
  (tmp_path / "world" / "feed_impressions.parquet").unlink()
  errors = []
  code = export_stage.main(str(tmp_path / "bad"),
                           export_stage.ExportOptions(input_dir=world_dir, env_file=None),
                           log=lambda m: None, error=errors.append)
  assert code != 0 and not (tmp_path / "bad").exists()
  assert "feed_impressions.csv" in errors[0] and "'propensity' row 7" in errors[0], errors


def test_file_source_streams_the_log_in_chunks(exploring_world, default_config,
                                               exploring_dataset_dir, tmp_path):
  # A 1M-user world's log (~69M rows) as one frame cost ~9 GB: the source hands it on
  # `read_chunk_rows` rows at a time, and a bad row is still named by its row in the file.
  from tfrs_two_tower.data import file_source
  world_dir = str(tmp_path / "world")
  exploring_world.save(world_dir)
  with file_source.FileSource(default_config, world_dir, read_chunk_rows=1000,
                              log=lambda m: None) as source:
    chunks, where = source.impressions()
    sizes = [len(chunk) for chunk in chunks]
  assert where.endswith("feed_impressions.parquet")
  assert max(sizes) == 1000 and sum(sizes) == len(exploring_world.impressions) > 3000
  out = str(tmp_path / "streamed")
  with file_source.FileSource(default_config, world_dir, read_chunk_rows=1000,
                              log=lambda m: None) as source:
    stats = _export(source, default_config, out)
  assert stats["impressions"] == reader.open_dataset(exploring_dataset_dir).stats["impressions"]
  pd.testing.assert_frame_equal(_dataset_log(out), _dataset_log(exploring_dataset_dir))
  bad = exploring_world.impressions.copy()
  bad.loc[2500, "propensity"] = 1.5
  bad.to_parquet(str(tmp_path / "world" / "feed_impressions.parquet"), index=False)
  with file_source.FileSource(default_config, world_dir, read_chunk_rows=1000,
                              log=lambda m: None) as source:
    with pytest.raises(writer_lib.DataError, match=r"'propensity' row 2500: propensity"):
      _export(source, default_config, str(tmp_path / "bad"))
  assert not (tmp_path / "bad").exists()


def _export(source, config, out):
  from tfrs_two_tower.data import sources
  return sources.export(source, config, out, num_train_shards=1, num_eval_shards=1,
                        log=lambda m: None)
