"""simulate_experiment.py: a simulated A/B (or A/A) test through a real PostgreSQL.

One run:
  1. the world (loaded, or generated from its params) and the arms' recommenders:
     control = feature matching; treatment = the run dir's two towers (one-way or
     reciprocal), the world's oracle (a ceiling), or feature matching again (A/A,
     the default without a run dir);
  2. a database: --db_url (must be EMPTY: the simulation writes synthetic
     profiles and swipes), or a throwaway pgserver PostgreSQL;
  3. the experiment: simulated, written (swipes, ab_log_exposure), analysed from
     one snapshot, reported to <output_dir>/report;
  4. optionally A/A calibration: `aa_splits` re-randomisations of an A/A
     population (analysis level) and `aa_db_runs` full A/A round trips through
     the database, each a fresh simulation with its own salt and seed.
<output_dir>/manifest.json holds the truth (oracle like-probability of what
each arm showed), the verdicts and the calibration figures.
"""

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, Dict, Iterator, Optional

from tfrs_two_tower import __version__
from tfrs_two_tower import config as config_lib
from tfrs_two_tower import files
from tfrs_two_tower.abtest import analysis
from tfrs_two_tower.abtest import assignment
from tfrs_two_tower.abtest import calibration
from tfrs_two_tower.abtest import database
from tfrs_two_tower.abtest import report
from tfrs_two_tower.abtest import simulator
from tfrs_two_tower.data import postgres_source
from tfrs_two_tower.data import seeding
from tfrs_two_tower.data import synthetic
from tfrs_two_tower.evaluation import oracle as oracle_lib
from tfrs_two_tower.stages import abtest_stage


@contextlib.contextmanager
def _database(db_url: Optional[str], log) -> Iterator[Any]:
  """A connection to --db_url, or to a throwaway pgserver stopped on exit."""
  if db_url:
    conn = postgres_source.connect(db_url, log=log)
    try:
      yield conn
    finally:
      conn.close()
    return
  import psycopg2
  with postgres_source.embedded_postgres(log=lambda m: log("simulate: throwaway %s" % m)) as url:
    conn = psycopg2.connect(url)
    try:
      yield conn
    finally:
      conn.close()


TREATMENTS = ("two_tower", "two_tower_reciprocal", "two_tower_reciprocal_harmonic", "oracle",
              "oracle_reciprocal", "feature_matching")


def _treatment(kind: str, world, run_dir: Optional[str], control):
  """The treatment recommender; default: the two towers with a run dir, else A/A."""
  kind = kind or ("two_tower" if run_dir else "feature_matching")
  if kind not in TREATMENTS:
    raise ValueError(f"--treatment must be one of {TREATMENTS}, got {kind!r}")
  if kind.startswith("two_tower"):
    if not run_dir:
      raise ValueError(f"--treatment={kind} needs --run_dir")
    # two_tower_reciprocal: P(match) (product); _harmonic: the RECON harmonic mean.
    return simulator.two_tower(world, run_dir, reciprocal="reciprocal" in kind,
                               combination="harmonic" if kind.endswith("harmonic") else "product")
  if kind.startswith("oracle"):
    return simulator.oracle(world, reciprocal=kind.endswith("reciprocal"))
  return control


def _analyse(conn, name: str, cuped: bool, config):
  definition, outcomes, mismatches, snapshot = database.read_snapshot(conn, name, config)
  result = analysis.analyze(outcomes, definition, cuped=cuped, assignment_mismatches=mismatches,
                            snapshot_at=snapshot)
  return result, outcomes, definition


def run(output_dir: str, *, world_dir: Optional[str] = None, num_users: int = 5000,
        world_days: int = 120, world_seed: int = 0, run_dir: Optional[str] = None,
        config_path: Optional[str] = None, db_url: Optional[str] = None,
        treatment_kind: str = "", experiment: str = "two_tower_v1", salt: str = "",
        arms: str = "control=1,treatment=1",
        days: int = 14, feed_size: Optional[int] = None, seed: int = 0,
        exposure_log_loss: str = "", cuped: bool = False, aa_splits: int = 0,
        aa_db_runs: int = 0, overwrite: bool = False,
        log: Callable[..., None] = print, oracle: Optional[str] = None) -> Dict[str, Any]:
  started = time.time()
  truth = oracle_lib.load(oracle) if oracle else None  # fails before any work
  if world_dir:
    world = synthetic.World.load(world_dir)
  else:
    world = synthetic.generate_world(synthetic.WorldParams(num_users=num_users, days=world_days,
                                                           seed=world_seed))
  log("simulate: world %s" % world.summary())
  config = config_lib.load_config(config_path)
  control = simulator.feature_matching(world, config)
  treatment = _treatment(treatment_kind, world, run_dir, control)
  exp = assignment.Experiment.from_weights(experiment, abtest_stage.parse_weights(arms), salt)
  recommenders = {exp.arm_names[0]: control, **{a: treatment for a in exp.arm_names[1:]}}
  loss = {a: w for a, w in abtest_stage.parse_weights(exposure_log_loss, "exposure_log_loss")}
  params = simulator.SimulationParams(days=days, feed_size=feed_size, seed=seed,
                                      exposure_log_loss=loss)
  summary: Dict[str, Any] = {
      "kind": "tfrs_two_tower.abtest_simulation", "package_version": __version__,
      "world": {"dir": world_dir, "params": dataclasses.asdict(world.params)},
      "arms": {a: getattr(r, "name", type(r).__name__) for a, r in recommenders.items()},
      "run_dir": run_dir, "params": {**dataclasses.asdict(params), "exposure_log_loss": loss},
      "eligibility": config.eligibility.names if config.eligibility else None}
  # Every arm's feed obeys the config's eligibility rules (not in the summary: arrays).
  summary["oracle"] = oracle
  params = dataclasses.replace(params, rules=simulator.world_rules(world, config),
                               like_probability=truth)
  with files.atomic_directory(output_dir, overwrite=overwrite) as tmp, \
      _database(db_url, log) as conn:
    simulator.check_empty(conn)
    seeding.seed(conn, world, log=log)  # the app schema (schema.sql) + the world's history
    database.install_schema(conn, config)
    simulation = simulator.simulate(world, recommenders, exp, params, log=log)
    simulator.write_experiment(conn, simulation, config)
    result, outcomes, definition = _analyse(conn, exp.name, cuped, config)
    simulator.remove_experiment(conn, simulation)  # the A/A runs below start from history again
    log("simulate: truth: mean P(like) of shown profiles %s, mean P(match) of shown pairs %s" % (
        simulation.true_like_probability, simulation.true_match_probability))
    log("simulate: verdict: %s. %s" % (result["verdict"], result["verdict_detail"]))
    report.write(result, os.path.join(tmp, "report"), {
        "kind": "tfrs_two_tower.abtest_report", "package_version": __version__,
        "source": "simulate_experiment.py", "cuped": cuped})
    summary["experiment"] = {"verdict": result["verdict"], "detail": result["verdict_detail"],
                             "srm": result["srm"],
                             "true_like_probability": simulation.true_like_probability,
                             "true_match_probability": simulation.true_match_probability,
                             "exposed_users": len(simulation.exposures),
                             "swipes": len(simulation.swipes)}
    if aa_splits or aa_db_runs:
      summary["aa_calibration"] = _calibrate(conn, world, control, exp, params, aa_splits,
                                             aa_db_runs, cuped, config, log)
    summary["seconds"] = round(time.time() - started, 1)
    files.write_json(os.path.join(tmp, "manifest.json"), summary)
  return summary


def _calibrate(conn, world, control, exp, params, aa_splits, aa_db_runs, cuped, config, log):
  """A/A runs through the database, then re-splits of the first A/A population."""
  out: Dict[str, Any] = {}
  aa_recommenders = {a: control for a in exp.arm_names}
  population = None
  significant, verdicts = 0, []
  for i in range(max(aa_db_runs, 1 if aa_splits else 0)):
    aa = assignment.Experiment(f"{exp.name}_aa{i}", f"{exp.salt}-aa{i}", exp.arms)
    simulation = simulator.simulate(world, aa_recommenders, aa, dataclasses.replace(
        params, seed=params.seed + 1000 + i, exposure_log_loss={}), log=lambda *a: None)
    simulator.write_experiment(conn, simulation, config)
    result, outcomes, definition = _analyse(conn, aa.name, cuped, config)
    simulator.remove_experiment(conn, simulation)
    primary = result.get("comparisons", {}).get(aa.arm_names[1], {}).get(
        definition.primary_metric)
    significant += bool(primary and primary["p_value"] < 0.05)
    verdicts.append(result["verdict"])
    if population is None:
      population = (outcomes, definition)
    log("simulate: A/A round trip %d: %s" % (i + 1, result["verdict"]))
  if aa_db_runs:
    out["db_round_trips"] = {"runs": aa_db_runs, "primary_significant": significant,
                             "verdicts": verdicts}
  if aa_splits:
    out["resplits"] = calibration.resplit(population[0], population[1], aa_splits, cuped=cuped)
    log("simulate: A/A re-splits: %s" % out["resplits"])
  return out
