"""Writes the dataset directory: the one writer every source goes through.

Sources (the synthetic world, PostgreSQL, CSV/Parquet dumps) hand the writer the
two entity tables once and then stream interaction chunks. Memory is bounded by
the entity tables plus one chunk, never by the number of swipes.

Everything the writer derives (vocabularies, normalisation constants, candidate
counts) comes from additive per-entity counters over the **train** split only
(the validation window excluded too), so nothing from the windows a model is
selected or judged on leaks into preprocessing, and partitions written
separately can be summed. Splits by time: train < validation_time <= validation
< split_time <= eval.
"""

import collections
import logging
import os
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from tfrs_two_tower import __version__
from tfrs_two_tower import config as config_lib
from tfrs_two_tower import eligibility as eligibility_lib
from tfrs_two_tower import features as features_lib
from tfrs_two_tower import files
from tfrs_two_tower.data import dataset_format as fmt
from tfrs_two_tower.data import example_codec
from tfrs_two_tower.data import history as history_lib
from tfrs_two_tower.data import readiness
from tfrs_two_tower.data import timestamps as timestamps_lib

UNKNOWN_ACTION_POLICIES = ("fail", "drop")
# The last 10 % of the pre-eval interactions by time select the model (see docs/data.md).
DEFAULT_VALIDATION_FRACTION = 0.1
MISSING_ENTITY_POLICIES = ("fail", "drop")
ELIGIBILITY_SAMPLE = 20_000  # query users checked exactly for "no eligible candidate"
ELIGIBILITY_WARN_SHARE = 0.01  # warn when more users than this share have none


class DataError(ValueError):
  """Input data that cannot become a dataset; the message names file/column/row."""


def to_unix_seconds(values: pd.Series, source: str, column: str, unit: Optional[str],
                    **kwargs) -> np.ndarray:
  """`timestamps.to_unix_seconds`, its refusals as DataError like every bad value here."""
  try:
    return timestamps_lib.to_unix_seconds(values, source, column, unit, **kwargs)
  except timestamps_lib.TimestampError as e:
    raise DataError(str(e)) from None


class EntityTable:
  """One side's entities, coerced and indexed once.

  Attributes:
    ids: [n] object array of id strings.
    values: dataset key -> stored values (see `features.encode_entity_table`).
    created_at: [n] int64 unix seconds, -1 when the config has no created_at column.
  """

  def __init__(self, config: config_lib.Config, side: str, table: pd.DataFrame, source: str,
               timestamp_unit: Optional[str] = None, check_dates: bool = True):
    self.side, self.source = side, source
    try:
      self.values = features_lib.encode_entity_table(config, side, table, source)
    except ValueError as e:
      raise DataError(str(e)) from None
    self.ids = self.values[f"{side}_id"]
    self.index = pd.Index(self.ids)
    if not self.index.is_unique:
      dup = self.index[self.index.duplicated()][0]
      raise DataError(f"{source}: id {dup!r} appears more than once in column "
                      f"{config.entity(side).id_column!r}")
    column = config.entity(side).created_at_column
    self.created_at = (to_unix_seconds(
        table[column], source, column, timestamp_unit, check_dates=check_dates) if column else np.full(len(self.ids), -1, np.int64))
    self._serialized: Optional[List[bytes]] = None

  def __len__(self) -> int:
    return len(self.ids)

  def lookup(self, ids: np.ndarray) -> np.ndarray:
    """Row index of each id, -1 where unknown."""
    return self.index.get_indexer(ids)

  @property
  def serialized(self) -> List[bytes]:
    if self._serialized is None:
      self._serialized = example_codec.entity_features(self.values, len(self))
    return self._serialized


class DatasetWriter:
  """Streams interactions into the dataset directory; a context manager.

  Usage::

    with DatasetWriter(config, out_dir, split_time, queries, candidates) as w:
      for chunk in chunks:
        w.add_interactions(chunk, source="swipes.csv", first_row=offset)
      w.extra_stats["oracle"] = {...}      # optional
    # out_dir now exists, complete, with manifest.json

  An exception inside the block (or a crash) leaves no `out_dir` behind, or the
  previous complete one with `overwrite`.
  """

  def __init__(self, config: config_lib.Config, output_dir: str, split_time: int,
               query_entities: pd.DataFrame, candidate_entities: pd.DataFrame, *,
               validation_time: Optional[int] = None,
               query_source: str = "query entities", candidate_source: str = "candidate entities",
               num_train_shards: int = 4, num_eval_shards: int = 2,
               num_validation_shards: int = 1,
               unknown_actions: str = "fail", missing_entities: str = "fail",
               min_users: int = readiness.DEFAULT_MIN_USERS,
               min_interactions: int = readiness.DEFAULT_MIN_INTERACTIONS,
               source_description: Optional[Mapping[str, Any]] = None,
               overwrite: bool = False, log_every_seconds: float = 10.0,
               timestamp_unit: Optional[str] = None, check_dates: bool = True,
               blocked_pairs: Optional[pd.DataFrame] = None):
    if unknown_actions not in UNKNOWN_ACTION_POLICIES:
      raise ValueError(f"unknown_actions must be one of {UNKNOWN_ACTION_POLICIES}")
    if missing_entities not in MISSING_ENTITY_POLICIES:
      raise ValueError(f"missing_entities must be one of {MISSING_ENTITY_POLICIES}")
    if min(num_train_shards, num_eval_shards, num_validation_shards) < 1:
      raise ValueError("shard counts must be >= 1")
    # None: no validation window (the split exists but is empty); every export
    # path passes one (see `validation_time`).
    self.validation_requested = validation_time is not None
    self.validation_time = int(split_time if validation_time is None else validation_time)
    if self.validation_time > int(split_time):
      raise ValueError(f"validation_time {validation_time} is after split_time {split_time}")
    self.config = config
    self.output_dir = output_dir
    self.split_time = int(split_time)
    # Numbers in time columns count this unit (a source that converts, e.g. in SQL, says "s").
    self.timestamp_unit = timestamp_unit or config.interactions.timestamp_unit
    self.check_dates = check_dates  # False only for made-up calendars (synthetic worlds)
    self.queries = EntityTable(config, "query", query_entities, query_source,
                               self.timestamp_unit, check_dates)
    self.candidates = EntityTable(config, "candidate", candidate_entities, candidate_source,
                                  self.timestamp_unit, check_dates)
    self.rule_attributes, self.rule_warnings = _rule_attributes(
        config, {"query": (query_entities, query_source),
                 "candidate": (candidate_entities, candidate_source)})
    self.blocked_pairs = blocked_pairs
    self.num_shards = {"train": num_train_shards, "validation": num_validation_shards,
                       "eval": num_eval_shards}
    self.unknown_actions = unknown_actions
    self.missing_entities = missing_entities
    self.min_users, self.min_interactions = min_users, min_interactions
    self.source_description = dict(source_description or {})
    self.overwrite = overwrite
    self.extra_stats: Dict[str, Any] = {}
    self._log_every = log_every_seconds
    self._actions = {a.name: a for a in config.interactions.actions}
    # Additive counters (see module docstring).
    nq, nc = len(self.queries), len(self.candidates)
    self.query_train = np.zeros(nq, np.int64)
    self.query_all = np.zeros(nq, np.int64)
    self.candidate_train = np.zeros(nc, np.int64)
    self.candidate_train_positive = np.zeros(nc, np.int64)
    self.query_validation_positive = np.zeros(nq, np.int64)
    self.rows = {s: 0 for s in fmt.SPLITS}
    self.shard_rows = {s: [0] * n for s, n in self.num_shards.items()}
    self.labels = {s: [0, 0] for s in fmt.SPLITS}
    self.actions = {s: collections.Counter() for s in fmt.SPLITS}
    self.weekly = collections.Counter()
    self.dropped: Dict[str, Any] = {"unknown_actions": {}, "missing_entities": 0}
    self.time_range = [None, None]
    self._writers: Dict[str, list] = {}
    self._context = None
    self._tmp: Optional[str] = None
    # With a history every record needs the whole log: rows wait in the buffer.
    self._history = (history_lib.HistoryBuffer(config.history, self.candidates.ids,
                                               {a.name: a.label for a in self._actions.values()})
                     if config.history else None)

  # -- context management: the atomic directory --------------------------------
  def __enter__(self) -> "DatasetWriter":
    import tensorflow as tf
    self._context = files.atomic_directory(self.output_dir, overwrite=self.overwrite)
    self._tmp = self._context.__enter__()
    options = tf.io.TFRecordOptions(compression_type=fmt.COMPRESSION)
    for split, n in self.num_shards.items():
      self._writers[split] = [tf.io.TFRecordWriter(os.path.join(self._tmp, name), options)
                              for name in fmt.shard_names(split, n)]
    self._started = time.time()
    self._last_log = self._started
    return self

  def __exit__(self, exc_type, exc, tb) -> bool:
    if exc_type is None and self._history:
      try:
        self._history.flush(self._write_rows)
      except BaseException as e:  # the staging directory goes, as for any failure
        exc_type, exc, tb = type(e), e, e.__traceback__
    for writers in self._writers.values():
      for w in writers:
        w.close()
    if exc_type is None:
      try:
        self._finalize(self._tmp)
      except BaseException as e:
        self._context.__exit__(type(e), e, e.__traceback__)
        raise
    suppressed = bool(self._context.__exit__(exc_type, exc, tb))
    if exc is not None and not suppressed and exc is not sys.exc_info()[1]:
      raise exc
    return suppressed

  @property
  def staging_dir(self) -> str:
    """The temporary directory that becomes `output_dir`: extra files written here
    inside the `with` block are part of the dataset (and of the manifest)."""
    if self._tmp is None:
      raise RuntimeError("staging_dir exists only inside the `with` block")
    return self._tmp

  # -- additive counters: partitions written separately sum to the whole ------
  ARRAY_COUNTERS = ("query_train", "query_all", "candidate_train", "candidate_train_positive",
                    "query_validation_positive")

  def counters(self) -> Dict[str, Any]:
    """Every counter the finalisation derives from (numpy arrays for per-entity ones)."""
    if self._history:
      self._history.flush(self._write_rows)
    out: Dict[str, Any] = {k: getattr(self, k).copy() for k in self.ARRAY_COUNTERS}
    out.update(rows=dict(self.rows), labels={s: list(v) for s, v in self.labels.items()},
               actions={s: dict(c) for s, c in self.actions.items()},
               weekly={int(k): int(v) for k, v in self.weekly.items()},
               dropped=_copy_dropped(self.dropped), time_range=list(self.time_range))
    return out

  def add_counters(self, counters: Mapping[str, Any]) -> None:
    """Adds `counters()` of another writer over the same entity tables (another partition)."""
    for key in self.ARRAY_COUNTERS:
      value = np.asarray(counters[key], np.int64)
      if value.shape != getattr(self, key).shape:
        raise ValueError(f"counter {key}: shape {value.shape} != {getattr(self, key).shape} "
                         "(the partitions were written with different entity tables)")
      getattr(self, key).__iadd__(value)
    for split in fmt.SPLITS:
      self.rows[split] += int(counters["rows"][split])
      self.labels[split] = [a + int(b) for a, b in zip(self.labels[split],
                                                       counters["labels"][split])]
      self.actions[split].update(counters["actions"][split])
    self.weekly.update({int(k): int(v) for k, v in counters["weekly"].items()})
    self.dropped = _add_dropped(self.dropped, counters["dropped"])
    lo, hi = counters["time_range"]
    if lo is not None:
      self.time_range = [lo if self.time_range[0] is None else min(lo, self.time_range[0]),
                         hi if self.time_range[1] is None else max(hi, self.time_range[1])]

  def stats(self) -> Dict[str, Any]:
    """stats.json (readiness report included) as the counters stand now."""
    if self._history:
      self._history.flush(self._write_rows)
    return self._stats()

  def finalize(self, out: str) -> None:
    """Writes everything but the interaction shards into `out` from the counters.

    `__exit__` calls it; combining partitions calls it after placing the shards
    (named by `self.num_shards`, rows in `self.shard_rows`) in `out`.
    """
    self._finalize(out)

  # -- streaming ----------------------------------------------------------------
  def add_interactions(self, chunk: pd.DataFrame, source: str = "interactions",
                       first_row: int = 0) -> None:
    """Validates, splits and writes one chunk of raw interaction rows.

    Args:
      chunk: rows with the config's interaction columns.
      source: file or table name for error messages.
      first_row: row number of the chunk's first row in `source`.
    Raises:
      DataError naming the source, column and row of the first bad value.
    """
    cfg = self.config.interactions
    problems = config_lib.check_columns(self.config, "interactions", chunk.columns, source)
    if problems:
      raise DataError("; ".join(problems))
    if chunk.empty:
      return
    for column in (cfg.query_id_column, cfg.candidate_id_column, cfg.action_column,
                   cfg.timestamp_column):
      nulls = chunk[column].isna().to_numpy()
      if nulls.any():
        row = first_row + int(np.flatnonzero(nulls)[0])
        raise DataError(f"{source}: column {column!r} row {row}: NULL in a required column "
                        f"({int(nulls.sum())} such rows in this chunk)")

    actions = self._action_names(chunk[cfg.action_column], source, first_row)
    known = np.isin(actions, list(self._actions))
    if not known.all():
      unknown = collections.Counter(actions[~known].tolist())
      if self.unknown_actions == "fail":
        listed = ", ".join(f"{v!r} x{n}" for v, n in unknown.most_common(5))
        row = first_row + int(np.flatnonzero(~known)[0])
        raise DataError(f"{source}: column {cfg.action_column!r}: unknown action values "
                        f"{listed} (first at row {row}); map them in config "
                        f"interactions.actions or pass --unknown_actions=drop")
      for value, n in unknown.items():
        self.dropped["unknown_actions"][value] = self.dropped["unknown_actions"].get(value, 0) + n

    q_idx = self.queries.lookup(chunk[cfg.query_id_column].astype(str).to_numpy(dtype=object))
    c_idx = self.candidates.lookup(
        chunk[cfg.candidate_id_column].astype(str).to_numpy(dtype=object))
    missing = (q_idx < 0) | (c_idx < 0)
    if missing.any() and self.missing_entities == "fail":
      i = int(np.flatnonzero(missing)[0])
      side, column, value = (("query", cfg.query_id_column, chunk[cfg.query_id_column].iloc[i])
                             if q_idx[i] < 0 else
                             ("candidate", cfg.candidate_id_column,
                              chunk[cfg.candidate_id_column].iloc[i]))
      raise DataError(f"{source}: column {column!r} row {first_row + i}: {value!r} is not in "
                      f"the {side} entity table ({int(missing.sum())} such rows in this chunk); "
                      "pass --missing_entities=drop to skip them")
    self.dropped["missing_entities"] += int((missing & known).sum())

    timestamps = to_unix_seconds(
        chunk[cfg.timestamp_column], source, cfg.timestamp_column, self.timestamp_unit,
        rows=first_row + np.arange(len(chunk)), check_dates=self.check_dates)
    weights = np.array([self._actions[a].weight if k else 0.0 for a, k in zip(actions, known)],
                       np.float64)
    if cfg.weight_column:
      raw = pd.to_numeric(chunk[cfg.weight_column], errors="coerce").to_numpy(np.float64)
      bad = np.isnan(raw) | (raw < 0)
      if bad.any():
        row = first_row + int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: column {cfg.weight_column!r} row {row}: weight must be a "
                        "non-negative number")
      weights = weights * raw
    keep = known & ~missing
    rows = (q_idx[keep], c_idx[keep], actions[keep], timestamps[keep], weights[keep])
    (self._history.add if self._history else self._write_rows)(*rows)
    self._maybe_log()

  def _action_names(self, column: pd.Series, source: str, first_row: int) -> np.ndarray:
    """The action column as action names; numeric values through `action_thresholds`."""
    cfg = self.config.interactions
    if not cfg.action_thresholds:
      return column.astype(str).to_numpy(dtype=object)
    values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
    names, unmapped = cfg.threshold_actions(values)
    if unmapped.any():
      i = int(np.flatnonzero(unmapped)[0])
      raise DataError(f"{source}: column {cfg.action_column!r} row {first_row + i}: value "
                      f"{column.iloc[i]!r} is not covered by config "
                      f"interactions.action_thresholds ({int(unmapped.sum())} such rows in this "
                      "chunk); widen a range so that every value maps to an action")
    return names

  def _write_rows(self, q_idx, c_idx, actions, timestamps, weights, extra=None) -> None:
    """Counts and writes rows; `extra[i]` (bytes) is appended to row i's record."""
    if len(q_idx) == 0:
      return
    labels = np.array([self._actions[a].label for a in actions], np.int64)
    is_eval = timestamps >= self.split_time
    is_validation = (timestamps >= self.validation_time) & ~is_eval
    lo, hi = int(timestamps.min()), int(timestamps.max())
    self.time_range = [lo if self.time_range[0] is None else min(lo, self.time_range[0]),
                       hi if self.time_range[1] is None else max(hi, self.time_range[1])]
    train = ~is_eval & ~is_validation
    np.add.at(self.query_all, q_idx, 1)
    np.add.at(self.query_validation_positive, q_idx[is_validation & (labels == 1)], 1)
    np.add.at(self.query_train, q_idx[train], 1)
    np.add.at(self.candidate_train, c_idx[train], 1)
    np.add.at(self.candidate_train_positive, c_idx[train & (labels == 1)], 1)
    self.weekly.update((timestamps // readiness.SECONDS_PER_WEEK).tolist())

    q_bytes, c_bytes = self.queries.serialized, self.candidates.serialized
    tails = {}  # label, weight and action repeat: encode each combination once
    for split, mask in (("train", train), ("validation", is_validation), ("eval", is_eval)):
      rows = np.flatnonzero(mask)
      if rows.size == 0:
        continue
      self.labels[split][1] += int(labels[rows].sum())
      self.labels[split][0] += int(rows.size - labels[rows].sum())
      self.actions[split].update(actions[rows].tolist())
      writers, counts = self._writers[split], self.shard_rows[split]
      start = self.rows[split]
      for j, r in enumerate(rows):
        tail_key = (actions[r], weights[r])
        tail = tails.get(tail_key)
        if tail is None:
          tail = (example_codec.bytes_entry(features_lib.ACTION, actions[r].encode("utf-8"))
                  + example_codec.int64_entry(features_lib.LABEL, labels[r])
                  + example_codec.float_entry(features_lib.WEIGHT, weights[r]))
          tails[tail_key] = tail
        record = example_codec.example(
            (q_bytes[q_idx[r]], c_bytes[c_idx[r]], tail,
             example_codec.int64_entry(features_lib.TIMESTAMP, timestamps[r]),
             extra[r] if extra is not None else b""))
        shard = (start + j) % len(writers)
        writers[shard].write(record)
        counts[shard] += 1
      self.rows[split] += rows.size

  def _maybe_log(self) -> None:
    now = time.time()
    if now - self._last_log >= self._log_every:
      total = sum(self.rows.values())
      logging.info("dataset writer: %d interactions written (%.0f rows/s)", total,
                   total / max(now - self._started, 1e-9))
      self._last_log = now

  # -- finalisation ---------------------------------------------------------------
  def _finalize(self, out: str) -> None:
    total = sum(self.rows.values())
    if total == 0:
      raise DataError("no interactions were written: the source is empty, or every row was "
                      f"dropped ({self.dropped})")
    if self.validation_requested and self.rows["validation"] == 0:
      raise DataError(
          f"no interactions between the validation time {self.validation_time} "
          f"({pd.Timestamp(self.validation_time, unit='s', tz='UTC')}) and the split time: the "
          "validation split would be empty; raise --validation_fraction or --validation_days")
    if self.rows["train"] == 0 and self.rows["validation"] > 0:
      raise DataError(
          f"no interactions before the validation time {self.validation_time} "
          f"({pd.Timestamp(self.validation_time, unit='s', tz='UTC')}): the train split would be "
          "empty; lower --validation_fraction or --validation_days")
    if self.rows["train"] == 0:
      raise DataError(f"no interactions before the split time {self.split_time} "
                      f"({pd.Timestamp(self.split_time, unit='s', tz='UTC')}): the train split "
                      "would be empty; move --split_time later")
    os.makedirs(os.path.join(out, fmt.VOCAB_DIR))
    os.makedirs(os.path.join(out, "entities"))
    preprocessing = {}
    for side, table, counts in (("query", self.queries, self.query_train),
                                ("candidate", self.candidates, self.candidate_train)):
      for feature in self.config.features(side):
        preprocessing[feature.key(side)] = self._preprocess_feature(out, side, feature, table,
                                                                    counts)
      self._write_entities(out, side, table)
    self._write_rule_attributes(out)
    if self.config.history:
      preprocessing.update(history_lib.preprocessing_entries(
          self.config.history, preprocessing[features_lib.CANDIDATE_ID]))
    files.write_json(os.path.join(out, fmt.PREPROCESSING), preprocessing)
    self._write_candidate_counts(out)
    stats = self._stats()
    files.write_json(os.path.join(out, fmt.STATS), stats)
    with open(os.path.join(out, fmt.CONFIG), "w", encoding="utf-8") as f:
      f.write(self.config.to_json() + "\n")
    self._write_tfds_metadata(out)
    manifest = {
        "format_version": fmt.FORMAT_VERSION,
        "kind": "tfrs_two_tower.dataset",
        "created_by": {"package": "tfrs_two_tower", "version": __version__},
        "config_hash": self.config.hash,
        "source": self.source_description,
        "split_time": self.split_time,
        "validation_time": self.validation_time,
        "time_range": self.time_range,
        "rows": dict(self.rows),
        "shards": {split: [{"file": name, "rows": n} for name, n in
                           zip(fmt.shard_names(split, self.num_shards[split]),
                               self.shard_rows[split])]
                   for split in fmt.SPLITS},
        "entities": {"query": len(self.queries), "candidate": len(self.candidates)},
        "files": files.file_checksums(out),
    }
    files.write_json(os.path.join(out, fmt.MANIFEST), manifest)

  def _preprocess_feature(self, out: str, side: str, feature: config_lib.Feature,
                          table: EntityTable, counts: np.ndarray) -> Dict[str, Any]:
    key = feature.key(side)
    spec: Dict[str, Any] = {"type": feature.type, "side": side, "name": feature.name}
    if feature.type == "numeric":
      spec.update(_numeric_constants(feature, table.values[key], counts))
      return spec
    if feature.type == "id":
      tokens = pd.Series(counts, index=table.ids)
    elif feature.type == "categorical":
      tokens = pd.Series(counts).groupby(table.values[key]).sum()
    elif feature.type == "multi_categorical":
      lists = table.values[key]
      lengths = np.fromiter((len(v) for v in lists), np.int64, len(lists))
      flat = [t for v in lists for t in v[:feature.max_length]]
      clipped = np.minimum(lengths, feature.max_length)
      tokens = pd.Series(np.repeat(counts, clipped)).groupby(np.array(flat, dtype=object)).sum() \
          if flat else pd.Series(dtype=np.int64)
    else:  # geo
      cells = features_lib.geo_cell_tokens(table.values[key][:, 0], table.values[key][:, 1],
                                           feature.cell_degrees)
      tokens = pd.Series(counts).groupby(cells).sum()
      spec["cell_degrees"] = feature.cell_degrees
    tokens = tokens[(tokens >= feature.min_count) & (tokens.index != features_lib.MISSING_TOKEN)]
    frame = pd.DataFrame({"token": tokens.index.astype(str), "count": tokens.to_numpy()})
    frame = frame.sort_values(["count", "token"], ascending=[False, True], kind="stable")
    if feature.max_vocab_size:
      frame = frame.iloc[:feature.max_vocab_size]
    path = fmt.vocab_file(key)
    _write_tsv(os.path.join(out, path), frame)
    spec.update(vocabulary=path, vocab_size=int(len(frame)),
                num_oov_buckets=feature.num_oov_buckets)
    if feature.type == "multi_categorical":
      spec.update(max_length=feature.max_length, pooling=feature.pooling)
    return spec

  def _write_entities(self, out: str, side: str, table: EntityTable) -> None:
    import tensorflow as tf
    created = [example_codec.int64_entry(features_lib.CREATED_AT, max(int(t), 0))
               if t >= 0 else b"" for t in table.created_at]
    options = tf.io.TFRecordOptions(compression_type=fmt.COMPRESSION)
    with tf.io.TFRecordWriter(os.path.join(out, fmt.ENTITY_FILES[side]), options) as w:
      for features_bytes, created_bytes in zip(table.serialized, created):
        w.write(example_codec.example((features_bytes, created_bytes)))

  def _write_rule_attributes(self, out: str) -> None:
    for side, attributes in self.rule_attributes.items():
      attributes.save(os.path.join(out, fmt.ELIGIBILITY_FILES[side]))
    if self.config.eligibility is not None and self.config.eligibility.blocked is not None:
      pairs = self.blocked_pairs if self.blocked_pairs is not None else pd.DataFrame(
          {c: [] for c in (self.config.eligibility.blocked.query_id_column,
                           self.config.eligibility.blocked.candidate_id_column)})
      query_ids, candidate_ids = eligibility_lib.blocked_pairs(pairs, self.config.eligibility)
      with open(os.path.join(out, fmt.BLOCKED_PAIRS), "wb") as f:
        np.savez(f, query_ids=query_ids.astype(str), candidate_ids=candidate_ids.astype(str))

  def _eligibility_stats(self) -> Optional[Dict[str, Any]]:
    """Users left without any eligible candidate (the rules' masks; exact up to
    ELIGIBILITY_SAMPLE query users, estimated on a sample beyond)."""
    if len(self.rule_attributes) < 2:
      return None
    rules = eligibility_lib.for_tables(self.config, self.rule_attributes["query"],
                                       self.rule_attributes["candidate"], now=self.split_time)
    n = len(self.rule_attributes["query"])
    rows = np.arange(n)
    if n > ELIGIBILITY_SAMPLE:
      rows = np.sort(np.random.default_rng(0).choice(n, ELIGIBILITY_SAMPLE, replace=False))
    without = rules.users_without_candidates(rows) * n / rows.size
    share = without / max(n, 1)
    if share > ELIGIBILITY_WARN_SHARE:
      logging.warning("eligibility rules leave %.1f%% of the users (%d) with no eligible candidate",
                  100 * share, round(without))
    return {"rules": self.config.eligibility.names,
            "users_without_candidates": int(round(without)),
            "users_without_candidates_share": round(share, 4),
            "estimated_from_sample": bool(rows.size < n),
            "warnings": self.rule_warnings}

  def _write_candidate_counts(self, out: str) -> None:
    frame = pd.DataFrame({"candidate_id": self.candidates.ids.astype(str),
                          "interactions": self.candidate_train,
                          "positives": self.candidate_train_positive})
    frame = frame.sort_values(["positives", "interactions", "candidate_id"],
                              ascending=[False, False, True], kind="stable")
    _write_tsv(os.path.join(out, fmt.CANDIDATE_COUNTS), frame, header=True)

  def _stats(self) -> Dict[str, Any]:
    created = self.queries.created_at
    weekly_new = collections.Counter((created[created >= 0] // readiness.SECONDS_PER_WEEK).tolist())
    report = readiness.readiness_report(
        self.query_all, positives=sum(self.labels[s][1] for s in fmt.SPLITS),
        negatives=sum(self.labels[s][0] for s in fmt.SPLITS),
        weekly_interactions=self.weekly, weekly_new_users=weekly_new,
        min_users=self.min_users, min_interactions=self.min_interactions)
    new_query = int(((self.query_train == 0) & (self.query_all > 0)).sum())
    stats = {
        "rows": dict(self.rows),
        "labels": {s: {"negative": n, "positive": p} for s, (n, p) in self.labels.items()},
        "actions": {s: dict(sorted(c.items())) for s, c in self.actions.items()},
        "dropped": self.dropped,
        "split_time": self.split_time,
        "validation_time": self.validation_time,
        "time_range": self.time_range,
        "entities": {"query": len(self.queries), "candidate": len(self.candidates),
                     "query_with_interactions": int((self.query_all > 0).sum()),
                     "query_new_in_eval": new_query,
                     "query_with_validation_likes":
                         int((self.query_validation_positive > 0).sum()),
                     "candidate_with_train_interactions": int((self.candidate_train > 0).sum())},
        "readiness": report,
    }
    eligibility = self._eligibility_stats()
    if eligibility is not None:
      stats["eligibility"] = eligibility
    stats.update(self.extra_stats)
    return stats

  def _write_tfds_metadata(self, out: str) -> None:
    import tensorflow as tf
    import tensorflow_datasets as tfds
    spec = features_lib.parse_spec(self.config)
    connectors = {}
    for key, feature in spec.items():
      if isinstance(feature, tf.io.VarLenFeature):
        connectors[key] = tfds.features.Tensor(shape=(None,), dtype=tf.string)
      else:
        connectors[key] = tfds.features.Tensor(shape=tuple(feature.shape), dtype=feature.dtype)
    split_infos = [
        tfds.core.SplitInfo(name=split, shard_lengths=list(self.shard_rows[split]),
                            num_bytes=sum(os.path.getsize(os.path.join(out, n))
                                          for n in fmt.shard_names(split, self.num_shards[split])))
        for split in fmt.SPLITS]
    tfds.folder_dataset.write_metadata(
        data_dir=out, features=tfds.features.FeaturesDict(connectors), split_infos=split_infos,
        filename_template=None, check_data=False,
        description="Swipe interactions written by tfrs_two_tower (gzip TFRecord shards; read "
                    "with tfrs_two_tower.data.reader.tfds_dataset).")


def _rule_attributes(config: config_lib.Config, tables):
  """side -> eligibility.Attributes of the side(s) the rules read, and the mapping warnings;
  raises DataError naming each rule whose columns or values do not match the data."""
  if config.eligibility is None:
    return {}, []
  out, warnings = {}, []
  for side, (table, source) in tables.items():
    if config.entity(side).name != config.eligibility.entity:
      continue
    try:
      out[side] = eligibility_lib.encode(config, table, source,
                                         warnings if side == "query" else None)
    except eligibility_lib.EligibilityDataError as e:
      raise DataError(str(e)) from None
  for warning in warnings:
    logging.warning(warning)
  return out, warnings


def _copy_dropped(dropped: Mapping[str, Any]) -> Dict[str, Any]:
  return {k: dict(v) if isinstance(v, Mapping) else v for k, v in dropped.items()}


def _add_dropped(a: Mapping[str, Any], b: Mapping[str, Any]) -> Dict[str, Any]:
  """Sums two `dropped` dicts: numbers add, nested value -> count dicts add per value."""
  out = _copy_dropped(a)
  for key, value in b.items():
    if isinstance(value, Mapping):
      merged = out.setdefault(key, {})
      for k, n in value.items():
        merged[k] = merged.get(k, 0) + int(n)
    else:
      out[key] = out.get(key, 0) + int(value)
  return out


def _numeric_constants(feature: config_lib.Feature, values: np.ndarray,
                       counts: np.ndarray) -> Dict[str, Any]:
  """Normalisation constants, weighted by how often each entity appears in train."""
  transformed = transform_numeric(values, feature.normalization)
  valid = ~np.isnan(transformed)
  w = counts[valid].astype(np.float64)
  if feature.normalization == "none" or w.sum() == 0:
    mean, std = 0.0, 1.0
  else:
    mean = float(np.average(transformed[valid], weights=w))
    std = float(np.sqrt(np.average((transformed[valid] - mean) ** 2, weights=w)))
    std = std if std > 1e-6 else 1.0
  if feature.fill == "mean":
    fill = mean
  else:
    fill = float(transform_numeric(np.array([feature.fill], np.float64), feature.normalization)[0])
  total = counts.sum()
  return {"transform": "log1p" if feature.normalization == "log_zscore" else "identity",
          "normalization": feature.normalization, "mean": mean, "std": std,
          "fill_transformed": fill,
          "missing_fraction": float(counts[~valid].sum() / total) if total else 0.0,
          "min": float(np.nanmin(values)) if valid.any() else None,
          "max": float(np.nanmax(values)) if valid.any() else None,
          "bucket_boundaries": list(feature.bucket_boundaries)}


def transform_numeric(values: np.ndarray, normalization: str) -> np.ndarray:
  """The pre-normalisation transform: log1p(max(x, 0)) for log_zscore, else identity."""
  values = np.asarray(values, np.float64)
  if normalization == "log_zscore":
    return np.log1p(np.maximum(values, 0.0))
  return values


def _write_tsv(path: str, frame: pd.DataFrame, header: bool = False) -> None:
  frame.to_csv(path, sep="\t", index=False, header=header, lineterminator="\n")


def validation_time(split_time: int, start_of_last: Callable[[float], int], *,
                    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
                    validation_days: float = 0.0) -> int:
  """The start of the validation window: the last part of train by time.

  Args:
    split_time: the train/eval boundary (unix seconds).
    start_of_last: f(share) -> the time leaving the last `share` of the
      interactions before `split_time` after it (a source's
      `split_time(share, before=split_time)`); used with `validation_fraction`.
    validation_fraction: share of the pre-split interactions that become validation.
    validation_days: a window of this many days before `split_time` instead (wins when > 0).
  """
  if validation_days < 0:
    raise ValueError(f"--validation_days must be >= 0, got {validation_days}")
  if validation_days > 0:
    return int(split_time - round(validation_days * 86400))
  if not 0 < validation_fraction < 1:
    raise ValueError(f"--validation_fraction must be in (0, 1), got {validation_fraction}")
  return int(start_of_last(validation_fraction))


def default_split_time(timestamps: Sequence[int], eval_fraction: float) -> int:
  """The time boundary leaving the last `eval_fraction` of interactions for eval."""
  if not 0 < eval_fraction < 1:
    raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
  return int(np.quantile(np.asarray(timestamps, np.int64), 1 - eval_fraction, method="higher"))
