"""The one-command pipeline on a small world: every stage, resume, rerun, summary."""
import json
import os
import subprocess
import sys

import pytest

from tfrs_two_tower.data import synthetic
from tfrs_two_tower.stages import pipeline_stage

# Every test here runs subprocesses, conversions or a pipeline: minutes, not seconds.
pytestmark = pytest.mark.slow

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "run_pipeline.py")
SMALL = ["--num_users=700", "--days=50", "--epochs=1", "--batch_size=512", "--bootstrap=50",
         "--coreml_precision=float32", "--no_tune"]


def _run(out, *flags):
  """run_pipeline.py on the embedded demo database unless a --db_url is given."""
  where = [] if any(f.startswith("--db_url=") for f in flags) else ["--embedded_db"]
  proc = subprocess.run([sys.executable, SCRIPT, f"--output_dir={out}", *SMALL, *where, *flags],
                        capture_output=True, text=True, timeout=900)
  return proc


@pytest.fixture(scope="module")
def pipeline_out(tmp_path_factory):
  out = tmp_path_factory.mktemp("pipeline") / "out"
  proc = _run(out)
  assert proc.returncode == 0, proc.stderr[-5000:]
  return out, proc


def test_first_run_produces_every_artifact_and_a_summary(pipeline_out):
  out, proc = pipeline_out
  for name in ("world/world.json", "dataset/manifest.json", "run/manifest.json",
               "report/report.json", "coreml/QueryTower.mlpackage",
               "coreml/CandidateTower.mlpackage", "coreml/features.json", "coreml/parity.json",
               "summary.json", "summary.md"):
    assert os.path.exists(out / name), name
  summary = json.load(open(out / "summary.json"))
  assert summary["readiness"]["verdict"] == "ready"
  assert 0.5 < summary["headline"]["auc"]["value"] <= 1.0
  assert summary["headline"]["auc"]["value"] < summary["oracle_auc"] < 1.0  # the ceiling
  assert summary["coreml"]["gate"]["passed"]
  assert summary["published"]["created"] is True
  text = open(out / "summary.md").read()
  assert "gate > 0.7" in text and "lift over feature matching" in text
  assert "tensorboard --logdir" in text and "not Apple's runtime" in text
  assert "[publish] done" in proc.stderr


def test_second_run_skips_everything_and_rerun_redoes_the_tail(pipeline_out):
  out, _ = pipeline_out
  run_manifest = open(out / "run" / "manifest.json").read()
  again = _run(out, "--stages=world,database,export,train,evaluate")
  assert again.returncode == 0, again.stderr[-3000:]
  for stage in ("world", "export", "train", "evaluate"):
    assert f"[{stage}] up to date" in again.stderr, stage
  assert "[database] already seeded" in again.stderr
  assert open(out / "run" / "manifest.json").read() == run_manifest
  rerun = _run(out, "--stages=evaluate,convert", "--rerun=evaluate")
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "[evaluate] running" in rerun.stderr and "[convert] running" in rerun.stderr
  assert open(out / "run" / "manifest.json").read() == run_manifest


def test_unknown_stage_is_a_clear_error(tmp_path):
  proc = _run(tmp_path / "x", "--stages=train,deploy")
  assert proc.returncode == 2
  assert "--stages: unknown stage(s) ['deploy']" in proc.stderr
  with pytest.raises(pipeline_stage.PipelineError, match="--rerun"):
    pipeline_stage.PipelineOptions(rerun=["everything"]).check()


def test_db_url_runs_on_that_database_only(fresh_database, tiny_world, tmp_path):
  import contextlib
  import psycopg2
  from tfrs_two_tower.data import seeding
  with contextlib.closing(psycopg2.connect(fresh_database)) as conn:
    seeding.seed(conn, tiny_world, log=lambda *a: None)
  out = tmp_path / "real"
  proc = _run(out, f"--db_url={fresh_database}", "--stages=world,database,export,train,publish")
  assert proc.returncode == 0, proc.stderr[-5000:]
  # A real database is only read (export) and written by publish: no world, no embedded server.
  assert not (out / "world").exists() and not (out / "pgdata").exists()
  assert (out / "dataset" / "manifest.json").exists() and (out / "run" / "manifest.json").exists()
  with contextlib.closing(psycopg2.connect(fresh_database)) as conn, conn.cursor() as cur:
    cur.execute("SELECT m.run_id FROM tt_active_model a JOIN tt_model_versions m USING (version)")
    run_id = cur.fetchone()[0]
  assert run_id == json.load(open(out / "run" / "manifest.json"))["run_id"]


def test_changed_options_rerun_the_stage_not_up_to_date(tiny_dataset_dir, tmp_path):
  """--epochs=2 after --epochs=1 (no --rerun) trains again; the same flags do nothing."""
  import shutil
  out = tmp_path / "out"
  shutil.copytree(tiny_dataset_dir, out / "dataset")
  logs = []

  def run(**changes):
    logs.clear()
    pipeline_stage.run(pipeline_stage.PipelineOptions(
        output_dir=str(out), stages=["train"], **{"epochs": 1, "batch_size": 512, **changes}),
        log=logs.append)
    return "\n".join(logs)

  assert "[train] running" in run()
  assert "[train] up to date" in run()
  again = run(epochs=2)
  assert "[train] epochs 1 -> 2 since" in again and "[train] running" in again
  assert json.load(open(out / "run" / "manifest.json"))["global_step"] > 0
  recorded = json.load(open(out / "fingerprints.json"))["train"]
  assert recorded["options"]["epochs"] == 2 and recorded["inputs"]["dataset"]
  assert "[train] up to date" in run(epochs=2)


def test_world_flags_reach_the_world_stage(tmp_path):
  """--exploration (a world flag of run_pipeline.py) is the world's: its feeds explore and log
  propensities below 1, which the database stage then seeds with the world."""
  out = tmp_path / "out"
  options = pipeline_stage.PipelineOptions(output_dir=str(out), stages=["world"], num_users=60,
                                           days=5, feed_size=4, exploration=0.3)
  pipeline_stage.run(options, log=lambda *a: None)
  world = synthetic.World.load(str(out / "world"))
  assert (world.params.exploration, world.params.feed_size) == (0.3, 4)
  assert (world.impressions["propensity"] < 1).any()
