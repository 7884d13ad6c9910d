"""Assignment: test vectors, stability, weights, independence, and Python == SQL on PostgreSQL."""
import json

import numpy as np
import pytest
from scipy import stats

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.abtest import assignment
from tfrs_two_tower.abtest import database

# The test vectors of docs/abtest.md: (salt, user id, first 8 digest bytes, bucket).
VECTORS = [
    ("two_tower_v1", "3f2b1c9e-8d4a-4e6f-9a7b-1c2d3e4f5a6b", "87886450b3537704", 3476),
    ("two_tower_v1", "user-1", "eaaac084228c3859", 9417),
    ("two_tower_v1", "user-2", "94bb67db1b7c7b35", 8789),
    ("exp1", "user-1", "11fca5c283dc94a3", 9955),
    ("exp1", "", "c4cbd27fa2814b6b", 619),
    ("feed_2027", "José-用户", "59efffa99f033482", 6386),
    ("holdout", "00000000-0000-0000-0000-000000000000", "d299032d4b8884d0", 6672),
]


@pytest.mark.parametrize("salt,user_id,prefix,expected", VECTORS)
def test_vectors(salt, user_id, prefix, expected):
  assert int(prefix, 16) % 10_000 == expected
  assert assignment.bucket(salt, user_id) == expected
  assert assignment.buckets(salt, [user_id])[0] == expected


def test_assignment_is_stable_and_ordered_by_buckets():
  exp = assignment.Experiment.from_weights("two_tower_v1", {"control": 1, "treatment": 1})
  assert exp.arms == (("control", 5000), ("treatment", 5000))
  ids = [f"user-{i}" for i in range(2000)]
  first = exp.assign_many(ids)
  assert (first == exp.assign_many(ids)).all()
  assert [exp.assign(u) for u in ids[:50]] == list(first[:50])
  b = assignment.buckets("two_tower_v1", ids)
  assert ((b < 5000) == (first == "control")).all()
  # Ramping a new arm in at the end never moves users of the earlier arms' buckets.
  ramp = assignment.Experiment("two_tower_v1", "two_tower_v1",
                               (("control", 5000), ("treatment", 4000), ("new", 1000)))
  moved = ramp.assign_many(ids) != first
  assert (b[moved] >= 9000).all()


def test_allocate_buckets_rounds_to_exactly_10000_and_rejects_bad_arms():
  assert assignment.allocate_buckets([("a", 1), ("b", 1), ("c", 1)]) == (
      ("a", 3334), ("b", 3333), ("c", 3333))
  assert assignment.allocate_buckets({"control": 0.9, "treatment": 0.1}) == (
      ("control", 9000), ("treatment", 1000))
  for bad in ({"only": 1}, {"a": -1, "b": 2}, {"a": 0, "b": 0}, [("a", 1), ("a", 1)],
              {"bad name": 1, "b": 1}):
    with pytest.raises(assignment.ExperimentError):
      assignment.allocate_buckets(bad)
  with pytest.raises(assignment.ExperimentError, match="':'"):
    assignment.Experiment("e", "a:b", (("c", 5000), ("t", 5000)))
  with pytest.raises(assignment.ExperimentError, match="summing"):
    assignment.Experiment("e", "e", (("c", 5000), ("t", 4000)))


def test_weights_respected_within_statistical_bounds():
  ids = [f"u{i}" for i in range(100_000)]
  exp = assignment.Experiment.from_weights("weights", {"a": 20, "b": 30, "c": 50})
  arms = exp.assign_many(ids)
  for arm, fraction in exp.expected_fractions.items():
    observed = (arms == arm).mean()
    sigma = np.sqrt(fraction * (1 - fraction) / len(ids))
    assert abs(observed - fraction) < 4 * sigma, (arm, observed, fraction)
  # Buckets are uniform: chi-square over 100 groups of 100 buckets.
  groups = np.bincount(assignment.buckets("weights", ids) // 100, minlength=100)
  assert stats.chisquare(groups).pvalue > 1e-3


def test_experiments_with_different_salts_are_independent():
  ids = [f"u{i}" for i in range(40_000)]
  a = assignment.Experiment.from_weights("exp_a", {"c": 1, "t": 1}).assign_many(ids)
  b = assignment.Experiment.from_weights("exp_b", {"c": 1, "t": 1}).assign_many(ids)
  table = np.array([[np.sum((a == x) & (b == y)) for y in ("c", "t")] for x in ("c", "t")])
  assert stats.chi2_contingency(table, correction=False).pvalue > 1e-3
  corr = np.corrcoef(assignment.buckets("exp_a", ids), assignment.buckets("exp_b", ids))[0, 1]
  assert abs(corr) < 4 / np.sqrt(len(ids))


@pytest.fixture
def ab_database(fresh_database):
  import psycopg2
  from tfrs_two_tower.data import seeding
  conn = psycopg2.connect(fresh_database)
  with conn.cursor() as cur:
    cur.execute(seeding.schema_sql())
  conn.commit()
  config = config_lib.load_config()
  database.install_schema(conn, config)
  database.install_schema(conn, config)  # idempotent
  yield conn
  conn.close()


def test_python_and_sql_assignment_agree_on_100k_ids(ab_database):
  rng = np.random.default_rng(0)
  ids = ([str(u) for u in (rng.integers(0, 2**63, 60_000))]
         + [f"{rng.integers(0, 16**8):08x}-4c1e-4f00-9a7b-{i:012x}" for i in range(39_990)]
         + [t for t, *_ in [("", ), ("José-用户", ), ("a:b", ), ("ü" * 40, ), ("'; --", ),
                            ("tab\there", ), ("x" * 300, ), ("0", ), ("-1", ), ("😀", )]])
  assert len(ids) == 100_000
  exp = assignment.Experiment.from_weights("agree", [("control", 2), ("t1", 1), ("t2", 1)],
                                           salt="agree-2026")
  with ab_database.cursor() as cur:
    cur.execute("INSERT INTO ab_experiments (name, salt, arms, starts_at) VALUES "
                "(%s, %s, %s::jsonb, now())",
                (exp.name, exp.salt, json.dumps(exp.to_json()["arms"])))
    cur.execute("SELECT ab_bucket(%s, u), ab_assign(%s, u) FROM unnest(%s::text[]) "
                "WITH ORDINALITY AS x(u, i) ORDER BY i", (exp.salt, exp.name, ids))
    rows = cur.fetchall()
  sql_buckets = np.array([r[0] for r in rows])
  sql_arms = np.array([r[1] for r in rows], dtype=object)
  np.testing.assert_array_equal(sql_buckets, assignment.buckets(exp.salt, ids))
  assert (sql_arms == exp.assign_many(ids)).all()
  # Both halves of the unsigned range are covered (the SQL's signed-bigint branch).
  with ab_database.cursor() as cur:
    for salt, user_id, _, expected in VECTORS:
      cur.execute("SELECT ab_bucket(%s, %s)", (salt, user_id))
      assert cur.fetchone()[0] == expected


def test_exposure_logging_is_idempotent_and_checked(ab_database):
  exp = assignment.Experiment.from_weights("log", {"control": 1, "treatment": 1})
  with ab_database.cursor() as cur:
    cur.execute("INSERT INTO ab_experiments (name, salt, arms, starts_at) VALUES "
                "(%s, %s, %s::jsonb, '2026-05-01')",
                (exp.name, exp.salt, json.dumps(exp.to_json()["arms"])))
    arms = []
    for when in ("2026-05-03", "2026-05-02", "2026-05-04"):  # out of order, repeated
      cur.execute("SELECT ab_log_exposure('log', 'user-7', %s::timestamptz)", (when,))
      arms.append(cur.fetchone()[0])
    assert arms == [exp.assign("user-7")] * 3
    cur.execute("SELECT count(*), min(first_exposed_at)::date::text FROM ab_exposures")
    assert cur.fetchone() == (1, "2026-05-02")
    with pytest.raises(Exception, match="unknown experiment"):
      cur.execute("SELECT ab_log_exposure('nope', 'user-7')")
  ab_database.rollback()
  with ab_database.cursor() as cur:
    # A row written around ab_log_exposure in the wrong arm is reported.
    log2 = assignment.Experiment("log2", "log2", exp.arms)
    wrong = "treatment" if log2.assign("user-8") == "control" else "control"
    cur.execute("INSERT INTO ab_experiments (name, salt, arms, starts_at) VALUES "
                "('log2', 'log2', %s::jsonb, now())", (json.dumps(exp.to_json()["arms"]),))
    cur.execute("INSERT INTO ab_exposures (experiment, user_id, arm) "
                "VALUES ('log2', 'user-8', %s)", (wrong,))
    cur.execute("SELECT user_id, logged_arm FROM ab_assignment_mismatches")
    assert cur.fetchall() == [("user-8", wrong)]
    # Invalid arms are refused by the table itself.
    with pytest.raises(Exception, match="check constraint"):
      cur.execute("INSERT INTO ab_experiments (name, salt, arms, starts_at) VALUES ('bad', "
                  "'bad', '[{\"name\": \"a\", \"buckets\": 6000}, {\"name\": \"b\", "
                  "\"buckets\": 3000}]', now())")
  ab_database.rollback()
