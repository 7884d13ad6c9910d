"""The config's `eligibility` rules as one SQL condition over a pair (u, c).

`u` is the query user's row, `c` the candidate's row (aliases of the entity
sources in `tt_eligible`, sql/recommend.sql), `age_window` the function's
override parameter ($3: SQL function bodies refer to parameters by position,
because a column of the same name would win over a parameter's name). Semantics (the same as the Python and Swift implementations):

  preference  u seeks c AND c seeks u, where x seeks y when some element s of
              x's seeking value (a text, or the elements of a text[]) maps
              (`preference.seeking`) to "*" or to the canonical gender of y's
              gender value (`preference.genders`: canonical -> raw values).
              Values compare lower-cased unless `case_sensitive`. A NULL or
              unmapped seeking value seeks nobody; an unmapped gender is sought
              only by "*".
  age         |age(c) - age(u)| <= window_years, or, with min/max columns, each
              age within the other's [min, max] (a NULL bound = no bound).
              `age_window` (not NULL) replaces the rule by a fixed window.
  distance    haversine(location(u), location(c)) <= max_km.
  blocked     no row (u, c) nor (c, u) in the blocked table or query.
  active      c's activity column within the last `within_days` days (now()).
  self/swiped c is not u; u has no interaction row on c.
A NULL a rule needs (age, location, activity) fails that rule.
"""

from typing import Any, Dict, List, Mapping, Tuple

from psycopg2 import sql

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.serving import schema_sql

EARTH_RADIUS_KM = 6371.0


def _pairs(preference: Mapping[str, Any]) -> List[Tuple[str, Any]]:
  """(seeking value, accepted raw gender value or None = anyone) rows of the mapping."""
  fold = (lambda v: v) if preference.get("case_sensitive") else (lambda v: str(v).lower())
  raw_of = {g: [fold(v) for v in values] for g, values in preference["genders"].items()}
  pairs = []
  for seeking, canonicals in preference["seeking"].items():
    for canonical in canonicals:
      if canonical == "*":
        pairs.append((fold(seeking), None))
      else:
        pairs += [(fold(seeking), raw) for raw in raw_of.get(canonical, [])]
  return sorted(set(pairs), key=lambda p: (p[0], p[1] is None, p[1] or ""))


def _seeks(x: str, y: str, seeking: sql.Composable, gender: sql.Composable, is_array: bool,
           pairs: List[Tuple[str, Any]], case_sensitive: bool) -> sql.Composable:
  """x seeks y's gender, as an EXISTS over x's seeking elements and the mapping rows."""
  element = sql.SQL("s.v::text") if case_sensitive else sql.SQL("lower(s.v::text)")
  their = (sql.SQL("{}.{}::text") if case_sensitive else sql.SQL("lower({}.{}::text)")).format(
      sql.Identifier(y), gender)
  values = sql.SQL(", ").join(
      sql.SQL("({}::text, {}::text)").format(sql.Literal(s), sql.Literal(g)) for s, g in pairs)
  elements = (sql.SQL("{}.{}") if is_array else sql.SQL("ARRAY[{}.{}]")).format(
      sql.Identifier(x), seeking)
  return sql.SQL(
      "EXISTS (SELECT 1 FROM unnest({elements}) AS s(v) JOIN (VALUES {values}) AS m(seek, gender)"
      " ON m.seek = {element} WHERE m.gender IS NULL OR m.gender = {their})").format(
          elements=elements, values=values, element=element, their=their)


def _geo_columns(entity: config_lib.Entity, feature: str) -> Tuple[str, str]:
  for f in entity.features:
    if f.name == feature and f.type == "geo":
      return f.columns[0], f.columns[1]
  raise schema_sql.SchemaSQLError(
      f"config eligibility.distance.feature: {feature!r} is not a geo feature of entity "
      f"{entity.name!r}")


def condition(conn, config: config_lib.Config) -> sql.Composable:
  """The eligibility rules of `config` as a SQL boolean over aliases u, c (TRUE: no rule).

  Every column a rule names is probed first (schema_sql.probe): a missing one is
  a SchemaSQLError naming its config key.
  """
  rules: Dict[str, Any] = config.raw.get("eligibility") or {}
  query, candidate = config.entity("query"), config.entity("candidate")
  sources = {"u": schema_sql.entity_source(query), "c": schema_sql.entity_source(candidate)}
  entity_of = {"u": query, "c": candidate}
  parts: List[sql.Composable] = []

  def column(alias: str, name: str) -> sql.Composable:
    return sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(name))

  def probe_both(name: str, key: str) -> str:
    types = {schema_sql.probe(conn, sources[a], name, f"eligibility.{key}") for a in ("u", "c")}
    return types.pop()

  preference = rules.get("preference")
  if preference:
    gender_col, seeking_col = preference["gender_column"], preference["seeking_column"]
    probe_both(gender_col, "preference.gender_column")
    is_array = probe_both(seeking_col, "preference.seeking_column").endswith("[]")
    pairs = _pairs(preference)
    if not pairs:
      raise schema_sql.SchemaSQLError("config eligibility.preference.seeking: no seeking value "
                                      "maps to a gender value (everyone would be ineligible)")
    case = bool(preference.get("case_sensitive"))
    g, s = sql.Identifier(gender_col), sql.Identifier(seeking_col)
    parts += [_seeks("u", "c", s, g, is_array, pairs, case),
              _seeks("c", "u", s, g, is_array, pairs, case)]

  age = rules.get("age")
  if age:
    probe_both(age["column"], "age.column")
    ua, ca = column("u", age["column"]), column("c", age["column"])
    fixed = sql.SQL("abs({} - {}) <= {}").format(ca, ua, sql.SQL("$3"))
    if age.get("min_column") or age.get("max_column"):
      bounds = []
      for key, op in (("min_column", ">="), ("max_column", "<=")):
        if age.get(key):
          probe_both(age[key], f"age.{key}")
          for me, other in (("u", "c"), ("c", "u")):
            bound = column(me, age[key])
            bounds.append(sql.SQL("({b} IS NULL OR {a} {op} {b})").format(
                b=bound, a=column(other, age["column"]), op=sql.SQL(op)))
      rule = sql.SQL(" AND ").join(bounds)
    else:
      rule = sql.SQL("abs({} - {}) <= {}").format(ca, ua, sql.Literal(age["window_years"]))
    parts.append(sql.SQL("(CASE WHEN $3 IS NULL THEN {} ELSE {} END)").format(
        rule, fixed))

  distance = rules.get("distance")
  if distance:
    lat, lon = _geo_columns(candidate, distance["feature"])
    for name in (lat, lon):
      probe_both(name, "distance.feature")
    la = {a: column(a, lat) for a in ("u", "c")}
    lo = {a: column(a, lon) for a in ("u", "c")}
    parts.append(sql.SQL(
        "2 * {r} * asin(sqrt(least(1, power(sin(radians({cla} - {ula}) / 2), 2) + "
        "cos(radians({ula})) * cos(radians({cla})) * power(sin(radians({clo} - {ulo}) / 2), 2)"
        "))) <= {km}").format(r=sql.Literal(EARTH_RADIUS_KM), cla=la["c"], ula=la["u"],
                              clo=lo["c"], ulo=lo["u"], km=sql.Literal(distance["max_km"])))

  uid = column("u", query.id_column)
  cid = column("c", candidate.id_column)
  blocked = rules.get("blocked")
  if blocked:
    from_item = schema_sql.source(blocked.get("table"), blocked.get("sql"))
    key = "blocked." + ("sql" if blocked.get("sql") else "table")
    for name in ("query_id_column", "candidate_id_column"):
      schema_sql.probe(conn, from_item, blocked[name], f"eligibility.blocked.{name}"
                       if not blocked.get("sql") else f"eligibility.{key}")
    b_q, b_c = sql.Identifier(blocked["query_id_column"]), sql.Identifier(
        blocked["candidate_id_column"])
    parts.append(sql.SQL(
        "NOT EXISTS (SELECT 1 FROM {src} AS b WHERE (b.{bq} = {u} AND b.{bc} = {c}) "
        "OR (b.{bq} = {c} AND b.{bc} = {u}))").format(src=from_item, bq=b_q, bc=b_c, u=uid,
                                                     c=cid))

  active = rules.get("active")
  if active:
    schema_sql.probe(conn, sources["c"], active["column"], "eligibility.active.column")
    parts.append(sql.SQL("{} >= now() - make_interval(days => {})").format(
        column("c", active["column"]), sql.Literal(int(active["within_days"]))))

  if rules.get("exclude_self") and config.same_entity_both_sides:
    parts.append(sql.SQL("{} <> {}").format(cid, uid))
  if rules.get("exclude_swiped"):
    fields = schema_sql.interaction_fields(conn, config)
    parts.append(sql.SQL("NOT EXISTS (SELECT 1 FROM {src} AS s WHERE s.{q} = {u} AND s.{c} = "
                         "{cid})").format(src=fields["interactions"], q=fields["swiper"],
                                          c=fields["swipee"], u=uid, cid=cid))
  return sql.SQL("\n    AND ").join(parts) if parts else sql.SQL("true")
