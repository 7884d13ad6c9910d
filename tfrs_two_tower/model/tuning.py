"""Built-in model selection: seeded successive halving on the validation split.

Trial 0 is the defaults; trials 1..n-1 draw the tuned values from `SPACE` with
`numpy.random.default_rng(seed)` (values fixed by the user are kept). Successive
halving (Jamieson & Talwalkar 2016) spends epochs as the resource:

  rung r = 0, 1, ...: train every surviving trial up to RUNG_EPOCHS[r] epochs,
  rank the trials by their best validation_recall@K so far, keep the best
  ceil(n / ETA); stop when one is left or the rungs are exhausted.

The defaults keep the benefit of the doubt (the one-standard-error rule of
Hastie, Tibshirani & Friedman, ESL 7.10): trial 0 ranks with its score plus the
score's standard error over validation users (s / sqrt(n), `margin_key`), so
another trial displaces it only when it is better by more than the noise of
the validation sample. Without it the search picks among trials that differ
by a fraction of that noise (measured: docs/training.md, "Oracle headroom" 8).

The winner then keeps training (early stopping on validation decides how many
epochs); its best epoch is the model. There is no refit on train + validation
(docs/training.md says why). The wall-clock budget covers the whole search and
the winner's continuation: the search may use SEARCH_SHARE of it; when its next
epoch would not fit that share, the search stops with a log line and the best
trial so far wins; the winner trains on while its next epoch fits the budget. With the
same seed, data and a budget that is not reached, the trials and their results are identical.

A trial is any object with `run_epoch() -> metrics dict`, `epoch` (epochs
done), `done` and `best` (metrics of its best epoch): `training.Training`.
"""

import dataclasses
import math
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

# The tuned options and how trials draw them (log-uniform for scales).
LOGQ_MODES = ("static", "streaming", "none")
TEMPERATURE_RANGE = (0.02, 0.3)
LEARNING_RATE_RANGE = (1e-3, 1e-2)
EMBEDDING_DIMS = (16, 32, 64)
ESTIMATOR_INITS = ("static", "zero")  # streaming only: warm start, or Yi et al.'s cold start
# The tables' L2 penalty helps where validation recall says so (docs/training.md, "Oracle
# headroom"); 0 stays among the choices, and large vocabularies keep it off (dense_penalty_fits).
EMBEDDING_L2S = (0.0, 1e-5, 1e-4, 1e-3)
# Past this many table rows (both towers) the penalty's dense step costs more than the rest
# of a training step (~0.6 us a row of 32 on 2 cores; the row-wise step is ~0.04 s).
DENSE_PENALTY_MAX_ROWS = 100_000
TUNED = ("sampling_probability", "estimator_init", "temperature", "learning_rate",
         "embedding_dim", "embedding_l2")
RUNG_EPOCHS = (1, 2, 4)
ETA = 2
# The search may use this share of the budget; the rest is kept for the winner's training,
# so a slow machine gets a less searched but fully trained model, not an untrained winner.
SEARCH_SHARE = 0.5
DEFAULT_TRIALS = 6


class TuningError(ValueError):
  """A search that cannot run (the budget cannot hold one trial epoch)."""


def sample_configs(base: Mapping[str, Any], fixed: Iterable[str], num_trials: int,
                   seed: int) -> List[Dict[str, Any]]:
  """`num_trials` distinct configs of the TUNED options; the first is `base`'s values.

  Args:
    base: the resolved options (defaults or flags), a mapping with every TUNED key.
    fixed: TUNED names the user set explicitly: every trial keeps base's value.
  """
  fixed = set(fixed)
  rng = np.random.default_rng(seed)
  configs = [{k: base[k] for k in TUNED}]
  if fixed >= set(TUNED):
    return configs
  attempts = 0
  while len(configs) < num_trials and attempts < 100 * num_trials:
    attempts += 1
    config = {
        "sampling_probability": str(rng.choice(LOGQ_MODES)),
        "estimator_init": str(rng.choice(ESTIMATOR_INITS)),
        "temperature": _log_uniform(rng, *TEMPERATURE_RANGE, digits=3),
        "learning_rate": _log_uniform(rng, *LEARNING_RATE_RANGE, digits=5),
        "embedding_dim": int(rng.choice(EMBEDDING_DIMS)),
        "embedding_l2": float(rng.choice(EMBEDDING_L2S)),
    }
    config.update({k: base[k] for k in fixed})
    if config["sampling_probability"] != "streaming":  # the init means nothing without it
      config["estimator_init"] = base["estimator_init"]
    if config not in configs:
      configs.append(config)
  return configs


def dense_penalty_fits(table_rows: int) -> bool:
  """Whether trials may draw `embedding_l2` > 0 (its step is O(table_rows x dim))."""
  return table_rows <= DENSE_PENALTY_MAX_ROWS


def _log_uniform(rng: np.random.Generator, low: float, high: float, digits: int) -> float:
  return float(np.round(math.exp(rng.uniform(math.log(low), math.log(high))), digits))


@dataclasses.dataclass
class TrialRecord:
  """One row of trials.csv."""
  trial: int
  params: Dict[str, Any]
  epochs: int = 0
  best_epoch: Optional[int] = None
  score: float = float("nan")
  standard_error: float = 0.0     # of the score, over validation users (0: not known)
  validation_auc: float = float("nan")
  seconds: float = 0.0
  status: str = "pending"   # eliminated at epoch N | winner | not run (budget)

  def row(self, key: str, margin_key: str) -> Dict[str, Any]:
    return {"trial": self.trial, **self.params, "epochs": self.epochs,
            "best_epoch": self.best_epoch, key: self.score, margin_key: self.standard_error,
            "validation_auc": self.validation_auc, "seconds": round(self.seconds, 1),
            "status": self.status}


@dataclasses.dataclass
class SearchResult:
  winner: Any                      # the winning trial object, trained to its end
  winner_index: int
  records: List[TrialRecord]
  seconds: float
  budget_reached: bool


def successive_halving(configs: Sequence[Mapping[str, Any]],
                       start: Callable[[int, Mapping[str, Any]], Any], key: str,
                       budget_seconds: float, log: Callable[[str], None] = print,
                       rung_epochs: Sequence[int] = RUNG_EPOCHS, eta: int = ETA,
                       search_share: float = SEARCH_SHARE,
                       clock: Callable[[], float] = time.monotonic,
                       margin_key: Optional[str] = None) -> SearchResult:
  """Runs the search (see the module docstring) and returns the trained winner.

  Args:
    configs: the trials' values (`sample_configs`).
    start: (trial number, config) -> a new trial object.
    key: the metric that ranks trials (higher is better), e.g. validation_recall@50.
    budget_seconds: wall-clock budget of search + winner continuation.
    margin_key: the metric holding `key`'s standard error: trial 0 (the defaults) ranks
      with score + standard error. None or absent: no margin.
  Raises:
    TuningError when the first epoch of the first trial does not fit the budget.
  """
  began = clock()
  records = [TrialRecord(i, dict(c)) for i, c in enumerate(configs)]
  trials: Dict[int, Any] = {}
  epoch_seconds: List[float] = []
  start_seconds: List[float] = []
  budget_reached = False

  def fits(new_trial: bool = False, share: float = search_share) -> bool:
    """Whether one more epoch (of a trial still to start, when `new_trial`) fits."""
    estimate = float(np.mean(epoch_seconds)) if epoch_seconds else 0.0
    if new_trial and start_seconds:
      estimate += float(np.mean(start_seconds))
    return clock() - began + estimate <= budget_seconds * share

  def advance(i: int) -> None:
    t0 = clock()
    result = trials[i].run_epoch()
    epoch_seconds.append(clock() - t0)
    record = records[i]
    record.seconds += clock() - t0
    record.epochs = trials[i].epoch
    best = trials[i].best
    record.best_epoch, record.score = best["epoch"], float(best[key])
    record.standard_error = float(best.get(margin_key, 0.0)) if margin_key else 0.0
    record.validation_auc = float(best.get("validation_auc", float("nan")))
    log("tune: trial %d epoch %d: %s %.4f (best %.4f at epoch %d) %s" % (
        i, record.epochs, key, result[key], record.score, record.best_epoch,
        _describe(record.params)))

  alive = list(range(len(configs)))
  for rung, epochs in enumerate(rung_epochs):
    for i in alive:
      if budget_reached:
        break
      if i not in trials:
        if start_seconds and not fits(new_trial=True):
          budget_reached = True
          log("tune: the search's share of the budget (%.1f of %.1f min) is used; the best "
              "trial so far wins" % (budget_seconds * search_share / 60, budget_seconds / 60))
          break
        t0 = clock()
        trials[i] = start(i, configs[i])
        start_seconds.append(clock() - t0)
        records[i].seconds += clock() - t0
      while trials[i].epoch < epochs and not trials[i].done and not budget_reached:
        if epoch_seconds and not fits():
          budget_reached = True
          log("tune: the search's share of the budget (%.1f of %.1f min) is used; the best "
              "trial so far wins" % (budget_seconds * search_share / 60, budget_seconds / 60))
          break
        advance(i)
        if len(epoch_seconds) == 1 and clock() - began > budget_seconds:
          raise TuningError(
              "--tune_budget_minutes=%g is too small for one trial: its first epoch took "
              "%.0f s. Raise the budget, lower --steps_per_epoch, or pass --no_tune." % (
                  budget_seconds / 60, clock() - began))
    scored = [i for i in alive if records[i].best_epoch is not None]
    if budget_reached or len(scored) <= 1:
      alive = scored or alive[:1]
      break
    keep = max(1, math.ceil(len(scored) / eta))
    ranked = sorted(scored, key=lambda i: (-ranking_score(records[i]), i))
    for i in ranked[keep:]:
      records[i].status = f"eliminated at epoch {records[i].epochs}"
      del trials[i]  # frees its model and input pipeline
    alive = ranked[:keep]
    if len(alive) == 1:
      break
  winner = min(alive, key=lambda i: (-ranking_score(records[i]), i))
  for i in alive:
    if i != winner:
      records[i].status = f"eliminated at epoch {records[i].epochs}"
  for record in records:
    if record.status == "pending" and record.best_epoch is None:
      record.status = "not run (budget)"
  while not trials[winner].done:
    if not fits(share=1.0):
      budget_reached = True
      log("tune: the budget (%.1f min) is reached; the winner stops at epoch %d" % (
          budget_seconds / 60, trials[winner].epoch))
      break
    advance(winner)
  records[winner].status = "winner"
  return SearchResult(winner=trials[winner], winner_index=winner, records=records,
                      seconds=clock() - began, budget_reached=budget_reached)


def ranking_score(record: TrialRecord) -> float:
  """The score a trial ranks by: the defaults (trial 0) get their standard error on top."""
  return record.score + (record.standard_error if record.trial == 0 else 0.0)


def _describe(params: Mapping[str, Any]) -> str:
  return " ".join(f"{k}={v}" for k, v in params.items())
