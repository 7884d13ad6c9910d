#!/usr/bin/env python3
"""Which validation metric should pick the epoch? Trajectories on three data sets.

Training selects its epoch (and the tuning winner) on a validation metric
(`--selection_metric`). A metric computed on logs is biased toward the feed that
produced them: on the dating worlds the logging feed is feature matching, and
logged recall rewards a model for ranking what that feed chose to show. This
benchmark trains the default model for `--epochs` epochs without early stopping
or tuning and records, after every epoch, each candidate selection metric on the
validation split and the targets on the eval split:

  validation: recall@50 (logged), auc, gauc (impression-conditioned)
  eval:       warm and new users' recall@50 (the issue's MovieLens target), and
              on the synthetic worlds oracle_like@10 (the hidden truth: the mean
              true P(like) of each user's top 10 from the whole catalogue), its
              headroom share (all users: (model - feature matching) / (oracle
              ranking - feature matching), bench_defaults.py's figure) and AUC.

For each selection metric it prints the epoch it picks (argmax, and with the
default early stopping patience) and the eval targets there, beside the best
epoch in hindsight (the oracle's choice, which no real run can make). The
default of `--selection_metric` is the metric whose picks lose least across all
data sets (docs/training.md has the table).

Data sets: `bench_defaults.py`'s (MovieLens 100k exported through the CSV path,
a popularity-feed world, the default world).

  python benchmarks/bench_selection.py --work_dir=/tmp/bench_defaults [--epochs=10]
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_defaults  # noqa: E402  (the data sets, shared)

from tfrs_two_tower.data import reader  # noqa: E402
from tfrs_two_tower.data import synthetic  # noqa: E402
from tfrs_two_tower.evaluation import baselines as baselines_lib  # noqa: E402
from tfrs_two_tower.evaluation import evaluator  # noqa: E402
from tfrs_two_tower.evaluation import metrics  # noqa: E402
from tfrs_two_tower.evaluation import recommenders  # noqa: E402
from tfrs_two_tower.evaluation import retrieval  # noqa: E402
from tfrs_two_tower.model import epoch_eval  # noqa: E402
from tfrs_two_tower.model import train_options  # noqa: E402
from tfrs_two_tower.model import training as training_lib  # noqa: E402
from tfrs_two_tower.model import training_run  # noqa: E402

SELECTION = {"recall": "validation_recall@50", "gauc": "validation_gauc",
             "auc": "validation_auc"}


def headroom_references(dataset, data, world, oracle) -> dict:
  """All users' oracle_like@10 of feature matching and of the world's own P(like) ranking.

  The headroom share of a model is (model - feature matching) / (oracle - feature
  matching), bench_defaults.py's definition.
  """
  out = {}
  for label, scorer in (
      ("feature_matching", baselines_lib.FeatureMatching(
          dataset.config, data.query_entities, data.candidate_entities, data.eligible)),
      ("oracle", bench_defaults.OracleScorer(world, data.query_ids, data.candidate_ids))):
    result = evaluator.evaluate(scorer, data, (10,), None, oracle)
    out[label] = float(np.nanmean(result.per_user["oracle_like@10"]))
  return out


def _eval_targets(training, validation, data, oracle, references) -> dict:
  """Eval-split targets of the current weights (evaluate.py's definitions)."""
  queries = validation.embed(training.query_tower, data.query_entities, "query")
  candidates = validation.embed(training.candidate_tower, data.candidate_entities,
                                "candidate")
  scorer = retrieval.EmbeddingScorer(data.query_ids, data.candidate_ids, queries, candidates,
                                     name="model")
  result = evaluator.evaluate(scorer, data, (10, 50), None, oracle)
  out = {}
  for segment in ("warm", "new"):
    mask = data.segments[segment]
    out[f"{segment}_recall@50"] = float(np.nanmean(result.per_user["recall@50"][mask]))
    if oracle is not None:
      out[f"{segment}_oracle_like@10"] = float(np.nanmean(
          result.per_user["oracle_like@10"][mask]))
  if oracle is not None:
    model = float(np.nanmean(result.per_user["oracle_like@10"]))
    fm, best = references["feature_matching"], references["oracle"]
    out["headroom_share"] = (model - fm) / (best - fm)
  out["eval_auc"] = metrics.roc_auc(data.eval_swipes.labels, result.swipe_scores)
  return out


def trajectory(name: str, work: str, epochs: int, seed: int, log, overrides=None) -> list:
  paths = bench_defaults.prepare_dataset(name, work, log)
  dataset = reader.open_dataset(paths["dataset"])
  data = evaluator.prepare(dataset)
  data.segments["warm"] = ~data.segments["new"]
  oracle, references = None, None
  if paths["world"]:
    world = synthetic.World.load(paths["world"])
    oracle = recommenders.realised_oracle(world.like_probability, data)
    references = headroom_references(dataset, data, world, oracle)
    log(f"[{name}] all users' oracle_like@10: {references}")
  options = dataclasses.replace(train_options.TrainOptions(), no_tune=True, epochs=epochs,
                                early_stopping_patience=0, seed=seed, **(overrides or {}))
  options = training_run.implicit_feedback_options(dataset, options, log)
  tag = "".join(c if c.isalnum() else "_" for c in json.dumps(overrides or {}, sort_keys=True))
  work_dir = os.path.join(work, name, f"selection_seed{seed}{tag}")
  shutil.rmtree(work_dir, ignore_errors=True)
  validation = epoch_eval.ValidationEvaluator(dataset, ks=options.ks())
  training = training_lib.Training(dataset, training_lib.feature_specs(dataset), options,
                                   work_dir, validation, training_lib.make_strategy("default"),
                                   dataclasses.asdict(options), lambda *a: None)
  rows = []
  while not training.done:
    started = time.time()
    result = training.run_epoch()
    row = {"epoch": training.epoch, **{k: result[v] for k, v in SELECTION.items()},
           **_eval_targets(training, validation, data, oracle, references),
           "seconds": round(time.time() - started, 1)}
    log(f"[{name} seed {seed}] " + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                for k, v in row.items()}))
    rows.append(row)
  shutil.rmtree(work_dir, ignore_errors=True)
  return rows


def picked_epoch(rows: list, metric: str, patience: int) -> int:
  """0-based index of the epoch `metric` picks with this early-stopping patience (0: none)."""
  best_i = 0
  for i in range(len(rows)):  # the trainer's own rules: strict improvement, early_stop
    if rows[i][metric] > rows[best_i][metric]:
      best_i = i
    if training_lib.early_stop(rows[:i + 1], patience, metric):
      break
  return best_i


def print_table(name: str, runs: list, patience: int) -> None:
  targets = [k for k in runs[0][0] if k.endswith("oracle_like@10") or k.endswith("recall@50")
             or k in ("eval_auc", "headroom_share")]
  print(f"\n== {name}: eval targets at the epoch each selection metric picks "
        f"(patience {patience}; mean over {len(runs)} seed(s))")
  print(f"{'selection':<12}{'epoch':>7}" + "".join(f"{t:>22}" for t in targets))
  choices = {m: [picked_epoch(rows, m, patience) for rows in runs] for m in SELECTION}
  # The best epoch in hindsight, by the headline target of the data set.
  headline = "warm_oracle_like@10" if "warm_oracle_like@10" in targets else "warm_recall@50"
  choices[f"hindsight({headline.split('_', 1)[1]})"] = [
      int(np.argmax([r[headline] for r in rows])) for rows in runs]
  for label, picks in choices.items():
    values = {t: np.mean([rows[i][t] for rows, i in zip(runs, picks)]) for t in targets}
    print(f"{label:<12}{np.mean(picks) + 1:>7.1f}" + "".join(f"{values[t]:>22.4f}"
                                                           for t in targets))


# TrainOptions fields `trajectory` sets itself, and where to change them instead.
BENCHMARK_OWNED = {"seed": "use --seeds", "epochs": "use --epochs",
                   "no_tune": "always on: every epoch is recorded",
                   "early_stopping_patience": "0 in training; --patience sets the simulated one"}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--work_dir", default="/tmp/bench_defaults")
  parser.add_argument("--datasets", default="movielens,popularity_world,default_world")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--options", default="", help="TrainOptions overrides of a variant, "
                      "e.g. pass_loss_weight=3,temperature=0.1,layer_sizes=[256,128] (values parsed as "
                      "JSON)")
  parser.add_argument("--patience", type=int,
                      default=train_options.TrainOptions().early_stopping_patience)
  args = parser.parse_args()
  # A comma starts the next override only before `name=`: list values keep theirs.
  overrides = {}
  fields = {f.name for f in dataclasses.fields(train_options.TrainOptions)}
  for option in (o for o in re.split(r",(?=\w+=)", args.options) if o):
    name, _, value = option.partition("=")
    if name in BENCHMARK_OWNED:
      parser.error(f"--options: {name} is set by this benchmark ({BENCHMARK_OWNED[name]})")
    if name not in fields:
      parser.error(f"--options: {name!r} is not a TrainOptions field")
    try:
      overrides[name] = json.loads(value)
    except json.JSONDecodeError:
      parser.error(f"--options: the value of {name} is not JSON: {value!r}")
  variant = "/" + args.options if args.options else ""
  out = os.path.join(args.work_dir, f"selection{variant.replace('/', '_')}.json")
  results = json.load(open(out)) if os.path.exists(out) else {}
  for name in args.datasets.split(","):
    for seed in (int(s) for s in args.seeds.split(",")):
      key = f"{name}/{seed}/{args.epochs}{variant}"
      if key not in results:
        results[key] = trajectory(name, args.work_dir, args.epochs, seed,
                                  lambda m: print(m, flush=True), overrides)
        with open(out + ".tmp", "w") as f:
          json.dump(results, f, indent=1)
        os.replace(out + ".tmp", out)
  for name in args.datasets.split(","):
    runs = [v for k, v in results.items() if k.startswith(name + "/")
            and k.endswith(f"/{args.epochs}{variant}")]
    print_table(name, runs, args.patience)


if __name__ == "__main__":
  main()
