"""Core ML building blocks without a trained run: OOV hashing, preprocessing rules, fp16 tail,
the parity overlap."""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfrs_two_tower.coreml import convert
from tfrs_two_tower.coreml import features_json
from tfrs_two_tower.coreml import fingerprint
from tfrs_two_tower.coreml import mil_emulator
from tfrs_two_tower.coreml import parity


@settings(max_examples=15, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=80), st.text(alphabet="ab", max_size=200)),
                min_size=1, max_size=40))
def test_fingerprint64_matches_tensorflow(tokens):
  import tensorflow as tf
  for buckets in (7, 2**63 - 1):
    want = tf.strings.to_hash_bucket_fast(tokens, buckets).numpy().tolist()
    assert [fingerprint.hash_bucket(t, buckets) for t in tokens] == want


def _spec(key, ftype, tokens, k, **extra):
  return {"key": key, "type": ftype, "tokens": tokens, "vocab_size": len(tokens),
          "num_oov_buckets": k, **extra}


def test_hashed_oov_buckets_and_numerics_match_tf_preprocessing():
  """num_oov_buckets > 1 (FarmHash buckets), mean pooling cut/pad, numerics, geo."""
  from tfrs_two_tower.model import preprocessing as prep
  specs = [
      _spec("query_id", "id", ["u1", "u2", "u3"], 5),
      _spec("query_city", "categorical", ["Berlin", "Zürich"], 1),
      _spec("query_interests", "multi_categorical", ["hiking", "cats"], 3, max_length=4),
      _spec("query_location", "geo", ["105:206"], 2, cell_degrees=0.5),
      {"key": "query_age", "type": "numeric", "transform": "identity", "mean": 30.5,
       "std": 6.25, "fill_transformed": 30.5, "bucket_boundaries": [21.0, 30.0, 40.0]},
      {"key": "query_bio_length", "type": "numeric", "transform": "log1p", "mean": 3.3,
       "std": 1.9, "fill_transformed": 0.0, "bucket_boundaries": []},
  ]
  payload = features_json.build({"query": specs}, run_id="r", config_hash="h", embedding_dim=8,
                                temperature=0.05)
  tower = payload["towers"]["query"]
  assert [i["name"] for i in tower["inputs"]] == [
      "query_id", "query_city", "query_interests", "query_location", "query_location_xyz",
      "query_age", "query_age_missing", "query_age_bucket", "query_bio_length",
      "query_bio_length_missing"]
  ids = ["u1", "u3", "", "new-user", "Ü", "🙂", "u4", "x" * 100]
  raw = {
      "query_id": np.array(ids, dtype=object),
      "query_city": np.array(["Berlin", "", "Zürich", "zürich", "Paris", "Berlin", "東京", " "],
                             dtype=object),
      "query_interests": np.array([["hiking", "cats", "x", "y", "cats", "z"]] * 4 +
                                  [["", "", "", "", "", ""], ["🙂", "hiking", "", "", "", ""],
                                   ["a", "b", "c", "d", "e", "f"], ["cats"] + [""] * 5],
                                  dtype=object),
      "query_location": np.array([[52.5, 13.4], [np.nan, 1.0], [-33.9, 151.2], [0.0, 0.0],
                                  [89.99, 179.99], [-90.0, -180.0], [52.5, np.nan], [1, 2]],
                                 np.float32),
      "query_age": np.array([18, 21, 29.99, 30, np.nan, 65, 40, 22], np.float32),
      "query_bio_length": np.array([0, 1, 1000, np.nan, -5, 3, 17, 0.5], np.float32),
  }
  ours = features_json.preprocess_with_features_json(tower, raw)
  theirs = {k: v.numpy() for k, v in prep.FeaturePreprocessing(specs)(raw).items()}
  assert set(ours) == set(theirs)
  for name in ours:
    assert ours[name].dtype == theirs[name].dtype and ours[name].shape == theirs[name].shape
    np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=1e-6, err_msg=name)
  assert ours["query_id"][2] == 0 and 1 <= ours["query_id"][3] <= 5  # missing; hashed OOV
  assert ours["query_interests"].shape == (8, 4)


@pytest.fixture(scope="module")
def overflowing_core(tmp_path_factory):
  """A core whose pre-normalisation activations have sum(h^2) far above fp16's 65504."""
  import tensorflow as tf
  from tfrs_two_tower.model import towers
  x = tf.keras.Input([3], dtype=tf.float32, name="query_x")
  h = tf.keras.layers.Dense(16, kernel_initializer=tf.keras.initializers.Constant(10.0),
                            bias_initializer="zeros")(x)
  core = tf.keras.Model({"query_x": x}, towers.L2Normalize()(h))
  module = tf.Module()
  module.core = core
  fn = tf.function(lambda features: {"embedding": core(features)})
  path = str(tmp_path_factory.mktemp("fp16") / "core")
  tf.saved_model.save(module, path, signatures={"serving_default": fn.get_concrete_function(
      {"query_x": tf.TensorSpec([None, 3], tf.float32, name="query_x")})})
  return path


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_float16_keeps_the_l2_tail_in_float32(overflowing_core, tmp_path):
  import coremltools as ct
  inputs = convert.core_inputs(overflowing_core)
  feeds = {"query_x": np.full((4, 3), 100.0, np.float32)}  # h = 3000 per unit: fine in fp16
  want = np.full((4, 16), 0.25, np.float32)  # 16 equal components, unit norm

  ours = convert.convert_core(overflowing_core, inputs, precision="float16")
  ours.save(str(tmp_path / "ours.mlpackage"))
  got = mil_emulator.MilProgramEmulator(str(tmp_path / "ours.mlpackage")).predict(feeds)
  np.testing.assert_allclose(got["embedding"], want, atol=1e-3)

  # Control: everything in fp16 (coremltools' default) overflows sum(h^2) -> zeros.
  everything = ct.convert(overflowing_core, source="tensorflow", convert_to="mlprogram",
                          inputs=[ct.TensorType(name="query_x", shape=(4, 3), dtype=np.float32)],
                          compute_precision=ct.precision.FLOAT16,
                          minimum_deployment_target=ct.target.iOS16)
  everything.save(str(tmp_path / "fp16.mlpackage"))
  naive = mil_emulator.MilProgramEmulator(str(tmp_path / "fp16.mlpackage")).predict(feeds)
  assert np.all(np.nan_to_num(np.asarray(list(naive.values())[0], np.float32)) == 0)


def test_emulator_names_missing_inputs(overflowing_core, tmp_path):
  model = convert.convert_core(overflowing_core, convert.core_inputs(overflowing_core))
  path = str(tmp_path / "m.mlpackage")
  model.save(path)
  emulator = mil_emulator.MilProgramEmulator(path)
  assert emulator.input_names == ["query_x"] and emulator.output_names == ["embedding"]
  with pytest.raises(ValueError, match="missing inputs.*query_x"):
    emulator.predict({})
  with pytest.raises(convert.ConversionError, match="precision"):
    convert.convert_core(overflowing_core, [], precision="float64")
  assert os.path.isdir(path)


@pytest.mark.slow
def test_a_history_only_the_like_residual_reads_converts_with_parity(tmp_path):
  """history.embed_in_core false: the core takes the list, only the residual's map Y pools
  it ("sqrtn"); Core ML computes the same [scale q, 1, b_u, e_u + Y h]."""
  import tensorflow as tf
  from tfrs_two_tower.model import towers
  specs = [{"key": "query_id", "type": "id", "num_oov_buckets": 1, "vocab_size": 3,
            "tokens": ["u1", "u2", "u3"], "embedding_dim": 4},
           {"key": "query_history_liked", "type": "history", "num_oov_buckets": 1,
            "vocab_size": 5, "tokens": ["c1", "c2", "c3", "c4", "c5"], "max_length": 4,
            "embedding_dim": 4, "embed_in_core": False}]
  core = towers.build_core(specs, [8], 6, name="query_core")
  rng = np.random.default_rng(0)
  table = rng.normal(size=(5, 2 + 3)).astype(np.float32)  # [1, b_u, e_u] per id row
  history_map = np.concatenate([np.zeros((7, 2)), rng.normal(size=(7, 3))], 1).astype(
      np.float32)
  history_map[0] = 0.0
  extended = towers.with_like_residual(core, "query_id", table, scale=2.0,
                                       feature_tables={"query_history_liked": history_map})

  def saved(model, name):
    module = tf.Module()
    module.core = model
    fn = tf.function(lambda features: {"embedding": model(features)})
    path = str(tmp_path / name)
    tf.saved_model.save(module, path, signatures={"serving_default": fn.get_concrete_function(
        {"query_id": tf.TensorSpec([None], tf.int32, name="query_id"),
         "query_history_liked": tf.TensorSpec([None, 4], tf.int32,
                                              name="query_history_liked")})})
    return path
  feeds = {"query_id": np.array([2, 3, 1, 4], np.int32),
           "query_history_liked": np.array([[3, 5, 0, 0], [6, 6, 2, 1], [0, 0, 0, 0],
                                            [4, 0, 0, 0]], np.int32)}
  # Without a residual that reads it (not fitted, or no list chosen) the core still takes
  # the list, so the app's inputs (features.json) stay the same, and Core ML converts it.
  plain = saved(core, "plain")
  assert {i.name for i in convert.core_inputs(plain)} == {"query_id", "query_history_liked"}
  model = convert.convert_core(plain, convert.core_inputs(plain))
  model.save(str(tmp_path / "plain.mlpackage"))
  got = mil_emulator.MilProgramEmulator(str(tmp_path / "plain.mlpackage")).predict(feeds)
  np.testing.assert_allclose(got["embedding"], core(feeds).numpy(), atol=1e-5)
  path = saved(extended, "core")
  want = extended({k: tf.constant(v) for k, v in feeds.items()}).numpy()
  # The history moves only the residual's columns, by the pooled map rows.
  hot = np.zeros((4, 7))
  for row, ids in enumerate(feeds["query_history_liked"]):
    for i in ids[ids > 0]:
      hot[row, i] += 1
  hot /= np.sqrt(np.maximum(hot.sum(1, keepdims=True), 1))
  np.testing.assert_allclose(want[:, 6:], table[feeds["query_id"]] + hot @ history_map,
                             atol=1e-5)
  model = convert.convert_core(path, convert.core_inputs(path))
  model.save(str(tmp_path / "q.mlpackage"))
  got = mil_emulator.MilProgramEmulator(str(tmp_path / "q.mlpackage")).predict(feeds)
  np.testing.assert_allclose(got["embedding"], want, atol=1e-5)


@pytest.mark.parametrize("block_elements", [parity.SCORE_BLOCK_ELEMENTS, 7 * 200])
def test_top_k_overlap_in_query_blocks_counts_the_shared_top_candidates(block_elements,
                                                                       monkeypatch):
  # Query blocks of 7 rows (block_elements 7 * 200) must give the figures of one block.
  monkeypatch.setattr(parity, "SCORE_BLOCK_ELEMENTS", block_elements)
  rng = np.random.default_rng(3)
  queries, corpus = rng.normal(size=(30, 8)), rng.normal(size=(200, 8))
  scores = queries @ corpus.T
  top10 = np.argsort(-scores, axis=1)[:, :10]
  # The other side zeroes query 4's best candidate: it leaves every top 10 it was in.
  other = corpus.copy()
  assert parity.top_k_overlap(queries, corpus, queries, other)["mean_overlap"] == 1.0
  query = 4
  other[top10[query, 0]] = 0.0  # score 0: below every query's 10th best (all > 0 here)
  assert (np.sort(scores, axis=1)[:, -10] > 0).all()
  figures = parity.top_k_overlap(queries, corpus, queries, other)
  assert figures["queries"] == 30 and figures["corpus"] == 200
  assert figures["min_overlap"] == pytest.approx(0.9)
  # The candidate moved for every query that had it in its top 10.
  had_it = (top10 == top10[query, 0]).any(axis=1)
  assert figures["mean_overlap"] == pytest.approx(1 - 0.1 * had_it.mean())
