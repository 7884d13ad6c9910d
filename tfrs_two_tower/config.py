"""The one config that declares the data and the features of both towers.

The config is a JSON file: human-editable, diffable, readable from any language
(the iOS side and SQL tooling included) and it needs no extra dependency. Its
canonical form (sorted keys, no whitespace) is hashed; the hash travels through
the dataset and run manifests so that a stage can refuse inputs made from a
different config.

Shape (see `default_config.json` for the dating schema)::

  {
    "format_version": 1,
    "interactions": {"table", "query_id_column", "candidate_id_column",
                     "action_column", "timestamp_column", "weight_column",
                     "actions": {"like": {"label": 1, "weight": 1.0}, ...},
                     "action_thresholds": null,  # or [{"action": "like", "min": 4}, ...]
                     "sql": null},
    "query": {"entity": "user"},
    "candidate": {"entity": "user"},
    "entities": {"user": {"table", "id_column", "created_at_column", "sql",
                          "features": [{"name", "type", ...}, ...]}},
    "eligibility": {...}, "baseline": {...}, "verdict": {...}, "exposure": {...}
  }

The last four keys are optional serving rules (who may be shown to whom, the
app's current matching, the verdict's thresholds, exposure control), parsed by
`rules.parse_rules` into `Config.rules`.

The query and candidate sides name an entity each. In a dating app both name the
same `user` entity (users swipe on users); a user-to-item config names an `item`
entity with its own table for the candidate side.
"""

import copy
import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfrs_two_tower import rules as rules_lib

FORMAT_VERSION = 1
DEFAULT_CONFIG_PATH = os.path.join(os.path.dirname(__file__), "default_config.json")
SIDES = ("query", "candidate")
FEATURE_TYPES = ("id", "categorical", "multi_categorical", "numeric", "geo")
NUMERIC_NORMALIZATIONS = ("zscore", "log_zscore", "none")
POOLINGS = ("mean", "sum")
TIMESTAMP_UNITS = ("s", "ms", "us", "ns")  # numeric timestamps count these since 1970
# History lists of the query tower: name -> the label of the actions it holds.
HISTORY_LISTS = {"liked": 1, "passed": 0}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class ConfigError(ValueError):
  """A config that cannot be used; `problems` lists every problem found."""

  def __init__(self, source: str, problems: Sequence[str]):
    self.source = source
    self.problems = list(problems)
    lines = "\n".join(f"  - {p}" for p in self.problems)
    super().__init__(f"invalid config {source}: {len(self.problems)} problem(s):\n{lines}")


@dataclasses.dataclass(frozen=True)
class Action:
  """How one raw action value becomes a training label and a sample weight."""
  name: str
  label: int
  weight: float


@dataclasses.dataclass(frozen=True)
class ActionThreshold:
  """A numeric action value v in [minimum, maximum] (inclusive; None: unbounded) is `action`."""
  action: str
  minimum: Optional[float] = None
  maximum: Optional[float] = None

  def contains(self, values: np.ndarray) -> np.ndarray:
    inside = np.ones(values.shape, bool)
    if self.minimum is not None:
      inside &= values >= self.minimum
    if self.maximum is not None:
      inside &= values <= self.maximum
    return inside


@dataclasses.dataclass(frozen=True)
class Feature:
  """One tower input.

  Types and their stored form (the dataset key is `<side>_<name>`; ids are
  stored under `<side>_id`):
    id:                entity id string -> vocabulary of ids + OOV buckets.
    categorical:       one string -> vocabulary + OOV buckets.
    multi_categorical: list of strings (e.g. interests), padded to `max_length`
                       with "" -> vocabulary + OOV, pooled embeddings.
    numeric:           float32, NaN when missing -> normalised, missing filled.
    geo:               [latitude, longitude] float32 -> grid-cell vocabulary
                       (`cell_degrees`) + unit-sphere coordinates.
  """
  name: str
  type: str
  columns: Tuple[str, ...]
  embedding_dim: int = 0
  num_oov_buckets: int = 1
  min_count: int = 1
  max_vocab_size: Optional[int] = None
  max_length: int = 1
  pooling: str = "mean"
  normalization: str = "zscore"
  fill: Any = "mean"
  bucket_boundaries: Tuple[float, ...] = ()
  valid_range: Optional[Tuple[float, float]] = None  # numeric: values outside become missing
  cell_degrees: float = 1.0

  @property
  def uses_vocabulary(self) -> bool:
    return self.type in ("id", "categorical", "multi_categorical", "geo")

  def key(self, side: str) -> str:
    """The feature's name in dataset records and model inputs."""
    return f"{side}_id" if self.type == "id" else f"{side}_{self.name}"


@dataclasses.dataclass(frozen=True)
class Entity:
  """A table of things on one side: users, or items for user-to-item data."""
  name: str
  table: str
  id_column: str
  created_at_column: Optional[str]
  sql: Optional[str]
  features: Tuple[Feature, ...]
  # (column, role) read by the serving rules (`rules.attribute_roles`), features or not.
  attributes: Tuple[Tuple[str, str], ...] = ()

  @property
  def columns(self) -> List[str]:
    """Raw columns the entity table must provide, id and created_at first."""
    cols = [self.id_column] + ([self.created_at_column] if self.created_at_column else [])
    for f in self.features:
      cols += [c for c in f.columns if c not in cols]
    return cols + [c for c, _ in self.attributes if c not in cols]


@dataclasses.dataclass(frozen=True)
class Interactions:
  table: str
  query_id_column: str
  candidate_id_column: str
  action_column: str
  timestamp_column: str
  weight_column: Optional[str]
  sql: Optional[str]
  actions: Tuple[Action, ...]
  timestamp_unit: Optional[str] = None  # unit of numeric timestamps: s, ms, us or ns
  action_thresholds: Tuple[ActionThreshold, ...] = ()

  @property
  def columns(self) -> List[str]:
    cols = [self.query_id_column, self.candidate_id_column, self.action_column,
            self.timestamp_column]
    return cols + ([self.weight_column] if self.weight_column else [])

  def action(self, name: str) -> Optional[Action]:
    return next((a for a in self.actions if a.name == name), None)

  def threshold_actions(self, values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """[n] numeric action values -> ([n] action names, [n] bool unmapped).

    Uses `action_thresholds` (the rules do not overlap, so at most one matches);
    NaN and values between the rules' ranges are unmapped (name "").
    """
    values = np.asarray(values, np.float64)
    names = np.full(values.shape, "", dtype=object)
    for rule in self.action_thresholds:
      names[rule.contains(values)] = rule.action
    return names, names == ""


@dataclasses.dataclass(frozen=True)
class Impressions:
  """The feed's impressions log (optional): one row per profile a feed considered.

  Roles (dataset name -> config key): feed_id (one app open), query_id (viewer),
  candidate_id (profile), timestamp, position (0-based rank in the feed's order),
  score (the feed's score), propensity (P(the feed shows the profile), in (0, 1]),
  shown (whether it was shown). See docs/data.md.
  """
  table: str
  sql: Optional[str]
  feed_id_column: str
  viewer_column: str
  profile_column: str
  timestamp_column: str
  position_column: str
  score_column: str
  propensity_column: str
  shown_column: str

  ROLES = (("feed_id", "feed_id_column"), ("query_id", "viewer_column"),
           ("candidate_id", "profile_column"), ("timestamp", "timestamp_column"),
           ("position", "position_column"), ("score", "score_column"),
           ("propensity", "propensity_column"), ("shown", "shown_column"))

  @property
  def columns(self) -> Dict[str, str]:
    """Dataset role -> the log's column name."""
    return {role: getattr(self, key) for role, key in self.ROLES}


@dataclasses.dataclass(frozen=True)
class History:
  """The query user's recent swipes as query tower inputs (config key `history`).

  For each list (`liked`: actions with label 1, `passed`: label 0) the query
  side gets the candidate ids of the user's last `max_length` interactions of
  that list strictly before the interaction's time, most recent first, stored
  under `query_history_<list>` and looked up in the candidate id vocabulary.
  """
  max_length: int
  lists: Tuple[str, ...]
  share_candidate_id_embedding: bool

  def key(self, name: str) -> str:
    return f"query_history_{name}"

  @property
  def keys(self) -> List[str]:
    return [self.key(name) for name in self.lists]


@dataclasses.dataclass(frozen=True)
class Config:
  interactions: Interactions
  entities: Dict[str, Entity]
  query_entity: str
  candidate_entity: str
  raw: Dict[str, Any]
  source: str
  impressions: Optional[Impressions] = None
  rules: rules_lib.Rules = rules_lib.Rules(None, None, rules_lib.Verdict(), rules_lib.Exposure())
  history: Optional[History] = None

  @property
  def eligibility(self) -> Optional[rules_lib.Eligibility]:
    return self.rules.eligibility

  @property
  def baseline(self) -> Optional[rules_lib.Baseline]:
    return self.rules.baseline

  def entity(self, side: str) -> Entity:
    return self.entities[self.query_entity if side == "query" else self.candidate_entity]

  def features(self, side: str) -> Tuple[Feature, ...]:
    return self.entity(side).features

  @property
  def hash(self) -> str:
    return config_hash(self.raw)

  @property
  def same_entity_both_sides(self) -> bool:
    return self.query_entity == self.candidate_entity

  def to_json(self) -> str:
    return json.dumps(self.raw, indent=2, sort_keys=True)


def config_hash(raw: Dict[str, Any]) -> str:
  """sha256 of the canonical config WITHOUT the serving rules (`rules.TOP_LEVEL_KEYS`):
  rules decide what is shown, not what is exported or learned, so changing them needs
  no new dataset or run (and a config without rules hashes as before they existed)."""
  data = {k: v for k, v in raw.items() if k not in rules_lib.TOP_LEVEL_KEYS}
  canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_config(path: Optional[str] = None) -> Config:
  """Reads and validates a config file (the packaged default when `path` is None)."""
  path = path or DEFAULT_CONFIG_PATH
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except FileNotFoundError:
    raise ConfigError(path, ["file not found"]) from None
  except json.JSONDecodeError as e:
    raise ConfigError(path, [f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"]) from None
  return parse_config(raw, source=path)


def parse_config(raw: Dict[str, Any], source: str = "<dict>") -> Config:
  """Validates a config dict; raises ConfigError listing every problem found."""
  problems: List[str] = []
  if not isinstance(raw, dict):
    raise ConfigError(source, ["top level must be a JSON object"])
  raw = copy.deepcopy(raw)
  if raw.get("format_version") != FORMAT_VERSION:
    problems.append(f"format_version: expected {FORMAT_VERSION}, got {raw.get('format_version')!r}")
  _check_keys(raw, "", {"format_version", "interactions", "query", "candidate", "entities",
                        "description", "impressions", "history",
                        *rules_lib.TOP_LEVEL_KEYS}, problems)

  entities: Dict[str, Entity] = {}
  raw_entities = raw.get("entities")
  if not isinstance(raw_entities, dict) or not raw_entities:
    problems.append("entities: must be a non-empty object of entity name -> definition")
    raw_entities = {}
  for name, ent in raw_entities.items():
    entity = _parse_entity(name, ent, problems)
    if entity is not None:
      entities[name] = entity

  side_entities = {}
  for side in SIDES:
    section = raw.get(side)
    if not isinstance(section, dict) or "entity" not in section:
      problems.append(f"{side}: must be an object like {{\"entity\": \"user\"}}")
      continue
    _check_keys(section, side, {"entity"}, problems)
    if section["entity"] not in raw_entities:
      problems.append(f"{side}.entity: unknown entity {section['entity']!r} "
                      f"(defined: {', '.join(sorted(raw_entities)) or 'none'})")
    side_entities[side] = section["entity"]

  interactions = _parse_interactions(raw.get("interactions"), problems)
  impressions = _parse_impressions(raw.get("impressions"), problems)
  rules = rules_lib.parse_rules(raw, entities, side_entities.get("query"),
                                side_entities.get("candidate"), problems)
  history = None
  if "history" in raw:
    history = _parse_history(raw["history"], raw.get("interactions"),
                             entities.get(side_entities.get("candidate")), problems)
  if problems:
    raise ConfigError(source, problems)
  entities = {name: dataclasses.replace(
      e, attributes=tuple(rules_lib.attribute_roles(rules, name).items()))
      for name, e in entities.items()}
  return Config(interactions=interactions, entities=entities,
                query_entity=side_entities["query"], candidate_entity=side_entities["candidate"],
                raw=raw, source=source, impressions=impressions, rules=rules,
                history=history)


def _parse_impressions(section: Any, problems: List[str]) -> Optional[Impressions]:
  """The optional `impressions` section (None when absent or null)."""
  if section is None:
    return None
  path = "impressions"
  if not isinstance(section, dict):
    problems.append(f"{path}: must be an object naming the impressions table and its columns")
    return None
  keys = ["table"] + [key for _, key in Impressions.ROLES]
  _check_keys(section, path, set(keys) | {"sql"}, problems)
  fields = {k: _require_str(section, k, path, problems) for k in keys}
  sql = _require_str(section, "sql", path, problems, optional=True)
  if None in fields.values():
    return None
  return Impressions(sql=sql, **fields)


def _parse_history(section: Any, interactions: Any, candidate: Optional[Entity],
                   problems: List[str]) -> Optional[History]:
  """The optional `history` section; problems name the key at fault."""
  if not isinstance(section, dict):
    problems.append("history: must be an object like {\"max_length\": 20, "
                    "\"lists\": [\"liked\", \"passed\"]}")
    return None
  n_before = len(problems)
  _check_keys(section, "history", {"max_length", "lists", "share_candidate_id_embedding"},
              problems)
  max_length = section.get("max_length")
  if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
    problems.append(f"history.max_length: must be an integer >= 1, got {max_length!r}")
  lists = section.get("lists", list(HISTORY_LISTS))
  if (not isinstance(lists, list) or not lists or len(set(map(str, lists))) != len(lists)
      or any(name not in HISTORY_LISTS for name in lists)):
    problems.append(f"history.lists: must be a non-empty list of distinct names from "
                    f"{', '.join(HISTORY_LISTS)}, got {lists!r}")
    lists = []
  share = section.get("share_candidate_id_embedding", False)
  if not isinstance(share, bool):
    problems.append(f"history.share_candidate_id_embedding: must be true or false, got {share!r}")
  if not isinstance(interactions, dict) or not interactions.get("timestamp_column"):
    problems.append("history: needs interactions.timestamp_column (a history is the swipes "
                    "before each interaction's time)")
  if candidate is not None and not any(f.type == "id" for f in candidate.features):
    problems.append(f"history: the candidate entity {candidate.name!r} has no feature of type "
                    "'id' (history ids use its vocabulary)")
  if isinstance(interactions, dict) and isinstance(interactions.get("actions"), dict):
    labels = {spec.get("label") for spec in interactions["actions"].values()
              if isinstance(spec, dict)}
    for name in lists:
      if HISTORY_LISTS.get(name) not in labels:
        problems.append(f"history.lists: {name!r} holds actions with label "
                        f"{HISTORY_LISTS[name]}, but interactions.actions has none")
  if len(problems) > n_before:
    return None
  return History(max_length=max_length, lists=tuple(lists), share_candidate_id_embedding=share)


def _check_keys(section: Dict[str, Any], path: str, allowed: set, problems: List[str]) -> None:
  for key in section:
    if key not in allowed:
      where = f"{path}.{key}" if path else key
      problems.append(f"{where}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _require_str(section: Dict[str, Any], key: str, path: str, problems: List[str],
                 optional: bool = False) -> Optional[str]:
  value = section.get(key)
  if value is None and optional:
    return None
  if not isinstance(value, str) or not value:
    problems.append(f"{path}.{key}: {'must be a non-empty string' + (' or null' if optional else '')}"
                    f" (got {value!r})")
    return None
  return value


def _parse_interactions(section: Any, problems: List[str]) -> Optional[Interactions]:
  path = "interactions"
  if not isinstance(section, dict):
    problems.append(f"{path}: must be an object")
    return None
  _check_keys(section, path, {"table", "query_id_column", "candidate_id_column", "action_column",
                              "timestamp_column", "timestamp_unit", "weight_column", "actions",
                              "sql", "action_thresholds"}, problems)
  fields = {k: _require_str(section, k, path, problems)
            for k in ("table", "query_id_column", "candidate_id_column", "action_column",
                      "timestamp_column")}
  weight_column = _require_str(section, "weight_column", path, problems, optional=True)
  sql = _require_str(section, "sql", path, problems, optional=True)
  timestamp_unit = section.get("timestamp_unit")
  if timestamp_unit is not None and timestamp_unit not in TIMESTAMP_UNITS:
    problems.append(f"{path}.timestamp_unit: must be one of {list(TIMESTAMP_UNITS)} (the unit "
                    f"of numeric timestamps), got {timestamp_unit!r}")
  actions = []
  raw_actions = section.get("actions")
  if not isinstance(raw_actions, dict) or not raw_actions:
    problems.append(f"{path}.actions: must map each action value to {{\"label\": 0|1, \"weight\": w}}")
    raw_actions = {}
  for name, spec in raw_actions.items():
    where = f"{path}.actions.{name}"
    if not isinstance(spec, dict):
      problems.append(f"{where}: must be an object with label and weight")
      continue
    _check_keys(spec, where, {"label", "weight"}, problems)
    label, weight = spec.get("label"), spec.get("weight", 1.0)
    if label not in (0, 1) or isinstance(label, bool):
      problems.append(f"{where}.label: must be 1 (positive) or 0 (negative), got {label!r}")
      continue
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
      problems.append(f"{where}.weight: must be a positive number, got {weight!r}")
      continue
    actions.append(Action(name, int(label), float(weight)))
  if raw_actions and actions and not any(a.label == 1 for a in actions):
    problems.append(f"{path}.actions: no action maps to label 1; retrieval needs positives")
  thresholds = _parse_action_thresholds(section.get("action_thresholds"),
                                        {a.name for a in actions}, problems)
  if None in fields.values():
    return None
  return Interactions(weight_column=weight_column, sql=sql, actions=tuple(actions),
                      timestamp_unit=timestamp_unit, action_thresholds=thresholds,
                      **fields)


def _parse_action_thresholds(section: Any, actions: set,
                             problems: List[str]) -> Tuple[ActionThreshold, ...]:
  """`interactions.action_thresholds`: a numeric action column -> action names.

  A list of {"action": name, "min": x, "max": y} (either bound may be left out;
  both inclusive), e.g. [{"action": "like", "min": 4}, {"action": "pass", "max": 3}]
  for 1-5 ratings. Ranges may not overlap; a data value no range covers is refused.
  """
  path = "interactions.action_thresholds"
  if section is None:
    return ()
  if not isinstance(section, list) or not section:
    problems.append(f"{path}: must be a non-empty list of {{\"action\", \"min\", \"max\"}} or null")
    return ()
  rules = []
  for i, spec in enumerate(section):
    where = f"{path}[{i}]"
    if not isinstance(spec, dict):
      problems.append(f"{where}: must be an object with action and min and/or max")
      continue
    _check_keys(spec, where, {"action", "min", "max"}, problems)
    bounds = {}
    for key in ("min", "max"):
      value = spec.get(key)
      if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                or not np.isfinite(value)):
        problems.append(f"{where}.{key}: must be a number, got {value!r}")
        value = None
      bounds[key] = value
    if spec.get("action") not in actions:
      problems.append(f"{where}.action: {spec.get('action')!r} is not one of "
                      f"interactions.actions ({', '.join(sorted(actions))})")
      continue
    if bounds["min"] is None and bounds["max"] is None:
      problems.append(f"{where}: needs min and/or max")
      continue
    if None not in bounds.values() and bounds["min"] > bounds["max"]:
      problems.append(f"{where}: min {bounds['min']} > max {bounds['max']}")
      continue
    rules.append(ActionThreshold(spec["action"], bounds["min"], bounds["max"]))
  for i, a in enumerate(rules):
    for b in rules[i + 1:]:
      low = max(-np.inf if a.minimum is None else a.minimum,
                -np.inf if b.minimum is None else b.minimum)
      high = min(np.inf if a.maximum is None else a.maximum,
                 np.inf if b.maximum is None else b.maximum)
      if low <= high:
        problems.append(f"{path}: the ranges of {a.action!r} and {b.action!r} overlap "
                        f"(both contain {low:g}); a value must map to one action")
  return tuple(rules)


def _parse_entity(name: str, section: Any, problems: List[str]) -> Optional[Entity]:
  path = f"entities.{name}"
  if not _NAME_RE.match(str(name)):
    problems.append(f"{path}: entity names must match {_NAME_RE.pattern}")
  if not isinstance(section, dict):
    problems.append(f"{path}: must be an object")
    return None
  _check_keys(section, path, {"table", "id_column", "created_at_column", "sql", "features"},
              problems)
  table = _require_str(section, "table", path, problems)
  id_column = _require_str(section, "id_column", path, problems)
  created_at = _require_str(section, "created_at_column", path, problems, optional=True)
  sql = _require_str(section, "sql", path, problems, optional=True)
  raw_features = section.get("features")
  if not isinstance(raw_features, list) or not raw_features:
    problems.append(f"{path}.features: must be a non-empty list")
    return None
  features, seen = [], set()
  for i, spec in enumerate(raw_features):
    feature = _parse_feature(f"{path}.features[{i}]", spec, id_column, problems)
    if feature is None:
      continue
    if feature.name in seen:
      problems.append(f"{path}.features[{i}].name: duplicate feature name {feature.name!r}")
      continue
    seen.add(feature.name)
    features.append(feature)
  if sum(f.type == "id" for f in features) > 1:
    problems.append(f"{path}.features: at most one feature of type 'id'")
  if None in (table, id_column):
    return None
  return Entity(name, table, id_column, created_at, sql, tuple(features))


def _positive_int(spec, key, default, path, problems, minimum=1):
  value = spec.get(key, default)
  if value is None and default is None:
    return None
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    problems.append(f"{path}.{key}: must be an integer >= {minimum}, got {value!r}")
    return default
  return value


_COMMON_KEYS = {"name", "type", "column", "embedding_dim", "description"}
_TYPE_KEYS = {
    "id": {"num_oov_buckets", "min_count", "max_vocab_size"},
    "categorical": {"num_oov_buckets", "min_count", "max_vocab_size"},
    "multi_categorical": {"num_oov_buckets", "min_count", "max_vocab_size", "max_length",
                          "pooling"},
    "numeric": {"normalization", "fill", "bucket_boundaries", "valid_range"},
    "geo": {"latitude_column", "longitude_column", "cell_degrees", "num_oov_buckets",
            "min_count", "max_vocab_size"},
}


def _parse_feature(path: str, spec: Any, id_column: Optional[str],
                   problems: List[str]) -> Optional[Feature]:
  if not isinstance(spec, dict):
    problems.append(f"{path}: must be an object with at least name and type")
    return None
  name, ftype = spec.get("name"), spec.get("type")
  if not isinstance(name, str) or not _NAME_RE.match(name):
    problems.append(f"{path}.name: must match {_NAME_RE.pattern}, got {name!r}")
    return None
  path = f"{path} ({name})"
  if ftype not in FEATURE_TYPES:
    problems.append(f"{path}.type: unknown type {ftype!r} (expected one of {', '.join(FEATURE_TYPES)})")
    return None
  _check_keys(spec, path, _COMMON_KEYS | _TYPE_KEYS[ftype], problems)
  n_before = len(problems)
  kwargs: Dict[str, Any] = {}
  if ftype == "geo":
    lat = _require_str(spec, "latitude_column", path, problems)
    lon = _require_str(spec, "longitude_column", path, problems)
    columns = (lat, lon)
    cell = spec.get("cell_degrees", 1.0)
    if not isinstance(cell, (int, float)) or isinstance(cell, bool) or not 0 < cell <= 90:
      problems.append(f"{path}.cell_degrees: must be a number in (0, 90], got {cell!r}")
    else:
      kwargs["cell_degrees"] = float(cell)
  elif ftype == "id":
    column = spec.get("column", id_column)
    if column != id_column:
      problems.append(f"{path}.column: an 'id' feature embeds the entity id column "
                      f"{id_column!r}, got {column!r}")
    columns = (id_column,)
  else:
    column = spec.get("column", name)
    if not isinstance(column, str) or not column:
      problems.append(f"{path}.column: must be a non-empty string")
    columns = (column,)

  if ftype == "numeric":
    norm = spec.get("normalization", "zscore")
    if norm not in NUMERIC_NORMALIZATIONS:
      problems.append(f"{path}.normalization: unknown {norm!r} (expected one of "
                      f"{', '.join(NUMERIC_NORMALIZATIONS)})")
    fill = spec.get("fill", "mean")
    if fill != "mean" and (not isinstance(fill, (int, float)) or isinstance(fill, bool)):
      problems.append(f"{path}.fill: must be \"mean\" or a number, got {fill!r}")
    bounds = spec.get("bucket_boundaries", [])
    if (not isinstance(bounds, list) or not all(isinstance(b, (int, float)) for b in bounds)
        or sorted(bounds) != bounds or len(set(bounds)) != len(bounds)):
      problems.append(f"{path}.bucket_boundaries: must be a strictly increasing list of numbers")
      bounds = []
    kwargs.update(normalization=norm, fill=fill, bucket_boundaries=tuple(float(b) for b in bounds))
    valid = spec.get("valid_range")
    if valid is not None:
      if (not isinstance(valid, list) or len(valid) != 2 or not all(
          isinstance(v, (int, float)) and not isinstance(v, bool) for v in valid)
          or not valid[0] < valid[1]):
        problems.append(f"{path}.valid_range: must be [low, high] with low < high, got {valid!r}")
      else:
        kwargs["valid_range"] = (float(valid[0]), float(valid[1]))
    embedding_default = 0
  else:
    kwargs["num_oov_buckets"] = _positive_int(spec, "num_oov_buckets", 1, path, problems)
    kwargs["min_count"] = _positive_int(spec, "min_count", 1, path, problems)
    kwargs["max_vocab_size"] = _positive_int(spec, "max_vocab_size", None, path, problems)
    embedding_default = None
  if ftype == "multi_categorical":
    kwargs["max_length"] = _positive_int(spec, "max_length", 8, path, problems)
    pooling = spec.get("pooling", "mean")
    if pooling not in POOLINGS:
      problems.append(f"{path}.pooling: unknown {pooling!r} (expected one of {', '.join(POOLINGS)})")
    kwargs["pooling"] = pooling

  embedding_dim = spec.get("embedding_dim", embedding_default)
  needs_embedding = ftype != "numeric" or kwargs.get("bucket_boundaries")
  if needs_embedding and (not isinstance(embedding_dim, int) or isinstance(embedding_dim, bool)
                          or embedding_dim < 1):
    problems.append(f"{path}.embedding_dim: must be an integer >= 1, got {embedding_dim!r}")
  if len(problems) > n_before:
    return None
  return Feature(name=name, type=ftype, columns=tuple(columns),
                 embedding_dim=int(embedding_dim or 0), **kwargs)


def check_columns(config: Config, kind: str, available: Sequence[str],
                  source: str) -> List[str]:
  """Problems for required raw columns missing from a table.

  Args:
    kind: "interactions" or a side ("query"/"candidate").
    available: the column names the source provides.
    source: where the table came from (file, table name), for the message.
  Returns:
    One message per missing column, naming the config key that asked for it.
  """
  available = set(available)
  missing = []
  if kind == "interactions":
    section = config.interactions
    for key in ("query_id_column", "candidate_id_column", "action_column", "timestamp_column",
                "weight_column"):
      column = getattr(section, key)
      if column and column not in available:
        missing.append(f"{source}: missing column {column!r} (config interactions.{key})")
    return missing
  entity = config.entity(kind)
  for key in ("id_column", "created_at_column"):
    column = getattr(entity, key)
    if column and column not in available:
      missing.append(f"{source}: missing column {column!r} (config entities.{entity.name}.{key})")
  for i, feature in enumerate(entity.features):
    for column in feature.columns:
      if column not in available and column != entity.id_column:
        missing.append(f"{source}: missing column {column!r} "
                       f"(config entities.{entity.name}.features[{i}] {feature.name!r})")
  for column, _ in entity.attributes:
    if column not in available:
      missing.append(f"{source}: missing column {column!r} (config eligibility / baseline "
                     f"rules of entity {entity.name!r})")
  return missing
