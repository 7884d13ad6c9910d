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

The writer holds the counters and the atomic directory; each step is its own
module: `chunk_validation` (raw rows -> kept rows or a DataError), `shard_writer`
(the TFRecord shards) and `finalization` (vocabularies, numeric fits, metadata).
"""

import collections
import logging
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from tfrs_two_tower import config as config_lib
from tfrs_two_tower import eligibility as eligibility_lib
from tfrs_two_tower import features as features_lib
from tfrs_two_tower import files
from tfrs_two_tower.data import chunk_validation
from tfrs_two_tower.data import dataset_format as fmt
from tfrs_two_tower.data import example_codec
from tfrs_two_tower.data import finalization
from tfrs_two_tower.data import history as history_lib
from tfrs_two_tower.data import readiness
from tfrs_two_tower.data import shard_writer
from tfrs_two_tower.data.chunk_validation import DataError
from tfrs_two_tower.data.chunk_validation import to_unix_seconds

UNKNOWN_ACTION_POLICIES = ("fail", "drop")
# The last 10 % of the pre-eval interactions by time select the model (see docs/data.md).
DEFAULT_VALIDATION_FRACTION = 0.1
MISSING_ENTITY_POLICIES = ("fail", "drop")


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
    self._shards: Optional[shard_writer.ShardWriter] = None
    self._context = None
    self._tmp: Optional[str] = None
    # With a history every record needs the whole log: rows wait in the buffer.
    self._history = (history_lib.HistoryBuffer(config.history, self.candidates.ids,
                                               {a.name: a.label for a in self._actions.values()})
                     if config.history else None)

  # -- context management: the atomic directory --------------------------------
  def __enter__(self) -> "DatasetWriter":
    self._context = files.atomic_directory(self.output_dir, overwrite=self.overwrite)
    self._tmp = self._context.__enter__()
    self._shards = shard_writer.ShardWriter(self._tmp, self.num_shards)
    self._started = time.time()
    self._last_log = self._started
    return self

  def __exit__(self, exc_type, exc, tb) -> bool:
    if exc_type is None and self._history:
      try:
        self._history.flush(self._write_rows)
      except BaseException as e:  # the staging directory goes, as for any failure
        exc_type, exc, tb = type(e), e, e.__traceback__
    if self._shards is not None:
      self._shards.close()
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
    return finalization.stats(self)

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
    problems = config_lib.check_columns(self.config, "interactions", chunk.columns, source)
    if problems:
      raise DataError("; ".join(problems))
    if chunk.empty:
      return
    rows = chunk_validation.validate(
        self.config, chunk, source, first_row, self.queries, self.candidates,
        unknown_actions=self.unknown_actions, missing_entities=self.missing_entities,
        timestamp_unit=self.timestamp_unit, check_dates=self.check_dates)
    self.dropped = _add_dropped(self.dropped, rows.dropped)
    (self._history.add if self._history else self._write_rows)(
        rows.query_index, rows.candidate_index, rows.actions, rows.timestamps, rows.weights)
    self._maybe_log()


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

    tails = {}  # label, weight and action repeat: encode each combination once
    for split, mask in (("train", train), ("validation", is_validation), ("eval", is_eval)):
      rows = np.flatnonzero(mask)
      if rows.size == 0:
        continue
      self.labels[split][1] += int(labels[rows].sum())
      self.labels[split][0] += int(rows.size - labels[rows].sum())
      self.actions[split].update(actions[rows].tolist())
      self._shards.write(split, self._records(rows, q_idx, c_idx, actions, labels, timestamps,
                                              weights, extra, tails),
                         self.rows[split], self.shard_rows[split])
      self.rows[split] += rows.size

  def _records(self, rows, q_idx, c_idx, actions, labels, timestamps, weights, extra, tails):
    """The serialised tf.train.Example of each row in `rows` (entity parts are encoded once
    per entity, the label/weight/action tail once per combination in `tails`).

    Per row only Python lists and bytes (numpy scalars cost ~0.1 us per access); the
    timestamp entries are encoded for all `rows` at once (31 -> 24 CPU us a row).
    """
    q_bytes, c_bytes = self.queries.serialized, self.candidates.serialized
    stamps = example_codec.int64_entries(features_lib.TIMESTAMP, timestamps[rows])
    extras = [extra[r] for r in rows.tolist()] if extra is not None else [b""] * len(rows)
    for q, c, action, weight, label, stamp, more in zip(
        q_idx[rows].tolist(), c_idx[rows].tolist(), actions[rows].tolist(),
        weights[rows].tolist(), labels[rows].tolist(), stamps, extras):
      tail = tails.get((action, weight))
      if tail is None:
        tail = (example_codec.bytes_entry(features_lib.ACTION, action.encode("utf-8"))
                + example_codec.int64_entry(features_lib.LABEL, label)
                + example_codec.float_entry(features_lib.WEIGHT, weight))
        tails[(action, weight)] = tail
      yield example_codec.example((q_bytes[q], c_bytes[c], tail, stamp, more))

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
    finalization.write_all(self, out)


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
