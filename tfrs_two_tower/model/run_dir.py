"""The run directory: what training writes and how every later stage reads it.

Evaluation, Core ML conversion, A/B analysis and embedding publishing use only
this module and the files; never training internals. Layout:

  <run>/
    manifest.json        kind, format_version, run_id, config_hash, dataset, embedding_dim,
                         temperature, sampling_probability, global_step, metrics, files (sha256)
    flags.json           the resolved training flags
    config.json          the config (copy of the dataset's)
    preprocessing.json   copy of the dataset's, with vocab/ (the run stands alone)
    query_model/         SavedModel `serving_default`: raw features by dataset key -> {"embedding"}
    candidate_model/
    query_core/          SavedModel `serving_default`: core inputs (int32/float32) -> {"embedding"}
    candidate_core/      (see `preprocessing` for the exact input rules)
    index/               SavedModel `serving_default`: raw query features + `exclude_ids`
                         [B, E] string (optional, "" = none) + `k` -> {"ids", "scores"}
    candidate_embeddings.npz   ids [N] str, embeddings [N, d] float32
    checkpoints/, logs/  (training state and TensorBoard; not covered by the checksums)

Usage:
  run = run_dir.open_run("/tmp/run_default")
  q = run.embed("query", {"query_id": [...], "query_age": [...], ...})   # [B, d]
  ids, c = run.candidate_embeddings()                                   # [N], [N, d]
  scores = q @ c.T
"""

import dataclasses
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from tfrs_two_tower import config as config_lib
from tfrs_two_tower import files
from tfrs_two_tower.model import preprocessing as prep

KIND = "tfrs_two_tower.run"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FLAGS = "flags.json"
CONFIG = "config.json"
PREPROCESSING = "preprocessing.json"
VOCAB_DIR = "vocab"
CANDIDATE_EMBEDDINGS = "candidate_embeddings.npz"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
INDEX = "index"
SIDES = config_lib.SIDES
EMBEDDING = "embedding"
# Training state and logs change after the manifest is written (TensorBoard may
# append); they are not part of the verified artifact.
UNVERIFIED_DIRS = (CHECKPOINTS, LOGS)


def model_dir(side: str) -> str:
  """Relative path of a side's raw-feature SavedModel."""
  return f"{_check_side(side)}_model"


def core_dir(side: str) -> str:
  """Relative path of a side's numeric-core SavedModel (what Core ML converts)."""
  return f"{_check_side(side)}_core"


def _check_side(side: str) -> str:
  if side not in SIDES:
    raise ValueError(f"side must be one of {SIDES}, got {side!r}")
  return side


class RunFormatError(ValueError):
  """A run directory that cannot be used; the message names the file."""


def artifact_checksums(path: str) -> Dict[str, Dict[str, Any]]:
  """sha256 of every artifact file of a run (checkpoints and logs excluded)."""
  sums = files.file_checksums(path)
  return {rel: v for rel, v in sums.items()
          if rel.split(os.sep, 1)[0] not in UNVERIFIED_DIRS}


def save_candidate_embeddings(path: str, ids: np.ndarray, embeddings: np.ndarray) -> None:
  np.savez(path, ids=np.asarray(ids, dtype=str),
           embeddings=np.asarray(embeddings, dtype=np.float32))


@dataclasses.dataclass
class Run:
  """A verified run directory (use `open_run`)."""
  path: str
  manifest: Dict[str, Any]
  flags: Dict[str, Any]
  config: config_lib.Config
  preprocessing: Dict[str, Any]
  _loaded: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

  def file(self, relative: str) -> str:
    return os.path.join(self.path, relative)

  @property
  def embedding_dim(self) -> int:
    return int(self.manifest["embedding_dim"])

  def _load(self, relative: str):
    if relative not in self._loaded:
      import tensorflow as tf
      if relative == INDEX and self.manifest.get("index", {}).get("type") == "scann":
        import scann  # noqa: F401  (registers the Scann ops before loading)
      self._loaded[relative] = tf.saved_model.load(self.file(relative))
    return self._loaded[relative]

  def model(self, side: str):
    """The raw-feature SavedModel of a side (call `.signatures["serving_default"]`)."""
    return self._load(model_dir(side))

  def core(self, side: str):
    """The numeric-core SavedModel of a side."""
    return self._load(core_dir(side))

  def index(self):
    """The top-k SavedModel: `index().signatures["serving_default"](**query_features,
    exclude_ids=..., k=...)` -> {"ids" [B, k] str, "scores" [B, k]}."""
    return self._load(INDEX)

  def feature_specs(self, side: str):
    """Per-feature preprocessing specs (with vocabulary tokens), as the towers use them."""
    return prep.side_feature_specs(self.config, self.preprocessing, self.path, side)

  def raw_input_specs(self, side: str):
    """Name -> tf.TensorSpec of the `<side>_model` signature."""
    return dict(self.model(side).signatures["serving_default"].structured_input_signature[1])

  def core_input_specs(self, side: str):
    """Name -> tf.TensorSpec of the `<side>_core` signature."""
    return dict(self.core(side).signatures["serving_default"].structured_input_signature[1])

  def embed(self, side: str, features: Mapping[str, Any], batch_size: int = 8192) -> np.ndarray:
    """[N, d] float32 embeddings (L2-normalised, + the bias column with --candidate_bias)
    of raw features keyed by dataset key.

    `features` holds at least the side's keys (extra keys are ignored): arrays
    or lists of str for ids/categoricals, [N, L] arrays or lists of lists of str
    for multi-valued features, floats (NaN = missing), [N, 2] lat/lon.
    """
    import tensorflow as tf
    signature = self.model(side).signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    arrays = {}
    for key, spec in specs.items():
      if key not in features:
        raise KeyError(f"embed({side!r}): missing feature {key!r} (needs {sorted(specs)})")
      value = features[key]
      if spec.dtype == tf.string:
        if spec.shape.rank == 2 and not (isinstance(value, np.ndarray) and value.ndim == 2):
          width = max([len(v) for v in value] + [1])
          value = [list(v) + [""] * (width - len(v)) for v in value]
        arrays[key] = np.asarray(value, dtype=object)
      else:
        arrays[key] = np.asarray(value, dtype=np.float32)
    n = len(next(iter(arrays.values())))
    if n == 0:
      return np.zeros((0, self.embedding_dim), np.float32)
    out = []
    for start in range(0, n, batch_size):
      batch = {k: tf.constant(v[start:start + batch_size]) for k, v in arrays.items()}
      out.append(signature(**batch)[EMBEDDING].numpy())
    return np.concatenate(out).astype(np.float32)

  def candidate_embeddings(self) -> Tuple[np.ndarray, np.ndarray]:
    """(ids [N] str, embeddings [N, d] float32) of every candidate of the dataset."""
    if CANDIDATE_EMBEDDINGS not in self._loaded:
      with np.load(self.file(CANDIDATE_EMBEDDINGS)) as data:
        self._loaded[CANDIDATE_EMBEDDINGS] = (data["ids"].astype(str),
                                              data["embeddings"].astype(np.float32))
    return self._loaded[CANDIDATE_EMBEDDINGS]


def open_run(path: str, verify_checksums: bool = True,
             dataset_config_hash: Optional[str] = None) -> Run:
  """Reads and verifies a run directory.

  Args:
    path: the run directory.
    verify_checksums: hash every artifact file against the manifest.
    dataset_config_hash: when given, refuse a run made with another config.
  Raises:
    RunFormatError naming the file and the problem.
  """
  manifest_path = os.path.join(path, MANIFEST)
  if not os.path.isdir(path):
    raise RunFormatError(f"{path}: no such run directory")
  if not os.path.exists(manifest_path):
    raise RunFormatError(f"{manifest_path}: missing; {path} is not a complete run directory")
  try:
    manifest = files.read_json(manifest_path)
  except ValueError as e:
    raise RunFormatError(f"{manifest_path}: not valid JSON ({e})") from None
  if manifest.get("kind") != KIND:
    raise RunFormatError(f"{manifest_path}: kind {manifest.get('kind')!r} is not {KIND!r}")
  if manifest.get("format_version") != FORMAT_VERSION:
    raise RunFormatError(f"{manifest_path}: format_version {manifest.get('format_version')!r} "
                         f"is not supported (supports {FORMAT_VERSION})")
  files.verify_listed_files(path, manifest.get("files", {}), verify_checksums, RunFormatError)
  try:
    config = config_lib.load_config(os.path.join(path, CONFIG))
  except config_lib.ConfigError as e:
    raise RunFormatError(str(e)) from None
  if config.hash != manifest.get("config_hash"):
    raise RunFormatError(f"{os.path.join(path, CONFIG)}: config hash {config.hash[:12]} != "
                         f"manifest {str(manifest.get('config_hash'))[:12]}")
  if dataset_config_hash is not None and dataset_config_hash != config.hash:
    raise RunFormatError(f"{path}: the run was trained with config {config.hash[:12]}, the "
                         f"dataset has config {dataset_config_hash[:12]}: they do not belong "
                         "together")
  return Run(path=path, manifest=manifest, flags=files.read_json(os.path.join(path, FLAGS)),
             config=config, preprocessing=files.read_json(os.path.join(path, PREPROCESSING)))
