"""`features.json`: the preprocessing a Core ML client must do before calling a tower.

Strings cannot be Core ML inputs, so the string -> index lookup, OOV hashing and
numeric normalisation of `model/preprocessing.py` happen on the phone. This file
exports everything that needs, and `preprocess_with_features_json` is a
reference implementation of the rules in pure Python + numpy (no TensorFlow),
which the tests hold equal to the SavedModel's own lookup.

Layout::

  {"format_version": 1, "kind": "tfrs_two_tower.coreml_features",
   "run_id", "config_hash", "embedding_dim", "temperature", "calibration",
   "rules": {...human-readable statement of the rules below...},
   "towers": {"query": {"model": "QueryTower.mlpackage", "output": "embedding",
                        "inputs": [{"name", "dtype", "shape", "feature", "role"}, ...],
                        "features": [{"key", "type", ...per type...}, ...]},
              "candidate": {...}}}

Per feature (`features[]`: "key" = input name, "name" = config feature name), with
k = num_oov_buckets:
  vocabulary features (id, categorical, multi_categorical, geo):
    "vocabulary": [token, ...]      index(tokens[i]) = first_index + i, first_index = 1 + k
    "num_oov_buckets": k, "oov": "constant" (index 1) | "fingerprint64" (1 + FarmHash
    Fingerprint64(utf8) mod k), index("") = 0 (padding/missing)
    multi_categorical: "max_length" L (cut or pad with "" to L)
    geo: "cell_degrees" (cell token "row:col", row = floor((lat + 90) / cell),
         col = floor((lon + 180) / cell), float32), plus input `<key>_xyz`
  numeric: "transform" (identity|log1p), "mean", "std", "fill_transformed",
    "bucket_boundaries"; inputs `<key>` (z-score), `<key>_missing`, `<key>_bucket`
All float constants are to be cast to float32 before use; arithmetic in float32.
"""

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from tfrs_two_tower import features as features_lib
from tfrs_two_tower.coreml import fingerprint

FORMAT_VERSION = 1
KIND = "tfrs_two_tower.coreml_features"
MODEL_FILES = {"query": "QueryTower.mlpackage", "candidate": "CandidateTower.mlpackage"}
VOCAB_TYPES = ("id", "categorical", "multi_categorical", "geo")
# Suffixes of the extra core inputs (`model/preprocessing.py`).
MISSING_SUFFIX = "_missing"
BUCKET_SUFFIX = "_bucket"
XYZ_SUFFIX = "_xyz"

RULES = {
    "index": "index('') = 0 (padding/missing, masked in pooling); index(vocabulary[i]) = "
             "1 + num_oov_buckets + i; any other token: 1 when num_oov_buckets == 1, else "
             "1 + (FarmHash Fingerprint64 of its UTF-8 bytes, unsigned 64-bit) mod "
             "num_oov_buckets",
    "multi_categorical": "tokens cut or padded with '' to max_length, then indexed",
    "numeric": "x_t = log1p(max(x, 0)) if transform == 'log1p' else x; z = (x_t - mean) / std; "
               "missing x: z = (fill_transformed - mean) / std, <key>_missing = 1; "
               "<key>_bucket = 0 if missing else 1 + count(boundary <= x) over the raw x",
    "geo": "cell token 'row:col', row = floor((lat + 90) / cell_degrees), col = floor((lon + "
           "180) / cell_degrees), '' when lat or lon is missing; <key>_xyz = (cos la cos lo, "
           "cos la sin lo, sin la) in radians, zeros when missing",
    "arithmetic": "float32 throughout; cast every constant to float32 first",
}


def tower_features(specs: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
  """`features[]` of one tower from the preprocessing specs (`side_feature_specs`)."""
  out = []
  for spec in specs:
    entry: Dict[str, Any] = {"key": spec["key"], "name": spec.get("name", spec["key"]),
                             "type": spec["type"]}
    if spec["type"] in VOCAB_TYPES:
      k = int(spec["num_oov_buckets"])
      entry.update(num_oov_buckets=k, oov="constant" if k == 1 else "fingerprint64",
                   first_index=1 + k, vocabulary=list(spec["tokens"]))
      if spec["type"] == "multi_categorical":
        entry.update(max_length=int(spec["max_length"]), pooling=spec.get("pooling", "mean"))
      if spec["type"] == "geo":
        entry["cell_degrees"] = float(spec["cell_degrees"])
    elif spec["type"] == "numeric":
      entry.update(transform=spec["transform"], mean=float(spec["mean"]),
                   std=float(spec["std"]) if spec["std"] > 0 else 1.0,
                   fill_transformed=float(spec["fill_transformed"]),
                   bucket_boundaries=[float(b) for b in spec.get("bucket_boundaries") or []])
    else:
      raise ValueError(f"feature {spec['key']!r}: unknown type {spec['type']!r}")
    out.append(entry)
  return out


def tower_inputs(features: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
  """The Core ML inputs of a tower in feature order: name, dtype, shape ([-1] = batch), role."""
  inputs = []

  def add(name, dtype, shape, feature, role):
    inputs.append({"name": name, "dtype": dtype, "shape": [-1] + shape, "feature": feature,
                   "role": role})
  for f in features:
    key, ftype = f["key"], f["type"]
    if ftype in ("id", "categorical"):
      add(key, "int32", [], key, "index")
    elif ftype == "multi_categorical":
      add(key, "int32", [f["max_length"]], key, "index")
    elif ftype == "geo":
      add(key, "int32", [], key, "index")
      add(key + XYZ_SUFFIX, "float32", [3], key, "unit_sphere_xyz")
    else:
      add(key, "float32", [], key, "zscore")
      add(key + MISSING_SUFFIX, "float32", [], key, "missing")
      if f["bucket_boundaries"]:
        add(key + BUCKET_SUFFIX, "int32", [], key, "bucket")
  return inputs


def build(specs_by_side: Mapping[str, Sequence[Mapping[str, Any]]], *, run_id: str,
          config_hash: str, embedding_dim: int, temperature: float,
          calibration: Optional[Mapping[str, float]] = None) -> Dict[str, Any]:
  """The features.json payload for both towers."""
  towers = {}
  for side, specs in specs_by_side.items():
    features = tower_features(specs)
    towers[side] = {"model": MODEL_FILES[side], "output": "embedding",
                    "output_shape": [-1, int(embedding_dim)],
                    "inputs": tower_inputs(features), "features": features}
  return {"format_version": FORMAT_VERSION, "kind": KIND, "run_id": run_id,
          "config_hash": config_hash, "embedding_dim": int(embedding_dim),
          "temperature": float(temperature), "calibration": dict(calibration or {}),
          "rules": RULES, "towers": towers}


class Vocabulary:
  """token -> index of one vocabulary feature, by the rules of `RULES["index"]`."""

  def __init__(self, feature: Mapping[str, Any]):
    self.k = int(feature["num_oov_buckets"])
    first = int(feature["first_index"])
    self.table = {token: first + i for i, token in enumerate(feature["vocabulary"])}

  def index(self, token: str) -> int:
    if token == features_lib.MISSING_TOKEN:
      return 0
    found = self.table.get(token)
    if found is not None:
      return found
    return 1 if self.k == 1 else 1 + fingerprint.hash_bucket(token, self.k)


def _as_text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def preprocess_with_features_json(tower: Mapping[str, Any], raw: Mapping[str, Any],
                                  vocabularies: Optional[Dict[str, Vocabulary]] = None
                                  ) -> Dict[str, np.ndarray]:
  """Raw features of a batch -> Core ML inputs, from `features.json` alone (no TensorFlow).

  Args:
    tower: `features_json["towers"][side]`.
    raw: dataset key -> batch of raw values: strings [B] (str or bytes), token
      lists [B][*], float numerics [B] (NaN missing), float [B, 2] locations.
    vocabularies: optional cache of `Vocabulary` by key (build once, reuse).
  Returns:
    Core ML input name -> int32 / float32 array, shapes as in `tower["inputs"]`.
  """
  vocabularies = vocabularies if vocabularies is not None else {}
  out: Dict[str, np.ndarray] = {}
  for f in tower["features"]:
    key, ftype = f["key"], f["type"]
    if ftype in VOCAB_TYPES and key not in vocabularies:
      vocabularies[key] = Vocabulary(f)
    if ftype in ("id", "categorical"):
      vocab = vocabularies[key]
      out[key] = np.array([vocab.index(_as_text(v)) for v in raw[key]], np.int32)
    elif ftype == "multi_categorical":
      vocab, length = vocabularies[key], int(f["max_length"])
      rows = []
      for tokens in raw[key]:
        tokens = [_as_text(t) for t in tokens][:length]
        tokens += [features_lib.MISSING_TOKEN] * (length - len(tokens))
        rows.append([vocab.index(t) for t in tokens])
      out[key] = np.array(rows, np.int32).reshape(-1, length)
    elif ftype == "geo":
      location = np.asarray(raw[key], np.float32).reshape(-1, 2)
      cells = features_lib.geo_cell_tokens(location[:, 0], location[:, 1], f["cell_degrees"])
      out[key] = np.array([vocabularies[key].index(c) for c in cells], np.int32)
      out[key + XYZ_SUFFIX] = unit_sphere_xyz(location)
    else:
      out.update(_numeric(f, np.asarray(raw[key], np.float32)))
  return out


def _numeric(f: Mapping[str, Any], x: np.ndarray) -> Dict[str, np.ndarray]:
  key = f["key"]
  mean, std = np.float32(f["mean"]), np.float32(f["std"])
  missing = np.isnan(x)
  safe = np.where(missing, np.float32(0), x).astype(np.float32)
  if f["transform"] == "log1p":
    transformed = np.log1p(np.maximum(safe, np.float32(0)))
  elif f["transform"] == "identity":
    transformed = safe
  else:
    raise ValueError(f"feature {key!r}: unknown transform {f['transform']!r}")
  fill = (np.float32(f["fill_transformed"]) - mean) / std
  out = {key: np.where(missing, fill, (transformed - mean) / std).astype(np.float32),
         key + MISSING_SUFFIX: missing.astype(np.float32)}
  if f["bucket_boundaries"]:
    edges = np.asarray(f["bucket_boundaries"], np.float32)
    count = (safe[:, None] >= edges[None, :]).sum(axis=1)
    out[key + BUCKET_SUFFIX] = np.where(missing, 0, 1 + count).astype(np.int32)
  return out


def unit_sphere_xyz(location: np.ndarray) -> np.ndarray:
  """[B, 2] (lat, lon) degrees -> [B, 3] float32 unit-sphere point; zeros where NaN."""
  lat, lon = location[:, 0], location[:, 1]
  valid = ~(np.isnan(lat) | np.isnan(lon))
  radians = np.float32(math.pi / 180.0)
  la = np.where(valid, lat, np.float32(0)).astype(np.float32) * radians
  lo = np.where(valid, lon, np.float32(0)).astype(np.float32) * radians
  xyz = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=1)
  return (xyz * valid.astype(np.float32)[:, None]).astype(np.float32)
