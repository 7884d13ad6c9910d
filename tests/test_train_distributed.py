"""MultiWorkerMirroredStrategy: two worker processes on localhost train one model."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tfrs_two_tower.model import run_dir as run_lib
from tfrs_two_tower.model import training_run
import pytest

# Every test here runs subprocesses, conversions or a pipeline: minutes, not seconds.
pytestmark = pytest.mark.slow

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "train_model.py")


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def test_two_workers_on_localhost(tiny_dataset_dir, tmp_path):
  run_dir = str(tmp_path / "run")
  workers = [f"localhost:{p}" for p in _free_ports(2)]
  command = [sys.executable, SCRIPT, f"--dataset_dir={tiny_dataset_dir}", f"--run_dir={run_dir}",
             "--strategy=multi_worker", "--epochs=1", "--steps_per_epoch=8", "--batch_size=64",
             "--layer_sizes=16", "--embedding_dim=8", "--eval_ks=10",
             "--checkpoint_every_steps=4", "--log_every_steps=2",
             "--sampling_probability=streaming"]
  processes = []
  for index in range(2):
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CONFIG": json.dumps(tf_config),
           "CUDA_VISIBLE_DEVICES": ""}
    processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
  outputs = []
  try:
    for process in processes:
      # A hang guard, not a speed check: with other TensorFlow processes on the 2-core
      # machine the two workers once took over 240 s.
      outputs.append(process.communicate(timeout=600)[0])
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-4000:]

  # The chief (worker 0) wrote the run; the other worker cleaned up its private state.
  run = run_lib.open_run(run_dir)
  assert run.manifest["global_step"] == 8
  assert run.flags["strategy"] == "multi_worker"
  assert not os.path.exists(f"{run_dir}.worker-1{training_run.INCOMPLETE_SUFFIX}")
  assert not os.path.exists(run_dir + training_run.INCOMPLETE_SUFFIX)
  ids, embeddings = run.candidate_embeddings()
  assert np.isfinite(embeddings).all() and len(ids) == embeddings.shape[0]
  # Both workers logged the same global losses (one synchronous model).
  losses = [[line.split("loss ")[1].split()[0] for line in out.splitlines()
             if "train: step" in line] for out in outputs]
  assert losses[0] and losses[0] == losses[1]
