"""Export from a real PostgreSQL (pgserver) into the dataset format, and back to the world.

The synthetic world goes into the database with `seed_stage`; the export must give
back the world's own dataset (`synthetic.write_world_dataset`): same records, same
split, same vocabularies. Records are compared as parsed sets, not bytes.
"""
import glob
import json
import logging
import math
import os
import subprocess
import sys
import time

import numpy as np
import psycopg2
import pytest
from psycopg2 import sql

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.data import postgres_source
from tfrs_two_tower.data import reader
from tfrs_two_tower.data import seeding
from tfrs_two_tower.data import sources
from tfrs_two_tower.stages import export_stage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_GATE = dict(min_users=0, min_interactions=0)



def _plain(value):
  if isinstance(value, np.ndarray):
    return tuple(_plain(v) for v in value.tolist())
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  if isinstance(value, float) and value != value:
    return "nan"
  return value


def records(path, split):
  """The split's records as a set of tuples (every key, sorted by name)."""
  columns = reader.read_interactions(reader.open_dataset(path), split)
  keys = sorted(columns)
  return {tuple(_plain(columns[k][i]) for k in keys) for i in range(len(columns[keys[0]]))}


def entities(path, side):
  columns = reader.read_entities(reader.open_dataset(path), side)
  keys = sorted(columns)
  return {tuple(_plain(columns[k][i]) for k in keys) for i in range(len(columns[keys[0]]))}


def _close(a, b, path=""):
  """JSON-like equality with floats compared to 1e-9 relative (summation order differs)."""
  if isinstance(a, dict):
    assert set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))}"
    for k in a:
      _close(a[k], b[k], f"{path}.{k}")
  elif isinstance(a, list):
    assert len(a) == len(b), path
    for i, (x, y) in enumerate(zip(a, b)):
      _close(x, y, f"{path}[{i}]")
  elif isinstance(a, float) or isinstance(b, float):
    assert np.isclose(a, b, rtol=1e-9, atol=1e-12), f"{path}: {a} != {b}"
  else:
    assert a == b, f"{path}: {a!r} != {b!r}"


def read(path, name):
  with open(os.path.join(path, name), encoding="utf-8") as f:
    return json.load(f) if name.endswith(".json") else f.read()


def assert_same_dataset(a, b, stats_keys=("rows", "labels", "actions", "split_time",
                                          "time_range", "entities", "readiness"),
                        same_config=True):
  """Same records per split, entity tables, vocabularies, preprocessing and stats."""
  for split in ("train", "eval"):
    ra, rb = records(a, split), records(b, split)
    assert len(ra) == len(rb) and ra == rb, (split, len(ra), len(rb), len(ra ^ rb))
  for side in ("query", "candidate"):
    assert entities(a, side) == entities(b, side)
  pa, pb = read(a, "preprocessing.json"), read(b, "preprocessing.json")
  _close(pa, pb)
  for spec in pa.values():
    if "vocabulary" in spec:
      assert read(a, spec["vocabulary"]) == read(b, spec["vocabulary"]), spec["vocabulary"]
  assert read(a, "candidate_counts.tsv") == read(b, "candidate_counts.tsv")
  sa, sb = read(a, "stats.json"), read(b, "stats.json")
  for key in stats_keys:
    _close(sa[key], sb[key], key)
  ma, mb = read(a, "manifest.json"), read(b, "manifest.json")
  for key in ("config_hash",) * same_config + ("split_time", "rows", "time_range", "entities"):
    assert ma[key] == mb[key], key


# -- databases ------------------------------------------------------------------------


def execute(url, *statements):
  with psycopg2.connect(url) as conn, conn.cursor() as cur:
    for statement in statements:
      cur.execute(statement)
  conn.close()


def query(url, statement, params=None):
  with psycopg2.connect(url) as conn, conn.cursor() as cur:
    cur.execute(statement, params)
    rows = cur.fetchall()
  conn.close()
  return rows


@pytest.fixture(scope="module")
def world_db(make_database, tiny_world):
  """A database with the default schema and the tiny world (tests add tables, never edit)."""
  url = make_database(f"export_world_{os.getpid()}")
  conn = psycopg2.connect(url)
  inserted = seeding.seed(conn, tiny_world, log=lambda m: None)
  conn.close()
  assert inserted == {"profiles": len(tiny_world.profiles), "swipes": len(tiny_world.swipes),
                      "feed_impressions": len(tiny_world.impressions)}
  return url


@pytest.fixture(scope="module")
def db_export(tmp_path_factory, world_db):
  out = str(tmp_path_factory.mktemp("export") / "db")
  export_stage.run(out, export_stage.ExportOptions(db_url=world_db, train_shards=3, eval_shards=2),
      log=lambda m: None)
  return out


def write_config(tmp_path, name="config.json", **changes):
  """The default config with `section.key` changes, e.g. {"interactions.table": "s"}."""
  raw = json.loads(config_lib.load_config().to_json())
  for path, value in changes.items():
    node = raw
    *parents, key = path.split(".")
    for p in parents:
      node = node[p]
    node[key] = value
  path = os.path.join(str(tmp_path), name)
  with open(path, "w") as f:
    json.dump(raw, f)
  return path


def run_main(tmp_path, **kwargs):
  """export_stage.main with captured log and error lines; returns (code, logs, errors)."""
  logs, errors = [], []
  output_dir = kwargs.pop("output_dir", str(tmp_path / "out"))
  kwargs.setdefault("env_file", None)
  code = export_stage.main(output_dir, export_stage.ExportOptions(**kwargs), log=logs.append,
                           error=errors.append)
  return code, "\n".join(logs), "\n".join(errors)


def swipes_table(url, name, limit=None, *statements):
  """A copy of `swipes` without constraints (CTAS), then `statements` on it."""
  ident = f'"{name}"'  # test-chosen names
  execute(url, f"DROP TABLE IF EXISTS {ident}",
          f"CREATE TABLE {ident} AS SELECT swiper_id, swipee_id, action, created_at FROM swipes "
          f"ORDER BY created_at, swiper_id, swipee_id" + (f" LIMIT {limit}" if limit is not None
                                                            else ""),
          *[s.format(t=ident) for s in statements])
  return name


# -- round trip ---------------------------------------------------------------------------


def test_round_trip_equals_world_dataset(db_export, tiny_dataset_dir):
  assert_same_dataset(db_export, tiny_dataset_dir)
  manifest = read(db_export, "manifest.json")
  assert manifest["source"]["kind"] == "postgres"
  assert manifest["source"]["snapshot"]["isolation"] == "REPEATABLE READ READ ONLY"
  assert read(db_export, "stats.json")["dropped"] == {"unknown_actions": {},
                                                       "missing_entities": 0, "duplicates": 0}


def test_export_is_deterministic(db_export, world_db, tmp_path):
  again = str(tmp_path / "again")
  export_stage.run(again, export_stage.ExportOptions(db_url=world_db, train_shards=3,
      eval_shards=2), log=lambda m: None)
  a, b = read(db_export, "manifest.json")["files"], read(again, "manifest.json")["files"]
  assert a == b  # byte-identical files: entity order and record order are fixed


def test_seed_is_idempotent_and_matches_view(world_db, tiny_world):
  conn = psycopg2.connect(world_db)
  assert seeding.seed(conn, tiny_world, log=lambda m: None) == {
      "profiles": 0, "swipes": 0, "feed_impressions": 0}
  conn.close()
  assert query(world_db, "SELECT count(*) FROM swipes")[0][0] == len(tiny_world.swipes)
  assert query(world_db, "SELECT count(*) FROM matches")[0][0] == tiny_world.summary()["matches"]


@pytest.mark.slow
def test_snapshot_is_consistent_under_concurrent_inserts(fresh_database, tiny_world,
                                                         tiny_dataset_dir, tmp_path):
  conn = psycopg2.connect(fresh_database)
  seeding.seed(conn, tiny_world, log=lambda m: None)
  conn.close()
  writer = psycopg2.connect(fresh_database)  # a second session, committing while we stream
  calls = []

  def progress(done, total):
    calls.append(done)
    if len(calls) == 1:
      with writer, writer.cursor() as cur:
        cur.execute("INSERT INTO profiles (id, created_at) VALUES "
                    "('00000000-0000-4000-8000-000000000001', '2026-01-06')")
        # 'block' is not in the config: seen by the export, it would fail it.
        cur.execute("INSERT INTO swipes (swiper_id, swipee_id, action, created_at) "
                    "SELECT swipee_id, swiper_id, 'block', created_at FROM swipes LIMIT 50")
        cur.execute("INSERT INTO swipes (swiper_id, swipee_id, action, created_at) "
                    "SELECT '00000000-0000-4000-8000-000000000001', swipee_id, 'like', "
                    "created_at FROM swipes LIMIT 50")
  out = str(tmp_path / "snapshot")
  export_stage.run(out, export_stage.ExportOptions(db_url=fresh_database, train_shards=3,
      eval_shards=2, chunk_size=1000), log=lambda m: None, progress=progress)
  writer.close()
  assert len(calls) > 5 and calls[-1] == len(tiny_world.swipes)  # inserted mid-stream
  assert query(fresh_database, "SELECT count(*) FROM swipes")[0][0] == len(tiny_world.swipes) + 100
  assert_same_dataset(out, tiny_dataset_dir)


# -- partitions ------------------------------------------------------------------------------


def test_partition_hash_is_the_same_in_sql_and_python(world_db):
  part = sources.Partition(7, 3)
  conn = psycopg2.connect(world_db)
  with conn.cursor() as cur:
    cur.execute(sql.SQL("SELECT id::text, {} FROM profiles").format(
        postgres_source.partition_sql(sql.Identifier("id"), part)))
    rows = cur.fetchall()
  conn.close()
  ids = [r[0] for r in rows]
  in_sql = np.array([r[1] for r in rows])
  assert in_sql.any() and not in_sql.all()
  np.testing.assert_array_equal(in_sql, sources.partition_of(ids, 7) == 3)


@pytest.mark.slow
def test_partitions_combine_to_the_whole_export(world_db, db_export, tmp_path):
  for p in range(3):
    export_stage.run(str(tmp_path / f"part-{p}"), export_stage.ExportOptions(db_url=world_db,
        num_partitions=3, partition=p, train_shards=1, eval_shards=1), log=lambda m: None)
    queries = reader.read_interactions(reader.open_dataset(str(tmp_path / f"part-{p}")),
                                       "train", keys=["query_id"])["query_id"]
    assert (sources.partition_of(np.unique(queries), 3) == p).all()
  combined = str(tmp_path / "combined")
  code, logs, errors = run_main(tmp_path, combine=[str(tmp_path / "part-*")],
                                output_dir=combined)
  assert code == 0, errors
  assert_same_dataset(combined, db_export)
  whole, parts = read(db_export, "stats.json"), read(combined, "stats.json")
  # The seeded database carries the feed's impressions log; partitions do not export it
  # (docs/export.md: the log needs a whole export), so the combined stats lack that section.
  assert whole.pop("impressions")["rows"] > 0 and "impressions" not in parts
  assert whole == parts  # every other statistic is a sum of the partitions' counters
  assert len(read(combined, "manifest.json")["shards"]["train"]) == 3
  # An incomplete or doubled set is refused.
  code, _, errors = run_main(tmp_path, combine=[str(tmp_path / "part-0"),
                                                str(tmp_path / "part-2")],
                             output_dir=str(tmp_path / "bad"))
  assert code == 20 and "exactly once" in errors and not os.path.exists(tmp_path / "bad")


# -- errors --------------------------------------------------------------------------------


def test_sql_injection_in_a_table_name_is_harmless(world_db, tmp_path):
  config = write_config(tmp_path, **{"interactions.table": "swipes; DROP TABLE profiles"})
  code, _, errors = run_main(tmp_path, db_url=world_db, config_path=config)
  assert code == 13
  assert '"swipes; DROP TABLE profiles"' in errors and "interactions.table" in errors
  assert query(world_db, "SELECT count(*) FROM profiles")[0][0] == 700
  config = write_config(tmp_path, **{"interactions.query_id_column": 'x") FROM profiles; --'})
  code, _, errors = run_main(tmp_path, db_url=world_db, config_path=config)
  assert code == 13 and "interactions.query_id_column" in errors


@pytest.mark.parametrize("case, code, expected", [
    ("missing_column", 13, ["'swiper'", "config interactions.query_id_column"]),
    ("wrong_type", 14, ["'age'", "text", "features[3] (age)", "numeric"]),
    ("empty", 15, ["have no rows"]),
    ("unknown_actions", 16, ["5 interactions", "'block' x3", "'unmatch' x2",
                             "--unknown_actions=drop"]),
    ("nulls", 17, ["'action': 2", "'created_at': 1"]),
    ("missing_profiles", 18, ["4 with a 'swiper_id' not in 'profiles'",
                              "--missing_entities=drop"]),
    ("not_ready", 10, ["readiness gate not met", "interactions; the gate needs >= 5000"]),
])
def test_errors_have_their_exit_code_and_message(world_db, tmp_path, case, code, expected):
  table = f"swipes_{case}"
  changes = {"interactions.table": table}
  statements = {
      "empty": (0,),
      "unknown_actions": (None, "UPDATE {t} SET action = 'block' WHERE ctid IN (SELECT ctid "
                                "FROM {t} LIMIT 3)",
                          "UPDATE {t} SET action = 'unmatch' WHERE ctid IN (SELECT ctid "
                          "FROM {t} WHERE action <> 'block' LIMIT 2)"),
      "nulls": (None, "UPDATE {t} SET action = NULL WHERE ctid IN (SELECT ctid FROM {t} LIMIT 2)",
                "UPDATE {t} SET created_at = NULL WHERE ctid IN (SELECT ctid FROM {t} "
                "WHERE action IS NOT NULL LIMIT 1)"),
      "missing_profiles": (None, "INSERT INTO {t} SELECT gen_random_uuid(), swipee_id, action, "
                                 "created_at FROM {t} LIMIT 4"),
      "not_ready": (300,),
  }.get(case, (None,))
  swipes_table(world_db, table, *statements)
  if case == "missing_column":
    changes["interactions.query_id_column"] = "swiper"
  if case == "wrong_type":
    execute(world_db, "DROP TABLE IF EXISTS profiles_text",
            "CREATE TABLE profiles_text AS SELECT * FROM profiles",
            "ALTER TABLE profiles_text ALTER age TYPE text")
    changes = {"entities.user.table": "profiles_text"}
  config = write_config(tmp_path, **changes)
  out = tmp_path / "out"
  got, logs, errors = run_main(tmp_path, db_url=world_db, config_path=config)
  assert got == code, errors
  for text in expected:
    assert text in errors, (text, errors)
  assert not out.exists() and not glob.glob(str(tmp_path / ".out*"))
  if case == "not_ready":
    report = json.loads((tmp_path / "out.readiness.json").read_text())
    assert report["verdict"] == "too_early" and report["interactions"] == 300
    got, _, errors = run_main(tmp_path, db_url=world_db, config_path=config, force=True)
    assert got == 0 and reader.open_dataset(str(out)).num_rows("train") > 0


def test_unreachable_database_retries_then_exits_11(tmp_path):
  url = f"postgresql://app:hunter2-secret@/app?host={tmp_path}/no-server"
  code, logs, errors = run_main(tmp_path, db_url=url, connect_retries=2,
                                retry_backoff_seconds=0.01)
  assert code == 11, errors
  assert "after 3 attempts" in errors and logs.count("retry") == 2
  assert "hunter2" not in logs + errors


@pytest.fixture
def password_role(world_db):
  """A role that must log in with a password (a scram line prepended to pg_hba.conf)."""
  hba = query(world_db, "SHOW hba_file")[0][0]
  with open(hba) as f:
    original = f.read()
  with open(hba, "w") as f:
    f.write("local all tfrs_password_probe scram-sha-256\n" + original)
  execute(world_db, "DROP ROLE IF EXISTS tfrs_password_probe",
          "CREATE ROLE tfrs_password_probe LOGIN PASSWORD 'the-right-one'",
          "GRANT SELECT ON ALL TABLES IN SCHEMA public TO tfrs_password_probe",
          "SELECT pg_reload_conf()")
  yield world_db.replace("postgres:@", "tfrs_password_probe:{}@", 1)
  with open(hba, "w") as f:
    f.write(original)
  execute(world_db, "SELECT pg_reload_conf()")


def test_authentication_failure_exits_12_without_the_password(password_role, tmp_path):
  code, logs, errors = run_main(tmp_path, db_url=password_role.format("wrong-pass-9f3"))
  assert code == 12, errors
  assert "authentication failed" in errors and "wrong-pass-9f3" not in logs + errors
  # The right password works, and appears nowhere in the outputs either.
  out = tmp_path / "ok"
  code, logs, errors = run_main(tmp_path, db_url=password_role.format("the-right-one"),
                                output_dir=str(out), **SMALL_GATE)
  assert code == 0, errors
  written = "".join(open(p, errors="ignore").read() for p in glob.glob(str(out / "*.json")))
  assert "the-right-one" not in logs + errors + written
  assert "tfrs_password_probe@" in read(str(out), "manifest.json")["source"]["url"]


def test_drop_policies_duplicates_and_csv_dump_agree(world_db, tmp_path, monkeypatch, caplog):
  """Unknown actions and missing profiles dropped, duplicates keep the latest swipe;
  the database and its CSV dump (as Supabase's dashboard writes it) give one dataset.
  Streaming logs a progress line per chunk when the interval allows (here: always)."""
  table = swipes_table(
      world_db, "swipes_problems", 3000,
      "UPDATE {t} SET action = 'block' WHERE ctid IN (SELECT ctid FROM {t} LIMIT 3)",
      "INSERT INTO {t} SELECT gen_random_uuid(), swipee_id, 'like', created_at FROM {t} "
      "WHERE action <> 'block' LIMIT 2",
      "CREATE TEMP TABLE five AS SELECT * FROM {t} WHERE action = 'pass' "
      "ORDER BY created_at LIMIT 5",
      "INSERT INTO {t} SELECT swiper_id, swipee_id, 'like', created_at + interval '1 hour' "
      "FROM five",
      "INSERT INTO {t} SELECT swiper_id, swipee_id, 'superlike', created_at - interval '1 hour' "
      "FROM five")
  config = write_config(tmp_path, **{"interactions.table": table})
  policies = dict(unknown_actions="drop", missing_entities="drop", **SMALL_GATE)
  db_out = str(tmp_path / "db")
  monkeypatch.setattr(sources, "PROGRESS_EVERY_SECONDS", 0.0)
  caplog.set_level(logging.INFO, logger="absl")
  code, logs, errors = run_main(tmp_path, db_url=world_db, config_path=config,
                                output_dir=db_out, chunk_size=1000, **policies)
  assert code == 0, errors
  stats = read(db_out, "stats.json")
  assert stats["dropped"] == {"unknown_actions": {"block": 3}, "missing_entities": 2,
                              "duplicates": 10}
  assert "10 duplicate interactions" in logs
  audited = 3000 + 2 + 5 + 5  # the table's rows, duplicates included
  streamed = audited - 10
  progress = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith("export: ") and "rows/s" in r.getMessage()]
  assert len(progress) == math.ceil(streamed / 1000), progress
  assert progress[-1].startswith(f"export: {streamed}/{audited} interactions")
  assert f"export: streamed {streamed:,}/{audited:,} interactions" in logs
  kept = reader.read_interactions(reader.open_dataset(db_out), "train")
  five = query(world_db, f"SELECT swiper_id::text, swipee_id::text, "
                         f"max(extract(epoch FROM created_at))::bigint FROM {table} GROUP BY 1, 2 "
                         f"HAVING count(*) = 3")
  assert len(five) == 5
  pairs = {(q, c): (a, t) for q, c, a, t in zip(kept["query_id"], kept["candidate_id"],
                                                kept["action"], kept["timestamp"])}
  for q, c, t in five:
    assert pairs[(q, c)] == ("like", t)  # the latest of the three swipes of the pair
  # The CSV dump of the same tables.
  dump = tmp_path / "dump"
  dump.mkdir()
  conn = psycopg2.connect(world_db)
  with conn.cursor() as cur:
    for name, source in (("profiles", "profiles"), (table, table)):
      with open(dump / f"{name}.csv", "w") as f:
        cur.copy_expert(f"COPY (SELECT * FROM {source}) TO STDOUT WITH (FORMAT csv, HEADER)", f)
  conn.close()
  assert "{" in (dump / "profiles.csv").read_text().splitlines()[1]  # arrays as {a,b}
  file_out = str(tmp_path / "csv")
  code, logs, errors = run_main(tmp_path, input_dir=str(dump), config_path=config,
                                output_dir=file_out, **policies)
  assert code == 0, errors
  assert_same_dataset(file_out, db_out, stats_keys=("rows", "labels", "actions", "dropped",
                                                    "split_time", "readiness"))


def test_sql_overrides_and_candidates_from_another_table(world_db, tmp_path):
  execute(world_db, "DROP TABLE IF EXISTS cards",
          "CREATE TABLE cards AS SELECT id AS card_id, gender, age, city, created_at "
          "FROM profiles WHERE age < 40")
  raw = json.loads(config_lib.load_config().to_json())
  raw["interactions"]["sql"] = ("SELECT s.swiper_id, s.swipee_id, s.action, s.created_at FROM "
                                "swipes s JOIN cards c ON c.card_id = s.swipee_id "
                                "WHERE s.action <> 'superlike';")
  raw["entities"]["user"]["sql"] = "SELECT * FROM profiles WHERE verified OR NOT verified"
  raw["entities"]["card"] = {
      "table": "cards", "id_column": "card_id", "created_at_column": "created_at", "sql": None,
      "features": [{"name": "id", "type": "id", "embedding_dim": 8},
                   {"name": "gender", "type": "categorical", "embedding_dim": 4},
                   {"name": "age", "type": "numeric"},
                   {"name": "city", "type": "categorical", "embedding_dim": 4}]}
  raw["candidate"] = {"entity": "card"}
  # People rules and the people feed's impressions log: a user-to-item config has none.
  del raw["eligibility"], raw["baseline"], raw["impressions"]
  config = tmp_path / "items.json"
  config.write_text(json.dumps(raw))
  out = str(tmp_path / "items")
  code, logs, errors = run_main(tmp_path, db_url=world_db, config_path=str(config),
                                output_dir=out, **SMALL_GATE)
  assert code == 0, errors
  (expected,), = query(world_db, "SELECT count(*) FROM swipes s JOIN cards c ON "
                                 "c.card_id = s.swipee_id WHERE s.action <> 'superlike'")
  (cards,), = query(world_db, "SELECT count(*) FROM cards")
  dataset = reader.open_dataset(out)
  assert sum(dataset.num_rows(split) for split in ("train", "validation", "eval")) == expected
  assert dataset.manifest["entities"] == {"query": 700, "candidate": cards}
  assert "superlike" not in read(out, "stats.json")["actions"]["train"]


# -- connection settings and secrets ---------------------------------------------------------


def test_url_resolution_env_file_and_sslmode(tmp_path):
  env = tmp_path / ".env"
  env.write_text("# comment\nexport DATABASE_URL='postgresql://u:from-file@db.example.com/x'\n")
  assert postgres_source.resolve_url("postgresql://flag", str(env), {})[1] == "--db_url"
  assert postgres_source.resolve_url(None, str(env), {"SUPABASE_DB_URL": "postgresql://e"}) == \
      ("postgresql://e", "$SUPABASE_DB_URL")
  url, where = postgres_source.resolve_url(None, str(env), {})
  assert url.endswith("@db.example.com/x") and where == f"DATABASE_URL in {env}"
  with pytest.raises(postgres_source.MissingUrlError, match="SUPABASE_DB_URL or DATABASE_URL"):
    postgres_source.resolve_url(None, str(tmp_path / "none"), {})
  remote = postgres_source.connection_params("postgresql://u:p@db.abc.supabase.co:5432/postgres")
  assert remote["sslmode"] == "require"
  pinned = "postgresql://u:p@db.abc.supabase.co/postgres?sslmode=verify-full"
  assert postgres_source.connection_params(pinned)["sslmode"] == "verify-full"
  assert "sslmode" not in postgres_source.connection_params("postgresql://u@localhost/x")
  assert "sslmode" not in postgres_source.connection_params("postgresql://u@/x?host=/tmp/s")


def test_redact_removes_passwords_everywhere():
  text = ("postgresql://postgres:pa%40ss:w0rd@db.x.supabase.co:5432/postgres and "
          "host=db password=s3cret user=u and password='quoted secret' and plain-literal")
  out = sources.redact(text, ["plain-literal"])
  for secret in ("pa%40ss", "w0rd", "s3cret", "quoted secret", "plain-literal"):
    assert secret not in out
  assert "postgresql://postgres:***@db.x.supabase.co:5432/postgres" in out
  assert sources.redact("postgresql://postgres@host/db") == "postgresql://postgres@host/db"


@pytest.mark.slow
def test_cli_exit_code_and_helpfull_never_show_the_password(world_db, tmp_path):
  config = write_config(tmp_path, **{"interactions.table": "no_such_table"})
  url = world_db.replace("postgres:@", "postgres:cli-secret-77@", 1)
  env = dict(os.environ, SUPABASE_DB_URL=url)
  script = os.path.join(REPO, "scripts", "export_data.py")
  result = subprocess.run([sys.executable, script, f"--output_dir={tmp_path / 'cli'}",
                           f"--config={config}"], env=env, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 13, result.stderr
  assert "no_such_table" in result.stderr and "interactions.table" in result.stderr
  helpfull = subprocess.run([sys.executable, script, "--helpfull"], env=env,
                            capture_output=True, text=True, timeout=120)
  assert "--unknown_actions" in helpfull.stdout and "--num_partitions" in helpfull.stdout
  for output in (result.stdout, result.stderr, helpfull.stdout, helpfull.stderr):
    assert "cli-secret-77" not in output


def test_a_locked_table_is_reported_while_waiting_and_times_out(world_db, tmp_path):
  """A migration holding ACCESS EXCLUSIVE on swipes: log lines while waiting, then exit 21."""
  locker = psycopg2.connect(world_db)
  try:
    with locker.cursor() as cur:
      cur.execute("LOCK TABLE swipes IN ACCESS EXCLUSIVE MODE")  # held until rollback
    started = time.time()
    code, logs, errors = run_main(tmp_path, db_url=world_db, lock_timeout=3)
    waited = time.time() - started
  finally:
    locker.rollback()
    locker.close()
  assert code == sources.LockTimeoutError.exit_code == 21, errors
  assert "--lock_timeout=3s" in errors and "still waiting for" in logs
  assert waited < 30 and not (tmp_path / "out").exists()
