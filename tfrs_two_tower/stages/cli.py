"""What scripts share: turning the library's input errors into a clean exit.

Library code raises ValueError subclasses (ConfigError, DataError,
DatasetFormatError, ...) and FileExistsError with messages that name the file,
flag, column or row. A user should see that message, not a traceback; a bug
(anything else) still shows its traceback.
"""

import contextlib
import logging as std_logging
import sys
from typing import Optional

import pandas as pd
from absl import flags

from tfrs_two_tower.data import synthetic

# Exit codes scripts share (documented in the README's troubleshooting table).
EXIT_INPUT_ERROR = 2


@contextlib.contextmanager
def user_errors(exit_code: int = EXIT_INPUT_ERROR):
  """Exits with `exit_code` and a one-paragraph message on bad input.

  Also hides TensorFlow's own INFO chatter (SavedModel fingerprints, signature
  renames): at absl's INFO level it would drown the stages' progress lines.
  """
  std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
  try:
    yield
  except (ValueError, FileExistsError, FileNotFoundError, KeyError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(getattr(e, "exit_code", exit_code))


def parse_time(value: Optional[str], flag: str) -> Optional[int]:
  """ISO time (or unix seconds) -> unix seconds; errors name the flag."""
  if value is None or value == "":
    return None
  try:
    if value.lstrip("-").isdigit():
      return int(value)
    stamp = pd.Timestamp(value)  # naive times are UTC
    return int((stamp if stamp.tzinfo else stamp.tz_localize("UTC")).timestamp())
  except ValueError:
    raise ValueError(f"--{flag}: not an ISO time or unix seconds: {value!r}") from None


def define_world_flags() -> None:
  """The synthetic world's knobs, shared by every script that can generate a world.

  Defaults are `synthetic.WorldParams`'s, so the scripts and the library agree.
  """
  defaults = synthetic.WorldParams()
  flags.DEFINE_integer("num_users", defaults.num_users, "Users of the synthetic world.",
                       lower_bound=2)
  flags.DEFINE_integer("days", defaults.days, "Simulated days of the synthetic world.",
                       lower_bound=1)
  flags.DEFINE_integer("feed_size", defaults.feed_size,
                       "Profiles shown per active user per day.", lower_bound=1)
  flags.DEFINE_float("mean_activity", defaults.mean_activity,
                     "Mean daily probability that a user opens the app.", lower_bound=0.0,
                     upper_bound=1.0)
  flags.DEFINE_integer("seed", defaults.seed, "Random seed: same seed and flags give "
                       "byte-identical outputs.")


def define_validation_flags() -> None:
  """The validation window's flags, shared by every script that writes a dataset."""
  from absl import flags
  from tfrs_two_tower.data import writer
  flags.DEFINE_float("validation_fraction", writer.DEFAULT_VALIDATION_FRACTION,
                     "Last fraction of the pre-eval interactions (by time) written as the "
                     "validation split that training selects its model on.")
  flags.DEFINE_float("validation_days", 0.0, "Instead of --validation_fraction: the last this "
                     "many days before the split time are validation (0: use the fraction).")
