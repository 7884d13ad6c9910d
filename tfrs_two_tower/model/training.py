"""One two-tower model trained epoch by epoch, selected on the validation split.

The model (`build_model`, `compiled_model`), its inputs (`training_inputs`), the
optimizer and the distribution strategy, and `Training`: the loop that trains an
epoch, checkpoints, evaluates on validation (`epoch_eval`) and keeps the best
epoch's weights. The final run (`training_run.py`) and every tuning trial
(`trials.py`) use it.
"""

import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import scipy.sparse
import tensorflow as tf

from tfrs_two_tower import features as features_lib
from tfrs_two_tower.model import epoch_eval
from tfrs_two_tower.model import frequency
from tfrs_two_tower.model import inputs
from tfrs_two_tower.model import like_residual
from tfrs_two_tower.model import optimizers
from tfrs_two_tower.model import preprocessing as prep
from tfrs_two_tower.model import run_dir as run_lib
from tfrs_two_tower.model import tensorboard_logs
from tfrs_two_tower.model import towers
from tfrs_two_tower.model import two_tower
from tfrs_two_tower.model.train_options import NonFiniteLossError
from tfrs_two_tower.model.train_options import TrainError
from tfrs_two_tower.model.train_options import TrainOptions


def make_strategy(name: str) -> tf.distribute.Strategy:
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise TrainError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                       "(cluster and task of this worker)")
    return tf.distribute.MultiWorkerMirroredStrategy()
  return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
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
                                    embedding_l2=options.embedding_l2,
                                    default_embedding_dim=options.default_embedding_dim,
                                    shared_embeddings=_shared_history_embeddings(
                                        specs[side], cores.get("candidate")),
                                    score_bias=side if options.candidate_bias else None)
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
          seed=options.seed, name="id_dropout",
          forced={key: inputs.NEW_USER_COLUMN for key in towers.id_dropout_buckets(
              specs["query"])} if options.new_user_swipes else None)
      if options.id_dropout or options.new_user_swipes else None)


def _shared_history_embeddings(specs: list, candidate_core: Optional[tf.keras.Model]
                               ) -> Dict[str, tf.keras.layers.Layer]:
  """History lists that use the candidate id embedding (config history.share_...)."""
  shared = [s["key"] for s in specs
            if s["type"] == "history" and s.get("share_candidate_id_embedding")]
  if not shared:
    return {}
  table = candidate_core.get_layer(f"{features_lib.CANDIDATE_ID}_embedding")
  return {key: table for key in shared}


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
  key = ("index", options.sampling_probability == "static", options.new_user_swipes)
  if key not in cache:
    cache[key] = inputs.InteractionIndex(
        dataset, "train", *cache["features"],
        inputs.StaticSamplingProbability(dataset) if key[1] else None, options.new_user_swipes)
  return cache["preprocessing"], cache[key]


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

  def __init__(self, dataset, specs: Dict[str, list], options: TrainOptions, work: str,
               evaluator, strategy, resolved: Dict[str, Any], log: Callable[..., None],
               inputs_cache: Optional[Dict[str, Any]] = None):
    """`specs`: `feature_specs(dataset)`; `inputs_cache`: see `training_inputs`."""
    tf.keras.utils.set_random_seed(options.seed)
    self.options, self.work, self.evaluator, self.log = options, work, evaluator, log
    self.resolved = resolved
    self.strategy = strategy
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
    self.step_fn = distributed_step(strategy, model, options.jit_compile)
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
    elif early_stop(self.history, options.early_stopping_patience, self.selection_key):
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


def early_stop(history: List[Dict[str, float]], patience: int, key: str) -> bool:
  """True when `key` has not beaten its best before the last `patience` epochs (0: never)."""
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


def distributed_step(strategy, model, jit_compile: bool):
  step = tf.function(model.train_step, jit_compile=jit_compile) if jit_compile \
      else model.train_step

  @tf.function
  def distributed(batch):
    parts = strategy.run(step, args=(batch,))
    # Each replica's parts are its share of a global mean: the sum is the mean.
    return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for k, v in parts.items()}
  return distributed


def residual_features(index: inputs.InteractionIndex, specs: Dict[str, Sequence[dict]],
                      id_keys: Dict[str, str]) -> like_residual.Features:
  """The sides' categorical and multi-categorical features as `like_residual.Features`.

  A group per feature name (its key without the side's prefix, `Features.key`, so a dating
  app's `query_interests` and `candidate_interests` are one group); each side's matrix has a
  row per id table row ([rows, feature table rows], `like_residual.multi_hot`), filled
  for the entities whose id is in the vocabulary and empty for padding and OOV rows.
  Only `index`'s entity tables (`.query`, `.candidate`) are read, not its swipes.
  """
  groups: Dict[str, Dict[str, Any]] = {}
  for side in run_lib.SIDES:
    values = getattr(index, side).values  # the entity tables' features, a row per entity
    id_spec = next(spec for spec in specs[side] if spec["key"] == id_keys[side])
    id_rows = values[id_keys[side]].numpy().reshape(-1).astype(np.int64)
    known = np.flatnonzero(id_rows >= 1 + int(id_spec["num_oov_buckets"]))
    # [id table rows, entities] 1 where an entity's id has that row.
    to_rows = scipy.sparse.csr_matrix((np.ones(known.size), (id_rows[known], known)),
                                      shape=(prep.num_rows(id_spec), id_rows.size))
    for spec in specs[side]:
      name = spec["key"].removeprefix(side + "_")
      if (spec["type"] in ("categorical", "multi_categorical")
          and like_residual.Features.key(name, side) == spec["key"]):
        hot = like_residual.multi_hot(values[spec["key"]].numpy(), prep.num_rows(spec))
        groups.setdefault(name, {})[side] = (to_rows @ hot).tocsr()
  return like_residual.Features(groups)


def residual_swipes(indices: Sequence[inputs.InteractionIndex], query_core: tf.keras.Model,
                    candidate_core: tf.keras.Model, id_keys: Dict[str, str],
                    first_known_rows: Dict[str, int], batch_size: int = 65536
                    ) -> List[like_residual.Swipes]:
  """Splits' swipes as `like_residual.Swipes`: id table rows, the towers' cosine and, with
  a swipe history, each swipe's history lists (`Swipes.history`).

  Args:
    indices: the splits, built on the same entity features (one `inputs_cache`), so the
      entities are embedded once for all of them; each side's id feature is `id_keys[side]`.
    first_known_rows: side -> its id table's first vocabulary row (1 + its OOV buckets).
  Left out: the swipes an index marks as their query's first (`inputs.NEW_USER_COLUMN`:
  they train the towers' new-user path) and those of users or on profiles outside the
  vocabulary (an OOV row), whose residual is the feature maps alone
  (`Residual.query_table`, `candidate_table`). With a swipe history the core reads
  (`embed_in_core`) the query embedding changes with every swipe, so it is computed per
  swipe (one forward pass over each split), otherwise once per user.
  """
  def embed(core, values):
    n = int(next(iter(values.values())).shape[0])
    return np.concatenate([tf.cast(core({k: v[i:i + batch_size] for k, v in values.items()
                                         if k in core.input_names}), tf.float32).numpy()
                           for i in range(0, n, batch_size)])

  entities = indices[0]
  if any(index.query is not entities.query or index.candidate is not entities.candidate
         for index in indices):
    raise ValueError("residual_swipes: the splits must share their entity features")
  candidate_embedding = embed(candidate_core, entities.candidate.values)
  history_specs = [spec for spec in entities.query.preprocessing.specs
                   if spec["type"] == "history"]
  query_embedding = None
  if not any(spec.get("embed_in_core", True) for spec in history_specs):
    # No history the core reads: one embedding per user (empty lists for the inputs the
    # core takes but does not read, `towers.build_core`).
    users = len(entities.query.ids)
    query_embedding = embed(query_core, {
        **entities.query.values, **{spec["key"]: tf.zeros([users, int(spec["max_length"])],
                                                          tf.int32) for spec in history_specs}})

  def table_rows(side, rows):
    return getattr(entities, side).values[id_keys[side]].numpy().reshape(-1).astype(
        np.int64)[rows]

  def split_swipes(index):
    query_rows = index.tensors["query_row"].numpy()
    candidate_rows = index.tensors["candidate_row"].numpy()
    keep = ((table_rows("query", query_rows) >= first_known_rows["query"])
            & (table_rows("candidate", candidate_rows) >= first_known_rows["candidate"]))
    if inputs.NEW_USER_COLUMN in index.tensors:
      keep &= ~index.tensors[inputs.NEW_USER_COLUMN].numpy()
    query_rows, candidate_rows = query_rows[keep], candidate_rows[keep]
    if query_embedding is not None:
      cosine = like_residual.row_dots(query_embedding, candidate_embedding, query_rows,
                                      candidate_rows)
    else:  # a history: each swipe's own query embedding
      cosine = np.empty(query_rows.size)
      swipes = np.flatnonzero(keep)
      for i in range(0, cosine.size, batch_size):
        batch = index.batch(tf.constant(swipes[i:i + batch_size]))
        q = tf.cast(query_core(towers.core_inputs(query_core, batch)), tf.float32).numpy()
        cosine[i:i + batch_size] = np.einsum(
            "nd,nd->n", q, candidate_embedding[candidate_rows[i:i + batch_size]])
    history = {spec["key"].removeprefix("query_"): like_residual.multi_hot(
        index.tensors[spec["key"]].numpy()[keep], prep.num_rows(spec)) for spec in history_specs}
    return like_residual.Swipes(
        table_rows("query", query_rows), table_rows("candidate", candidate_rows), cosine,
        index.tensors["label"].numpy()[keep].astype(np.float64),
        index.tensors["weight"].numpy()[keep].astype(np.float64), history)

  return [split_swipes(index) for index in indices]
