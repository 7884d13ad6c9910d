"""Names and layout of the dataset directory (the contract between the stages).

  <dataset>/
    manifest.json           format version, config hash, counts, split time, sha256 of every file
    config.json             the config the dataset was written with
    stats.json              counts, label balance, time range, readiness report (+ oracle AUC
                            for synthetic worlds)
    preprocessing.json      per feature key: vocabulary file and size, OOV buckets,
                            normalisation constants, geo cell size, max_length
    vocab/<key>.tsv         "token<TAB>count", most frequent first (train split counts)
    candidate_counts.tsv    candidate_id, train interactions, train positives (static logQ)
    interactions-train.tfrecord-0000i-of-0000n   gzip TFRecord shards, one Example per swipe
    interactions-validation.tfrecord-...         time split: train = timestamp < validation_time,
    interactions-eval.tfrecord-0000i-of-0000m    validation = [validation_time, split_time),
                                                 eval = timestamp >= split_time
    entities/candidates.tfrecord.gz   every candidate entity (the corpus), candidate_* keys
    entities/queries.tfrecord.gz      every query entity, query_* keys
    dataset_info.json, features.json  TFDS metadata (`tfds.builder_from_directory`)
"""

import os
from typing import List

import pandas as pd

# 2: a validation split (the last part of train by time) for model selection.
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (2,)
DATASET_NAME = "interactions"
SPLITS = ("train", "validation", "eval")
MANIFEST = "manifest.json"
CONFIG = "config.json"
STATS = "stats.json"
PREPROCESSING = "preprocessing.json"
VOCAB_DIR = "vocab"
CANDIDATE_COUNTS = "candidate_counts.tsv"
ENTITY_FILES = {"candidate": os.path.join("entities", "candidates.tfrecord.gz"),
                "query": os.path.join("entities", "queries.tfrecord.gz")}
COMPRESSION = "GZIP"
# The eligibility rules' attributes of each side (`eligibility.Attributes`, npz) and the
# blocked pairs (npz of query_ids / candidate_ids); present when the config has eligibility.
ELIGIBILITY_FILES = {side: os.path.join("entities", f"eligibility_{side}.npz")
                     for side in ("query", "candidate")}
BLOCKED_PAIRS = os.path.join("entities", "blocked_pairs.npz")

# A partition export (`export_data.py --partition`) adds this folder; `partitions.combine`
# reads it (see data/partitions.py).
PARTITION_DIR = "partition"
PARTITION_JSON = os.path.join(PARTITION_DIR, "partition.json")
PARTITION_COUNTERS = os.path.join(PARTITION_DIR, "counters.npz")
PARTITION_RAW_ENTITIES = {
    "query": os.path.join(PARTITION_DIR, "query_entities.parquet"),
    "candidate": os.path.join(PARTITION_DIR, "candidate_entities.parquet")}


def shard_name(split: str, index: int, num_shards: int) -> str:
  """TFDS's default template `{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}`."""
  return f"{DATASET_NAME}-{split}.tfrecord-{index:05d}-of-{num_shards:05d}"


def shard_names(split: str, num_shards: int) -> List[str]:
  return [shard_name(split, i, num_shards) for i in range(num_shards)]


def vocab_file(key: str) -> str:
  return os.path.join(VOCAB_DIR, f"{key}.tsv")


def read_tsv_counts(path: str) -> pd.DataFrame:
  """Reads a vocabulary TSV ("token<TAB>count", no header) keeping tokens as strings."""
  return pd.read_csv(path, sep="\t", header=None, names=["token", "count"], dtype={"token": str},
                     keep_default_na=False, quoting=3)
