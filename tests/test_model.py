"""The exact preprocessing rules, the tower core and the two-tower loss."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfrs_two_tower.model import preprocessing as prep
from tfrs_two_tower.model import towers

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
