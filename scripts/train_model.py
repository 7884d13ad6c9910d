#!/usr/bin/env python3
"""Trains the two-tower retrieval model on a dataset directory; writes a run directory.

The run directory holds the query/candidate SavedModels (raw features in), their
numeric cores (what Core ML converts), a top-k index SavedModel, the candidate
embeddings, checkpoints and TensorBoard logs (see docs/training.md). Example:

  train_model.py --dataset_dir=out/dataset --run_dir=out/run
  tensorboard --logdir=out/run.incomplete/logs   # while training; out/run/logs after

Killed and started again with the same flags, training resumes from the last
checkpoint and stops at the same step.
"""
import dataclasses
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow

from absl import app
from absl import flags
from absl import logging

from tfrs_two_tower.model import epoch_eval
from tfrs_two_tower.model import tuning
from tfrs_two_tower.model import table_memory
from tfrs_two_tower.stages import cli
from tfrs_two_tower.stages import train_stage

D = train_stage.TrainOptions()
FLAGS = flags.FLAGS
flags.DEFINE_string("dataset_dir", None, "Dataset directory (export_data.py / generate_world.py "
                    "output).", required=True)
flags.DEFINE_string("run_dir", None, "Where the run directory goes; training state lives in "
                    "<run_dir>.incomplete until the run ends.", required=True)
flags.DEFINE_boolean("overwrite", False, "Replace an existing run directory (atomically).")
flags.DEFINE_integer("epochs", D.epochs, "Training epochs.")
flags.DEFINE_integer("steps_per_epoch", D.steps_per_epoch, "Steps per epoch; 0: one pass over "
                     "the train split (rows // batch_size).")
flags.DEFINE_integer("batch_size", D.batch_size, "Global batch size (in-batch negatives: larger "
                     "batches give more negatives per like).")
flags.DEFINE_float("learning_rate", D.learning_rate, "Learning rate.")
flags.DEFINE_enum("optimizer", D.optimizer, train_stage.OPTIMIZERS, "Optimizer.")
flags.DEFINE_boolean("sparse_embedding_updates", D.sparse_embedding_updates, "Embedding rows "
                     "(and their Adam/momentum slots) move only when a batch looks them up, so "
                     "a step costs the same at 5k and 1M users; --nosparse_embedding_updates: "
                     "the stock dense update of the whole table every step.")
flags.DEFINE_integer("table_memory_budget", D.table_memory_budget, "Bytes the embedding tables "
                     "(weights + optimizer slots) may take in training; a larger vocabulary is "
                     "refused before training starts. 0: %d%% of the memory available."
                     % (100 * table_memory.BUDGET_FRACTION), lower_bound=0)
flags.DEFINE_integer("embedding_dim", D.embedding_dim, "Size of the L2-normalised tower output.")
flags.DEFINE_string("layer_sizes", D.layer_sizes, "Comma-separated hidden ReLU layer sizes of "
                    "each tower, before the projection to --embedding_dim (at least one).")
flags.DEFINE_integer("default_embedding_dim", D.default_embedding_dim, "Embedding size of "
                     "features whose config gives no embedding_dim.")
flags.DEFINE_float("l2", D.l2, "L2 regularisation of embeddings and hidden kernels.")
flags.DEFINE_float("temperature", D.temperature, "Softmax temperature (logits = q.c / T; Yi et "
                   "al. use ~0.05).")
flags.DEFINE_enum("sampling_probability", D.sampling_probability, ["none", "static", "streaming"],
                  "logQ correction of the in-batch softmax: none; static (candidate frequency "
                  "in the train split, candidate_counts.tsv); streaming (Yi et al. "
                  "streaming frequency estimate, updated every step).")
flags.DEFINE_integer("estimator_buckets", D.estimator_buckets, "Streaming estimator: size H of "
                     "each hash array.")
flags.DEFINE_integer("estimator_hashes", D.estimator_hashes, "Streaming estimator: number m of "
                     "hash arrays (1 = Algorithm 2, >1 = Algorithm 3).")
flags.DEFINE_float("estimator_alpha", D.estimator_alpha, "Streaming estimator: moving-average "
                   "rate of the gap between two appearances of a candidate.")
flags.DEFINE_enum("estimator_init", D.estimator_init, list(train_stage.ESTIMATOR_INITS),
                  "Streaming estimator start: static (the gaps the train counts predict: right "
                  "from step 1) or zero (Yi et al.'s cold start; needs ~1/alpha appearances).")
flags.DEFINE_float("pass_loss_weight", D.pass_loss_weight, "Weight of the like-vs-pass logistic "
                   "loss on the same dot product (passes as explicit negatives); 0 disables.")
flags.DEFINE_integer("num_hard_negatives", D.num_hard_negatives, "Keep only the N hardest "
                     "in-batch negatives per like in the softmax; 0: all.")
flags.DEFINE_float("id_dropout", D.id_dropout, "Probability that a training example's query "
                   "and candidate id are replaced by the OOV index, so that the rows serving "
                   "users and profiles unseen in training learn a features-only embedding "
                   "(0 disables it; docs/training.md).")
flags.DEFINE_boolean("no_tune", D.no_tune, "Train with the given values instead of choosing "
                     f"{', '.join(tuning.TUNED)} on the validation split (flags given "
                     "explicitly are never tuned).")
flags.DEFINE_float("tune_budget_minutes", D.tune_budget_minutes, "Wall-clock budget of the "
                   "search and the winner's training together.")
flags.DEFINE_integer("tune_trials", D.tune_trials, "Trials of the successive-halving search "
                     "(trial 0 = the defaults).")
flags.DEFINE_integer("seed", D.seed, "Random seed (weights, shuffling, hash functions).")
flags.DEFINE_integer("checkpoint_every_steps", D.checkpoint_every_steps, "Checkpoint interval "
                     "(and at every epoch end).")
flags.DEFINE_integer("log_every_steps", D.log_every_steps, "TensorBoard/log interval of the "
                     "training losses.")
flags.DEFINE_string("eval_ks", D.eval_ks, "Comma-separated K of validation_recall@K computed "
                    "on the validation split (evaluate.py's definition) at each epoch end.")
flags.DEFINE_enum("selection_metric", D.selection_metric, list(epoch_eval.SELECTION_METRICS),
                  "Validation metric that picks the best epoch and the tuning winner: recall "
                  "(validation_recall@--early_stopping_k), gauc (per-user like-vs-pass AUC among "
                  "shown profiles) or auc. See docs/training.md for why the default.")
flags.DEFINE_integer("early_stopping_k", D.early_stopping_k, "Model selection and early "
                     "stopping watch validation_recall@K for this K.")
flags.DEFINE_integer("early_stopping_patience", D.early_stopping_patience, "Stop when "
                     "the selection metric did not improve for this many epochs (the best epoch "
                     "is restored either way); 0: never stop early.")
flags.DEFINE_boolean("mixed_precision", D.mixed_precision, "mixed_float16 compute (GPU); the "
                     "embedding output stays float32.")
flags.DEFINE_boolean("jit_compile", D.jit_compile, "XLA-compile the training step.")
flags.DEFINE_enum("strategy", D.strategy, list(train_stage.STRATEGIES), "default: one device; "
                  "mirrored: all local GPUs; multi_worker: MultiWorkerMirroredStrategy from "
                  "TF_CONFIG (run the same command on every worker).")
flags.DEFINE_enum("index", D.index, ["brute_force", "scann"], "The index/ SavedModel: exact "
                  "brute force over all candidates, or ScaNN (approximate; needs `scann`, and "
                  "`import scann` before loading).")


def main(argv):
  del argv
  options = train_stage.TrainOptions(**{
      f.name: FLAGS[f.name].value for f in dataclasses.fields(train_stage.TrainOptions)})
  with cli.user_errors():
    train_stage.run(FLAGS.dataset_dir, FLAGS.run_dir, options, overwrite=FLAGS.overwrite,
                    log=logging.info, fixed=[n for n in tuning.TUNED if FLAGS[n].present])


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
