"""Evaluation metrics against slow reference implementations and hand-built cases."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tfrs_two_tower.evaluation import metrics
from tfrs_two_tower.evaluation import report as report_lib


# -- slow references: one user / one pair at a time, straight from the definitions ----

def _ref_user_metrics(ranked, relevant, k):
  top = ranked[:k]
  found = [c for c in top if c in relevant]
  recall = len(found) / len(relevant)
  dcg = sum(1 / math.log2(i + 2) for i, c in enumerate(top) if c in relevant)
  idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(relevant))))
  rr = next((1 / (i + 1) for i, c in enumerate(ranked) if c in relevant), 0.0)
  return recall, float(bool(found)), dcg / idcg, rr


def _ref_auc(labels, scores):
  pos = [s for s, y in zip(scores, labels) if y]
  neg = [s for s, y in zip(scores, labels) if not y]
  wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
  return wins / (len(pos) * len(neg))


def _ref_gini(x):
  x = list(x)
  n, mean = len(x), sum(x) / len(x)
  return sum(abs(a - b) for a in x for b in x) / (2 * n * n * mean)


@st.composite
def ranked_lists(draw):
  n_users = draw(st.integers(1, 6))
  n_cand = draw(st.integers(3, 15))
  k = draw(st.integers(1, n_cand))
  lists, relevant = [], []
  for _ in range(n_users):
    perm = draw(st.permutations(range(n_cand)))
    lists.append(list(perm[:k]))
    relevant.append(draw(st.sets(st.integers(0, n_cand - 1), max_size=n_cand)))
  return lists, relevant, k


@settings(max_examples=60, deadline=None)
@given(ranked_lists())
def test_ranking_metrics_match_reference(case):
  lists, relevant, k_max = case
  top = np.array(lists)
  rows = np.array([u for u, r in enumerate(relevant) for _ in r], np.int64)
  cands = np.array([c for r in relevant for c in sorted(r)], np.int64)
  hits = metrics.hit_matrix(top, rows, cands)
  n_rel = metrics.count_per_row(rows, len(lists))
  for k in sorted({1, k_max, max(1, k_max // 2)}):
    recall = metrics.recall_at_k(hits, n_rel, k)
    hit = metrics.hit_rate_at_k(hits, n_rel, k)
    ndcg = metrics.ndcg_at_k(hits, n_rel, k)
    rr = metrics.reciprocal_rank(hits, n_rel)
    for u, rel in enumerate(relevant):
      if not rel:
        assert np.isnan(recall[u]) and np.isnan(ndcg[u]) and np.isnan(hit[u]) and np.isnan(rr[u])
        continue
      ref = _ref_user_metrics(lists[u], rel, k)
      np.testing.assert_allclose([recall[u], hit[u], ndcg[u]], ref[:3], atol=1e-12)
      np.testing.assert_allclose(rr[u], ref[3], atol=1e-12)


def test_hand_built_ranking_case():
  # user 0: relevant {3, 7}; list [3, 1, 7, 2] -> hits at positions 0 and 2.
  # user 1: relevant {9}; list [1, 2, 3, 4] -> no hit.
  top = np.array([[3, 1, 7, 2], [1, 2, 3, 4]])
  hits = metrics.hit_matrix(top, np.array([0, 0, 1]), np.array([3, 7, 9]))
  n_rel = np.array([2, 1])
  np.testing.assert_array_equal(hits, [[1, 0, 1, 0], [0, 0, 0, 0]])
  np.testing.assert_allclose(metrics.recall_at_k(hits, n_rel, 1), [0.5, 0.0])
  np.testing.assert_allclose(metrics.recall_at_k(hits, n_rel, 3), [1.0, 0.0])
  np.testing.assert_allclose(metrics.hit_rate_at_k(hits, n_rel, 2), [1.0, 0.0])
  # NDCG@3 = (1 + 1/log2(4)) / (1 + 1/log2(3)) = 1.5 / 1.6309...
  np.testing.assert_allclose(metrics.ndcg_at_k(hits, n_rel, 3)[0], 1.5 / (1 + 1 / np.log2(3)))
  np.testing.assert_allclose(metrics.reciprocal_rank(hits, n_rel), [1.0, 0.0])
  # padding (-1) never hits
  assert not metrics.hit_matrix(np.array([[-1, 3]]), np.array([0]), np.array([3]))[0, 0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4), st.integers(0, 3)), min_size=2,
                max_size=30))
def test_weighted_auc_matches_pairwise_reference(rows):
  labels = np.array([r[0] for r in rows])
  scores = np.array([r[1] for r in rows], float)  # few values: many ties
  weights = np.array([r[2] for r in rows])
  expanded = np.repeat(np.arange(len(rows)), weights)
  lab, sc = labels[expanded], scores[expanded]
  got = metrics.weighted_auc(labels, scores, weights)
  if lab.all() or not lab.any():
    assert np.isnan(got)
    return
  assert got == pytest.approx(_ref_auc(lab, sc))
  assert metrics.roc_auc(lab, sc) == pytest.approx(_ref_auc(lab, sc))
  # vectorised over resamples: each row equals the single-row call
  stacked = metrics.weighted_auc(labels, scores, np.stack([weights, weights]))
  np.testing.assert_allclose(stacked, [got, got])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_unmasked_ranks_match_full_ranking(data):
  rng = np.random.default_rng(data.draw(st.integers(0, 10_000)))
  n_users, n_cand, k = data.draw(st.integers(1, 5)), data.draw(st.integers(5, 30)), 5
  scores = rng.normal(size=(n_users, n_cand))
  excluded = rng.random((n_users, n_cand)) < 0.3
  positive = rng.random((n_users, n_cand)) < 0.2
  positive &= ~excluded
  masked = np.where(excluded, -np.inf, scores)
  order = np.argsort(-masked, axis=1, kind="stable")[:, :k]
  p_rows, p_cols = np.nonzero(positive)
  e_rows, e_cols = np.nonzero(excluded)
  match = order[p_rows] == p_cols[:, None]
  positions = np.where(match.any(1), match.argmax(1), k)
  ranks = metrics.unmasked_ranks(positions, p_rows, scores[p_rows, p_cols], e_rows,
                                 scores[e_rows, e_cols])
  full = (scores[p_rows] > scores[p_rows, p_cols][:, None]).sum(axis=1)
  inside = positions < k
  np.testing.assert_array_equal(ranks[inside], full[inside])
  assert (ranks[~inside] >= k).all() and (full[~inside] >= k).all()
  if p_rows.size:
    assert metrics.factorized_top_k_accuracy(ranks, k) == pytest.approx(np.mean(full < k))
  else:
    assert np.isnan(metrics.factorized_top_k_accuracy(ranks, k))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=25))
def test_gini_matches_mean_absolute_difference(x):
  x = np.array(x, float)
  if x.sum() == 0:
    assert np.isnan(metrics.gini(x))
  else:
    assert metrics.gini(x) == pytest.approx(_ref_gini(x))


def test_exposure_hand_built():
  top = np.array([[0, 1], [0, 2], [0, 1]])
  exposure = metrics.exposure_counts(top, 5, k=2)
  np.testing.assert_array_equal(exposure, [3, 2, 1, 0, 0])
  assert metrics.catalogue_coverage(exposure) == pytest.approx(3 / 5)
  assert metrics.catalogue_coverage(metrics.exposure_counts(top, 5, k=1)) == pytest.approx(1 / 5)
  assert metrics.gini(np.ones(10)) == pytest.approx(0.0)
  assert metrics.gini(np.r_[np.zeros(9), 5.0]) == pytest.approx(0.9)
  popular = metrics.top_popular_mask(np.array([5, 50, 1, 0, 2]), top_fraction=0.01)
  np.testing.assert_array_equal(popular, [0, 1, 0, 0, 0])  # ceil(1 % of 5) = 1 candidate
  assert metrics.popular_share(exposure, popular) == pytest.approx(2 / 6)


def test_log_loss_hand_built():
  assert metrics.log_loss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
  assert metrics.log_loss([1, 0, 1], [0.9, 0.2, 0.6]) == pytest.approx(
      -(math.log(0.9) + math.log(0.8) + math.log(0.6)) / 3)
  assert np.isfinite(metrics.log_loss([1], [0.0]))  # clipped, not inf


def test_bootstrap_interval_covers_the_true_mean():
  # 200 repeated experiments of 150 users each: a 95 % interval should cover the true
  # mean (0.3) in roughly 95 % of them; accept 88-99 % (binomial noise at n = 200).
  rng = np.random.default_rng(0)
  covered = 0
  for trial in range(200):
    per_user = (rng.random(150) < 0.3).astype(float)
    counts = metrics.bootstrap_counts(150, 400, seed=trial)
    est = metrics.bootstrap_mean(per_user, counts)
    covered += est["ci"][0] <= 0.3 <= est["ci"][1]
  assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_lift_is_paired_and_ratio_is_pooled():
  rng = np.random.default_rng(1)
  base = rng.random(300)
  model = base * 1.2  # exactly +20 % for every user: a paired CI collapses onto it
  counts = metrics.bootstrap_counts(300, 300, seed=0)
  lift = metrics.bootstrap_lift(model, base, counts)
  assert lift["value"] == pytest.approx(0.2)
  # The resampled sums are float32 dot products over U = 300 users: each sum carries a
  # relative error up to U * 2^-24 (the forward-error bound of recursive summation), so
  # the ratio mean(model) / mean(base) up to twice that, and the lift 1.2 times the ratio's.
  float32_sum_bound = 300 * 2.0**-24
  tolerance = 1.2 * 2 * float32_sum_bound
  assert lift["ci"][0] == pytest.approx(0.2, abs=tolerance)
  assert lift["ci"][1] == pytest.approx(0.2, abs=tolerance)
  assert lift["users"] == 300
  # NaN (undefined) users are left out of both sides
  lift_nan = metrics.bootstrap_lift(np.r_[model, np.nan], np.r_[base, 5.0],
                                    metrics.bootstrap_counts(301, 50))
  assert lift_nan["value"] == pytest.approx(0.2) and lift_nan["users"] == 300
  ratio = metrics.bootstrap_ratio(np.array([1.0, 3.0, 0.0]), np.array([2.0, 4.0, 0.0]),
                                  metrics.bootstrap_counts(3, 50))
  assert ratio["value"] == pytest.approx(4 / 6)
  segment = metrics.bootstrap_mean(np.array([1.0, 0.0, np.nan, 1.0]), metrics.bootstrap_counts(
      4, 50), mask=np.array([True, True, True, False]))
  assert segment["value"] == pytest.approx(0.5) and segment["users"] == 2


def test_bootstrap_auc_and_exposure_give_intervals_around_the_estimate():
  rng = np.random.default_rng(2)
  users = rng.integers(0, 100, 2000)
  labels = rng.random(2000) < 0.3
  scores = labels + rng.normal(size=2000)
  counts = metrics.bootstrap_counts(100, 200)
  est = metrics.bootstrap_auc(labels, scores, users, counts)
  assert est["value"] == pytest.approx(metrics.roc_auc(labels, scores))
  assert est["ci"][0] < est["value"] < est["ci"][1]
  top = rng.integers(0, 500, (100, 10))
  popular = metrics.top_popular_mask(rng.random(500))
  exposure = metrics.bootstrap_exposure(top, 10, 500, popular, counts)
  point = metrics.exposure_counts(top, 500, 10)
  assert exposure["coverage"]["value"] == pytest.approx(metrics.catalogue_coverage(point))
  assert exposure["gini"]["value"] == pytest.approx(metrics.gini(point))
  for e in exposure.values():
    assert 0 <= e["ci"][0] <= e["value"] <= e["ci"][1] <= 1


def test_plots_accept_intervals_that_miss_the_point_estimate(tmp_path):
  """With --bootstrap=10 a percentile interval can lie above (or below) the estimate."""
  def estimate(value, low, high):
    return {"value": value, "ci": [low, high]}
  segment = {"recall@10": estimate(0.30, 0.31, 0.40), "recall@50": estimate(0.5, None, None),
             "auc": estimate(0.7, 0.6, 0.8)}
  result = {"k": [10, 50], "segments": {"definitions": {"all": "every user", "cold": "new"}},
            "recommenders": {"model": {"segments": {"all": segment, "cold": dict(
                segment, **{"recall@10": estimate(0.2, 0.05, 0.15)})}}}}
  rng = np.random.default_rng(0)
  curves = {"model": {"labels": rng.random(50) < 0.5, "scores": rng.random(50)}}
  written = report_lib.write_plots(str(tmp_path), result, curves,
                                   {"model": rng.random(100) * 100})
  assert written == ["recall_at_k.png", "roc.png", "segments.png", "popularity.png"]
  assert all((tmp_path / name).stat().st_size > 0 for name in written)
