"""How each config feature is stored, parsed and turned into tokens.

This module is shared by the data stages (writer, reader) and by the model and
export code, so that the rules that must agree everywhere live once:

* the dataset keys (`<side>_<name>`, ids under `<side>_id`) and reserved keys;
* the `tf.io` parse spec of a record;
* the raw-value coercion of an entity table (strings, lists, NaN for missing);
* the geo grid-cell token rule, in numpy and in TensorFlow, bit-identical because
  both compute in float32.
"""

import logging
import math
from typing import Dict, Iterable, List, Sequence

import numpy as np
import pandas as pd

from tfrs_two_tower import config as config_lib

# Keys every interaction record carries besides the two sides' features.
QUERY_ID = "query_id"
CANDIDATE_ID = "candidate_id"
LABEL = "label"
WEIGHT = "weight"
TIMESTAMP = "timestamp"
ACTION = "action"
INTERACTION_KEYS = (LABEL, WEIGHT, TIMESTAMP, ACTION)
# Entity-table records carry this besides the side's features (unix seconds, -1 unknown).
CREATED_AT = "created_at"
MISSING_TOKEN = ""


def side_keys(config: config_lib.Config, side: str) -> List[str]:
  """Dataset keys of one side's features, id first if the side has an id feature."""
  keys = [f.key(side) for f in config.features(side)]
  id_key = f"{side}_id"
  return [id_key] + [k for k in keys if k != id_key]


def parse_spec(config: config_lib.Config, sides: Sequence[str] = config_lib.SIDES,
               interaction: bool = True, entity_table: bool = False) -> Dict[str, object]:
  """The `tf.io.parse_example` spec of a record.

  Multi-categorical features parse as VarLen (sparse); `densify` pads them to
  `max_length` with the missing token.
  """
  import tensorflow as tf  # Imported here so that config-only users need no TF.
  spec = {}
  for side in sides:
    spec[f"{side}_id"] = tf.io.FixedLenFeature([], tf.string)
    for f in config.features(side):
      key = f.key(side)
      if f.type in ("id", "categorical"):
        spec[key] = tf.io.FixedLenFeature([], tf.string, default_value=MISSING_TOKEN)
      elif f.type == "multi_categorical":
        spec[key] = tf.io.VarLenFeature(tf.string)
      elif f.type == "numeric":
        spec[key] = tf.io.FixedLenFeature([], tf.float32, default_value=math.nan)
      elif f.type == "geo":
        spec[key] = tf.io.FixedLenFeature([2], tf.float32, default_value=[math.nan, math.nan])
  if interaction and "query" in sides and config.history:
    for key in config.history.keys:  # candidate ids, most recent first (data/history.py)
      spec[key] = tf.io.VarLenFeature(tf.string)
  if interaction:
    spec[LABEL] = tf.io.FixedLenFeature([], tf.int64)
    spec[WEIGHT] = tf.io.FixedLenFeature([], tf.float32, default_value=1.0)
    spec[TIMESTAMP] = tf.io.FixedLenFeature([], tf.int64)
    spec[ACTION] = tf.io.FixedLenFeature([], tf.string)
  if entity_table:
    spec[CREATED_AT] = tf.io.FixedLenFeature([], tf.int64, default_value=-1)
  return spec


def densify(config: config_lib.Config, parsed: Dict[str, object],
            sides: Sequence[str] = config_lib.SIDES) -> Dict[str, object]:
  """Pads VarLen features (multi-categorical, history) to dense [batch, max_length] strings."""
  import tensorflow as tf
  lengths = {f.key(side): f.max_length for side in sides for f in config.features(side)
             if f.type == "multi_categorical"}
  if config.history and "query" in sides:
    lengths.update({key: config.history.max_length for key in config.history.keys})
  out = dict(parsed)
  for key, length in lengths.items():
    if key in parsed:  # absent when not parsed
      dense = tf.sparse.to_dense(parsed[key], default_value=MISSING_TOKEN)
      dense = dense[:, :length]
      out[key] = tf.pad(dense, [[0, 0], [0, length - tf.shape(dense)[1]]],
                        constant_values=MISSING_TOKEN)
  return out


def geo_cell_tokens(latitude: np.ndarray, longitude: np.ndarray,
                    cell_degrees: float) -> np.ndarray:
  """Grid-cell token "row:col" of each location; "" where either is NaN.

  row = floor((lat + 90) / cell), col = floor((lon + 180) / cell), all in float32
  so that `geo_cell_tokens_tf` (and Swift, in float) gives the same cell.
  """
  lat = np.asarray(latitude, dtype=np.float32)
  lon = np.asarray(longitude, dtype=np.float32)
  cell = np.float32(cell_degrees)
  valid = ~(np.isnan(lat) | np.isnan(lon))
  rows = np.floor((np.where(valid, lat, 0) + np.float32(90)) / cell).astype(np.int64)
  cols = np.floor((np.where(valid, lon, 0) + np.float32(180)) / cell).astype(np.int64)
  tokens = np.char.add(np.char.add(rows.astype(str), ":"), cols.astype(str))
  return np.where(valid, tokens, MISSING_TOKEN).astype(object)


def geo_cell_tokens_tf(location, cell_degrees: float):
  """TensorFlow twin of `geo_cell_tokens` for a [..., 2] float32 tensor."""
  import tensorflow as tf
  lat, lon = location[..., 0], location[..., 1]
  valid = tf.logical_not(tf.math.is_nan(lat) | tf.math.is_nan(lon))
  cell = tf.constant(cell_degrees, tf.float32)
  rows = tf.cast(tf.floor((tf.where(valid, lat, 0.0) + 90.0) / cell), tf.int64)
  cols = tf.cast(tf.floor((tf.where(valid, lon, 0.0) + 180.0) / cell), tf.int64)
  tokens = tf.strings.join([tf.strings.as_string(rows), tf.strings.as_string(cols)], ":")
  return tf.where(valid, tokens, tf.constant(MISSING_TOKEN))


def _as_token_lists(values: Iterable, source: str, column: str) -> List[List[str]]:
  """Multi-valued cells as lists of strings.

  Accepts Python/numpy lists (Parquet, psycopg2 arrays), Postgres array literals
  as exported in CSV ('{a,b,"c d"}'), JSON-ish '["a","b"]', and '' / None / NaN.
  """
  out = []
  for row, value in enumerate(values):
    if value is None or (isinstance(value, float) and math.isnan(value)):
      out.append([])
    elif isinstance(value, (list, tuple, np.ndarray)):
      out.append([clean_token(v) for v in value if v is not None])
    elif isinstance(value, str):
      text = value.strip()
      if text.startswith(("{", "[")) and text.endswith(("}", "]")):
        text = text[1:-1]
      parts = [p.strip().strip('"').strip("'") for p in text.split(",")] if text else []
      out.append([clean_token(p) for p in parts if p])
    else:
      raise ValueError(f"{source}: column {column!r} row {row}: expected a list of strings, "
                       f"got {type(value).__name__} {value!r}")
  return out


def _as_float(values: pd.Series, source: str, column: str) -> np.ndarray:
  if values.dtype == bool or values.dtype == object and values.map(
      lambda v: isinstance(v, (bool, np.bool_))).all():
    return values.astype(np.float32).to_numpy()
  if not pd.api.types.is_numeric_dtype(values.dtype):  # object, or pandas' str dtype (CSV)
    lowered = values.astype(object).map(lambda v: v.strip().lower() if isinstance(v, str) else v)
    values = lowered.replace({"true": 1.0, "false": 0.0, "t": 1.0, "f": 0.0, "": np.nan})
  numeric = pd.to_numeric(values, errors="coerce")
  bad = numeric.isna() & values.notna()
  if bad.any():
    row = int(np.flatnonzero(bad.to_numpy())[0])
    raise ValueError(f"{source}: column {column!r} row {row}: not a number: "
                     f"{values.iloc[row]!r} ({int(bad.sum())} such rows)")
  return numeric.astype(np.float32).to_numpy()


_CONTROL = str.maketrans({"\t": " ", "\n": " ", "\r": " "})


def clean_token(value) -> str:
  """A token as stored: str, with tab/newline turned into spaces (vocab files are TSV)."""
  return (value if isinstance(value, str) else str(value)).translate(_CONTROL)


def _as_str(values: pd.Series) -> np.ndarray:
  out = values.astype(object).where(values.notna(), MISSING_TOKEN)
  return out.map(clean_token).to_numpy(dtype=object)


# Bad values (docs/data.md "Bad values"): a value that cannot be true becomes missing, with
# one warning per column naming it and the count; an id that cannot be one is refused.
MAX_TOKEN_CHARS = 256  # longer categorical values are data errors (a pasted blob), not categories
LATITUDE_RANGE, LONGITUDE_RANGE = (-90.0, 90.0), (-180.0, 180.0)
_log = logging.getLogger(__name__)


def _drop_impossible(values: np.ndarray, bad: np.ndarray, source: str, column: str,
                     why: str) -> np.ndarray:
  """[n] float32 with `bad` rows set to NaN (missing), one warning naming column and count."""
  if bad.any():
    _log.warning("%s: column %r: %d values %s (first in row %d) are treated as missing",
                 source, column, int(bad.sum()), why, int(np.flatnonzero(bad)[0]))
    values = np.where(bad, np.float32(np.nan), values).astype(np.float32)
  return values


def _numeric(values: pd.Series, source: str, column: str,
             valid: Sequence[float] = (-math.inf, math.inf), what: str = "") -> np.ndarray:
  out = _as_float(values, source, column)
  out = _drop_impossible(out, np.isinf(out), source, column, "infinite")
  with np.errstate(invalid="ignore"):
    outside = (out < valid[0]) | (out > valid[1])
  return _drop_impossible(out, outside, source, column,
                          f"outside {what or 'valid_range'} [{valid[0]:g}, {valid[1]:g}]")


def _short_tokens(values: np.ndarray, source: str, column: str) -> np.ndarray:
  long = np.fromiter((len(v) > MAX_TOKEN_CHARS for v in values), bool, len(values))
  if long.any():
    _log.warning("%s: column %r: %d values longer than %d characters (first in row %d) are "
                 "treated as missing", source, column, int(long.sum()), MAX_TOKEN_CHARS,
                 int(np.flatnonzero(long)[0]))
    values = np.where(long, MISSING_TOKEN, values)
  return values


def encode_entity_table(config: config_lib.Config, side: str, table: pd.DataFrame,
                        source: str) -> Dict[str, object]:
  """Coerces a raw entity table into stored feature values, keyed by dataset key.

  Returns a dict with `<side>_id` (object array of str) and, per feature, an
  object array of str (id, categorical), a float32 array (numeric, NaN missing),
  a list of token lists (multi_categorical), or a float32 [n, 2] array (geo).
  Raises ValueError naming the source, column and row of a bad value.
  """
  entity = config.entity(side)
  problems = config_lib.check_columns(config, side, table.columns, source)
  if problems:
    raise ValueError("; ".join(problems))
  ids = _as_str(table[entity.id_column])
  if (ids == MISSING_TOKEN).any():
    row = int(np.flatnonzero(ids == MISSING_TOKEN)[0])
    raise ValueError(f"{source}: column {entity.id_column!r} row {row}: missing id")
  long_ids = np.flatnonzero([len(i) > MAX_TOKEN_CHARS for i in ids])
  if long_ids.size:
    raise ValueError(f"{source}: column {entity.id_column!r} row {long_ids[0]}: an id of "
                     f"{len(ids[long_ids[0]]):,} characters (at most {MAX_TOKEN_CHARS}; "
                     f"{long_ids.size} such rows)")
  out: Dict[str, object] = {f"{side}_id": ids}
  for f in entity.features:
    key = f.key(side)
    if f.type == "id":
      continue
    if f.type == "categorical":
      out[key] = _short_tokens(_as_str(table[f.columns[0]]), source, f.columns[0])
    elif f.type == "multi_categorical":
      lists = _as_token_lists(table[f.columns[0]].tolist(), source, f.columns[0])
      flat = np.array([t for tokens in lists for t in tokens] or [""], dtype=object)
      if (_short_tokens(flat, source, f.columns[0]) != flat).any():  # warned; drop them
        lists = [[t for t in tokens if len(t) <= MAX_TOKEN_CHARS] for tokens in lists]
      out[key] = lists
    elif f.type == "numeric":
      out[key] = _numeric(table[f.columns[0]], source, f.columns[0],
                          f.valid_range or (-math.inf, math.inf))
    elif f.type == "geo":
      lat = _numeric(table[f.columns[0]], source, f.columns[0], LATITUDE_RANGE, "latitudes")
      lon = _numeric(table[f.columns[1]], source, f.columns[1], LONGITUDE_RANGE, "longitudes")
      unknown = np.isnan(lat) | np.isnan(lon)  # a point needs both coordinates
      out[key] = np.stack([np.where(unknown, np.nan, lat), np.where(unknown, np.nan, lon)],
                          axis=1).astype(np.float32)
  return out

