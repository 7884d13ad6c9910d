"""Deterministic arm assignment that Python, PostgreSQL and Swift compute identically.

The algorithm (docs/abtest.md has test vectors and a Swift version):

  1. key    = UTF-8 bytes of  salt + ":" + user_id
  2. digest = SHA-256(key)                                  (32 bytes)
  3. bucket = (first 8 bytes of digest as a big-endian unsigned 64-bit
               integer) mod 10000                           -> [0, 10000)
  4. arms are an ordered list of (name, buckets) whose bucket counts sum to
     10000; arm i owns buckets [sum of counts before i, that sum + count_i).

A user's arm is a pure function of (salt, user id, arm list), so it never
changes while the experiment runs, needs no stored state, and the app, the
server and the analysis agree without talking to each other. Different salts
give independent splits (SHA-256 outputs for different keys are independent
for all practical purposes). The modulo bias of 2^64 mod 10000 is < 1e-15.

Weights are turned into integer bucket counts ONCE, when the experiment is
defined (`allocate_buckets`); the counts are what the database stores and
what every client uses, so no client ever rounds floating-point weights.
"""

import dataclasses
import hashlib
import re
from typing import Dict, Mapping, Sequence, Tuple, Union

import numpy as np

NUM_BUCKETS = 10_000
_ARM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


class ExperimentError(ValueError):
  """An experiment definition that cannot be used."""


def bucket(salt: str, user_id: str) -> int:
  """The bucket in [0, NUM_BUCKETS) of `user_id` in the experiment salted `salt`."""
  digest = hashlib.sha256(f"{salt}:{user_id}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") % NUM_BUCKETS


def buckets(salt: str, user_ids: Sequence[str]) -> np.ndarray:
  """`bucket` for many ids: [n] int64."""
  prefix = f"{salt}:".encode("utf-8")
  out = np.empty(len(user_ids), np.int64)
  for i, user_id in enumerate(user_ids):
    digest = hashlib.sha256(prefix + str(user_id).encode("utf-8")).digest()
    out[i] = int.from_bytes(digest[:8], "big") % NUM_BUCKETS
  return out


def allocate_buckets(weights: Union[Mapping[str, float], Sequence[Tuple[str, float]]]
                     ) -> Tuple[Tuple[str, int], ...]:
  """Ordered (arm, weight) -> ordered (arm, bucket count), counts summing to 10000.

  Largest-remainder rounding of 10000 * weight / total; ties go to the earlier
  arm. Raises ExperimentError for fewer than two arms, bad names, duplicate
  names, negative weights or a zero total.
  """
  items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
  problems = []
  if len(items) < 2:
    problems.append(f"need at least two arms, got {len(items)}")
  names = [name for name, _ in items]
  for name in names:
    if not isinstance(name, str) or not _ARM_NAME.match(name):
      problems.append(f"arm name {name!r} must match {_ARM_NAME.pattern}")
  if len(set(names)) != len(names):
    problems.append(f"duplicate arm names in {names}")
  values = []
  for name, weight in items:
    try:
      value = float(weight)
    except (TypeError, ValueError):
      problems.append(f"arm {name!r}: weight {weight!r} is not a number")
      continue
    if not np.isfinite(value) or value < 0:
      problems.append(f"arm {name!r}: weight {weight!r} must be finite and >= 0")
    values.append(value)
  if not problems and sum(values) <= 0:
    problems.append("weights sum to 0")
  if problems:
    raise ExperimentError("invalid arms: " + "; ".join(problems))
  exact = np.array(values) * NUM_BUCKETS / sum(values)
  counts = np.floor(exact).astype(np.int64)
  remainder = exact - counts
  for i in sorted(range(len(items)), key=lambda i: (-remainder[i], i))[:NUM_BUCKETS - counts.sum()]:
    counts[i] += 1
  return tuple((name, int(c)) for name, c in zip(names, counts))


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What assignment and analysis need to know about one experiment.

  Attributes:
    name: unique experiment name.
    salt: the hashing salt (default: the name); a new salt reshuffles everyone.
    arms: ordered (arm, bucket count) pairs summing to NUM_BUCKETS. The first
      arm is the control the others are compared with.
  """
  name: str
  salt: str
  arms: Tuple[Tuple[str, int], ...]

  def __post_init__(self):
    if not self.name or not self.salt:
      raise ExperimentError("experiment name and salt must be non-empty")
    if ":" in self.salt:
      # "a:b" + ":" + "c" and "a" + ":" + "b:c" would hash the same key.
      raise ExperimentError(f"salt {self.salt!r} must not contain ':'")
    counts = [c for _, c in self.arms]
    if len(self.arms) < 2 or sum(counts) != NUM_BUCKETS or min(counts) < 0:
      raise ExperimentError(f"experiment {self.name!r}: arms {self.arms} must be >= 2 "
                            f"(name, bucket count) pairs with counts summing to {NUM_BUCKETS}")

  @classmethod
  def from_weights(cls, name: str, weights, salt: str = "") -> "Experiment":
    return cls(name=name, salt=salt or name, arms=allocate_buckets(weights))

  @property
  def arm_names(self) -> Tuple[str, ...]:
    return tuple(name for name, _ in self.arms)

  @property
  def expected_fractions(self) -> Dict[str, float]:
    return {name: c / NUM_BUCKETS for name, c in self.arms}

  def arm_of_bucket(self, bucket_values: np.ndarray) -> np.ndarray:
    """[n] buckets -> [n] arm names (object array)."""
    bounds = np.cumsum([c for _, c in self.arms])
    return np.array(self.arm_names, dtype=object)[np.searchsorted(bounds, bucket_values,
                                                                  side="right")]

  def assign(self, user_id: str) -> str:
    return str(self.arm_of_bucket(np.array([bucket(self.salt, user_id)]))[0])

  def assign_many(self, user_ids: Sequence[str]) -> np.ndarray:
    """[n] user ids -> [n] arm names."""
    return self.arm_of_bucket(buckets(self.salt, user_ids))

  def to_json(self) -> Dict[str, object]:
    return {"name": self.name, "salt": self.salt,
            "arms": [{"name": n, "buckets": c} for n, c in self.arms]}
