"""The serving rules of a config: who may be shown to whom, the baseline, the verdict, exposure.

Four optional top-level config keys (absent = no rule; a user-to-item config has
none). Every column, value and threshold of a schema lives in the config; the
code here only checks the shape:

  "eligibility": {
    "entity": "user",                    the entity table the rules read
    "preference": {                      mutual: u seeks v's gender AND v seeks u's gender
      "gender_column", "seeking_column",   seeking: text or text[] (union of elements)
      "genders": {canonical: [raw gender values]},
      "seeking": {raw seeking value: [canonical genders] | ["*"] (anyone)},
      "case_sensitive": false},
    "age": {"column", "window_years"}    |u.age - v.age| <= window, OR
           {"column", "min_column", "max_column"}   v.age in u's range AND u.age in v's
    "distance": {"feature": <geo feature>, "max_km"},
    "blocked": {"table", "query_id_column", "candidate_id_column"} | {"sql"},
    "exclude_self": true, "exclude_swiped": true,
    "active": {"column", "within_days"}  candidate active within the last N days
  },
  "baseline": {"terms": [{"type": ..., "weight": ...}, ...]} | {"sql": "... %(user_id)s ..."},
  "verdict": {"expected_lift_low": 0.20, "expected_lift_high": 0.40, "auc_gate": 0.7},
  "exposure": {"hubness_beta": 0.0, "max_impressions_per_day": null}

Baseline term types (u = the user, v = the candidate; a term whose value is
missing for a pair contributes 0):
  eligible:        weight * (eligible(u, v) - 1)               the rules as a soft filter
  age_closeness:   -weight * max(0, |age_u - age_v| - window_years)
  distance_decay:  -weight * min(max(0, km - radius_km) / radius_km, cap)
  shared_values:   weight * |values_u ∩ values_v|               a multi_categorical feature

Their structure is part of the config's JSON Schema (`config.schema.json`);
`rule_problems` adds what a schema cannot say (a rule's feature has the right
type, seeking values name canonical genders) and `parse_rules` builds the rules
from a valid config. Neither reads data: values are checked against the data at
export (`data.eligibility_check`).
"""

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

ANYONE = "*"
DEFAULT_VERDICT = {"expected_lift_low": 0.20, "expected_lift_high": 0.40, "auc_gate": 0.7}


@dataclasses.dataclass(frozen=True)
class Preference:
  """Mutual preference: seeking values of one side accept canonical genders of the other.

  Attributes:
    genders: canonical gender -> raw values of `gender_column` meaning it (synonyms).
    seeking: raw value of `seeking_column` -> canonical genders it accepts; ANYONE = all.
    case_sensitive: False compares raw values case-folded.
  """
  gender_column: str
  seeking_column: str
  genders: Mapping[str, Tuple[str, ...]]
  seeking: Mapping[str, Tuple[str, ...]]
  case_sensitive: bool = False

  def fold(self, value: str) -> str:
    return value if self.case_sensitive else value.casefold()


@dataclasses.dataclass(frozen=True)
class AgeRule:
  """Fixed window (|age_u - age_v| <= window_years) or each user's own range (mutual)."""
  column: str
  window_years: Optional[float] = None
  min_column: Optional[str] = None
  max_column: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class DistanceRule:
  feature: str  # a geo feature of the entity
  max_km: float


@dataclasses.dataclass(frozen=True)
class BlockedRule:
  """Pairs never shown: (query id, candidate id) rows of a table or of a SQL query."""
  table: Optional[str]
  query_id_column: str
  candidate_id_column: str
  sql: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class ActiveRule:
  column: str  # a timestamp column of the entity: last activity
  within_days: float


@dataclasses.dataclass(frozen=True)
class Eligibility:
  entity: str
  preference: Optional[Preference] = None
  age: Optional[AgeRule] = None
  distance: Optional[DistanceRule] = None
  blocked: Optional[BlockedRule] = None
  exclude_self: bool = True
  exclude_swiped: bool = True
  active: Optional[ActiveRule] = None

  @property
  def attribute_columns(self) -> List[str]:
    """Raw entity columns the rules read (exported as entity attributes)."""
    cols = []
    if self.preference:
      cols += [self.preference.gender_column, self.preference.seeking_column]
    if self.age:
      cols += [c for c in (self.age.column, self.age.min_column, self.age.max_column) if c]
    if self.active:
      cols.append(self.active.column)
    return list(dict.fromkeys(cols))

  @property
  def names(self) -> List[str]:
    """The rules present, by config key."""
    return [n for n in ("preference", "age", "distance", "blocked", "active")
            if getattr(self, n) is not None] + [
                n for n in ("exclude_self", "exclude_swiped") if getattr(self, n)]


@dataclasses.dataclass(frozen=True)
class BaselineTerm:
  type: str
  weight: float
  column: Optional[str] = None
  feature: Optional[str] = None
  window_years: float = 0.0
  radius_km: float = 1.0
  cap: float = float("inf")


@dataclasses.dataclass(frozen=True)
class Baseline:
  """The app's current matching: weighted terms, or its own SQL (one of the two)."""
  terms: Tuple[BaselineTerm, ...] = ()
  sql: Optional[str] = None

  @property
  def attribute_columns(self) -> List[str]:
    return list(dict.fromkeys(t.column for t in self.terms if t.column))


@dataclasses.dataclass(frozen=True)
class Verdict:
  expected_lift_low: float = DEFAULT_VERDICT["expected_lift_low"]
  expected_lift_high: float = DEFAULT_VERDICT["expected_lift_high"]
  auc_gate: float = DEFAULT_VERDICT["auc_gate"]


@dataclasses.dataclass(frozen=True)
class Exposure:
  """Exposure control applied wherever lists are served (docs/evaluation.md).

  hubness_beta: s'(u, v) = s(u, v) - beta * qbar . c_v (model scorers only).
  max_impressions_per_day: a candidate already in that many lists today is left
    out of further lists until the next day (None = no cap).
  """
  hubness_beta: float = 0.0
  max_impressions_per_day: Optional[int] = None

  @property
  def active(self) -> bool:
    return self.hubness_beta > 0 or self.max_impressions_per_day is not None


@dataclasses.dataclass(frozen=True)
class Rules:
  eligibility: Optional[Eligibility]
  baseline: Optional[Baseline]
  verdict: Verdict
  exposure: Exposure


TOP_LEVEL_KEYS = ("eligibility", "baseline", "verdict", "exposure")


def attribute_roles(rules: Rules, entity: str) -> Dict[str, str]:
  """Raw columns of `entity` the rules read -> role ("list": text or text[], "number",
  "time"): exported with the entity table even when no model feature reads them."""
  e, roles = rules.eligibility, {}
  if e is None or e.entity != entity:
    return roles
  if e.preference:
    roles.update({e.preference.gender_column: "list", e.preference.seeking_column: "list"})
  if e.age:
    roles.update({c: "number" for c in (e.age.column, e.age.min_column, e.age.max_column) if c})
  if e.active:
    roles[e.active.column] = "time"
  if rules.baseline:
    roles.update({c: "number" for c in rules.baseline.attribute_columns})
  return roles


def rule_problems(raw: Dict[str, Any], query_entity: Optional[str],
                  candidate_entity: Optional[str], valid: Callable[..., bool]) -> List[str]:
  """What the config schema cannot say about the four keys: the values they relate.

  Args:
    raw: the config dict; only parts that passed the schema are read.
    query_entity, candidate_entity: the sides' entity names (None when unreadable).
    valid: valid(*key_path) -> True when that part passed the schema whole.
  Returns:
    One message per problem, naming the config key at fault.
  """
  problems: List[str] = []
  section = raw.get("eligibility")
  if section is not None and valid("eligibility", "entity"):
    name = section.get("entity", candidate_entity)
    if name not in (raw.get("entities") or {}):
      problems.append(f"eligibility.entity: unknown entity {name!r}")
    pairwise = [k for k in ("preference", "age", "distance") if section.get(k) is not None]
    if pairwise and query_entity is not None and not (query_entity == candidate_entity == name):
      problems.append(f"eligibility: rules {', '.join(pairwise)} compare two members of one "
                      f"entity; the query and candidate sides must both be {name!r}")
    pref = section.get("preference")
    if pref is not None and valid("eligibility", "preference"):
      path = "eligibility.preference"
      for raw_value, accepted in pref["seeking"].items():
        unknown = [g for g in accepted if g != ANYONE and g not in pref["genders"]]
        if unknown:
          problems.append(f"{path}.seeking.{raw_value}: {unknown} are not canonical genders "
                          f"(keys of {path}.genders: {sorted(pref['genders'])}, or {ANYONE!r} "
                          "for anyone)")
    if section.get("distance") is not None and valid("eligibility", "distance"):
      problems += _feature_type(raw, name, section["distance"]["feature"], "geo",
                                "eligibility.distance.feature", valid)
  baseline = raw.get("baseline")
  if baseline is not None and valid("baseline"):
    if baseline.get("terms") and section is None:
      problems.append("baseline.terms: need an eligibility section (its entity holds the "
                      "columns the terms read)")
    for i, term in enumerate(baseline.get("terms") or ()):
      where = f"baseline.terms[{i}] ({term['type']})"  # as config_schema.render_path names it
      if term["type"] in _TERM_FEATURE_TYPES:
        problems += _feature_type(raw, candidate_entity, term["feature"],
                                  _TERM_FEATURE_TYPES[term["type"]], f"{where}.feature", valid)
  verdict = raw.get("verdict") or {}
  low, high = (verdict.get(k) for k in ("expected_lift_low", "expected_lift_high"))
  if valid("verdict") and None not in (low, high) and low > high:
    problems.append(f"verdict: expected_lift_low {low} > expected_lift_high {high}")
  return problems


# Baseline terms that read a feature -> the feature type they need.
_TERM_FEATURE_TYPES = {"distance_decay": "geo", "shared_values": "multi_categorical"}


def _feature_type(raw, entity: Optional[str], feature: str, ftype: str, path: str,
                  valid) -> List[str]:
  """[] when `feature` is a `ftype` feature of `entity` (or the entity cannot be read)."""
  if entity not in (raw.get("entities") or {}) or not valid("entities", entity, "features"):
    return []
  types = {f["name"]: f["type"] for f in raw["entities"][entity]["features"]}
  if types.get(feature) != ftype:
    return [f"{path}: {feature!r} is not a {ftype} feature of entity {entity!r}"]
  return []


def parse_rules(raw: Dict[str, Any]) -> Rules:
  """The four optional keys of a config that passed the schema and `rule_problems`."""
  eligibility = None
  if raw.get("eligibility") is not None:
    eligibility = _eligibility(raw["eligibility"], raw["candidate"]["entity"])
  baseline = None
  if raw.get("baseline") is not None:
    spec = raw["baseline"]
    baseline = Baseline(terms=tuple(_term(t) for t in spec.get("terms") or ()),
                        sql=spec.get("sql"))
  verdict = {k: v for k, v in (raw.get("verdict") or {}).items() if v is not None}
  exposure = raw.get("exposure") or {}
  return Rules(eligibility, baseline, Verdict(**{k: float(v) for k, v in verdict.items()}),
               Exposure(float(exposure.get("hubness_beta") or 0.0),
                        exposure.get("max_impressions_per_day")))


def _eligibility(section: Dict[str, Any], candidate_entity: str) -> Eligibility:
  kwargs: Dict[str, Any] = {}
  pref = section.get("preference")
  if pref is not None:
    kwargs["preference"] = Preference(
        pref["gender_column"], pref["seeking_column"],
        {k: tuple(v) for k, v in pref["genders"].items()},
        {k: tuple(v) for k, v in pref["seeking"].items()},
        pref.get("case_sensitive", False))
  age = section.get("age")
  if age is not None and age.get("window_years") is not None:
    kwargs["age"] = AgeRule(age["column"], window_years=float(age["window_years"]))
  elif age is not None:
    kwargs["age"] = AgeRule(age["column"], min_column=age["min_column"],
                            max_column=age["max_column"])
  if section.get("distance") is not None:
    kwargs["distance"] = DistanceRule(section["distance"]["feature"],
                                      float(section["distance"]["max_km"]))
  blocked = section.get("blocked")
  if blocked is not None:
    kwargs["blocked"] = BlockedRule(blocked.get("table"), blocked["query_id_column"],
                                    blocked["candidate_id_column"], blocked.get("sql"))
  if section.get("active") is not None:
    kwargs["active"] = ActiveRule(section["active"]["column"],
                                  float(section["active"]["within_days"]))
  return Eligibility(entity=section.get("entity", candidate_entity),
                     exclude_self=section.get("exclude_self", True),
                     exclude_swiped=section.get("exclude_swiped", True), **kwargs)


def _term(spec: Dict[str, Any]) -> BaselineTerm:
  return BaselineTerm(type=spec["type"], weight=float(spec["weight"]), column=spec.get("column"),
                      feature=spec.get("feature"),
                      window_years=float(spec.get("window_years", 0.0)),
                      radius_km=float(spec.get("radius_km", 1.0)),
                      cap=float(spec.get("cap", float("inf"))))
