"""The Python API: the notebook example in docs/api.md runs as written (on the tiny dataset)."""
import os
import re
import subprocess
import sys

import pytest

import tfrs_two_tower

DOC = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "api.md")


def _example() -> str:
  blocks = re.findall(r"```python\n(.*?)```", open(DOC).read(), re.S)
  assert len(blocks) == 1, "docs/api.md has one example"
  return blocks[0]


@pytest.mark.slow
def test_the_notebook_example_runs(tiny_dataset_dir, tmp_path, capsys):
  code = _example()
  code = re.sub(r'^dataset_dir = "[^"]*"', f"dataset_dir = {tiny_dataset_dir!r}", code, flags=re.M)
  code = re.sub(r'^work_dir = "[^"]*"', f"work_dir = {str(tmp_path)!r}", code, flags=re.M)
  assert repr(tiny_dataset_dir) in code and repr(str(tmp_path)) in code
  namespace = {}
  exec(compile(code, DOC, "exec"), namespace)  # noqa: S102 - our own documentation
  out = capsys.readouterr().out
  assert "validation_recall@10" in out and "AUC" in out and "softmax_loss" in out
  assert os.path.exists(os.path.join(tmp_path, "run", "manifest.json"))
  assert set(namespace["report"]["recommenders"]) >= {"run", "popularity", "feature_matching"}
  assert namespace["trained"].query_tower is not None


def test_the_api_is_the_package_face_and_loads_lazily():
  # Importing the package sets TF_USE_LEGACY_KERAS and loads nothing heavy.
  probe = ("import os, sys; env = dict(os.environ); import tfrs_two_tower; "
           "print('tensorflow' in sys.modules, "
           "{k for k in os.environ if os.environ[k] != env.get(k)})")
  out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"},
                       check=True).stdout.strip()
  assert out == "False {'TF_USE_LEGACY_KERAS'}", out
  for name in tfrs_two_tower._API:
    assert callable(getattr(tfrs_two_tower, name)), name
  with pytest.raises(AttributeError, match="no attribute 'trian'"):
    tfrs_two_tower.trian  # noqa: B018 - a typo is an AttributeError, not an import
