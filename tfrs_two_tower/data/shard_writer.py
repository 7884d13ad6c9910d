"""The dataset's interaction shards: gzip TFRecord files, rows dealt round-robin.

One `ShardWriter` per dataset directory opens `fmt.shard_names(split, n)` for
every split and appends records in arrival order: the i-th row of a split
(counted over the whole export) goes to shard i mod n, so shard sizes differ
by at most one row and the same rows always land in the same shards.
"""

import os
from typing import Dict, Iterable, List, Mapping

from tfrs_two_tower.data import dataset_format as fmt


class ShardWriter:
  """Open shard files of one staging directory; `close()` (or an exception) ends them."""

  def __init__(self, directory: str, num_shards: Mapping[str, int]):
    import tensorflow as tf  # here, not at the top: config-only and --helpfull paths stay fast
    options = tf.io.TFRecordOptions(compression_type=fmt.COMPRESSION)
    self._writers: Dict[str, list] = {
        split: [tf.io.TFRecordWriter(os.path.join(directory, name), options)
                for name in fmt.shard_names(split, n)]
        for split, n in num_shards.items()}

  def write(self, split: str, records: Iterable[bytes], first_row: int,
            shard_rows: List[int]) -> None:
    """Appends `records` of `split`, the first being the split's row `first_row`;
    adds each record to its shard's count in `shard_rows`."""
    writers = self._writers[split]
    for j, record in enumerate(records):
      shard = (first_row + j) % len(writers)
      writers[shard].write(record)
      shard_rows[shard] += 1

  def close(self) -> None:
    for writers in self._writers.values():
      for writer in writers:
        writer.close()
