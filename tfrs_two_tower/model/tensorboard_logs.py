"""What training shows in TensorBoard besides the loss scalars.

* HParams: the resolved flags as hyperparameters, with the eval metrics.
* Embedding norms: per embedding table of each core, the mean L2 norm of its
  rows (scalar) and their distribution (histogram). Tower outputs are
  L2-normalised, so table norms are where growth (overfitting ids) shows.
* Projector: the candidate embeddings with per-candidate metadata (id,
  categorical features, train interactions), for the Embedding Projector.
"""

import os
from typing import Any, Dict, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorboard.plugins import projector
from tensorboard.plugins.hparams import api as hp

PROJECTOR_DIR = "projector"


def write_hparams(writer, options: Mapping[str, Any], metrics: Sequence[str]) -> None:
  """Declares the hyperparameters (flags) of this run and the metric tags to compare."""
  values = {k: v for k, v in options.items() if isinstance(v, (bool, int, float, str))}
  with writer.as_default():
    hp.hparams_config(hparams=[hp.HParam(k) for k in sorted(values)],
                      metrics=[hp.Metric(m) for m in metrics])
    hp.hparams(values)


def write_embedding_norms(writer, step: int, cores: Sequence[tf.keras.Model]) -> None:
  with writer.as_default(step=step):
    for core in cores:
      for layer in core.layers:
        if isinstance(layer, tf.keras.layers.Embedding):
          norms = tf.norm(layer.embeddings, axis=1)
          tf.summary.scalar(f"embedding_norm/{layer.name}", tf.reduce_mean(norms))
          tf.summary.histogram(f"embedding_norm/{layer.name}", norms)


def write_projector(log_dir: str, ids: np.ndarray, embeddings: np.ndarray,
                    metadata: Dict[str, np.ndarray]) -> str:
  """Writes candidate embeddings + metadata.tsv for the Embedding Projector."""
  path = os.path.join(log_dir, PROJECTOR_DIR)
  os.makedirs(path, exist_ok=True)
  columns = ["id"] + sorted(metadata)
  with open(os.path.join(path, "metadata.tsv"), "w", encoding="utf-8") as f:
    f.write("\t".join(columns) + "\n")
    for i, candidate in enumerate(ids):
      row = [str(candidate)] + [_cell(metadata[c][i]) for c in columns[1:]]
      f.write("\t".join(row) + "\n")
  variable = tf.Variable(np.asarray(embeddings, np.float32), name="candidate_embeddings")
  tf.train.Checkpoint(embedding=variable).save(os.path.join(path, "embedding.ckpt"))
  config = projector.ProjectorConfig()
  embedding = config.embeddings.add()
  embedding.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
  embedding.metadata_path = "metadata.tsv"
  projector.visualize_embeddings(path, config)
  return path


def _cell(value) -> str:
  if isinstance(value, np.ndarray):
    value = ",".join(str(v) for v in value if str(v))
  return str(value).replace("\t", " ").replace("\n", " ")
