"""seed_database.py: the synthetic world into a real PostgreSQL, re-runnable."""
import os
import subprocess
import sys

import psycopg2
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "seed_database.py")

pytestmark = pytest.mark.slow  # every test runs the script in subprocesses


def _seed(*flags, env=None):
  return subprocess.run([sys.executable, SCRIPT, *flags], capture_output=True, text=True,
                        timeout=300, env=env)


def test_seed_script_twice_inserts_once(fresh_database, tiny_world_dir, tiny_world):
  first = _seed(f"--db_url={fresh_database}", f"--world_dir={tiny_world_dir}")
  assert first.returncode == 0, first.stderr
  assert f"inserted 700 of 700 profiles, {len(tiny_world.swipes):,} of" in first.stderr
  # The URL may come from the environment too; the second run adds nothing.
  second = _seed(f"--world_dir={tiny_world_dir}",
                 env=dict(os.environ, DATABASE_URL=fresh_database))
  assert second.returncode == 0, second.stderr
  assert "inserted 0 of 700 profiles, 0 of" in second.stderr
  conn = psycopg2.connect(fresh_database)
  with conn.cursor() as cur:
    cur.execute("SELECT count(*), count(DISTINCT (swiper_id, swipee_id)) FROM swipes")
    assert cur.fetchone() == (len(tiny_world.swipes), len(tiny_world.swipes))
    cur.execute("SELECT count(*) FROM matches")
    assert cur.fetchone()[0] == tiny_world.summary()["matches"]
    cur.execute("SELECT interests, verified, created_at FROM profiles WHERE id = %s",
                (tiny_world.profiles["id"].iloc[0],))
    interests, verified, created = cur.fetchone()
  conn.close()
  row = tiny_world.profiles.iloc[0]
  assert interests == list(row["interests"]) and verified == bool(row["verified"])
  assert created.timestamp() == row["created_at"].timestamp()


def test_seed_script_unreachable_exits_11_without_password(tmp_path, tiny_world_dir):
  result = _seed(f"--db_url=postgresql://u:seed-secret-1@/x?host={tmp_path}",
                 f"--world_dir={tiny_world_dir}", "--connect_retries=0")
  assert result.returncode == 11, result.stderr
  assert "unreachable" in result.stderr and "seed-secret-1" not in result.stderr + result.stdout
