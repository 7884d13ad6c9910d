"""Atomic directories: leftovers of a kill -9 are recognised, cleaned or restored, with a log line."""
import os
import subprocess
import sys

from tfrs_two_tower import files


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
  final = str(tmp_path / "run")
  dead = tmp_path / f".run.tmp-{_dead_pid()}-abc"
  legacy = tmp_path / ".run.tmp-k3j2h1"  # an older version's name: no process id
  live = tmp_path / f".run.tmp-{os.getpid()}-xyz"
  other = tmp_path / f".runner.tmp-{_dead_pid()}-abc"  # another directory's leftover
  for d in (dead, legacy, live, other):
    d.mkdir()
  assert sorted(files.stale_temporaries(final)) == sorted([str(dead), str(legacy)])
  logged = []
  files.remove_stale_temporaries(final, log=logged.append)
  assert not dead.exists() and not legacy.exists() and live.exists() and other.exists()
  assert len(logged) == 2 and all("interrupted write" in line for line in logged)
  with files.atomic_directory(final) as tmp:
    assert os.path.basename(tmp).startswith(f".run.tmp-{os.getpid()}-")


def test_an_interrupted_overwrite_gets_the_previous_version_back(tmp_path):
  final = tmp_path / "dataset"
  old = tmp_path / f".dataset.old-{_dead_pid()}-q"
  (old / "previous").mkdir(parents=True)
  (old / "previous" / "manifest.json").write_text("{}")
  half = tmp_path / f".dataset.tmp-{_dead_pid()}-r"
  half.mkdir()
  logged = []
  files.remove_stale_temporaries(str(final), log=logged.append)
  assert (final / "manifest.json").read_text() == "{}"
  assert sorted(os.listdir(tmp_path)) == ["dataset"]
  assert any("restored" in line for line in logged)
