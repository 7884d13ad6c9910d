"""Fast `tf.train.Example` serialisation for one record per interaction.

An interaction record is the query entity's features + the candidate entity's
features + four per-interaction fields. Building a `tf.train.Example` proto per
row in Python costs ~20 us; the entity parts repeat across thousands of rows.
So each entity's `tf.train.Features` is serialised once (real protobuf,
deterministic key order), and a record is assembled from bytes:

  Example  = 0x0a varint(len(F)) F          (field 1: features)
  F        = query_part + candidate_part + tail

which is valid because concatenated serialisations of a message merge, and
`Features.feature` is a map (repeated entries). `tests/test_dataset.py` checks
that `tf.io.parse_example` reads back every value.
"""

import struct
from typing import Dict, List, Sequence

import numpy as np


INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


def varint(value: int) -> bytes:
  """Protobuf base-128 varint of an unsigned integer (0 <= value < 2^64)."""
  if not 0 <= value < 2**64:
    raise ValueError(f"varint: {value} is outside the unsigned 64-bit range")
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _length_delimited(field_tag: int, payload: bytes) -> bytes:
  return bytes([field_tag]) + varint(len(payload)) + payload


def _map_entry(key: str, feature: bytes) -> bytes:
  key_bytes = key.encode("utf-8")
  body = _length_delimited(0x0A, key_bytes) + _length_delimited(0x12, feature)
  return _length_delimited(0x0A, body)


def int64_entry(key: str, value: int) -> bytes:
  """One `Features.feature` map entry holding an int64 (-2^63 <= value < 2^63).

  Protobuf writes a negative int64 as the varint of its two's complement
  (value mod 2^64: always 10 bytes), as `tf.train.Int64List` does.
  """
  value = int(value)
  if not INT64_MIN <= value <= INT64_MAX:
    raise ValueError(f"{key}: {value} does not fit in an int64")
  return _map_entry(key, _length_delimited(0x1A, _length_delimited(0x0A, varint(value % 2**64))))


def int64_entries(key: str, values: np.ndarray) -> List[bytes]:
  """`int64_entry(key, v)` for every v of an int64 array, vectorised (byte-identical).

  An entry is a prefix that depends only on the key and the varint's length L
  (1..10 bytes; every length prefix inside is one byte) followed by the varint.
  The varints are computed for all values at once as an [n, 10] byte matrix:
  byte k = 7-bit group k of (v mod 2^64), with the continuation bit on every
  byte but the last of the L = max(1, ceil(bit_length / 7)) used.
  """
  unsigned = np.asarray(values, np.int64).view(np.uint64)
  groups = np.stack([(unsigned >> np.uint64(7 * k)) & np.uint64(0x7F) for k in range(10)],
                    axis=1).astype(np.uint8)
  lengths = 1 + sum(((unsigned >> np.uint64(7 * k)) != 0).astype(np.int64)
                    for k in range(1, 10))
  groups |= np.where(np.arange(10)[None, :] < (lengths - 1)[:, None], 0x80, 0).astype(np.uint8)
  prefixes = {}
  for length in np.unique(lengths).tolist():
    sample = int64_entry(key, 1 << (7 * (length - 1)) if length < 10 else -1)
    prefixes[length] = sample[:len(sample) - length]
  flat = groups.tobytes()
  return [prefixes[n] + flat[10 * i:10 * i + n] for i, n in enumerate(lengths.tolist())]


def float_entry(key: str, value: float) -> bytes:
  return _map_entry(key, _length_delimited(0x12, _length_delimited(0x0A, struct.pack("<f", value))))


def bytes_entry(key: str, value: bytes) -> bytes:
  return _map_entry(key, _length_delimited(0x0A, _length_delimited(0x0A, value)))


def bytes_list_entry(key: str, values: Sequence[bytes]) -> bytes:
  """One map entry holding a list of byte strings (an empty list is a valid entry)."""
  payload = b"".join(_length_delimited(0x0A, v) for v in values)
  return _map_entry(key, _length_delimited(0x0A, payload))


def example(parts: Sequence[bytes]) -> bytes:
  """Serialised `tf.train.Example` from serialised `Features` parts."""
  features = b"".join(parts)
  return _length_delimited(0x0A, features)


def entity_features(columns: Dict[str, object], n: int) -> list:
  """Serialises each entity's features (as produced by `features.encode_entity_table`).

  Returns a list of n `bytes`, each a serialised `tf.train.Features` with every
  key of `columns`. Keys are sorted (deterministic output, byte-identical runs).
  """
  import tensorflow as tf
  out = []
  keys = sorted(columns)
  for i in range(n):
    feature = {}
    for key in keys:
      value = columns[key][i]
      if isinstance(value, str):
        feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))
      elif isinstance(value, list):
        feature[key] = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[v.encode("utf-8") for v in value]))
      elif isinstance(value, np.ndarray):
        feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=value.tolist()))
      elif isinstance(value, (int, np.integer)):
        feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
      else:
        feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
    out.append(tf.train.Features(feature=feature).SerializeToString(deterministic=True))
  return out
