"""One chunk of raw interaction rows -> the rows a dataset keeps, or a DataError.

Checks every value the writer relies on and names the source, column and row of
the first bad one: required columns present and not NULL, actions mapped by the
config (`interactions.actions`, numeric values through `action_thresholds`),
both ids in their entity tables, times readable, weights non-negative. Rows with
an unknown action or a missing entity are refused, or dropped and counted when
the policy says "drop".
"""

import collections
import dataclasses
from typing import Any, Dict, Optional

import numpy as np
import pandas as pd

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.data import timestamps as timestamps_lib


class DataError(ValueError):
  """Input data that cannot become a dataset; the message names file/column/row."""


def to_unix_seconds(values: pd.Series, source: str, column: str, unit: Optional[str],
                    **kwargs) -> np.ndarray:
  """`timestamps.to_unix_seconds`, its refusals as DataError like every bad value here."""
  try:
    return timestamps_lib.to_unix_seconds(values, source, column, unit, **kwargs)
  except timestamps_lib.TimestampError as e:
    raise DataError(str(e)) from None


@dataclasses.dataclass
class ValidRows:
  """The kept rows of a chunk, [R] arrays: entity row indices, action names, unix
  seconds, weights; `dropped`: what was left out ({"unknown_actions": {value: n},
  "missing_entities": n})."""
  query_index: np.ndarray
  candidate_index: np.ndarray
  actions: np.ndarray
  timestamps: np.ndarray
  weights: np.ndarray
  dropped: Dict[str, Any]


def validate(config: config_lib.Config, chunk: pd.DataFrame, source: str, first_row: int,
             queries, candidates, *, unknown_actions: str, missing_entities: str,
             timestamp_unit, check_dates: bool) -> ValidRows:
  """The rows of `chunk` to write (see the module docstring).

  Args:
    queries, candidates: the entity tables (`writer.EntityTable`: `lookup(ids)` -> rows, -1
      when absent).
    unknown_actions, missing_entities: "fail" or "drop".
  Raises:
    DataError naming `source`, the column and the row (`first_row` + offset).
  """
  cfg = config.interactions
  for column in (cfg.query_id_column, cfg.candidate_id_column, cfg.action_column,
                 cfg.timestamp_column):
    nulls = chunk[column].isna().to_numpy()
    if nulls.any():
      row = first_row + int(np.flatnonzero(nulls)[0])
      raise DataError(f"{source}: column {column!r} row {row}: NULL in a required column "
                      f"({int(nulls.sum())} such rows in this chunk)")

  actions = action_names(config, chunk[cfg.action_column], source, first_row)
  by_name = {a.name: a for a in cfg.actions}
  known = np.isin(actions, list(by_name))
  dropped: Dict[str, Any] = {"unknown_actions": {}, "missing_entities": 0}
  if not known.all():
    unknown = collections.Counter(actions[~known].tolist())
    if unknown_actions == "fail":
      listed = ", ".join(f"{v!r} x{n}" for v, n in unknown.most_common(5))
      row = first_row + int(np.flatnonzero(~known)[0])
      raise DataError(f"{source}: column {cfg.action_column!r}: unknown action values "
                      f"{listed} (first at row {row}); map them in config "
                      f"interactions.actions or pass --unknown_actions=drop")
    dropped["unknown_actions"] = dict(unknown)

  q_idx = queries.lookup(chunk[cfg.query_id_column].astype(str).to_numpy(dtype=object))
  c_idx = candidates.lookup(chunk[cfg.candidate_id_column].astype(str).to_numpy(dtype=object))
  missing = (q_idx < 0) | (c_idx < 0)
  if missing.any() and missing_entities == "fail":
    i = int(np.flatnonzero(missing)[0])
    side, column, value = (("query", cfg.query_id_column, chunk[cfg.query_id_column].iloc[i])
                           if q_idx[i] < 0 else
                           ("candidate", cfg.candidate_id_column,
                            chunk[cfg.candidate_id_column].iloc[i]))
    raise DataError(f"{source}: column {column!r} row {first_row + i}: {value!r} is not in "
                    f"the {side} entity table ({int(missing.sum())} such rows in this chunk); "
                    "pass --missing_entities=drop to skip them")
  dropped["missing_entities"] = int((missing & known).sum())

  timestamps = to_unix_seconds(
      chunk[cfg.timestamp_column], source, cfg.timestamp_column, timestamp_unit,
      rows=first_row + np.arange(len(chunk)), check_dates=check_dates)
  weights = np.array([by_name[a].weight if k else 0.0 for a, k in zip(actions, known)],
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
  return ValidRows(q_idx[keep], c_idx[keep], actions[keep], timestamps[keep], weights[keep],
                   dropped)


def action_names(config: config_lib.Config, column: pd.Series, source: str,
                 first_row: int) -> np.ndarray:
  """The action column as action names; numeric values through `action_thresholds`."""
  cfg = config.interactions
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
