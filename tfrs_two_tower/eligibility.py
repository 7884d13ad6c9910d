"""Who may be shown to whom: the config's `eligibility` rules as vectorised numpy masks.

One implementation for every place that ranks people in Python (evaluation of
every recommender, the A/B simulator, the feature-matching baseline's
`eligible` term). Two steps:

  encode(rules, entity, table) -> Attributes     raw entity table -> per-row codes;
                                                  unmapped values are errors here
  PairRules(rules, query_attrs, candidate_attrs, now).mask(u [B], v [N]) -> [B, N] bool

Codes (rows aligned with the entity table):
  gender [n] int64   canonical gender index (sorted keys of preference.genders), -1 missing
  seeks  [n] int64   bitmask of accepted canonical genders; all bits when missing or "*"
  numeric[col] [n]   float64, NaN missing (age and its bounds, baseline columns)
  active_at [n]      float64 unix seconds of last activity, NaN missing
  geo[feature] [n,2] float64 (lat, lon) degrees, NaN missing

Pairwise rules for query row u and candidate row v (a comparison with a
missing value passes: no information, no filter; except `active`, where a
missing time means inactive):
  preference  bit gender_v of seeks_u AND bit gender_u of seeks_v (a missing
              gender is accepted by everyone)
  age window  |age_u - age_v| <= window_years
  age range   min_u <= age_v <= max_u AND min_v <= age_u <= max_v
  distance    haversine(u, v) <= max_km
  active      active_at_v >= now - within_days * 86400
Pair rules that are lists, not functions (self, already swiped, blocked), are
exclusions of the ranking (`retrieval.Exclusions`), not masks.
"""

import dataclasses
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from tfrs_two_tower import rules as rules_lib

EARTH_RADIUS_KM = 6371.0
SECONDS_PER_DAY = 86400
_PG_ARRAY = re.compile(r"^\{(.*)\}$", re.S)


class EligibilityDataError(ValueError):
  """Data the eligibility rules cannot use; one line per rule (`problems`)."""

  def __init__(self, source: str, problems: Sequence[str]):
    self.problems = list(problems)
    super().__init__(f"{source}: eligibility rules do not match the data:\n"
                     + "\n".join(f"  - {p}" for p in self.problems))


@dataclasses.dataclass
class Attributes:
  """Per-row codes of one entity table (see the module docstring)."""
  ids: np.ndarray
  gender: Optional[np.ndarray] = None
  seeks: Optional[np.ndarray] = None
  numeric: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  active_at: Optional[np.ndarray] = None
  geo: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return self.ids.size

  def to_arrays(self) -> Dict[str, np.ndarray]:
    """Flat name -> array (np.savez-able without pickling)."""
    out = {"ids": self.ids.astype(str)}
    for name in ("gender", "seeks", "active_at"):
      if getattr(self, name) is not None:
        out[name] = getattr(self, name)
    out.update({f"numeric:{k}": v for k, v in self.numeric.items()})
    out.update({f"geo:{k}": v for k, v in self.geo.items()})
    return out

  @classmethod
  def from_arrays(cls, arrays) -> "Attributes":
    get = lambda name: np.asarray(arrays[name]) if name in arrays else None  # noqa: E731
    return cls(ids=np.asarray(arrays["ids"]).astype(object), gender=get("gender"),
               seeks=get("seeks"), active_at=get("active_at"),
               numeric={k.split(":", 1)[1]: np.asarray(arrays[k]) for k in arrays
                        if k.startswith("numeric:")},
               geo={k.split(":", 1)[1]: np.asarray(arrays[k]) for k in arrays
                    if k.startswith("geo:")})

  def save(self, path: str) -> None:
    with open(path, "wb") as f:
      np.savez(f, **self.to_arrays())

  @classmethod
  def load(cls, path: str) -> "Attributes":
    with np.load(path, allow_pickle=False) as arrays:
      return cls.from_arrays({k: arrays[k] for k in arrays.files})


def canonical_genders(preference: rules_lib.Preference) -> List[str]:
  return sorted(preference.genders)


def cell_values(value: Any) -> List[str]:
  """One cell -> its values: arrays and Postgres array text ("{a,b}") split, missing -> []."""
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return []
  if isinstance(value, (list, tuple, np.ndarray)):
    return [str(v).strip() for v in value if v is not None and str(v).strip()]
  text = str(value).strip()
  match = _PG_ARRAY.match(text)
  if match:
    return [p.strip().strip('"') for p in match.group(1).split(",") if p.strip().strip('"')]
  return [text] if text else []


def _time_seconds(values: pd.Series) -> np.ndarray:
  """Timestamps (datetimes, ISO text, or unix seconds as numbers) -> float seconds, NaN."""
  if pd.api.types.is_numeric_dtype(values):
    return values.to_numpy(dtype=np.float64)
  parsed = pd.to_datetime(values, utc=True, errors="coerce")
  seconds = parsed.astype("datetime64[ns, UTC]").astype("int64").to_numpy() / 1e9
  return np.where(parsed.isna().to_numpy(), np.nan, seconds)


def _numbers(values: pd.Series, source: str, column: str, problems: List[str]) -> np.ndarray:
  numbers = pd.to_numeric(values, errors="coerce")
  bad = numbers.isna() & values.notna() & (values.astype(str).str.strip() != "")
  if bad.any():
    row = int(np.flatnonzero(bad.to_numpy())[0])
    problems.append(f"column {column!r} row {row}: {values.iloc[row]!r} is not a number")
  return numbers.to_numpy(dtype=np.float64)


def encode(config, table: pd.DataFrame, source: str,
           warnings: Optional[List[str]] = None) -> Attributes:
  """Codes of the eligibility entity's raw table; checks the mapping against the data.

  Errors (raised together as EligibilityDataError, one line per rule): a rule
  column absent from the table, a value of the gender or seeking column that
  the mapping does not name, a mapping none of whose values occur in the data.
  Mapped values absent from the data are appended to `warnings` (a small data
  set may lack a rare value).
  """
  rules, baseline = config.eligibility, config.baseline
  entity = config.entities[rules.entity]
  problems: List[str] = []
  attrs = Attributes(ids=table[entity.id_column].astype(str).to_numpy(dtype=object))
  needed = {c: f"eligibility ({', '.join(rules.names)})" for c in rules.attribute_columns}
  needed.update({c: "baseline.terms" for c in (baseline.attribute_columns if baseline else [])})
  missing = [f"{key}: column {c!r} is not in the entity table" for c, key in needed.items()
             if c not in table.columns]
  if missing:
    raise EligibilityDataError(source, missing)
  pref = rules.preference
  if pref is not None:
    problems += _encode_preference(pref, table, attrs, warnings)
  for column in dict.fromkeys(
      [c for c in ((rules.age.column, rules.age.min_column, rules.age.max_column)
                   if rules.age else ()) if c]
      + (baseline.attribute_columns if baseline else [])):
    errors: List[str] = []
    attrs.numeric[column] = _numbers(table[column], source, column, errors)
    problems += [f"eligibility.age / baseline: {e}" for e in errors]
  if rules.active is not None:
    attrs.active_at = _time_seconds(table[rules.active.column])
  geo_features = {t.feature for t in (baseline.terms if baseline else ())
                  if t.type == "distance_decay"}
  if rules.distance is not None:
    geo_features.add(rules.distance.feature)
  for name in sorted(geo_features):
    feature = next(f for f in entity.features if f.name == name)
    lat, lon = (pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64)
                for c in feature.columns)
    attrs.geo[name] = np.stack([lat, lon], axis=1)
  if problems:
    raise EligibilityDataError(source, problems)
  return attrs


def _encode_preference(pref: rules_lib.Preference, table: pd.DataFrame, attrs: Attributes,
                       warnings: Optional[List[str]]) -> List[str]:
  """Fills attrs.gender / attrs.seeks; returns one problem per column of the rule."""
  canon = canonical_genders(pref)
  synonyms = {pref.fold(raw): i for i, g in enumerate(canon) for raw in pref.genders[g]}
  all_bits = (1 << len(canon)) - 1
  accepts = {pref.fold(raw): (all_bits if rules_lib.ANYONE in gs else
                              sum(1 << canon.index(g) for g in gs))
             for raw, gs in pref.seeking.items()}
  problems = []
  genders = [cell_values(v) for v in table[pref.gender_column].tolist()]
  gender_seen = {pref.fold(g) for cell in genders for g in cell}
  seekings = [cell_values(v) for v in table[pref.seeking_column].tolist()]
  seeking_seen = {pref.fold(s) for cell in seekings for s in cell}
  for column, seen, mapping, key in (
      (pref.gender_column, gender_seen, synonyms, "genders"),
      (pref.seeking_column, seeking_seen, accepts, "seeking")):
    unmatched = sorted(seen - set(mapping))
    if unmatched:
      problems.append(f"eligibility.preference.{key}: column {column!r} has values "
                      f"{unmatched[:20]} that the mapping does not name")
    unused = sorted(set(mapping) - seen)
    if unused and len(unused) == len(mapping):
      problems.append(f"eligibility.preference.{key}: none of the mapped values {unused[:20]} "
                      f"occur in column {column!r}")
    elif unused and warnings is not None:
      warnings.append(f"eligibility.preference.{key}: mapped values {unused[:20]} do not "
                      f"occur in column {column!r}")
  if problems:
    return problems
  attrs.gender = np.array([synonyms[pref.fold(c[0])] if c else -1 for c in genders], np.int64)
  seeks = np.full(len(seekings), all_bits, np.int64)
  for i, cell in enumerate(seekings):
    if cell:
      seeks[i] = np.bitwise_or.reduce([accepts[pref.fold(s)] for s in cell])
  attrs.seeks = seeks
  return []


def haversine_km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Great-circle distance of [..., 2] (lat, lon) degree arrays, broadcast; NaN if missing."""
  a, b = np.radians(np.asarray(a, np.float64)), np.radians(np.asarray(b, np.float64))
  dlat, dlon = b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
  h = np.sin(dlat / 2) ** 2 + np.cos(a[..., 0]) * np.cos(b[..., 0]) * np.sin(dlon / 2) ** 2
  return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def _accepts(seeks: np.ndarray, gender: np.ndarray) -> np.ndarray:
  return (gender < 0) | ((seeks >> np.maximum(gender, 0)) & 1).astype(bool)


# Pairs masked at once by `users_without_candidates` (~128 MB float64 temporaries).
BLOCK_PAIRS = 1 << 24


class PairRules:
  """The pairwise eligibility rules over a query and a candidate attribute table.

  Args:
    rules: the config's Eligibility.
    query, candidate: Attributes; their rows are the scorer's rows.
    now: ranking time (unix seconds) for the `active` rule.
  """

  def __init__(self, rules: rules_lib.Eligibility, query: Attributes, candidate: Attributes,
               now: Optional[float] = None):
    if rules.active is not None and now is None:
      raise ValueError("eligibility.active needs the ranking time")
    self.rules, self.query, self.candidate, self.now = rules, query, candidate, now

  def at(self, now: float) -> "PairRules":
    """The same rules at another ranking time."""
    return PairRules(self.rules, self.query, self.candidate, now)

  @property
  def filters(self) -> bool:
    """Whether any mask rule is configured (else `mask` is all True)."""
    r = self.rules
    return any(x is not None for x in (r.preference, r.age, r.distance, r.active))

  def mask(self, query_rows: np.ndarray, candidate_rows: Optional[np.ndarray] = None):
    """[B] query rows x [N] candidate rows (all when None) -> [B, N] bool eligible."""
    u = np.asarray(query_rows, np.int64)[:, None]
    v = (np.arange(len(self.candidate)) if candidate_rows is None
         else np.asarray(candidate_rows, np.int64))[None, :]
    return self.pairs(u, v)

  def pairs(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Eligibility of broadcastable query rows u and candidate rows v -> bool array."""
    r, q, c = self.rules, self.query, self.candidate
    ok = np.ones(np.broadcast_shapes(np.shape(u), np.shape(v)), bool)
    if r.preference is not None:
      ok &= _accepts(q.seeks[u], c.gender[v]) & _accepts(c.seeks[v], q.gender[u])
    if r.age is not None:
      age_u, age_v = q.numeric[r.age.column][u], c.numeric[r.age.column][v]
      if r.age.window_years is not None:
        ok &= ~(np.abs(age_u - age_v) > r.age.window_years)
      else:
        lo, hi = r.age.min_column, r.age.max_column
        ok &= ~((age_v < q.numeric[lo][u]) | (age_v > q.numeric[hi][u])
                | (age_u < c.numeric[lo][v]) | (age_u > c.numeric[hi][v]))
    if r.distance is not None:
      f = r.distance.feature
      ok &= ~(haversine_km(q.geo[f][u], c.geo[f][v]) > r.distance.max_km)
    if r.active is not None:
      ok &= c.active_at[v] >= self.now - r.active.within_days * SECONDS_PER_DAY
    return ok

  def users_without_candidates(self, query_rows: np.ndarray,
                               block_pairs: int = BLOCK_PAIRS) -> int:
    """How many of the query rows have no eligible candidate other than themselves.

    Masks [block, N] pairs at a time with block * N <= `block_pairs` (float64
    temporaries of 8 * block_pairs bytes), so memory does not grow with N.
    """
    count = 0
    query_rows = np.asarray(query_rows, np.int64)
    # Each query row's own candidate row (-1: not a candidate), found once by hashing: an
    # [B, N] comparison of id strings cost as much as the rules' masks at 1M candidates.
    own = (pd.Index(self.candidate.ids).get_indexer(self.query.ids[query_rows])
           if self.rules.exclude_self else np.full(query_rows.size, -1))
    block = max(1, block_pairs // max(len(self.candidate), 1))
    for start in range(0, len(query_rows), block):
      m = self.mask(query_rows[start:start + block])
      is_candidate = np.flatnonzero(own[start:start + block] >= 0)
      m[is_candidate, own[start:start + block][is_candidate]] = False
      count += int((~m.any(axis=1)).sum())
    return count


def for_tables(config, query: Attributes, candidate: Attributes,
               now: Optional[float] = None) -> Optional[PairRules]:
  """PairRules of a config (None when it has no eligibility section)."""
  if config.eligibility is None:
    return None
  return PairRules(config.eligibility, query, candidate, now)


def blocked_pairs(frame: pd.DataFrame, rules: rules_lib.Eligibility) -> Tuple[np.ndarray, np.ndarray]:
  """(query ids, candidate ids) of blocked pairs, both directions (a block hides both ways)."""
  b = rules.blocked
  q = frame[b.query_id_column].astype(str).to_numpy(dtype=object)
  c = frame[b.candidate_id_column].astype(str).to_numpy(dtype=object)
  return np.concatenate([q, c]), np.concatenate([c, q])
