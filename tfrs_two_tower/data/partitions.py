"""Partitioned exports and their combination into one dataset.

`export_data.py --num_partitions=P --partition=p` writes the swipes of the query
ids in hash partition p (`sources.partition_of`) with the **whole** entity
tables. Its output is a dataset directory of that slice plus a `partition/`
folder: the writer's additive counters and the raw entity tables. Because every
statistic of a dataset is a sum of per-entity counters over the train split
(see `writer`), summing the P partitions' counters and concatenating their
shards gives the same vocabularies, normalisation constants, candidate counts,
stats and readiness report as one export of everything; only the number of
shards differs.

  partition/partition.json           count, index, scalar counters
  partition/counters.npz             per-entity counters
  partition/query_entities.parquet   raw entity tables (candidate_entities.parquet
                                     too when the sides are different entities)
"""

import os
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import pandas as pd

from tfrs_two_tower import files
from tfrs_two_tower.data import dataset_format as fmt
from tfrs_two_tower.data import reader
from tfrs_two_tower.data import readiness
from tfrs_two_tower.data import sources
from tfrs_two_tower.data import writer as writer_lib


def _load(path: str) -> Dict[str, Any]:
  try:
    dataset = reader.open_dataset(path)
  except reader.DatasetFormatError as e:
    raise sources.PartitionError(str(e)) from None
  meta_path = dataset.file(fmt.PARTITION_JSON)
  if not os.path.exists(meta_path):
    raise sources.PartitionError(f"{path}: not a partition export (no {fmt.PARTITION_JSON}); "
                                 "export with --num_partitions/--partition")
  meta = files.read_json(meta_path)
  with np.load(dataset.file(fmt.PARTITION_COUNTERS)) as npz:
    meta["counters"].update({k: npz[k] for k in npz.files})
  meta["dataset"] = dataset
  return meta


def combine(partition_dirs: Sequence[str], output_dir: str, *,
            min_users: int = readiness.DEFAULT_MIN_USERS,
            min_interactions: int = readiness.DEFAULT_MIN_INTERACTIONS, force: bool = False,
            readiness_path: Optional[str] = None, overwrite: bool = False,
            log: Callable[[str], None] = print) -> Dict[str, Any]:
  """Combines the P partition exports into one dataset at `output_dir`; returns its stats.

  Refuses (PartitionError) a set that is incomplete, has a partition twice, or
  was exported with different configs, split times or entity tables (the
  entity files' sha256 must agree: partitions exported at different times from
  a changing database do not belong together). Shards are hard-linked when the
  file system allows, else copied; the inputs are left untouched.
  """
  parts = sorted((_load(p) for p in partition_dirs), key=lambda m: m["index"])
  if not parts:
    raise sources.PartitionError("no partition directories given")
  count = parts[0]["count"]
  indices = [m["index"] for m in parts]
  if any(m["count"] != count for m in parts) or indices != list(range(count)):
    raise sources.PartitionError(
        f"partitions {indices} of {sorted({m['count'] for m in parts})}: need each of 0.."
        f"{count - 1} of one --num_partitions exactly once")
  first = parts[0]["dataset"]
  for m in parts[1:]:
    d = m["dataset"]
    for what, a, b in (("config", first.manifest["config_hash"], d.manifest["config_hash"]),
                       ("split time", first.manifest["split_time"], d.manifest["split_time"]),
                       ("validation time", first.manifest["validation_time"],
                        d.manifest["validation_time"])):
      if a != b:
        raise sources.PartitionError(f"{d.path} and {first.path} have different {what}s "
                                     f"({b} vs {a}); export every partition with the same "
                                     "--config, --split_time and validation window")
    for name in fmt.ENTITY_FILES.values():
      if first.manifest["files"][name]["sha256"] != d.manifest["files"][name]["sha256"]:
        raise sources.PartitionError(
            f"{d.path} and {first.path} were exported from different entity tables ({name} "
            "differs): the data changed between the partition exports; export them again")
  config = first.config
  queries = pd.read_parquet(first.file(fmt.PARTITION_RAW_ENTITIES["query"]))
  candidates = (queries if config.same_entity_both_sides
                else pd.read_parquet(first.file(fmt.PARTITION_RAW_ENTITIES["candidate"])))
  shard_files = {split: [f for m in parts for f in m["dataset"].shards(split)]
                 for split in fmt.SPLITS}
  writer = writer_lib.DatasetWriter(
      config, output_dir, int(first.manifest["split_time"]), queries, candidates,
      validation_time=int(first.manifest["validation_time"]),
      query_source=f"{first.path} query entities",
      candidate_source=f"{first.path} candidate entities",
      num_train_shards=len(shard_files["train"]), num_eval_shards=len(shard_files["eval"]),
      num_validation_shards=len(shard_files["validation"]),
      min_users=min_users, min_interactions=min_interactions,
      source_description={"kind": "partitions", "count": count,
                          "partitions": [m["dataset"].manifest["source"] for m in parts]},
      overwrite=overwrite)
  for m in parts:
    writer.add_counters(m["counters"])
  writer.shard_rows = {split: [n for m in parts for n in m["shard_rows"][split]]
                       for split in fmt.SPLITS}
  stats = writer.stats()
  sources.readiness_gate(stats["readiness"], force,
                readiness_path or output_dir.rstrip("/") + ".readiness.json", log)
  with files.atomic_directory(output_dir, overwrite=overwrite) as tmp:
    for split in fmt.SPLITS:
      names = fmt.shard_names(split, len(shard_files[split]))
      for src, name in zip(shard_files[split], names):
        files.link_or_copy(src, os.path.join(tmp, name))
    writer.finalize(tmp)
  log(f"combine: {count} partitions -> {output_dir}: train {stats['rows']['train']:,}, "
      f"validation {stats['rows']['validation']:,}, eval {stats['rows']['eval']:,} interactions")
  return stats

