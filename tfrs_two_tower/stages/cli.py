"""What scripts share: turning the library's input errors into a clean exit.

Library code raises ValueError subclasses (ConfigError, DataError,
DatasetFormatError, ...) and FileExistsError with messages that name the file,
flag, column or row. A user should see that message, not a traceback; a bug
(anything else) still shows its traceback.
"""

import contextlib
import errno
import logging as std_logging
import sys
from typing import Optional

import pandas as pd
from absl import flags

from tfrs_two_tower.data import synthetic

# Exit codes scripts share (documented in the README's exit-code table). Library
# errors that need another code carry it as `exit_code` (e.g. the export's 10-20).
EXIT_INPUT_ERROR = 2
EXIT_DISK_FULL = 5
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")


def is_disk_full(error: BaseException) -> bool:
  """An OSError ENOSPC/EDQUOT, or TensorFlow's wrapping of one (ResourceExhaustedError ...)."""
  if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
    return True
  return any(text in str(error) for text in _DISK_FULL_TEXT)


def parse_flags(argv):
  """absl's flag parsing with bad values exiting EXIT_INPUT_ERROR (absl's own exits 1).

  Pass as `app.run(main, flags_parser=cli.parse_flags)`, so a bound or enum
  that absl checks exits like a value the library refuses: 2, one message.
  """
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}\nPass --helpfull to see the flags.", file=sys.stderr)
    sys.exit(EXIT_INPUT_ERROR)


@contextlib.contextmanager
def user_errors(exit_code: int = EXIT_INPUT_ERROR):
  """Exits with `exit_code` and a one-paragraph message on bad input.

  Library errors that are not ValueErrors but declare an `exit_code` (e.g.
  `NonFiniteLossError`) exit with it; a full disk (ENOSPC, also as TensorFlow's
  ResourceExhaustedError) exits EXIT_DISK_FULL. Anything else is a bug and keeps
  its traceback.

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
  except Exception as e:  # pylint: disable=broad-except
    if is_disk_full(e):
      where = getattr(e, "filename", None)
      print(f"error: the disk is full{f' writing {where}' if where else ''} "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0]}); nothing was left half "
            "written: free space and run the same command again (training resumes from its "
            "last checkpoint)", file=sys.stderr)
      sys.exit(EXIT_DISK_FULL)
    if not hasattr(type(e), "exit_code"):  # a bug: keep the traceback
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(type(e).exit_code)


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
