"""Time columns -> int64 unix seconds (UTC), refusing what cannot be a swipe's date.

Datetimes and date strings (`2026-01-05 10:00:00+00`, ISO forms; naive = UTC)
are parsed by pandas. Numbers (a numeric column, or text that is all numbers as
in a CSV) count time since 1970-01-01 UTC in the unit the config names,
`interactions.timestamp_unit` (`s`, `ms`, `us` or `ns`). Without a unit numbers
are refused: 1.7e9 seconds and 1.7e12 milliseconds are both plausible integers,
and reading one as the other silently moves every swipe by centuries.

Every time must lie in [1990-01-01, now + 1 day] (PLAUSIBLE_FROM, tomorrow); a
time outside is refused naming the source, column, row and the unit under
which the number would be plausible (see `likely_unit`).
"""

import time
from typing import Optional

import numpy as np
import pandas as pd

from tfrs_two_tower import config as config_lib

UNITS = config_lib.TIMESTAMP_UNITS
SECONDS_PER_UNIT = dict(zip(UNITS, (1.0, 1e-3, 1e-6, 1e-9)))
PLAUSIBLE_FROM = int(pd.Timestamp("1990-01-01", tz="UTC").timestamp())
DAY_SECONDS = 86_400


class TimestampError(ValueError):
  """A time column that cannot be read as plausible dates; names source, column, row."""


def plausible_until(now: Optional[float] = None) -> int:
  """The latest plausible time: tomorrow (unix seconds), so clock skew is not an error."""
  return int(time.time() if now is None else now) + DAY_SECONDS


def likely_unit(value: float, now: Optional[float] = None) -> Optional[str]:
  """The unit in which the number `value` is a plausible date, or None when none is."""
  for unit, seconds in SECONDS_PER_UNIT.items():
    if PLAUSIBLE_FROM <= value * seconds <= plausible_until(now):
      return unit
  return None


def _unit_hint(value: float, now: Optional[float]) -> str:
  unit = likely_unit(value, now)
  return (f"as a number it looks like unix {unit} (interactions.timestamp_unit: {unit!r})"
          if unit else "no unit (s, ms, us, ns) makes it a date between 1990 and tomorrow")


def _row(position: int, rows: Optional[np.ndarray]) -> int:
  return int(position if rows is None else rows[position])


def to_unix_seconds(values: pd.Series, source: str, column: str, unit: Optional[str] = None,
                    rows: Optional[np.ndarray] = None, now: Optional[float] = None,
                    check_dates: bool = True) -> np.ndarray:
  """[n] times -> [n] int64 unix seconds (UTC, floored).

  Args:
    values: datetimes, date strings, numbers or numeric strings.
    source, column: named in errors (file or table, and the column).
    unit: the unit of numbers (one of UNITS); None refuses numbers.
    rows: [n] row numbers of `values` in the source, for errors (default 0..n-1).
    now: unix seconds of "now" (tests); default the clock.
    check_dates: refuse times outside [1990, tomorrow]; False only for a made-up
      calendar (a synthetic world may be set in the future).
  Raises:
    TimestampError: a missing, unparseable or implausible time, or numbers
      without a unit.
  """
  where = f"{source}: column {column!r}"
  if unit is not None and unit not in SECONDS_PER_UNIT:
    raise TimestampError(f"{where}: timestamp unit {unit!r} is not one of {list(UNITS)} "
                         "(config interactions.timestamp_unit)")
  numeric = _as_numbers(values)
  if numeric is not None:
    missing = np.flatnonzero(np.isnan(numeric))
    if missing.size:
      raise TimestampError(f"{where} row {_row(missing[0], rows)}: missing timestamp")
    if unit is None:
      raise TimestampError(
          f"{where} holds numbers (e.g. {numeric[0]:.15g} in row {_row(0, rows)}); set "
          f"interactions.timestamp_unit to one of {list(UNITS)} in the config: "
          + _unit_hint(numeric[0], now))
    seconds = numeric * SECONDS_PER_UNIT[unit]
  else:
    try:
      parsed = pd.to_datetime(values, utc=True, format="mixed")
    except (ValueError, TypeError, OverflowError) as e:
      raise TimestampError(f"{where}: not a timestamp ({e})") from None
    if parsed.isna().any():
      position = int(np.flatnonzero(parsed.isna().to_numpy())[0])
      raise TimestampError(f"{where} row {_row(position, rows)}: missing timestamp")
    seconds = parsed.astype("datetime64[ns, UTC]").astype("int64").to_numpy() / 1e9
  if check_dates:
    _check_plausible(seconds, numeric, unit, where, rows, now)
  return np.floor(seconds).astype(np.int64)


def _as_numbers(values: pd.Series) -> Optional[np.ndarray]:
  """[n] float64 when the values are numbers or all-numeric text, else None."""
  if pd.api.types.is_bool_dtype(values):
    return None
  if pd.api.types.is_numeric_dtype(values):
    return values.to_numpy(dtype=np.float64, na_value=np.nan)
  present = values.dropna()
  if present.empty or not isinstance(present.iloc[0], str):  # datetime objects are dates
    return None
  numbers = pd.to_numeric(values, errors="coerce")
  if numbers[values.notna()].isna().any():  # some text is not a number: date strings
    return None
  return numbers.to_numpy(dtype=np.float64, na_value=np.nan)


def _check_plausible(seconds: np.ndarray, numeric: Optional[np.ndarray], unit: Optional[str],
                     where: str, rows: Optional[np.ndarray], now: Optional[float]) -> None:
  latest = plausible_until(now)
  bad = np.flatnonzero((seconds < PLAUSIBLE_FROM) | (seconds > latest))
  if not bad.size:
    return
  i = bad[0]
  shown = (pd.Timestamp(seconds[i], unit="s", tz="UTC").isoformat()
           if -9e9 < seconds[i] < 9e9 else f"around year {1970 + seconds[i] / 31_556_952:,.0f}")
  if numeric is not None:
    reading = f"{numeric[i]:.15g} read as unix {unit} is {shown}"
    hint = _unit_hint(numeric[i], now)
  else:
    reading, hint = f"{shown}", "a date, not a unit problem: fix or drop the row"
  raise TimestampError(
      f"{where} row {_row(i, rows)}: {reading}, outside the plausible range "
      f"1990-01-01 .. tomorrow ({bad.size} such rows); {hint}")
