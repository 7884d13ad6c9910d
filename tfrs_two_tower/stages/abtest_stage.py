"""analyze_experiment.py: analyse an A/B test from PostgreSQL or CSV, or plan its size."""

import json
import os
import time
from typing import Any, Callable, Dict, Optional, Sequence

import pandas as pd
import psycopg2.errors

from tfrs_two_tower import __version__
from tfrs_two_tower import config as config_lib
from tfrs_two_tower import files
from tfrs_two_tower.abtest import analysis
from tfrs_two_tower.abtest import assignment
from tfrs_two_tower.abtest import database
from tfrs_two_tower.abtest import definition as definition_lib
from tfrs_two_tower.abtest import outcomes as outcomes_lib
from tfrs_two_tower.abtest import power
from tfrs_two_tower.abtest import report
from tfrs_two_tower.data import postgres_source
from tfrs_two_tower.data import sources


def parse_weights(text: str, flag: str = "arms"):
  """"control=1,treatment=1" -> [("control", 1.0), ("treatment", 1.0)] (order kept)."""
  pairs = []
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, sep, weight = part.partition("=")
    if not sep:
      raise ValueError(f"--{flag}: {part!r} is not arm=weight (e.g. control=1,treatment=1)")
    try:
      pairs.append((name.strip(), float(weight)))
    except ValueError:
      raise ValueError(f"--{flag}: weight of {name.strip()!r} is not a number: "
                       f"{weight!r}") from None
  return pairs


def plan(*, baseline_rate: float, mde: Optional[float], relative_mde: Optional[float],
         std: Optional[float], alpha: float, power_target: float, two_sided: bool,
         daily_users: Optional[float], treatment_fraction: float,
         log: Callable[..., None] = print) -> power.Plan:
  result = power.plan(baseline_rate, mde=mde, relative_mde=relative_mde, std=std, alpha=alpha,
                      power=power_target, two_sided=two_sided,
                      daily_exposed_users=daily_users, treatment_fraction=treatment_fraction)
  log("plan: %s %.4g -> %.4g (alpha %.3g %s, power %.2f): %d users per arm%s" % (
      result.metric, result.baseline, result.target, alpha,
      "two-sided" if two_sided else "one-sided", power_target, result.users_per_arm,
      "" if result.days is None else ", about %.1f days" % result.days))
  log("plan: analyse once when every arm has %d users; do not stop early on a good p-value "
      "(peeking)." % result.users_per_arm)
  return result


def load(*, experiment: str, db_url: Optional[str], exposures_csv: Optional[str],
         swipes_csv: Optional[str], arms: str, starts_at: Optional[str], ends_at: Optional[str],
         primary_metric: str, guardrails: Sequence[str], pre_period_days: float,
         planned_users_per_arm: Optional[int], config: config_lib.Config,
         env_file: Optional[str] = ".env", log: Callable[..., None] = print):
  """(definition, per-user outcomes, assignment mismatches, snapshot time, source description).

  `config` names the interactions' columns (the swipes CSV uses them) and maps
  each action value to a label; an unmapped value is refused
  (sources.UnknownActionError, exit code 16).
  """
  if db_url and (exposures_csv or swipes_csv):
    raise ValueError("give either --db_url or --exposures_csv + --swipes_csv, not both")
  if not (exposures_csv or swipes_csv):
    url, origin = postgres_source.resolve_url(db_url, env_file)
    where = postgres_source.describe_url(postgres_source.connection_params(url))
    conn = postgres_source.connect(url, log=log)
    try:
      definition, outcomes, mismatches, snapshot = database.read_snapshot(conn, experiment,
                                                                          config)
    except (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedFunction) as e:
      raise sources.MissingTableError(
          f"{where} has no A/B testing schema ({e.diag.message_primary}): install "
          "tfrs_two_tower/sql/abtest.sql in the database and log exposures through "
          "ab_log_exposure (docs/abtest.md), or analyse CSV exports with --exposures_csv and "
          "--swipes_csv") from None
    finally:
      conn.close()
    return definition, outcomes, mismatches, snapshot, {"database": where, "url_from": origin}
  if not (exposures_csv and swipes_csv):
    raise ValueError("CSV input needs both --exposures_csv and --swipes_csv")
  exposures = outcomes_lib.clean_exposures(_read_csv(exposures_csv), exposures_csv, experiment)
  if exposures.empty:
    raise ValueError(f"{exposures_csv}: no exposures of experiment {experiment!r}")
  definition = definition_lib.Definition(
      assignment.Experiment.from_weights(experiment, parse_weights(arms)),
      starts_at or exposures["first_exposed_at"].min(), ends_at or None, primary_metric,
      tuple(guardrails), pre_period_days, planned_users_per_arm)
  swipes = outcomes_lib.clean_swipes(_read_csv(swipes_csv), swipes_csv, config)
  return (definition, outcomes_lib.user_outcomes(exposures, swipes, definition), 0, None,
          {"exposures_csv": os.path.abspath(exposures_csv),
           "swipes_csv": os.path.abspath(swipes_csv)})


def _read_csv(path: str) -> pd.DataFrame:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file")
  return pd.read_csv(path, dtype=str, keep_default_na=False)


def run(*, experiment: str = "", db_url: Optional[str] = None, env_file: Optional[str] = ".env",
        config_path: Optional[str] = None,
        exposures_csv: Optional[str] = None, swipes_csv: Optional[str] = None,
        arms: str = "control=1,treatment=1", starts_at: Optional[str] = None,
        ends_at: Optional[str] = None, primary_metric: str = "match_rate",
        guardrails: Sequence[str] = definition_lib.DEFAULT_GUARDRAILS,
        pre_period_days: float = 28.0, planned_users_per_arm: Optional[int] = None,
        cuped: bool = False, alpha: float = 0.05, output_dir: Optional[str] = None,
        overwrite: bool = False, plan_mode: bool = False, baseline_rate: Optional[float] = None,
        mde: Optional[float] = None, relative_mde: Optional[float] = None,
        std: Optional[float] = None, power_target: float = 0.8, two_sided: bool = True,
        daily_users: Optional[float] = None, treatment_fraction: float = 0.5,
        log: Callable[..., None] = print) -> Dict[str, Any]:
  """--plan: the sample size; otherwise the analysis (+ report in output_dir).

  `config_path`: the config of the app's interactions (default: the packaged one).
  The database URL comes from `db_url`, else $SUPABASE_DB_URL / $DATABASE_URL,
  else `env_file` (postgres_source.resolve_url); it is never logged with its
  password.
  """
  if plan_mode:
    if baseline_rate is None:
      raise ValueError("--plan needs --baseline_rate")
    result = plan(baseline_rate=baseline_rate, mde=mde, relative_mde=relative_mde, std=std,
                  alpha=alpha, power_target=power_target, two_sided=two_sided,
                  daily_users=daily_users, treatment_fraction=treatment_fraction, log=log)
    if output_dir:
      os.makedirs(output_dir, exist_ok=True)
      files.write_json(os.path.join(output_dir, "plan.json"), result.to_json())
    return result.to_json()
  if not experiment:
    raise ValueError("--experiment is required (the ab_experiments name)")
  started = time.time()
  definition, outcomes, mismatches, snapshot, source = load(
      experiment=experiment, db_url=db_url, exposures_csv=exposures_csv, swipes_csv=swipes_csv,
      arms=arms, starts_at=starts_at, ends_at=ends_at, primary_metric=primary_metric,
      guardrails=guardrails, pre_period_days=pre_period_days,
      planned_users_per_arm=planned_users_per_arm, config=config_lib.load_config(config_path),
      env_file=env_file, log=log)
  log("analysis: %s: %d exposed users read from %s" % (
      experiment, len(outcomes), json.dumps(source)))
  result = analysis.analyze(outcomes, definition, alpha=alpha, cuped=cuped,
                            assignment_mismatches=mismatches, snapshot_at=snapshot,
                            power_target=power_target)
  log("analysis: verdict: %s. %s" % (result["verdict"], result["verdict_detail"]))
  for warning in result["warnings"]:
    log("analysis: WARNING: %s" % warning)
  if output_dir:
    report.write(result, output_dir, {
        "kind": "tfrs_two_tower.abtest_report", "package_version": __version__,
        "source": source, "cuped": cuped, "alpha": alpha,
        "seconds": round(time.time() - started, 2)}, overwrite=overwrite)
    log("analysis: report written to %s" % output_dir)
  return result
