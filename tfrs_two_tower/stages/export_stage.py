"""export_data.py: PostgreSQL/Supabase or CSV/Parquet dumps -> the dataset directory.

Three modes, chosen by the arguments:
  database   (default): --db_url, else $SUPABASE_DB_URL / $DATABASE_URL / .env;
  files:     --input_dir and/or --interactions_file, --query_entities_file,
             --candidate_entities_file;
  combine:   --combine=<partition dirs> joins partition exports into one dataset.

Every failure is an `ExportError` whose `exit_code` tells what went wrong
(`sources.EXIT_CODES`); `main` turns it into a redacted message and that code.
"""

import glob
import logging
from typing import Any, Callable, Dict, Optional, Sequence

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.data import file_source
from tfrs_two_tower.data import partitions
from tfrs_two_tower.data import postgres_source
from tfrs_two_tower.data import readiness
from tfrs_two_tower.data import sources
from tfrs_two_tower.stages import cli
from tfrs_two_tower.data import writer as writer_lib
from tfrs_two_tower.stages.cli import parse_time


class UsageError(sources.ExportError):
  """Flags that do not fit together."""
  exit_code = 2


def run(output_dir: str, config_path: Optional[str] = None, db_url: Optional[str] = None,
        env_file: Optional[str] = ".env", input_dir: Optional[str] = None,
        interactions_file: Optional[str] = None, query_entities_file: Optional[str] = None,
        candidate_entities_file: Optional[str] = None, combine: Sequence[str] = (),
        eval_fraction: float = 0.15, split_time: Optional[str] = None,
        validation_fraction: float = writer_lib.DEFAULT_VALIDATION_FRACTION,
        validation_days: float = 0.0, num_partitions: int = 1,
        partition: int = 0, unknown_actions: str = "fail", missing_entities: str = "fail",
        min_users: int = readiness.DEFAULT_MIN_USERS,
        min_interactions: int = readiness.DEFAULT_MIN_INTERACTIONS, force: bool = False,
        readiness_path: Optional[str] = None, chunk_size: int = 100_000, train_shards: int = 4,
        eval_shards: int = 2, overwrite: bool = False, connect_retries: int = 3,
        lock_timeout: float = 60.0,
        retry_backoff_seconds: float = 1.0, log: Callable[[str], None] = print,
        progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, Any]:
  """Runs one export (or a combine) and returns the dataset's stats; raises ExportError."""
  gate = dict(min_users=min_users, min_interactions=min_interactions, force=force,
              readiness_path=readiness_path, overwrite=overwrite, log=log)
  file_mode = bool(input_dir or interactions_file or query_entities_file
                   or candidate_entities_file)
  if combine:
    if file_mode or db_url or num_partitions != 1:
      raise UsageError("--combine joins finished partition exports: it takes no source flags "
                       "(--db_url, --input_dir, --*_file) and no --num_partitions")
    dirs = [d for pattern in combine for d in sorted(glob.glob(pattern)) or [pattern]]
    return partitions.combine(dirs, output_dir, **gate)
  if file_mode and db_url:
    raise UsageError("give either --db_url or file inputs (--input_dir, --*_file), not both")
  if not 0 < eval_fraction < 1:
    raise UsageError(f"--eval_fraction must be in (0, 1), got {eval_fraction}")
  if validation_days < 0 or (validation_days == 0 and not 0 < validation_fraction < 1):
    raise UsageError(f"--validation_fraction must be in (0, 1) (got {validation_fraction}) or "
                     f"--validation_days > 0 (got {validation_days})")
  try:
    part = sources.Partition(num_partitions, partition)
  except sources.PartitionError as e:
    raise UsageError(str(e)) from None
  config = config_lib.load_config(config_path)
  if file_mode:
    source = file_source.FileSource(config, input_dir, interactions_file=interactions_file,
                                    query_file=query_entities_file,
                                    candidate_file=candidate_entities_file, log=log)
  else:
    url, where = postgres_source.resolve_url(db_url, env_file)
    source = postgres_source.PostgresSource(config, url, connect_retries=connect_retries,
                                            lock_timeout_seconds=lock_timeout,
                                            retry_backoff_seconds=retry_backoff_seconds, log=log)
    log(f"export: reading {source.description['url']} (URL from {where})")
  with source:
    return sources.export(
        source, config, output_dir, split_time=parse_time(split_time, "split_time"),
        eval_fraction=eval_fraction, validation_fraction=validation_fraction,
        validation_days=validation_days, partition=part, unknown_actions=unknown_actions,
        missing_entities=missing_entities, min_users=min_users,
        min_interactions=min_interactions, force=force, readiness_path=readiness_path,
        chunk_size=chunk_size, num_train_shards=train_shards, num_eval_shards=eval_shards,
        overwrite=overwrite, log=log, progress=progress)


def main(db_url: Optional[str] = None, env_file: Optional[str] = ".env",
         log: Callable[[str], None] = logging.info,
         error: Callable[[str], None] = logging.error, **kwargs) -> int:
  """`run` for scripts: returns the process exit code; every message is redacted."""
  secrets = [_password(db_url, env_file)]
  try:
    run(db_url=db_url, env_file=env_file, log=lambda m: log(sources.redact(m, secrets)),
        **kwargs)
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
          f"{e.filename or kwargs.get('output_dir')}: nothing was written; free space and run "
          "the same command again")
    return cli.EXIT_DISK_FULL


def _password(db_url: Optional[str], env_file: Optional[str]) -> str:
  """The password of the URL the export would use ("" when none), for redaction."""
  try:
    url = postgres_source.resolve_url(db_url, env_file)[0]
    return postgres_source.connection_params(url).get("password", "")
  except sources.ExportError:
    return ""
