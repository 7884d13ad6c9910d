"""train_model.py: dataset dir -> run dir (see `model/run_dir.py` for the layout).

Training state lives in `<run_dir>.incomplete/` (checkpoints, TensorBoard logs,
the resolved flags) until the run ends; then the artifacts are written and the
whole directory appears atomically as `<run_dir>`. Started again with the same
flags after a crash or SIGKILL, training resumes from the last checkpoint in
`<run_dir>.incomplete/` and ends at the same global step.
"""

import dataclasses
import os
import shutil
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

import tfrs_two_tower
from tfrs_two_tower import features as features_lib
from tfrs_two_tower import files
from tfrs_two_tower.data import dataset_format as fmt
from tfrs_two_tower.data import reader
from tfrs_two_tower.model import epoch_eval
from tfrs_two_tower.model import export
from tfrs_two_tower.model import frequency
from tfrs_two_tower.model import inputs
from tfrs_two_tower.model import optimizers
from tfrs_two_tower.model import preprocessing as prep
from tfrs_two_tower.model import run_dir as run_lib
from tfrs_two_tower.model import table_memory
from tfrs_two_tower.model import tensorboard_logs
from tfrs_two_tower.model import towers
from tfrs_two_tower.model import tuning
from tfrs_two_tower.model import two_tower

OPTIMIZERS = ("adam", "adagrad", "sgd")
STRATEGIES = ("default", "mirrored", "multi_worker")
INCOMPLETE_SUFFIX = ".incomplete"
TRIALS = "trials"  # the search's trial directories (in the run: logs/trials/, trials.csv)
# How the streaming estimator starts: from the train counts' gaps, or from zero.
ESTIMATOR_INITS = ("static", "zero")


class TrainError(ValueError):
  """Bad training input or flags; the message names the flag or file."""


@dataclasses.dataclass
class TrainResult:
  """What `run` produced: the run's manifest and the in-memory towers."""
  manifest: Dict[str, Any]
  query_tower: towers.Tower
  candidate_tower: towers.Tower


class NonFiniteLossError(RuntimeError):
  """The loss became NaN/inf; the last good checkpoint is kept."""
  exit_code = 4


@dataclasses.dataclass
class TrainOptions:
  """Every training knob (the flags of `train_model.py` use these defaults)."""
  epochs: int = 10
  steps_per_epoch: int = 0
  batch_size: int = 1024
  learning_rate: float = 0.003
  optimizer: str = "adam"
  sparse_embedding_updates: bool = True
  table_memory_budget: int = 0
  embedding_dim: int = 32
  layer_sizes: str = "128"
  default_embedding_dim: int = towers.DEFAULT_EMBEDDING_DIM
  l2: float = 0.0
  temperature: float = 0.05
  sampling_probability: str = "streaming"
  estimator_buckets: int = 1 << 16
  estimator_hashes: int = 3
  estimator_alpha: float = 0.01
  estimator_init: str = "static"
  pass_loss_weight: float = 1.0
  num_hard_negatives: int = 0
  id_dropout: float = 0.1
  seed: int = 0
  checkpoint_every_steps: int = 500
  log_every_steps: int = 50
  eval_ks: str = "10,50,100"
  selection_metric: str = "recall"
  early_stopping_k: int = 50
  early_stopping_patience: int = 2
  mixed_precision: bool = False
  jit_compile: bool = False
  strategy: str = "default"
  index: str = "brute_force"
  no_tune: bool = False
  tune_budget_minutes: float = 8.0
  tune_trials: int = tuning.DEFAULT_TRIALS

  def selection_key(self) -> str:
    """The validation metric that selects epochs and tuning trials."""
    return epoch_eval.selection_key(self.selection_metric, self.early_stopping_k)

  def check(self) -> None:
    problems = []
    for name in ("epochs", "batch_size", "embedding_dim", "checkpoint_every_steps",
                 "log_every_steps", "estimator_buckets", "estimator_hashes",
                 "default_embedding_dim"):
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
    if not 0.0 <= self.id_dropout < 1.0:
      problems.append(f"--id_dropout must be in [0, 1), got {self.id_dropout}")
    if self.temperature <= 0 or self.learning_rate <= 0:
      problems.append("--temperature and --learning_rate must be > 0")
    for name in ("l2", "pass_loss_weight", "num_hard_negatives"):
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
    try:
      sizes = [int(s) for s in self.layer_sizes.split(",") if s.strip()]
    except ValueError:
      raise ValueError(f"--layer_sizes must be comma-separated integers, got "
                       f"{self.layer_sizes!r}") from None
    if not sizes or any(s < 1 for s in sizes):
      raise ValueError(f"--layer_sizes must be one or more positive sizes, got "
                       f"{self.layer_sizes!r}")
    return sizes

  def ks(self) -> List[int]:
    try:
      ks = sorted({int(s) for s in self.eval_ks.split(",") if s.strip()})
    except ValueError:
      raise ValueError(f"--eval_ks must be comma-separated integers, got {self.eval_ks!r}") \
          from None
    if not ks or ks[0] < 1:
      raise ValueError(f"--eval_ks must be one or more K >= 1, got {self.eval_ks!r}")
    return ks


def make_strategy(name: str) -> tf.distribute.Strategy:
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise TrainError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                       "(cluster and task of this worker)")
    return tf.distribute.MultiWorkerMirroredStrategy()
  return tf.distribute.get_strategy()


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  task = (resolver.task_type, resolver.task_id)
  return task in (("chief", 0), (None, None)) or (
      task == ("worker", 0) and "chief" not in resolver.cluster_spec().as_dict())


def make_optimizer(options: TrainOptions) -> tf.keras.optimizers.Optimizer:
  """`--optimizer`; with sparse_embedding_updates, embedding rows move only when touched.

  The lazy variants (`optimizers.py`) apply the same rule as the stock ones to
  dense gradients and restrict it to the looked-up rows for embedding tables,
  so a step costs O(batch) instead of O(vocabulary). Adagrad is row-wise in
  tf-keras already.
  """
  lr = options.learning_rate
  lazy = options.sparse_embedding_updates
  if options.optimizer == "adam":
    return optimizers.LazyAdam(lr) if lazy else tf.keras.optimizers.Adam(lr)
  if options.optimizer == "adagrad":
    return tf.keras.optimizers.Adagrad(lr)
  return (optimizers.LazySGD if lazy else tf.keras.optimizers.SGD)(lr, momentum=0.9)


def build_model(options: TrainOptions, specs: Dict[str, list]) -> two_tower.TwoTowerModel:
  cores = {}
  for side in ("candidate", "query"):  # the query core may share a candidate table
    cores[side] = towers.build_core(specs[side], options.layers(), options.embedding_dim,
                                    name=f"{side}_core", l2=options.l2,
                                    default_embedding_dim=options.default_embedding_dim,
                                    shared_embeddings=_shared_history_embeddings(
                                        specs[side], cores.get("candidate")))
  estimator = None
  if options.sampling_probability == "streaming":
    estimator = frequency.StreamingFrequencyEstimator(
        options.estimator_buckets, options.estimator_hashes, options.estimator_alpha,
        seed=options.seed, name="frequency_estimator")
  return two_tower.TwoTowerModel(
      cores["query"], cores["candidate"], temperature=options.temperature,
      sampling=options.sampling_probability, frequency_estimator=estimator,
      pass_loss_weight=options.pass_loss_weight,
      num_hard_negatives=options.num_hard_negatives or None,
      id_dropout=towers.IdDropout(
          options.id_dropout, {**towers.id_dropout_buckets(specs["query"]),
                               **towers.id_dropout_buckets(specs["candidate"])},
          seed=options.seed, name="id_dropout") if options.id_dropout else None)


def _recover_from_interrupted_write(run_dir: str, work: str, log) -> None:
  """Moves checkpoints a kill left in a stale `.<run>.tmp-*` directory back into `work`.

  Older versions moved the checkpoints into the temporary run directory before
  its final rename; a kill in between stranded them there.
  """
  if os.path.exists(os.path.join(work, run_lib.CHECKPOINTS)):
    return
  for stale in reversed(files.stale_temporaries(run_dir)):  # the newest first
    if os.path.isdir(os.path.join(stale, run_lib.CHECKPOINTS)):
      os.makedirs(work, exist_ok=True)
      for name in (run_lib.CHECKPOINTS, run_lib.LOGS, run_lib.FLAGS):
        if os.path.exists(os.path.join(stale, name)):
          os.replace(os.path.join(stale, name), os.path.join(work, name))
      log(f"train: recovered the checkpoints of an interrupted run from {stale} into {work}")
      return


def _shared_history_embeddings(specs: list, candidate_core: Optional[tf.keras.Model]
                               ) -> Dict[str, tf.keras.layers.Layer]:
  """History lists that use the candidate id embedding (config history.share_...)."""
  shared = [s["key"] for s in specs
            if s["type"] == "history" and s.get("share_candidate_id_embedding")]
  if not shared:
    return {}
  table = candidate_core.get_layer(f"{features_lib.CANDIDATE_ID}_embedding")
  return {key: table for key in shared}


def _resume_or_start(work: str, resolved: Dict[str, Any]) -> None:
  flags_path = os.path.join(work, run_lib.FLAGS)
  if os.path.exists(flags_path):
    previous = files.read_json(flags_path)
    if previous != resolved:
      changed = sorted(k for k in set(previous) | set(resolved)
                       if previous.get(k) != resolved.get(k))
      raise TrainError(f"{work} holds an interrupted run with other flags ({', '.join(changed)}):"
                       f" start it again with the same flags to resume, or delete {work}")
  else:
    os.makedirs(work, exist_ok=True)
    files.write_json(flags_path, resolved)


def implicit_feedback_options(dataset: reader.DatasetDir, options: TrainOptions,
                              log: Callable[..., None]) -> TrainOptions:
  """Options with the like-vs-pass loss off when the train split has no passes.

  Likes-only data (implicit feedback) trains the retrieval softmax alone: the
  logistic loss would only learn to call every pair a like.
  """
  passes = int(dataset.stats["labels"]["train"]["negative"])
  if options.selection_metric != "recall" and not int(
      dataset.stats["labels"]["validation"]["negative"]):
    log("train: the validation split has no passes, so --selection_metric=%s (like vs pass) "
        "cannot rank epochs; selecting on validation_recall@%d instead"
        % (options.selection_metric, options.early_stopping_k))
    options = dataclasses.replace(options, selection_metric="recall")
  if passes or not options.pass_loss_weight:
    return options
  log("train: the train split has no passes (implicit feedback, likes only): the like-vs-pass "
      "loss is off (pass_loss_weight 0); the retrieval softmax trains alone")
  return dataclasses.replace(options, pass_loss_weight=0.0)


def run(dataset_dir: str, run_dir: str, options: Optional[TrainOptions] = None,
        overwrite: bool = False, log: Callable[..., None] = print,
        fixed: Sequence[str] = ()) -> TrainResult:
  """Trains the two-tower model and writes the run directory (only the chief writes it).

  Unless `options.no_tune`, the tuned options (`tuning.TUNED`) not named in
  `fixed` (the flags the user gave) are chosen on the validation split first.
  """
  options = options or TrainOptions()
  options.check()
  run_dir = os.path.abspath(run_dir)
  if os.path.exists(run_dir) and not overwrite:
    raise TrainError(f"{run_dir} already exists (pass --overwrite to replace it)")
  try:
    dataset = reader.open_dataset(dataset_dir)
  except reader.DatasetFormatError as e:
    raise TrainError(f"--dataset_dir: {e}") from None
  options = implicit_feedback_options(dataset, options, log)
  resolved = {"dataset_dir": os.path.abspath(dataset_dir), "run_dir": run_dir,
              **dataclasses.asdict(options)}
  policy = tf.keras.mixed_precision.global_policy()
  if options.mixed_precision:
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    return _train(dataset, run_dir, options, resolved, overwrite, log, fixed)
  finally:
    tf.keras.mixed_precision.set_global_policy(policy)


def _train(dataset, run_dir, options, resolved, overwrite, log, fixed=()) -> TrainResult:
  strategy = make_strategy(options.strategy)
  chief = _is_chief(strategy)
  work = run_dir + INCOMPLETE_SUFFIX
  if not chief:  # Non-chief workers save their (identical) state to a private place.
    work = f"{run_dir}.worker-{strategy.cluster_resolver.task_id}{INCOMPLETE_SUFFIX}"
  else:
    _recover_from_interrupted_write(run_dir, work, log)
  specs = feature_specs(dataset)
  try:  # Before anything is written or allocated.
    table_bytes = table_memory.check_fits(
        [t for side in run_lib.SIDES
         for t in table_memory.tables(specs[side], options.default_embedding_dim)],
        options.optimizer, options.sparse_embedding_updates, options.table_memory_budget or None)
  except table_memory.TablesTooLargeError as e:
    raise TrainError(f"--dataset_dir {dataset.path}: {e}") from None
  log("train: embedding tables need %.2f GB in training" % (table_bytes / 1e9))
  _resume_or_start(work, resolved)
  try:
    # The selection metric's K is always computed, whatever --eval_ks lists.
    evaluator = epoch_eval.ValidationEvaluator(
        dataset, ks=sorted(set(options.ks()) | {options.early_stopping_k}))
  except epoch_eval.ValidationDataError as e:
    raise TrainError(f"--dataset_dir: {e}") from None
  search = None
  configs = tuning.sample_configs(dataclasses.asdict(options), fixed, options.tune_trials,
                                  options.seed)
  if options.no_tune or len(configs) == 1 or options.strategy != "default":
    if not options.no_tune:
      log("train: no tuning (%s)" % ("every tuned value is fixed by a flag" if len(configs) == 1
                                     else "--strategy=%s trains one model" % options.strategy))
    training = Training(dataset, options, work, evaluator, strategy, resolved, log)
    while not training.done:
      training.run_epoch()
  else:
    training, search = _tune(dataset, options, work, evaluator, strategy, resolved, configs,
                             log)
  training.restore_best()
  manifest = {}
  if not chief:
    shutil.rmtree(work, ignore_errors=True)
  else:
    manifest = _write_run(run_dir, work, dataset, training.options, training.resolved,
                          training, overwrite, log, search)
  return TrainResult(manifest, training.query_tower, training.candidate_tower)


def feature_specs(dataset) -> Dict[str, list]:
  """Per side, the feature specs the preprocessing layers and the cores are built from."""
  return {side: prep.side_feature_specs(dataset.config, dataset.preprocessing, dataset.path,
                                        side) for side in run_lib.SIDES}


def training_inputs(dataset, specs: Dict[str, list], options: TrainOptions,
                    cache: Optional[Dict[str, Any]] = None):
  """(per-side preprocessing layers, the train split's `inputs.InteractionIndex`).

  `cache`: a dict tuning trials share, so the entity features and the train index
  (independent of the tuned values) are built once.
  """
  cache = {} if cache is None else cache
  if "preprocessing" not in cache:
    cache["preprocessing"] = {
        side: prep.FeaturePreprocessing(specs[side], name=f"{side}_preprocessing")
        for side in run_lib.SIDES}
    cache["features"] = [inputs.EntityFeatures(dataset, side, cache["preprocessing"][side])
                         for side in run_lib.SIDES]
  static = options.sampling_probability == "static"
  if ("index", static) not in cache:
    cache["index", static] = inputs.InteractionIndex(
        dataset, "train", *cache["features"],
        inputs.StaticSamplingProbability(dataset) if static else None)
  return cache["preprocessing"], cache["index", static]


def compiled_model(dataset, options: TrainOptions, specs: Dict[str, list],
                   strategy: Optional[tf.distribute.Strategy] = None) -> two_tower.TwoTowerModel:
  """The two-tower `tfrs.Model`, compiled with its optimizer, every variable built.

  Built in `strategy`'s scope (estimator state, optimizer slots) rather than lazily
  inside the first distributed step; the streaming estimator starts from the train
  counts with --estimator_init=static.
  """
  with (strategy or tf.distribute.get_strategy()).scope():
    model = build_model(options, specs)
    if model.frequency_estimator is not None:
      model.frequency_estimator.build(None)
      if options.estimator_init == "static":
        model.frequency_estimator.initialize_from_counts(
            *inputs.candidate_interaction_counts(dataset), options.batch_size)
    model.compile(optimizer=make_optimizer(options))
    model.optimizer.build(model.trainable_variables)
  return model


class Training:
  """One model trained epoch by epoch, selected on the validation split.

  `run_epoch()` trains one epoch, checkpoints, and evaluates on validation
  (`epoch_eval`); the weights of the best epoch by the selection metric
  (`TrainOptions.selection_key()`) are kept in memory, and `restore_best()` puts them
  back. `done` is set after --epochs, or when the metric has not improved for
  --early_stopping_patience epochs. Tuning trials and the final run both use it.
  """

  def __init__(self, dataset, options: TrainOptions, work: str, evaluator, strategy,
               resolved: Dict[str, Any], log: Callable[..., None],
               inputs_cache: Optional[Dict[str, Any]] = None):
    """`inputs_cache`: see `training_inputs`."""
    tf.keras.utils.set_random_seed(options.seed)
    self.options, self.work, self.evaluator, self.log = options, work, evaluator, log
    self.resolved = resolved
    self.strategy = strategy
    specs = feature_specs(dataset)
    preprocessing, self.train_index = training_inputs(dataset, specs, options, inputs_cache)
    model = compiled_model(dataset, options, specs, strategy)
    self.model = model
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    self.manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(work, run_lib.CHECKPOINTS), max_to_keep=3)
    if self.manager.latest_checkpoint:
      checkpoint.restore(self.manager.latest_checkpoint)
      log("train: resuming from %s" % self.manager.latest_checkpoint)
    self.steps_per_epoch = options.steps_per_epoch or max(
        len(self.train_index) // options.batch_size, 1)
    self.total_steps = options.epochs * self.steps_per_epoch
    self.step_fn = _distributed_step(strategy, model, options.jit_compile)
    self.query_tower = towers.Tower(preprocessing["query"], model.query_core, name="query_tower")
    self.candidate_tower = towers.Tower(preprocessing["candidate"], model.candidate_core,
                                        name="candidate_tower")
    self.writer = tf.summary.create_file_writer(os.path.join(work, run_lib.LOGS, "train"))
    self.selection_key = options.selection_key()
    tensorboard_logs.write_hparams(
        self.writer, resolved, [_tag(epoch_eval.PREFIX + "auc"), _tag(epoch_eval.PREFIX + "gauc")]
        + [_tag(f"{epoch_eval.PREFIX}recall@{k}") for k in options.ks()])
    self.history: List[Dict[str, float]] = []
    self.step = int(model.optimizer.iterations.numpy())
    self.epoch = self.step // self.steps_per_epoch
    self.best: Optional[Dict[str, float]] = None
    self._best_weights: Optional[List[np.ndarray]] = None
    self.done = self.epoch >= options.epochs
    self.started, self.start_step = time.time(), self.step

  def run_epoch(self) -> Dict[str, float]:
    """Trains one epoch and evaluates it on validation; returns the epoch's metrics."""
    options, model, manager = self.options, self.model, self.manager
    epoch = self.epoch
    skip = self.step - epoch * self.steps_per_epoch
    sums, count = {}, 0
    for batch in _distributed_epoch(self.strategy, self.train_index, options, epoch, skip,
                                    self.steps_per_epoch - skip):
      parts = {k: float(v) for k, v in self.step_fn(batch).items()}
      self.step += 1
      if not np.isfinite(parts["loss"]):
        raise NonFiniteLossError(
            f"loss is {parts['loss']} at step {self.step}: training stopped; the last good "
            f"checkpoint ({manager.latest_checkpoint or 'none'}) is kept in {self.work}. Lower "
            "--learning_rate or raise --temperature and start again.")
      for k, v in parts.items():
        sums[k] = sums.get(k, 0.0) + v
      count += 1
      if self.step % options.log_every_steps == 0:
        with self.writer.as_default(step=self.step):
          for k, v in sums.items():
            tf.summary.scalar(f"train/{k}", v / count)
          tf.summary.scalar("train/learning_rate", _learning_rate(model.optimizer))
        tensorboard_logs.write_embedding_norms(self.writer, self.step, [model.query_core,
                                                                        model.candidate_core])
        self.log("train: step %d/%d loss %.4f (softmax %.4f, pairwise %.4f) %.1f steps/s" % (
            self.step, self.total_steps, sums["loss"] / count, sums["softmax_loss"] / count,
            sums["pairwise_loss"] / count,
            (self.step - self.start_step) / (time.time() - self.started)))
        sums, count = {}, 0
      if self.step % options.checkpoint_every_steps == 0:
        _save_checkpoint(manager, model, self.step, self.work)
    _save_checkpoint(manager, model, self.step, self.work)
    result = self.evaluator(self.query_tower, self.candidate_tower)
    self.epoch += 1
    result["epoch"] = self.epoch
    self.history.append(result)
    with self.writer.as_default(step=self.step):
      for k, v in result.items():
        if k.startswith(epoch_eval.PREFIX) and isinstance(v, float):
          tf.summary.scalar(_tag(k), v)
    self.log("train: epoch %d/%d step %d: validation AUC %.4f, GAUC %.4f, %s" % (
        self.epoch, options.epochs, self.step, result[epoch_eval.PREFIX + "auc"],
        result[epoch_eval.PREFIX + "gauc"],
        ", ".join("recall@%d %.4f" % (k, result[f"{epoch_eval.PREFIX}recall@{k}"])
                  for k in options.ks())))
    if self.best is None or result[self.selection_key] > self.best[self.selection_key]:
      self.best = result
      self._best_weights = [v.numpy() for v in model.variables]
    if self.epoch >= options.epochs:
      self.done = True
    elif _early_stop(self.history, options, self.selection_key):
      self.log("train: early stopping: %s did not improve for %d epochs" % (
          self.selection_key, options.early_stopping_patience))
      self.done = True
    return result

  def restore_best(self) -> None:
    """Puts back the weights of the best validation epoch (a no-op if it was the last)."""
    if self._best_weights is not None and self.best is not self.history[-1]:
      for variable, value in zip(self.model.variables, self._best_weights):
        variable.assign(value)
      self.log("train: restored epoch %d, the best by %s (%.4f)" % (
          self.best["epoch"], self.selection_key, self.best[self.selection_key]))
    self.writer.flush()


def _tune(dataset, options: TrainOptions, work: str, evaluator, strategy,
          resolved: Dict[str, Any], configs: List[Dict[str, Any]], log):
  """Successive halving over `configs` (see `model/tuning.py`); returns (winner, result)."""
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

  cache: Dict[str, Any] = {}

  def start(i: int, config: Dict[str, Any]) -> Training:
    return Training(dataset, dataclasses.replace(options, **config),
                    os.path.join(trials_dir, f"trial_{i:02d}"), evaluator, strategy,
                    {**resolved, **config}, quiet, inputs_cache=cache)
  key = options.selection_key()
  try:
    result = tuning.successive_halving(configs, start, key, options.tune_budget_minutes * 60,
                                       log=log)
  except tuning.TuningError as e:
    raise TrainError(str(e)) from None
  log("train: tuning chose %s (trial %d of %d, %s %.4f) in %.0f s" % (
      ", ".join(f"{k}={v}" for k, v in configs[result.winner_index].items()),
      result.winner_index, len(configs), key, result.records[result.winner_index].score,
      result.seconds))
  return result.winner, result


def _tag(key: str) -> str:
  """TensorBoard tag of a metric key: validation_recall@50 -> validation/recall@50."""
  return key.replace(epoch_eval.PREFIX, epoch_eval.PREFIX[:-1] + "/", 1)


def _save_checkpoint(manager, model, step: int, work: str) -> None:
  """Saves only finite weights, so the last checkpoint is always a good one."""
  if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in model.trainable_variables):
    raise NonFiniteLossError(
        f"weights are NaN/inf at step {step}: training stopped; the last good checkpoint "
        f"({manager.latest_checkpoint or 'none'}) is kept in {work}. Lower --learning_rate or "
        "raise --temperature and start again.")
  manager.save(checkpoint_number=step)


def _learning_rate(optimizer) -> float:
  lr = optimizer.learning_rate
  value = lr(optimizer.iterations) if callable(lr) else lr
  return float(tf.convert_to_tensor(value))  # also a (mirrored) variable


def _early_stop(history: List[Dict[str, float]], options: TrainOptions, key: str) -> bool:
  patience = options.early_stopping_patience
  if not patience or len(history) <= patience or key not in history[0]:
    return False
  best_before = max(h[key] for h in history[:-patience])
  return all(h[key] <= best_before for h in history[-patience:])


def _distributed_epoch(strategy, index, options, epoch: int, skip: int, steps: int):
  """Per-replica batches of one epoch (from `skip` on, `steps` global steps).

  Each input pipeline (one per worker) draws from its own permutation of the
  split (its own seed) and yields per-replica batches of `batch_size /
  replicas`; a global step takes one batch per replica.
  """
  def dataset_fn(context: tf.distribute.InputContext):
    local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
    return inputs.training_dataset(
        index, context.get_per_replica_batch_size(options.batch_size),
        options.seed + 7919 * context.input_pipeline_id, epoch,
        skip_batches=skip * local_replicas, num_batches=steps * local_replicas)
  return strategy.distribute_datasets_from_function(dataset_fn)


def _distributed_step(strategy, model, jit_compile: bool):
  step = tf.function(model.train_step, jit_compile=jit_compile) if jit_compile \
      else model.train_step

  @tf.function
  def distributed(batch):
    parts = strategy.run(step, args=(batch,))
    # Each replica's parts are its share of a global mean: the sum is the mean.
    return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for k, v in parts.items()}
  return distributed


def _write_run(run_dir, work, dataset, options, resolved, training, overwrite,
               log, search=None) -> Dict[str, Any]:
  query_tower, candidate_tower, evaluator = (training.query_tower, training.candidate_tower,
                                             training.evaluator)
  ids, embeddings = evaluator.candidate_embeddings(candidate_tower)
  final = training.best or evaluator(query_tower, candidate_tower, embeddings)
  history, step = training.history, training.step
  with files.atomic_directory(run_dir, overwrite=overwrite) as out:
    for side, tower in (("query", query_tower), ("candidate", candidate_tower)):
      export.save_tower(os.path.join(out, run_lib.model_dir(side)), tower)
      export.save_core(os.path.join(out, run_lib.core_dir(side)), tower.core,
                       tower.preprocessing.specs)
    run_lib.save_candidate_embeddings(os.path.join(out, run_lib.CANDIDATE_EMBEDDINGS), ids,
                                      embeddings)
    index_type = export.save_index(os.path.join(out, run_lib.INDEX), query_tower, ids,
                                   embeddings, options.index)
    shutil.copy(dataset.file(fmt.CONFIG), os.path.join(out, run_lib.CONFIG))
    shutil.copy(dataset.file(fmt.PREPROCESSING), os.path.join(out, run_lib.PREPROCESSING))
    shutil.copytree(dataset.file(fmt.VOCAB_DIR), os.path.join(out, run_lib.VOCAB_DIR))
    files.write_json(os.path.join(out, run_lib.FLAGS), resolved)
    manifest = {
        "kind": run_lib.KIND, "format_version": run_lib.FORMAT_VERSION,
        "run_id": os.path.basename(run_dir) + time.strftime("-%Y%m%dT%H%M%SZ", time.gmtime()),
        "config_hash": dataset.manifest["config_hash"],
        "dataset": {"path": dataset.path, "manifest_sha256": files.sha256_file(
            dataset.file(fmt.MANIFEST)), "split_time": dataset.manifest.get("split_time")},
        "embedding_dim": options.embedding_dim, "temperature": options.temperature,
        "sampling_probability": options.sampling_probability, "global_step": step,
        "index": {"type": index_type, "candidates": int(len(ids))},
        # "final": the validation metrics of the written (best) epoch.
        "metrics": {"final": final, "selected_epoch": final.get("epoch"),
                    "history": history},
        "created_by": {"package": "tfrs_two_tower", "version": tfrs_two_tower.__version__,
                       "tensorflow": tf.__version__},
    }
    manifest["files"] = run_lib.artifact_checksums(out)
    tensorboard_logs.write_projector(os.path.join(training.work, run_lib.LOGS), ids, embeddings,
                                     _projector_metadata(dataset, evaluator))
    for name in (run_lib.CHECKPOINTS, run_lib.LOGS):  # copies: `work` stays resumable until
      if os.path.exists(os.path.join(training.work, name)):  # the run directory is in place
        shutil.copytree(os.path.join(training.work, name), os.path.join(out, name),
                        copy_function=files.link_or_copy)
    if search is not None:
      manifest["tuning"] = _write_trials(out, os.path.join(work, TRIALS), search,
                                         training.selection_key)
    files.write_json(os.path.join(out, run_lib.MANIFEST), manifest)
  shutil.rmtree(work, ignore_errors=True)
  log("train: run written to %s (step %d, epoch %s, validation AUC %.4f, %s %.4f)" % (
      run_dir, step, final.get("epoch"), final[epoch_eval.PREFIX + "auc"],
      training.selection_key, final[training.selection_key]))
  return manifest




def _write_trials(out: str, trials_dir: str, search, key: str) -> Dict[str, Any]:
  """trials.csv / trials.json in the run, every trial's TensorBoard logs (HParams) under
  logs/trials/; returns the manifest's `tuning` section."""
  import pandas as pd
  rows = [r.row(key) for r in search.records]
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


def _projector_metadata(dataset, evaluator) -> Dict[str, np.ndarray]:
  """Categorical candidate features and train interactions, per corpus row."""
  out = {}
  for feature in dataset.config.features("candidate"):
    if feature.type in ("categorical", "multi_categorical"):
      out[feature.name] = evaluator.corpus[feature.key("candidate")]
  counts = dataset.candidate_counts()
  interactions = dict(zip(counts["candidate_id"].astype(str), counts["interactions"]))
  out["train_interactions"] = np.array([interactions.get(c, 0) for c in evaluator.candidate_ids])
  return out
