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
from typing import Any, Callable, Dict, List, Optional

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
from tfrs_two_tower.model import preprocessing as prep
from tfrs_two_tower.model import run_dir as run_lib
from tfrs_two_tower.model import tensorboard_logs
from tfrs_two_tower.model import towers
from tfrs_two_tower.model import two_tower

OPTIMIZERS = ("adam", "adagrad", "sgd")
STRATEGIES = ("default", "mirrored", "multi_worker")
INCOMPLETE_SUFFIX = ".incomplete"


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
  epochs: int = 2
  steps_per_epoch: int = 0
  batch_size: int = 1024
  learning_rate: float = 0.003
  optimizer: str = "adam"
  embedding_dim: int = 32
  layer_sizes: str = "128"
  default_embedding_dim: int = towers.DEFAULT_EMBEDDING_DIM
  l2: float = 0.0
  temperature: float = 0.05
  sampling_probability: str = "streaming"
  estimator_buckets: int = 1 << 16
  estimator_hashes: int = 3
  estimator_alpha: float = 0.01
  pass_loss_weight: float = 1.0
  num_hard_negatives: int = 0
  seed: int = 0
  checkpoint_every_steps: int = 500
  log_every_steps: int = 50
  eval_ks: str = "10,50,100"
  early_stopping_k: int = 50
  early_stopping_patience: int = 0
  mixed_precision: bool = False
  jit_compile: bool = False
  strategy: str = "default"
  index: str = "brute_force"

  def check(self) -> None:
    problems = []
    for name in ("epochs", "batch_size", "embedding_dim", "checkpoint_every_steps",
                 "log_every_steps", "estimator_buckets", "estimator_hashes",
                 "default_embedding_dim"):
      if getattr(self, name) < 1:
        problems.append(f"--{name} must be >= 1, got {getattr(self, name)}")
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
    if self.sampling_probability not in two_tower.SAMPLING_MODES:
      problems.append(f"--sampling_probability must be one of {two_tower.SAMPLING_MODES}, "
                      f"got {self.sampling_probability!r}")
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
  lr = options.learning_rate
  if options.optimizer == "adam":
    return tf.keras.optimizers.Adam(lr)
  if options.optimizer == "adagrad":
    return tf.keras.optimizers.Adagrad(lr)
  return tf.keras.optimizers.SGD(lr, momentum=0.9)


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
      num_hard_negatives=options.num_hard_negatives or None)


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


def run(dataset_dir: str, run_dir: str, options: Optional[TrainOptions] = None,
        overwrite: bool = False, log: Callable[..., None] = print) -> TrainResult:
  """Trains the two-tower model and writes the run directory (only the chief writes it)."""
  options = options or TrainOptions()
  options.check()
  run_dir = os.path.abspath(run_dir)
  if os.path.exists(run_dir) and not overwrite:
    raise TrainError(f"{run_dir} already exists (pass --overwrite to replace it)")
  try:
    dataset = reader.open_dataset(dataset_dir)
  except reader.DatasetFormatError as e:
    raise TrainError(f"--dataset_dir: {e}") from None
  resolved = {"dataset_dir": os.path.abspath(dataset_dir), "run_dir": run_dir,
              **dataclasses.asdict(options)}
  policy = tf.keras.mixed_precision.global_policy()
  if options.mixed_precision:
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    return _train(dataset, run_dir, options, resolved, overwrite, log)
  finally:
    tf.keras.mixed_precision.set_global_policy(policy)


def _train(dataset, run_dir, options, resolved, overwrite, log) -> TrainResult:
  tf.keras.utils.set_random_seed(options.seed)
  strategy = make_strategy(options.strategy)
  chief = _is_chief(strategy)
  work = run_dir + INCOMPLETE_SUFFIX
  if not chief:  # Non-chief workers save their (identical) state to a private place.
    work = f"{run_dir}.worker-{strategy.cluster_resolver.task_id}{INCOMPLETE_SUFFIX}"
  else:
    _recover_from_interrupted_write(run_dir, work, log)
  _resume_or_start(work, resolved)

  specs = {side: prep.side_feature_specs(dataset.config, dataset.preprocessing, dataset.path,
                                         side) for side in run_lib.SIDES}
  preprocessing = {side: prep.FeaturePreprocessing(specs[side], name=f"{side}_preprocessing")
                   for side in run_lib.SIDES}
  query_features = inputs.EntityFeatures(dataset, "query", preprocessing["query"])
  candidate_features = inputs.EntityFeatures(dataset, "candidate", preprocessing["candidate"])
  train_index = inputs.InteractionIndex(
      dataset, "train", query_features, candidate_features,
      inputs.StaticSamplingProbability(dataset)
      if options.sampling_probability == "static" else None)
  with strategy.scope():
    # Every variable (estimator state, optimizer slots) is created here, in the
    # strategy's scope, not lazily inside the first distributed step.
    model = build_model(options, specs)
    if model.frequency_estimator is not None:
      model.frequency_estimator.build(None)
    model.compile(optimizer=make_optimizer(options))
    model.optimizer.build(model.trainable_variables)
  checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
  manager = tf.train.CheckpointManager(checkpoint, os.path.join(work, run_lib.CHECKPOINTS),
                                       max_to_keep=3)
  if manager.latest_checkpoint:
    checkpoint.restore(manager.latest_checkpoint)
    log("train: resuming from %s" % manager.latest_checkpoint)

  steps_per_epoch = options.steps_per_epoch or max(len(train_index) // options.batch_size, 1)
  total_steps = options.epochs * steps_per_epoch
  step_fn = _distributed_step(strategy, model, options.jit_compile)
  evaluator = epoch_eval.RetrievalEvaluator(dataset, ks=options.ks())
  query_tower = towers.Tower(preprocessing["query"], model.query_core, name="query_tower")
  candidate_tower = towers.Tower(preprocessing["candidate"], model.candidate_core,
                                 name="candidate_tower")
  writer = tf.summary.create_file_writer(os.path.join(work, run_lib.LOGS, "train"))
  tensorboard_logs.write_hparams(writer, resolved, ["auc"] + [f"recall@{k}" for k in options.ks()])
  history: List[Dict[str, float]] = []
  step = int(model.optimizer.iterations.numpy())
  started, start_step = time.time(), step
  for epoch in range(step // steps_per_epoch, options.epochs):
    skip = step - epoch * steps_per_epoch
    sums, count = {}, 0
    for batch in _distributed_epoch(strategy, train_index, options, epoch, skip,
                                    steps_per_epoch - skip):
      parts = {k: float(v) for k, v in step_fn(batch).items()}
      step += 1
      if not np.isfinite(parts["loss"]):
        raise NonFiniteLossError(
            f"loss is {parts['loss']} at step {step}: training stopped; the last good "
            f"checkpoint ({manager.latest_checkpoint or 'none'}) is kept in {work}. Lower "
            "--learning_rate or raise --temperature and start again.")
      for k, v in parts.items():
        sums[k] = sums.get(k, 0.0) + v
      count += 1
      if step % options.log_every_steps == 0:
        with writer.as_default(step=step):
          for k, v in sums.items():
            tf.summary.scalar(f"train/{k}", v / count)
          tf.summary.scalar("train/learning_rate", _learning_rate(model.optimizer))
        tensorboard_logs.write_embedding_norms(writer, step, [model.query_core,
                                                              model.candidate_core])
        log("train: step %d/%d loss %.4f (softmax %.4f, pairwise %.4f) %.1f steps/s" % (
            step, total_steps, sums["loss"] / count, sums["softmax_loss"] / count,
            sums["pairwise_loss"] / count, (step - start_step) / (time.time() - started)))
        sums, count = {}, 0
      if step % options.checkpoint_every_steps == 0:
        _save_checkpoint(manager, model, step, work)
    _save_checkpoint(manager, model, step, work)
    result = evaluator(query_tower, candidate_tower)
    result["epoch"] = epoch + 1
    history.append(result)
    with writer.as_default(step=step):
      for k, v in result.items():
        if k.startswith(("recall@", "auc")):
          tf.summary.scalar(f"eval/{k}", v)
    log("train: epoch %d/%d step %d: eval AUC %.4f, %s" % (
        epoch + 1, options.epochs, step, result["auc"],
        ", ".join("recall@%d %.4f" % (k, result[f"recall@{k}"]) for k in options.ks())))
    if _early_stop(history, options):
      log("train: early stopping: recall@%d did not improve for %d epochs" % (
          options.early_stopping_k, options.early_stopping_patience))
      break
  writer.flush()
  manifest = {}
  if not chief:
    shutil.rmtree(work, ignore_errors=True)
  else:
    manifest = _write_run(run_dir, work, dataset, options, resolved, query_tower,
                          candidate_tower, evaluator, history, step, overwrite, log)
  return TrainResult(manifest, query_tower, candidate_tower)


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


def _early_stop(history: List[Dict[str, float]], options: TrainOptions) -> bool:
  patience = options.early_stopping_patience
  key = f"recall@{options.early_stopping_k}"
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


def _write_run(run_dir, work, dataset, options, resolved, query_tower, candidate_tower,
               evaluator, history, step, overwrite, log) -> Dict[str, Any]:
  ids, embeddings = evaluator.candidate_embeddings(candidate_tower)
  final = history[-1] if history else evaluator(query_tower, candidate_tower, embeddings)
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
        "metrics": {"final": final, "history": history},
        "created_by": {"package": "tfrs_two_tower", "version": tfrs_two_tower.__version__,
                       "tensorflow": tf.__version__},
    }
    manifest["files"] = run_lib.artifact_checksums(out)
    tensorboard_logs.write_projector(os.path.join(work, run_lib.LOGS), ids, embeddings,
                                     _projector_metadata(dataset, evaluator))
    for name in (run_lib.CHECKPOINTS, run_lib.LOGS):  # copies: `work` stays resumable until
      if os.path.exists(os.path.join(work, name)):    # the run directory is in place
        shutil.copytree(os.path.join(work, name), os.path.join(out, name),
                        copy_function=files.link_or_copy)
    files.write_json(os.path.join(out, run_lib.MANIFEST), manifest)
  shutil.rmtree(work, ignore_errors=True)
  log("train: run written to %s (step %d, eval AUC %.4f)" % (run_dir, step, final["auc"]))
  return manifest




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
