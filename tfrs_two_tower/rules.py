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

Parsing appends one message per problem to a list (the config module raises
them together); it never reads data: values are checked against the data at
export (`data.eligibility_check`).
"""

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple

ANYONE = "*"
BASELINE_TERM_TYPES = ("eligible", "age_closeness", "distance_decay", "shared_values")
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


def parse_rules(raw: Dict[str, Any], entities: Mapping[str, Any], query_entity: Optional[str],
                candidate_entity: Optional[str], problems: List[str]) -> Rules:
  """Parses the four optional keys of a config dict; appends problems, never raises.

  Args:
    entities: parsed entities by name (objects with `.features`, each `.name`/`.type`).
  """
  eligibility = None
  if raw.get("eligibility") is not None:
    eligibility = _parse_eligibility(raw["eligibility"], entities, query_entity,
                                     candidate_entity, problems)
  baseline = None
  if raw.get("baseline") is not None and (raw["baseline"] or {}).get("terms") and \
      eligibility is None:
    problems.append("baseline.terms: need an eligibility section (its entity holds the "
                    "columns the terms read)")
  elif raw.get("baseline") is not None:
    entity = entities.get(candidate_entity) if candidate_entity else None
    baseline = _parse_baseline(raw["baseline"], entity, eligibility, problems)
  verdict = _parse_verdict(raw.get("verdict") or {}, problems)
  exposure = _parse_exposure(raw.get("exposure") or {}, problems)
  return Rules(eligibility, baseline, verdict, exposure)


def _check_keys(section, path, allowed, problems) -> bool:
  if not isinstance(section, dict):
    problems.append(f"{path}: must be an object")
    return False
  for key in section:
    if key not in allowed:
      problems.append(f"{path}.{key}: unknown key (allowed: {', '.join(sorted(allowed))})")
  return True


def _string(section, key, path, problems, optional=False) -> Optional[str]:
  value = section.get(key)
  if value is None and optional:
    return None
  if not isinstance(value, str) or not value:
    problems.append(f"{path}.{key}: must be a non-empty string{' or null' if optional else ''} "
                    f"(got {value!r})")
    return None
  return value


def _number(section, key, path, problems, default=None, minimum=0.0, strict=True):
  value = section.get(key, default)
  if value is None:
    if default is None:
      problems.append(f"{path}.{key}: required")
    return default
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
      value > minimum if strict else value >= minimum)
  if not ok:
    problems.append(f"{path}.{key}: must be a number {'>' if strict else '>='} {minimum:g}, "
                    f"got {value!r}")
    return default
  return float(value)


def _flag(section, key, path, problems, default) -> bool:
  value = section.get(key, default)
  if not isinstance(value, bool):
    problems.append(f"{path}.{key}: must be true or false, got {value!r}")
    return default
  return value


def _string_lists(section, path, problems) -> Dict[str, Tuple[str, ...]]:
  """{key: [non-empty strings]} -> {key: tuple}; one problem per bad entry."""
  if not isinstance(section, dict) or not section:
    problems.append(f"{path}: must be a non-empty object of value -> list of values")
    return {}
  out = {}
  for key, values in section.items():
    if (not isinstance(values, list) or not values
        or not all(isinstance(v, str) and v for v in values)):
      problems.append(f"{path}.{key}: must be a non-empty list of non-empty strings, "
                      f"got {values!r}")
      continue
    out[str(key)] = tuple(values)
  return out


def _feature(entity, name: str, ftype: str, path: str, problems) -> None:
  if entity is None:
    return
  match = [f for f in entity.features if f.name == name]
  if not match or match[0].type != ftype:
    problems.append(f"{path}: {name!r} is not a {ftype} feature of entity {entity.name!r}")


def _parse_eligibility(section, entities, query_entity, candidate_entity,
                       problems) -> Optional[Eligibility]:
  path = "eligibility"
  if not _check_keys(section, path, {"entity", "preference", "age", "distance", "blocked",
                                     "exclude_self", "exclude_swiped", "active"}, problems):
    return None
  name = section.get("entity", candidate_entity)
  entity = entities.get(name)
  if entity is None and name not in entities:
    problems.append(f"{path}.entity: unknown entity {name!r}")
  pairwise = [k for k in ("preference", "age", "distance") if section.get(k) is not None]
  if pairwise and not (query_entity == candidate_entity == name):
    problems.append(f"{path}: rules {', '.join(pairwise)} compare two members of one entity; "
                    f"the query and candidate sides must both be {name!r}")
  kwargs: Dict[str, Any] = {}
  pref = section.get("preference")
  if pref is not None:
    p = f"{path}.preference"
    if _check_keys(pref, p, {"gender_column", "seeking_column", "genders", "seeking",
                             "case_sensitive"}, problems):
      genders = _string_lists(pref.get("genders"), f"{p}.genders", problems)
      seeking = _string_lists(pref.get("seeking"), f"{p}.seeking", problems)
      for raw_value, accepted in seeking.items():
        unknown = [g for g in accepted if g != ANYONE and g not in genders]
        if unknown:
          problems.append(f"{p}.seeking.{raw_value}: {unknown} are not canonical genders "
                          f"(keys of {p}.genders: {sorted(genders)}, or {ANYONE!r} for anyone)")
      cols = [_string(pref, k, p, problems) for k in ("gender_column", "seeking_column")]
      case = _flag(pref, "case_sensitive", p, problems, False)
      if None not in cols and genders and seeking:
        kwargs["preference"] = Preference(cols[0], cols[1], genders, seeking, case)
  age = section.get("age")
  if age is not None:
    p = f"{path}.age"
    if _check_keys(age, p, {"column", "window_years", "min_column", "max_column"}, problems):
      column = _string(age, "column", p, problems)
      has_window = age.get("window_years") is not None
      has_range = age.get("min_column") is not None or age.get("max_column") is not None
      if has_window == has_range:
        problems.append(f"{p}: give either window_years OR both min_column and max_column")
      elif has_window:
        window = _number(age, "window_years", p, problems, minimum=0.0, strict=False)
        if column and window is not None:
          kwargs["age"] = AgeRule(column, window_years=window)
      else:
        lo, hi = (_string(age, k, p, problems) for k in ("min_column", "max_column"))
        if column and lo and hi:
          kwargs["age"] = AgeRule(column, min_column=lo, max_column=hi)
  dist = section.get("distance")
  if dist is not None:
    p = f"{path}.distance"
    if _check_keys(dist, p, {"feature", "max_km"}, problems):
      feature = _string(dist, "feature", p, problems)
      max_km = _number(dist, "max_km", p, problems)
      if feature:
        _feature(entity, feature, "geo", f"{p}.feature", problems)
      if feature and max_km:
        kwargs["distance"] = DistanceRule(feature, max_km)
  blocked = section.get("blocked")
  if blocked is not None:
    p = f"{path}.blocked"
    if _check_keys(blocked, p, {"table", "query_id_column", "candidate_id_column", "sql"},
                   problems):
      table = _string(blocked, "table", p, problems, optional=True)
      sql = _string(blocked, "sql", p, problems, optional=True)
      if (table is None) == (sql is None):
        problems.append(f"{p}: give either table or sql (a query returning the two id columns)")
      cols = [_string(blocked, k, p, problems) for k in ("query_id_column", "candidate_id_column")]
      if None not in cols and (table is None) != (sql is None):
        kwargs["blocked"] = BlockedRule(table, cols[0], cols[1], sql)
  active = section.get("active")
  if active is not None:
    p = f"{path}.active"
    if _check_keys(active, p, {"column", "within_days"}, problems):
      column = _string(active, "column", p, problems)
      days = _number(active, "within_days", p, problems)
      if column and days:
        kwargs["active"] = ActiveRule(column, days)
  kwargs["exclude_self"] = _flag(section, "exclude_self", path, problems, True)
  kwargs["exclude_swiped"] = _flag(section, "exclude_swiped", path, problems, True)
  return Eligibility(entity=name, **kwargs)


_TERM_KEYS = {
    "eligible": set(),
    "age_closeness": {"column", "window_years"},
    "distance_decay": {"feature", "radius_km", "cap"},
    "shared_values": {"feature"},
}


def _parse_baseline(section, entity, eligibility, problems) -> Optional[Baseline]:
  path = "baseline"
  if not _check_keys(section, path, {"terms", "sql"}, problems):
    return None
  sql = _string(section, "sql", path, problems, optional=True)
  raw_terms = section.get("terms")
  if (sql is None) == (not raw_terms):
    problems.append(f"{path}: give either a non-empty terms list OR sql (a query with "
                    "%(user_id)s returning candidate_id, score)")
    return None
  if sql is not None:
    if "%(user_id)s" not in sql:
      problems.append(f"{path}.sql: must use the parameter %(user_id)s")
      return None
    return Baseline(sql=sql)
  if not isinstance(raw_terms, list):
    problems.append(f"{path}.terms: must be a list")
    return None
  terms = []
  for i, spec in enumerate(raw_terms):
    p = f"{path}.terms[{i}]"
    if not isinstance(spec, dict) or spec.get("type") not in BASELINE_TERM_TYPES:
      problems.append(f"{p}.type: must be one of {', '.join(BASELINE_TERM_TYPES)}")
      continue
    ttype = spec["type"]
    p = f"{p} ({ttype})"
    _check_keys(spec, p, {"type", "weight"} | _TERM_KEYS[ttype], problems)
    n_before = len(problems)
    kwargs: Dict[str, Any] = {"weight": _number(spec, "weight", p, problems, strict=False)}
    if ttype == "eligible" and eligibility is None:
      problems.append(f"{p}: needs an eligibility section")
    if ttype == "age_closeness":
      kwargs["column"] = _string(spec, "column", p, problems)
      kwargs["window_years"] = _number(spec, "window_years", p, problems, default=0.0,
                                       strict=False)
    if ttype in ("distance_decay", "shared_values"):
      kwargs["feature"] = _string(spec, "feature", p, problems)
      if kwargs["feature"]:
        _feature(entity, kwargs["feature"],
                 "geo" if ttype == "distance_decay" else "multi_categorical",
                 f"{p}.feature", problems)
    if ttype == "distance_decay":
      kwargs["radius_km"] = _number(spec, "radius_km", p, problems)
      kwargs["cap"] = _number(spec, "cap", p, problems, default=float("inf"))
    if len(problems) == n_before:
      terms.append(BaselineTerm(type=ttype, **kwargs))
  return Baseline(terms=tuple(terms))


def _parse_verdict(section, problems) -> Verdict:
  path = "verdict"
  if not _check_keys(section, path, set(DEFAULT_VERDICT), problems):
    return Verdict()
  values = {k: _number(section, k, path, problems, default=v, minimum=-1.0)
            for k, v in DEFAULT_VERDICT.items()}
  if values["expected_lift_low"] > values["expected_lift_high"]:
    problems.append(f"{path}: expected_lift_low {values['expected_lift_low']} > "
                    f"expected_lift_high {values['expected_lift_high']}")
  if not 0.5 <= values["auc_gate"] < 1:
    problems.append(f"{path}.auc_gate: must be in [0.5, 1), got {values['auc_gate']}")
  return Verdict(**values)


def _parse_exposure(section, problems) -> Exposure:
  path = "exposure"
  if not _check_keys(section, path, {"hubness_beta", "max_impressions_per_day"}, problems):
    return Exposure()
  beta = _number(section, "hubness_beta", path, problems, default=0.0, strict=False)
  cap = section.get("max_impressions_per_day")
  if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
    problems.append(f"{path}.max_impressions_per_day: must be an integer >= 1 or null, "
                    f"got {cap!r}")
    cap = None
  return Exposure(beta, cap)
