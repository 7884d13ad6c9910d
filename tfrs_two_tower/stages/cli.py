"""What scripts share: one flag grammar, and the library's input errors as a clean exit.

Library code raises ValueError subclasses (ConfigError, DataError,
DatasetFormatError, ...) and FileExistsError with messages that name the file,
flag, column or row. A user should see that message, not a traceback; a bug
(anything else) still shows its traceback.

The grammar every script follows: lists are comma-separated (`DEFINE_list`, or
an integer list parsed once here); a flag name means one thing in every script;
the database flags (`--db_url`, `--env_file`, `--embedded_db`) and the retry
flags are defined here only, and an unset `--db_url` always means the URL from
$SUPABASE_DB_URL / $DATABASE_URL / `--env_file` (a throwaway embedded database
only with an explicit `--embedded_db`); stray positional arguments are refused
(exit 2). An options dataclass (`TrainOptions`, `EvaluateOptions`, ...) defines
its script's flags: `define_option_flags` reads the type, default and help of
each field (`options.option(...)`), `options_from_flags` builds the dataclass back.
"""

import contextlib
import dataclasses
import errno
import logging as std_logging
import sys
import typing
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd
from absl import app
from absl import flags

from tfrs_two_tower import options as options_lib
from tfrs_two_tower.data import postgres_source
from tfrs_two_tower.data import synthetic
from tfrs_two_tower.data import writer

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
  flags.DEFINE_float("exploration", defaults.exploration, "Share of feeds drawn uniformly from "
                     "their candidate pool (an epsilon-exploring feed whose impressions log "
                     "supports off-policy estimates; 0 keeps the default world unchanged).",
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer("seed", defaults.seed, "Random seed: same seed and flags give "
                       "byte-identical outputs.")


def define_validation_flags() -> None:
  """The validation window's flags, shared by every script that writes a dataset."""
  flags.DEFINE_float("validation_fraction", writer.DEFAULT_VALIDATION_FRACTION,
                     "Last fraction of the pre-eval interactions (by time) written as the "
                     "validation split that training selects its model on.")
  flags.DEFINE_float("validation_days", 0.0, "Instead of --validation_fraction: the last this "
                     "many days before the split time are validation (0: use the fraction).")


def refuse_positional_arguments(argv: Sequence[str]) -> None:
  """Every script takes flags only: a stray word (a typo'd `-flag`, a path) is an error.

  Call first in `main(argv)`; absl's `app.run` prints the message and exits 2.
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected argument(s) {list(argv[1:])}: every input is a --flag "
                         "(see --helpfull)", exitcode=EXIT_INPUT_ERROR)


def define_database_flags(embedded: bool = False,
                          flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """--db_url and --env_file (and --embedded_db where a throwaway database can serve)."""
  flags.DEFINE_string("db_url", None, "PostgreSQL URL. Default: $SUPABASE_DB_URL, else "
                      f"$DATABASE_URL, else the same keys in --env_file"
                      f"{'; --embedded_db for a throwaway database' if embedded else ''}. "
                      "sslmode=require is added for non-local hosts; the password is never "
                      "logged.", flag_values=flag_values)
  flags.DEFINE_string("env_file", ".env", "Dotenv file read when neither --db_url nor the "
                      "environment gives a URL.", flag_values=flag_values)
  if embedded:
    flags.DEFINE_boolean("embedded_db", False, "Instead of a database URL: a throwaway "
                         "embedded PostgreSQL (pgserver) holding the synthetic world, "
                         "started and stopped by this command (the demo).",
                         flag_values=flag_values)


def define_retry_flags() -> None:
  """How a script retries an unreachable database."""
  flags.DEFINE_integer("connect_retries", 3, "Retries when the database is unreachable.",
                       lower_bound=0)
  flags.DEFINE_float("retry_backoff_seconds", 1.0, "First retry delay; doubles each retry.",
                     lower_bound=0.0)


def database_url(required: bool = True,
                 flag_values: flags.FlagValues = flags.FLAGS) -> Optional[str]:
  """The URL the database flags mean; None for --embedded_db (or nothing found, if optional).

  Raises:
    ValueError naming the flags: --db_url together with --embedded_db, or (when
    `required`) no URL given anywhere.
  """
  embedded = "embedded_db" in flag_values and flag_values.embedded_db
  if embedded:
    if flag_values.db_url:
      raise ValueError("--db_url and --embedded_db both name the database: give one")
    return None
  try:
    return postgres_source.resolve_url(flag_values.db_url, flag_values.env_file)[0]
  except postgres_source.MissingUrlError as e:
    if not required:
      return None
    hint = (" (or pass --embedded_db for a throwaway demo database)"
            if "embedded_db" in flag_values else "")
    raise postgres_source.MissingUrlError(f"{e}{hint}") from None


class NumberListParser(flags.ListParser):
  """Comma-separated numbers of one kind: "10,50,100" -> [10, 50, 100] (int) or
  "0.25,0.5" -> [0.25, 0.5] (float); an item that is not one is refused (absl names
  the flag, the script exits 2)."""

  def __init__(self, kind: type):
    super().__init__()
    self.kind = kind

  def parse(self, argument):
    items = super().parse(argument)
    try:
      return [self.kind(item) for item in items]
    except ValueError:
      raise ValueError(f"expected comma-separated {self.kind.__name__}s, got "
                       f"{argument!r}") from None


def define_option_flags(options_cls, defaults: Optional[Dict[str, Any]] = None,
                        flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """One absl flag per `options.option(...)` field of `options_cls`: the field's type picks the
  flag kind (int, float, bool, str, enum with `choices`, list of str, int or float),
  `defaults` overrides a script's defaults by field name."""
  instance = options_cls()
  hints = typing.get_type_hints(options_cls)
  for field in options_lib.flag_fields(options_cls):
    name, meta = options_lib.flag_name(field), field.metadata
    default = (defaults or {}).get(field.name, getattr(instance, field.name))
    kind = hints[field.name]
    if typing.get_origin(kind) is typing.Union:  # Optional[X]: an unset flag means None
      kind = next(a for a in typing.get_args(kind) if a is not type(None))
    bounds = {k: meta[k] for k in ("lower_bound", "upper_bound") if meta[k] is not None}
    if meta["choices"]:
      flags.DEFINE_enum(name, default, list(meta["choices"]), meta["help"],
                        flag_values=flag_values)
    elif kind is bool:
      flags.DEFINE_boolean(name, default, meta["help"], flag_values=flag_values)
    elif kind is int:
      flags.DEFINE_integer(name, default, meta["help"], flag_values=flag_values, **bounds)
    elif kind is float:
      flags.DEFINE_float(name, default, meta["help"], flag_values=flag_values, **bounds)
    elif kind is str:
      flags.DEFINE_string(name, default, meta["help"], flag_values=flag_values)
    elif typing.get_args(kind) in ((int,), (float,)):
      flags.DEFINE(NumberListParser(typing.get_args(kind)[0]), name, list(default),
                   meta["help"], flag_values=flag_values,
                   serializer=flags.CsvListSerializer(","))
    elif typing.get_args(kind) == (str,):
      flags.DEFINE_list(name, list(default), meta["help"], flag_values=flag_values)
    else:
      raise TypeError(f"{options_cls.__name__}.{field.name}: no flag kind for {kind}")


def options_from_flags(options_cls, flag_values: flags.FlagValues = flags.FLAGS,
                       **values: Any):
  """`options_cls` filled from the parsed flags: every field whose flag the script defined
  (its `option(...)` fields, and plain fields named like a shared flag, e.g. `db_url`),
  then `values`."""
  parsed = {f.name: flag_values[options_lib.flag_name(f)].value
            for f in dataclasses.fields(options_cls) if options_lib.flag_name(f) in flag_values}
  return options_cls(**{**parsed, **values})


def given_flags(options_cls, names: Sequence[str]) -> List[str]:
  """The field names among `names` whose flags the user gave explicitly."""
  by_name = {f.name: options_lib.flag_name(f) for f in options_lib.flag_fields(options_cls)}
  return [n for n in names if n in by_name and flags.FLAGS[by_name[n]].present]
