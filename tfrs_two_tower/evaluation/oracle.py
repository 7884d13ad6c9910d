"""Ground truth for evaluation and simulation: who would like whom.

An oracle is any function

  like_probability(swiper_ids [P] object, swipee_ids [P] object) -> [P] float in [0, 1]

giving P(swiper likes swipee) for arrays of ids. The synthetic world's hidden
model (`World.like_probability`) is one; a team's own simulator or a labelled
panel is another, named on the command line as `package.module:function`
(`load`). Every call is checked (`checked`): a wrong shape, a non-number or a
value outside [0, 1] is an `OracleError` naming the flag.
"""

import importlib
from typing import Callable

import numpy as np

OracleFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class OracleError(ValueError):
  """An oracle that cannot be loaded or answered wrongly; the message names the flag."""


def load(spec: str, flag: str = "--oracle") -> OracleFn:
  """`package.module:function` -> the checked function."""
  module_name, sep, attribute = spec.partition(":")
  if not sep or not module_name or not attribute:
    raise OracleError(f"{flag}={spec!r}: expected package.module:function")
  try:
    module = importlib.import_module(module_name)
  except Exception as e:  # any import-time failure of user code is reported the same way
    raise OracleError(f"{flag}={spec!r}: cannot import {module_name!r}: "
                      f"{type(e).__name__}: {e}") from None
  fn = getattr(module, attribute, None)
  if not callable(fn):
    raise OracleError(f"{flag}={spec!r}: {module_name!r} has no function {attribute!r}")
  return checked(fn, f"{flag}={spec}")


def checked(fn: OracleFn, name: str) -> OracleFn:
  """`fn` with every answer checked: [P] finite floats in [0, 1] for [P] pairs."""

  def call(swiper_ids, swipee_ids):
    swiper_ids = np.asarray(swiper_ids, dtype=object)
    swipee_ids = np.asarray(swipee_ids, dtype=object)
    try:
      out = np.asarray(fn(swiper_ids, swipee_ids), dtype=np.float64)
    except OracleError:
      raise
    except Exception as e:
      raise OracleError(f"{name}: failed on {swiper_ids.size} pairs: "
                        f"{type(e).__name__}: {e}") from None
    if out.shape != swiper_ids.shape:
      raise OracleError(f"{name}: returned shape {out.shape} for {swiper_ids.size} pairs; "
                        f"expected {swiper_ids.shape} (one P(like) per pair)")
    if not np.isfinite(out).all() or (out < 0).any() or (out > 1).any():
      raise OracleError(f"{name}: returned values outside [0, 1] (e.g. "
                        f"{out[~(np.isfinite(out) & (out >= 0) & (out <= 1))][0]!r})")
    return out
  return call
