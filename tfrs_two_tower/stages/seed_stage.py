"""seed_database.py: a synthetic world (loaded or generated) -> PostgreSQL.

The door of `data/seeding.py`: resolves the database URL, loads or generates the
world, connects with retries, seeds, and never lets a password into an error.
"""

from typing import Callable, Dict, Optional

from tfrs_two_tower.data import postgres_source
from tfrs_two_tower.data import seeding
from tfrs_two_tower.data import sources
from tfrs_two_tower.data import synthetic


def run(db_url: Optional[str] = None, env_file: Optional[str] = ".env",
        world_dir: Optional[str] = None,
        world: synthetic.WorldParams = synthetic.WorldParams(), connect_retries: int = 3,
        retry_backoff_seconds: float = 1.0,
        log: Callable[[str], None] = print) -> Dict[str, int]:
  """Seeds the database at --db_url (or $SUPABASE_DB_URL/$DATABASE_URL/.env).

  The world is `World.load(world_dir)` when given, else generated from `world`.
  """
  url, where = postgres_source.resolve_url(db_url, env_file)
  if world_dir:
    loaded = synthetic.World.load(world_dir)
    log(f"seed: world from {world_dir}: {loaded.summary()}")
  else:
    loaded = synthetic.generate_world(world)
    log(f"seed: generated world: {loaded.summary()}")
  params = postgres_source.connection_params(url)
  log(f"seed: writing into {postgres_source.describe_url(params)} (URL from {where})")
  connection = postgres_source.connect(url, retries=connect_retries,
                                       backoff_seconds=retry_backoff_seconds, log=log)
  try:
    return seeding.seed(connection, loaded, log=log)
  except Exception as e:  # psycopg2 errors can quote the DSN: never let a password out
    raise sources.ExportError(sources.redact(f"seed failed: {e}",
                                             [params.get("password", "")])) from None
  finally:
    connection.close()


def main(error: Callable[[str], None] = print, **kwargs) -> int:
  """`run` for scripts: returns the process exit code (see `sources.EXIT_CODES`)."""
  try:
    run(**kwargs)
    return 0
  except sources.ExportError as e:
    error(f"seed failed ({type(e).__name__}, exit {e.exit_code}): {e}")
    return e.exit_code
