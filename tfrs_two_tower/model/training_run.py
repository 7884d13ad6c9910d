"""A training run from start to finish: dataset in, run directory out.

Training state lives in `<run_dir>.incomplete/` (checkpoints, TensorBoard logs,
the resolved flags) until the run ends; then the artifacts are written and the
whole directory appears atomically as `<run_dir>` (layout: `run_dir.py`).
Started again with the same flags after a crash or SIGKILL, training resumes
from the last checkpoint in `<run_dir>.incomplete/` and ends at the same step.
"""

import dataclasses
import os
import shutil
import time
from typing import Any, Callable, Dict, Sequence

import numpy as np
import tensorflow as tf

import tfrs_two_tower
from tfrs_two_tower import files
from tfrs_two_tower.data import dataset_format as fmt
from tfrs_two_tower.data import reader
from tfrs_two_tower.model import epoch_eval
from tfrs_two_tower.model import export
from tfrs_two_tower.model import inputs
from tfrs_two_tower.model import like_residual
from tfrs_two_tower.model import preprocessing as prep
from tfrs_two_tower.model import run_dir as run_lib
from tfrs_two_tower.model import table_memory
from tfrs_two_tower.model import tensorboard_logs
from tfrs_two_tower.model import towers
from tfrs_two_tower.model import training as training_lib
from tfrs_two_tower.model import trials
from tfrs_two_tower.model import tuning
from tfrs_two_tower.model.train_options import TrainError
from tfrs_two_tower.model.train_options import TrainOptions

INCOMPLETE_SUFFIX = ".incomplete"


@dataclasses.dataclass
class TrainResult:
  """What `train` produced: the run's manifest and the in-memory towers."""
  manifest: Dict[str, Any]
  query_tower: towers.Tower
  candidate_tower: towers.Tower


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


def train(dataset: reader.DatasetDir, run_dir: str, options: TrainOptions,
          overwrite: bool = False, log: Callable[..., None] = print,
          fixed: Sequence[str] = ()) -> TrainResult:
  """Trains the two-tower model and writes `run_dir` (only the chief writes it).

  `options` must have passed `TrainOptions.check()`; `run_dir` is absolute. Unless
  `options.no_tune`, the tuned options (`tuning.TUNED`) not named in `fixed` (the
  flags the user gave) are chosen on the validation split first.
  """
  options = implicit_feedback_options(dataset, options, log)
  resolved = {"dataset_dir": os.path.abspath(dataset.path), "run_dir": run_dir,
              **dataclasses.asdict(options)}
  policy = tf.keras.mixed_precision.global_policy()
  if options.mixed_precision:
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    return _train(dataset, run_dir, options, resolved, overwrite, log, fixed)
  finally:
    tf.keras.mixed_precision.set_global_policy(policy)


def _train(dataset, run_dir, options, resolved, overwrite, log, fixed) -> TrainResult:
  strategy = training_lib.make_strategy(options.strategy)
  chief = training_lib.is_chief(strategy)
  work = run_dir + INCOMPLETE_SUFFIX
  if not chief:  # Non-chief workers save their (identical) state to a private place.
    work = f"{run_dir}.worker-{strategy.cluster_resolver.task_id}{INCOMPLETE_SUFFIX}"
  else:
    _recover_from_interrupted_write(run_dir, work, log)
  specs = training_lib.feature_specs(dataset)  # once: the memory check and every model
  all_tables = [t for side in run_lib.SIDES
                for t in table_memory.tables(specs[side], options.default_embedding_dim)]
  try:  # Before anything is written or allocated.
    table_bytes = table_memory.check_fits(
        all_tables,
        options.optimizer,
        # The tables' L2 penalty makes their gradients dense: the stock update's temporaries.
        options.sparse_embedding_updates and not options.embedding_l2,
        options.table_memory_budget or None)
  except table_memory.TablesTooLargeError as e:
    raise TrainError(f"--dataset_dir {dataset.path}: {e}") from None
  log("train: embedding tables need %.2f GB in training" % (table_bytes / 1e9))
  _resume_or_start(work, resolved)
  # The training index (built on first use, then shared by every trial) also gives the
  # evaluator its train exclusions: one pass over the train split per run, not two.
  inputs_cache: Dict[str, Any] = {}

  def train_pairs(users, corpus):
    return training_lib.training_inputs(dataset, specs, options, inputs_cache)[1].pairs_of(
        users, corpus)
  try:
    # The selection metric's K is always computed, whatever --eval_ks lists.
    evaluator = epoch_eval.ValidationEvaluator(
        dataset, ks=sorted(set(options.ks()) | {options.early_stopping_k}),
        max_users=options.validation_max_users, seed=options.seed, train_pairs=train_pairs)
  except epoch_eval.ValidationDataError as e:
    raise TrainError(f"--dataset_dir: {e}") from None
  search = None
  table_rows = sum(rows for _, rows, _ in all_tables)
  if "embedding_l2" not in fixed and not tuning.dense_penalty_fits(table_rows):
    fixed = (*fixed, "embedding_l2")
    if not options.no_tune:
      log("train: tuning keeps --embedding_l2=%g: the tables have %d rows (> %d), where its "
          "dense step would cost more than the rest of a training step"
          % (options.embedding_l2, table_rows, tuning.DENSE_PENALTY_MAX_ROWS))
  configs = tuning.sample_configs(dataclasses.asdict(options), fixed, options.tune_trials,
                                  options.seed)
  if options.no_tune or len(configs) == 1 or options.strategy != "default":
    if not options.no_tune:
      log("train: no tuning (%s)" % ("every tuned value is fixed by a flag" if len(configs) == 1
                                     else "--strategy=%s trains one model" % options.strategy))
    training = training_lib.Training(dataset, specs, options, work, evaluator, strategy,
                                     resolved, log, inputs_cache)
    while not training.done:
      training.run_epoch()
  else:
    training, search = trials.tune(dataset, specs, options, work, evaluator, strategy,
                                   resolved, configs, log, inputs_cache)
  training.restore_best()
  residual = None
  if options.like_residual and chief:  # only the chief writes the run
    residual = _attach_like_residual(dataset, specs, training, inputs_cache, log)
  manifest = {}
  if not chief:
    shutil.rmtree(work, ignore_errors=True)
  else:
    manifest = write_run(run_dir, work, dataset, training.options, training.resolved,
                          training, overwrite, log, search, residual)
  return TrainResult(manifest, training.query_tower, training.candidate_tower)


def _attach_like_residual(dataset, specs, training, inputs_cache, log) -> Dict[str, Any]:
  """Fits `like_residual` on the train and validation swipes; appends it to the towers.

  Returns the manifest's "like_residual" section ({"fitted": False, "reason"} when
  the data or the model has nothing to fit it on).
  """
  def skipped(reason):
    log("train: no like residual: " + reason)
    return {"fitted": False, "reason": reason}
  options = training.options
  if not options.pass_loss_weight:
    return skipped("the train split has no passes to contrast the likes with")
  _, train_index = training_lib.training_inputs(dataset, specs, options, inputs_cache)
  if len(train_index) > like_residual.MAX_SWIPES:
    return skipped(f"{len(train_index)} train swipes are more than its fit handles in "
                   f"reasonable time ({like_residual.MAX_SWIPES})")
  id_specs = {}
  for side in run_lib.SIDES:
    keys = towers.id_dropout_buckets(specs[side])
    if not keys:
      return skipped(f"the {side} side has no id feature with OOV buckets to attach it to")
    id_specs[side] = next(spec for spec in specs[side] if spec["key"] == next(iter(keys)))
  id_keys = {side: spec["key"] for side, spec in id_specs.items()}
  # Rows 0 .. k: padding and the k OOV buckets (entities unseen in training) of the ids.
  first_known_rows = {side: 1 + int(spec["num_oov_buckets"]) for side, spec in id_specs.items()}
  cores = training.model.query_core, training.model.candidate_core
  validation_index = inputs.InteractionIndex(dataset, epoch_eval.SPLIT, *inputs_cache["features"])
  train, validation = training_lib.residual_swipes(
      [train_index, validation_index], *cores, id_keys, first_known_rows)
  features = training_lib.residual_features(train_index, specs, id_keys)
  rows = [prep.num_rows(id_specs[side]) for side in run_lib.SIDES]
  started = time.time()
  residual, table = like_residual.choose(train, validation, *rows, seed=options.seed, log=log,
                                         features=features)
  if residual is None:
    return {**skipped("no fit beats the towers alone on the validation swipes' log loss"),
            "validation_log_loss": table}
  seconds = time.time() - started
  features_chosen = (" + ".join(residual.features) + " (penalty %g)" % residual.feature_l2
                     if residual.features else "none")
  log("train: like residual: rank %d, l2 %g, features %s chosen on validation, refitted on "
      "train + validation in %.0fs" % (residual.rank, residual.l2, features_chosen, seconds))
  for side, table_of, scale in (
      ("query", residual.query_table(first_known_rows["query"]), residual.scale),
      ("candidate", residual.candidate_table(first_known_rows["candidate"]), 1.0)):
    tower = getattr(training, f"{side}_tower")
    setattr(training, f"{side}_tower", towers.Tower(
        tower.preprocessing,
        towers.with_like_residual(tower.core, id_keys[side], table_of, scale,
                                  residual.feature_tables(side)),
        name=tower.name))
  return {"fitted": True, "rank": residual.rank, "l2": residual.l2, "scale": residual.scale,
          "features": list(residual.features),
          "feature_l2": residual.feature_l2 if residual.features else None,
          "seconds": round(seconds, 1), "validation_log_loss": table}


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


def write_run(run_dir, work, dataset, options, resolved, training, overwrite,
               log, search=None, residual=None) -> Dict[str, Any]:
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
        # The tower output's size: --embedding_dim, + 1 with --candidate_bias, + 2 + r
        # with a fitted like residual.
        "embedding_dim": int(embeddings.shape[1]), "temperature": options.temperature,
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
    if residual is not None:
      manifest["like_residual"] = residual
    if search is not None:
      manifest["tuning"] = trials.write_trials(out, os.path.join(work, trials.TRIALS), search,
                                               training.selection_key)
    files.write_json(os.path.join(out, run_lib.MANIFEST), manifest)
  shutil.rmtree(work, ignore_errors=True)
  log("train: run written to %s (step %d, epoch %s, validation AUC %.4f, %s %.4f)" % (
      run_dir, step, final.get("epoch"), final[epoch_eval.PREFIX + "auc"],
      training.selection_key, final[training.selection_key]))
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
