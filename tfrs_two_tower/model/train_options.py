"""Every training knob in one dataclass, checked before anything is built.

`TrainOptions` is what `train_model.py`'s flags, the pipeline and the Python API
fill in; `check()` refuses bad values with one message naming each flag.
"""

import dataclasses
import numbers
from typing import List

from tfrs_two_tower.model import epoch_eval
from tfrs_two_tower.model import export
from tfrs_two_tower.model import table_memory
from tfrs_two_tower.model import towers
from tfrs_two_tower.model import tuning
from tfrs_two_tower.model import two_tower
from tfrs_two_tower.options import option

OPTIMIZERS = ("adam", "adagrad", "sgd")

STRATEGIES = ("default", "mirrored", "multi_worker")

# How the streaming estimator starts: from the train counts' gaps, or from zero.
ESTIMATOR_INITS = ("static", "zero")


class TrainError(ValueError):
  """Bad training input or flags; the message names the flag or file."""


class NonFiniteLossError(RuntimeError):
  """The loss became NaN/inf; the last good checkpoint is kept."""
  exit_code = 4


@dataclasses.dataclass
class TrainOptions:
  """Every training knob (the flags of `train_model.py` use these defaults)."""
  epochs: int = option(10, "Training epochs.")
  steps_per_epoch: int = option(0, "Steps per epoch; 0: one pass over the train split (rows // "
                                "batch_size).")
  batch_size: int = option(1024, "Global batch size (in-batch negatives: larger batches give more "
                           "negatives per like).")
  learning_rate: float = option(0.003, "Learning rate.")
  optimizer: str = option("adam", "Optimizer.", choices=OPTIMIZERS)
  sparse_embedding_updates: bool = option(True, "Embedding rows (and their Adam/momentum slots) "
                                          "move only when a batch looks them up, so a step costs "
                                          "the same at 5k and 1M users; "
                                          "--nosparse_embedding_updates: the stock dense update of "
                                          "the whole table every step.")
  table_memory_budget: int = option(0, "Bytes the embedding tables (weights + optimizer slots) may "
                                    "take in training; a larger vocabulary is refused before "
                                    "training starts. 0: %d%% of the memory available."
                                    % (100 * table_memory.BUDGET_FRACTION), lower_bound=0)
  embedding_dim: int = option(32, "Size of the L2-normalised tower output.")
  layer_sizes: List[int] = option(help="Comma-separated hidden ReLU layer sizes of each tower, "
                                       "before the projection to --embedding_dim (at least one).",
                                  factory=lambda: [128])
  default_embedding_dim: int = option(towers.DEFAULT_EMBEDDING_DIM, "Embedding size of features "
                                      "whose config gives no embedding_dim.")
  candidate_bias: bool = option(False, "Score = cosine(q, c) + b_c with a learned per-candidate "
                                "bias b_c (a linear map of the candidate tower's last hidden "
                                "layer): the outputs get one more column, [q, 1] and [c, b_c], "
                                "so every export stays an inner product (docs/training.md).")
  l2: float = option(0.0, "L2 penalty on the hidden layers' kernels.")
  embedding_l2: float = option(0.0, "L2 penalty on the embedding tables (all rows, every step: "
                               "the table gradients become dense, O(rows x dim) a step).")
  temperature: float = option(0.05, "Softmax temperature (logits = q.c / T; Yi et al. use ~0.05).")
  sampling_probability: str = option("static", "logQ correction of the in-batch softmax: none; "
                                     "static (candidate frequency in the train split, "
                                     "candidate_counts.tsv); streaming (Yi et al. streaming "
                                     "frequency estimate, updated every step).",
                                     choices=two_tower.SAMPLING_MODES)
  estimator_buckets: int = option(1 << 16, "Streaming estimator: size H of each hash array.")
  estimator_hashes: int = option(3, "Streaming estimator: number m of hash arrays (1 = Algorithm "
                                 "2, >1 = Algorithm 3).")
  estimator_alpha: float = option(0.01, "Streaming estimator: moving-average rate of the gap "
                                  "between two appearances of a candidate.")
  estimator_init: str = option("static", "Streaming estimator start: static (the gaps the train "
                               "counts predict: right from step 1) or zero (Yi et al.'s cold "
                               "start; needs ~1/alpha appearances).", choices=ESTIMATOR_INITS)
  pass_loss_weight: float = option(1.0, "Weight of the like-vs-pass logistic loss on the same dot "
                                   "product (passes as explicit negatives); 0 disables.")
  num_hard_negatives: int = option(0, "Keep only the N hardest in-batch negatives per like in the "
                                   "softmax; 0: all.")
  id_dropout: float = option(0.1, "Probability that a training example's query and candidate id "
                             "are replaced by the OOV index, so that the rows serving users and "
                             "profiles unseen in training learn a features-only embedding (0 "
                             "disables it; docs/training.md).")
  like_residual: bool = option(True, "After training, fit the like-vs-pass residual (a "
                               "per-user and a per-profile bias, low-rank id factors and linear "
                               "maps of the profile features into them; rank, penalties and "
                               "features chosen on validation; kept only when it beats the "
                               "towers there) and append it to the towers' outputs "
                               "(docs/training.md, 'Oracle headroom' 11, 12 and 15).")
  new_user_swipes: int = option(5, "Each query's first N train swipes (by time) always use the "
                                "OOV query id: the path that serves users unseen in training "
                                "then also learns what users do when they are new, not only "
                                "from random swipes of long-time users (0 disables it; "
                                "docs/training.md).")
  seed: int = option(0, "Random seed (weights, shuffling, hash functions).")
  checkpoint_every_steps: int = option(500, "Checkpoint interval (and at every epoch end).")
  log_every_steps: int = option(50, "TensorBoard/log interval of the training losses.")
  eval_ks: List[int] = option(help="Comma-separated K of validation_recall@K computed on the "
                                   "validation split (evaluate.py's definition) at each epoch end.",
                              factory=lambda: [10, 50, 100])
  selection_metric: str = option("recall", "Validation metric that picks the best epoch and "
                                 "the tuning winner: recall "
                                 "(validation_recall@--early_stopping_k), gauc (per-user "
                                 "like-vs-pass AUC among shown profiles) or auc. See "
                                 "docs/training.md for why the default.",
                                 choices=epoch_eval.SELECTION_METRICS)
  early_stopping_k: int = option(50, "Model selection and early stopping watch validation_recall@K "
                                 "for this K.")
  early_stopping_patience: int = option(2, "Stop when validation_recall@K did not improve for this "
                                        "many epochs (the best epoch is restored either way); 0: "
                                        "never stop early.")
  validation_max_users: int = option(epoch_eval.MAX_USERS, "Validation users ranked against "
                                     "every candidate at each epoch end; with more, a seeded "
                                     "sample of this many (the metrics are then a sample: see "
                                     "docs/training.md).")
  mixed_precision: bool = option(False, "mixed_float16 compute (GPU); the embedding output stays "
                                 "float32.")
  jit_compile: bool = option(False, "XLA-compile the training step.")
  strategy: str = option("default", "default: one device; mirrored: all local GPUs; multi_worker: "
                         "MultiWorkerMirroredStrategy from TF_CONFIG (run the same command on "
                         "every worker).", choices=STRATEGIES)
  index: str = option("brute_force", "The index/ SavedModel: exact brute force over all "
                      "candidates, or ScaNN (approximate; needs `scann`, and `import scann` before "
                      "loading).", choices=export.INDEX_TYPES)
  no_tune: bool = option(False, "Train with the given values instead of choosing "
                         f"{', '.join(tuning.TUNED)} on the validation split (flags given "
                         "explicitly are never tuned).")
  tune_budget_minutes: float = option(8.0, "Wall-clock budget of the search and the winner's "
                                      "training together.")
  tune_trials: int = option(tuning.DEFAULT_TRIALS, "Trials of the successive-halving search (trial "
                            "0 = the defaults).")

  def selection_key(self) -> str:
    """The validation metric that selects epochs and tuning trials."""
    return epoch_eval.selection_key(self.selection_metric, self.early_stopping_k)

  def check(self) -> None:
    problems = []
    for name in ("epochs", "batch_size", "embedding_dim", "checkpoint_every_steps",
                 "log_every_steps", "estimator_buckets", "estimator_hashes",
                 "default_embedding_dim", "validation_max_users"):
      if getattr(self, name) < 1:
        problems.append(f"--{name} must be >= 1, got {getattr(self, name)}")
    if self.tune_trials < 1:
      problems.append(f"--tune_trials must be >= 1, got {self.tune_trials}")
    if not self.tune_budget_minutes > 0:
      problems.append(f"--tune_budget_minutes must be > 0, got {self.tune_budget_minutes}")
    if self.table_memory_budget < 0:
      problems.append(f"--table_memory_budget must be >= 0, got {self.table_memory_budget}")
    if self.steps_per_epoch < 0:
      problems.append(f"--steps_per_epoch must be >= 0, got {self.steps_per_epoch}")
    if self.optimizer not in OPTIMIZERS:
      problems.append(f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
    if self.strategy not in STRATEGIES:
      problems.append(f"--strategy must be one of {STRATEGIES}, got {self.strategy!r}")
    if self.index not in export.INDEX_TYPES:
      problems.append(f"--index must be one of {export.INDEX_TYPES}, got {self.index!r}")
    elif self.index == "scann" and not export.scann_available():
      problems.append("--index=scann needs the scann package (pip install scann)")
    if self.selection_metric not in epoch_eval.SELECTION_METRICS:
      problems.append(f"--selection_metric must be one of {epoch_eval.SELECTION_METRICS}, "
                      f"got {self.selection_metric!r}")
    if self.estimator_init not in ESTIMATOR_INITS:
      problems.append(f"--estimator_init must be one of {ESTIMATOR_INITS}, "
                      f"got {self.estimator_init!r}")
    if self.sampling_probability not in two_tower.SAMPLING_MODES:
      problems.append(f"--sampling_probability must be one of {two_tower.SAMPLING_MODES}, "
                      f"got {self.sampling_probability!r}")
    for name in ("candidate_bias", "like_residual"):
      if not isinstance(getattr(self, name), bool):
        problems.append(f"--{name} must be true or false, got {getattr(self, name)!r}")
    if not 0.0 <= self.id_dropout < 1.0:
      problems.append(f"--id_dropout must be in [0, 1), got {self.id_dropout}")
    if self.temperature <= 0 or self.learning_rate <= 0:
      problems.append("--temperature and --learning_rate must be > 0")
    for name in ("l2", "embedding_l2", "pass_loss_weight", "num_hard_negatives",
                 "new_user_swipes"):
      if not getattr(self, name) >= 0:  # also refuses NaN
        problems.append(f"--{name} must be >= 0, got {getattr(self, name)}")
    try:
      self.layers()
      self.ks()
    except ValueError as e:
      problems.append(str(e))
    if problems:
      raise TrainError("; ".join(problems))

  def layers(self) -> List[int]:
    return _positive_integers(self.layer_sizes, "layer_sizes", "hidden layer size")

  def ks(self) -> List[int]:
    return sorted(set(_positive_integers(self.eval_ks, "eval_ks", "K")))


def _positive_integers(values, flag: str, what: str) -> List[int]:
  """`values` as a list of ints >= 1 (at least one), or a ValueError naming the flag."""
  if isinstance(values, (str, bytes)) or not all(
      isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
    raise ValueError(f"--{flag} must be a list of integers, got {values!r}")
  if not values or any(v < 1 for v in values):
    raise ValueError(f"--{flag} must be one or more {what}s >= 1, got {list(values)}")
  return [int(v) for v in values]
