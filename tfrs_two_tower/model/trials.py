"""The tuning search of a training run: successive halving over sampled configs.

`tune` trains the trials (`training.Training`, one directory each under
`<work>/trials/`) and returns the winner; `write_trials` records the search in
the run directory (trials.csv / trials.json, the losers' TensorBoard logs).
The search itself is `tuning.py`.
"""

import dataclasses
import os
import shutil
from typing import Any, Dict, List, Optional

import pandas as pd

from tfrs_two_tower import files
from tfrs_two_tower.model import epoch_eval
from tfrs_two_tower.model import run_dir as run_lib
from tfrs_two_tower.model import tuning
from tfrs_two_tower.model.train_options import TrainError
from tfrs_two_tower.model.train_options import TrainOptions
from tfrs_two_tower.model.training import Training

TRIALS = "trials"  # the search's trial directories (in the run: logs/trials/, trials.csv)


def tune(dataset, specs: Dict[str, list], options: TrainOptions, work: str, evaluator,
         strategy, resolved: Dict[str, Any], configs: List[Dict[str, Any]], log,
         inputs_cache: Optional[Dict[str, Any]] = None):
  """Successive halving over `configs` (see `model/tuning.py`); returns (winner, result).

  `inputs_cache`: `training.training_inputs`' cache, shared by every trial (and with
  the caller, whose evaluator may have built the train index already)."""
  inputs_cache = {} if inputs_cache is None else inputs_cache
  trials_dir = os.path.join(work, TRIALS)
  if os.path.exists(trials_dir):  # the search itself is not resumable: start it again
    log("train: an interrupted search in %s is started again" % trials_dir)
    shutil.rmtree(trials_dir)
  log("train: tuning %s on the validation split: %d trials, budget %g min (--no_tune or "
      "explicit flags fix values)" % (", ".join(tuning.TUNED), len(configs),
                                      options.tune_budget_minutes))

  def quiet(message: str) -> None:  # per-step lines of every trial would drown the search
    if not message.startswith("train: step"):
      log(message)

  def start(i: int, config: Dict[str, Any]) -> Training:
    return Training(dataset, specs, dataclasses.replace(options, **config),
                    os.path.join(trials_dir, f"trial_{i:02d}"), evaluator, strategy,
                    {**resolved, **config}, quiet, inputs_cache=inputs_cache)
  key = options.selection_key()
  try:
    result = tuning.successive_halving(configs, start, key, options.tune_budget_minutes * 60,
                                       log=log, margin_key=margin_key(key))
  except tuning.TuningError as e:
    raise TrainError(str(e)) from None
  log("train: tuning chose %s (trial %d of %d, %s %.4f) in %.0f s" % (
      ", ".join(f"{k}={v}" for k, v in configs[result.winner_index].items()),
      result.winner_index, len(configs), key, result.records[result.winner_index].score,
      result.seconds))
  return result.winner, result


def margin_key(key: str) -> str:
  """The epoch metric holding `key`'s standard error (only recall has one; 0 otherwise)."""
  return key + epoch_eval.STANDARD_ERROR_SUFFIX


def write_trials(out: str, trials_dir: str, search, key: str) -> Dict[str, Any]:
  """trials.csv / trials.json in the run, every trial's TensorBoard logs (HParams) under
  logs/trials/; returns the manifest's `tuning` section."""
  rows = [r.row(key, margin_key(key)) for r in search.records]
  pd.DataFrame(rows).to_csv(os.path.join(out, TRIALS + ".csv"), index=False)
  files.write_json(os.path.join(out, TRIALS + ".json"), rows)
  winner = f"trial_{search.winner_index:02d}"  # its logs are the run's own (logs/train)
  for name in sorted(os.listdir(trials_dir)) if os.path.isdir(trials_dir) else []:
    logs = os.path.join(trials_dir, name, run_lib.LOGS)
    if name != winner and os.path.isdir(logs):
      shutil.move(logs, os.path.join(out, run_lib.LOGS, TRIALS, name))
  return {"method": "successive halving", "trials": len(rows), "winner": search.winner_index,
          "chosen": dict(search.records[search.winner_index].params),
          "seconds": round(search.seconds, 1), "budget_reached": search.budget_reached,
          "selection_metric": key}
