"""The config's `eligibility` rules as one SQL condition over a pair (u, c).

`u` is the query user's row, `c` the candidate's row (aliases of the entity
sources in `tt_eligible`, sql/recommend.sql), `$3` the function's age_window
override (SQL function bodies refer to parameters by position, because a column
of the same name would win over a parameter's name). The semantics are those of
`tfrs_two_tower.eligibility` (the numpy implementation; a test holds both equal
pair by pair):

  preference  u accepts c AND c accepts u, where x accepts y when x's seeking
              cell has no value (NULL, '', an empty array), or y's gender is
              missing, or some element of x's seeking cell (a text, a text[] or
              '{a,b}' text: the union of its elements) maps
              (`preference.seeking`) to "*" or to the canonical gender whose raw
              values (`preference.genders`) hold y's gender. Values are trimmed
              and, unless `case_sensitive`, lower-cased.
  age         |age_u - age_v| <= window_years, or, with min/max columns,
              min_u <= age_v <= max_u AND min_v <= age_u <= max_v. `$3` (not
              NULL) replaces the rule by a fixed window of that many years.
  distance    haversine(location_u, location_c) <= max_km.
  blocked     no row (u, c) nor (c, u) in the blocked table or query.
  active      c's activity time >= now() - within_days (NULL: inactive).
  self/swiped c is not u; u has no interaction row on c.
A comparison with a missing value passes (no information, no filter), except
`active`. Absent eligibility: self and swiped are still excluded (the rules'
defaults), as everywhere else.
"""

from typing import List, Tuple

from psycopg2 import sql

from tfrs_two_tower import config as config_lib
from tfrs_two_tower import eligibility as eligibility_lib
from tfrs_two_tower import rules as rules_lib
from tfrs_two_tower.serving import schema_sql


def _fold(pref: rules_lib.Preference, value: str) -> str:
  return value.strip() if pref.case_sensitive else value.strip().lower()


def _mapping_rows(pref: rules_lib.Preference) -> sql.Composable:
  """VALUES rows (seeking value, accepted raw gender value or NULL = anyone)."""
  pairs = set()
  for seeking, canonicals in pref.seeking.items():
    for canonical in canonicals:
      if canonical == rules_lib.ANYONE:
        pairs.add((_fold(pref, seeking), None))
      else:
        pairs.update((_fold(pref, seeking), _fold(pref, raw)) for raw in pref.genders[canonical])
  ordered = sorted(pairs, key=lambda p: (p[0], p[1] is None, p[1] or ""))
  return sql.SQL(", ").join(sql.SQL("({}::text, {}::text)").format(sql.Literal(s), sql.Literal(g))
                            for s, g in ordered)


def _elements(cell: sql.Composable, is_array: bool) -> sql.Composable:
  """A text[] of a cell: the array itself, '{a,b}' text parsed, or a one-element array."""
  if is_array:
    return sql.SQL("{}::text[]").format(cell)
  return sql.SQL("(CASE WHEN btrim({c}::text) ~ '^[{{].*[}}]$' THEN btrim({c}::text)::text[] "
                 "ELSE ARRAY[{c}::text] END)").format(c=cell)


def _accepts(x: str, y: str, pref: rules_lib.Preference, seeking_is_array: bool,
             gender_is_array: bool) -> sql.Composable:
  """x accepts y's gender (see the module docstring), as a boolean SQL expression."""
  fold = (lambda e: sql.SQL("btrim({}::text)").format(e)) if pref.case_sensitive else (
      lambda e: sql.SQL("lower(btrim({}::text))").format(e))
  seeking = sql.SQL("{}.{}").format(sql.Identifier(x), sql.Identifier(pref.seeking_column))
  gender = sql.SQL("{}.{}").format(sql.Identifier(y), sql.Identifier(pref.gender_column))
  if gender_is_array:
    gender = sql.SQL("({})[1]").format(gender)
  elements = _elements(seeking, seeking_is_array)
  return sql.SQL(
      "(NOT EXISTS (SELECT 1 FROM unnest({elements}) AS s(v) WHERE btrim(s.v) <> '')"
      " OR coalesce(btrim({gender}::text), '') = ''"
      " OR EXISTS (SELECT 1 FROM unnest({elements}) AS s(v)"
      " JOIN (VALUES {rows}) AS m(seek, gender) ON m.seek = {element}"
      " WHERE m.gender IS NULL OR m.gender = {their}))").format(
          elements=elements, gender=gender, rows=_mapping_rows(pref),
          element=fold(sql.SQL("s.v")), their=fold(gender))


def _geo_columns(entity: config_lib.Entity, feature: str) -> Tuple[str, str]:
  for f in entity.features:
    if f.name == feature and f.type == "geo":
      return f.columns[0], f.columns[1]
  raise schema_sql.SchemaSQLError(
      f"config eligibility.distance.feature: {feature!r} is not a geo feature of entity "
      f"{entity.name!r}")


def condition(conn, config: config_lib.Config) -> sql.Composable:
  """The eligibility rules of `config` as a SQL boolean over aliases u, c.

  Every column a rule names is probed first (schema_sql.probe): a missing one is
  a SchemaSQLError naming its config key.
  """
  query, candidate = config.entity("query"), config.entity("candidate")
  rules = config.eligibility or rules_lib.Eligibility(entity=candidate.name)
  sources = {"u": schema_sql.entity_source(query), "c": schema_sql.entity_source(candidate)}
  parts: List[sql.Composable] = []

  def column(alias: str, name: str) -> sql.Composable:
    return sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(name))

  def probe_both(name: str, key: str) -> str:
    return [schema_sql.probe(conn, sources[a], name, f"eligibility.{key}")
            for a in ("u", "c")][-1]

  pref = rules.preference
  if pref is not None:
    gender_array = probe_both(pref.gender_column, "preference.gender_column").endswith("[]")
    seeking_array = probe_both(pref.seeking_column, "preference.seeking_column").endswith("[]")
    parts += [_accepts("u", "c", pref, seeking_array, gender_array),
              _accepts("c", "u", pref, seeking_array, gender_array)]

  age = rules.age
  if age is not None:
    probe_both(age.column, "age.column")
    age_u, age_v = column("u", age.column), column("c", age.column)
    fixed = sql.SQL("coalesce(abs({} - {}) <= $3, true)").format(age_v, age_u)
    if age.window_years is not None:
      rule = sql.SQL("coalesce(abs({} - {}) <= {}, true)").format(
          age_v, age_u, sql.Literal(float(age.window_years)))
    else:
      for key in ("min_column", "max_column"):
        probe_both(getattr(age, key), f"age.{key}")
      outside = [sql.SQL("coalesce({} {} {}, false)").format(a, sql.SQL(op), column(me, bound))
                 for me, a in (("u", age_v), ("c", age_u))
                 for op, bound in (("<", age.min_column), (">", age.max_column))]
      rule = sql.SQL("NOT ({})").format(sql.SQL(" OR ").join(outside))
    parts.append(sql.SQL("(CASE WHEN $3 IS NULL THEN {} ELSE {} END)").format(rule, fixed))

  if rules.distance is not None:
    lat, lon = _geo_columns(candidate, rules.distance.feature)
    for name in (lat, lon):
      probe_both(name, "distance.feature")
    la = {a: column(a, lat) for a in ("u", "c")}
    lo = {a: column(a, lon) for a in ("u", "c")}
    parts.append(sql.SQL(
        "NOT coalesce(2 * {r} * asin(sqrt(least(1, power(sin(radians({cla} - {ula}) / 2), 2) + "
        "cos(radians({ula})) * cos(radians({cla})) * power(sin(radians({clo} - {ulo}) / 2), 2)"
        "))) > {km}, false)").format(
            r=sql.Literal(eligibility_lib.EARTH_RADIUS_KM), cla=la["c"], ula=la["u"],
            clo=lo["c"], ulo=lo["u"], km=sql.Literal(float(rules.distance.max_km))))

  uid, cid = column("u", query.id_column), column("c", candidate.id_column)
  blocked = rules.blocked
  if blocked is not None:
    from_item = schema_sql.source(blocked.table, blocked.sql)
    where = "eligibility.blocked.sql" if blocked.sql else "eligibility.blocked.table"
    for name in ("query_id_column", "candidate_id_column"):
      schema_sql.probe(conn, from_item, getattr(blocked, name),
                       where if blocked.sql else f"eligibility.blocked.{name}")
    b_q, b_c = (sql.Identifier(blocked.query_id_column),
                sql.Identifier(blocked.candidate_id_column))
    parts.append(sql.SQL(
        "NOT EXISTS (SELECT 1 FROM {src} AS b WHERE (b.{bq}::text = {u}::text AND "
        "b.{bc}::text = {c}::text) OR (b.{bq}::text = {c}::text AND b.{bc}::text = {u}::text))"
    ).format(src=from_item, bq=b_q, bc=b_c, u=uid, c=cid))

  if rules.active is not None:
    schema_sql.probe(conn, sources["c"], rules.active.column, "eligibility.active.column")
    parts.append(sql.SQL("coalesce({} >= now() - make_interval(secs => {}), false)").format(
        column("c", rules.active.column),
        sql.Literal(float(rules.active.within_days) * eligibility_lib.SECONDS_PER_DAY)))

  if rules.exclude_self and config.same_entity_both_sides:
    parts.append(sql.SQL("{} <> {}").format(cid, uid))
  if rules.exclude_swiped:
    fields = schema_sql.interaction_fields(conn, config)
    parts.append(sql.SQL("NOT EXISTS (SELECT 1 FROM {src} AS s WHERE s.{q} = {u} AND s.{c} = "
                         "{cid})").format(src=fields["interactions"], q=fields["swiper"],
                                          c=fields["swipee"], u=uid, cid=cid))
  return sql.SQL("\n    AND ").join(parts) if parts else sql.SQL("true")
