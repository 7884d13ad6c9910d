"""The README cannot rot: its commands name real scripts with real flags.

The main command itself runs in .ci/run (after the tests); the stages it chains
run in tests/test_pipeline.py; here every script invocation in the README's bash
blocks is checked against that script's own `--helpfull`.
"""
import functools
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
README = os.path.join(ROOT, "README.md")


def _bash_lines():
  text = open(README, encoding="utf-8").read()
  blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
  joined = "\n".join(blocks).replace("\\\n", " ")
  return [line.strip() for line in joined.splitlines()
          if line.strip() and not line.strip().startswith("#")]


@functools.lru_cache(maxsize=None)
def _helpfull(script):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), "--helpfull"],
                        capture_output=True, text=True, timeout=300)
  return proc.stdout + proc.stderr


def test_readme_has_the_two_commands_and_ci_runs_the_test_command():
  lines = _bash_lines()
  assert ("python3 -m pip install -r requirements.txt -e . && run_pipeline.py --output_dir=out "
          "--embedded_db") in lines
  test_command = "python3 -m pip install -r requirements-dev.txt -e . && python3 -m pytest"
  assert test_command in lines
  ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
  assert "pip install" in ci and "requirements-dev.txt" in ci and "python3 -m pytest" in ci
  assert "run_pipeline.py --output_dir=" in ci and "--embedded_db" in ci


@pytest.mark.slow  # one --helpfull subprocess per script
def test_every_script_and_flag_in_the_readme_exists():
  checked = 0
  for line in _bash_lines():
    for command in re.split(r"&&|\|", line):
      words = shlex.split(command.strip().split("#")[0]) if command.strip() else []
      scripts = [w for w in words if re.fullmatch(r"[a-z_]+\.py", w)]
      if not scripts:
        continue
      script = scripts[0]
      assert os.path.exists(os.path.join(ROOT, "scripts", script)), script
      help_text = _helpfull(script)
      for word in words[words.index(script) + 1:]:
        if word.startswith("--"):
          flag = word[2:].split("=")[0]
          assert re.search(rf"--(\[no\])?{re.escape(flag)}\b", help_text), (script, flag)
      checked += 1
  assert checked >= 15


@pytest.mark.slow  # subprocess
def test_plan_command_from_the_readme_runs():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "analyze_experiment.py"),
                         "--plan", "--baseline_rate=0.12", "--mde=0.015"],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert re.search(r"7,?7\d\d", proc.stdout + proc.stderr)
