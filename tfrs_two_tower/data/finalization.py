"""Finalisation of a dataset directory: vocabularies, numeric fits and metadata.

Everything here derives from a `DatasetWriter`'s additive counters over the
**train** split only (validation and eval excluded), so partitions written
separately and summed finalise to the same files as one export:

  vocabulary of a feature = its tokens with train count >= min_count, by count
      descending then token (at most max_vocab_size);
  numeric constants = mean and std of the transformed values (log1p for
      log_zscore), each entity weighted by its train interactions;
  stats.json, candidate_counts.tsv, entity tables, TFDS metadata, manifest.json.
"""

import collections
import logging
import os
from typing import Any, Dict, Optional

import numpy as np
import pandas as pd

from tfrs_two_tower import __version__
from tfrs_two_tower import config as config_lib
from tfrs_two_tower import eligibility as eligibility_lib
from tfrs_two_tower import features as features_lib
from tfrs_two_tower import files
from tfrs_two_tower.data import dataset_format as fmt
from tfrs_two_tower.data import example_codec
from tfrs_two_tower.data import history as history_lib
from tfrs_two_tower.data import readiness

ELIGIBILITY_SAMPLE = 20_000  # query users checked exactly for "no eligible candidate"
# ... and at most this many (query, candidate) pairs: at 1M candidates 20,000 users took
# 11 minutes of a 1M-user export; 2,000 users still give the share within +-0.4 points
# near the 1 % warning line (95 %; +-2.2 at worst), enough for ELIGIBILITY_WARN_SHARE.
ELIGIBILITY_PAIRS = 2_000_000_000
ELIGIBILITY_WARN_SHARE = 0.01  # warn when more users than this share have none


def write_all(writer, out: str) -> None:
  """Everything of the dataset directory but the interaction shards, into `out`:
  vocabularies and numeric constants (preprocessing.json), entity tables, rule
  attributes, candidate counts, stats.json, config.json, TFDS metadata, and last
  manifest.json over all the files. `writer`: a `DatasetWriter` whose counters are
  complete (one export, or the sum of partitions)."""
  os.makedirs(os.path.join(out, fmt.VOCAB_DIR))
  os.makedirs(os.path.join(out, "entities"))
  preprocessing = {}
  for side, table, counts in (("query", writer.queries, writer.query_train),
                              ("candidate", writer.candidates, writer.candidate_train)):
    for feature in writer.config.features(side):
      preprocessing[feature.key(side)] = _preprocess_feature(out, side, feature, table,
                                                                  counts)
    _write_entities(out, side, table)
  _write_rule_attributes(writer, out)
  if writer.config.history:
    preprocessing.update(history_lib.preprocessing_entries(
        writer.config.history, preprocessing[features_lib.CANDIDATE_ID]))
  files.write_json(os.path.join(out, fmt.PREPROCESSING), preprocessing)
  _write_candidate_counts(writer, out)
  files.write_json(os.path.join(out, fmt.STATS), stats(writer))
  with open(os.path.join(out, fmt.CONFIG), "w", encoding="utf-8") as f:
    f.write(writer.config.to_json() + "\n")
  _write_tfds_metadata(writer, out)
  manifest = {
      "format_version": fmt.FORMAT_VERSION,
      "kind": "tfrs_two_tower.dataset",
      "created_by": {"package": "tfrs_two_tower", "version": __version__},
      "config_hash": writer.config.hash,
      "source": writer.source_description,
      "split_time": writer.split_time,
      "validation_time": writer.validation_time,
      "time_range": writer.time_range,
      "rows": dict(writer.rows),
      "shards": {split: [{"file": name, "rows": n} for name, n in
                         zip(fmt.shard_names(split, writer.num_shards[split]),
                             writer.shard_rows[split])]
                 for split in fmt.SPLITS},
      "entities": {"query": len(writer.queries), "candidate": len(writer.candidates)},
      "files": files.file_checksums(out),
  }
  files.write_json(os.path.join(out, fmt.MANIFEST), manifest)


def _preprocess_feature(out: str, side: str, feature: config_lib.Feature, table,
                        counts: np.ndarray) -> Dict[str, Any]:
  key = feature.key(side)
  spec: Dict[str, Any] = {"type": feature.type, "side": side, "name": feature.name}
  if feature.type == "numeric":
    spec.update(_numeric_constants(feature, table.values[key], counts))
    return spec
  if feature.type == "id":
    tokens = pd.Series(counts, index=table.ids)
  elif feature.type == "categorical":
    tokens = pd.Series(counts).groupby(table.values[key]).sum()
  elif feature.type == "multi_categorical":
    lists = table.values[key]
    lengths = np.fromiter((len(v) for v in lists), np.int64, len(lists))
    flat = [t for v in lists for t in v[:feature.max_length]]
    clipped = np.minimum(lengths, feature.max_length)
    tokens = pd.Series(np.repeat(counts, clipped)).groupby(np.array(flat, dtype=object)).sum() \
        if flat else pd.Series(dtype=np.int64)
  else:  # geo
    cells = features_lib.geo_cell_tokens(table.values[key][:, 0], table.values[key][:, 1],
                                         feature.cell_degrees)
    tokens = pd.Series(counts).groupby(cells).sum()
    spec["cell_degrees"] = feature.cell_degrees
  tokens = tokens[(tokens >= feature.min_count) & (tokens.index != features_lib.MISSING_TOKEN)]
  frame = pd.DataFrame({"token": tokens.index.astype(str), "count": tokens.to_numpy()})
  frame = frame.sort_values(["count", "token"], ascending=[False, True], kind="stable")
  if feature.max_vocab_size:
    frame = frame.iloc[:feature.max_vocab_size]
  path = fmt.vocab_file(key)
  _write_tsv(os.path.join(out, path), frame)
  spec.update(vocabulary=path, vocab_size=int(len(frame)),
              num_oov_buckets=feature.num_oov_buckets)
  if feature.type == "multi_categorical":
    spec.update(max_length=feature.max_length, pooling=feature.pooling)
  return spec


def _write_entities(out: str, side: str, table) -> None:
  import tensorflow as tf
  created = [example_codec.int64_entry(features_lib.CREATED_AT, max(int(t), 0))
             if t >= 0 else b"" for t in table.created_at]
  options = tf.io.TFRecordOptions(compression_type=fmt.COMPRESSION)
  with tf.io.TFRecordWriter(os.path.join(out, fmt.ENTITY_FILES[side]), options) as w:
    for features_bytes, created_bytes in zip(table.serialized, created):
      w.write(example_codec.example((features_bytes, created_bytes)))


def _write_rule_attributes(writer, out: str) -> None:
  for side, attributes in writer.rule_attributes.items():
    attributes.save(os.path.join(out, fmt.ELIGIBILITY_FILES[side]))
  if writer.config.eligibility is not None and writer.config.eligibility.blocked is not None:
    pairs = writer.blocked_pairs if writer.blocked_pairs is not None else pd.DataFrame(
        {c: [] for c in (writer.config.eligibility.blocked.query_id_column,
                         writer.config.eligibility.blocked.candidate_id_column)})
    query_ids, candidate_ids = eligibility_lib.blocked_pairs(pairs, writer.config.eligibility)
    with open(os.path.join(out, fmt.BLOCKED_PAIRS), "wb") as f:
      np.savez(f, query_ids=query_ids.astype(str), candidate_ids=candidate_ids.astype(str))


def _eligibility_stats(writer) -> Optional[Dict[str, Any]]:
  """Users left without any eligible candidate (the rules' masks; exact up to
  ELIGIBILITY_SAMPLE query users and ELIGIBILITY_PAIRS pairs, estimated on a
  seeded sample beyond)."""
  if len(writer.rule_attributes) < 2:
    return None
  rules = eligibility_lib.for_tables(writer.config, writer.rule_attributes["query"],
                                     writer.rule_attributes["candidate"], now=writer.split_time)
  n = len(writer.rule_attributes["query"])
  rows = np.arange(n)
  sample = min(ELIGIBILITY_SAMPLE,
               max(1_000, ELIGIBILITY_PAIRS // max(len(writer.rule_attributes["candidate"]), 1)))
  if n > sample:
    rows = np.sort(np.random.default_rng(0).choice(n, sample, replace=False))
  without = rules.users_without_candidates(rows) * n / rows.size
  share = without / max(n, 1)
  if share > ELIGIBILITY_WARN_SHARE:
    logging.warning("eligibility rules leave %.1f%% of the users (%d) with no eligible candidate",
                100 * share, round(without))
  return {"rules": writer.config.eligibility.names,
          "users_without_candidates": int(round(without)),
          "users_without_candidates_share": round(share, 4),
          "estimated_from_sample": bool(rows.size < n),
          "warnings": writer.rule_warnings}


def _write_candidate_counts(writer, out: str) -> None:
  """candidate_counts.tsv: train interactions and likes per candidate, most liked first."""
  frame = pd.DataFrame({"candidate_id": writer.candidates.ids.astype(str),
                        "interactions": writer.candidate_train,
                        "positives": writer.candidate_train_positive})
  frame = frame.sort_values(["positives", "interactions", "candidate_id"],
                            ascending=[False, False, True], kind="stable")
  _write_tsv(os.path.join(out, fmt.CANDIDATE_COUNTS), frame, header=True)


def stats(writer) -> Dict[str, Any]:
  """stats.json from the writer's counters: rows, labels, actions, dropped, entities,
  the readiness report, eligibility figures and the writer's `extra_stats`."""
  created = writer.queries.created_at
  weekly_new = collections.Counter((created[created >= 0] // readiness.SECONDS_PER_WEEK).tolist())
  report = readiness.readiness_report(
      writer.query_all, positives=sum(writer.labels[s][1] for s in fmt.SPLITS),
      negatives=sum(writer.labels[s][0] for s in fmt.SPLITS),
      weekly_interactions=writer.weekly, weekly_new_users=weekly_new,
      min_users=writer.min_users, min_interactions=writer.min_interactions)
  new_query = int(((writer.query_train == 0) & (writer.query_all > 0)).sum())
  stats = {
      "rows": dict(writer.rows),
      "labels": {s: {"negative": n, "positive": p} for s, (n, p) in writer.labels.items()},
      "actions": {s: dict(sorted(c.items())) for s, c in writer.actions.items()},
      "dropped": writer.dropped,
      "split_time": writer.split_time,
      "validation_time": writer.validation_time,
      "time_range": writer.time_range,
      "entities": {"query": len(writer.queries), "candidate": len(writer.candidates),
                   "query_with_interactions": int((writer.query_all > 0).sum()),
                   "query_new_in_eval": new_query,
                   "query_with_validation_likes":
                       int((writer.query_validation_positive > 0).sum()),
                   "candidate_with_train_interactions": int((writer.candidate_train > 0).sum())},
      "readiness": report,
  }
  eligibility = _eligibility_stats(writer)
  if eligibility is not None:
    stats["eligibility"] = eligibility
  stats.update(writer.extra_stats)
  return stats


def _write_tfds_metadata(writer, out: str) -> None:
  import tensorflow as tf
  import tensorflow_datasets as tfds
  spec = features_lib.parse_spec(writer.config)
  connectors = {}
  for key, feature in spec.items():
    if isinstance(feature, tf.io.VarLenFeature):
      connectors[key] = tfds.features.Tensor(shape=(None,), dtype=tf.string)
    else:
      connectors[key] = tfds.features.Tensor(shape=tuple(feature.shape), dtype=feature.dtype)
  split_infos = [
      tfds.core.SplitInfo(name=split, shard_lengths=list(writer.shard_rows[split]),
                          num_bytes=sum(os.path.getsize(os.path.join(out, n))
                                        for n in fmt.shard_names(split, writer.num_shards[split])))
      for split in fmt.SPLITS]
  tfds.folder_dataset.write_metadata(
      data_dir=out, features=tfds.features.FeaturesDict(connectors), split_infos=split_infos,
      filename_template=None, check_data=False,
      description="Swipe interactions written by tfrs_two_tower (gzip TFRecord shards; read "
                  "with tfrs_two_tower.data.reader.tfds_dataset).")


def _numeric_constants(feature: config_lib.Feature, values: np.ndarray,
                       counts: np.ndarray) -> Dict[str, Any]:
  """Normalisation constants, weighted by how often each entity appears in train."""
  transformed = transform_numeric(values, feature.normalization)
  valid = ~np.isnan(transformed)
  w = counts[valid].astype(np.float64)
  if feature.normalization == "none" or w.sum() == 0:
    mean, std = 0.0, 1.0
  else:
    mean = float(np.average(transformed[valid], weights=w))
    std = float(np.sqrt(np.average((transformed[valid] - mean) ** 2, weights=w)))
    std = std if std > 1e-6 else 1.0
  if feature.fill == "mean":
    fill = mean
  else:
    fill = float(transform_numeric(np.array([feature.fill], np.float64), feature.normalization)[0])
  total = counts.sum()
  return {"transform": "log1p" if feature.normalization == "log_zscore" else "identity",
          "normalization": feature.normalization, "mean": mean, "std": std,
          "fill_transformed": fill,
          "missing_fraction": float(counts[~valid].sum() / total) if total else 0.0,
          "min": float(np.nanmin(values)) if valid.any() else None,
          "max": float(np.nanmax(values)) if valid.any() else None,
          "bucket_boundaries": list(feature.bucket_boundaries)}


def transform_numeric(values: np.ndarray, normalization: str) -> np.ndarray:
  """The pre-normalisation transform: log1p(max(x, 0)) for log_zscore, else identity."""
  values = np.asarray(values, np.float64)
  if normalization == "log_zscore":
    return np.log1p(np.maximum(values, 0.0))
  return values


def _write_tsv(path: str, frame: pd.DataFrame, header: bool = False) -> None:
  frame.to_csv(path, sep="\t", index=False, header=header, lineterminator="\n")
