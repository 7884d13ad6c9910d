"""Opens a dataset directory, verifies it, and builds `tf.data` pipelines over it.

`open_dataset` refuses, with a message naming the file, a directory without a
manifest, of an unknown format version, with a missing file or a checksum
mismatch (a corrupt or truncated shard). Everything downstream (training,
evaluation, conversion) goes through it.
"""

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from tfrs_two_tower import config as config_lib
from tfrs_two_tower import features as features_lib
from tfrs_two_tower import files
from tfrs_two_tower.data import dataset_format as fmt


class DatasetFormatError(ValueError):
  """A dataset directory that cannot be read safely; the message names the file."""


@dataclasses.dataclass
class DatasetDir:
  """A verified dataset directory.

  Attributes:
    path: the directory.
    manifest, stats, preprocessing: the parsed JSON files.
    config: the config the dataset was written with.
  """
  path: str
  manifest: Dict[str, Any]
  stats: Dict[str, Any]
  preprocessing: Dict[str, Any]
  config: config_lib.Config

  def file(self, relative: str) -> str:
    return os.path.join(self.path, relative)

  def shards(self, split: str) -> List[str]:
    if split not in fmt.SPLITS:
      raise ValueError(f"unknown split {split!r} (expected one of {fmt.SPLITS})")
    return [self.file(s["file"]) for s in self.manifest["shards"][split]]

  def num_rows(self, split: str) -> int:
    return int(self.manifest["rows"][split])

  def vocabulary(self, key: str) -> List[str]:
    """Tokens of a feature's vocabulary, most frequent first."""
    return self.vocabulary_counts(key)["token"].tolist()

  def vocabulary_counts(self, key: str):
    spec = self.preprocessing.get(key)
    if not spec or "vocabulary" not in spec:
      raise KeyError(f"{self.path}: feature {key!r} has no vocabulary")
    return fmt.read_tsv_counts(self.file(spec["vocabulary"]))

  def candidate_counts(self):
    import pandas as pd
    return pd.read_csv(self.file(fmt.CANDIDATE_COUNTS), sep="\t", dtype={"candidate_id": str},
                       keep_default_na=False)


def open_dataset(path: str, verify_checksums: bool = True) -> DatasetDir:
  """Reads and verifies a dataset directory.

  Args:
    path: the dataset directory.
    verify_checksums: hash every file against the manifest (sizes are always
      checked). Turn off only for very large datasets already verified once.
  Raises:
    DatasetFormatError naming the problem and the file.
  """
  manifest_path = os.path.join(path, fmt.MANIFEST)
  if not os.path.isdir(path):
    raise DatasetFormatError(f"{path}: no such dataset directory")
  if not os.path.exists(manifest_path):
    raise DatasetFormatError(f"{manifest_path}: missing; {path} is not a complete dataset "
                             "(an interrupted export leaves no manifest): run the export again")
  try:
    manifest = files.read_json(manifest_path)
  except ValueError as e:
    raise DatasetFormatError(f"{manifest_path}: not valid JSON ({e})") from None
  version = manifest.get("format_version")
  if version == 1:
    raise DatasetFormatError(f"{manifest_path}: format_version 1 has no validation split, which "
                             "training now selects its model on: export the dataset again "
                             "(export_data.py or generate_world.py) with this tfrs_two_tower")
  if version not in fmt.SUPPORTED_FORMAT_VERSIONS:
    raise DatasetFormatError(f"{manifest_path}: format_version {version!r} is not supported "
                             f"by this tfrs_two_tower (supports {fmt.SUPPORTED_FORMAT_VERSIONS})")
  files.verify_listed_files(path, manifest.get("files", {}), verify_checksums,
                            DatasetFormatError)
  try:
    config = config_lib.load_config(os.path.join(path, fmt.CONFIG))
  except config_lib.ConfigError as e:
    raise DatasetFormatError(str(e)) from None
  if config.hash != manifest.get("config_hash"):
    raise DatasetFormatError(f"{os.path.join(path, fmt.CONFIG)}: config hash {config.hash[:12]} "
                             f"!= manifest {str(manifest.get('config_hash'))[:12]}")
  return DatasetDir(path=path, manifest=manifest,
                    stats=files.read_json(os.path.join(path, fmt.STATS)),
                    preprocessing=files.read_json(os.path.join(path, fmt.PREPROCESSING)),
                    config=config)


def check_config_matches(dataset: DatasetDir, config_hash: str, what: str) -> None:
  """Refuses to combine a dataset with an artifact made from another config."""
  if dataset.manifest["config_hash"] != config_hash:
    raise DatasetFormatError(
        f"{what} was made with config {config_hash[:12]} but the dataset {dataset.path} with "
        f"config {dataset.manifest['config_hash'][:12]}: they do not belong together")


def check_same_candidates(dataset: DatasetDir, candidate_ids: Sequence[str], what: str) -> None:
  """Refuses an artifact whose candidates are not the dataset's (another world, same config).

  Args:
    candidate_ids: [N] the candidate ids the artifact was made for (a run's corpus).
  """
  mine = set(read_entities(dataset, "candidate")["candidate_id"].astype(str))
  theirs = set(map(str, candidate_ids))
  if mine != theirs:
    raise DatasetFormatError(
        f"{what} was made for {len(theirs):,} candidates, the dataset {dataset.path} has "
        f"{len(mine):,} and they share {len(mine & theirs):,}: the two come from different data "
        "and do not belong together (use the dataset the run was trained on)")


def interactions_dataset(dataset: DatasetDir, split: str, batch_size: int, *,
                         shuffle: bool = True, shuffle_buffer: int = 50_000,
                         seed: Optional[int] = None, repeat: bool = False,
                         deterministic: bool = False, drop_remainder: bool = False,
                         labels: Optional[Sequence[int]] = None,
                         num_parallel_reads: Optional[int] = None,
                         keys: Optional[Sequence[str]] = None):
  """A batched `tf.data.Dataset` of interaction records.

  Pipeline: shard list (shuffled) -> parallel interleave of gzip TFRecord
  readers -> shuffle -> batch -> vectorised parse -> optional label filter ->
  prefetch. Parsing after batching is one `parse_example` call per batch (the
  fast path).

  Args:
    split: "train", "validation" or "eval".
    labels: keep only these labels (e.g. [1] for likes); filtering happens after
      parsing, so batches may then be smaller than `batch_size`.
    deterministic: fixed element order for a given seed (slower interleave).
    keys: parse only these record keys (faster; e.g. ids and targets when the
      features come from the entity tables); default all.
  Yields:
    dicts of dense tensors: `<side>_<feature>` ([B] strings / floats, [B, L]
    strings for multi-categorical, [B, 2] for geo), `query_id`, `candidate_id`,
    `label` (int64), `weight`, `timestamp` (int64), `action`.
  """
  import tensorflow as tf
  shards = dataset.shards(split)
  if not shards:
    raise DatasetFormatError(f"{dataset.path}: split {split!r} has no shards")
  spec = features_lib.parse_spec(dataset.config)
  if keys is not None:
    spec = {k: v for k, v in spec.items() if k in set(keys)}
  autotune = tf.data.AUTOTUNE
  files_ds = tf.data.Dataset.from_tensor_slices(shards)
  if shuffle:
    files_ds = files_ds.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)
  ds = files_ds.interleave(
      lambda f: tf.data.TFRecordDataset(f, compression_type=fmt.COMPRESSION),
      cycle_length=min(len(shards), num_parallel_reads or len(shards)),
      num_parallel_calls=autotune, deterministic=deterministic)
  if shuffle:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  config = dataset.config
  ds = ds.map(lambda b: features_lib.densify(config, tf.io.parse_example(b, spec)),
              num_parallel_calls=autotune, deterministic=deterministic)
  if labels is not None:
    wanted = tf.constant(list(labels), tf.int64)

    def _keep(batch):
      mask = tf.reduce_any(tf.equal(batch[features_lib.LABEL][:, None], wanted[None, :]), axis=1)
      return {k: tf.boolean_mask(v, mask) for k, v in batch.items()}
    ds = ds.map(_keep, num_parallel_calls=autotune, deterministic=deterministic)
  options = tf.data.Options()
  options.deterministic = deterministic
  return ds.with_options(options).prefetch(autotune)


def entity_dataset(dataset: DatasetDir, side: str, batch_size: int = 4096):
  """Batches of one side's entity table (features + `created_at`), in file order."""
  import tensorflow as tf
  spec = features_lib.parse_spec(dataset.config, sides=(side,), interaction=False,
                                 entity_table=True)
  ds = tf.data.TFRecordDataset(dataset.file(fmt.ENTITY_FILES[side]),
                               compression_type=fmt.COMPRESSION)
  config = dataset.config
  return ds.batch(batch_size).map(
      lambda b: features_lib.densify(config, tf.io.parse_example(b, spec), sides=(side,)))


def read_entities(dataset: DatasetDir, side: str) -> Dict[str, np.ndarray]:
  """One side's whole entity table as numpy arrays (strings decoded to str)."""
  parts: Dict[str, list] = {}
  for batch in entity_dataset(dataset, side).as_numpy_iterator():
    for key, value in batch.items():
      parts.setdefault(key, []).append(value)
  out = {}
  for key, chunks in parts.items():
    value = np.concatenate(chunks) if chunks else np.array([])
    if value.dtype == object:
      value = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(value) \
          if value.size else value
    out[key] = value
  return out


def read_interactions(dataset: DatasetDir, split: str,
                      keys: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
  """A whole split in memory as numpy arrays, in file order (for evaluation)."""
  parts: Dict[str, list] = {}
  ds = interactions_dataset(dataset, split, batch_size=8192, shuffle=False, deterministic=True)
  for batch in ds.as_numpy_iterator():
    for key in keys or batch.keys():
      parts.setdefault(key, []).append(batch[key])
  out = {}
  for key, chunks in parts.items():
    value = np.concatenate(chunks)
    if value.dtype == object:
      value = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(value)
    out[key] = value
  return out


def tfds_dataset(path: str, split: str):
  """A split as TFDS gives it: `tfds.builder_from_directory` supplies the metadata.

  TFDS's TFRecord adapter reads uncompressed files only and ours are gzip, so the
  shards that the builder's split info counts are read by `tf.data` and decoded
  by the builder's own `FeaturesDict` (`deserialize_example`): TFDS's feature
  spec and split sizes, nothing of TFDS patched.
  Returns: tf.data.Dataset of feature dicts, one per interaction, in shard order.
  """
  import tensorflow as tf
  import tensorflow_datasets as tfds
  builder = tfds.builder_from_directory(path)
  num_shards = len(builder.info.splits[split].shard_lengths)
  shards = [os.path.join(path, name) for name in fmt.shard_names(split, num_shards)]
  return tf.data.TFRecordDataset(shards, compression_type=fmt.COMPRESSION).map(
      builder.info.features.deserialize_example)
