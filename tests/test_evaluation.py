"""Evaluation: batched retrieval with exclusions, baselines, segments, the evaluate stage."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.data import reader
from tfrs_two_tower.data import synthetic
from tfrs_two_tower.evaluation import baselines
from tfrs_two_tower.evaluation import evaluator
from tfrs_two_tower.evaluation import metrics
from tfrs_two_tower.evaluation import recommenders
from tfrs_two_tower.evaluation import retrieval
from tfrs_two_tower.evaluation import segments
from tfrs_two_tower.stages import evaluate_stage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = dict(log=lambda *a: None)


def _random_scorer(rng, n_query=37, n_cand=53, dim=8):
  q_ids = [f"u{i}" for i in range(n_query)]
  c_ids = [f"u{i}" for i in range(n_cand)]
  return retrieval.EmbeddingScorer(q_ids, c_ids, rng.normal(size=(n_query, dim)),
                                   rng.normal(size=(n_cand, dim)))


def test_top_k_matches_brute_force_with_exclusions():
  rng = np.random.default_rng(0)
  scorer = _random_scorer(rng)
  rows = rng.permutation(37)[:30]
  ex_rows = rng.integers(0, 30, 200)
  ex_cols = rng.integers(0, 53, 200)
  exclusions = retrieval.Exclusions.from_pairs(ex_rows, ex_cols, 30)
  result = retrieval.top_k(scorer, rows, 10, exclusions, batch_size=7)
  full = scorer.query_embeddings[rows] @ scorer.candidate_embeddings.T
  masked = full.copy()
  masked[ex_rows, ex_cols] = -np.inf
  expected = np.argsort(-masked, axis=1, kind="stable")[:, :10]
  np.testing.assert_array_equal(result.candidates, expected)
  np.testing.assert_allclose(result.scores, np.take_along_axis(masked, expected, 1), rtol=1e-5)
  # the excluded pairs' scores come back aligned with the exclusions
  np.testing.assert_allclose(result.excluded_scores,
                             full[exclusions.rows, exclusions.candidates], rtol=1e-5)
  # batch size does not change the answer
  again = retrieval.top_k(scorer, rows, 10, exclusions, batch_size=1000)
  np.testing.assert_array_equal(again.candidates, result.candidates)


def test_top_k_by_id_excludes_self_and_given_ids_and_pads_when_exhausted():
  rng = np.random.default_rng(1)
  scorer = _random_scorer(rng, n_query=5, n_cand=6)
  ids, scores = scorer.top_k(["u0", "u1"], k=6, exclude=[["u2", "u3", "nobody"], []])
  assert "u0" not in ids[0] and "u2" not in ids[0] and "u3" not in ids[0]
  assert list(ids[0][3:]) == [None, None, None] and np.isneginf(scores[0][3:]).all()
  assert "u1" not in ids[1] and ids[1][-1] is None
  with pytest.raises(KeyError, match="unknown query id"):
    scorer.top_k(["zz"], k=2)


def test_platt_calibration_recovers_a_logistic_relation():
  rng = np.random.default_rng(2)
  scores = rng.normal(0, 3, 50_000)
  labels = rng.random(50_000) < 1 / (1 + np.exp(-(0.7 * scores - 1.0)))
  cal = retrieval.PlattCalibration.fit(scores, labels)
  assert cal.slope == pytest.approx(0.7, rel=0.05)
  assert cal.intercept == pytest.approx(-1.0, abs=0.06)


def test_reciprocal_score_combines_both_directions():
  rng = np.random.default_rng(3)
  n, d = 20, 4
  ids = [f"u{i}" for i in range(n)]
  q, c = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  forward = retrieval.EmbeddingScorer(ids, ids, q, c)
  backward = retrieval.EmbeddingScorer(ids, ids, c, q)  # candidate-side of queries vs query-side
  cal = retrieval.PlattCalibration(slope=1.5, intercept=-0.5)
  p = 1 / (1 + np.exp(-(1.5 * (q @ c.T) - 0.5)))  # p[u, v] = P(u likes v)
  u, v = rng.integers(0, n, 30), rng.integers(0, n, 30)
  for combination, expected in (("product", p * p.T), ("harmonic", 2 * p * p.T / (p + p.T))):
    recip = retrieval.ReciprocalScorer(forward, backward, cal, combination=combination)
    block = recip.score_block(np.arange(n)).numpy()
    np.testing.assert_allclose(block, expected, rtol=1e-5)
    np.testing.assert_allclose(block, block.T, rtol=1e-5)  # same entity: symmetric
    np.testing.assert_allclose(recip.pair_scores(u, v), block[u, v], rtol=1e-5)
  assert retrieval.ReciprocalScorer(forward, backward, cal).combination == "product"


def test_popularity_penalty_lowers_a_popular_candidates_rank_in_blocks_pairs_and_top_k():
  ids = ["a", "b", "c"]
  # Everyone prefers c0 (score 1.0) over c1 (0.9) over c2 (0.1); c0 has 99 train likes.
  queries = np.array([[1.0, 0.0], [1.0, 0.0]])
  candidates = np.array([[1.0, 0.0], [0.9, 0.0], [0.1, 0.0]])
  model = retrieval.EmbeddingScorer(ids[:2], ids, queries, candidates)
  likes = np.array([99, 0, 3])
  penalised = retrieval.CandidatePenalty.popularity(model, likes, 0.05)
  assert penalised.name == "model:pop0.05" and penalised.traceable
  expected = queries @ candidates.T - 0.05 * np.log1p(likes)  # c0: 1 - 0.05 ln 100 = 0.77
  np.testing.assert_allclose(penalised.score_block(np.arange(2)).numpy(), expected, rtol=1e-6)
  np.testing.assert_allclose(penalised.pair_scores([0, 1, 1], [0, 1, 2]),
                             expected[[0, 1, 1], [0, 1, 2]], rtol=1e-6)
  assert model.top_k(["a"], 2, exclude_self=False)[0].tolist() == [["a", "b"]]
  assert penalised.top_k(["a"], 2, exclude_self=False)[0].tolist() == [["b", "a"]]
  same = retrieval.CandidatePenalty.popularity(model, likes, 0.0)
  np.testing.assert_array_equal(same.score_block(np.arange(2)).numpy(),
                                model.score_block(np.arange(2)).numpy())
  with pytest.raises(ValueError, match="beta"):
    retrieval.CandidatePenalty.popularity(model, likes, -0.1)
  with pytest.raises(ValueError, match="one value per candidate"):
    retrieval.CandidatePenalty.popularity(model, likes[:2], 0.1)


def test_hubness_penalty_is_ranking_with_centred_queries():
  rng = np.random.default_rng(5)
  model = _random_scorer(rng)
  hub = retrieval.CandidatePenalty.hubness(model, 0.5)
  assert hub.name == "model:hub0.5"
  centred = model.query_embeddings - 0.5 * model.query_embeddings.mean(axis=0)
  np.testing.assert_allclose(hub.score_block(np.arange(37)).numpy(),
                             centred @ model.candidate_embeddings.T, rtol=1e-4, atol=1e-5)
  ranked = retrieval.top_k(hub, np.arange(37), 5).candidates
  np.testing.assert_array_equal(ranked, np.argsort(-(centred @ model.candidate_embeddings.T),
                                                   axis=1, kind="stable")[:, :5])


def test_reciprocal_uses_observed_back_swipes_in_blocks_pairs_and_top_k():
  rng = np.random.default_rng(4)
  n, d = 30, 4
  ids = [f"u{i}" for i in range(n)]
  q, c = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  forward = retrieval.EmbeddingScorer(ids, ids, q, c)
  backward = retrieval.EmbeddingScorer(ids, ids, c, q)
  cal = retrieval.PlattCalibration(slope=1.5, intercept=-0.5)
  p = 1 / (1 + np.exp(-(1.5 * (q @ c.T) - 0.5)))  # p[u, v] = P(u likes v)
  # Swipes by id in time order (swiper, swipee, liked); u7 -> u0 changes its mind: last wins.
  swipes = [("u7", "u0", 0), ("u3", "u0", 1), ("u9", "u0", 0), ("u3", "u2", 1),
            ("u7", "u0", 1), ("nobody", "u0", 1)]
  back = retrieval.BackSwipes.of_swipes(forward, *zip(*swipes))
  np.testing.assert_array_equal(back.indptr[:4], [0, 3, 3, 4])
  np.testing.assert_array_equal(back.candidates, [3, 7, 9, 3])
  np.testing.assert_array_equal(back.liked, [1, 1, 0, 1])
  np.testing.assert_array_equal(back.lookup([0, 0, 0, 2, 1], [3, 9, 5, 3, 3]),
                                [1, 0, np.nan, 1, np.nan])
  p_back = p.T.copy()  # p_back[u, v] = P(v likes u)
  p_back[0, 3] = p_back[0, 7] = p_back[2, 3] = 1
  p_back[0, 9] = 0
  expected = {"product": p * p_back, "harmonic": 2 * p * p_back / (p + p_back)}
  for combination, want in expected.items():
    recip = retrieval.ReciprocalScorer(forward, backward, cal, combination=combination,
                                       back_swipes=back)
    rows = np.array([2, 0, 5, 0])  # any order, repeats: the block gathers per row
    np.testing.assert_allclose(recip.score_block(rows).numpy(), want[rows], rtol=1e-5,
                               atol=1e-7)
    u, v = rng.integers(0, n, 200), rng.integers(0, n, 200)
    u[:3], v[:3] = 0, [3, 9, 7]
    np.testing.assert_allclose(recip.pair_scores(u, v), want[u, v], rtol=1e-5, atol=1e-7)
    # The traced top-k path applies the same rule: u9 passed on u0, so never first.
    top = retrieval.top_k(recip, np.arange(n), 5, retrieval.Exclusions.none(n), batch_size=7)
    masked = want.copy()
    np.testing.assert_allclose(top.scores, -np.sort(-masked, axis=1)[:, :5], rtol=1e-5,
                               atol=1e-7)
  # Product ranks a sure back-like at exactly P(u likes v); without back swipes it is lower.
  plain = retrieval.ReciprocalScorer(forward, backward, cal)
  observed = plain.with_back_swipes(back)
  assert observed.pair_scores([0], [3])[0] == pytest.approx(p[0, 3], rel=1e-5)
  assert plain.pair_scores([0], [3])[0] == pytest.approx(p[0, 3] * p[3, 0], rel=1e-5)
  with pytest.raises(ValueError, match="combination must be one of"):
    retrieval.ReciprocalScorer(forward, backward, cal, combination="max")
  with pytest.raises(ValueError, match="back swipes cover"):
    retrieval.ReciprocalScorer(forward, backward, cal, back_swipes=retrieval.BackSwipes(
        np.zeros(3, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)))


@pytest.fixture(scope="module")
def tiny_dataset(tiny_dataset_dir):
  return reader.open_dataset(tiny_dataset_dir)


@pytest.fixture(scope="module")
def tiny_data(tiny_dataset):
  return evaluator.prepare(tiny_dataset)


def test_prepare_builds_consistent_relevance_and_exclusions(tiny_data, tiny_dataset):
  data = tiny_data
  assert data.num_users == np.unique(data.eval_swipes.users).size
  assert (data.likes.labels == 1).all() and data.likes.users.size > 0
  width = data.candidate_ids.size
  excluded = set((data.exclusions.rows * width + data.exclusions.candidates).tolist())
  assert not excluded & set((data.likes.users * width + data.likes.candidates).tolist())
  # every user's own id is excluded from their list
  own = retrieval.id_index(data.candidate_ids).get_indexer(data.query_ids[data.users])
  assert all(u * width + c in excluded for u, c in enumerate(own))
  # matches are eval likes that were liked back
  assert set(zip(data.matches.users, data.matches.candidates)) <= set(
      zip(data.likes.users, data.likes.candidates))
  assert data.segments["all"].all() and data.segments["new"].sum() > 0
  # the validation window's swipers: trained on nothing of theirs since, seen by a history
  assert 0 < data.segments["swiped_after_training"].sum() < data.num_users
  assert data.segments["new"][data.segments["joined_after_training"]].mean() > 0.5
  assert data.notes["eval_swipes"] == tiny_dataset.num_rows("eval")


def test_segments_hand_built():
  day = segments.SECONDS_PER_DAY
  split = 200 * day
  rules = segments.SegmentRules(active_window_days=10, active_min_swipes=2, long_time_days=100)
  created = np.array([0, 150 * day, -1, -1])
  # user 0: two swipes in the last 10 days; user 1: one old swipe; user 3: first swipe on day 50
  users = np.array([0, 0, 1, 3])
  times = np.array([195, 199, 20, 50]) * day
  got = segments.assign_segments(4, created, users, times, split, rules)
  np.testing.assert_array_equal(got["new"], [False, False, True, False])
  np.testing.assert_array_equal(got["active"], [True, False, False, False])
  np.testing.assert_array_equal(got["long_time"], [True, False, False, True])
  # no validation window: nobody joined or swiped after training except the unseen user 2
  np.testing.assert_array_equal(got["joined_after_training"], [False, False, True, False])
  assert not got["swiped_after_training"].any()
  assert not got["joined_and_swiped_after_training"].any()


def test_segments_after_training():
  """Joined / swiped after the training data's end E (the validation window [E, T))."""
  day = segments.SECONDS_PER_DAY
  split, end = 200 * day, 190 * day
  rules = segments.SegmentRules(fresh_min_swipes=2)
  # 0: old account, 2 swipes in [E, T); 1: old account, 1 swipe in [E, T) and one before E;
  # 2: created at E exactly, swipes after; 3: created_at unknown, first swipe after E;
  # 4: created_at unknown, first swipe before E; 5: no created_at, no swipe before T
  created = np.array([0, 0, end, -1, -1, -1])
  users = np.array([0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 4])
  times = np.array([191, 199, 100, 195, 190, 192, 199, 194, 180, 191, 192]) * day
  got = segments.assign_segments(6, created, users, times, split, rules, training_end=end)
  np.testing.assert_array_equal(got["joined_after_training"],
                                [False, False, True, True, False, True])
  np.testing.assert_array_equal(got["swiped_after_training"],
                                [True, False, True, False, True, False])
  np.testing.assert_array_equal(got["joined_and_swiped_after_training"],
                                [False, False, True, False, False, False])


SEEKS = {"men": {"man"}, "women": {"woman"}, "everyone": {"man", "woman", "nonbinary"}}


def _eligible_by_hand(q, c, a, b):
  """The default config's eligibility, written out: mutual seeking and 10 years of age."""
  return (c["candidate_gender"][b] in SEEKS[q["query_seeking"][a]]
          and q["query_gender"][a] in SEEKS[c["candidate_seeking"][b]]
          and abs(q["query_age"][a] - c["candidate_age"][b]) <= 10)


def test_feature_matching_scores_follow_the_config_terms(tiny_data):
  fm = baselines.FeatureMatching(config_lib.load_config(), tiny_data.query_entities,
                                 tiny_data.candidate_entities, tiny_data.eligible)
  assert fm.active_terms == ("eligible", "age_closeness", "distance_decay", "shared_values")
  q, c = tiny_data.query_entities, tiny_data.candidate_entities
  rng = np.random.default_rng(4)
  u, v = rng.integers(0, q["query_id"].size, 300), rng.integers(0, c["candidate_id"].size, 300)
  expected = []
  for a, b in zip(u, v):
    gap = abs(q["query_age"][a] - c["candidate_age"][b])
    km = baselines.haversine_km(q["query_location"][a], c["candidate_location"][b])
    shared = len(set(q["query_interests"][a]) & set(c["candidate_interests"][b]) - {""})
    expected.append(10.0 * (_eligible_by_hand(q, c, a, b) - 1) - 0.2 * max(gap - 5, 0)
                    - 1.0 * min(max(km - 50, 0) / 50, 5) + 0.5 * shared)
  np.testing.assert_allclose(fm.pair_scores(u, v), expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(fm.score_block(u[:5]).numpy()[np.arange(5), v[:5]],
                             expected[:5], rtol=1e-4, atol=1e-4)
  # the A/B simulator's API: ids in, ids out, exclusions and eligibility respected
  ids, scores = fm.top_k(q["query_id"][:3], k=5, exclude=[list(c["candidate_id"][:50])] * 3,
                         eligible=tiny_data.eligible)
  assert ids.shape == (3, 5) and (np.diff(scores, axis=1) <= 0).all()
  assert not set(ids.ravel()) & (set(c["candidate_id"][:50]) | set(q["query_id"][:3]))
  for a, row in enumerate(ids):
    for b in fm.candidate_rows(row):
      assert _eligible_by_hand(q, c, a, b)
  np.testing.assert_allclose(fm.score(q["query_id"][:3], ids[:, 0]), scores[:, 0], rtol=1e-5)


def test_baselines_on_the_tiny_world(tiny_data, tiny_dataset, tiny_world):
  data = tiny_data
  counts = metrics.bootstrap_counts(data.num_users, 100)
  popular = metrics.top_popular_mask(data.likes_received)
  out = {}
  for scorer in (baselines.RandomScorer(data.query_ids, data.candidate_ids),
                 baselines.PopularityScorer(data.query_ids, data.candidate_ids,
                                            data.likes_received),
                 baselines.FeatureMatching(config_lib.load_config(), data.query_entities,
                                           data.candidate_entities, data.eligible)):
    result = evaluator.evaluate(scorer, data, [5, 20], evaluator.fit_calibration(scorer, data),
                                oracle=tiny_world.like_probability)
    out[scorer.name] = evaluator.summarize(result, data, counts, [5, 20], popular)
    # lists never contain an excluded candidate
    top = result.top.candidates
    width = data.candidate_ids.size
    keys = np.arange(top.shape[0])[:, None] * width + top
    assert not np.isin(keys, data.exclusions.rows * width + data.exclusions.candidates).any()
    # ... and every listed pair obeys the eligibility rules, pair by pair
    q, c = data.query_entities, data.candidate_entities
    for user, row in enumerate(top):
      for b in row[row >= 0]:
        assert _eligible_by_hand(q, c, data.users[user], b), (scorer.name, user, b)
  fm, pop, rnd = (out[n]["segments"]["all"] for n in ("feature_matching", "popularity", "random"))
  assert abs(rnd["auc"]["value"] - 0.5) < 0.1
  assert fm["auc"]["value"] > 0.65 and fm["recall@20"]["value"] > rnd["recall@20"]["value"]
  assert fm["oracle_like@5"]["value"] > pop["oracle_like@5"]["value"] > rnd["oracle_like@5"][
      "value"]
  # popularity concentrates exposure (within each eligible pool); random spreads it
  assert out["popularity"]["exposure"]["5"]["top1pct_share"]["value"] > 0.4
  assert out["random"]["exposure"]["20"]["gini"]["value"] < out["popularity"]["exposure"]["20"][
      "gini"]["value"]
  for block in out.values():
    for est in block["segments"]["all"].values():
      if est["value"] is not None and est["ci"][0] is not None:
        assert est["ci"][0] <= est["value"] + 1e-9 and est["value"] <= est["ci"][1] + 1e-9


# -- the stage, end to end ----------------------------------------------------------

FAST_TRAIN = dict(epochs=1, steps_per_epoch=25, batch_size=128, log_every_steps=25,
                  checkpoint_every_steps=25, layer_sizes=[32], embedding_dim=16, no_tune=True)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_dataset_dir):
  from tfrs_two_tower.model import train_options
  from tfrs_two_tower.stages import train_stage
  path = str(tmp_path_factory.mktemp("eval_runs") / "run")
  train_stage.run(tiny_dataset_dir, path, train_options.TrainOptions(**FAST_TRAIN), **QUIET)
  return path


@pytest.mark.slow
def test_evaluate_script_end_to_end(tiny_run, tiny_dataset_dir, tiny_world_dir, tmp_path):
  out = str(tmp_path / "eval")
  cmd = [sys.executable, os.path.join(REPO, "scripts", "evaluate.py"),
         f"--dataset_dir={tiny_dataset_dir}", f"--run_dir={tiny_run}", f"--output_dir={out}",
         f"--world_dir={tiny_world_dir}", "--k=5,20", "--bootstrap=50",
         "--reciprocal_combination=product,harmonic", "--popularity_penalty=0,0.05",
         "--hubness_penalty=0.5"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.load(open(os.path.join(out, "report.json")))
  name = os.path.basename(tiny_run)
  assert set(report["recommenders"]) == {"random", "popularity", "feature_matching", name,
                                         f"{name}:reciprocal", f"{name}:reciprocal_harmonic",
                                         f"{name}:pop0.05", f"{name}:hub0.5"}
  exposure = {n: report["recommenders"][n]["exposure"]["20"] for n in (name, f"{name}:pop0.05",
                                                                        f"{name}:hub0.5")}
  exposure = {n: {m: e[m]["value"] for m in e} for n, e in exposure.items()}
  # The popularity penalty takes slots from the top 1 % (it also raises Gini here: the
  # zero-like tail floods every list, docs/evaluation.md); the hubness penalty spreads them.
  assert exposure[f"{name}:pop0.05"]["top1pct_share"] < exposure[name]["top1pct_share"]
  assert exposure[f"{name}:hub0.5"]["gini"] < exposure[name]["gini"] - 0.03
  assert exposure[f"{name}:hub0.5"]["coverage"] > exposure[name]["coverage"]
  assert report["recommenders"][f"{name}:pop0.05"]["beta"] == 0.05
  assert report["recommenders"][f"{name}:hub0.5"]["mode"] == "hubness_penalty"
  for suffix, combination in ((":reciprocal", "product"), (":reciprocal_harmonic", "harmonic")):
    info = report["recommenders"][name + suffix]
    assert (info["mode"], info["combination"], info["back_swipes"]) == (
        "reciprocal", combination, True)
  assert os.listdir(os.path.join(tiny_run, "logs", "eval_reciprocal_harmonic"))
  model = report["recommenders"][name]["segments"]
  assert set(model) == {"all", "new", "active", "long_time", "joined_after_training",
                        "swiped_after_training", "joined_and_swiped_after_training"}
  for metric in ("auc", "recall@5", "ndcg@20", "mrr", "match_recall@5", "success@5",
                 "factorized_top20_accuracy", "log_loss", "oracle_match@5"):
    assert metric in model["all"], metric
  assert 0.4 < model["all"]["auc"]["value"] < 1
  assert report["lifts"][name]["all"]["recall@5"]["ci"][0] is not None
  assert name in report["verdict"] and "AUC" in report["verdict"][name]["line"]
  # The tiny world's feed does not explore: the answer falls back to what users were shown.
  assert report["off_policy"]["explored"] is False
  assert report["answer"][name]["estimator"] == "impression_conditioned"
  assert "no exploration" in report["answer"][name]["why"]
  for metric in ("gauc", "shown_precision", "shown_ndcg", "shown_match_precision"):
    assert metric in model["all"] and metric in report["lifts"][name]["all"], metric
  md = open(os.path.join(out, "report.md")).read()
  assert "## Verdict" in md and "feature_matching" in md and "Lift over" in md
  for png in ("recall_at_k.png", "roc.png", "segments.png", "popularity.png"):
    assert os.path.getsize(os.path.join(out, png)) > 1000
  manifest = json.load(open(os.path.join(out, "manifest.json")))
  assert "report.json" in manifest["files"]
  assert os.listdir(os.path.join(tiny_run, "logs", "eval"))  # TensorBoard events
  # the output directory is not overwritten silently
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "already exists" in proc.stderr


def test_mismatched_run_and_dataset_are_refused(tiny_run_dir, tiny_world, default_config,
                                                tmp_path):
  raw = json.loads(default_config.to_json())
  raw["entities"]["user"]["features"][1]["embedding_dim"] = 6  # another config, same data
  other = str(tmp_path / "other_dataset")
  synthetic.write_world_dataset(tiny_world, config_lib.parse_config(raw), other)
  with pytest.raises(evaluate_stage.EvaluationInputError, match="do not belong together"):
    evaluate_stage.run(other, [tiny_run_dir], str(tmp_path / "eval"), **QUIET)
  assert not os.path.exists(tmp_path / "eval")


def test_reciprocal_entries_see_train_back_swipes_and_the_oracle_their_outcome(
    tiny_data, tiny_world):
  data = tiny_data
  scorer = retrieval.Scorer(data.query_ids, data.candidate_ids)
  back = recommenders.train_back_swipes(scorer, data)
  train = data.train_swipes
  swipers, swipees = data.query_ids[train.users], data.candidate_ids[train.candidates]
  # Every train swipe of v on u is P(v likes u) in u's query row, v's candidate column.
  u, v = scorer.query_rows(swipees), scorer.candidate_rows(swipers)
  np.testing.assert_array_equal(back.lookup(u, v), train.labels)
  assert back.candidates.size == len(set(zip(u, v))) > 1000
  # The oracle: observed outcomes for swiped pairs, the hidden probability otherwise.
  oracle = recommenders.realised_oracle(tiny_world.like_probability, data)
  np.testing.assert_array_equal(oracle(swipers[:500], swipees[:500]), train.labels[:500])
  unswiped = np.setdiff1d(data.candidate_ids[:50], swipees[swipers == swipers[0]])
  first = np.full(unswiped.size, swipers[0], dtype=object)
  np.testing.assert_allclose(oracle(first, unswiped),
                             tiny_world.like_probability(first, unswiped))


def test_bad_inputs_are_named(tiny_dataset_dir, tmp_path):
  with pytest.raises(evaluate_stage.EvaluationInputError, match="--run_dir"):
    evaluate_stage.run(tiny_dataset_dir, [str(tmp_path / "missing")], str(tmp_path / "e"), **QUIET)
  with pytest.raises(evaluate_stage.EvaluationInputError, match="--baselines"):
    evaluate_stage.run(tiny_dataset_dir, [], str(tmp_path / "e"),
                       evaluate_stage.EvaluateOptions(baselines=["oracle"]), **QUIET)
  with pytest.raises(evaluate_stage.EvaluationInputError, match="--reciprocal_combination"):
    evaluate_stage.run(tiny_dataset_dir, [], str(tmp_path / "e"),
                       evaluate_stage.EvaluateOptions(reciprocal_combinations=["max"]), **QUIET)
  with pytest.raises(evaluate_stage.EvaluationInputError, match="--world_dir"):
    evaluate_stage.run(tiny_dataset_dir, [], str(tmp_path / "e"),
                       evaluate_stage.EvaluateOptions(world_dir=str(tmp_path)), **QUIET)


def test_verdict_applies_the_users_gates():
  """The lift gate follows the answer's estimator (here impression-conditioned, no log),
  never logged recall: "weak" has the better recall lift and still fails."""
  from tfrs_two_tower.evaluation import report as report_lib

  def est(value, low, high):
    return {"value": value, "ci": [low, high]}
  report = {"k": [10, 50], "lift_baseline": "fm", "data": {"shown_k": 5}, "recommenders": {
      "fm": {"kind": "baseline", "segments": {"all": {"auc": est(0.72, 0.71, 0.73)}}},
      "good": {"kind": "model", "segments": {"all": {"auc": est(0.78, 0.77, 0.79)}}},
      "weak": {"kind": "model", "segments": {"all": {"auc": est(0.69, 0.68, 0.70)}}}},
      "lifts": {"good": {"all": {"recall@10": est(-0.1, -0.2, 0.0),
                                 "shown_precision": est(0.25, 0.1, 0.4)}},
                "weak": {"all": {"recall@10": est(0.3, 0.2, 0.4),
                                 "shown_precision": est(0.05, -0.02, 0.12)}}}}
  report["answer"] = report_lib.answer(report)
  assert report["answer"]["good"]["estimator"] == "impression_conditioned"
  assert "no impressions log" in report["answer"]["good"]["why"]
  verdict = report_lib.verdict(report)
  assert set(verdict) == {"good", "weak"}
  assert verdict["good"]["auc_gate"] and verdict["good"]["lift_gate"]
  assert "PASS" in verdict["good"]["line"] and "+25%" in verdict["good"]["line"]
  assert "biased toward the logging feed, not used" in verdict["good"]["line"]
  assert not verdict["weak"]["auc_gate"] and not verdict["weak"]["lift_gate"]
  assert "FAIL" in verdict["weak"]["line"]


def test_answer_prefers_off_policy_when_the_log_explores():
  from tfrs_two_tower.evaluation import report as report_lib

  def est(value, low, high):
    return {"value": value, "ci": [low, high]}
  lifts = {f"{e}_{t}": est(0.3, 0.1, w) for e, w in (("ips", 0.6), ("snips", 0.5),
                                                      ("dr", 0.4)) for t in ("like", "match")}
  support = {"support": {"effective_sample_size": 500}}
  report = {"k": [10], "lift_baseline": "fm", "data": {"shown_k": 5},
            "recommenders": {"m": {"kind": "model"}},
            "lifts": {"m": {"all": {"shown_precision": est(-0.1, -0.2, 0.0)}}},
            "off_policy": {"explored": True, "k": 10, "min_effective_sample_size": 100,
                           "reward_model": "m", "recommenders": {"m": support, "fm": support},
                           "lifts": {"m": {"all": lifts}}}}
  answer = report_lib.answer(report)["m"]
  assert answer["estimator"] == "off_policy_dr" and answer["beats"]
  assert "narrowest" in answer["why"] and answer["assumptions"]
  report["off_policy"]["recommenders"]["fm"] = {"support": {"effective_sample_size": 20}}
  fallback = report_lib.answer(report)["m"]
  assert fallback["estimator"] == "impression_conditioned" and not fallback["beats"]
  assert "effective sample size" in fallback["why"]
