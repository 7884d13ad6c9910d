"""The exact preprocessing rules, the tower core and the two-tower loss."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfrs_two_tower.model import inputs
from tfrs_two_tower.model import preprocessing as prep
from tfrs_two_tower.model import towers
from tfrs_two_tower.model import two_tower

SPECS = [
    {"key": "query_id", "type": "id", "num_oov_buckets": 1, "vocab_size": 2,
     "tokens": ["u1", "u2"], "embedding_dim": 4},
    {"key": "query_city", "type": "categorical", "num_oov_buckets": 3, "vocab_size": 2,
     "tokens": ["Paris", "Rome"], "embedding_dim": 0},
    {"key": "query_interests", "type": "multi_categorical", "num_oov_buckets": 1,
     "vocab_size": 3, "tokens": ["a", "b", "c"], "max_length": 3, "pooling": "mean",
     "embedding_dim": 4},
    {"key": "query_bio_length", "type": "numeric", "transform": "log1p", "mean": 2.0,
     "std": 0.5, "fill_transformed": 0.0, "bucket_boundaries": [1.0, 10.0]},
    {"key": "query_location", "type": "geo", "num_oov_buckets": 1, "vocab_size": 1,
     "tokens": ["261:211"], "cell_degrees": 0.5},
]


def test_preprocessing_rules_are_exact():
  layer = prep.FeaturePreprocessing(SPECS)
  raw = {
      "query_id": tf.constant(["u2", "stranger", ""]),
      "query_city": tf.constant(["Rome", "Oslo", ""]),
      "query_interests": tf.constant([["c", "a"], ["zzz", ""], ["", ""]]),
      "query_bio_length": tf.constant([0.0, 20.0, math.nan]),
      "query_location": tf.constant([[40.7, -74.0], [0.0, 0.0], [math.nan, 1.0]]),
  }
  out = {k: v.numpy() for k, v in layer(raw).items()}
  assert out["query_id"].tolist() == [3, 1, 0]  # 1 + k + i, OOV = 1, "" = 0
  oslo = 1 + tf.strings.to_hash_bucket_fast(["Oslo"], 3).numpy()[0]
  assert out["query_city"].tolist() == [5, oslo, 0]
  assert out["query_interests"].tolist() == [[4, 2, 0], [1, 0, 0], [0, 0, 0]]
  z = np.float32((np.log1p(np.float32(20.0)) - np.float32(2.0)) / np.float32(0.5))
  np.testing.assert_array_equal(out["query_bio_length"],
                                np.array([-4.0, z, -4.0], np.float32))
  assert out["query_bio_length_missing"].tolist() == [0.0, 0.0, 1.0]
  assert out["query_bio_length_bucket"].tolist() == [1, 3, 0]
  # 40.7, -74.0 with 0.5 degree cells is "261:212"; the vocabulary holds "261:211".
  assert out["query_location"].tolist() == [1, 1, 0]
  lat, lon = np.radians(np.float32(40.7)), np.radians(np.float32(-74.0))
  np.testing.assert_allclose(out["query_location_xyz"][0],
                             [np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)],
                             atol=1e-6)
  np.testing.assert_array_equal(out["query_location_xyz"][2], [0, 0, 0])
  assert set(out) == set(prep.core_input_specs(SPECS))


def test_core_masks_padding_and_normalises():
  # Seeded: with 8 ReLU units, ~2 % of random inits leave every unit dead (a zero output).
  tf.keras.utils.set_random_seed(0)
  core = towers.build_core(SPECS, [8], 6, name="core")
  layer = prep.FeaturePreprocessing(SPECS)
  raw = {"query_id": tf.constant(["u1", "u1"]), "query_city": tf.constant(["Paris", "Paris"]),
         "query_interests": tf.constant([["a", "b", ""], ["a", "b", "b"]]),
         "query_bio_length": tf.constant([1.0, 1.0]),
         "query_location": tf.constant([[40.7, -74.0], [40.7, -74.0]])}
  inputs = layer(raw)
  out = core(inputs).numpy()
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
  # Padding does not count: ["a", "b", ""] pools like ["a", "b"], not like ["a", "b", "b"].
  padded = dict(inputs, query_interests=tf.constant([[2, 3, 0], [2, 3, 0]]))
  assert not np.allclose(out[0], out[1])
  np.testing.assert_allclose(core(padded).numpy()[0], out[0], atol=1e-6)


def test_embedding_l2_penalises_the_tables_and_l2_the_kernels():
  # l2 * sum(kernel^2) + embedding_l2 * sum(table^2); the table penalty's gradient is
  # dense (the cost docs/training.md states), the kernel penalty leaves tables sparse.
  inputs = prep.FeaturePreprocessing(SPECS)({
      "query_id": tf.constant(["u1", "u1"]), "query_city": tf.constant(["Rome"] * 2),
      "query_interests": tf.constant([["a", "b", ""], ["c", "", ""]]),
      "query_bio_length": tf.constant([1.0, 2.0]),
      "query_location": tf.constant([[40.7, -74.0]] * 2)})
  for l2, embedding_l2 in ((0.01, 0.0), (0.01, 0.02)):
    core = towers.build_core(SPECS, [8], 6, name="core", l2=l2, embedding_l2=embedding_l2)
    table = core.get_layer("query_id_embedding").embeddings
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(core(inputs)) * 0.0 + tf.add_n(core.losses)
    tables = sum(np.sum(layer.embeddings.numpy() ** 2) for layer in core.layers
                 if isinstance(layer, tf.keras.layers.Embedding) and "bucket" not in layer.name)
    kernel = np.sum(core.get_layer("hidden_0").kernel.numpy() ** 2)
    np.testing.assert_allclose(loss.numpy(), l2 * kernel + embedding_l2 * tables, rtol=1e-5)
    gradient = tape.gradient(loss, table)
    assert isinstance(gradient, tf.IndexedSlices) == (embedding_l2 == 0.0)
    if embedding_l2:
      np.testing.assert_allclose(tf.convert_to_tensor(gradient).numpy(),
                                 2 * embedding_l2 * table.numpy(), rtol=1e-5)


def test_layers_serialise():
  layer = prep.FeaturePreprocessing(SPECS)
  clone = prep.FeaturePreprocessing.from_config(layer.get_config())
  raw = {"query_id": tf.constant(["u1"]), "query_city": tf.constant(["x"]),
         "query_interests": tf.constant([["b"]]), "query_bio_length": tf.constant([3.0]),
         "query_location": tf.constant([[1.0, 2.0]])}
  a, b = layer(raw), clone(raw)
  for key in a:
    np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
  pooling = towers.MaskedPooling.from_config(towers.MaskedPooling("sum").get_config())
  assert pooling.pooling == "sum"
  with pytest.raises(ValueError, match="pooling"):
    towers.MaskedPooling("max")


def _identity_core(name):
  """A core whose embedding is its input, so the loss sees embeddings chosen by the test."""
  vector = tf.keras.Input(shape=(2,), name=f"{name}_vec")
  return tf.keras.Model({f"{name}_vec": vector}, tf.keras.layers.Activation("linear")(vector))


def test_loss_parts_match_a_hand_computation():
  """logQ, accidental hits, pass-only rows and the pairwise term against numpy by hand."""
  tau, pass_weight = 0.5, 0.25
  q = np.array([[1, 0], [0.6, 0.8], [0, 1], [0.8, -0.6]], np.float32)
  c = np.array([[0.8, 0.6], [0, 1], [1, 0], [-0.6, 0.8]], np.float32)
  label = np.array([1, 1, 0, 1])  # row 2 is a pass
  weight = np.array([1.0, 2.0, 1.5, 0.5], np.float32)
  key = np.array([7, 8, 9, 7])  # rows 0 and 3 swiped the same candidate
  p = np.array([0.5, 0.1, 0.2, 0.5], np.float32)
  model = two_tower.TwoTowerModel(_identity_core("query"), _identity_core("candidate"),
                                  temperature=tau, sampling="static",
                                  pass_loss_weight=pass_weight)
  batch = {"query_vec": q, "candidate_vec": c, "label": label, "weight": weight,
           "candidate_key": key, "candidate_sampling_probability": p}
  parts = {k: float(v) for k, v in model.loss_parts(
      {k: tf.constant(v) for k, v in batch.items()}).items()}

  # Softmax over in-batch candidates: logits q_i.c_j / tau - log p_j; column j != i with the
  # same key as i is an accidental hit and leaves row i; only likes are rows.
  logits = (q @ c.T) / tau - np.log(p)[None, :]
  hit = (key[:, None] == key[None, :]) & ~np.eye(4, dtype=bool)
  ce = np.array([np.log(np.exp(logits[i][~hit[i]]).sum()) - logits[i, i] for i in range(4)])
  assert hit[0, 3] and hit[3, 0] and hit.sum() == 2
  softmax = (weight * label * ce).sum() / (weight * label).sum()
  # Pairwise: BCE of (5 q_i.c_i + 0) against the like/pass label, weighted mean over rows.
  z = 5.0 * (q * c).sum(axis=1)
  bce = np.maximum(z, 0) - z * label + np.log1p(np.exp(-np.abs(z)))
  pairwise = (weight * bce).sum() / weight.sum()
  assert parts["softmax_loss"] == pytest.approx(softmax, rel=1e-5)
  assert parts["pairwise_loss"] == pytest.approx(pairwise, rel=1e-5)
  assert parts["loss"] == pytest.approx(softmax + pass_weight * pairwise, rel=1e-5)

  # The pass row is a column (its candidate is a negative for the likes) but never a row.
  moved_pass_query = dict(batch, query_vec=np.where(label[:, None] == 0, -q, q))
  moved_pass_candidate = dict(batch, candidate_vec=np.where(label[:, None] == 0, -c, c))
  softmax_of = lambda b: float(model.loss_parts(
      {k: tf.constant(v) for k, v in b.items()})["softmax_loss"])
  assert softmax_of(moved_pass_query) == pytest.approx(parts["softmax_loss"], rel=1e-6)
  assert softmax_of(moved_pass_candidate) != pytest.approx(parts["softmax_loss"], rel=1e-3)
def _oov_row_gradients(id_dropout, forced=False):
  """Gradient norm of each side's OOV id row after one training loss on known ids.

  `forced`: the query id of every other example is marked as a user's first swipe."""
  specs = {side: [{"key": f"{side}_id", "type": "id", "num_oov_buckets": 1, "vocab_size": 6,
                   "tokens": [f"u{i}" for i in range(6)], "embedding_dim": 4},
                  {"key": f"{side}_city", "type": "categorical", "num_oov_buckets": 1,
                   "vocab_size": 2, "tokens": ["a", "b"], "embedding_dim": 2}]
           for side in ("query", "candidate")}
  cores = {side: towers.build_core(specs[side], [8], 4, name=f"{side}_core")
           for side in specs}
  dropout = None if id_dropout is None else towers.IdDropout(
      id_dropout, {**towers.id_dropout_buckets(specs["query"]),
                   **towers.id_dropout_buckets(specs["candidate"])}, seed=3,
      forced={"query_id": "query_is_new"} if forced else None)
  model = two_tower.TwoTowerModel(cores["query"], cores["candidate"], id_dropout=dropout)
  model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
  n = 64
  rng = np.random.RandomState(0)
  batch = {"query_id": tf.constant(rng.randint(2, 8, n), tf.int32),  # known ids: 2..7
           "candidate_id": tf.constant(rng.randint(2, 8, n), tf.int32),
           "query_city": tf.constant(rng.randint(2, 4, n), tf.int32),
           "candidate_city": tf.constant(rng.randint(2, 4, n), tf.int32),
           "label": tf.constant(rng.randint(0, 2, n), tf.int32),
           "weight": tf.ones([n]), "candidate_key": tf.range(n, dtype=tf.int64) % 6,
           "query_is_new": tf.range(n) % 2 == 0}
  tables = [cores[side].get_layer(f"{side}_id_embedding").embeddings for side in cores]
  with tf.GradientTape() as tape:
    loss = model.loss_parts(batch, training=True)["loss"]
  grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, tables)]
  # Inference never drops ids: embeddings at training=False ignore the dropout.
  q, _ = model.embed(batch, training=False)
  q_again, _ = model.embed(batch, training=False)
  np.testing.assert_array_equal(q.numpy(), q_again.numpy())
  return [float(np.abs(g[1]).sum()) for g in grads]


def test_id_dropout_trains_the_oov_rows():
  assert _oov_row_gradients(None) == [0.0, 0.0]  # without it the OOV row never learns
  query_grad, candidate_grad = _oov_row_gradients(0.3)
  assert query_grad > 0 and candidate_grad > 0
  # The users' first swipes alone train the query's OOV row, not the candidate's.
  query_grad, candidate_grad = _oov_row_gradients(0.0, forced=True)
  assert query_grad > 0 and candidate_grad == 0.0


def test_id_dropout_replaces_known_ids_only_and_serialises():
  layer = towers.IdDropout(0.5, {"query_id": 3}, seed=1)
  index = tf.constant([0] * 500 + [1] * 500 + list(range(4, 504)), tf.int32)
  out = layer({"query_id": index, "other": index}, tf.constant(7, tf.int64),
              training=True)["query_id"].numpy()
  assert (out[:500] == 0).all() and (out[500:1000] == 1).all()  # padding, OOV kept
  known, dropped = index.numpy()[1000:], out[1000:]
  replaced = dropped != known
  assert 0.4 < replaced.mean() < 0.6
  np.testing.assert_array_equal(dropped[replaced], 1 + known[replaced] % 3)
  again = layer({"query_id": index}, tf.constant(7, tf.int64), training=True)["query_id"]
  np.testing.assert_array_equal(again.numpy(), out)  # same step, same mask (resumable)
  assert (layer({"query_id": index}, tf.constant(7, tf.int64))["query_id"].numpy()
          == index.numpy()).all()
  clone = towers.IdDropout.from_config(layer.get_config())
  assert (clone.rate, clone.num_oov_buckets, clone.seed) == (0.5, {"query_id": 3}, 1)
  with pytest.raises(ValueError, match="rate"):
    towers.IdDropout(1.0, {"query_id": 1})


def test_new_user_swipes_always_replace_the_query_id_and_serialise():
  layer = towers.IdDropout(0.0, {"query_id": 3, "candidate_id": 3}, seed=1,
                           forced={"query_id": "query_is_new"})
  index = tf.constant(list(range(4, 14)), tf.int32)
  is_new = tf.constant([True] * 4 + [False] * 6)
  out = layer({"query_id": index, "candidate_id": index, "query_is_new": is_new},
              tf.constant(2, tf.int64), training=True)
  known = index.numpy()
  np.testing.assert_array_equal(out["query_id"].numpy(),  # the first 4 rows: OOV, always
                                np.r_[1 + known[:4] % 3, known[4:]])
  np.testing.assert_array_equal(out["candidate_id"].numpy(), known)  # rate 0: not forced
  assert (layer({"query_id": index, "query_is_new": is_new}, tf.constant(2, tf.int64))
          ["query_id"].numpy() == known).all()  # inference: identity
  clone = towers.IdDropout.from_config(layer.get_config())
  assert clone.forced == {"query_id": "query_is_new"}


def test_first_swipes_mark_each_querys_earliest_interactions():
  rows = np.array([0, 1, 0, 0, 1, 2, 0])
  times = np.array([5, 1, 3, 3, 0, 9, 1])
  # query 0 by time: row 6 (t=1), rows 2 and 3 (t=3, input order), row 0 (t=5)
  np.testing.assert_array_equal(inputs.first_swipes(rows, times, 2),
                                [False, True, True, False, True, True, True])
  np.testing.assert_array_equal(inputs.first_swipes(rows, times, 3),
                                [False, True, True, True, True, True, True])
  assert not inputs.first_swipes(rows, times, 0).any()


def _bias_cores():
  specs = {side: [{"key": f"{side}_id", "type": "id", "num_oov_buckets": 1, "vocab_size": 6,
                   "tokens": [f"u{i}" for i in range(6)], "embedding_dim": 4},
                  {"key": f"{side}_city", "type": "categorical", "num_oov_buckets": 1,
                   "vocab_size": 2, "tokens": ["a", "b"], "embedding_dim": 2}]
           for side in ("query", "candidate")}
  tf.keras.utils.set_random_seed(1)  # a few dead ReLU units would zero a row's unit part
  return {side: towers.build_core(specs[side], [32], 4, name=f"{side}_core", score_bias=side)
          for side in specs}


def _bias_batch(n=64, seed=0):
  rng = np.random.RandomState(seed)
  return {"query_id": tf.constant(rng.randint(2, 8, n), tf.int32),
          "candidate_id": tf.constant(rng.randint(2, 8, n), tf.int32),
          "query_city": tf.constant(rng.randint(2, 4, n), tf.int32),
          "candidate_city": tf.constant(rng.randint(2, 4, n), tf.int32),
          "label": tf.constant(rng.randint(0, 2, n), tf.int32),
          "weight": tf.ones([n]), "candidate_key": tf.range(n, dtype=tf.int64) % 6}


def test_candidate_bias_scores_are_cosine_plus_bias_and_train():
  cores = _bias_cores()
  model = two_tower.TwoTowerModel(cores["query"], cores["candidate"])
  model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
  batch = _bias_batch()
  q, c = (x.numpy() for x in model.embed(batch))
  assert q.shape == c.shape == (64, 5)
  np.testing.assert_array_equal(q[:, 4], 1.0)  # the query's weight on the bias
  np.testing.assert_allclose(np.linalg.norm(q[:, :4], axis=1), 1.0, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(c[:, :4], axis=1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(c[:, 4], 0.0)  # starts as the plain cosine model
  kernel = cores["candidate"].get_layer("candidate_bias").kernel
  for _ in range(3):
    model.train_step(batch)
  assert np.abs(kernel.numpy()).sum() > 0  # both losses reach the bias
  q, c = (x.numpy() for x in model.embed(batch))
  assert np.ptp(c[:, 4]) > 0
  np.testing.assert_allclose((q * c).sum(axis=1),
                             (q[:, :4] * c[:, :4]).sum(axis=1) + c[:, 4], rtol=1e-6)


def test_candidate_bias_cores_serialise():
  custom = {"L2Normalize": towers.L2Normalize, "AppendOne": towers.AppendOne}
  batch = _bias_batch(8, seed=1)
  for core in _bias_cores().values():
    clone = tf.keras.Model.from_config(core.get_config(), custom_objects=custom)
    clone.set_weights([w + 0.1 for w in core.get_weights()])
    core.set_weights(clone.get_weights())
    inputs = towers.core_inputs(core, batch)
    np.testing.assert_array_equal(clone(inputs).numpy(), core(inputs).numpy())
  with pytest.raises(ValueError, match="score_bias"):
    towers.build_core(SPECS, [8], 4, name="core", score_bias="both")
