"""The Python API: each stage of the pipeline as a function, for notebooks and other code.

    import tfrs_two_tower as tt

    config = tt.load_config()                                  # the default dating schema
    tt.export("out/dataset", input_dir="dump/")                # or db_url="postgresql://..."
    trained = tt.train("out/dataset", epochs=3, no_tune=True)  # in memory; run_dir= keeps it
    embeddings = trained.query_tower(features)                 # Keras models: [B, d]
    report = tt.evaluate("out/dataset", ["out/run"])           # a dict; output_dir= writes it
    tt.convert("out/run", "out/dataset", "out/coreml")         # Core ML pair + features.json
    tt.publish("out/run", "out/dataset", db_url="postgresql://...")

Your own Keras loop over the same inputs and model:

    data = tt.training_data("out/dataset", batch_size=1024)    # tf.data of model batches
    model = tt.build_model("out/dataset")                      # compiled tfrs.Model
    model.fit(data, epochs=1)

Each function is the stage its script runs (`stages/`), with the script's flags as
keyword arguments and the same errors (ValueError subclasses naming the argument).
`train` and `evaluate` return their results in memory and write a directory only
when given one (they work in a temporary directory otherwise); `export`, `convert`
and `publish` produce a directory or database tables by nature.
"""

import os
import tempfile
from typing import Any, Callable, Dict, Optional, Sequence

import tensorflow as tf

from tfrs_two_tower.config import load_config
from tfrs_two_tower.data import reader
from tfrs_two_tower.model import inputs
from tfrs_two_tower.model import training
from tfrs_two_tower.model import training_run
from tfrs_two_tower.model.train_options import TrainOptions
from tfrs_two_tower.stages import convert_stage
from tfrs_two_tower.stages import evaluate_stage
from tfrs_two_tower.stages import export_stage
from tfrs_two_tower.stages import publish_stage
from tfrs_two_tower.stages import train_stage

__all__ = ["load_config", "export", "train", "evaluate", "convert", "publish",
           "training_data", "build_model"]


def export(output_dir: str, **options) -> Dict[str, Any]:
  """Exports PostgreSQL/Supabase (`db_url=`) or CSV/Parquet dumps (`input_dir=`) into a
  dataset directory; returns its stats (counts, splits, readiness). Options: the flags of
  `export_data.py`."""
  log = options.pop("log", print)
  return export_stage.run(output_dir, export_stage.ExportOptions(**options), log=log)


def train(dataset_dir: str, run_dir: Optional[str] = None, *,
          log: Callable[..., None] = print, **options) -> training_run.TrainResult:
  """Trains on a dataset directory; returns the manifest and the in-memory towers.

  Options are `TrainOptions` fields (the flags of `train_model.py`); the ones given
  here are never tuned, the others are chosen on the validation split unless
  `no_tune=True`. Without `run_dir` nothing is kept on disk.
  """
  fixed = tuple(options)
  train_options = TrainOptions(**options)
  if run_dir is not None:
    return train_stage.run(dataset_dir, run_dir, train_options, log=log, fixed=fixed)
  with tempfile.TemporaryDirectory(prefix="tfrs-two-tower-run-") as scratch:
    return train_stage.run(dataset_dir, os.path.join(scratch, "run"), train_options, log=log,
                           fixed=fixed)


def evaluate(dataset_dir: str, run_dirs: Sequence[str], output_dir: Optional[str] = None, *,
             log: Callable[..., None] = print, **options) -> Dict[str, Any]:
  """Evaluates run directories (and the baselines) on the eval split; returns the report
  dict (`report.json`). Options are `EvaluateOptions` fields (the flags of `evaluate.py`,
  e.g. `world_dir=`, `ks=`). Without `output_dir` the report files are not kept."""
  if output_dir is not None:
    return evaluate_stage.run(dataset_dir, list(run_dirs), output_dir,
                              evaluate_stage.EvaluateOptions(**options), log=log)
  options.setdefault("tensorboard", False)  # nothing is written into the run directories
  with tempfile.TemporaryDirectory(prefix="tfrs-two-tower-report-") as scratch:
    return evaluate_stage.run(dataset_dir, list(run_dirs), os.path.join(scratch, "report"),
                              evaluate_stage.EvaluateOptions(**options), log=log)


def convert(run_dir: str, dataset_dir: str, output_dir: str, **options) -> Dict[str, Any]:
  """Converts a run's towers into a verified Core ML pair + features.json in `output_dir`;
  returns the parity figures. Options: the flags of `convert_to_coreml.py`."""
  return convert_stage.run(run_dir, dataset_dir, output_dir, **options)


def publish(run_dir: str, dataset_dir: str, db_url: Optional[str] = None,
            **options) -> Dict[str, Any]:
  """Publishes a run's embeddings into PostgreSQL (pgvector) with the recommend() RPCs;
  returns what was published. Options: the flags of `publish_embeddings.py`."""
  return publish_stage.run(run_dir, dataset_dir, db_url=db_url, **options)


def training_data(dataset_dir: str, batch_size: int = 1024, seed: int = 0, epoch: int = 0,
                  num_batches: Optional[int] = None, **options) -> tf.data.Dataset:
  """One epoch of the train split as model batches, the input of `build_model(...)`'s
  `fit` (shuffled by seed and epoch; full batches only). Options: `TrainOptions`
  fields that change the inputs (e.g. `sampling_probability="static"`)."""
  dataset = reader.open_dataset(dataset_dir)
  train_options = TrainOptions(batch_size=batch_size, seed=seed, **options)
  _, index = training.training_inputs(dataset, training.feature_specs(dataset), train_options)
  return inputs.training_dataset(index, batch_size, seed, epoch,
                                 num_batches or max(len(index) // batch_size, 1))


def build_model(dataset_dir: str, **options) -> tf.keras.Model:
  """The two-tower `tfrs.Model` for a dataset, compiled with its optimizer (`TrainOptions`
  fields as keyword arguments; no tuning): `model.fit(training_data(...))` trains it,
  `model.query_core` / `model.candidate_core` are the towers' numeric cores."""
  dataset = reader.open_dataset(dataset_dir)
  train_options = TrainOptions(**{"no_tune": True, **options})
  train_options.check()
  return training.compiled_model(dataset, train_options, training.feature_specs(dataset))
