#!/usr/bin/env python3
"""The whole pipeline at 5k .. 1M users: wall time and peak RSS of each stage, training steps/s.

For each size (users of a synthetic world, `synthetic.WorldParams` defaults
otherwise) the stages run one after the other, each in its own subprocess so
that its peak RSS (`wait4`'s ru_maxrss) is its own:

  world        generate_world + save (profiles.parquet, swipes.parquet)
  export       export_stage from those dumps -> dataset directory (TFRecords)
  train_lazy   train_stage.run, --sparse_embedding_updates (default), `--train_steps`
               steps, then the epoch-end evaluation and the run directory
  train_epoch  train_stage.run, lazy, ONE FULL EPOCH (every train swipe once): its wall
               time from the trainer's start to the end of the epoch-end evaluation,
               steps/s and CPU s/step over the epoch, then the run directory
  train_dense  the same with --nosparse_embedding_updates (tf-keras Adam), `--dense_steps`
  evaluate     `--eval_users` sampled eval users, each ranked against ALL candidates
               (recall@50 of their eval likes)
  coreml       convert_stage (both towers, parity checked)
               (evaluate, coreml and publish use the train_epoch run when there is one,
               else the train_lazy run)
  publish      embedded PostgreSQL: profiles seeded, publish_stage (embeddings +
               HNSW build), then recommend() latency HNSW vs exact and recall@20 vs exact

Training steps/s is measured over the steps between the first and the last
progress log (tracing excluded), at the same batch size for every size, in wall
time and per CPU second of the process (the latter is what to compare on a box
shared with other jobs); one epoch's time is extrapolated from it (train
interactions / batch size steps).
Per stage a JSON file is kept in <work_dir>/<size>/, so a long size can be run
once (in the background) and the table printed again with --report_only.
Target: lazy steps/s at the largest size >= 0.75 x at the smallest; no stage's
peak RSS per swipe (nor per user) grows with size. Every training run has
--no_tune (one model's cost) and `--validation_max_users` epoch-end users.
A 1M-user world takes hours on a shared 2-core box: run it in the background,
resumable stage by stage, e.g.

  nohup nice -n 5 python benchmarks/bench_scale.py --sizes=1000000 \
      --stages=world,export,train_epoch,evaluate,coreml,publish,train_lazy \
      --work_dir=/work/scale > 1m.log 2>&1 &
  python benchmarks/bench_scale.py --sizes=5000,50000,500000,1000000 --report_only \
      --work_dir=/work/scale

  python benchmarks/bench_scale.py --sizes=5000,50000 --work_dir=/tmp/scale
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["5000", "50000", "500000", "1000000"], "World sizes (users).")
flags.DEFINE_string("work_dir", "/tmp/bench_scale", "Worlds, datasets, runs and results.")
flags.DEFINE_list("stages", ["world", "export", "train_lazy", "train_epoch", "train_dense",
                             "evaluate", "coreml", "publish"], "Stages to run, in order.")
flags.DEFINE_integer("batch_size", 1024, "Training batch size (the same at every size).")
flags.DEFINE_integer("train_steps", 300, "Steps of the lazy training run.")
flags.DEFINE_integer("dense_steps", 40, "Steps of the dense-Adam training run.")
flags.DEFINE_integer("eval_users", 2000, "Sampled eval users of the evaluate stage.")
flags.DEFINE_integer("validation_max_users", 20_000, "Epoch-end validation users of training.")
flags.DEFINE_integer("queries", 100, "recommend() calls of the publish stage.")
flags.DEFINE_integer("timeout", 3600, "Seconds a stage may take before it is stopped.")
flags.DEFINE_boolean("report_only", False, "Print the table of the stored results only.")
flags.DEFINE_boolean("rerun", False, "Run stages again even when their result is stored.")
flags.DEFINE_string("stage", None, "Internal: run this one stage in this process.")
flags.DEFINE_integer("size", None, "Internal: the size of --stage.")


def _paths(size: int) -> dict:
  base = os.path.join(FLAGS.work_dir, str(size))
  return {"base": base, "world": os.path.join(base, "world"),
          "dataset": os.path.join(base, "dataset"),
          "run_lazy": os.path.join(base, "run_lazy"), "run_dense": os.path.join(base, "run_dense"),
          "run_epoch": os.path.join(base, "run_epoch"),
          "coreml": os.path.join(base, "coreml")}


def _du(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


# -- the stages (each runs in its own process) -------------------------------------------------
# Each stage imports what it uses inside its function, so that a stage's peak RSS
# holds its own libraries only (the world stage does not load TensorFlow).
def stage_world(size, p):
  from tfrs_two_tower.data import synthetic
  world = synthetic.generate_world(synthetic.WorldParams(num_users=size))
  world.save(p["world"], overwrite=True)
  return {"users": len(world.profiles), "swipes": len(world.swipes),
          "disk_bytes": _du(p["world"])}


def stage_export(size, p):
  from tfrs_two_tower.stages import export_stage
  stats = export_stage.run(p["dataset"], export_stage.ExportOptions(input_dir=p["world"],
      overwrite=True), log=lambda m: None)
  return {"disk_bytes": _du(p["dataset"]),
          "stats": {k: v for k, v in stats.items() if isinstance(v, (int, float, str))}}


def _model_run(p) -> str:
  """The run the later stages use: the full epoch's when it was written, else the lazy one."""
  return p["run_epoch"] if os.path.exists(os.path.join(p["run_epoch"], "manifest.json")) \
      else p["run_lazy"]


def _train(size, p, run: str, lazy: bool, steps: int):
  """One training run of `steps` steps (0: one full epoch); its speed and the times of its parts."""
  from tfrs_two_tower.model import train_options
  from tfrs_two_tower.model import training_run
  from tfrs_two_tower.stages import train_stage
  with open(os.path.join(p["dataset"], "manifest.json")) as f:
    epoch_steps = max(int(json.load(f)["rows"]["train"]) // FLAGS.batch_size, 1)  # as trained
  marks = []

  def log(message, *args):
    text = message % args if args else message
    print(text, flush=True)  # progress in <stage>.json.out.log: a 1M epoch runs for an hour
    if "steps/s" in text:
      marks.append((int(text.split("step ")[1].split("/")[0]), time.perf_counter(),
                    time.process_time()))
    elif "validation AUC" in text:
      marks.append(("eval_done", time.perf_counter(), time.process_time()))
    elif "embedding tables need" in text:
      marks.append(("setup", time.perf_counter(), time.process_time()))
  run_dir = p[run]
  shutil.rmtree(run_dir + training_run.INCOMPLETE_SUFFIX, ignore_errors=True)
  options = train_options.TrainOptions(
      epochs=1, steps_per_epoch=steps, batch_size=FLAGS.batch_size,
      log_every_steps=max((steps or epoch_steps) // (5 if steps else 20), 1),
      checkpoint_every_steps=10 * (steps or epoch_steps), sparse_embedding_updates=lazy,
      no_tune=True, validation_max_users=FLAGS.validation_max_users)
  started = time.perf_counter()
  result = train_stage.run(p["dataset"], run_dir, options, overwrite=True, log=log)
  ended = time.perf_counter()
  steps_marks = [m for m in marks if isinstance(m[0], int)]
  (first_step, first_t, first_cpu), (last_step, last_t, last_cpu) = steps_marks[0], steps_marks[-1]
  steps_per_s = (last_step - first_step) / (last_t - first_t)
  setup = next(t for s, t, _ in marks if s == "setup")
  eval_done = next(t for s, t, _ in marks if s == "eval_done")
  # On a shared box wall-clock rates follow the load; CPU seconds per step do much less.
  out = {"steps": steps or epoch_steps, "steps_per_s": steps_per_s,
         "examples_per_s": steps_per_s * FLAGS.batch_size,
         "cpu_s_per_step": (last_cpu - first_cpu) / (last_step - first_step),
         "load_and_setup_s": setup - started, "setup_and_first_steps_s": first_t - setup,
         "measured_steps_s": last_t - first_t, "epoch_eval_s": eval_done - last_t,
         "write_run_s": ended - eval_done, "epoch_steps": epoch_steps,
         "epoch_s_extrapolated": epoch_steps / steps_per_s,
         "final": {k: v for k, v in result.manifest["metrics"]["final"].items()
                   if k in ("validation_auc", "validation_recall@50", "validation_users")}}
  if not steps:  # the epoch itself, measured: trainer start to the end of its evaluation
    out["epoch_wall_s"] = eval_done - setup
  return out


def stage_train_lazy(size, p):
  return _train(size, p, "run_lazy", True, FLAGS.train_steps)


def stage_train_epoch(size, p):
  return _train(size, p, "run_epoch", True, 0)


def stage_train_dense(size, p):
  return _train(size, p, "run_dense", False, FLAGS.dense_steps)


def stage_evaluate(size, p):
  import tensorflow as tf
  from tfrs_two_tower import features as features_lib
  from tfrs_two_tower.data import reader
  from tfrs_two_tower.model import run_dir as run_lib
  run = run_lib.open_run(_model_run(p))
  dataset = reader.open_dataset(p["dataset"])
  # Ids and labels only: every feature of a 1M-user eval split as strings is ~8 GB. The
  # sampled users' features come from the query entity table (what the records repeat).
  swipes = reader.read_interactions(dataset, "eval", keys=[
      features_lib.QUERY_ID, features_lib.CANDIDATE_ID, features_lib.LABEL])
  users = np.unique(swipes[features_lib.QUERY_ID])
  sample = np.random.default_rng(0).choice(users, min(FLAGS.eval_users, len(users)),
                                           replace=False)
  entities = reader.read_entities(dataset, "query")
  rows = {u: i for i, u in enumerate(entities[features_lib.QUERY_ID])}
  rows = np.array([rows[u] for u in sample])
  started = time.perf_counter()
  queries = run.embed("query", {k: v[rows] for k, v in entities.items()})
  ids, corpus = run.candidate_embeddings()
  column = {c: i for i, c in enumerate(ids)}
  likes = swipes[features_lib.LABEL] == 1
  wanted = {u: set() for u in sample}
  for u, c in zip(swipes[features_lib.QUERY_ID][likes], swipes[features_lib.CANDIDATE_ID][likes]):
    if u in wanted and c in column:
      wanted[u].add(column[c])
  hits = total = 0
  corpus_t = tf.constant(corpus)
  block = max(1, (256 << 20) // (4 * len(corpus)))
  for start in range(0, len(sample), block):
    scores = tf.matmul(tf.constant(queries[start:start + block]), corpus_t, transpose_b=True)
    top = tf.math.top_k(scores, 50).indices.numpy()
    for user, row in zip(sample[start:start + block], top):
      hits += len(wanted[user] & set(row.tolist()))
      total += len(wanted[user])
  return {"users": int(len(sample)), "candidates": int(len(corpus)),
          "recall@50": hits / max(total, 1), "rank_s": time.perf_counter() - started}


def stage_coreml(size, p):
  from tfrs_two_tower.stages import convert_stage
  parity = convert_stage.run(_model_run(p), p["dataset"], p["coreml"], overwrite=True,
                             log=lambda *a: None)
  return {"disk_bytes": _du(p["coreml"]),
          "parity": {k: v for k, v in parity.items() if isinstance(v, (int, float, bool))}}


def stage_publish(size, p):
  import contextlib
  import psycopg2
  from tfrs_two_tower.data import postgres_source
  from tfrs_two_tower.data import synthetic
  from tfrs_two_tower.serving import pgvector
  from tfrs_two_tower.stages import publish_stage
  from tfrs_two_tower.data import seeding
  # Only the profiles go into the database: recommend() needs them (eligibility);
  # the swipes only exclude already-seen profiles, the same for HNSW and exact. (Loading
  # the whole 1M world first -- swipes and impressions log, ~20 GB -- was OOM-killed.)
  profiles_only = synthetic.World.load(p["world"], profiles_only=True)
  out = {}
  with contextlib.ExitStack() as stack:
    url = stack.enter_context(postgres_source.embedded_postgres(log=lambda m: None))
    conn = stack.enter_context(contextlib.closing(psycopg2.connect(url)))
    started = time.perf_counter()
    seeding.seed(conn, profiles_only, log=lambda m: None)
    out["seed_profiles_s"] = time.perf_counter() - started
    marks = {}
    started = time.perf_counter()
    # The candidate table's copy is logged right before CREATE INDEX ... USING hnsw,
    # the active version right after the commit: between them is the HNSW build.
    publish_stage.run(_model_run(p), p["dataset"], db_url=url, env_file=None,
                      log=lambda m: marks.setdefault(
                          "copied" if "candidate embeddings ->" in m else
                          "active" if "active version" in m else m, time.perf_counter()))
    out["publish_s"] = time.perf_counter() - started
    out["hnsw_build_s"] = marks["active"] - marks["copied"]
    ids = profiles_only.profiles["id"].tolist()
    users = np.random.default_rng(0).choice(ids, FLAGS.queries, replace=False)
    timings = {"hnsw": [], "exact": []}
    hits = total = 0
    for user in users:
      results = {}
      for mode in timings:
        started = time.perf_counter()
        results[mode] = pgvector.recommend(conn, user, 20, exact=mode == "exact")
        timings[mode].append(time.perf_counter() - started)
      exact = {c for c, _ in results["exact"]}
      hits += len(exact & {c for c, _ in results["hnsw"]})
      total += len(exact)
  out.update(hnsw_ms=1000 * float(np.median(timings["hnsw"])),
             hnsw_p95_ms=1000 * float(np.percentile(timings["hnsw"], 95)),
             exact_ms=1000 * float(np.median(timings["exact"])),
             recall_vs_exact=hits / max(total, 1))
  return out


# -- the driver ---------------------------------------------------------------------------------
def _run_stage(size: int, stage: str) -> dict:
  """Runs one stage in a subprocess; its wall time, peak RSS and result (or why it failed)."""
  result_path = os.path.join(_paths(size)["base"], f"{stage}.json")
  if os.path.exists(result_path) and not FLAGS.rerun:
    with open(result_path) as f:
      return json.load(f)
  os.makedirs(_paths(size)["base"], exist_ok=True)
  out_path = result_path + ".out"
  argv = [sys.executable, os.path.abspath(__file__), f"--stage={stage}", f"--size={size}",
          f"--work_dir={FLAGS.work_dir}", f"--batch_size={FLAGS.batch_size}",
          f"--train_steps={FLAGS.train_steps}", f"--dense_steps={FLAGS.dense_steps}",
          f"--eval_users={FLAGS.eval_users}", f"--queries={FLAGS.queries}",
          f"--validation_max_users={FLAGS.validation_max_users}"]
  started = time.perf_counter()
  with open(out_path + ".log", "w") as log:
    child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = started + FLAGS.timeout
    timed_out = False
    while True:
      pid, status, usage = os.wait4(child.pid, os.WNOHANG)
      if pid:
        break
      if time.perf_counter() > deadline:
        timed_out = True
        child.kill()
        pid, status, usage = os.wait4(child.pid, 0)
        break
      time.sleep(0.5)
  record = {"stage": stage, "size": size, "wall_s": time.perf_counter() - started,
            "cpu_s": usage.ru_utime + usage.ru_stime,  # comparable on a shared box
            "peak_rss_bytes": usage.ru_maxrss * 1024, "exit": os.waitstatus_to_exitcode(status)}
  if record["exit"] == 0 and os.path.exists(out_path):
    with open(out_path) as f:
      record["result"] = json.load(f)
  else:
    with open(out_path + ".log") as f:
      tail = f.read()[-1500:]
    why = ("timed out after %ds" % FLAGS.timeout if timed_out else
           "killed by SIGKILL (out of memory: see the kernel log)" if record["exit"] == -9 else
           "exit %d" % record["exit"])
    record["error"] = why + (": " + tail.strip().splitlines()[-1] if tail.strip() else "")
  with open(result_path, "w") as f:
    json.dump(record, f, indent=1)
  return record


def _cell(value, fmt="%.2f") -> str:
  return "%22s" % (fmt % value if value is not None else "-")


def _report(records) -> None:
  sizes = sorted({r["size"] for r in records})
  by = {(r["size"], r["stage"]): r for r in records}
  world = {s: by.get((s, "world"), {}).get("result", {}) for s in sizes}
  print("\n%-14s" % "users" + "".join("%22s" % f"{s:,}" for s in sizes))
  print("%-14s" % "swipes" + "".join("%22s" % f"{world[s].get('swipes', 0):,}" for s in sizes))
  print("\nstage: wall s / peak RSS GB / RSS bytes per swipe / RSS kB per user")
  for stage in FLAGS.stages:
    cells = []
    for s in sizes:
      r = by.get((s, stage))
      if not r:
        cells.append("%22s" % "-")
      elif "error" in r:
        cells.append("%22s" % "FAILED")
      else:
        swipes = max(world[s].get("swipes", 0), 1)
        cells.append("%22s" % ("%.0f/%.2f/%.0f/%.1f" % (
            r["wall_s"], r["peak_rss_bytes"] / 1e9, r["peak_rss_bytes"] / swipes,
            r["peak_rss_bytes"] / s / 1e3)))
    print("%-14s" % stage + "".join(cells))
  print("\ntraining (batch %d)" % FLAGS.batch_size)
  results = {(s, v): by.get((s, v), {}).get("result") or {} for s in sizes
             for v in ("train_lazy", "train_epoch", "train_dense")}
  for variant in ("train_lazy", "train_epoch", "train_dense"):
    print("%-14s" % (variant[6:] + " steps/s") + "".join(
        _cell(results[s, variant].get("steps_per_s")) for s in sizes))
    print("%-14s" % (variant[6:] + " cpu s/st") + "".join(
        _cell(results[s, variant].get("cpu_s_per_step"), "%.3f") for s in sizes))
  print("%-14s" % "epoch steps" + "".join(
      _cell(results[s, "train_epoch"].get("steps") or results[s, "train_lazy"].get(
          "epoch_steps"), "%d") for s in sizes))
  print("%-14s" % "epoch s" + "".join(
      _cell(results[s, "train_epoch"].get("epoch_wall_s"), "%.0f") for s in sizes))
  print("%-14s" % "epoch s (ext)" + "".join(
      _cell(results[s, "train_lazy"].get("epoch_s_extrapolated"), "%.0f") for s in sizes))
  for variant in ("train_lazy", "train_epoch"):
    have = [s for s in sizes if results[s, variant].get("steps_per_s")]
    if len(have) > 1:
      small, large = results[have[0], variant], results[have[-1], variant]
      print(f"{variant}: steps/s at {have[-1]:,} users / at {have[0]:,} users = "
            f"{large['steps_per_s'] / small['steps_per_s']:.2f} wall-clock, "
            f"{small['cpu_s_per_step'] / large['cpu_s_per_step']:.2f} per CPU second "
            "(target >= 0.75)")
  for r in records:
    if "error" in r:
      print(f"{r['size']:,} {r['stage']}: {r['error']}")
  for s in sizes:
    for stage in ("export", "evaluate", "publish", "train_lazy", "train_epoch", "train_dense"):
      result = by.get((s, stage), {}).get("result")
      if result:
        print(f"{s:,} {stage}: {json.dumps(result)}")


def main(argv):
  del argv
  if FLAGS.stage:
    result = globals()[f"stage_{FLAGS.stage}"](FLAGS.size, _paths(FLAGS.size))
    out_path = os.path.join(_paths(FLAGS.size)["base"], f"{FLAGS.stage}.json.out")
    with open(out_path + ".tmp", "w") as f:
      json.dump(result, f, default=float)
    os.replace(out_path + ".tmp", out_path)
    return
  records = []
  for size in (int(s) for s in FLAGS.sizes):
    for stage in FLAGS.stages:
      path = os.path.join(_paths(size)["base"], f"{stage}.json")
      if FLAGS.report_only:
        if os.path.exists(path):
          with open(path) as f:
            records.append(json.load(f))
        continue
      record = _run_stage(size, stage)
      records.append(record)
      print(f"{size:,} {stage}: {record['wall_s']:.0f}s, peak RSS "
            f"{record['peak_rss_bytes'] / 1e9:.2f} GB{' ' + record['error'] if 'error' in record else ''}",
            flush=True)
  _report(records)


if __name__ == "__main__":
  app.run(main)
