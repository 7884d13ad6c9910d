"""Reads the config's tables from CSV or Parquet dumps for `sources.export`.

For users who cannot reach the database from the training box: Supabase's
dashboard exports each table as CSV (arrays look like `{a,b}`, NULL is an empty
field, timestamps `2026-01-05 10:00:00+00`); `pg_dump`-to-Parquet tools and
`World.save` write Parquet. A table `swipes` is read from `<input_dir>/swipes.parquet`,
`swipes.csv` or `swipes.csv.gz` (or an explicit file per table).

Files are read in chunks with pandas. The same audit, deduplication (latest
per query/candidate pair; ties: the greatest action string) and errors as the
PostgreSQL source apply. Deduplication needs a first pass over the interaction
columns that keeps ~30 bytes per swipe (pair key, time, row, action code); the
second pass streams the kept rows into the writer.
"""

import gzip
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tfrs_two_tower import config as config_lib
from tfrs_two_tower import files
from tfrs_two_tower.data import sources
from tfrs_two_tower.data import writer as writer_lib

EXTENSIONS = (".parquet", ".csv", ".csv.gz")
_TRUE_FALSE = {"t", "f", "true", "false"}


def _arrow_category(dtype: pa.DataType) -> str:
  """An Arrow type as a pg_type.typcategory letter (see `sources.CATEGORY_NAMES`)."""
  if pa.types.is_dictionary(dtype):
    return _arrow_category(dtype.value_type)
  if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
    return "S"
  if pa.types.is_boolean(dtype):
    return "B"
  if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
    return "N"
  if pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
    return "D"
  if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
    return "A"
  if pa.types.is_null(dtype):
    return None
  return "X"


def _text_category(values: pd.Series) -> Optional[str]:
  """The category CSV text looks like (numbers, booleans, arrays, times, else string)."""
  values = values.dropna()
  if values.empty:
    return None
  if pd.to_numeric(values, errors="coerce").notna().all():
    return "N"
  if values.str.lower().isin(_TRUE_FALSE).all():
    return "B"
  if values.str.startswith(("{", "[")).all():
    return "A"
  try:
    pd.to_datetime(values, utc=True, format="mixed")
    return "D"
  except (ValueError, TypeError):
    return "S"


class FileSource:
  """The config's tables from files; a (trivial) context manager like PostgresSource."""

  def __init__(self, config: config_lib.Config, input_dir: Optional[str] = None, *,
               interactions_file: Optional[str] = None, query_file: Optional[str] = None,
               candidate_file: Optional[str] = None, read_chunk_rows: int = 200_000,
               log: Callable[[str], None] = print):
    self.config, self.log, self.read_chunk_rows = config, log, read_chunk_rows
    self.timestamp_unit = config.interactions.timestamp_unit  # tables are handed on raw
    explicit = {"interactions": interactions_file, "query": query_file,
                "candidate": candidate_file}
    self.paths = {kind: explicit[kind] or self._find(input_dir, kind) for kind in explicit}
    if any(s.sql for s in [config.interactions] + list(config.entities.values())):
      log("export: the config's sql queries do not apply to files; reading the table files")
    self.description: Dict[str, Any] = {
        "kind": "files",
        "label": f"files {input_dir or os.path.dirname(self.paths['interactions'])}",
        "files": {kind: {"path": os.path.abspath(p), "sha256": files.sha256_file(p)}
                  for kind, p in self.paths.items()}}
    self._entities: Dict[str, pd.DataFrame] = {}
    self._dedup: Optional[Dict[str, np.ndarray]] = None

  def __enter__(self) -> "FileSource":
    return self

  def __exit__(self, *exc) -> None:
    return None

  # -- files and columns ----------------------------------------------------------------
  def _section(self, kind: str):
    if kind == "interactions":
      return self.config.interactions, "interactions"
    entity = self.config.entity(kind)
    return entity, f"entities.{entity.name}"

  def _find(self, input_dir: Optional[str], kind: str) -> str:
    section, key = self._section(kind)
    names = [section.table, section.table.split(".")[-1]]
    tried = [os.path.join(input_dir or ".", n + ext) for n in dict.fromkeys(names)
             for ext in EXTENSIONS]
    for path in tried:
      if os.path.exists(path):
        return path
    raise sources.MissingTableError(
        f"no file for table {section.table!r} (config {key}.table): tried {', '.join(tried)}"
        + ("" if input_dir else "; pass --input_dir or the per-table file flags"))

  def _is_parquet(self, kind: str) -> bool:
    return self.paths[kind].endswith(".parquet")

  def _unreadable(self, path: str, error: Exception) -> writer_lib.DataError:
    """A message naming the file (and the line of the first bad byte) for a read failure."""
    if os.path.getsize(path) == 0:
      return writer_lib.DataError(f"{path}: the file is empty (0 bytes); export the table again")
    if isinstance(error, UnicodeDecodeError):
      return writer_lib.DataError(
          f"{path}: line {_first_undecodable_line(path)} is not UTF-8 ({error.reason} at byte "
          f"0x{error.object[error.start]:02x}); export the table as UTF-8")
    return writer_lib.DataError(f"{path}: cannot be read as "
                                f"{'Parquet' if path.endswith('.parquet') else 'CSV'}: {error}")

  def _columns(self, kind: str) -> List[str]:
    """Columns the config needs from a kind's file (checks presence and types)."""
    try:
      return self._checked_columns(kind)
    except (ValueError, pa.ArrowException) as e:  # UnicodeDecodeError, EmptyDataError, Arrow
      if isinstance(e, writer_lib.DataError):
        raise
      raise self._unreadable(self.paths[kind], e) from None

  def _checked_columns(self, kind: str) -> List[str]:
    path = self.paths[kind]
    if self._is_parquet(kind):
      schema = pq.read_schema(path)
      available = schema.names
      categories = {n: _arrow_category(schema.field(n).type) for n in available}
      type_names = {n: str(schema.field(n).type) for n in available}
    else:
      head = pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[""], nrows=1000)
      available = list(head.columns)
      categories = {n: _text_category(head[n]) for n in available}
      type_names = {n: f"text looking {sources.CATEGORY_NAMES.get(c, 'empty')}"
                    for n, c in categories.items()}
    sources.check_columns_present(self.config, kind, available, path)
    sources.check_column_types(self.config, kind,
                               {c: v for c, v in categories.items() if v is not None},
                               type_names, path)
    needed = (self.config.interactions.columns if kind == "interactions"
              else self.config.entity(kind).columns)
    return list(dict.fromkeys(needed))

  def _read(self, kind: str, columns: Sequence[str]) -> Iterator[pd.DataFrame]:
    return self._read_file(self.paths[kind], list(columns))

  def _read_file(self, path: str, columns: Optional[List[str]]) -> Iterator[pd.DataFrame]:
    """`path`'s rows (`columns` only, or all), `read_chunk_rows` at a time."""
    try:
      if path.endswith(".parquet"):
        for batch in pq.ParquetFile(path).iter_batches(self.read_chunk_rows, columns=columns):
          yield batch.to_pandas()
      else:
        yield from pd.read_csv(path, usecols=columns, dtype=object, keep_default_na=False,
                               na_values=[""], chunksize=self.read_chunk_rows)
    except (UnicodeDecodeError, pd.errors.ParserError, pa.ArrowException) as e:
      raise self._unreadable(path, e) from None

  # -- the source interface -----------------------------------------------------------------
  def impressions(self) -> Optional[Tuple[Iterator[pd.DataFrame], str]]:
    """(the impressions log's rows in chunks, its file) from the file named by config
    `impressions.table` beside the interactions file (.csv/.parquet), or None when
    there is none. Read `read_chunk_rows` rows at a time: a big log never sits whole."""
    table = self.config.impressions.table
    folder = os.path.dirname(self.paths["interactions"])
    for name in dict.fromkeys([table, table.split(".")[-1]]):
      for ext in EXTENSIONS:
        path = os.path.join(folder, name + ext)
        if os.path.exists(path):
          self.description["files"]["impressions"] = {"path": os.path.abspath(path),
                                                      "sha256": files.sha256_file(path)}
          return self._read_file(path, None), path
    return None

  def blocked_pairs(self) -> None:
    """Files carry no blocked pairs: a config that asks for them needs a database source."""
    rules = self.config.eligibility
    if rules is not None and rules.blocked is not None:
      raise sources.MissingTableError(
          "config eligibility.blocked: blocked pairs are read from a database table or query; "
          "export from PostgreSQL (--db_url), or remove the rule for a file export")
    return None

  def entities(self, side: str) -> pd.DataFrame:
    if side not in self._entities:
      columns = self._columns(side)
      chunks = list(self._read(side, columns))
      table = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=columns)
      id_column = self.config.entity(side).id_column
      null_ids = int(table[id_column].isna().sum())
      if null_ids:
        raise sources.NullValueError(
            f"{self.paths[side]}: {null_ids} rows have an empty {id_column!r} (config "
            f"entities.{self.config.entity(side).name}.id_column)")
      ids = table[id_column].astype(str)
      repeated = ids.duplicated(keep=False).to_numpy()
      if repeated.any():
        rows = np.flatnonzero(repeated)
        raise writer_lib.DataError(
            f"{self.paths[side]}: id {ids.iloc[rows[0]]!r} appears more than once in column "
            f"{id_column!r} (rows {', '.join(map(str, rows[:5]))}; "
            f"{int(ids.duplicated().sum())} repeated ids in all): an entity table needs one "
            "row per id")
      self._entities[side] = table
    return self._entities[side]

  def audit(self, partition: sources.Partition) -> sources.InteractionAudit:
    """First pass over the interaction columns: counts, partition and the dedup plan."""
    cfg = self.config.interactions
    tables = {side: self.entities(side) for side in ("query", "candidate")}
    index = {side: pd.Index(t[self.config.entity(side).id_column].astype(str))
             for side, t in tables.items()}
    self._columns("interactions")  # presence and types
    path = self.paths["interactions"]
    required = [cfg.query_id_column, cfg.candidate_id_column, cfg.action_column,
                cfg.timestamp_column]
    nulls = dict.fromkeys(required, 0)
    actions: Dict[str, int] = {}
    missing = {"query": 0, "candidate": 0}
    examples: Dict[str, List[str]] = {"query": [], "candidate": []}
    codes = {"query": {}, "candidate": {}}  # ids not in the entity table -> extra codes
    partition_cache: Dict[str, int] = {}
    action_codes: Dict[str, int] = {}
    parts: Dict[str, List[np.ndarray]] = {k: [] for k in ("row", "key", "ts", "action", "mine")}
    offset, null_rows_mine = 0, 0
    for chunk in self._read("interactions", required):
      rows = np.arange(offset, offset + len(chunk))
      offset += len(chunk)
      null_rows = np.zeros(len(chunk), bool)
      for column in required:
        null_rows |= chunk[column].isna().to_numpy()
      q = chunk[cfg.query_id_column].astype(str).to_numpy(object)
      mine = (chunk[cfg.query_id_column].isna().to_numpy()
              | (_partitions(q, partition, partition_cache) == partition.index))
      for column in required:
        nulls[column] += int((chunk[column].isna().to_numpy() & mine).sum())
      null_rows_mine += int((null_rows & mine).sum())
      ok = ~null_rows
      chunk, q, rows, mine = chunk[ok], q[ok], rows[ok], mine[ok]
      a = chunk[cfg.action_column].astype(str).to_numpy(object)
      for value, n in pd.Series(a[mine]).value_counts().items():
        actions[value] = actions.get(value, 0) + int(n)
      keys = []
      for side, column, ids in (("query", cfg.query_id_column, q),
                                ("candidate", cfg.candidate_id_column,
                                 chunk[cfg.candidate_id_column].astype(str).to_numpy(object))):
        code = index[side].get_indexer(ids).astype(np.int64)
        absent = code < 0
        if absent.any():
          extra = codes[side]
          code[absent] = [len(index[side]) + extra.setdefault(i, len(extra)) for i in ids[absent]]
          missing[side] += int((absent & mine).sum())
          examples[side] += [i for i in dict.fromkeys(ids[absent & mine])][:3 - len(examples[side])]
        keys.append(code)
      parts["key"].append(keys[0] * np.int64(1 << 31) + keys[1])
      parts["ts"].append(writer_lib.to_unix_seconds(chunk[cfg.timestamp_column], path,
                                                    cfg.timestamp_column, cfg.timestamp_unit,
                                                    rows=rows))
      parts["action"].append(np.array([action_codes.setdefault(v, len(action_codes)) for v in a],
                                      np.int64))
      parts["row"].append(rows)
      parts["mine"].append(mine)
    plan = {k: np.concatenate(v) if v else np.array([], np.int64) for k, v in parts.items()}
    plan["mine"] = plan["mine"].astype(bool)
    # Ties on time keep the greatest action string, as the SQL source does.
    names = np.array(sorted(action_codes, key=action_codes.get), dtype=object)
    action_rank = np.argsort(np.argsort(names))[plan["action"]] if names.size else plan["action"]
    latest = latest_rows(plan["key"], plan["ts"], action_rank)
    keep = np.zeros(offset, bool)
    keep[plan["row"][latest[plan["mine"][latest]]]] = True
    seconds = np.zeros(offset, np.int64)
    seconds[plan["row"]] = plan["ts"]
    self._dedup = {"keep": keep, "seconds": seconds, "latest_ts": plan["ts"][latest]}
    return sources.InteractionAudit(
        rows=int(plan["mine"].sum()) + null_rows_mine,
        nulls=nulls, actions=actions, missing=missing, missing_examples=examples,
        entities={side: len(t) for side, t in tables.items()})

  def split_time(self, eval_fraction: float, before: Optional[int] = None) -> int:
    if self._dedup is None:
      raise RuntimeError("audit() first")
    latest = np.sort(self._dedup["latest_ts"])
    if before is not None:
      latest = latest[latest < before]
    if latest.size == 0:
      raise sources.EmptyResultError(f"{self.paths['interactions']}: no interactions")
    return int(latest[sources.split_index(latest.size, eval_fraction)])

  def interaction_chunks(self, chunk_size: int,
                         partition: sources.Partition) -> Iterator[pd.DataFrame]:
    """Second pass: the kept (latest) rows of the partition, timestamps as UTC datetimes."""
    del partition  # decided in audit()
    if self._dedup is None:
      raise RuntimeError("audit() first")
    cfg = self.config.interactions
    keep, seconds = self._dedup["keep"], self._dedup["seconds"]
    offset, pending, size = 0, [], 0
    for chunk in self._read("interactions", cfg.columns):
      rows = slice(offset, offset + len(chunk))
      offset += len(chunk)
      mask = keep[rows]
      chunk = chunk[mask].copy()
      # As datetimes: the writer reads them without a unit (the audit applied it).
      chunk[cfg.timestamp_column] = pd.to_datetime(seconds[rows][mask], unit="s", utc=True)
      pending.append(chunk)
      size += len(chunk)
      if size >= chunk_size:
        yield pd.concat(pending, ignore_index=True)
        pending, size = [], 0
    if size:
      yield pd.concat(pending, ignore_index=True)


def _first_undecodable_line(path: str) -> int:
  """1-based line number (header = line 1) of the first line that is not UTF-8."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    for number, line in enumerate(f, start=1):
      try:
        line.decode("utf-8")
      except UnicodeDecodeError:
        return number
  return 0


def latest_rows(keys: np.ndarray, timestamps: np.ndarray, tie_break: np.ndarray) -> np.ndarray:
  """Positions of the last row of each key by (timestamp, tie_break): the kept swipes.

  Args:
    keys, timestamps, tie_break: [n] int64 (pair key, unix seconds, action rank).
  Returns:
    [number of distinct keys] positions into the inputs.
  """
  order = np.lexsort((tie_break, timestamps, keys))
  last = np.ones(order.size, bool)
  last[:-1] = keys[order][1:] != keys[order][:-1]
  return order[last]


def _partitions(ids: np.ndarray, partition: sources.Partition, cache: Dict[str, int]) -> np.ndarray:
  """Partition of each id (all 0 for a whole export), memoised per id."""
  if partition.whole:
    return np.zeros(len(ids), np.int64)
  unknown = [i for i in dict.fromkeys(ids) if i not in cache]
  if unknown:
    cache.update(zip(unknown, sources.partition_of(unknown, partition.count).tolist()))
  return np.fromiter((cache[i] for i in ids), np.int64, len(ids))
