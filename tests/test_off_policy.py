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
  """Two feeds. Feed 0 (user 0): a shown p=.5 liked (b liked it back), b unshown p=.25,
  c shown p=1 passed. Feed 1 (user 1): d shown p=.8 passed, e shown p=.4 liked, f unshown p=.2."""
  return off_policy.LoggedFeeds(
      feed=np.array([0, 0, 0, 1, 1, 1]), users=np.array([0, 0, 0, 1, 1, 1]),
      candidates=np.arange(6), position=np.array([0, 1, 2, 0, 1, 2]),
      score=np.zeros(6), propensity=np.array([.5, .25, 1., .8, .4, .2]),
      shown=np.array([1, 0, 1, 1, 1, 0], bool), like=np.array([1., 0, 0, 0, 1, 0]),
      back=np.array([1., np.nan, np.nan, np.nan, np.nan, np.nan]), source="hand.parquet",
      notes={})


def test_estimators_match_a_hand_computed_example():
  feeds = hand_feeds()
  # New ranking: b > a > c in feed 0, e > f > d in feed 1; top 2 = {b, a}, {e, f}.
  in_list = off_policy.ranked_lists(feeds, np.array([2., 3, 1, 1, 3, 2]), k=2)
  assert in_list.tolist() == [True, True, False, False, True, True]
  q = np.full(6, 0.3)
  sums = off_policy.per_user_sums(feeds, in_list, q, np.full(6, 0.5), num_users=2)

  def pooled(name):
    return sums.numerators[name].sum() / sums.denominators[name].sum()
  # weights: a 1/.5 = 2, e 1/.4 = 2.5; b and f unshown: 0. Four list slots.
  assert pooled("ips_like") == pytest.approx((2 * 1 + 2.5 * 1) / 4)            # 1.125
  assert pooled("snips_like") == pytest.approx((2 + 2.5) / (2 + 2.5))          # 1.0
  assert pooled("dr_like") == pytest.approx((4 * 0.3 + 2 * 0.7 + 2.5 * 0.7) / 4)  # 1.0875
  # match: a liked back (observed 1); e's back-swipe unobserved -> reward model 0.5.
  assert pooled("ips_match") == pytest.approx((2 * 1 + 2.5 * 0.5) / 4)         # 0.8125
  assert sums.support["matched_impressions"] == 2
  assert sums.support["effective_sample_size"] == pytest.approx(4.5 ** 2 / (4 + 6.25), abs=0.1)
  assert sums.support["list_slots"] == 4


def test_a_ranking_without_logged_support_is_refused_by_name():
  feeds = hand_feeds()
  # Top 1 = the unshown b and f: no shown impression in any list.
  in_list = off_policy.ranked_lists(feeds, np.array([1., 3, 0, 0, 1, 3]), k=1)
  sums = off_policy.per_user_sums(feeds, in_list, np.zeros(6), np.zeros(6), num_users=2)
  with pytest.raises(off_policy.NoSupportError, match="hand.parquet.*newrank.*no logged support"):
    off_policy.check_support(sums.support, feeds.source, "newrank")


def test_weak_support_and_no_exploration_are_warned():
  feeds = hand_feeds()
  feeds.propensity = np.ones(6)
  in_list = off_policy.ranked_lists(feeds, np.zeros(6), k=3)
  sums = off_policy.per_user_sums(feeds, in_list, np.zeros(6), np.zeros(6), num_users=2)
  warnings = " ".join(off_policy.check_support(sums.support, feeds.source, "x"))
  assert "no exploration" in warnings and "effective sample size" in warnings


# -- the synthetic world: the log, and estimates against the truth ----------------------

def test_exploring_feed_logs_pools_with_propensities(exploring_world, tiny_world):
  log = exploring_world.impressions
  assert ((log["propensity"] > 0) & (log["propensity"] <= 1)).all()
  assert (log["propensity"] < 1).mean() > 0.9 and not log["shown"].all()
  # Each feed shows F = min(feed_size, M) profiles: the propensities sum to F.
  per_feed = log.groupby("feed_id").agg(p=("propensity", "sum"), m=("propensity", "size"))
  expected = np.minimum(exploring_world.params.feed_size, per_feed["m"])
  np.testing.assert_allclose(per_feed["p"], expected, rtol=1e-9)
  # Every shown pair was swiped (the first time it was shown).
  shown = log[log["shown"]]
  swiped = set(zip(exploring_world.swipes["swiper_id"], exploring_world.swipes["swipee_id"]))
  assert all(pair in swiped for pair in zip(shown["viewer_id"], shown["profile_id"]))
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
  dataset, data, feeds, fm, reward = exploring_eval
  assert dataset.stats["impressions"]["explored_rows"] > 0
  counts = metrics.bootstrap_counts(data.num_users, 300, seed=0)
  _, section = off_policy.evaluate_ranking(fm, feeds, data, reward, 10, counts,
                                           exploring_world.like_probability)
  estimates = section["segments"]["all"]
  truth = estimates["oracle_like"]["value"]
  for name in ("ips_like", "snips_like", "dr_like"):
    low, high = estimates[name]["ci"]
    assert low <= truth <= high, (name, estimates[name], truth)
  assert section["support"]["effective_sample_size"] > 50


def test_ips_of_the_feeds_own_ranking_covers_its_truth(exploring_eval, exploring_world):
  """The logging feed's own ranker (its logged score), and a random one: the truth of
  their lists lies in the IPS and SNIPS intervals."""
  _, data, feeds, _, _ = exploring_eval
  counts = metrics.bootstrap_counts(data.num_users, 300, seed=0)
  viewers, profiles = data.query_ids[data.users[feeds.users]], data.candidate_ids[
      feeds.candidates]
  truth = exploring_world.like_probability(viewers, profiles)
  zeros = np.zeros(feeds.feed.size)
  for scores in (feeds.score, np.random.default_rng(0).random(feeds.feed.size)):
    in_list = off_policy.ranked_lists(feeds, scores, exploring_world.params.feed_size)
    sums = off_policy.per_user_sums(feeds, in_list, zeros, zeros, data.num_users, truth, truth)
    oracle = sums.numerators["oracle_like"].sum() / sums.denominators["oracle_like"].sum()
    for name in ("ips_like", "snips_like"):
      est = metrics.bootstrap_ratio(sums.numerators[name], sums.denominators[name], counts)
      assert est["ci"][0] <= oracle <= est["ci"][1], (name, est, oracle)


def test_estimators_are_unbiased_over_replications_of_a_known_logging_policy():
  """200 feeds of 6 candidates, 2 shown: eps = 0.3 uniform, else the top 2 of a fixed
  logging score. Over 400 replications the mean IPS and DR (with a wrong reward model)
  equal the true like rate of the new top-3 lists; SNIPS within its small bias."""
  rng = np.random.default_rng(0)
  feeds_n, pool, shown_n, eps, k = 200, 6, 2, 0.3, 3
  feed = np.repeat(np.arange(feeds_n), pool)
  p_like = rng.beta(2, 5, feed.size)
  logging_rank = np.argsort(np.argsort(-rng.random((feeds_n, pool)), axis=1), axis=1).ravel()
  propensity = eps * shown_n / pool + (1 - eps) * (logging_rank < shown_n)
  new_scores = rng.random(feed.size)
  estimates = {"ips_like": [], "snips_like": [], "dr_like": []}
  truth = None
  for _ in range(400):
    explore = np.repeat(rng.random(feeds_n) < eps, pool)
    shuffled = np.argsort(np.argsort(rng.random((feeds_n, pool)), axis=1), axis=1).ravel()
    shown = np.where(explore, shuffled, logging_rank) < shown_n
    feeds = off_policy.LoggedFeeds(
        feed=feed, users=feed % 50, candidates=np.arange(feed.size),
        position=logging_rank, score=-logging_rank.astype(float), propensity=propensity,
        shown=shown, like=(rng.random(feed.size) < p_like).astype(float),
        back=np.ones(feed.size), source="replication", notes={})
    in_list = off_policy.ranked_lists(feeds, new_scores, k)
    sums = off_policy.per_user_sums(feeds, in_list, np.full(feed.size, 0.5),
                                    np.ones(feed.size), 50, p_like, np.ones(feed.size))
    for name in estimates:
      estimates[name].append(sums.numerators[name].sum() / sums.denominators[name].sum())
    truth = sums.numerators["oracle_like"].sum() / sums.denominators["oracle_like"].sum()
  for name, values in estimates.items():
    se = np.std(values) / np.sqrt(len(values))
    tolerance = 4 * se + (0.01 if name == "snips_like" else 0.0)
    assert abs(np.mean(values) - truth) < tolerance, (name, np.mean(values), truth, se)


def test_log_with_unknown_profile_is_refused_naming_the_row(exploring_world, default_config,
                                                             tmp_path):
  world = synthetic.World(exploring_world.params, exploring_world.profiles,
                          exploring_world.swipes, exploring_world.hidden,
                          exploring_world.impressions.copy())
  world.impressions.loc[5, "profile_id"] = "nobody"
  with pytest.raises(writer_lib.DataError, match=r"column 'profile_id' row 5: 'nobody'"):
    synthetic.write_world_dataset(world, default_config, str(tmp_path / "d"))
  assert not (tmp_path / "d").exists()


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
  from tfrs_two_tower.stages import train_stage
  world_dir, run_dir = str(tmp_path / "world"), str(tmp_path / "run")
  exploring_world.save(world_dir)
  train_stage.run(exploring_dataset_dir, run_dir, train_stage.TrainOptions(**TINY_TRAINING),
                  log=lambda *a: None)
  report = evaluate_stage.run(exploring_dataset_dir, [run_dir], str(tmp_path / "eval"),
                              world_dir=world_dir, bootstrap=100, reciprocal=False,
                              tensorboard=False, log=lambda *a: None)
  off = report["off_policy"]
  assert off["explored"] and off["reward_model"] == "run"
  for name, section in off["recommenders"].items():
    assert section["support"]["matched_impressions"] > 0, name
    assert 0 < section["catalogue_overlap"] <= 1
    assert {"ips_like", "snips_like", "dr_like", "dr_match", "oracle_like"} <= set(
        section["segments"]["all"])
  answer = report["answer"]["run"]
  assert answer["estimator"].startswith("off_policy_"), answer["why"]
  assert answer["lift"] is off["lifts"]["run"]["all"][answer["estimator"][11:] + "_like"]
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
  import io
  import os
  import psycopg2
  from tfrs_two_tower.stages import export_stage
  from tfrs_two_tower.stages import seed_stage
  url = make_database(f"offpolicy_{os.getpid()}")
  conn = psycopg2.connect(url)
  seed_stage.seed(conn, exploring_world, log=lambda m: None)
  buffer = io.StringIO()
  exploring_world.impressions.to_csv(buffer, index=False, header=False)
  buffer.seek(0)
  with conn, conn.cursor() as cur:
    cur.execute("CREATE TABLE feed_impressions (feed_id bigint, viewer_id uuid, profile_id uuid,"
                " shown_at timestamptz, position int, score float8, propensity float8,"
                " shown boolean)")
    cur.copy_expert("COPY feed_impressions FROM STDIN WITH (FORMAT csv)", buffer)
  conn.close()
  out = str(tmp_path / "db")
  logs = []
  export_stage.run(out, db_url=url, train_shards=2, eval_shards=1, log=logs.append)
  assert any("impressions from" in line and "'feed_impressions'" in line for line in logs)
  pd.testing.assert_frame_equal(_dataset_log(out), _dataset_log(exploring_dataset_dir))


def test_file_export_carries_the_log_and_refuses_a_bad_row(exploring_world,
                                                           exploring_dataset_dir, tmp_path):
  from tfrs_two_tower.stages import export_stage
  world_dir = str(tmp_path / "world")
  exploring_world.save(world_dir)  # profiles, swipes and feed_impressions .parquet
  out = str(tmp_path / "files")
  export_stage.run(out, input_dir=world_dir, train_shards=2, eval_shards=1, log=lambda m: None)
  pd.testing.assert_frame_equal(_dataset_log(out), _dataset_log(exploring_dataset_dir))
  bad = exploring_world.impressions.copy()
  bad.loc[7, "propensity"] = 0.0
  bad.to_csv(str(tmp_path / "world" / "feed_impressions.csv"), index=False)
  (tmp_path / "world" / "feed_impressions.parquet").unlink()
  errors = []
  code = export_stage.main(output_dir=str(tmp_path / "bad"), input_dir=world_dir, env_file=None,
                           log=lambda m: None, error=errors.append)
  assert code != 0 and not (tmp_path / "bad").exists()
  assert "feed_impressions.csv" in errors[0] and "'propensity' row 7" in errors[0], errors
