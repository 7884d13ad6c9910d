"""The one config that declares the data and the features of both towers.

The config is a JSON file: human-editable, diffable, readable from any language
(the iOS side and SQL tooling included). Its structure is the JSON Schema
`config.schema.json` shipped with the package (`config_schema`); the checks that
relate values to each other (an entity a side names exists, feature names are
unique, a rule's feature has the right type) are made here. Its
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
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfrs_two_tower import config_schema
from tfrs_two_tower import rules as rules_lib

FORMAT_VERSION = 1
DEFAULT_CONFIG_PATH = os.path.join(os.path.dirname(__file__), "default_config.json")
SIDES = ("query", "candidate")
# Numeric timestamps count these units since 1970 (the schema's interactions.timestamp_unit).
TIMESTAMP_UNITS = tuple(u for u in config_schema.SCHEMA["$defs"]["interactions"]["properties"]
                        ["timestamp_unit"]["enum"] if u)
# History lists of the query tower: name -> the label of the actions it holds.
HISTORY_LISTS = {"liked": 1, "passed": 0}


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

  Optional reciprocal probes (both or neither; None = the log has no probes):
  probed (bool: when the viewer was shown the profile, the profile was shown the
  viewer as a probe) and probe_propensity (P(the feed shows the profile AND the
  probe fires), in (0, 1] where probed). They make match-rate estimates unbiased
  (`evaluation.off_policy`, docs/evaluation.md).
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
  probe_column: Optional[str] = None
  probe_propensity_column: Optional[str] = None

  ROLES = (("feed_id", "feed_id_column"), ("query_id", "viewer_column"),
           ("candidate_id", "profile_column"), ("timestamp", "timestamp_column"),
           ("position", "position_column"), ("score", "score_column"),
           ("propensity", "propensity_column"), ("shown", "shown_column"))
  PROBE_ROLES = (("probed", "probe_column"), ("probe_propensity", "probe_propensity_column"))

  @property
  def probes(self) -> bool:
    """Whether the config declares the reciprocal-probe columns."""
    return self.probe_column is not None

  @property
  def columns(self) -> Dict[str, str]:
    """Dataset role -> the log's column name (the probe roles when declared)."""
    roles = self.ROLES + (self.PROBE_ROLES if self.probes else ())
    return {role: getattr(self, key) for role, key in roles}


@dataclasses.dataclass(frozen=True)
class History:
  """The query user's recent swipes as query tower inputs (config key `history`).

  For each list (`liked`: actions with label 1, `passed`: label 0) the query
  side gets the candidate ids of the user's last `max_length` interactions of
  that list strictly before the interaction's time, most recent first, stored
  under `query_history_<list>` and looked up in the candidate id vocabulary.
  The tower pools a list by a weighted masked mean, weight `recency_decay`^l
  of the l-th most recent id (1.0: the plain mean), and in training drops each
  id with probability `dropout` (robustness to the short histories of new users).
  With `embed_in_core` false the towers' layers do not read the lists: only the like
  residual's history map does (`model/like_residual.py`), fitted after the towers.
  """
  max_length: int
  lists: Tuple[str, ...]
  share_candidate_id_embedding: bool
  recency_decay: float = 1.0
  dropout: float = 0.0
  embed_in_core: bool = True

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
  """Validates a config dict; raises ConfigError listing every problem found.

  Two passes: the JSON Schema (`config.schema.json`) checks the structure, then
  the checks below relate values to each other on the parts that passed it
  (both passes report together, so one run lists every problem).
  """
  raw = copy.deepcopy(raw)
  checked = config_schema.check(raw)
  problems = checked.messages
  if isinstance(raw, dict):
    problems += _cross_field_problems(raw, checked)
  if problems:
    raise ConfigError(source, problems)
  return _build(raw, source)


# -- checks relating values (what a JSON Schema cannot say) ----------------------------------

def _cross_field_problems(raw: Dict[str, Any], checked: config_schema.SchemaCheck) -> List[str]:
  problems: List[str] = []
  entities = raw.get("entities") if checked.readable("entities") else {}
  for name, entity in entities.items():
    if checked.readable("entities", name, "features"):
      problems += _feature_problems(raw, name, entity, checked)
  sides = {}
  for side in SIDES:
    if checked.readable(side, "entity"):
      sides[side] = raw[side]["entity"]
      if sides[side] not in entities:
        problems.append(f"{side}.entity: unknown entity {sides[side]!r} "
                        f"(defined: {', '.join(sorted(entities)) or 'none'})")
  if checked.readable("interactions"):
    problems += _interaction_problems(raw["interactions"], checked)
  if "history" in raw and checked.valid("history"):
    problems += _history_problems(raw, sides.get("candidate"), checked)
  if raw.get("impressions") is not None and checked.valid("impressions"):
    declared = [raw["impressions"].get(key) is not None for _, key in Impressions.PROBE_ROLES]
    if any(declared) and not all(declared):
      problems.append("impressions: probe_column and probe_propensity_column go together "
                      "(both set, or both null: a log without reciprocal probes)")
  problems += rules_lib.rule_problems(raw, sides.get("query"), sides.get("candidate"),
                                      checked.valid)
  return problems


def _feature_problems(raw: Dict[str, Any], name: str, entity: Dict[str, Any],
                      checked: config_schema.SchemaCheck) -> List[str]:
  """Names unique, one id feature embedding the id column, ordered bounds."""
  problems, seen, ids = [], set(), 0
  for i, spec in enumerate(entity["features"]):
    if not checked.valid("entities", name, "features", i):
      continue
    where = config_schema.render_path(raw, ("entities", name, "features", i))
    if spec["name"] in seen:
      problems.append(f"{where}.name: duplicate feature name {spec['name']!r}")
    seen.add(spec["name"])
    ids += spec["type"] == "id"
    column = spec.get("column", entity["id_column"])
    if spec["type"] == "id" and column != entity["id_column"]:
      problems.append(f"{where}.column: an 'id' feature embeds the entity id column "
                      f"{entity['id_column']!r}, got {column!r}")
    bounds = spec.get("bucket_boundaries", [])
    if any(a >= b for a, b in zip(bounds, bounds[1:])):
      problems.append(f"{where}.bucket_boundaries: must be a strictly increasing list of "
                      f"numbers, got {bounds!r}")
    valid = spec.get("valid_range")
    if valid is not None and not valid[0] < valid[1]:
      problems.append(f"{where}.valid_range: must be [low, high] with low < high, got {valid!r}")
  if ids > 1:
    problems.append(f"entities.{name}.features: at most one feature of type 'id'")
  return problems


def _interaction_problems(section: Dict[str, Any],
                          checked: config_schema.SchemaCheck) -> List[str]:
  """A positive action exists; action_thresholds name actions and do not overlap.

  `interactions.action_thresholds` maps a numeric action column to action names:
  a list of {"action": name, "min": x, "max": y} (either bound may be left out;
  both inclusive), e.g. [{"action": "like", "min": 4}, {"action": "pass", "max": 3}]
  for 1-5 ratings. A data value no range covers is refused at export.
  """
  problems = []
  actions = section.get("actions") if checked.readable("interactions", "actions") else {}
  if checked.valid("interactions", "actions") and not any(
      spec["label"] == 1 for spec in actions.values()):
    problems.append("interactions.actions: no action maps to label 1; retrieval needs positives")
  if not checked.readable("interactions", "action_thresholds"):
    return problems
  path, rules = "interactions.action_thresholds", []
  for i, spec in enumerate(section.get("action_thresholds") or []):
    if not checked.valid("interactions", "action_thresholds", i):
      continue
    rule = ActionThreshold(spec["action"], spec.get("min"), spec.get("max"))
    if rule.action not in actions:
      problems.append(f"{path}[{i}].action: {rule.action!r} is not one of "
                      f"interactions.actions ({', '.join(sorted(actions))})")
    elif None not in (rule.minimum, rule.maximum) and rule.minimum > rule.maximum:
      problems.append(f"{path}[{i}]: min {rule.minimum} > max {rule.maximum}")
    else:
      rules.append(rule)
  for i, a in enumerate(rules):
    for b in rules[i + 1:]:
      low = max(-np.inf if a.minimum is None else a.minimum,
                -np.inf if b.minimum is None else b.minimum)
      high = min(np.inf if a.maximum is None else a.maximum,
                 np.inf if b.maximum is None else b.maximum)
      if low <= high:
        problems.append(f"{path}: the ranges of {a.action!r} and {b.action!r} overlap "
                        f"(both contain {low:g}); a value must map to one action")
  return problems


def _history_problems(raw: Dict[str, Any], candidate: Optional[str],
                      checked: config_schema.SchemaCheck) -> List[str]:
  """History ids need the candidate id vocabulary; each list needs actions with its label."""
  problems = []
  lists = raw["history"].get("lists", list(HISTORY_LISTS))
  if candidate in raw.get("entities", {}) and checked.valid("entities", candidate, "features"):
    if not any(f["type"] == "id" for f in raw["entities"][candidate]["features"]):
      problems.append(f"history: the candidate entity {candidate!r} has no feature of type "
                      "'id' (history ids use its vocabulary)")
  if checked.valid("interactions", "actions"):
    labels = {spec["label"] for spec in raw["interactions"]["actions"].values()}
    for name in lists:
      if HISTORY_LISTS[name] not in labels:
        problems.append(f"history.lists: {name!r} holds actions with label "
                        f"{HISTORY_LISTS[name]}, but interactions.actions has none")
  return problems


# -- building the config from a valid dict (defaults filled in) ------------------------------

def _build(raw: Dict[str, Any], source: str) -> Config:
  rules = rules_lib.parse_rules(raw)
  entities = {name: _entity(name, spec, rules) for name, spec in raw["entities"].items()}
  history = None
  if "history" in raw:
    spec = raw["history"]
    history = History(max_length=spec["max_length"],
                      lists=tuple(spec.get("lists", HISTORY_LISTS)),
                      share_candidate_id_embedding=spec.get("share_candidate_id_embedding",
                                                            False),
                      recency_decay=float(spec.get("recency_decay", 1.0)),
                      dropout=float(spec.get("dropout", 0.0)),
                      embed_in_core=bool(spec.get("embed_in_core", True)))
  impressions = None
  if raw.get("impressions") is not None:
    spec = raw["impressions"]
    impressions = Impressions(table=spec["table"], sql=spec.get("sql"),
                              **{key: spec[key] for _, key in Impressions.ROLES},
                              **{key: spec.get(key) for _, key in Impressions.PROBE_ROLES})
  return Config(interactions=_interactions(raw["interactions"]), entities=entities,
                query_entity=raw["query"]["entity"],
                candidate_entity=raw["candidate"]["entity"],
                raw=raw, source=source, impressions=impressions, rules=rules,
                history=history)


def _interactions(spec: Dict[str, Any]) -> Interactions:
  actions = tuple(Action(name, int(a["label"]), float(a.get("weight", 1.0)))
                  for name, a in spec["actions"].items())
  thresholds = tuple(ActionThreshold(t["action"], t.get("min"), t.get("max"))
                     for t in spec.get("action_thresholds") or ())
  return Interactions(table=spec["table"], query_id_column=spec["query_id_column"],
                      candidate_id_column=spec["candidate_id_column"],
                      action_column=spec["action_column"],
                      timestamp_column=spec["timestamp_column"],
                      weight_column=spec.get("weight_column"), sql=spec.get("sql"),
                      actions=actions, timestamp_unit=spec.get("timestamp_unit"),
                      action_thresholds=thresholds)


def _entity(name: str, spec: Dict[str, Any], rules: rules_lib.Rules) -> Entity:
  return Entity(name, spec["table"], spec["id_column"], spec.get("created_at_column"),
                spec.get("sql"),
                tuple(_feature(f, spec["id_column"]) for f in spec["features"]),
                attributes=tuple(rules_lib.attribute_roles(rules, name).items()))


def _feature(spec: Dict[str, Any], id_column: str) -> Feature:
  """A feature spec that passed the schema -> Feature, defaults filled in."""
  ftype, kwargs = spec["type"], {}
  if ftype == "geo":
    columns = (spec["latitude_column"], spec["longitude_column"])
    kwargs["cell_degrees"] = float(spec.get("cell_degrees", 1.0))
  elif ftype == "id":
    columns = (id_column,)
  else:
    columns = (spec.get("column", spec["name"]),)
  if ftype == "numeric":
    valid = spec.get("valid_range")
    kwargs.update(normalization=spec.get("normalization", "zscore"),
                  fill=spec.get("fill", "mean"),
                  bucket_boundaries=tuple(float(b) for b in spec.get("bucket_boundaries", ())),
                  valid_range=None if valid is None else (float(valid[0]), float(valid[1])))
  else:
    kwargs.update(num_oov_buckets=spec.get("num_oov_buckets", 1),
                  min_count=spec.get("min_count", 1),
                  max_vocab_size=spec.get("max_vocab_size"))
  if ftype == "multi_categorical":
    kwargs.update(max_length=spec.get("max_length", 8), pooling=spec.get("pooling", "mean"))
  return Feature(name=spec["name"], type=ftype, columns=columns,
                 embedding_dim=int(spec.get("embedding_dim") or 0), **kwargs)


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
