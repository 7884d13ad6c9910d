"""Values that cannot be true become missing with a warning naming column and count."""
import logging

import numpy as np
import pandas as pd
import pytest

from tfrs_two_tower import features


def _profiles(**columns):
  base = {"id": ["a", "b", "c", "d"], "gender": ["woman", "man", "man", "woman"],
          "seeking": ["men", "women", "women", "men"], "age": [25, 31, 40, 44],
          "city": ["Oslo", "Rome", "Rome", "Oslo"], "latitude": [59.9, 41.9, 41.9, 59.9],
          "longitude": [10.7, 12.5, 12.5, 10.7],
          "interests": [["ski"], ["food"], [], ["art"]], "photo_count": [1, 2, 3, 4],
          "verified": [True, False, True, False], "bio_length": [1, 2, 3, 4],
          "created_at": pd.to_datetime(["2026-01-01"] * 4, utc=True)}
  return pd.DataFrame({**base, **columns})


def test_impossible_values_become_missing_with_one_warning_per_column(default_config, caplog):
  blob = "x" * (5 << 20)  # a 5 MB "city": a pasted file, not a category
  table = _profiles(age=[-3, 9999, 40, np.inf], latitude=[95.0, 41.9, 41.9, 59.9],
                    city=["Oslo", blob, "Rome", "Oslo"],
                    interests=[["ski", blob], ["food"], [], ["art"]],
                    bio_length=["1", "inf", "3", "-inf"])
  with caplog.at_level(logging.WARNING, logger=features.__name__):
    out = features.encode_entity_table(default_config, "query", table, "profiles.csv")
  warnings = [r.getMessage() for r in caplog.records]
  age = out["query_age"]
  assert np.isnan(age[[0, 1, 3]]).all() and age[2] == 40
  assert any("'age': 1 values infinite" in w for w in warnings)
  assert any("'age': 2 values outside valid_range [18, 120] (first in row 0)" in w
             for w in warnings)
  assert np.isnan(out["query_location"][0]).all()  # both coordinates of the point
  assert any("'latitude': 1 values outside latitudes [-90, 90]" in w for w in warnings)
  assert out["query_city"].tolist() == ["Oslo", "", "Rome", "Oslo"]
  assert any("'city': 1 values longer than 256 characters (first in row 1)" in w
             for w in warnings)
  assert out["query_interests"][0] == ["ski"]
  assert np.isnan(out["query_bio_length"][[1, 3]]).all()
  assert any("'bio_length': 2 values infinite" in w for w in warnings)


def test_an_impossible_id_or_a_non_number_is_refused(default_config):
  with pytest.raises(ValueError, match=r"column 'id' row 2: an id of 1,000 characters"):
    features.encode_entity_table(default_config, "query",
                                 _profiles(id=["a", "b", "y" * 1000, "d"]), "profiles.csv")
  with pytest.raises(ValueError, match=r"'age' row 1: not a number: 'nan'"):
    features.encode_entity_table(default_config, "query", _profiles(age=["1", "nan", "3", "4"]),
                                 "profiles.csv")
