"""The like-vs-pass residual: its fit, its choice on validation, and the towers it extends."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tfrs_two_tower.model import like_residual
from tfrs_two_tower.model import towers

from test_model import SPECS


def _planted(seed: int, n_users: int = 80, n_candidates: int = 60, shown: int = 30):
  """Swipes where users of group g like style-g candidates (p 0.85) and pass others (0.15),
  and picky users (half) like less: their logit is 1.5 lower.

  The towers' cosine is noise: only the ids carry the taste. Rows 0 and 1 are padding
  and OOV, as in an id table. Returns (train, validation, (group, style, picky) per row).
  """
  rng = np.random.default_rng(seed)
  group, style = rng.integers(0, 2, n_users + 2), rng.integers(0, 2, n_candidates + 2)
  users = np.repeat(np.arange(2, n_users + 2), shown)
  candidates = np.concatenate([rng.choice(np.arange(2, n_candidates + 2), shown, replace=False)
                               for _ in range(n_users)])
  picky = rng.random(n_users + 2) < 0.5
  logit = np.where(group[users] == style[candidates], 1.73, -1.73) - 1.5 * picky[users]
  likes = rng.random(users.size) < 1 / (1 + np.exp(-logit))
  swipes = like_residual.Swipes(users, candidates, rng.normal(0, 0.1, users.size),
                                likes.astype(float), np.ones(users.size))
  validation = rng.random(users.size) < 0.25

  return swipes.subset(~validation), swipes.subset(validation), (group, style, picky)


def test_the_fit_recovers_a_planted_taste_and_validation_chooses_it():
  train, validation, (group, style, picky) = _planted(0)
  shape = (len(group), len(style))
  logs = []
  residual, table = like_residual.choose(train, validation, *shape, ranks=(2,),
                                         grid=(0.1, 1.0), log=logs.append)
  towers_alone = table[0]["validation_log_loss"]
  assert table[0]["rank"] == 0 and [(r["rank"], r["l2"]) for r in table[1:]] == [(2, 0.1),
                                                                                (2, 1.0)]
  assert len(logs) == 2 and "validation log loss" in logs[0]
  best = min(r["validation_log_loss"] for r in table[1:])
  assert towers_alone > 0.6 and best < towers_alone - 0.1  # the ids carry the taste
  assert residual.rank == 2 and residual.l2 in (0.1, 1.0)
  assert residual.l2 == min(table[1:], key=lambda r: r["validation_log_loss"])["l2"]
  # Same-group pairs score above the others, for unseen (user, candidate) pairs too.
  users, candidates = np.arange(2, len(group)), np.arange(2, len(style))
  dots = residual.query_factors[users] @ residual.candidate_factors[candidates].T
  same = group[users][:, None] == style[candidates][None, :]
  assert dots[same].mean() > dots[~same].mean() + 0.6
  # b_u learns who likes less readily (it moves no user's own ranking, only across users).
  bias = residual.query_bias[users]
  assert bias[picky[users]].mean() < bias[~picky[users]].mean() - 0.3  # shrunk from 1.5
  # Unused rows (padding, OOV) are pulled to 0 by the penalty.
  assert np.abs(residual.query_factors[:2]).max() < 1e-3
  # The appended columns reproduce the logits: [a q, 1, b_u, p_u] . [c, b_v, 1, s_v] = z - b_0.
  q_cols = residual.query_table(first_known_row=2)
  c_cols = residual.candidate_table(first_known_row=2)
  assert q_cols.shape == (len(group), 4) and c_cols.shape == (len(style), 4)  # 2 + rank
  np.testing.assert_array_equal(q_cols[:, 0], 1.0)
  np.testing.assert_array_equal(q_cols[:2], [[1, 0, 0, 0]] * 2)  # unseen: the towers + b_v
  np.testing.assert_array_equal(c_cols[:2], [[0, 1, 0, 0]] * 2)  # unseen: the towers + b_u
  score = residual.scale * validation.cosine + np.einsum(
      "nr,nr->n", q_cols[validation.query], c_cols[validation.candidate])
  np.testing.assert_allclose(score + residual.intercept, residual.logits(validation), atol=1e-5)
  again, _ = like_residual.choose(train, validation, *shape, ranks=(2,), grid=(0.1, 1.0),
                                  log=lambda *a: None)
  np.testing.assert_array_equal(again.query_factors, residual.query_factors)  # seeded


def test_validation_adds_the_feature_that_carries_the_style_and_not_noise():
  # 400 candidates, ~6 swipes each: too few for a free s_v, enough for a shared map W.
  train, validation, (group, style, _) = _planted(2, n_candidates=400)
  rng = np.random.default_rng(0)
  colour = np.where(np.arange(style.size) < 2, 0, style + 1)  # rows 0, 1: padding, OOV
  noise = np.where(np.arange(style.size) < 2, 0, rng.integers(1, 4, style.size))
  features = like_residual.Features({
      "colour": {"candidate": like_residual.multi_hot(colour, 3)},
      "noise": {"candidate": like_residual.multi_hot(noise, 4)}})
  shape = (len(group), len(style))
  residual, table = like_residual.choose(train, validation, *shape, ranks=(2,), grid=(0.1,),
                                         log=lambda *a: None, features=features)
  plain = table[1]["validation_log_loss"]
  first_round = {tuple(r["features"]): r["validation_log_loss"] for r in table[2:4]}
  assert set(first_round) == {("colour",), ("noise",)}
  assert first_round[("colour",)] < plain - 0.01 < first_round[("noise",)]
  assert residual.features[0] == "colour"
  # With groups chosen, validation picks the maps' penalty from the grid.
  tried = {r["feature_l2"]: r["validation_log_loss"] for r in table
           if r["features"] == list(residual.features)}
  assert set(tried) == set(like_residual.FEATURE_L2_GRID)
  assert residual.feature_l2 == min(tried, key=tried.get)
  # Same-style candidates share a direction, and the map W carries it: a candidate unseen
  # in training gets its colour's row.
  s = residual.factors("candidate")
  gap = s[2:][style[2:] == 1].mean(0) - s[2:][style[2:] == 0].mean(0)
  assert np.linalg.norm(gap) > 0.3
  assert np.abs(s[:2]).max() < 1e-3  # rows without features or swipes stay at 0
  colours = residual.candidate_maps["candidate_colour"]  # [3, rank]: padding, style 0, 1
  np.testing.assert_array_equal(colours[0], 0.0)
  assert np.linalg.norm(colours[2] - colours[1]) > 0.3
  assert residual.query_maps == {} and residual.query_mapped is None
  tables = residual.feature_tables("candidate")
  assert list(tables) == ["candidate_colour"] and tables["candidate_colour"].shape == (3, 4)
  np.testing.assert_array_equal(tables["candidate_colour"][:, :2], 0.0)  # no b_v, no weight
  np.testing.assert_allclose(tables["candidate_colour"][:, 2:], colours, rtol=1e-6)
  # A candidate unseen in training is served its OOV row [0, 1, 0] plus W f_v, its colour's
  # map, which points the way the seen candidates of that style differ.
  oov = residual.candidate_table(first_known_row=2)[1]
  np.testing.assert_array_equal(oov, [0, 1, 0, 0])
  served = oov + tables["candidate_colour"][[1, 2]]  # colours of styles 0 and 1
  assert (served[1, 2:] - served[0, 2:]) @ gap > 0.5 * gap @ gap
  without, _ = like_residual.choose(train, validation, *shape, ranks=(2,), grid=(0.1,),
                                    log=lambda *a: None)
  assert without.features == () and without.log_loss(validation) > residual.log_loss(validation)


def _planted_history(seed: int, n_users: int = 120, n_candidates: int = 60, shown: int = 30):
  """Swipes in order, each with the history of the candidates its user liked before it
  (the last 10); users of group g like style-g candidates (p 0.85), others (p 0.15).

  Rows 0 and 1 are padding and OOV. Train: each user's first 5 swipes (few: their own
  factor knows little); validation: the rest, whose histories have grown. Returns
  (train, validation, (query rows, candidate rows)).
  """
  rng = np.random.default_rng(seed)
  group, style = rng.integers(0, 2, n_users + 2), rng.integers(0, 2, n_candidates + 2)
  columns = {"query": [], "candidate": [], "label": [], "position": [], "history": []}
  for user in range(2, n_users + 2):
    liked = []
    for position, candidate in enumerate(rng.choice(np.arange(2, n_candidates + 2), shown,
                                                    replace=False)):
      like = rng.random() < (0.85 if group[user] == style[candidate] else 0.15)
      for key, value in zip(columns, (user, candidate, float(like), position,
                                      (liked[::-1] + [0] * 10)[:10])):
        columns[key].append(value)
      if like:
        liked.append(candidate)
  query = np.array(columns["query"])
  swipes = like_residual.Swipes(
      query, np.array(columns["candidate"]), rng.normal(0, 0.1, query.size),
      np.array(columns["label"]), np.ones(query.size),
      {"history_liked": like_residual.multi_hot(np.array(columns["history"]), n_candidates + 2)})
  train = np.array(columns["position"]) < 5
  return swipes.subset(train), swipes.subset(~train), (n_users + 2, n_candidates + 2)


def test_a_history_map_reads_the_taste_from_the_swipes_before_each_one():
  train, validation, shape = _planted_history(0)
  residual, table = like_residual.choose(train, validation, *shape, ranks=(2,), grid=(0.1,),
                                         log=lambda *a: None)
  assert residual.features == ("history_liked",)  # chosen on validation
  plain = next(r for r in table if r["rank"] == 2 and not r["features"])
  assert min(r["validation_log_loss"] for r in table if r["features"]) < (
      plain["validation_log_loss"] - 0.02)
  # The towers read the map as the history list's table: [0, 0, Y_v] per candidate row v.
  map_table = residual.feature_tables("query")["query_history_liked"]
  assert map_table.shape == (shape[1], 2 + 2) and not map_table[:, :2].any()
  np.testing.assert_allclose(map_table[:, 2:], residual.history_maps["query_history_liked"],
                             rtol=1e-6)
  # A swipe's history part alone ranks its likes above its passes: it points towards the
  # style the user liked before.
  history = validation.history["history_liked"]
  part = np.einsum("nr,nr->n", history @ residual.history_maps["query_history_liked"],
                   residual.factors("candidate")[validation.candidate])
  read = np.asarray(history.sum(1)).ravel() > 0
  assert np.corrcoef(part[read], validation.label[read])[0, 1] > 0.3
  # The logits add exactly that part to the factors' own.
  without = dataclasses.replace(residual, history_maps={})
  np.testing.assert_allclose(residual.logits(validation) - without.logits(validation), part,
                             atol=1e-9)


def test_swipes_with_different_history_lists_are_refused_when_joined():
  train, validation, _ = _planted_history(1, n_users=10, shown=8)
  with pytest.raises(ValueError, match="history_liked"):
    train + like_residual.Swipes(validation.query, validation.candidate, validation.cosine,
                                 validation.label, validation.weight)
  joined = train + validation
  assert joined.history["history_liked"].shape == (joined.query.size, 62)


def test_multi_hot_counts_tokens_over_sqrt_of_their_number_and_skips_padding():
  hot = like_residual.multi_hot(np.array([[2, 2, 3, 0], [0, 0, 0, 0], [1, 0, 0, 0]]), 5)
  np.testing.assert_allclose(hot.toarray(), [[0, 0, 2 / 3 ** 0.5, 3 ** -0.5, 0], [0] * 5,
                                             [0, 1, 0, 0, 0]])
  np.testing.assert_array_equal(like_residual.multi_hot(np.array([3, 0]), 4).toarray(),
                                [[0, 0, 0, 1], [0, 0, 0, 0]])


def test_weights_count_like_repeated_swipes():
  train, _, (group, style, _) = _planted(1, n_users=30, n_candidates=20, shown=10)
  doubled = like_residual.Swipes(train.query, train.candidate, train.cosine, train.label,
                                 2 * train.weight)
  a = like_residual.fit(train, len(group), len(style), rank=2, l2=0.3)
  b = like_residual.fit(doubled, len(group), len(style), rank=2, l2=0.3)
  # The loss is a weighted mean: scaling every weight changes nothing.
  np.testing.assert_allclose(a.log_loss(train), b.log_loss(doubled), rtol=1e-6)


def test_with_like_residual_appends_the_table_to_the_core_and_serialises():
  tf.keras.utils.set_random_seed(0)
  core = towers.build_core(SPECS, [8], 4, name="query_core")
  table = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)  # rows: pad, OOV, u1, u2
  extended = towers.with_like_residual(core, "query_id", table, scale=2.5)
  rng = np.random.RandomState(0)
  batch = {"query_id": tf.constant([2, 3, 1], tf.int32),
           "query_city": tf.constant(rng.randint(0, 4, 3), tf.int32),
           "query_interests": tf.constant(rng.randint(0, 4, (3, 3)), tf.int32),
           "query_bio_length": tf.constant(rng.randn(3), tf.float32),
           "query_bio_length_missing": tf.zeros([3]),
           "query_bio_length_bucket": tf.constant([0, 1, 2], tf.int32),
           "query_location": tf.constant([1, 1, 0], tf.int32),
           "query_location_xyz": tf.constant(rng.randn(3, 3), tf.float32)}
  out = extended(batch).numpy()
  np.testing.assert_allclose(out[:, :4], 2.5 * core(batch).numpy(), rtol=1e-6)
  np.testing.assert_array_equal(out[:, 4:], table[[2, 3, 1]])
  assert not extended.get_layer("like_residual").trainable
  clone = tf.keras.Model.from_config(
      extended.get_config(), custom_objects={"L2Normalize": towers.L2Normalize,
                                             "MaskedPooling": towers.MaskedPooling})
  clone.set_weights(extended.get_weights())
  np.testing.assert_array_equal(clone(batch).numpy(), out)


def test_with_like_residual_adds_the_feature_maps_as_the_fit_computes_them():
  # city rows: pad, 3 OOV, 2 tokens; interests rows: pad, 1 OOV, 3 tokens.
  tf.keras.utils.set_random_seed(0)
  core = towers.build_core(SPECS, [8], 4, name="query_core")
  rng = np.random.RandomState(1)
  table = rng.randn(4, 3).astype(np.float32)  # rows: pad, OOV, u1, u2
  maps = {"query_city": rng.randn(6, 3).astype(np.float32),
          "query_interests": rng.randn(5, 3).astype(np.float32)}
  for weights in maps.values():
    weights[0] = 0.0  # padding has no map (`like_residual.multi_hot` skips index 0)
  extended = towers.with_like_residual(core, "query_id", table, feature_tables=maps)
  city, interests = np.array([5, 0, 2, 4]), np.array([[2, 2, 3], [0, 0, 0], [4, 0, 0],
                                                      [1, 3, 0]])
  batch = {"query_id": tf.constant([2, 1, 1, 3], tf.int32),  # two unseen users (OOV 1)
           "query_city": tf.constant(city, tf.int32),
           "query_interests": tf.constant(interests, tf.int32),
           "query_bio_length": tf.constant(rng.randn(4), tf.float32),
           "query_bio_length_missing": tf.zeros([4]),
           "query_bio_length_bucket": tf.constant([0, 1, 2, 0], tf.int32),
           "query_location": tf.constant([1, 1, 0, 1], tf.int32),
           "query_location_xyz": tf.constant(rng.randn(4, 3), tf.float32)}
  out = extended(batch).numpy()
  expected = (table[[2, 1, 1, 3]] + like_residual.multi_hot(city, 6) @ maps["query_city"]
              + like_residual.multi_hot(interests, 5) @ maps["query_interests"])
  np.testing.assert_allclose(out[:, 4:], expected, rtol=1e-5, atol=1e-6)
  # Two unseen users with different profiles get different columns; no features, none.
  assert np.abs(out[1, 4:] - out[2, 4:]).max() > 0.1
  np.testing.assert_allclose(out[1, 4:], table[1], atol=1e-6)
  clone = tf.keras.Model.from_config(
      extended.get_config(), custom_objects={"L2Normalize": towers.L2Normalize,
                                             "MaskedPooling": towers.MaskedPooling})
  clone.set_weights(extended.get_weights())
  np.testing.assert_array_equal(clone(batch).numpy(), out)


def test_the_fits_gradient_matches_finite_differences_with_feature_and_history_maps(
    monkeypatch):
  """The analytic gradient `fit` hands L-BFGS, against central differences of its loss, with
  entity feature groups on either side or both and two history lists."""
  import scipy.optimize
  import scipy.sparse
  rng = np.random.default_rng(0)
  n_q, n_c, n, rank = 7, 6, 60, 3
  lists = {name: like_residual.multi_hot(rng.integers(0, n_c, (n, 4)), n_c)
           for name in ("history_liked", "history_passed")}
  swipes = like_residual.Swipes(rng.integers(2, n_q, n), rng.integers(2, n_c, n),
                                rng.normal(size=n), (rng.random(n) < 0.5).astype(float),
                                rng.random(n) + 0.5, lists)

  def sparse(rows, columns):
    return scipy.sparse.random(rows, columns, density=0.5, random_state=1, format="csr")
  features = like_residual.Features({
      "interests": {"query": sparse(n_q, 5), "candidate": sparse(n_c, 5)},
      "genre": {"candidate": sparse(n_c, 3)}, "age": {"query": sparse(n_q, 2)}})
  captured = {}
  minimize = scipy.optimize.minimize

  def spy(objective, theta, **options):
    captured["objective"], captured["theta"] = objective, theta
    return minimize(objective, theta, **options)
  monkeypatch.setattr(scipy.optimize, "minimize", spy)
  fitted = like_residual.fit(swipes, n_q, n_c, rank, 0.1, features=features, max_iterations=1,
                             feature_names=("interests", "history_liked", "genre",
                                            "history_passed", "age"), feature_l2=0.01)
  assert set(fitted.history_maps) == {"query_history_liked", "query_history_passed"}
  objective = captured["objective"]
  theta = captured["theta"] + rng.normal(0, 0.3, captured["theta"].size)  # maps not 0
  _, gradient = objective(theta)
  step = np.eye(theta.size) * 1e-6
  numeric = np.array([(objective(theta + e)[0] - objective(theta - e)[0]) / 2e-6
                      for e in step])
  assert np.abs(gradient[-2 * rank * n_c:]).max() > 1e-3  # Y's part is exercised
  np.testing.assert_allclose(gradient, numeric, atol=1e-7)


def test_choose_refuses_lists_that_differ_between_train_and_validation_or_clash_with_features():
  train, validation, shape = _planted_history(2, n_users=12, shown=8)
  with pytest.raises(ValueError, match="history lists"):
    like_residual.choose(train, like_residual.Swipes(
        validation.query, validation.candidate, validation.cosine, validation.label,
        validation.weight), *shape, log=lambda *a: None)
  clash = like_residual.Features({"history_liked": {
      "query": like_residual.multi_hot(np.zeros(shape[0], int), 3)}})
  with pytest.raises(ValueError, match="named like history lists"):
    like_residual.choose(train, validation, *shape, features=clash, log=lambda *a: None)
