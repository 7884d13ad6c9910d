"""run_pipeline.py: swipes to phone in one command.

Stages, each a directory under `output_dir` (or the database), each written
atomically by its own stage function:

  world     synthetic world (world/)                      only with --embedded_db
  database  an embedded PostgreSQL (pgdata/, pgserver) seeded with the world
  export    export_data.py from the database -> dataset/
  train     train_model.py -> run/
  evaluate  evaluate.py against the baselines -> report/
  convert   convert_to_coreml.py with parity checks -> coreml/
  publish   publish_embeddings.py into the database (pgvector, recommend())

A stage whose output is already complete and whose fingerprint is unchanged is
skipped, so an interrupted run resumes where it stopped and a second run does
nothing. A stage's fingerprint is its resolved options plus the sha256 of its
inputs' manifests (`fingerprints.json` in `output_dir`): changing `epochs`
reruns train and, through the new run's manifest, everything after it. `rerun`
names stages to redo regardless (their successors are redone too). With a
`db_url` (the script's database flags; None: --embedded_db) the world and
database stages are skipped: the real database is only read (export) and
written by publish.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import time
from typing import Any, Callable, Dict, Optional, Sequence

from tfrs_two_tower import config as config_lib
from tfrs_two_tower import files
from tfrs_two_tower.data import postgres_source
from tfrs_two_tower.data import reader
from tfrs_two_tower.data import readiness
from tfrs_two_tower.data import seeding
from tfrs_two_tower.data import synthetic
from tfrs_two_tower.model.train_options import TrainOptions
from tfrs_two_tower.stages import convert_stage
from tfrs_two_tower.stages import evaluate_stage
from tfrs_two_tower.stages import export_stage
from tfrs_two_tower.stages import publish_stage
from tfrs_two_tower.stages import train_stage

STAGES = ("world", "database", "export", "train", "evaluate", "convert", "publish")


class PipelineError(ValueError):
  """Flags that do not fit together; the message names the flag."""


@dataclasses.dataclass
class PipelineOptions:
  """The pipeline's own knobs; every stage's finer knobs live on its own script."""
  output_dir: str = "out"
  db_url: Optional[str] = None
  env_file: Optional[str] = ".env"
  config_path: Optional[str] = None
  stages: Sequence[str] = STAGES
  rerun: Sequence[str] = ()
  num_users: int = synthetic.WorldParams.num_users
  days: int = synthetic.WorldParams.days  # of the synthetic world
  feed_size: int = synthetic.WorldParams.feed_size
  mean_activity: float = synthetic.WorldParams.mean_activity
  exploration: float = synthetic.WorldParams.exploration  # > 0: the database gets its log too
  seed: int = 0
  eval_fraction: float = 0.15
  force: bool = False
  # None: TrainOptions' default (epochs is a maximum: early stopping on validation)
  epochs: Optional[int] = None
  batch_size: int = 1024
  sampling_probability: Optional[str] = None
  no_tune: bool = False
  tune_budget_minutes: Optional[float] = None
  fixed: Sequence[str] = ()  # tuned training options the user fixed by a flag
  bootstrap: int = 500
  coreml_precision: str = "float16"
  coreml_compress: str = "none"

  def check(self) -> None:
    for flag, names in (("stages", self.stages), ("rerun", self.rerun)):
      unknown = sorted(set(names) - set(STAGES))
      if unknown:
        raise PipelineError(f"--{flag}: unknown stage(s) {unknown} (stages: {', '.join(STAGES)})")

  def path(self, *parts: str) -> str:
    return os.path.abspath(os.path.join(self.output_dir, *parts))


def _complete(path: str) -> bool:
  return os.path.exists(os.path.join(path, "manifest.json"))


def fingerprint(options: Dict[str, Any], inputs: Sequence[str] = ()) -> Dict[str, Any]:
  """What a stage's output depends on: its resolved options and its inputs' manifests.

  Inputs are stage directories; each is represented by the sha256 of its
  `manifest.json` (which lists the sha256 of every file), or None when absent.
  """
  def manifest_hash(path: str) -> Optional[str]:
    manifest = os.path.join(path, "manifest.json")
    return files.sha256_file(manifest) if os.path.exists(manifest) else None
  return json.loads(json.dumps({"options": options,
                                "inputs": {os.path.basename(p): manifest_hash(p)
                                           for p in inputs}}, sort_keys=True, default=str))


def _differences(old: Dict[str, Any], new: Dict[str, Any]) -> str:
  """"epochs 6 -> 10, inputs.dataset changed" for a log line."""
  out = []
  for part in ("options", "inputs"):
    a, b = old.get(part, {}), new.get(part, {})
    for key in sorted(set(a) | set(b)):
      if a.get(key) != b.get(key):
        out.append(f"{key} {a.get(key)} -> {b.get(key)}" if part == "options"
                   else f"input {key} changed")
  return ", ".join(out)


def run(options: PipelineOptions, log: Callable[[str], None] = print) -> Dict[str, Any]:
  """Runs the selected stages in order and writes summary.json / summary.md."""

  options.check()
  synthetic_world = options.db_url is None
  wanted = [s for s in STAGES if s in options.stages
            and (synthetic_world or s not in ("world", "database"))]
  os.makedirs(options.path(), exist_ok=True)
  world_dir, dataset_dir = options.path("world"), options.path("dataset")
  run_dir, report_dir, coreml_dir = options.path("run"), options.path("report"), options.path(
      "coreml")
  timings: Dict[str, float] = {}
  redo = False  # once a stage runs, everything after it must run again
  fingerprints_path = options.path("fingerprints.json")
  recorded = _read(fingerprints_path) or {}
  pending: Dict[str, Dict[str, Any]] = {}

  def should_run(stage: str, output: str, stage_options: Dict[str, Any],
                 inputs: Sequence[str] = (), complete: bool = None) -> bool:
    nonlocal redo
    if stage not in wanted:
      return False
    pending[stage] = fingerprint(stage_options, inputs)
    complete = _complete(output) if complete is None else complete
    if redo or stage in options.rerun or not complete:
      redo = True
      return True
    if recorded.get(stage) != pending[stage]:
      log(f"[{stage}] " + (f"{_differences(recorded[stage], pending[stage])} since {output} "
                           "was made; running again" if stage in recorded else
                           f"no fingerprint recorded for {output}; running again"))
      redo = True
      return True
    log(f"[{stage}] up to date ({output}); skipped (pass --rerun={stage} to redo it)")
    return False

  def record(stage: str) -> None:
    """After a stage ran (or was found up to date): its fingerprint, for the next run."""
    if stage in pending:
      recorded[stage] = pending[stage]
      files.write_json(fingerprints_path, recorded)

  def timed(stage: str):
    log(f"[{stage}] running")
    return _Timer(stage, timings, log)

  world_params = dataclasses.asdict(synthetic.WorldParams(
      num_users=options.num_users, days=options.days, feed_size=options.feed_size,
      mean_activity=options.mean_activity, exploration=options.exploration, seed=options.seed))
  world_meta = os.path.join(world_dir, "world.json")
  same_world = (os.path.exists(world_meta)
                and files.read_json(world_meta)["params"] == world_params)
  if should_run("world", world_dir, world_params, complete=same_world):
    with timed("world"):
      world = synthetic.generate_world(synthetic.WorldParams(**world_params))
      world.save(world_dir, overwrite=True)
      log(f"[world] {world.summary()}")
      shutil.rmtree(options.path("pgdata"), ignore_errors=True)  # a new world, a new database
  record("world")

  with contextlib.ExitStack() as stack:
    db_url = options.db_url
    needs_db = any(s in wanted for s in ("database", "export", "publish"))
    if synthetic_world and needs_db:
      db_url = stack.enter_context(postgres_source.embedded_postgres(options.path("pgdata"), log))
    seeded_marker = options.path("pgdata", "seeded_world.json")
    if synthetic_world and "database" in wanted and (
        redo or "database" in options.rerun or not os.path.exists(seeded_marker)):
      redo = True
      with timed("database"):
        import psycopg2
        world = synthetic.World.load(world_dir)
        with contextlib.closing(psycopg2.connect(db_url)) as conn:
          seeding.seed(conn, world, log=log)
        files.write_json(seeded_marker, {"world": files.read_json(
            os.path.join(world_dir, "world.json"))["params"]})
    elif "database" in wanted:
      log(f"[database] already seeded ({seeded_marker}); skipped")

    config_sha256 = files.sha256_file(options.config_path or config_lib.DEFAULT_CONFIG_PATH)
    source = (files.read_json(seeded_marker) if synthetic_world and os.path.exists(seeded_marker)
              else postgres_source.describe_url(postgres_source.connection_params(db_url))
              if db_url else None)
    if should_run("export", dataset_dir, {"config_sha256": config_sha256, "source": source,
                                          "eval_fraction": options.eval_fraction,
                                          "force": options.force}):
      with timed("export"):
        export_stage.run(dataset_dir, export_stage.ExportOptions(config_path=options.config_path,
            db_url=db_url, env_file=options.env_file, eval_fraction=options.eval_fraction,
            force=options.force, overwrite=True), log=log)
    record("export")

    given = {k: getattr(options, k) for k in ("epochs", "sampling_probability",
                                              "tune_budget_minutes")}
    train_options = TrainOptions(
        batch_size=options.batch_size, seed=options.seed, no_tune=options.no_tune,
        **{k: v for k, v in given.items() if v is not None})
    if should_run("train", run_dir, {**dataclasses.asdict(train_options),
                                     "fixed": sorted(options.fixed)}, [dataset_dir]):
      with timed("train"):
        train_stage.run(dataset_dir, run_dir, train_options, overwrite=True, log=log,
                        fixed=options.fixed)
    record("train")

    if should_run("evaluate", report_dir, {"bootstrap": options.bootstrap, "seed": options.seed,
                                           "world": synthetic_world},
                  [dataset_dir, run_dir] + ([world_dir] if synthetic_world else [])):
      with timed("evaluate"):
        evaluate_stage.run(dataset_dir, [run_dir], report_dir, evaluate_stage.EvaluateOptions(
            world_dir=world_dir if synthetic_world else None, bootstrap=options.bootstrap,
            seed=options.seed, overwrite=True), log=log)
    record("evaluate")

    if should_run("convert", coreml_dir, {"precision": options.coreml_precision,
                                          "compress": options.coreml_compress},
                  [dataset_dir, run_dir]):
      with timed("convert"):
        convert_stage.run(run_dir, dataset_dir, coreml_dir, precision=options.coreml_precision,
                          compress=options.coreml_compress, overwrite=True, log=log)
    record("convert")

    published = None
    if "publish" in wanted:
      with timed("publish"):
        published = publish_stage.run(run_dir, dataset_dir, db_url=db_url,
                                      env_file=options.env_file, log=log)

  summary = summarize(options, published, timings)
  files.write_json(options.path("summary.json"), summary)
  text = format_summary(summary)
  with open(options.path("summary.md"), "w", encoding="utf-8") as f:
    f.write(text + "\n")
  log("\n" + text)
  return summary


class _Timer:
  def __init__(self, stage: str, timings: Dict[str, float], log):
    self.stage, self.timings, self.log = stage, timings, log

  def __enter__(self):
    self.started = time.time()

  def __exit__(self, exc_type, exc, tb):
    elapsed = time.time() - self.started
    self.timings[self.stage] = round(elapsed, 1)
    if exc_type is None:
      self.log(f"[{self.stage}] done in {elapsed:.0f}s")
    return False


def _read(path: str) -> Optional[Dict[str, Any]]:
  return files.read_json(path) if os.path.exists(path) else None


def summarize(options: PipelineOptions, published: Optional[Dict[str, Any]],
              timings: Dict[str, float]) -> Dict[str, Any]:
  """What a person needs to act on, gathered from the stages' own outputs."""
  stats = _read(options.path("dataset", "stats.json"))
  report = _read(options.path("report", "report.json"))
  parity = _read(options.path("coreml", "parity.json"))
  model = os.path.basename(options.path("run"))
  summary: Dict[str, Any] = {"output_dir": options.path(), "seconds": timings,
                             "artifacts": {}, "published": published}
  for name in ("world", "dataset", "run", "report", "coreml"):
    if os.path.exists(options.path(name)):
      summary["artifacts"][name] = options.path(name)
  if stats:
    summary["readiness"] = stats["readiness"]
    summary["oracle_auc"] = stats.get("oracle", {}).get("eval_auc")
    if summary["oracle_auc"] is None and options.db_url is None:
      summary["oracle_auc"] = _oracle_auc(options)
  if report:
    summary["verdict"] = report["verdict"].get(model)
    summary["headline"] = _headline(report, model)
  if parity:
    summary["coreml"] = parity
  summary["tensorboard"] = f"tensorboard --logdir {options.path('run', 'logs')}"
  return summary


def _oracle_auc(options: PipelineOptions) -> Optional[float]:
  """The synthetic world's ceiling on the exported eval swipes (the export cannot know it)."""
  if not os.path.exists(options.path("world", "world.json")):
    return None
  world = synthetic.World.load(options.path("world"))
  swipes = reader.read_interactions(reader.open_dataset(options.path("dataset")), "eval",
                                    keys=["query_id", "candidate_id", "label"])
  return round(synthetic.oracle_auc(world, swipes["query_id"], swipes["candidate_id"],
                                    swipes["label"]), 4)


def _headline(report: Dict[str, Any], model: str) -> Dict[str, Any]:
  """AUC and the lifts over feature matching (with CIs) for the pipeline's model."""
  out = {}
  segments = report["recommenders"][model]["segments"]
  out["auc"] = segments["all"]["auc"]
  out["lifts_over_feature_matching"] = {
      name.replace(model, "model", 1): lifts.get("all", {})
      for name, lifts in report["lifts"].items() if name.split(":")[0] == model}
  return out


def _fmt_ci(entry: Any, percent: bool = False) -> str:
  if not isinstance(entry, dict) or entry.get("value") is None:
    return "n/a"
  scale, unit = (100, "%") if percent else (1, "")
  lo, hi = entry.get("ci", [None, None])
  if lo is None:
    return f"{entry['value'] * scale:+.1f}{unit}" if percent else f"{entry['value']:.3f}"
  if percent:
    return f"{entry['value'] * scale:+.1f}{unit} [{lo * scale:+.1f}, {hi * scale:+.1f}]"
  return f"{entry['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def format_summary(summary: Dict[str, Any]) -> str:
  lines = ["# Pipeline summary", ""]
  if "readiness" in summary:
    lines.append(readiness.format_readiness(summary["readiness"]))
  if summary.get("headline"):
    head = summary["headline"]
    oracle = summary.get("oracle_auc")
    lines.append(f"AUC (like vs pass, eval swipes): {_fmt_ci(head['auc'])} — gate > 0.7"
                 + (f"; the world's oracle ceiling is {oracle:.3f}" if oracle else ""))
    for variant, lifts in head["lifts_over_feature_matching"].items():
      for metric in ("recall@10", "recall@50", "oracle_like@10", "oracle_match@10"):
        if metric in lifts:
          lines.append(f"lift over feature matching, {variant} {metric}: "
                       f"{_fmt_ci(lifts[metric], True)}")
    if summary.get("verdict"):
      lines.append(f"verdict: {summary['verdict']['line']}")
  if summary.get("coreml"):
    lines.append("Core ML: " + _coreml_line(summary["coreml"]))
  if summary.get("published"):
    lines.append(f"published to PostgreSQL as version {summary['published']['version']} "
                 f"(run {summary['published']['run_id']}): "
                 "SELECT * FROM recommend('<user id>', 20);")
  lines.append("artifacts: " + ", ".join(f"{k}={v}" for k, v in summary["artifacts"].items()))
  lines.append(f"TensorBoard: {summary['tensorboard']}")
  lines.append("stage seconds: " + json.dumps(summary["seconds"]))
  return "\n".join(lines)


def _coreml_line(parity: Dict[str, Any]) -> str:
  gate = parity.get("gate", {})
  sizes = ", ".join(f"{name} {size / 1e6:.2f} MB"
                    for name, size in parity.get("sizes_bytes", {}).items())
  return (f"{parity.get('precision')}/{parity.get('compression')}, parity "
          f"{'PASSED' if gate.get('passed') else 'FAILED'} ({gate.get('metric')} "
          f"{gate.get('value', float('nan')):.6f} vs {gate.get('threshold')}; top-10 overlap "
          f"{parity.get('top_k', {}).get('mean_overlap', float('nan')):.3f}; MIL emulation, "
          f"not Apple's runtime); {sizes}")
