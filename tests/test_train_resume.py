"""Checkpoints: resume after SIGKILL to the same final step; NaN stops keep a good checkpoint."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tfrs_two_tower.model import run_dir as run_lib
from tfrs_two_tower.model import train_options
from tfrs_two_tower.model import training_run
from tfrs_two_tower.stages import train_stage

# Every test here runs subprocesses, conversions or a pipeline: minutes, not seconds.
pytestmark = pytest.mark.slow

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "train_model.py")


def _command(dataset_dir, run_dir, **overrides):
  flags = dict(epochs=2, steps_per_epoch=30, batch_size=64, checkpoint_every_steps=5,
               log_every_steps=5, layer_sizes="16", embedding_dim=8, eval_ks="10", no_tune=True)
  flags.update(overrides)
  return [sys.executable, SCRIPT, f"--dataset_dir={dataset_dir}", f"--run_dir={run_dir}"] + [
      f"--{k}={v}" for k, v in flags.items()]


def _latest_step(checkpoint_dir):
  latest = tf.train.latest_checkpoint(checkpoint_dir)
  return int(re.search(r"ckpt-(\d+)$", latest).group(1)) if latest else 0


def test_sigkill_then_same_command_resumes_to_the_same_step(tiny_dataset_dir, tmp_path):
  run_dir = str(tmp_path / "run")
  checkpoints = os.path.join(run_dir + training_run.INCOMPLETE_SUFFIX, run_lib.CHECKPOINTS)
  env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
  first = subprocess.Popen(_command(tiny_dataset_dir, run_dir), env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while _latest_step(checkpoints) < 10 and first.poll() is None and time.time() < deadline:
      time.sleep(0.05)
    assert first.poll() is None, "training ended before it could be killed"
    first.send_signal(signal.SIGKILL)
  finally:
    first.wait()
  killed_at = _latest_step(checkpoints)
  assert 10 <= killed_at < 60
  assert not os.path.exists(run_dir)

  # Other flags must not silently mix with the interrupted run.
  other = subprocess.run(_command(tiny_dataset_dir, run_dir, batch_size=32), env=env,
                         capture_output=True, text=True)
  assert other.returncode != 0 and "batch_size" in other.stderr

  second = subprocess.run(_command(tiny_dataset_dir, run_dir), env=env, capture_output=True,
                          text=True)
  assert second.returncode == 0, second.stderr[-3000:]
  resumed = re.search(r"resuming from (\S+)", second.stderr)
  assert resumed, second.stderr[-3000:]
  assert os.path.dirname(os.path.normpath(resumed.group(1))) == os.path.normpath(checkpoints)
  assert os.path.basename(resumed.group(1)) == f"ckpt-{killed_at}"
  run = run_lib.open_run(run_dir)
  assert run.manifest["global_step"] == 60
  assert not os.path.exists(run_dir + training_run.INCOMPLETE_SUFFIX)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_dataset_dir, tmp_path):
  run_dir = str(tmp_path / "run")
  options = train_options.TrainOptions(no_tune=True, epochs=1, steps_per_epoch=10, batch_size=64,
                                     optimizer="sgd", learning_rate=1e30,
                                     checkpoint_every_steps=1, layer_sizes=[16],
                                     embedding_dim=8, eval_ks=[10])
  with pytest.raises(train_options.NonFiniteLossError, match="last good checkpoint"):
    train_stage.run(tiny_dataset_dir, run_dir, options, log=lambda *a: None)
  assert not os.path.exists(run_dir)
  checkpoint_dir = os.path.join(run_dir + training_run.INCOMPLETE_SUFFIX, run_lib.CHECKPOINTS)
  latest = tf.train.latest_checkpoint(checkpoint_dir)
  assert latest is not None
  reader = tf.train.load_checkpoint(latest)
  for name in reader.get_variable_to_shape_map():
    value = reader.get_tensor(name)
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
      assert np.isfinite(value).all(), name


@pytest.mark.slow
def test_kill_after_checkpoints_moved_into_the_temporary_run_dir_resumes(tiny_dataset_dir,
                                                                         tmp_path):
  """Older versions moved the checkpoints into `.<run>.tmp-*` before the final rename."""
  run_dir = str(tmp_path / "run")
  env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
  first = subprocess.run(_command(tiny_dataset_dir, run_dir, epochs=1), env=env,
                         capture_output=True, text=True)
  assert first.returncode == 0, first.stderr[-3000:]
  # The state a kill left: the run written into its temporary directory, no manifest yet, the
  # writing process gone, no `.incomplete` directory.
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  stranded = str(tmp_path / f".run.tmp-{dead.pid}-x1")
  os.replace(run_dir, stranded)
  os.remove(os.path.join(stranded, run_lib.MANIFEST))
  second = subprocess.run(_command(tiny_dataset_dir, run_dir, epochs=1), env=env,
                          capture_output=True, text=True)
  assert second.returncode == 0, second.stderr[-3000:]
  assert f"recovered the checkpoints of an interrupted run from {stranded}" in second.stderr
  assert re.search(r"resuming from \S+/ckpt-30\b", second.stderr), second.stderr[-3000:]
  assert run_lib.open_run(run_dir).manifest["global_step"] == 30
  assert sorted(os.listdir(tmp_path)) == ["run"]  # nothing stale, nothing orphaned
