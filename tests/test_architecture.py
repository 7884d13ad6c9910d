"""The layer rule of docs/ARCHITECTURE.md holds in the code (import-linter contracts in setup.cfg)."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


def test_import_contracts_are_kept():
  lint_imports = shutil.which("lint-imports")
  if lint_imports is None:
    pytest.fail("lint-imports not found: install requirements-dev.txt (import-linter)")
  proc = subprocess.run([lint_imports, "--config", os.path.join(ROOT, "setup.cfg")], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=os.path.abspath(ROOT)))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "0 broken" in proc.stdout, proc.stdout
