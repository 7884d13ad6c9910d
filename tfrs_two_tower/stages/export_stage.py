"""export_data.py: PostgreSQL/Supabase or CSV/Parquet dumps -> the dataset directory.

Three modes, chosen by the arguments:
  database   (default): --db_url, else $SUPABASE_DB_URL / $DATABASE_URL / .env;
  files:     --input_dir and/or --interactions_file, --query_entities_file,
             --candidate_entities_file;
  combine:   --combine=<partition dirs> joins partition exports into one dataset.

Every failure is an `ExportError` whose `exit_code` tells what went wrong
(`sources.EXIT_CODES`); `main` turns it into a redacted message and that code.
"""

import dataclasses
import glob
import logging
from typing import Any, Callable, Dict, List, Optional

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.data import file_source
from tfrs_two_tower.data import partitions
from tfrs_two_tower.data import postgres_source
from tfrs_two_tower.data import readiness
from tfrs_two_tower.data import sources
from tfrs_two_tower.data import writer as writer_lib
from tfrs_two_tower.options import option
from tfrs_two_tower.stages import cli
from tfrs_two_tower.stages.cli import parse_time


class UsageError(sources.ExportError):
  """Flags that do not fit together."""
  exit_code = 2


@dataclasses.dataclass
class ExportOptions:
  """Every export knob (the flags of `export_data.py`, generated from the `option` fields;
  the database, retry and validation-window fields are the flags `cli` shares)."""
  config_path: Optional[str] = option(None, "Feature/data config JSON (tables, columns, actions, "
                                      "sql); default: the packaged dating config.", flag="config")
  db_url: Optional[str] = None  # else $SUPABASE_DB_URL / $DATABASE_URL / env_file
  env_file: Optional[str] = ".env"
  input_dir: Optional[str] = option(None, "Read CSV/Parquet dumps instead of a database: "
                                    "<table>.parquet, <table>.csv or <table>.csv.gz per config "
                                    "table.")
  interactions_file: Optional[str] = option(None, "CSV/Parquet file of the interactions table "
                                            "(overrides --input_dir for it).")
  query_entities_file: Optional[str] = option(None, "CSV/Parquet file of the query entity table.")
  candidate_entities_file: Optional[str] = option(None, "CSV/Parquet file of the candidate entity "
                                                  "table (when it is another table than the query "
                                                  "entities).")
  combine: List[str] = option(factory=list, help="Partition export directories (globs allowed) "
                              "to combine into --output_dir instead of exporting.")
  eval_fraction: float = option(0.15, "Last fraction of interactions (by time) kept for eval, "
                                "unless --split_time is given.", lower_bound=0.0, upper_bound=1.0)
  split_time: Optional[str] = option(None, "ISO time (or unix seconds) of the train/eval boundary; "
                                     "give the same value to every partition of a partitioned "
                                     "export.")
  validation_fraction: float = writer_lib.DEFAULT_VALIDATION_FRACTION
  validation_days: float = 0.0
  num_partitions: int = option(1, "Split the export into this many hash partitions of the query "
                               "ids (md5), e.g. to run them in parallel.", lower_bound=1)
  partition: int = option(0, "Which partition to export, in [0, --num_partitions).", lower_bound=0)
  unknown_actions: str = option("fail", "Interactions whose action the config does not map: fail "
                                "(exit 16, with counts) or drop (counted in stats).",
                                choices=["fail", "drop"])
  missing_entities: str = option("fail", "Interactions referencing a profile that is not in the "
                                 "entity table: fail (exit 18) or drop (counted).",
                                 choices=["fail", "drop"])
  min_users: int = option(readiness.DEFAULT_MIN_USERS, "Readiness gate: users who swiped.",
                          lower_bound=0)
  min_interactions: int = option(readiness.DEFAULT_MIN_INTERACTIONS, "Readiness gate: "
                                 "interactions.", lower_bound=0)
  force: bool = option(False, "Write the dataset even below the readiness gate.")
  readiness_path: Optional[str] = option(None, "Where the readiness report goes when the gate "
                                         "fails; default <output_dir>.readiness.json.")
  chunk_size: int = option(100_000, "Interactions fetched and written per chunk (memory is bounded "
                           "by the entity tables plus one chunk).", lower_bound=1)
  train_shards: int = option(4, "TFRecord shards of the train split.", lower_bound=1)
  eval_shards: int = option(2, "TFRecord shards of the eval split.", lower_bound=1)
  overwrite: bool = option(False, "Replace an existing --output_dir (atomically).")
  connect_retries: int = 3
  retry_backoff_seconds: float = 1.0
  lock_timeout: float = option(60.0, "Seconds to wait for a table another session holds locked "
                               "(e.g. a migration) before giving up with exit 21; 0 waits forever.",
                               lower_bound=0.0)


def run(output_dir: str, options: Optional[ExportOptions] = None,
        log: Callable[[str], None] = print,
        progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, Any]:
  """Runs one export (or a combine) and returns the dataset's stats; raises ExportError."""
  o = options or ExportOptions()
  gate = dict(min_users=o.min_users, min_interactions=o.min_interactions, force=o.force,
              readiness_path=o.readiness_path, overwrite=o.overwrite, log=log)
  file_mode = bool(o.input_dir or o.interactions_file or o.query_entities_file
                   or o.candidate_entities_file)
  if o.combine:
    if file_mode or o.db_url or o.num_partitions != 1:
      raise UsageError("--combine joins finished partition exports: it takes no source flags "
                       "(--db_url, --input_dir, --*_file) and no --num_partitions")
    dirs = [d for pattern in o.combine for d in sorted(glob.glob(pattern)) or [pattern]]
    return partitions.combine(dirs, output_dir, **gate)
  if file_mode and o.db_url:
    raise UsageError("give either --db_url or file inputs (--input_dir, --*_file), not both")
  if not 0 < o.eval_fraction < 1:
    raise UsageError(f"--eval_fraction must be in (0, 1), got {o.eval_fraction}")
  if o.validation_days < 0 or (o.validation_days == 0 and not 0 < o.validation_fraction < 1):
    raise UsageError(f"--validation_fraction must be in (0, 1) (got {o.validation_fraction}) or "
                     f"--validation_days > 0 (got {o.validation_days})")
  try:
    part = sources.Partition(o.num_partitions, o.partition)
  except sources.PartitionError as e:
    raise UsageError(str(e)) from None
  config = config_lib.load_config(o.config_path)
  if file_mode:
    source = file_source.FileSource(config, o.input_dir, interactions_file=o.interactions_file,
                                    query_file=o.query_entities_file,
                                    candidate_file=o.candidate_entities_file, log=log)
  else:
    url, where = postgres_source.resolve_url(o.db_url, o.env_file)
    source = postgres_source.PostgresSource(config, url, connect_retries=o.connect_retries,
                                            lock_timeout_seconds=o.lock_timeout,
                                            retry_backoff_seconds=o.retry_backoff_seconds, log=log)
    log(f"export: reading {source.description['url']} (URL from {where})")
  with source:
    return sources.export(
        source, config, output_dir, split_time=parse_time(o.split_time, "split_time"),
        eval_fraction=o.eval_fraction, validation_fraction=o.validation_fraction,
        validation_days=o.validation_days, partition=part, unknown_actions=o.unknown_actions,
        missing_entities=o.missing_entities, min_users=o.min_users,
        min_interactions=o.min_interactions, force=o.force, readiness_path=o.readiness_path,
        chunk_size=o.chunk_size, num_train_shards=o.train_shards, num_eval_shards=o.eval_shards,
        overwrite=o.overwrite, log=log, progress=progress)


def main(output_dir: str, options: Optional[ExportOptions] = None,
         log: Callable[[str], None] = logging.info,
         error: Callable[[str], None] = logging.error) -> int:
  """`run` for scripts: returns the process exit code; every message is redacted."""
  options = options or ExportOptions()
  secrets = [_password(options.db_url, options.env_file)]
  try:
    run(output_dir, options, log=lambda m: log(sources.redact(m, secrets)))
    return 0
  except sources.ExportError as e:
    error(sources.redact(f"export failed ({type(e).__name__}, exit {e.exit_code}): {e}", secrets))
    return e.exit_code
  except (config_lib.ConfigError, FileExistsError) as e:
    error(sources.redact(str(e), secrets))
    return UsageError.exit_code
  except ValueError as e:  # writer_lib.DataError: a bad value, named by file/column/row
    error(sources.redact(f"export failed (bad data): {e}", secrets))
    return sources.ExportError.exit_code
  except OSError as e:
    if not cli.is_disk_full(e):
      raise
    error(f"export failed (disk full, exit {cli.EXIT_DISK_FULL}) writing "
          f"{e.filename or output_dir}: nothing was written; free space and run "
          "the same command again")
    return cli.EXIT_DISK_FULL


def _password(db_url: Optional[str], env_file: Optional[str]) -> str:
  """The password of the URL the export would use ("" when none), for redaction."""
  try:
    url = postgres_source.resolve_url(db_url, env_file)[0]
    return postgres_source.connection_params(url).get("password", "")
  except sources.ExportError:
    return ""
