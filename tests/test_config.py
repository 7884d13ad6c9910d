"""Config validation: every problem found, each named by its path."""
import copy
import json
import os

import jsonschema
import numpy as np
import pytest

from tfrs_two_tower import config as config_lib
from tfrs_two_tower import config_schema


def _default_raw():
  with open(config_lib.DEFAULT_CONFIG_PATH, encoding="utf-8") as f:
    return json.load(f)


def _problems(raw):
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.parse_config(raw, source="test.json")
  return err.value.problems


def test_default_config_is_valid_and_hash_is_stable(default_config):
  again = config_lib.load_config()
  assert default_config.hash == again.hash
  assert default_config.same_entity_both_sides
  keys = [f.key("query") for f in default_config.features("query")]
  assert keys[0] == "query_id" and "query_interests" in keys and len(set(keys)) == len(keys)
  raw = _default_raw()
  raw["entities"]["user"]["features"][1]["embedding_dim"] = 5
  assert config_lib.parse_config(raw).hash != default_config.hash


def test_unknown_type_duplicate_name_bad_mapping_reported_together():
  raw = _default_raw()
  features = raw["entities"]["user"]["features"]
  features[1]["type"] = "categoric"
  features.append(copy.deepcopy(features[2]))
  raw["interactions"]["actions"]["like"]["label"] = 2
  raw["interactions"]["actions"]["pass"]["weight"] = -1
  problems = _problems(raw)
  assert len(problems) == 4, problems
  text = "\n".join(problems)
  assert ("features[1] (gender).type: must be one of ['id', 'categorical', 'multi_categorical', "
          "'numeric', 'geo'], got 'categoric'") in text
  assert "duplicate feature name 'seeking'" in text
  assert "interactions.actions.like.label" in text
  assert "interactions.actions.pass.weight" in text


def test_missing_keys_unknown_entity_and_unknown_keys():
  raw = _default_raw()
  del raw["interactions"]["timestamp_column"]
  raw["candidate"]["entity"] = "item"
  raw["entities"]["user"]["features"][3]["normalisation"] = "zscore"  # British spelling
  problems = "\n".join(_problems(raw))
  assert "interactions.timestamp_column: missing (required)" in problems
  assert "candidate.entity: unknown entity 'item'" in problems
  assert "normalisation: unknown key" in problems


def test_no_positive_action_is_refused():
  raw = _default_raw()
  raw["interactions"]["actions"] = {"pass": {"label": 0, "weight": 1.0}}
  assert any("no action maps to label 1" in p for p in _problems(raw))


def test_type_specific_checks():
  raw = _default_raw()
  features = raw["entities"]["user"]["features"]
  features[0]["column"] = "user_id"           # id must embed the entity id column
  features[5]["cell_degrees"] = 0             # geo
  features[6]["pooling"] = "max"              # multi_categorical
  features[3]["bucket_boundaries"] = [30, 20]  # numeric
  features[2]["embedding_dim"] = 0
  problems = "\n".join(_problems(raw))
  for expected in ("embeds the entity id column", "cell_degrees",
                   "pooling: must be one of ['mean', 'sum'], got 'max'",
                   "bucket_boundaries: must be a strictly increasing", "embedding_dim: must be"):
    assert expected in problems, expected


def test_file_errors_name_the_file(tmp_path):
  missing = tmp_path / "nope.json"
  with pytest.raises(config_lib.ConfigError, match="nope.json"):
    config_lib.load_config(str(missing))
  broken = tmp_path / "broken.json"
  broken.write_text('{"format_version": 1,', encoding="utf-8")
  with pytest.raises(config_lib.ConfigError, match=r"(?s)broken.json.*not valid JSON"):
    config_lib.load_config(str(broken))


def test_user_to_item_config_with_separate_candidate_table():
  raw = _default_raw()
  raw["candidate"]["entity"] = "item"
  del raw["eligibility"], raw["baseline"]  # people rules: a user-to-item config has none
  raw["entities"]["item"] = {
      "table": "products", "id_column": "sku", "created_at_column": None, "sql": None,
      "features": [{"name": "id", "type": "id", "embedding_dim": 16},
                   {"name": "category", "type": "categorical", "embedding_dim": 4},
                   {"name": "price", "type": "numeric", "normalization": "log_zscore"}]}
  cfg = config_lib.parse_config(raw)
  assert not cfg.same_entity_both_sides
  assert cfg.entity("candidate").table == "products"
  assert [f.key("candidate") for f in cfg.features("candidate")] == [
      "candidate_id", "candidate_category", "candidate_price"]
  assert cfg.entity("candidate").columns == ["sku", "category", "price"]


def test_check_columns_names_column_and_config_key(default_config):
  problems = config_lib.check_columns(default_config, "interactions",
                                      ["swiper_id", "swipee_id", "created_at"], "swipes.csv")
  assert problems == ["swipes.csv: missing column 'action' (config interactions.action_column)"]
  problems = config_lib.check_columns(default_config, "candidate", ["id", "created_at", "gender"],
                                      "profiles.csv")
  assert any("'latitude' (config entities.user.features[5] 'location')" in p for p in problems)


def test_timestamp_unit_is_validated():
  raw = config_lib.load_config().raw
  good = dict(raw, interactions=dict(raw["interactions"], timestamp_unit="ms"))
  assert config_lib.parse_config(good).interactions.timestamp_unit == "ms"
  assert config_lib.load_config().interactions.timestamp_unit is None
  bad = dict(raw, interactions=dict(raw["interactions"], timestamp_unit="seconds"))
  with pytest.raises(config_lib.ConfigError, match=r"interactions.timestamp_unit: must be one of"):
    config_lib.parse_config(bad)


def test_action_thresholds_map_ratings_and_bad_maps_are_refused():
  raw = _default_raw()
  raw["interactions"]["action_thresholds"] = [{"action": "like", "min": 4},
                                              {"action": "pass", "max": 3}]
  cfg = config_lib.parse_config(raw).interactions
  names, unmapped = cfg.threshold_actions(np.array([1, 3, 3.5, 4, 5, np.nan]))
  assert names.tolist() == ["pass", "pass", "", "like", "like", ""]
  assert unmapped.tolist() == [False, False, True, False, False, True]
  raw["interactions"]["action_thresholds"] = [
      {"action": "like", "min": 3}, {"action": "pass", "max": 3}, {"action": "block", "min": 0},
      {"action": "like", "min": "x"}, {"action": "pass"}]
  problems = "\n".join(_problems(raw))
  assert "the ranges of 'like' and 'pass' overlap (both contain 3)" in problems
  assert "action_thresholds[2].action: 'block' is not one of interactions.actions" in problems
  assert "action_thresholds[3].min: must be a number" in problems
  assert "action_thresholds[4]: expected an object with action and min and/or max" in problems
  assert "action_thresholds[3]:" not in problems  # a bad bound is one problem, not two


def test_history_is_off_unless_declared_and_validated_by_key(default_config):
  assert default_config.history is None
  raw = _default_raw()
  raw["history"] = {"max_length": 5, "lists": ["liked"], "share_candidate_id_embedding": True}
  history = config_lib.parse_config(raw).history
  assert (history.max_length, history.lists, history.share_candidate_id_embedding) == (
      5, ("liked",), True)
  assert history.keys == ["query_history_liked"]
  assert (history.recency_decay, history.dropout) == (1.0, 0.0)  # plain mean, no dropout
  for bad, key in (({"max_length": 0}, "history.max_length"),
                   ({"max_length": -3}, "history.max_length"),
                   ({"max_length": 5, "lists": ["liked", "liked"]}, "history.lists"),
                   ({"max_length": 5, "lists": ["clicked"]}, "history.lists"),
                   ({"max_length": 5, "recency": 1}, "history.recency"),
                   ({"max_length": 5, "recency_decay": 0}, "history.recency_decay"),
                   ({"max_length": 5, "recency_decay": 1.5}, "history.recency_decay"),
                   ({"max_length": 5, "dropout": 1.0}, "history.dropout"),
                   ({"max_length": 5, "dropout": True}, "history.dropout")):
    raw["history"] = bad
    problems = _problems(raw)
    assert len(problems) == 1 and problems[0].startswith(key), problems
  raw["history"] = {"max_length": 5}
  del raw["interactions"]["timestamp_column"]
  problems = _problems(raw)
  assert "interactions.timestamp_column: missing (required)" in problems


# -- the JSON Schema ------------------------------------------------------------------------

SECOND_SCHEMA_CONFIG = os.path.join(os.path.dirname(__file__), "second_schema", "config.json")


def test_schema_file_is_a_valid_draft_2020_12_schema():
  with open(config_schema.SCHEMA_PATH, encoding="utf-8") as f:
    schema = json.load(f)
  assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
  jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("path", [config_lib.DEFAULT_CONFIG_PATH, SECOND_SCHEMA_CONFIG])
def test_schema_alone_accepts_the_shipped_and_the_second_schema_configs(path):
  """Any language's validator, given only the schema file, accepts both configs."""
  with open(config_schema.SCHEMA_PATH, encoding="utf-8") as f:
    validator = jsonschema.Draft202012Validator(json.load(f))
  with open(path, encoding="utf-8") as f:
    raw = json.load(f)
  assert list(validator.iter_errors(raw)) == []
  raw["interactions"]["actions"]["extra"] = {"label": "yes"}
  assert not validator.is_valid(raw)


def test_wrong_type_unknown_key_and_missing_key_name_the_path_and_the_file(tmp_path):
  raw = _default_raw()
  raw["interactions"]["action_thresholds"] = [{"action": "like", "min": 4}]
  raw["interactions"]["action_thresholds"][0]["min"] = "four"          # wrong type
  raw["exposure"]["hubness"] = 0.1                                     # unknown key
  del raw["entities"]["user"]["features"][5]["latitude_column"]        # missing key
  path = tmp_path / "mine.json"
  path.write_text(json.dumps(raw), encoding="utf-8")
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.load_config(str(path))
  assert err.value.source == str(path) and str(path) in str(err.value)
  assert err.value.problems == [
      "entities.user.features[5] (location).latitude_column: missing (required)",
      "exposure.hubness: unknown key (allowed: hubness_beta, max_impressions_per_day)",
      "interactions.action_thresholds[0].min: must be a number or null, got 'four'"]
  # a section of the wrong type is one problem, not one per alternative of the schema
  raw = _default_raw()
  raw["eligibility"] = ["user"]
  assert _problems(raw) == ["eligibility: must be null or an object, got ['user']"]
