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
   "eligibility": {...the config's eligibility rules, see ELIGIBILITY_RULES} | null,
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
    history (query tower, key `query_history_<list>`): "list", "label", "max_length" N;
         the vocabulary is the candidate id vocabulary; the app builds the input
         from its local swipe list (see RULES["history"])
    geo: "cell_degrees" (cell token "row:col", row = floor((lat + 90) / cell),
         col = floor((lon + 180) / cell), float32), plus input `<key>_xyz`
  numeric: "transform" (identity|log1p), "mean", "std", "fill_transformed",
    "bucket_boundaries"; inputs `<key>` (z-score), `<key>_missing`, `<key>_bucket`
All float constants are to be cast to float32 before use; arithmetic in float32.

"eligibility" carries who may be shown to whom (the config's rules, by raw
column name of the entity table) so that the app filters exactly as evaluation
(`tfrs_two_tower.eligibility`) and SQL (`tt_eligible`) do; `eligible_pair` is
its reference implementation over two raw rows (a test holds it equal to the
numpy implementation). Blocked pairs, already-swiped pairs and activity are
lists and times the app gets from its backend: they are named, not shipped.
"""

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from tfrs_two_tower import config as config_lib
from tfrs_two_tower import eligibility as eligibility_lib
from tfrs_two_tower import features as features_lib
from tfrs_two_tower import rules as rules_lib
from tfrs_two_tower.coreml import fingerprint

FORMAT_VERSION = 1
KIND = "tfrs_two_tower.coreml_features"
MODEL_FILES = {"query": "QueryTower.mlpackage", "candidate": "CandidateTower.mlpackage"}
VOCAB_TYPES = ("id", "categorical", "multi_categorical", "geo", "history")
LIST_TYPES = ("multi_categorical", "history")
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
    "history": "the candidate ids of the user's swipes whose action has the list's label "
               "(liked: 1, passed: 0), strictly before the moment of ranking, most recent "
               "first, from the app's local swipe list; cut or padded with '' to max_length, "
               "then indexed like the candidate id (unknown ids: OOV)",
    "numeric": "x_t = log1p(max(x, 0)) if transform == 'log1p' else x; z = (x_t - mean) / std; "
               "missing x: z = (fill_transformed - mean) / std, <key>_missing = 1; "
               "<key>_bucket = 0 if missing else 1 + count(boundary <= x) over the raw x",
    "geo": "cell token 'row:col', row = floor((lat + 90) / cell_degrees), col = floor((lon + "
           "180) / cell_degrees), '' when lat or lon is missing; <key>_xyz = (cos la cos lo, "
           "cos la sin lo, sin la) in radians, zeros when missing",
    "arithmetic": "float32 throughout; cast every constant to float32 first",
}


ELIGIBILITY_RULES = {
    "values": "a cell's values: the elements of an array (or of '{a,b}' text), else the text "
              "itself; values trimmed, empty ones dropped; compared lower-cased unless "
              "case_sensitive",
    "preference": "u accepts v when u's seeking cell has no value, or v's gender cell has no "
                  "value, or accepts[seeking value] holds '*' or v's (first) gender value, for "
                  "some value of u's seeking cell; eligible needs u accepts v AND v accepts u",
    "age": "window_years: |age_u - age_v| <= window_years; else min_u <= age_v <= max_u AND "
           "min_v <= age_u <= max_v; a comparison with a missing value passes",
    "distance": "haversine(lat/lon of u, of v) with earth_radius_km <= max_km; missing passes",
    "active": "v's column (a time) >= now - within_days days; missing: not eligible",
    "exclusions": "exclude_self: v != u; exclude_swiped: u has not swiped v; blocked: neither "
                  "blocked the other (lists from the backend)",
}


def eligibility_rules(config) -> Optional[Dict[str, Any]]:
  """The `eligibility` block of features.json (None when the config has no rules).

  `preference.accepts` is the mapping resolved for the phone: folded seeking value
  -> folded raw gender values it accepts, or ["*"].
  """
  rules = config.eligibility
  if rules is None:
    return None
  out: Dict[str, Any] = {"entity": rules.entity, "exclude_self": rules.exclude_self,
                         "exclude_swiped": rules.exclude_swiped, "semantics": ELIGIBILITY_RULES}
  pref = rules.preference
  if pref is not None:
    accepts = {}
    for seeking, canonicals in pref.seeking.items():
      raw = (["*"] if rules_lib.ANYONE in canonicals else
             sorted({pref.fold(v) for g in canonicals for v in pref.genders[g]}))
      accepts[pref.fold(seeking)] = raw
    out["preference"] = {"gender_column": pref.gender_column,
                         "seeking_column": pref.seeking_column,
                         "case_sensitive": pref.case_sensitive, "accepts": accepts}
  if rules.age is not None:
    out["age"] = {k: getattr(rules.age, k) for k in ("column", "window_years", "min_column",
                                                     "max_column")}
  if rules.distance is not None:
    entity = config.entities[rules.entity]
    geo = next(f for f in entity.features if f.name == rules.distance.feature)
    out["distance"] = {"feature": geo.name, "latitude_column": geo.columns[0],
                       "longitude_column": geo.columns[1], "max_km": rules.distance.max_km,
                       "earth_radius_km": eligibility_lib.EARTH_RADIUS_KM}
  if rules.active is not None:
    out["active"] = {"column": rules.active.column, "within_days": rules.active.within_days}
  if rules.blocked is not None:
    out["blocked"] = {"source": "backend"}
  return out


def _values(cell: Any, fold) -> List[str]:
  return [fold(v) for v in eligibility_lib.cell_values(cell)]


def _missing(x: Any) -> bool:
  return x is None or (isinstance(x, float) and math.isnan(x))


def eligible_pair(rules: Mapping[str, Any], u: Mapping[str, Any], v: Mapping[str, Any],
                  now: Optional[float] = None) -> bool:
  """Whether v may be shown to u by features.json's `eligibility` (pairwise rules only).

  Args:
    u, v: raw entity rows by column name (numbers, text, lists; None/NaN missing;
      the `active` column in unix seconds).
    now: unix seconds, for the `active` rule.
  """
  pref = rules.get("preference")
  if pref:
    fold = (lambda x: x) if pref["case_sensitive"] else (lambda x: x.casefold())
    for a, b in ((u, v), (v, u)):
      seeking = _values(a.get(pref["seeking_column"]), fold)
      gender = _values(b.get(pref["gender_column"]), fold)
      if seeking and gender and not any(
          "*" in pref["accepts"].get(s, []) or gender[0] in pref["accepts"].get(s, [])
          for s in seeking):
        return False
  age = rules.get("age")
  if age:
    au, av = u.get(age["column"]), v.get(age["column"])
    if age["window_years"] is not None:
      if not (_missing(au) or _missing(av)) and abs(au - av) > age["window_years"]:
        return False
    else:
      for me, other in ((u, av), (v, au)):
        lo, hi = me.get(age["min_column"]), me.get(age["max_column"])
        if _missing(other):
          continue
        if (not _missing(lo) and other < lo) or (not _missing(hi) and other > hi):
          return False
  distance = rules.get("distance")
  if distance:
    a = np.array([u.get(distance["latitude_column"]), u.get(distance["longitude_column"])],
                 np.float64)
    b = np.array([v.get(distance["latitude_column"]), v.get(distance["longitude_column"])],
                 np.float64)
    if eligibility_lib.haversine_km(a, b) > distance["max_km"]:  # NaN (missing) passes
      return False
  active = rules.get("active")
  if active:
    t = v.get(active["column"])
    if _missing(t) or t < now - active["within_days"] * eligibility_lib.SECONDS_PER_DAY:
      return False
  return True


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
      if spec["type"] in LIST_TYPES:
        entry.update(max_length=int(spec["max_length"]), pooling=spec.get("pooling", "mean"))
      if spec["type"] == "history":
        entry.update(list=spec["name"], label=config_lib.HISTORY_LISTS[spec["name"]])
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
    elif ftype in LIST_TYPES:
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
          calibration: Optional[Mapping[str, float]] = None,
          eligibility: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """The features.json payload for both towers (`eligibility`: `eligibility_rules(config)`)."""
  towers = {}
  for side, specs in specs_by_side.items():
    features = tower_features(specs)
    towers[side] = {"model": MODEL_FILES[side], "output": "embedding",
                    "output_shape": [-1, int(embedding_dim)],
                    "inputs": tower_inputs(features), "features": features}
  return {"format_version": FORMAT_VERSION, "kind": KIND, "run_id": run_id,
          "config_hash": config_hash, "embedding_dim": int(embedding_dim),
          "temperature": float(temperature), "calibration": dict(calibration or {}),
          "rules": RULES, "eligibility": dict(eligibility) if eligibility else None,
          "towers": towers}


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
    elif ftype in LIST_TYPES:
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
