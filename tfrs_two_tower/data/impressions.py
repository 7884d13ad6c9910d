"""The feed's impressions log in the dataset directory (`impressions.parquet`).

One row per profile a feed showed (or considered) when a user opened the app (docs/data.md):

  feed_id       str    one app open (a feed); rows of a feed share viewer and time
  query_id      str    the viewer
  candidate_id  str    the profile considered
  timestamp     int64  unix seconds (UTC) the feed was opened
  position      int64  0-based rank in the feed's final order
  score         float  the feed's own ranking score
  propensity    float  P(the feed shows this profile | what it drew independently of
                       the viewer's response), in (0, 1]
  shown         bool   whether it was shown (unshown rows carry no weight)

and, when the config declares reciprocal probes (`impressions.probe_column`):

  probed            bool   the profile was shown the viewer as a probe, because of this row
  probe_propensity  float  P(the feed shows this profile AND the probe fires | the same
                           draws), in (0, 1] where probed, at most `propensity`; empty
                           (NaN) allowed where not probed

A feed that does not explore writes propensity 1 for every row; an exploring
feed (docs/evaluation.md) writes each shown profile's exact probability, which
off-policy estimators (`evaluation.off_policy`) need.
"""

import contextlib
import os
from typing import Iterable, Iterator, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.data import timestamps
from tfrs_two_tower.data import writer as writer_lib

FILE = "impressions.parquet"
COLUMNS = tuple(role for role, _ in config_lib.Impressions.ROLES)
PROBE_COLUMNS = tuple(role for role, _ in config_lib.Impressions.PROBE_ROLES)
# Rows validated and written at a time: a 1M-user world logs ~65M impressions, and
# the dataset's columns as Python strings and Arrow buffers cost ~250 bytes a row.
CHUNK_ROWS = 1 << 21


def from_log(config: config_lib.Config, frame: pd.DataFrame, source: str,
             timestamp_unit: Optional[str] = None, check_dates: bool = True,
             first_row: int = 0) -> pd.DataFrame:
  """The config's impressions columns -> the dataset's, validated.

  `first_row`: the row number of `frame`'s first row in `source` (for messages).

  Times follow the interactions' rules (`timestamps.to_unix_seconds`: numbers need
  `timestamp_unit`; dates outside [1990, tomorrow] refused unless `check_dates` is off).

  Raises:
    writer_lib.DataError naming `source`, the column and the first bad row: a
    missing column, an empty value, a position that is not a non-negative
    integer, a propensity outside (0, 1], a shown or probed flag that is not
    boolean, a probe propensity outside (0, 1] on a probed row (outside [0, 1]
    elsewhere) or above the row's propensity.
  """
  names = config.impressions.columns
  missing = [c for c in names.values() if c not in frame.columns]
  if missing:
    raise writer_lib.DataError(f"{source}: impressions column(s) {missing} missing (config "
                               f"impressions.*_column; has {list(frame.columns)})")
  out = {}
  for role, column in names.items():
    values = frame[column]
    empty = values.isna().to_numpy()
    if empty.any() and role != "probe_propensity":  # empty allowed where not probed: below
      raise writer_lib.DataError(f"{source}: column {column!r} row "
                                 f"{first_row + int(np.flatnonzero(empty)[0])}"
                                 f": missing {role.replace('_', ' ')}")
    out[role] = values
  timestamp = timestamps.to_unix_seconds(out["timestamp"], source, names["timestamp"],
                                         timestamp_unit, check_dates=check_dates,
                                         rows=first_row + np.arange(len(frame)))
  position = pd.to_numeric(out["position"], errors="coerce").to_numpy(np.float64)
  bad = ~(np.isfinite(position) & (position >= 0) & (position == np.round(position)))
  _refuse(bad, source, names["position"], "position must be an integer >= 0", first_row)
  propensity = pd.to_numeric(out["propensity"], errors="coerce").to_numpy(np.float64)
  bad = ~((propensity > 0) & (propensity <= 1))  # NaN fails both
  _refuse(bad, source, names["propensity"], "propensity must be in (0, 1]", first_row,
          out["propensity"])
  score = pd.to_numeric(out["score"], errors="coerce").to_numpy(np.float64)
  _refuse(np.isnan(score), source, names["score"], "score must be a number", first_row)
  shown = _booleans(out["shown"], source, names["shown"], first_row)
  log = pd.DataFrame({
      "feed_id": out["feed_id"].astype(str).to_numpy(dtype=object),
      "query_id": out["query_id"].astype(str).to_numpy(dtype=object),
      "candidate_id": out["candidate_id"].astype(str).to_numpy(dtype=object),
      "timestamp": timestamp, "position": position.astype(np.int64), "score": score,
      "propensity": propensity, "shown": shown})
  if config.impressions.probes:
    log["probed"], log["probe_propensity"] = _probes(out, propensity, source, names, first_row)
  return log


def _probes(out, propensity: np.ndarray, source: str, names, first_row: int):
  """(probed [R] bool, probe_propensity [R] float, NaN where unknown and not probed)."""
  probed = _booleans(out["probed"], source, names["probed"], first_row, "probed")
  raw = out["probe_propensity"]
  given = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
  column = names["probe_propensity"]
  _refuse(np.isnan(given) & (probed | raw.notna().to_numpy()), source, column,
          "probe propensity must be a number (it may be empty only where not probed)",
          first_row, raw)
  _refuse(probed & ~(given > 0) | ~np.isnan(given) & ~((given >= 0) & (given <= 1)), source,
          column, "probe propensity must be in (0, 1] where probed ([0, 1] elsewhere)",
          first_row, raw)
  # P(shown and probed) <= P(shown); a rounding margin for logs written as text.
  _refuse(given > propensity * (1 + 1e-6), source, column,
          "probe propensity exceeds the row's propensity (it is P(shown AND probed))",
          first_row, raw)
  return probed, given


def _refuse(bad: np.ndarray, source: str, column: str, rule: str, first_row: int = 0,
            values: Optional[pd.Series] = None) -> None:
  if bad.any():
    row = int(np.flatnonzero(bad)[0])
    got = f" (got {values.iloc[row]!r})" if values is not None else ""
    raise writer_lib.DataError(f"{source}: column {column!r} row {first_row + row}: {rule}{got}; "
                               f"{int(bad.sum())} such rows")


def _booleans(values: pd.Series, source: str, column: str, first_row: int = 0,
              what: str = "shown") -> np.ndarray:
  if pd.api.types.is_bool_dtype(values):
    return values.to_numpy(bool)
  text = values.astype(str).str.strip().str.lower()
  truth = text.isin(["true", "t", "1", "yes"]).to_numpy()
  bad = ~(truth | text.isin(["false", "f", "0", "no"]).to_numpy())
  _refuse(bad, source, column, f"{what} must be true/false", first_row, values)
  return truth


def check_entities(frame: pd.DataFrame, writer: "writer_lib.DatasetWriter", source: str,
                   names: config_lib.Impressions, first_row: int = 0) -> None:
  """Refuses impressions of viewers or profiles missing from the dataset's entity tables."""
  for role, table, column in (("query_id", writer.queries, names.viewer_column),
                              ("candidate_id", writer.candidates, names.profile_column)):
    unknown = table.lookup(frame[role].to_numpy()) < 0
    if unknown.any():
      row = int(np.flatnonzero(unknown)[0])
      raise writer_lib.DataError(
          f"{source}: column {column!r} row {first_row + row}: {frame[role].iloc[row]!r} is "
          f"not in the {'query' if role == 'query_id' else 'candidate'} entity table; "
          f"{int(unknown.sum())} such rows")


def chunks_of(frame: pd.DataFrame, rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
  """`frame` in slices of `rows` rows (views, no copies): a log already in memory."""
  for start in range(0, len(frame), rows):
    yield frame.iloc[start:start + rows]


def add_to_dataset(writer: "writer_lib.DatasetWriter", chunks: Iterable[pd.DataFrame],
                   source: str) -> None:
  """Validates a raw impressions log, chunk by chunk, and writes it into the dataset.

  `chunks`: the raw log's rows in order, in frames of any size (a source streams
  them; `chunks_of` slices a frame already in memory). Memory holds one raw chunk
  and its converted columns, never the whole log: a 1M-user world logs ~69M
  impressions, ~9 GB as a whole frame of strings. Errors name the row in the whole log.

  Call inside the writer's `with` block: the file lands in its staging directory,
  so it is listed (with its checksum) in manifest.json. Adds an `impressions`
  section to stats.json.
  """
  config = writer.config
  feeds, rows, shown, explored, probed, min_propensity = [], 0, 0, 0, 0, None
  with contextlib.ExitStack() as stack:
    parquet = None
    empty = pd.DataFrame(columns=list(config.impressions.columns.values()))
    for raw in _nonempty_or(chunks, empty):
      # An empty log still gets a file (with its schema): its one empty frame validates.
      for start in range(0, len(raw), CHUNK_ROWS) if len(raw) else (0,):
        log = from_log(config, raw.iloc[start:start + CHUNK_ROWS], source,
                       writer.timestamp_unit, writer.check_dates, first_row=rows)
        check_entities(log, writer, source, config.impressions, first_row=rows)
        table = pa.Table.from_pandas(log, preserve_index=False)
        if parquet is None:
          parquet = stack.enter_context(
              pq.ParquetWriter(os.path.join(writer.staging_dir, FILE), table.schema))
        parquet.write_table(table)
        feeds.append(log["feed_id"].unique())
        rows += len(log)
        shown += int(log["shown"].sum())
        explored += int((log["propensity"] < 1).sum())
        probed += int(log["probed"].sum()) if "probed" in log else 0
        if len(log):
          low = float(log["propensity"].min())
          min_propensity = low if min_propensity is None else min(min_propensity, low)
  writer.extra_stats["impressions"] = {
      "file": FILE, "rows": rows,
      "feeds": int(pd.unique(np.concatenate(feeds)).size),
      "shown": shown, "explored_rows": explored, "min_propensity": min_propensity,
      "note": "rows with propensity < 1 come from an exploring feed; off-policy estimates "
              "need them (docs/evaluation.md)"}
  if config.impressions.probes:
    writer.extra_stats["impressions"]["probed_rows"] = probed


def _nonempty_or(chunks: Iterable[pd.DataFrame], empty: pd.DataFrame) -> Iterator[pd.DataFrame]:
  """The non-empty frames of `chunks`; when there is none, the first (empty) frame
  (its columns are the source's), or `empty` when `chunks` yields nothing."""
  first_empty, yielded = None, False
  for chunk in chunks:
    if len(chunk):
      yielded = True
      yield chunk
    elif first_empty is None:
      first_empty = chunk
  if not yielded:
    yield empty if first_empty is None else first_empty


def read(dataset) -> Optional[pd.DataFrame]:
  """The dataset's impressions log (dataset columns), or None when it has none."""
  if FILE not in dataset.manifest.get("files", {}):
    return None
  return pd.read_parquet(dataset.file(FILE))
