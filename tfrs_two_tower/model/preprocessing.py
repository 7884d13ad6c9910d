"""Raw dataset features -> the int32/float32 tensors a tower core consumes.

The rules below are the contract with every consumer that prepares tower inputs
outside TensorFlow (the Core ML `features.json` and the Swift client). They are
exact; all arithmetic is float32.

Inputs are the raw values of one side, keyed by dataset key (see
`features.parse_spec` / `reader.interactions_dataset`): `<key>` strings [B],
padded string lists [B, L], float32 numerics [B] (NaN = missing) and
float32 [B, 2] (latitude, longitude) locations.

Vocabulary index (id, categorical, multi_categorical, geo cell), with
`k = num_oov_buckets` and `tokens` the lines of `vocab/<key>.tsv` in file order:

  index("")          = 0                      padding / missing; masked in pooling
  index(tokens[i])   = 1 + k + i
  index(other token) = 1                                   when k == 1
                     = 1 + Fingerprint64(token) mod k      when k > 1
                       (`tf.strings.to_hash_bucket_fast`, FarmHash Fingerprint64
                       of the UTF-8 bytes, as an unsigned 64-bit integer)

  The embedding table of the feature has `1 + k + vocab_size` rows.

Core inputs per feature type (names are the dataset key plus a suffix):

  id, categorical   `<key>` int32 [B]       index(value)
  multi_categorical `<key>` int32 [B, L]    index of each token; lists are cut or
                                            padded with "" to L = max_length
  numeric           `<key>` float32 [B]     z = (x_t - mean) / std, with
                                              x_t = log1p(max(x, 0)) if transform == "log1p"
                                              x_t = x                if transform == "identity";
                                            a missing x (NaN) gives
                                              z = (fill_transformed - mean) / std
                    `<key>_missing` float32 [B]  1.0 when x is NaN, else 0.0
                    `<key>_bucket`  int32 [B]    only when bucket_boundaries is not empty:
                                            0 when x is missing, else
                                            1 + count(boundary <= x) over the RAW x
                                            (so 1 .. len(boundaries) + 1)
  history           `<key>` int32 [B, N]    index of each candidate id of the query
                                            user's history list (`query_history_liked`,
                                            `query_history_passed`: most recent first,
                                            see `data/history.py`) in the CANDIDATE id
                                            vocabulary; cut or padded with "" to
                                            N = max_length (index 0 = padding: the mask)
  geo               `<key>` int32 [B]       index(cell token), the token from
                                            `features.geo_cell_tokens` ("row:col",
                                            "" when latitude or longitude is NaN)
                    `<key>_xyz` float32 [B, 3]  unit-sphere point
                                            (cos(la) cos(lo), cos(la) sin(lo), sin(la)),
                                            la = lat * pi / 180, lo = lon * pi / 180;
                                            zeros when missing

`mean`, `std`, `fill_transformed`, `bucket_boundaries`, `num_oov_buckets` come
from the dataset's `preprocessing.json` (a `std` <= 0 counts as 1).
"""

import json
import math
import os
from typing import Any, Dict, List, Mapping, Sequence

import tensorflow as tf

from tfrs_two_tower import config as config_lib
from tfrs_two_tower import features as features_lib
from tfrs_two_tower.data import dataset_format as fmt

MISSING_SUFFIX = "_missing"
BUCKET_SUFFIX = "_bucket"
XYZ_SUFFIX = "_xyz"
VOCAB_TYPES = ("id", "categorical", "multi_categorical", "geo", "history")
LIST_TYPES = ("multi_categorical", "history")  # [B, L] string inputs, padded with ""


def side_feature_specs(config: config_lib.Config, preprocessing: Mapping[str, Any],
                       base_dir: str, side: str) -> List[Dict[str, Any]]:
  """The preprocessing spec of each feature of one side, in config order.

  Each spec is the feature's `preprocessing.json` entry plus `key`, `type`,
  `embedding_dim`, `pooling` and, for vocabulary features, `tokens` (the
  vocabulary read from `base_dir/<vocabulary>`). Specs are plain JSON values so
  that the Keras layers built from them serialise.
  """
  specs = []
  for feature in config.features(side):
    key = feature.key(side)
    if key not in preprocessing:
      raise KeyError(f"preprocessing.json has no entry for feature {key!r}")
    spec = dict(preprocessing[key])
    spec.update(key=key, type=feature.type, embedding_dim=feature.embedding_dim,
                pooling=feature.pooling)
    if feature.type in VOCAB_TYPES:
      path = os.path.join(base_dir, spec["vocabulary"])
      spec["tokens"] = [str(t) for t in fmt.read_tsv_counts(path)["token"].tolist()]
      if len(spec["tokens"]) != spec["vocab_size"]:
        raise ValueError(f"{path}: {len(spec['tokens'])} tokens but vocab_size "
                         f"{spec['vocab_size']} in preprocessing.json")
    specs.append(spec)
  if side == "query" and config.history:
    candidate_id = next(f for f in config.features("candidate") if f.type == "id")
    for key in config.history.keys:
      if key not in preprocessing:
        raise KeyError(f"preprocessing.json has no entry for the history list {key!r} (the "
                       "dataset was exported without the config's history section)")
      spec = dict(preprocessing[key], key=key, embedding_dim=candidate_id.embedding_dim,
                  pooling="mean", recency_decay=config.history.recency_decay,
                  dropout=config.history.dropout, embed_in_core=config.history.embed_in_core)
      spec["tokens"] = [str(t) for t in fmt.read_tsv_counts(
          os.path.join(base_dir, spec["vocabulary"]))["token"].tolist()]
      specs.append(spec)
  return specs


def num_rows(spec: Mapping[str, Any]) -> int:
  """Rows of a vocabulary feature's embedding table: padding + OOV + vocabulary."""
  return 1 + int(spec["num_oov_buckets"]) + int(spec["vocab_size"])


def core_input_specs(specs: Sequence[Mapping[str, Any]]) -> Dict[str, tf.TensorSpec]:
  """Name -> TensorSpec of every core input (see the module docstring)."""
  out = {}
  for spec in specs:
    key, ftype = spec["key"], spec["type"]
    if ftype in ("id", "categorical"):
      out[key] = tf.TensorSpec([None], tf.int32, name=key)
    elif ftype in LIST_TYPES:
      out[key] = tf.TensorSpec([None, int(spec["max_length"])], tf.int32, name=key)
    elif ftype == "numeric":
      out[key] = tf.TensorSpec([None], tf.float32, name=key)
      out[key + MISSING_SUFFIX] = tf.TensorSpec([None], tf.float32, name=key + MISSING_SUFFIX)
      if spec.get("bucket_boundaries"):
        out[key + BUCKET_SUFFIX] = tf.TensorSpec([None], tf.int32, name=key + BUCKET_SUFFIX)
    elif ftype == "geo":
      out[key] = tf.TensorSpec([None], tf.int32, name=key)
      out[key + XYZ_SUFFIX] = tf.TensorSpec([None, 3], tf.float32, name=key + XYZ_SUFFIX)
    else:
      raise ValueError(f"feature {key!r}: unknown type {ftype!r}")
  return out


def raw_input_specs(specs: Sequence[Mapping[str, Any]]) -> Dict[str, tf.TensorSpec]:
  """Name -> TensorSpec of the raw features (as in the dataset) of one side."""
  out = {}
  for spec in specs:
    key, ftype = spec["key"], spec["type"]
    if ftype in ("id", "categorical"):
      out[key] = tf.TensorSpec([None], tf.string, name=key)
    elif ftype in LIST_TYPES:
      out[key] = tf.TensorSpec([None, None], tf.string, name=key)
    elif ftype == "numeric":
      out[key] = tf.TensorSpec([None], tf.float32, name=key)
    elif ftype == "geo":
      out[key] = tf.TensorSpec([None, 2], tf.float32, name=key)
  return out


class FeaturePreprocessing(tf.keras.layers.Layer):
  """Raw features of one side -> core inputs, by the rules of the module docstring.

  Call with a dict holding (at least) the raw features of the side by dataset
  key; returns the dict of core inputs. String work (lookups, hashing) happens
  here so that the core stays free of strings. `history=False` leaves out the
  history lists (an entity table has none: they belong to each interaction).
  """

  def __init__(self, specs: Sequence[Mapping[str, Any]], **kwargs):
    kwargs["trainable"] = False
    super().__init__(**kwargs)
    # Kept as JSON so that Keras attribute tracking does not wrap the specs.
    self._specs_json = json.dumps([dict(s) for s in specs])
    self._tables = {}
    for spec in self.specs:
      if spec["type"] in VOCAB_TYPES:
        first = 1 + int(spec["num_oov_buckets"])
        tokens = tf.constant(spec["tokens"], tf.string)
        values = tf.range(first, first + len(spec["tokens"]), dtype=tf.int64)
        # A StaticHashTable is a tracked resource: it is saved with the layer.
        self._tables[spec["key"]] = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tokens, values), default_value=-1)

  @property
  def specs(self) -> List[Dict[str, Any]]:
    return json.loads(self._specs_json)

  @property
  def tables(self) -> List[tf.lookup.StaticHashTable]:
    return list(self._tables.values())

  def get_config(self):
    return {**super().get_config(), "specs": self.specs}

  def _index(self, spec, tokens):
    found = self._tables[spec["key"]].lookup(tokens)
    k = int(spec["num_oov_buckets"])
    oov = (tf.ones_like(found) if k == 1
           else 1 + tf.strings.to_hash_bucket_fast(tokens, k))
    index = tf.where(found >= 0, found, oov)
    index = tf.where(tf.equal(tokens, features_lib.MISSING_TOKEN), tf.zeros_like(index), index)
    return tf.cast(index, tf.int32)

  @property
  def history_keys(self) -> List[str]:
    return [spec["key"] for spec in self.specs if spec["type"] == "history"]

  def call(self, raw: Mapping[str, tf.Tensor], history: bool = True) -> Dict[str, tf.Tensor]:
    out = {}
    for spec in self.specs:
      if spec["type"] != "history" or history:
        out.update(self._core_inputs(spec, raw[spec["key"]]))
    return out

  def history_inputs(self, raw: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Core inputs of the history lists only (`raw` needs no other key)."""
    out = {}
    for spec in self.specs:
      if spec["type"] == "history":
        out.update(self._core_inputs(spec, raw[spec["key"]]))
    return out

  def _core_inputs(self, spec: Mapping[str, Any], value: tf.Tensor) -> Dict[str, tf.Tensor]:
    key, ftype = spec["key"], spec["type"]
    if ftype in ("id", "categorical"):
      return {key: self._index(spec, value)}
    if ftype in LIST_TYPES:
      length = int(spec["max_length"])
      value = value[:, :length]
      value = tf.pad(value, [[0, 0], [0, length - tf.shape(value)[1]]],
                     constant_values=features_lib.MISSING_TOKEN)
      return {key: tf.ensure_shape(self._index(spec, value), [None, length])}
    if ftype == "numeric":
      return _numeric(spec, tf.cast(value, tf.float32))
    location = tf.cast(value, tf.float32)  # geo
    cells = features_lib.geo_cell_tokens_tf(location, float(spec["cell_degrees"]))
    return {key: self._index(spec, cells), key + XYZ_SUFFIX: unit_sphere_xyz(location)}


def _numeric(spec: Mapping[str, Any], x: tf.Tensor) -> Dict[str, tf.Tensor]:
  key = spec["key"]
  mean = tf.constant(spec["mean"], tf.float32)
  std = tf.constant(spec["std"] if spec["std"] > 0 else 1.0, tf.float32)
  missing = tf.math.is_nan(x)
  safe = tf.where(missing, tf.zeros_like(x), x)
  if spec["transform"] == "log1p":
    transformed = tf.math.log1p(tf.maximum(safe, 0.0))
  elif spec["transform"] == "identity":
    transformed = safe
  else:
    raise ValueError(f"feature {key!r}: unknown transform {spec['transform']!r}")
  fill = (tf.constant(spec["fill_transformed"], tf.float32) - mean) / std
  out = {key: tf.where(missing, tf.fill(tf.shape(x), fill), (transformed - mean) / std),
         key + MISSING_SUFFIX: tf.cast(missing, tf.float32)}
  boundaries = spec.get("bucket_boundaries") or []
  if boundaries:
    edges = tf.constant(boundaries, tf.float32)
    count = tf.reduce_sum(tf.cast(safe[:, None] >= edges[None, :], tf.int32), axis=1)
    out[key + BUCKET_SUFFIX] = tf.where(missing, tf.zeros_like(count), 1 + count)
  return out


def unit_sphere_xyz(location: tf.Tensor) -> tf.Tensor:
  """[B, 2] (lat, lon) degrees -> [B, 3] point on the unit sphere; zeros where NaN."""
  lat, lon = location[:, 0], location[:, 1]
  valid = tf.logical_not(tf.math.is_nan(lat) | tf.math.is_nan(lon))
  radians = tf.constant(math.pi / 180.0, tf.float32)
  la = tf.where(valid, lat, 0.0) * radians
  lo = tf.where(valid, lon, 0.0) * radians
  xyz = tf.stack([tf.cos(la) * tf.cos(lo), tf.cos(la) * tf.sin(lo), tf.sin(la)], axis=1)
  return xyz * tf.cast(valid, tf.float32)[:, None]

