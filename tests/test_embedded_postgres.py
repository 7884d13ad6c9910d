"""The embedded PostgreSQL never outlives a killed pipeline."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psycopg2
import pytest

from tfrs_two_tower.data import postgres_source

pytestmark = pytest.mark.slow  # starts and stops real servers

_HOLD = textwrap.dedent("""
    import sys, time
    from tfrs_two_tower.data import postgres_source
    with postgres_source.embedded_postgres(sys.argv[1], log=lambda m: None) as url:
      print(url, flush=True)
      time.sleep(600)
""")


def _reachable(url):
  try:
    psycopg2.connect(url, connect_timeout=2).close()
    return True
  except psycopg2.OperationalError:
    return False


def _wait_until(condition, seconds=30):
  deadline = time.time() + seconds
  while time.time() < deadline:
    if condition():
      return True
    time.sleep(0.5)
  return False


def test_a_killed_user_does_not_leave_the_server_running(tmp_path):
  data_dir = str(tmp_path / "pgdata")
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, data_dir], stdout=subprocess.PIPE,
                            text=True)
  url = holder.stdout.readline().strip()
  assert _reachable(url)
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  assert _wait_until(lambda: not _reachable(url)), "the server outlived its killed user"
  assert not os.path.exists(os.path.join(data_dir, "postmaster.pid"))


def test_the_next_run_forgets_killed_users(tmp_path):
  """A user list naming a dead process (left by older versions) no longer pins the server."""
  data_dir = str(tmp_path / "pgdata")
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  with postgres_source.embedded_postgres(data_dir, log=lambda m: None) as url:
    path = os.path.join(data_dir, ".handle_pids.json")
    with open(path) as f:
      users = json.load(f)
    with open(path, "w") as f:
      json.dump([dead.pid] + users, f)
    logged = []
    assert postgres_source.forget_dead_users(data_dir, logged.append) == [dead.pid]
    assert "killed process(es)" in logged[0]
  assert not _reachable(url)
