"""The dataset directory: round trip, time split, atomicity, verification, TFDS."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import hypothesis
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfrs_two_tower import features as features_lib
from tfrs_two_tower.data import dataset_format as fmt
from tfrs_two_tower.data import example_codec
from tfrs_two_tower.data import reader
from tfrs_two_tower.data import writer as writer_lib

T0 = 1_780_000_000


def _profiles():
  return pd.DataFrame({
      "id": ["a", "b", "c", "d"],
      "gender": ["woman", "man", None, "nonbinary"],
      "seeking": ["men", "women", "everyone", "everyone"],
      "age": [25, 31, np.nan, 44],
      "city": ["Zürich", "Boston", "Boston", "Seattle"],
      "latitude": [47.37, 42.36, np.nan, 47.61],
      "longitude": [8.54, -71.06, np.nan, -122.33],
      "interests": [["coffee", "ski touring"], [], "{hiking,\"board games\",coffee}",
                    [f"i{k}" for k in range(12)]],
      "photo_count": [3, 1, 0, 9],
      "verified": [True, False, "true", "f"],
      "bio_length": [120, 0, None, 10],
      "created_at": pd.to_datetime([T0 - 100, T0 - 90, T0 - 80, T0 + 500], unit="s", utc=True),
  })


def _swipes():
  return pd.DataFrame({
      "swiper_id": ["a", "b", "c", "a", "d", "b"],
      "swipee_id": ["b", "a", "a", "c", "a", "d"],
      "action": ["like", "superlike", "pass", "like", "pass", "like"],
      "created_at": [T0 + 1, T0 + 2, T0 + 3, T0 + 1000, T0 + 1001, T0 + 1002],
  })  # unix seconds: the writer is told the unit (`_write`)


def _write(config, path, swipes=None, split_time=T0 + 1000, **kwargs):
  with writer_lib.DatasetWriter(config, path, split_time, _profiles(), _profiles(),
                                num_train_shards=2, num_eval_shards=1, timestamp_unit="s",
                                **kwargs) as w:
    w.add_interactions(_swipes() if swipes is None else swipes, source="swipes.csv")
  return path


def test_round_trip_values_and_time_split(tmp_path, default_config):
  path = _write(default_config, str(tmp_path / "ds"))
  ds = reader.open_dataset(path)
  train = reader.read_interactions(ds, "train")
  evals = reader.read_interactions(ds, "eval")
  assert ds.num_rows("train") == 3 and ds.num_rows("eval") == 3
  assert (train["timestamp"] < T0 + 1000).all() and (evals["timestamp"] >= T0 + 1000).all()
  rows = {(q, c): i for i, (q, c) in enumerate(zip(train["query_id"], train["candidate_id"]))}
  i = rows[("b", "a")]  # b superliked a
  assert train["label"][i] == 1 and train["weight"][i] == 2.0 and train["action"][i] == "superlike"
  assert train["query_gender"][i] == "man" and train["candidate_city"][i] == "Zürich"
  assert list(train["candidate_interests"][i][:3]) == ["coffee", "ski touring", ""]
  assert train["candidate_verified"][i] == 1.0 and train["query_verified"][i] == 0.0
  np.testing.assert_allclose(train["candidate_location"][i], [47.37, 8.54], rtol=1e-6)
  j = rows[("c", "a")]  # c has missing gender/age/location, Postgres-array interests, "true"
  assert train["query_gender"][j] == "" and math.isnan(train["query_age"][j])
  assert np.isnan(train["query_location"][j]).all()
  assert list(train["query_interests"][j][:4]) == ["hiking", "board games", "coffee", ""]
  assert train["query_verified"][j] == 1.0 and train["label"][j] == 0
  k = {(q, c): i for i, (q, c) in enumerate(zip(evals["query_id"], evals["candidate_id"]))}
  # d has 12 interests: truncated to max_length=8 by the reader.
  assert list(evals["query_interests"][k[("d", "a")]]) == [f"i{n}" for n in range(8)]


def test_vocabularies_and_counts_come_from_train_only(tmp_path, default_config):
  ds = reader.open_dataset(_write(default_config, str(tmp_path / "ds")))
  # d swipes only in eval: not in the query id vocabulary; a is counted twice in train.
  assert ds.vocabulary("query_id") == ["a", "b", "c"]  # count desc, then token
  counts = ds.vocabulary_counts("candidate_id").set_index("token")["count"].to_dict()
  assert counts == {"a": 2, "b": 1}  # train: a<-b, a<-c, b<-a
  assert ds.vocabulary("candidate_gender") == ["woman", "man"]
  cand = ds.candidate_counts().set_index("candidate_id")
  assert cand.loc["a", "positives"] == 1 and cand.loc["a", "interactions"] == 2
  age = ds.preprocessing["candidate_age"]
  assert age["mean"] == pytest.approx((25 * 2 + 31) / 3)  # weighted by train appearances
  assert ds.stats["entities"]["query_new_in_eval"] == 1
  assert ds.stats["readiness"]["verdict"] == "too_early"


def test_fast_codec_matches_protobuf(default_config):
  record = example_codec.example([
      example_codec.bytes_entry("action", "like".encode()),
      example_codec.int64_entry("label", 1), example_codec.int64_entry("timestamp", T0),
      example_codec.float_entry("weight", 2.5),
  ])
  parsed = tf.train.Example.FromString(record)
  f = parsed.features.feature
  assert f["action"].bytes_list.value == [b"like"] and f["label"].int64_list.value == [1]
  assert f["timestamp"].int64_list.value == [T0] and f["weight"].float_list.value == [2.5]
  assert example_codec.varint(300) == b"\xac\x02"


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.example(0)
@hypothesis.example(-1)
@hypothesis.example(example_codec.INT64_MIN)
@hypothesis.example(example_codec.INT64_MAX)
@hypothesis.example(-86400 * 365 * 30)  # a swipe dated 1940
@hypothesis.given(hypothesis.strategies.integers(example_codec.INT64_MIN,
                                                 example_codec.INT64_MAX))
def test_int64_entries_are_the_protobuf_bytes_over_the_whole_int64_range(value):
  expected = tf.train.Features(feature={"timestamp": tf.train.Feature(
      int64_list=tf.train.Int64List(value=[value]))}).SerializeToString(deterministic=True)
  assert example_codec.int64_entry("timestamp", value) == expected
  parsed = tf.train.Example.FromString(example_codec.example([expected]))
  assert parsed.features.feature["timestamp"].int64_list.value == [value]
  # The vectorised encoder gives the same bytes, alone and among values of every length.
  others = [0, 1, 127, 128, 16384, 1 << 28, T0, 1 << 35, example_codec.INT64_MAX, -1]
  assert example_codec.int64_entries("timestamp", np.array([value] + others, np.int64)) == [
      example_codec.int64_entry("timestamp", v) for v in [value] + others]


def test_int64_entries_outside_int64_are_refused():
  for value in (example_codec.INT64_MAX + 1, example_codec.INT64_MIN - 1):
    with pytest.raises(ValueError, match="timestamp"):
      example_codec.int64_entry("timestamp", value)
  with pytest.raises(ValueError, match="unsigned 64-bit"):
    example_codec.varint(-1)


def test_tfds_builder_loads_splits(tiny_dataset_dir):
  import tensorflow_datasets as tfds
  builder = tfds.builder_from_directory(tiny_dataset_dir)
  ds = reader.open_dataset(tiny_dataset_dir)
  assert builder.info.splits["train"].num_examples == ds.num_rows("train")
  eval_rows = list(reader.tfds_dataset(tiny_dataset_dir, "eval").as_numpy_iterator())
  assert len(eval_rows) == ds.num_rows("eval")
  assert {"query_id", "candidate_interests", "label"} <= set(eval_rows[0])


@pytest.mark.slow
def test_pipeline_is_deterministic_and_filters_labels(tiny_dataset_dir):
  ds = reader.open_dataset(tiny_dataset_dir)

  def ids():
    batches = reader.interactions_dataset(ds, "train", 256, seed=3, deterministic=True,
                                          labels=[1])
    return [x for b in batches.as_numpy_iterator() for x in b["candidate_id"]], batches
  first, batches = ids()
  second, _ = ids()
  assert first == second
  assert len(first) == ds.stats["labels"]["train"]["positive"]
  assert all((b["label"] == 1).all() for b in batches.take(3).as_numpy_iterator())


@pytest.mark.parametrize("damage,message", [
    ("delete_manifest", "manifest.json: missing"),
    ("corrupt_shard", "interactions-train.tfrecord-00001-of-00003: sha256 does not match"),
    ("truncate_shard", "interactions-eval.tfrecord-00000-of-00002: size"),
    ("missing_vocab", "vocab/query_city.tsv: listed in the manifest but missing"),
    ("future_version", "format_version 99 is not supported"),
    ("version_1", "format_version 1 has no validation split.*export the dataset again"),
])
def test_damaged_dataset_is_refused_naming_the_file(dataset_copy, damage, message):
  if damage == "delete_manifest":
    os.remove(os.path.join(dataset_copy, fmt.MANIFEST))
  elif damage == "corrupt_shard":
    path = os.path.join(dataset_copy, fmt.shard_name("train", 1, 3))
    with open(path, "r+b") as f:
      f.seek(100)
      byte = f.read(1)
      f.seek(100)
      f.write(bytes([byte[0] ^ 0xFF]))
  elif damage == "truncate_shard":
    path = os.path.join(dataset_copy, fmt.shard_name("eval", 0, 2))
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  elif damage == "missing_vocab":
    os.remove(os.path.join(dataset_copy, "vocab", "query_city.tsv"))
  elif damage in ("future_version", "version_1"):
    manifest = json.load(open(os.path.join(dataset_copy, fmt.MANIFEST)))
    manifest["format_version"] = 99 if damage == "future_version" else 1
    json.dump(manifest, open(os.path.join(dataset_copy, fmt.MANIFEST), "w"))
  with pytest.raises(reader.DatasetFormatError, match=message.replace("/", r"[/\\]")):
    reader.open_dataset(dataset_copy)


def test_mismatched_config_is_refused(tiny_dataset_dir):
  ds = reader.open_dataset(tiny_dataset_dir)
  with pytest.raises(reader.DatasetFormatError, match="do not belong together"):
    reader.check_config_matches(ds, "0" * 64, "run dir /x")


def test_exception_mid_write_leaves_nothing(tmp_path, default_config):
  path = str(tmp_path / "ds")
  with pytest.raises(RuntimeError):
    with writer_lib.DatasetWriter(default_config, path, T0 + 1000, _profiles(), _profiles(),
                                  timestamp_unit="s") as w:
      w.add_interactions(_swipes())
      raise RuntimeError("disk full")
  assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_sigkill_mid_write_leaves_no_complete_looking_directory(tmp_path, tiny_world_dir):
  out = str(tmp_path / "ds")
  script = textwrap.dedent(f"""
      import os, signal
      import tfrs_two_tower
      from tfrs_two_tower import config
      from tfrs_two_tower.data import synthetic, writer
      world = synthetic.World.load({tiny_world_dir!r})
      w = writer.DatasetWriter(config.load_config(), {out!r}, 1767571300 + 20 * 86400,
                               world.profiles, world.profiles)
      w.__enter__()
      w.add_interactions(world.swipes.iloc[:2000])
      os.kill(os.getpid(), signal.SIGKILL)
  """)
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert not os.path.exists(out)
  leftovers = os.listdir(tmp_path)
  assert leftovers and all(name.startswith(".ds.tmp-") for name in leftovers)
  with pytest.raises(reader.DatasetFormatError, match="no such dataset"):
    reader.open_dataset(out)


def test_overwrite_replaces_atomically(tmp_path, default_config):
  path = _write(default_config, str(tmp_path / "ds"))
  with pytest.raises(FileExistsError, match="--overwrite"):
    _write(default_config, path)
  _write(default_config, path, swipes=_swipes().iloc[:4], overwrite=True)
  assert reader.open_dataset(path).num_rows("eval") == 1


@pytest.mark.parametrize("mutate,kwargs,message", [
    (lambda s: s.drop(columns=["action"]), {}, "swipes.csv: missing column 'action' "
     r"\(config interactions.action_column\)"),
    (lambda s: s.assign(swipee_id=[None] + list(s.swipee_id[1:])), {},
     "column 'swipee_id' row 0: NULL in a required column"),
    (lambda s: s.assign(action=["like", "wink", "pass", "wink", "pass", "like"]), {},
     "unknown action values 'wink' x2"),
    (lambda s: s.assign(swipee_id=["b", "zz", "a", "c", "a", "d"]), {},
     "column 'swipee_id' row 1: 'zz' is not in the candidate entity table"),
    (lambda s: s.assign(created_at=["2026-05-01", "yesterday", "x", "y", "z", "w"]), {},
     "column 'created_at'"),
    (lambda s: s.iloc[:0], {}, "no interactions were written"),
])
def test_bad_interactions_fail_with_clear_errors(tmp_path, default_config, mutate, kwargs,
                                                 message):
  path = str(tmp_path / "ds")
  with pytest.raises(writer_lib.DataError, match=message):
    _write(default_config, path, swipes=mutate(_swipes()), **kwargs)
  assert not os.path.exists(path)


def test_drop_policies_count_what_they_drop(tmp_path, default_config):
  swipes = _swipes().assign(action=["like", "wink", "pass", "like", "pass", "like"],
                            swipee_id=["b", "a", "zz", "c", "a", "d"])
  path = _write(default_config, str(tmp_path / "ds"), swipes=swipes, unknown_actions="drop",
                missing_entities="drop")
  stats = reader.open_dataset(path).stats
  assert stats["dropped"] == {"unknown_actions": {"wink": 1}, "missing_entities": 1}
  assert stats["rows"]["train"] + stats["rows"]["eval"] == 4


def test_duplicate_entity_ids_refused(tmp_path, default_config):
  profiles = pd.concat([_profiles(), _profiles().iloc[:1]])
  with pytest.raises(writer_lib.DataError, match="id 'a' appears more than once"):
    writer_lib.DatasetWriter(default_config, str(tmp_path / "ds"), T0, profiles, _profiles())


def test_bad_numeric_value_names_column_and_row(tmp_path, default_config):
  profiles = _profiles().assign(photo_count=[1, "three", 2, 3])
  with pytest.raises(writer_lib.DataError, match="column 'photo_count' row 1: not a number"):
    writer_lib.DatasetWriter(default_config, str(tmp_path / "ds"), T0, profiles, _profiles())


def test_geo_cells_agree_between_numpy_and_tensorflow():
  rng = np.random.default_rng(0)
  lat = np.concatenate([rng.uniform(-90, 90, 5000), [0.0, -0.0, 89.999, np.nan, 45.0]])
  lon = np.concatenate([rng.uniform(-180, 180, 5000), [0.0, 179.99, -180.0, 1.0, np.nan]])
  loc = np.stack([lat, lon], 1).astype(np.float32)
  for cell in (0.5, 1.0, 0.1):
    expected = features_lib.geo_cell_tokens(loc[:, 0], loc[:, 1], cell)
    got = features_lib.geo_cell_tokens_tf(tf.constant(loc), cell).numpy().astype(str)
    assert list(got) == list(expected)


def test_text_booleans_and_numbers_from_csv_string_columns():
  values = pd.Series(["t", "f", "TRUE", " false ", "2.5", "", None], dtype="str")
  got = features_lib._as_float(values, "profiles.csv", "verified")
  np.testing.assert_array_equal(got[:5], [1, 0, 1, 0, 2.5])
  assert np.isnan(got[5:]).all()


def test_validation_split_is_the_last_part_of_train_and_disjoint(tiny_dataset_dir):
  ds = reader.open_dataset(tiny_dataset_dir)
  splits = {s: reader.read_interactions(ds, s, keys=["query_id", "candidate_id", "timestamp"])
            for s in fmt.SPLITS}
  v_time, s_time = ds.manifest["validation_time"], ds.manifest["split_time"]
  assert v_time < s_time
  assert splits["train"]["timestamp"].max() < v_time <= splits["validation"]["timestamp"].min()
  assert splits["validation"]["timestamp"].max() < s_time <= splits["eval"]["timestamp"].min()
  pairs = {s: set(zip(v["query_id"], v["candidate_id"])) for s, v in splits.items()}
  assert not pairs["train"] & pairs["validation"] and not pairs["validation"] & pairs["eval"]
  # The default: the last 10 % of the pre-eval swipes (quantile, ties go to validation).
  n_train, n_val = len(splits["train"]["timestamp"]), len(splits["validation"]["timestamp"])
  assert 0.09 <= n_val / (n_train + n_val) <= 0.11
  for where in (ds.manifest["rows"], ds.stats["rows"]):
    assert where["validation"] == n_val
  assert ds.stats["labels"]["validation"]["positive"] > 0
  assert ds.stats["entities"]["query_with_validation_likes"] > 0
  info = json.load(open(os.path.join(tiny_dataset_dir, "dataset_info.json")))
  assert {s["name"]: sum(int(n) for n in s["shardLengths"]) for s in info["splits"]}[
      "validation"] == n_val


def test_validation_vocabulary_comes_from_train_only(tmp_path, default_config):
  # Swipes of "d" lie only in the validation window: d is not in the id vocabulary.
  path = _write(default_config, str(tmp_path / "ds"), validation_time=T0 + 500,
                swipes=pd.DataFrame({"swiper_id": ["a", "b", "d", "a"],
                                     "swipee_id": ["b", "a", "a", "c"],
                                     "action": ["like", "like", "like", "pass"],
                                     "created_at": pd.to_datetime(
                                         [T0 + 1, T0 + 2, T0 + 600, T0 + 1000], unit="s",
                                         utc=True)}))
  ds = reader.open_dataset(path)
  assert ds.manifest["rows"] == {"train": 2, "validation": 1, "eval": 1}
  assert "d" not in ds.vocabulary("query_id")


def test_empty_validation_window_is_refused(tmp_path, default_config):
  with pytest.raises(writer_lib.DataError, match="validation split would be empty.*"
                     "--validation_fraction"):
    _write(default_config, str(tmp_path / "ds"), validation_time=T0 + 900)
  assert not os.path.exists(tmp_path / "ds")
