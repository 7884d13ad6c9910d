"""Time columns: numbers need a unit, implausible dates are refused by file, column and row."""
import numpy as np
import pandas as pd
import pytest

from tfrs_two_tower.data import timestamps

NOW = 1_790_000_000  # 2026-09-21


def test_dates_and_numbers_in_every_unit_give_the_same_seconds():
  seconds = np.array([1_700_000_000, 1_700_000_001])
  expected = seconds.tolist()
  for unit, per_second in (("s", 1), ("ms", 10**3), ("us", 10**6), ("ns", 10**9)):
    as_int = pd.Series(seconds * per_second)
    assert timestamps.to_unix_seconds(as_int, "f", "t", unit, now=NOW).tolist() == expected
    as_text = as_int.astype(str).astype(object)  # a CSV read as text
    assert timestamps.to_unix_seconds(as_text, "f", "t", unit, now=NOW).tolist() == expected
  text = pd.Series(["2023-11-14 22:13:20+00", "2023-11-14T22:13:21Z"], dtype=object)
  assert timestamps.to_unix_seconds(text, "f", "t", now=NOW).tolist() == expected
  assert timestamps.to_unix_seconds(text, "f", "t", "ms", now=NOW).tolist() == expected


def test_numbers_without_a_unit_are_refused_naming_the_likely_unit():
  for value, unit in ((874_724_710, "s"), (1_700_000_000_000, "ms"),
                      (1_700_000_000_000_000, "us"), (1_700_000_000_000_000_000, "ns")):
    with pytest.raises(timestamps.TimestampError,
                       match=rf"swipes.csv: column 'ts' holds numbers.*looks like unix {unit}"):
      timestamps.to_unix_seconds(pd.Series([str(value)], dtype=object), "swipes.csv", "ts",
                                 now=NOW)


def test_implausible_times_name_row_and_unit():
  ms = pd.Series([1_700_000_000_000, 1_700_000_000_000])
  with pytest.raises(timestamps.TimestampError,
                     match=r"x.parquet: column 'ts' row 17: .* read as unix s is around year "
                           r"55,841.*\(2 such rows\).*looks like unix ms"):
    timestamps.to_unix_seconds(ms, "x.parquet", "ts", "s", rows=np.array([17, 18]), now=NOW)
  for date in ("1989-12-31 23:59:59+00", pd.Timestamp(NOW + 2 * 86_400, unit="s").isoformat()):
    with pytest.raises(timestamps.TimestampError, match=r"row 1: .*1990-01-01 \.\. tomorrow"):
      timestamps.to_unix_seconds(pd.Series(["2020-01-01", date]), "f", "ts", now=NOW)
  negative = pd.Series([-86_400 * 365])  # a swipe "before 1970"
  with pytest.raises(timestamps.TimestampError, match="no unit .* makes it a date"):
    timestamps.to_unix_seconds(negative, "f", "ts", "s", now=NOW)
  # A made-up calendar (synthetic worlds) may lie in the future.
  future = pd.Series([pd.Timestamp(NOW + 400 * 86_400, unit="s", tz="UTC")])
  assert timestamps.to_unix_seconds(future, "f", "ts", now=NOW, check_dates=False).tolist() == [
      NOW + 400 * 86_400]


def test_missing_and_unparseable_times():
  with pytest.raises(timestamps.TimestampError, match="row 4: missing timestamp"):
    timestamps.to_unix_seconds(pd.Series([1.7e9, np.nan]), "f", "ts", "s",
                               rows=np.array([3, 4]), now=NOW)
  with pytest.raises(timestamps.TimestampError, match="'ts': not a timestamp"):
    timestamps.to_unix_seconds(pd.Series(["yesterday-ish"]), "f", "ts", now=NOW)
