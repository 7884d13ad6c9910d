"""The query tower's history inputs read from the swipes table in SQL (tt_query_history)."""
import numpy as np
import pandas as pd
import psycopg2
import pytest

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.data import history as history_lib
from tfrs_two_tower.data import seeding
from tfrs_two_tower.serving import history_sql
from tfrs_two_tower.serving import pgvector
from tfrs_two_tower.serving import schema_sql


def _history_config(max_length, lists=("liked", "passed")):
  raw = config_lib.load_config().raw
  raw["history"] = {"max_length": max_length, "lists": list(lists)}
  return config_lib.parse_config(raw)


@pytest.fixture(scope="module")
def seeded(make_database, tiny_world):
  """The tiny world's profiles and swipes in a real database; a user swiping one pair twice."""
  conn = psycopg2.connect(make_database("history_sql"))
  seeding.seed(conn, tiny_world, log=lambda *a: None)
  yield conn
  conn.close()


def _expected(config, swipes, users):
  """The export's history (data/history.py) after every swipe: latest swipe per pair first."""
  labels = {a.name: a.label for a in config.interactions.actions}
  latest = swipes.sort_values(["created_at", "action"]).groupby(["swiper_id", "swipee_id"]).tail(1)
  interactions = {"query_id": latest["swiper_id"].to_numpy(object),
                  "candidate_id": latest["swipee_id"].to_numpy(object),
                  "label": latest["action"].map(labels).to_numpy(np.int64),
                  "timestamp": latest["created_at"].astype("int64").to_numpy()}  # as stored
  return history_lib.histories_at(config.history, interactions, users)


def test_sql_history_is_the_exports_history_now(seeded, tiny_world):
  conn = seeded
  config = _history_config(max_length=4)
  pgvector.install_sql(conn, config)
  swipes = tiny_world.swipes
  busiest = swipes["swiper_id"].value_counts()
  users = busiest.index[:5].tolist() + [busiest.index[-1]]
  # a pass after a like of the same pair: the like leaves the liked list, the pass leads
  user = users[0]
  liked = swipes[(swipes["swiper_id"] == user) & (swipes["action"] == "like")]
  target = liked.sort_values("created_at")["swipee_id"].iloc[-1]
  later = swipes["created_at"].max() + pd.Timedelta(seconds=1)
  with conn.cursor() as cur:
    cur.execute("INSERT INTO swipes (swiper_id, swipee_id, action, created_at) "
                "VALUES (%s, %s, 'pass', %s)", (user, target, later.to_pydatetime()))
  conn.commit()
  swipes = pd.concat([swipes, pd.DataFrame({"swiper_id": [user], "swipee_id": [target],
                                            "action": ["pass"], "created_at": [later]})])
  expected = _expected(config, swipes, users)
  for i, u in enumerate(users):
    got = pgvector.query_history(conn, u)
    assert set(got) == {"query_history_liked", "query_history_passed"}
    for key, lists in expected.items():
      assert got[key] == lists[i], (u, key)
  got = pgvector.query_history(conn, user)
  assert got["query_history_passed"][0] == target and target not in got["query_history_liked"]
  assert all(len(v) == 4 for v in got.values())  # truncated to max_length, by recency
  assert pgvector.query_history(conn, "00000000-0000-0000-0000-000000000000") == {
      "query_history_liked": [], "query_history_passed": []}


def test_without_a_history_section_no_lists(seeded, tiny_world, default_config):
  pgvector.install_sql(seeded, default_config)
  assert pgvector.query_history(seeded, tiny_world.swipes["swiper_id"].iloc[0]) == {}


def test_each_list_is_an_index_range_scan(seeded, tiny_world):
  """With index_statement's index the newest N swipes are read in index order: no sort."""
  conn = seeded
  config = _history_config(max_length=3, lists=("liked",))
  fields = schema_sql.interaction_fields(conn, config)
  body = history_sql.query_history(config, fields, "uuid")
  user = tiny_world.swipes["swiper_id"].iloc[0]

  def plan():
    with conn.cursor() as cur:
      # the tiny table would be read whole: ask for the plan a big table gets
      cur.execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
      cur.execute("EXPLAIN " + body.as_string(conn).replace("$1", "%s"), (user,))
      text = "\n".join(r[0] for r in cur.fetchall())
    conn.rollback()
    return text

  assert "Sort" in plan()  # the default schema's pair index cannot give the time order
  statement = history_sql.index_statement(config)
  conn.autocommit = True  # CREATE INDEX CONCURRENTLY runs outside a transaction
  try:
    with conn.cursor() as cur:
      cur.execute(statement)
  finally:
    conn.autocommit = False
  text = plan()
  assert history_sql.INDEX_NAME in text and "Sort" not in text, text


def test_index_statement_names_the_configs_columns_and_skips_queries(seeded):
  raw = config_lib.load_config().raw
  raw["interactions"].update(table="likes_log", query_id_column="who",
                             timestamp_column="at", candidate_id_column="whom")
  raw["interactions"].pop("sql", None)
  text = history_sql.index_statement(config_lib.parse_config(raw)).as_string(seeded)
  assert all(name in text for name in ('"likes_log" ("who", "at", "whom")',))
  raw["interactions"]["sql"] = "SELECT * FROM likes_log"
  assert history_sql.index_statement(config_lib.parse_config(raw)) is None
