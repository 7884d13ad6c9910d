"""Swipe history of the query tower: leak-free, truncated by recency, in every record."""
import numpy as np
import pandas as pd
import pytest

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.data import history as history_lib
from tfrs_two_tower.data import reader
from tfrs_two_tower.data import writer as writer_lib

T0 = 1_780_000_000


def history_config(max_length=3, lists=("liked", "passed"), **options):
  raw = config_lib.load_config().raw
  raw["history"] = {"max_length": max_length, "lists": list(lists), **options}
  raw["interactions"]["timestamp_unit"] = "s"  # the tests' swipes carry unix seconds
  return config_lib.parse_config(raw)


def test_last_before_excludes_ties_and_later_and_keeps_the_most_recent():
  # user 0: items 10@1, 11@2, 12@2, 13@3, 14@5; user 1: item 20@2
  log = history_lib.SwipeLog(users=[0, 0, 0, 0, 0, 1], items=[14, 10, 12, 11, 13, 20],
                             times=[5, 1, 2, 2, 3, 2])
  got = log.last_before(users=[0, 0, 0, 0, 1, 1, 2], times=[1, 2, 3, 6, 2, 3, 9], n=3)
  np.testing.assert_array_equal(got, [
      [-1, -1, -1],     # nothing before t=1
      [10, -1, -1],     # the ties at t=2 are excluded
      [12, 11, 10],     # same-time events in item order, most recent first
      [14, 13, 12],     # truncated to the last 3
      [-1, -1, -1],
      [20, -1, -1],
      [-1, -1, -1]])    # a user without events


def _profiles(n=6):
  return pd.DataFrame({
      "id": [f"u{i}" for i in range(n)], "gender": ["woman", "man"] * (n // 2),
      "seeking": ["everyone"] * n, "age": [30.0] * n, "city": ["Boston"] * n,
      "latitude": [42.0] * n, "longitude": [-71.0] * n, "interests": [[]] * n,
      "photo_count": [1] * n, "verified": [1] * n, "bio_length": [10] * n,
      "created_at": pd.to_datetime([T0 - 100] * n, unit="s", utc=True)})


def test_every_record_sees_only_strictly_earlier_swipes(tmp_path):
  config = history_config(max_length=3)
  rng = np.random.RandomState(0)
  n = 400
  swipes = pd.DataFrame({
      "swiper_id": [f"u{i}" for i in rng.randint(0, 30, n)],
      "swipee_id": [f"u{i}" for i in rng.randint(0, 30, n)],
      "action": rng.choice(["like", "superlike", "pass"], n),
      "created_at": T0 + rng.randint(0, 60, n)})  # many ties at the same second
  swipes = swipes.drop_duplicates(["swiper_id", "swipee_id"])
  path = str(tmp_path / "ds")
  # Chunks out of time order: the writer must not rely on the source's order.
  with writer_lib.DatasetWriter(config, path, T0 + 45, _profiles(30), _profiles(30),
                                num_train_shards=2, num_eval_shards=1) as w:
    shuffled = swipes.sample(frac=1, random_state=1)
    for start in range(0, len(shuffled), 100):
      w.add_interactions(shuffled.iloc[start:start + 100], source="swipes.csv")
  ds = reader.open_dataset(path)
  seen = 0
  for split in ("train", "eval"):
    rows = reader.read_interactions(ds, split)
    for i in range(len(rows["label"])):
      mine = swipes[(swipes.swiper_id == rows["query_id"][i])
                    & (swipes.created_at < rows["timestamp"][i])]
      for name, liked in (("liked", True), ("passed", False)):
        earlier = mine[(mine.action != "pass") == liked].assign(
            row=lambda f: f.swipee_id.str[1:].astype(int))  # ties: candidate table row
        earlier = earlier.sort_values(["created_at", "row"], ascending=False)
        expected = earlier.swipee_id.tolist()[:3]
        got = [v for v in rows[f"query_history_{name}"][i] if v]
        assert got == expected, (split, i, name)
        seen += len(got)
  assert seen > 300  # the histories are not trivially empty


def test_histories_at_the_ranking_time_and_unknown_users():
  config = history_config(max_length=2, lists=("liked",))
  interactions = {"query_id": np.array(["a", "a", "a", "b"], dtype=object),
                  "candidate_id": np.array(["x", "y", "z", "x"], dtype=object),
                  "label": np.array([1, 1, 1, 0]), "timestamp": np.array([1, 2, 3, 4])}
  got = history_lib.histories_at(config.history, interactions, ["a", "b", "new"])
  assert got == {"query_history_liked": [["z", "y"], [], []]}
  got = history_lib.histories_at(config.history, interactions, ["a"], time=3)
  assert got == {"query_history_liked": [["y", "x"]]}


def test_preprocessing_lists_the_history_with_the_candidate_vocabulary(tmp_path):
  config = history_config(max_length=4, lists=("passed",))
  path = str(tmp_path / "ds")
  swipes = pd.DataFrame({"swiper_id": ["u0", "u1"], "swipee_id": ["u1", "u0"],
                         "action": ["pass", "like"], "created_at": [T0, T0 + 10]})
  with writer_lib.DatasetWriter(config, path, T0 + 5, _profiles(), _profiles()) as w:
    w.add_interactions(swipes, source="swipes.csv")
  spec = reader.open_dataset(path).preprocessing
  entry = spec["query_history_passed"]
  assert entry["vocabulary"] == spec["candidate_id"]["vocabulary"]
  assert (entry["type"], entry["max_length"], entry["vocab_size"]) == ("history", 4, 1)
  assert "query_history_liked" not in spec


HISTORY_SPECS = [
    {"key": "query_id", "type": "id", "num_oov_buckets": 1, "vocab_size": 2,
     "tokens": ["u1", "u2"], "embedding_dim": 4},
    {"key": "query_history_liked", "type": "history", "num_oov_buckets": 1, "vocab_size": 3,
     "tokens": ["c1", "c2", "c3"], "max_length": 3, "embedding_dim": 4},
]


def test_history_inputs_index_the_candidate_vocabulary_and_are_masked():
  import tensorflow as tf
  from tfrs_two_tower.model import preprocessing as prep
  from tfrs_two_tower.model import towers
  layer = prep.FeaturePreprocessing(HISTORY_SPECS)
  raw = {"query_id": tf.constant(["u1", "u1", "u1"]),
         "query_history_liked": tf.constant([["c3", "new", "c1", "c2"], ["c1", "", "", ""],
                                             ["", "", "", ""]])}
  out = layer(raw)
  # Truncated to N = 3 (the most recent first), unknown ids -> OOV 1, "" -> 0 (masked).
  assert out["query_history_liked"].numpy().tolist() == [[4, 1, 2], [2, 0, 0], [0, 0, 0]]
  assert set(layer(raw, history=False)) == {"query_id"}
  assert set(layer.history_inputs({"query_history_liked": raw["query_history_liked"]})) == {
      "query_history_liked"}
  core = towers.build_core(HISTORY_SPECS, [8], 6, name="core")
  embedded = core(out).numpy()
  assert not np.allclose(embedded[1], embedded[2])  # the history moves the query
  padded = dict(out, query_history_liked=tf.constant([[2, 0, 0]] * 3))
  np.testing.assert_allclose(core(padded).numpy()[1], embedded[1], atol=1e-6)
  shared = tf.keras.layers.Embedding(5, 4, name="candidate_id_embedding")
  core = towers.build_core(HISTORY_SPECS, [8], 6, name="core",
                           shared_embeddings={"query_history_liked": shared})
  core(out)
  assert shared in core.layers



def test_recency_decay_weighs_recent_ids_more_and_dropout_only_trains():
  import tensorflow as tf
  from tfrs_two_tower.model import towers
  table = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)  # row i = [2i, 2i + 1]
  indices = tf.constant([[4, 2, 0], [3, 0, 0], [0, 0, 0]])
  embedded = tf.gather(table, indices)
  got = towers.MaskedPooling("mean", recency_decay=0.5)(embedded, indices).numpy()
  np.testing.assert_allclose(got, [(table[4] + 0.5 * table[2]) / 1.5, table[3], [0, 0]],
                             rtol=1e-6)
  plain = towers.MaskedPooling("mean")(embedded, indices).numpy()
  np.testing.assert_allclose(plain[0], (table[4] + table[2]) / 2)
  dropout = towers.HistoryDropout(0.5)
  ids = tf.constant(np.arange(1, 2001, dtype=np.int32).reshape(4, 500))
  assert (dropout(ids).numpy() == ids.numpy()).all()  # inference: the identity
  dropped = dropout(ids, training=True).numpy()
  assert set(np.unique(dropped[dropped != ids.numpy()])) == {0}
  assert 0.4 < (dropped == 0).mean() < 0.6
  specs = [dict(s, recency_decay=0.5, dropout=0.3) for s in HISTORY_SPECS]
  core = towers.build_core(specs, [8], 6, name="core")
  assert {"query_history_liked_dropout", "query_history_liked_pooling"} <= {
      layer.name for layer in core.layers}


@pytest.mark.slow
def test_history_trains_and_serves_through_the_savedmodels(tmp_path, tiny_world):
  import tensorflow as tf
  from tfrs_two_tower.data import synthetic
  from tfrs_two_tower.model import run_dir as run_lib
  from tfrs_two_tower.model import train_options
  from tfrs_two_tower.stages import train_stage
  config = history_config(max_length=5)
  ds, run_path = str(tmp_path / "ds"), str(tmp_path / "run")
  synthetic.write_world_dataset(tiny_world, config, ds, num_train_shards=2, num_eval_shards=1)
  train_stage.run(ds, run_path, train_options.TrainOptions(
      epochs=1, steps_per_epoch=4, batch_size=128, layer_sizes=[16], embedding_dim=8),
      log=lambda *a: None)
  run = run_lib.open_run(run_path)
  raw_specs = run.model("query").signatures["serving_default"].structured_input_signature[1]
  assert raw_specs["query_history_liked"].shape.as_list() == [None, None]
  core_specs = run.core("query").signatures["serving_default"].structured_input_signature[1]
  assert core_specs["query_history_passed"].shape.as_list() == [None, 5]
  assert core_specs["query_history_passed"].dtype == tf.int32
  evals = reader.read_interactions(reader.open_dataset(ds), "eval")
  rows = np.flatnonzero([len([v for v in h if v]) >= 2 for h in evals["query_history_liked"]])
  features = {k: v[rows[:8]] for k, v in evals.items() if k.startswith("query_")}
  with_history = run.embed("query", features)
  empty = dict(features, query_history_liked=[[]] * len(rows[:8]),
               query_history_passed=[[]] * len(rows[:8]))
  assert not np.allclose(with_history, run.embed("query", empty), atol=1e-4)


def test_features_json_builds_history_inputs_like_the_savedmodel():
  import tensorflow as tf
  from tfrs_two_tower.coreml import features_json
  from tfrs_two_tower.model import preprocessing as prep
  specs = [dict(s, name=s["key"].rsplit("_", 1)[-1]) for s in HISTORY_SPECS]
  tower = features_json.build({"query": specs}, run_id="r", config_hash="h", embedding_dim=6,
                              temperature=0.05)["towers"]["query"]
  history = next(f for f in tower["features"] if f["type"] == "history")
  assert (history["list"], history["label"], history["max_length"]) == ("liked", 1, 3)
  assert {"name": "query_history_liked", "dtype": "int32", "shape": [-1, 3],
          "feature": "query_history_liked", "role": "index"} in tower["inputs"]
  raw = {"query_id": ["u2", "x"], "query_history_liked": [["c3", "new", "c1", "c2"], []]}
  got = features_json.preprocess_with_features_json(tower, raw)
  want = prep.FeaturePreprocessing(specs)({
      "query_id": tf.constant(raw["query_id"]),
      "query_history_liked": tf.constant([["c3", "new", "c1", "c2"], ["", "", "", ""]])})
  for key in ("query_id", "query_history_liked"):
    np.testing.assert_array_equal(got[key], want[key].numpy())


def test_the_like_residual_reads_each_swipes_history(tmp_path, tiny_world):
  """history.embed_in_core false: the core takes the lists but its layers do not read
  them; the like residual's swipes carry each swipe's lists, as the index holds them."""
  import tensorflow as tf
  from tfrs_two_tower.data import synthetic
  from tfrs_two_tower.model import epoch_eval, inputs, train_options, training
  from tfrs_two_tower.model import towers
  from conftest import TINY_TRAINING
  ds = str(tmp_path / "ds")
  synthetic.write_world_dataset(tiny_world, history_config(max_length=4, embed_in_core=False),
                                ds, num_train_shards=1, num_eval_shards=1)
  dataset = reader.open_dataset(ds)
  options = train_options.TrainOptions(**TINY_TRAINING)
  specs, cache = training.feature_specs(dataset), {}
  _, train_index = training.training_inputs(dataset, specs, options, cache)
  validation_index = inputs.InteractionIndex(dataset, epoch_eval.SPLIT, *cache["features"])
  model = training.build_model(options, specs)
  core = model.query_core
  assert {"query_history_liked", "query_history_passed"} <= set(core.input_names)
  # The core's output does not move with the lists, and its layers start as a core's
  # without a history (the same seeded values): the towers train as without one.
  batch = train_index.batch(tf.range(64))
  emptied = {**batch, **{key: tf.zeros_like(batch[key])
                         for key in ("query_history_liked", "query_history_passed")}}
  assert (batch["query_history_liked"].numpy() > 0).any()
  np.testing.assert_array_equal(core(towers.core_inputs(core, batch)).numpy(),
                                core(towers.core_inputs(core, emptied)).numpy())
  plain_specs = {**specs, "query": [s for s in specs["query"] if s["type"] != "history"]}
  tf.keras.utils.set_random_seed(options.seed)
  plain = training.build_model(options, plain_specs).query_core
  tf.keras.utils.set_random_seed(options.seed)
  again = training.build_model(options, specs).query_core
  weighted = [layer for layer in plain.layers if layer.weights]
  assert {"hidden_0", "projection", "query_id_embedding"} <= {layer.name for layer in weighted}
  for layer in weighted:
    for mine, theirs in zip(layer.get_weights(), again.get_layer(layer.name).get_weights()):
      np.testing.assert_array_equal(mine, theirs)
  id_specs = {side: next(s for s in specs[side] if s["type"] == "id")
              for side in ("query", "candidate")}
  first_known = {side: 1 + spec["num_oov_buckets"] for side, spec in id_specs.items()}
  train, validation = training.residual_swipes(
      [train_index, validation_index], core, model.candidate_core,
      {side: spec["key"] for side, spec in id_specs.items()}, first_known)
  assert validation.history["history_liked"].shape[0] == validation.query.size
  tensors = train_index.tensors
  entity_rows = train_index.candidate.values[id_specs["candidate"]["key"]].numpy().reshape(-1)
  keep = ~tensors[inputs.NEW_USER_COLUMN].numpy() & (
      entity_rows[tensors["candidate_row"].numpy()] >= first_known["candidate"])
  assert keep.sum() == train.query.size  # (the tiny world's train users are all known)
  for name in ("history_liked", "history_passed"):
    lists = tensors["query_" + name].numpy()[keep]
    assert lists.shape[1] == 4 and (lists > 0).any()
    hot = train.history[name]
    # A swipe's own candidate is never in its lists (they end before it), and each row
    # holds its list's ids, counted over sqrt(their number).
    assert hot[np.arange(train.query.size), train.candidate].max() == 0
    for i in np.flatnonzero((lists > 0).sum(1) >= 2)[:50]:
      ids = lists[i][lists[i] > 0]
      row = hot[i].toarray().ravel()
      assert set(np.flatnonzero(row)) == set(ids)
      np.testing.assert_allclose(row[ids], np.bincount(ids)[ids] / np.sqrt(ids.size))
  # The cosines equal the towers' own on each swipe (one embedding per user here).
  index_batch = train_index.batch(tf.constant(np.flatnonzero(keep)[:32]))
  q = core(towers.core_inputs(core, index_batch)).numpy()
  c = model.candidate_core(towers.core_inputs(model.candidate_core, index_batch)).numpy()
  np.testing.assert_allclose(train.cosine[:32], np.einsum("nd,nd->n", q, c), atol=1e-5)
