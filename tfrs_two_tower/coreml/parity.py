"""Parity of a converted tower with its TensorFlow SavedModel, and the bars it must clear.

The reference is the run's full TF tower (`<side>_model`: raw features ->
embedding, via `run_dir.Run.embed`). The Core ML side is what a phone would do: `features.json`
preprocessing (`features_json.preprocess_with_features_json`) followed by the
saved `.mlpackage`, evaluated by `mil_emulator` (an emulation of the MIL program,
not Apple's runtime). So the figures cover the exported preprocessing and the
conversion together.

Figures, over the rows of a batch (reference r, Core ML e, both [N, d]):
  max_abs_error = max |r - e|,  min_cosine = min_i cos(r_i, e_i)
  top10_overlap = mean over queries of |top10_ref(q) ∩ top10_coreml(q)| / 10, the
                  candidates ranked by q.c over the candidate corpus.
Bars (defaults): float32 uncompressed: max_abs_error <= 1e-4; float16
uncompressed: min_cosine >= 0.999; compressed: top10_overlap >= 0.9.
"""

import dataclasses
import os
from typing import Any, Callable, Dict, Mapping

import numpy as np

from tfrs_two_tower.coreml import features_json
from tfrs_two_tower.coreml import mil_emulator
from tfrs_two_tower.data import reader
from tfrs_two_tower.model import run_dir as run_lib


# Elements of one [queries, candidates] float64 score block of `top_k_overlap`.
SCORE_BLOCK_ELEMENTS = 1 << 24


class ParityError(ValueError):
  """The converted pair is below the parity bar (or cannot be checked); nothing was written."""
  exit_code = 3


@dataclasses.dataclass(frozen=True)
class Thresholds:
  float32_max_abs_error: float = 1e-4
  float16_min_cosine: float = 0.999
  compressed_min_top10_overlap: float = 0.9
  top_k: int = 10

  def __post_init__(self):
    if self.float32_max_abs_error < 0:
      raise ValueError(f"float32 max abs error bar must be >= 0, got {self.float32_max_abs_error}")
    for name in ("float16_min_cosine", "compressed_min_top10_overlap"):
      value = getattr(self, name)
      if not -1.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [-1, 1], got {value}")
    if self.top_k < 1:
      raise ValueError(f"top_k must be >= 1, got {self.top_k}")


def compare(reference: np.ndarray, other: np.ndarray) -> Dict[str, float]:
  """Row-wise agreement of two [N, d] embedding matrices."""
  reference = np.asarray(reference, np.float64)
  other = np.asarray(other, np.float64)
  if reference.shape != other.shape:
    raise ValueError(f"shape mismatch: reference {reference.shape} vs {other.shape}")
  diff = np.abs(reference - other)
  norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1)
  cosine = np.where(norms > 0, (reference * other).sum(axis=1) / np.maximum(norms, 1e-30), 0.0)
  return {"rows": int(reference.shape[0]), "max_abs_error": float(diff.max()),
          "mean_abs_error": float(diff.mean()), "min_cosine": float(cosine.min()),
          "mean_cosine": float(cosine.mean())}


def top_k_overlap(queries_ref: np.ndarray, corpus_ref: np.ndarray, queries_other: np.ndarray,
                  corpus_other: np.ndarray, k: int = 10) -> Dict[str, float]:
  """Overlap of the top-k candidates each side ranks for the same queries."""
  k = min(k, corpus_ref.shape[0])
  # Queries go in blocks so that a block's [b, n] float64 scores stay ~128 MB: one
  # [500, 1M] block, its negation and its argpartition peaked at 16 GB at a million candidates.
  block = max(1, SCORE_BLOCK_ELEMENTS // max(corpus_ref.shape[0], 1))

  def top(q, c):
    c = np.asarray(c, np.float64)
    # copy(): a [:, :k] view would keep each block's whole [b, n] argpartition alive.
    return np.concatenate([
        np.argpartition(-(np.asarray(q[start:start + block], np.float64) @ c.T), k - 1,
                        axis=1)[:, :k].copy()
        for start in range(0, len(q), block)])
  ref, other = top(queries_ref, corpus_ref), top(queries_other, corpus_other)
  overlap = np.array([len(set(a) & set(b)) / k for a, b in zip(ref, other)])
  return {"k": int(k), "queries": int(len(overlap)), "corpus": int(corpus_ref.shape[0]),
          "mean_overlap": float(overlap.mean()), "min_overlap": float(overlap.min())}


def gate(precision: str, compression: str, figures: Mapping[str, Any],
         thresholds: Thresholds) -> Dict[str, Any]:
  """The bar that applies to an option, and whether `figures` clear it.

  `figures` holds `query`, `candidate` (each from `compare`) and `top_k` (from
  `top_k_overlap`). Returns {"metric", "threshold", "value", "passed", "failures"}.
  """
  towers = ("query", "candidate")
  if compression != "none":
    metric, value = "top10_overlap", figures["top_k"]["mean_overlap"]
    passed = value >= thresholds.compressed_min_top10_overlap
    threshold, failures = thresholds.compressed_min_top10_overlap, [] if passed else [
        f"top-{figures['top_k']['k']} overlap {value:.4f} < "
        f"{thresholds.compressed_min_top10_overlap}"]
  elif precision == "float16":
    metric, threshold = "min_cosine", thresholds.float16_min_cosine
    value = min(figures[t]["min_cosine"] for t in towers)
    failures = [f"{t} tower min cosine {figures[t]['min_cosine']:.6f} < {threshold}"
                for t in towers if figures[t]["min_cosine"] < threshold]
  else:
    metric, threshold = "max_abs_error", thresholds.float32_max_abs_error
    value = max(figures[t]["max_abs_error"] for t in towers)
    failures = [f"{t} tower max abs error {figures[t]['max_abs_error']:.3g} > {threshold}"
                for t in towers if not figures[t]["max_abs_error"] <= threshold]
  return {"metric": metric, "threshold": threshold, "value": value, "passed": not failures,
          "failures": failures}


def _in_batches(embed: Callable[[Dict[str, np.ndarray]], np.ndarray],
                inputs: Mapping[str, np.ndarray], batch_size: int) -> np.ndarray:
  """embed(rows start:start + batch_size of every input) over all rows, concatenated."""
  n = len(next(iter(inputs.values())))
  return np.concatenate([embed({name: value[start:start + batch_size]
                                for name, value in inputs.items()})
                         for start in range(0, n, batch_size)])


def coreml_embed(emulator: mil_emulator.MilProgramEmulator, inputs: Mapping[str, np.ndarray],
                 batch_size: int = 4096) -> np.ndarray:
  """Embeddings from the emulated MIL program, in batches within the model's RangeDim."""
  return _in_batches(lambda feeds: emulator.predict(feeds)["embedding"],
                     {name: inputs[name] for name in emulator.input_names},
                     batch_size).astype(np.float32)


def _parity_examples(dataset: reader.DatasetDir, num_examples: int) -> Dict[str, np.ndarray]:
  """The first `num_examples` rows of the eval split, in file order."""
  ds = reader.interactions_dataset(dataset, "eval", batch_size=num_examples, shuffle=False,
                                   deterministic=True)
  batch = next(iter(ds.as_numpy_iterator()), None)
  if batch is None:
    raise ParityError(f"--dataset_dir: {dataset.path}: the eval split is empty: no rows "
                      "to check the conversion on")
  return batch


def verify(run: run_lib.Run, dataset: reader.DatasetDir, out: str, payload: Dict[str, Any],
           precision: str, compress: str, thresholds: Thresholds, *,
           num_examples: int, num_queries: int, batch_size: int) -> Dict[str, Any]:
  """Parity of the SAVED packages in `out` with the run's TF towers: the figures above on
  the first `num_examples` eval rows and the candidate corpus, and the bar's `gate`."""
  rows = _parity_examples(dataset, num_examples)
  corpus = reader.read_entities(dataset, "candidate")
  tf_emb, coreml_emb, core_figures, op_types = {}, {}, {}, {}
  for side in run_lib.SIDES:
    tower = payload["towers"][side]
    emulator = mil_emulator.MilProgramEmulator(os.path.join(out, tower["model"]))
    op_types[side] = emulator.op_types
    core = run.core(side).signatures["serving_default"]
    vocabularies = {}
    tf_emb[side], coreml_emb[side], core_out = [], [], []
    for raw in ([rows] if side == "query" else [rows, corpus]):
      inputs = features_json.preprocess_with_features_json(tower, raw, vocabularies)
      tf_emb[side].append(run.embed(side, raw))
      coreml_emb[side].append(coreml_embed(emulator, inputs, batch_size))
      # Conversion alone: the TF core on the very inputs the Core ML program got (in
      # batches: the whole corpus at once holds every hidden layer for every candidate).
      core_out.append(_in_batches(lambda feeds: core(**feeds)[run_lib.EMBEDDING].numpy(),
                                  inputs, batch_size))
    core_figures[side] = compare(np.concatenate(core_out), np.concatenate(coreml_emb[side]))
  towers = {side: compare(np.concatenate(tf_emb[side]), np.concatenate(coreml_emb[side]))
            for side in run_lib.SIDES}
  query_ids = np.asarray(rows["query_id"])
  _, first = np.unique(query_ids, return_index=True)
  chosen = np.sort(first)[:num_queries]
  top_k = top_k_overlap(tf_emb["query"][0][chosen], tf_emb["candidate"][1],
                        coreml_emb["query"][0][chosen], coreml_emb["candidate"][1],
                        k=thresholds.top_k)
  figures = {"query": towers["query"], "candidate": towers["candidate"], "top_k": top_k}
  return {"statement": "Core ML figures are an " + mil_emulator.STATEMENT + ".",
          "reference": "TF SavedModels <run>/query_model, <run>/candidate_model on raw "
                       "features; Core ML side: features.json preprocessing + the saved "
                       ".mlpackage",
          "precision": precision, "compression": compress,
          "examples": {"eval_rows": int(len(query_ids)), "candidate_corpus":
                       int(len(corpus["candidate_id"])), "queries_ranked": int(len(chosen))},
          "towers": towers, "top_k": top_k, "conversion_only": core_figures,
          "gate": gate(precision, compress, figures, thresholds),
          "thresholds": {"float32_max_abs_error": thresholds.float32_max_abs_error,
                         "float16_min_cosine": thresholds.float16_min_cosine,
                         "compressed_min_top10_overlap": thresholds.compressed_min_top10_overlap},
          "op_types": op_types}
