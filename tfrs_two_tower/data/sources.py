"""What every export source (PostgreSQL, CSV/Parquet dumps) shares.

* The errors, each with its own process exit code, so a scheduler can tell
  "database down, retry later" from "the schema changed, call a human".
* The column type rules: every config column has a set of acceptable type
  categories (PostgreSQL's `pg_type.typcategory` letters; file sources map their
  types onto the same letters).
* The audit of the interactions before anything is written: NULLs in required
  columns, unknown action values, swipes whose profile is missing, counted over
  the whole source so that an error states the full extent of the problem.
* The query-id partition hash, computed identically in SQL and in Python.
* `export`: audit -> split time -> entity tables -> stream of deduplicated
  interactions -> `DatasetWriter` -> readiness gate.

A source is duck-typed (see `PostgresSource`, `FileSource`):

  description: dict for the manifest (no secrets).
  audit(partition) -> InteractionAudit        (also checks tables, columns, types)
  split_time(eval_fraction, before=None) -> int  (over all partitions; only the
      interactions before `before` when given: the validation window's start)
  entities(side) -> pd.DataFrame              (raw entity table of the config)
  interaction_chunks(chunk_size, partition) -> iterator of DataFrames
      deduplicated: one row per (query id, candidate id), the latest (ties: the
      greatest action string); timestamps as int64 unix seconds.
"""

import dataclasses
import hashlib
import math
import os
import re
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from absl import logging

from tfrs_two_tower import config as config_lib
from tfrs_two_tower import files
from tfrs_two_tower.data import dataset_format as fmt
from tfrs_two_tower.data import impressions as impressions_lib
from tfrs_two_tower.data import readiness
from tfrs_two_tower.data import writer as writer_lib

# -- errors and exit codes -------------------------------------------------------


class ExportError(writer_lib.DataError):
  """An export that cannot proceed; `exit_code` is the process exit status."""
  exit_code = 19


class NotReadyError(ExportError):
  """The readiness gate is not met (and --force was not given)."""
  exit_code = 10


class UnreachableError(ExportError):
  exit_code = 11


class AuthenticationError(ExportError):
  exit_code = 12


class MissingTableError(ExportError):
  """A table or column the config names does not exist (the message names the config key)."""
  exit_code = 13


class ColumnTypeError(ExportError):
  exit_code = 14


class EmptyResultError(ExportError):
  exit_code = 15


class UnknownActionError(ExportError):
  exit_code = 16


class NullValueError(ExportError):
  exit_code = 17


class MissingEntityError(ExportError):
  exit_code = 18


class PartitionError(ExportError):
  exit_code = 20


class LockTimeoutError(ExportError):
  """A table stayed locked by another session longer than --lock_timeout."""
  exit_code = 21


EXIT_CODES = {cls.__name__: cls.exit_code for cls in (
    NotReadyError, UnreachableError, AuthenticationError, MissingTableError, ColumnTypeError,
    EmptyResultError, UnknownActionError, NullValueError, MissingEntityError, ExportError,
    PartitionError, LockTimeoutError)}

# -- secrets ---------------------------------------------------------------------------

_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)(?P<pw>[^@\s]*)(?=@)",
                           re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)",
                          re.IGNORECASE)
REDACTED = "***"


def redact(text: Any, secrets: Iterable[str] = ()) -> str:
  """`text` with every password removed: URL userinfo, `password=...`, and `secrets`.

  Used on everything that leaves the process: logs, error messages, manifests.
  """
  out = str(text)
  for secret in secrets:
    if secret:
      out = out.replace(secret, REDACTED)
  out = _URL_PASSWORD.sub(lambda m: m.group("head") + (REDACTED if m.group("pw") else ""), out)
  return _KV_PASSWORD.sub(lambda m: m.group("head") + REDACTED, out)


# -- column types ------------------------------------------------------------------------

# pg_type.typcategory letters: A array, B boolean, D date/time, E enum, N numeric,
# S string, U user-defined (uuid).
CATEGORY_NAMES = {"A": "array", "B": "boolean", "D": "date/time", "E": "enum", "N": "numeric",
                  "S": "string", "U": "uuid/user-defined"}
_ID = frozenset("SUN")
_TIME = frozenset("DN")
_RULES = {"id": _ID, "categorical": frozenset("SENBU"), "multi_categorical": frozenset("AS"),
          "numeric": frozenset("NB"), "geo": frozenset("N")}
_ATTRIBUTE_RULES = {"list": frozenset("SEA"), "number": frozenset("N"), "time": _TIME}


def column_rules(config: config_lib.Config, kind: str) -> Dict[str, Tuple[frozenset, str]]:
  """Column -> (accepted type categories, config key asking for it).

  Args:
    kind: "interactions", "query" or "candidate".
  """
  rules: Dict[str, Tuple[frozenset, str]] = {}
  if kind == "interactions":
    cfg = config.interactions
    # Numeric actions (ratings) are mapped by interactions.action_thresholds.
    action_types = frozenset("SEN") if cfg.action_thresholds else frozenset("SE")
    for key, allowed in (("query_id_column", _ID), ("candidate_id_column", _ID),
                         ("action_column", action_types), ("timestamp_column", _TIME),
                         ("weight_column", frozenset("N"))):
      column = getattr(cfg, key)
      if column:
        rules[column] = (allowed, f"interactions.{key}")
    return rules
  entity = config.entity(kind)
  rules[entity.id_column] = (_ID, f"entities.{entity.name}.id_column")
  if entity.created_at_column:
    rules[entity.created_at_column] = (_TIME, f"entities.{entity.name}.created_at_column")
  for i, feature in enumerate(entity.features):
    for column in feature.columns:
      rules.setdefault(column, (_RULES[feature.type],
                                f"entities.{entity.name}.features[{i}] ({feature.name})"))
  for column, role in entity.attributes:
    rules.setdefault(column, (_ATTRIBUTE_RULES[role], "eligibility / baseline rules"))
  return rules


def check_column_types(config: config_lib.Config, kind: str, categories: Mapping[str, str],
                       type_names: Mapping[str, str], source: str) -> None:
  """Raises ColumnTypeError listing every column whose type the config cannot use.

  Args:
    categories: column -> type category letter (columns without evidence omitted).
    type_names: column -> the source's own type name, for the message.
  """
  problems = []
  for column, (allowed, key) in column_rules(config, kind).items():
    category = categories.get(column)
    if category is not None and category not in allowed:
      expected = " or ".join(CATEGORY_NAMES[c] for c in sorted(allowed))
      problems.append(f"{source}: column {column!r} has type {type_names.get(column, category)} "
                      f"({CATEGORY_NAMES.get(category, category)}); config {key} needs "
                      f"{expected}")
  if problems:
    raise ColumnTypeError("; ".join(problems))


def check_columns_present(config: config_lib.Config, kind: str, available: Sequence[str],
                          source: str) -> None:
  problems = config_lib.check_columns(config, kind, available, source)
  if problems:
    raise MissingTableError("; ".join(problems))


# -- the audit -------------------------------------------------------------------------------


def threshold_action_counts(config: config_lib.Config, counts: Mapping[str, int],
                            source: str) -> Dict[str, int]:
  """Counts per raw numeric action value (as text) -> counts per mapped action name.

  Raises UnknownActionError naming `interactions.action_thresholds` when a value
  is not a number or no threshold range covers it.
  """
  cfg = config.interactions
  raw = list(counts)
  values = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce").to_numpy(np.float64)
  names, unmapped = cfg.threshold_actions(values)
  if unmapped.any():
    bad = sorted(((raw[i], counts[raw[i]]) for i in np.flatnonzero(unmapped)),
                 key=lambda x: -x[1])
    listed = ", ".join(f"{v!r} x{n}" for v, n in bad[:5])
    raise UnknownActionError(
        f"{source}: {sum(n for _, n in bad)} interactions have {cfg.action_column!r} values "
        f"that config interactions.action_thresholds does not map: {listed}; widen a range so "
        "that every value maps to an action")
  out: Dict[str, int] = {}
  for name, value in zip(names, raw):
    out[name] = out.get(name, 0) + int(counts[value])
  return out



@dataclasses.dataclass
class InteractionAudit:
  """Counts over the exported interactions, before deduplication.

  Attributes:
    rows: interaction rows (of the partition).
    nulls: required column -> rows where it is NULL.
    actions: action value -> rows (NULL actions excluded).
    missing: "query"/"candidate" -> rows whose id is not in that entity table.
    missing_examples: a few ids per side, for the message.
    entities: "query"/"candidate" -> rows in that entity table.
  """
  rows: int
  nulls: Dict[str, int]
  actions: Dict[str, int]
  missing: Dict[str, int]
  missing_examples: Dict[str, List[str]]
  entities: Dict[str, int]

  def check(self, config: config_lib.Config, source: str, unknown_actions: str,
            missing_entities: str, partition: "Partition") -> None:
    """Raises the error (with full counts) the policies make of these counts."""
    for side, n in self.entities.items():
      if n == 0:
        raise EmptyResultError(f"{source}: the {side} entity table "
                               f"({config.entity(side).table!r}) has no rows")
    if self.rows == 0:
      where = "" if partition.whole else f" in partition {partition.index}/{partition.count}"
      raise EmptyResultError(f"{source}: the interactions ({config.interactions.table!r}) have "
                             f"no rows{where}")
    nulls = {c: n for c, n in self.nulls.items() if n}
    if nulls:
      listed = ", ".join(f"{c!r}: {n}" for c, n in nulls.items())
      raise NullValueError(f"{source}: NULLs in required interaction columns ({listed} rows); "
                           "filter them with an interactions.sql query or fix the data")
    # Numeric actions map through interactions.action_thresholds; a value no range
    # covers is refused whatever --unknown_actions says (the config is wrong, not the row).
    actions = (threshold_action_counts(config, self.actions, source)
               if config.interactions.action_thresholds else self.actions)
    if unknown_actions == "fail":
      check_actions(config, actions, source, remedy=" or pass --unknown_actions=drop")
    if any(self.missing.values()) and missing_entities == "fail":
      columns = {"query": config.interactions.query_id_column,
                 "candidate": config.interactions.candidate_id_column}
      parts = [f"{n} with a {columns[side]!r} not in {config.entity(side).table!r} (e.g. "
               f"{', '.join(map(repr, self.missing_examples.get(side, [])[:3]))})"
               for side, n in self.missing.items() if n]
      raise MissingEntityError(f"{source}: interactions reference missing entities: "
                               f"{'; '.join(parts)}; pass --missing_entities=drop to skip them")


def check_actions(config: config_lib.Config, counts: Mapping[str, int], source: str,
                  remedy: str = "") -> None:
  """Refuses action values the config does not map (interactions.actions).

  Args:
    counts: action value (as text) -> number of rows.
    source: file or table, for the message.
    remedy: what else the caller lets the user do, appended to the message.
  Raises:
    UnknownActionError naming the values and their counts, most frequent first.
  """
  known = {a.name for a in config.interactions.actions}
  unknown = {a: n for a, n in counts.items() if a not in known}
  if unknown:
    listed = ", ".join(f"{a!r} x{n}" for a, n in sorted(unknown.items(), key=lambda x: -x[1]))
    raise UnknownActionError(
        f"{source}: {sum(unknown.values())} interactions have action values the config does "
        f"not map: {listed} (column {config.interactions.action_column!r}; mapped: "
        f"{', '.join(sorted(known))}); map them in config interactions.actions{remedy}")


# -- partitions --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Partition:
  """Hash partition `index` of `count` over the query ids (count 1: everything)."""
  count: int = 1
  index: int = 0

  def __post_init__(self):
    if self.count < 1 or not 0 <= self.index < self.count:
      raise PartitionError(f"--partition must be in [0, --num_partitions={self.count}), "
                           f"got {self.index}")

  @property
  def whole(self) -> bool:
    return self.count == 1


def partition_of(ids: Sequence[str], count: int) -> np.ndarray:
  """Partition of each id: the first 32 bits of md5(id) (big-endian) modulo `count`.

  The SQL twin is `mod(('x' || lpad(substr(md5(id), 1, 8), 16, '0'))::bit(64)::bigint, count)`
  (`postgres_source.partition_sql`); hashtext() would not be portable to Python.
  """
  return np.fromiter((int(hashlib.md5(str(i).encode("utf-8")).hexdigest()[:8], 16) % count
                      for i in ids), np.int64, len(ids))


def split_index(num_rows: int, eval_fraction: float) -> int:
  """Position (0-based, ascending time) of the split time among `num_rows` timestamps.

  The same float arithmetic as numpy's quantile(method="higher") in
  `writer.default_split_time`: ceil((n - 1) * (1 - eval_fraction)).
  """
  if not 0 < eval_fraction < 1:
    raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
  return int(math.ceil((num_rows - 1) * (1.0 - eval_fraction)))


# -- the export --------------------------------------------------------------------------------


# Seconds between the export's progress lines (absl.logging.log_every_n_seconds).
PROGRESS_EVERY_SECONDS = 5.0


def export(source, config: config_lib.Config, output_dir: str, *,
           split_time: Optional[int] = None, eval_fraction: float = 0.15,
           validation_fraction: float = writer_lib.DEFAULT_VALIDATION_FRACTION,
           validation_days: float = 0.0, partition: Partition = Partition(), unknown_actions: str = "fail",
           missing_entities: str = "fail", min_users: int = readiness.DEFAULT_MIN_USERS,
           min_interactions: int = readiness.DEFAULT_MIN_INTERACTIONS, force: bool = False,
           readiness_path: Optional[str] = None, chunk_size: int = 100_000,
           num_train_shards: int = 4, num_eval_shards: int = 2, overwrite: bool = False,
           log: Callable[[str], None] = print,
           progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, Any]:
  """Exports `source` into the dataset directory `output_dir`; returns its stats.

  Args:
    partition: export only this hash partition of the query ids; the output is
      then a partition directory for `partitions.combine` (no readiness gate).
    readiness_path: where the readiness report goes when the gate fails
      (default `<output_dir>.readiness.json`, beside the never-created output).
    progress: called after each chunk with (rows streamed, rows audited).
  Raises:
    ExportError subclasses (see EXIT_CODES); writer_lib.DataError for bad values.
    Nothing is left at `output_dir` when it raises.
  """
  started = time.time()
  audit = source.audit(partition)
  label = source.description.get("label", source.description.get("kind", "source"))
  audit.check(config, label, unknown_actions, missing_entities, partition)
  log(f"export: {label}: {audit.rows:,} interactions"
      + ("" if partition.whole else f" in partition {partition.index}/{partition.count}")
      + f", {audit.entities['query']:,} query and {audit.entities['candidate']:,} candidate "
      "entities; audit %.1fs" % (time.time() - started))
  if split_time is None:
    split_time = source.split_time(eval_fraction)
    log(f"export: split time {pd.Timestamp(split_time, unit='s', tz='UTC')} (last "
        f"{eval_fraction:.0%} of interactions by time are eval)")
  try:
    validation_time = writer_lib.validation_time(
        split_time, lambda share: source.split_time(share, before=split_time),
        validation_fraction=validation_fraction, validation_days=validation_days)
  except ValueError as e:
    raise writer_lib.DataError(str(e)) from None
  log(f"export: validation from {pd.Timestamp(validation_time, unit='s', tz='UTC')} ("
      + (f"the last {validation_days:g} days" if validation_days > 0 else
         f"the last {validation_fraction:.0%} of the pre-eval interactions")
      + " by time select the model)")
  queries = source.entities("query")
  candidates = queries if config.same_entity_both_sides else source.entities("candidate")
  description = dict(source.description, partition=dataclasses.asdict(partition))
  with writer_lib.DatasetWriter(
      config, output_dir, split_time, queries, candidates, validation_time=validation_time,
      query_source=f"{label} {config.entity('query').table}",
      candidate_source=f"{label} {config.entity('candidate').table}",
      num_train_shards=num_train_shards, num_eval_shards=num_eval_shards,
      unknown_actions=unknown_actions, missing_entities=missing_entities, min_users=min_users,
      min_interactions=min_interactions, source_description=description, overwrite=overwrite,
      log_every_seconds=math.inf, timestamp_unit=source.timestamp_unit,
      blocked_pairs=source.blocked_pairs()) as writer:
    streaming, streamed = time.time(), 0  # after the writer's TensorFlow import
    for chunk in source.interaction_chunks(chunk_size, partition):
      writer.add_interactions(chunk, source=f"{label} {config.interactions.table}",
                              first_row=streamed)
      streamed += len(chunk)
      elapsed = max(time.time() - streaming, 1e-9)
      logging.log_every_n_seconds(
          logging.INFO, "export: %d/%d interactions (%.0f%%), %.0f rows/s, %.1fs",
          PROGRESS_EVERY_SECONDS, streamed, audit.rows, 100 * streamed / max(audit.rows, 1),
          streamed / elapsed, elapsed)
      if progress is not None:
        progress(streamed, audit.rows)
    writer.dropped["duplicates"] = audit.rows - streamed
    elapsed = max(time.time() - streaming, 1e-9)
    log(f"export: streamed {streamed:,}/{audit.rows:,} interactions, "
        f"{streamed / elapsed:,.0f} rows/s, {elapsed:.1f}s")
    _add_impressions(source, config, writer, partition, label, log)
    if writer.dropped["duplicates"]:
      log(f"export: {writer.dropped['duplicates']:,} duplicate interactions (same query and "
          "candidate) dropped; kept the latest of each")
    stats = writer.stats()
    if partition.whole:
      readiness_gate(stats["readiness"], force,
                     readiness_path or output_dir.rstrip("/") + ".readiness.json", log)
    else:  # the gate applies to the combined dataset
      write_partition_files(writer, partition, queries, candidates)
  log(f"export: wrote {output_dir}: train {stats['rows']['train']:,}, validation "
      f"{stats['rows']['validation']:,}, eval {stats['rows']['eval']:,} interactions in "
      f"{time.time() - started:.1f}s")
  return stats


def write_partition_files(writer: writer_lib.DatasetWriter, partition: Partition,
                          queries: pd.DataFrame, candidates: pd.DataFrame) -> None:
  """Adds the `partition/` folder to a writer's staging directory (inside its `with`)."""
  out = os.path.join(writer.staging_dir, fmt.PARTITION_DIR)
  os.makedirs(out)
  counters = writer.counters()
  arrays = {k: counters.pop(k) for k in writer_lib.DatasetWriter.ARRAY_COUNTERS}
  np.savez(os.path.join(writer.staging_dir, fmt.PARTITION_COUNTERS), **arrays)
  files.write_json(os.path.join(writer.staging_dir, fmt.PARTITION_JSON),
                   {"count": partition.count, "index": partition.index,
                    "shard_rows": writer.shard_rows, "counters": counters})
  for side, table, entities in (("query", queries, writer.queries),
                                ("candidate", candidates, writer.candidates)):
    if side == "candidate" and writer.config.same_entity_both_sides:
      break
    column = writer.config.entity(side).created_at_column
    if column:  # as datetimes: the source's unit of numeric times is not stored
      table = table.assign(**{column: pd.to_datetime(entities.created_at, unit="s", utc=True)})
    table.to_parquet(os.path.join(writer.staging_dir, fmt.PARTITION_RAW_ENTITIES[side]),
                     index=False)


def _add_impressions(source, config: config_lib.Config, writer: writer_lib.DatasetWriter,
                     partition: Partition, label: str, log: Callable[[str], None]) -> None:
  """Copies the feed's impressions log (config `impressions`) into the dataset, if any."""
  if config.impressions is None:
    return
  if not partition.whole:
    log("export: impressions are exported with whole datasets only, not partitions")
    return
  found = source.impressions()
  if found is None:
    log(f"export: no impressions log ({config.impressions.table!r} not found in {label}): "
        "off-policy estimates will be unavailable (docs/evaluation.md, 'Propensity logging')")
    return
  chunks, where = found
  impressions_lib.add_to_dataset(writer, chunks, where)
  log(f"export: {writer.extra_stats['impressions']['rows']:,} impressions from {where}")


def readiness_gate(report: Mapping[str, Any], force: bool, readiness_path: str,
          log: Callable[[str], None]) -> None:
  """Refuses (NotReadyError) a dataset below the users' readiness gate unless forced."""
  log(readiness.format_readiness(report))
  if report["verdict"] == "ready":
    return
  if force:
    log("export: readiness gate not met; continuing because of --force")
    return
  files.write_json(os.path.abspath(readiness_path), report)
  raise NotReadyError(
      f"readiness gate not met ({report['verdict']}): " + "; ".join(report["reasons"])
      + f". The report is in {readiness_path}; no dataset was written. "
      + report.get("advice", "pass --force to export anyway").capitalize() + ".")
