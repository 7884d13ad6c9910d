"""evaluate.py: does Phase 3 beat feature matching? One report for baselines and run dirs.

Reads a dataset directory (its time split), any number of run directories
(trained on that dataset) and optionally the synthetic world that generated it
(for oracle figures); evaluates random, popularity, feature matching and every
model (one-way and reciprocal) with the same code; writes report.json,
report.md, plots and a manifest into the output directory atomically, and the
models' scalars + PR curve into `<run>/logs/eval`.
"""

import dataclasses
import datetime
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

import tfrs_two_tower
from tfrs_two_tower import files
from tfrs_two_tower.data import reader
from tfrs_two_tower.data import synthetic
from tfrs_two_tower.evaluation import assessment
from tfrs_two_tower.evaluation import evaluator
from tfrs_two_tower.evaluation import oracle as oracle_lib
from tfrs_two_tower.evaluation import recommenders as recommenders_lib
from tfrs_two_tower.evaluation import report as report_lib
from tfrs_two_tower.evaluation import retrieval
from tfrs_two_tower.evaluation import segments as segments_lib
from tfrs_two_tower.evaluation.recommenders import BASELINES
from tfrs_two_tower.evaluation.recommenders import EvaluationInputError
from tfrs_two_tower.evaluation.recommenders import LIFT_BASELINE
from tfrs_two_tower.model import run_dir as run_lib
from tfrs_two_tower.options import option

KIND = "tfrs_two_tower.evaluation"


_RULES = segments_lib.SegmentRules()


@dataclasses.dataclass
class EvaluateOptions:
  """Every evaluation knob (the flags of `evaluate.py`, generated from these fields)."""
  ks: List[int] = option(
      flag="k", factory=lambda: [10, 50, 100], help="List lengths K of recall@K, NDCG@K, ...; "
      "the smallest is the headline K of the verdict.")
  world_dir: Optional[str] = option(
      None, "Optional synthetic world the dataset was generated from (generate_world.py): adds "
      "oracle like / like-back / match rates of the lists.")
  oracle: Optional[str] = option(
      None, "Optional ground truth instead of --world_dir: package.module:function returning "
      "P(u likes v) as a [P] float array for [P] arrays of swiper and swipee ids (your own "
      "simulator, a labelled panel); adds the oracle like / like-back / match rates of the "
      "lists.")
  bootstrap: int = option(1000, "Bootstrap resamples of users for the 95 % intervals.",
                          lower_bound=10)
  seed: int = option(0, "Seed of the bootstrap, the random baseline and the calibration "
                     "subsample.")
  baselines: List[str] = option(
      factory=lambda: list(BASELINES), help="Baselines to evaluate (random, popularity, "
      "feature_matching); lifts are over feature_matching.")
  reciprocal: bool = option(True, "Also rank by a reciprocal score combining P(u likes v) and "
                            "P(v likes u) when both towers see the same entity.")
  reciprocal_combinations: List[str] = option(
      flag="reciprocal_combination", factory=lambda: ["product"], help="How the reciprocal "
      "mode combines the two probabilities: product (= P(match)) and/or harmonic (RECON); the "
      "first is <run>:reciprocal, others <run>:reciprocal_<combination>.")
  back_swipes: bool = option(
      True, "Reciprocal mode: when v swiped on u in train, use the observed outcome (like 1, "
      "pass 0) as P(v likes u).", flag="reciprocal_back_swipes")
  popularity_penalties: List[float] = option(
      flag="popularity_penalty", factory=list, help="Betas of a serving-time popularity "
      "penalty: each non-zero beta adds <run>:pop<beta>, the model ranked by s(u, v) - beta * "
      "log(1 + train likes of v), to measure accuracy vs spread of exposure (e.g. "
      "0.002,0.01). Empty (default): no extra entries. It lowers the top 1 %'s share but "
      "RAISES Gini (docs/evaluation.md).")
  hubness_penalties: List[float] = option(
      flag="hubness_penalty", factory=list, help="Betas of a serving-time hubness penalty: "
      "each non-zero beta adds <run>:hub<beta>, the model ranked by s(u, v) - beta * qbar . c_v "
      "(qbar = mean query embedding; = centred queries), which spreads exposure (e.g. "
      "0.25,0.5). Empty (default): no extra entries.")
  exposure_caps: List[int] = option(
      flag="exposure_cap", factory=list, help="Per-candidate caps of a serving-time exposure "
      "control: each cap c adds <entry>:cap<c> for the one-way model, its hubness entries and "
      "the reciprocal mode, every candidate listed at most c times in the eval lists (one "
      "day's requests, in a seeded order). The dataset config's `exposure` section adds its "
      "own beta and cap.")
  active_window_days: float = option(
      _RULES.active_window_days, "Segment 'active': window before the split in which train "
      "swipes are counted.", lower_bound=0)
  active_min_swipes: int = option(_RULES.active_min_swipes, "Segment 'active': minimum train "
                                  "swipes in that window.", lower_bound=1)
  long_time_days: float = option(_RULES.long_time_days, "Segment 'long_time': minimum account "
                                 "age at the split, in days.", lower_bound=0)
  fresh_min_swipes: int = option(_RULES.fresh_min_swipes, "Segment 'swiped_after_training': "
                                 "minimum swipes between the end of the training data and the "
                                 "split (the validation window).", lower_bound=1)
  batch_size: int = option(1024, "Query users scored per block ([B, N] scores in memory).",
                           lower_bound=1)
  tensorboard: bool = option(True, "Write scalars and a PR curve to <run>/logs/eval.")
  verify_checksums: bool = option(True, "Hash dataset and run files against their manifests "
                                  "before evaluating.")
  overwrite: bool = option(False, "Replace an existing --output_dir (atomically).")
  # The app's database, when the config's baseline is its own SQL (baseline.sql): the
  # query runs there for every evaluated user. Its flags are the shared database flags.
  db_url: Optional[str] = None

  def rules(self) -> segments_lib.SegmentRules:
    return segments_lib.SegmentRules(active_window_days=self.active_window_days,
                                     active_min_swipes=self.active_min_swipes,
                                     long_time_days=self.long_time_days,
                                     fresh_min_swipes=self.fresh_min_swipes)


def run(dataset_dir: str, run_dirs: Sequence[str], output_dir: str,
        options: Optional[EvaluateOptions] = None,
        log: Callable[..., None] = print) -> Dict[str, object]:
  """Evaluates and writes the report; returns the report dict.

  With `reciprocal` (and one profile table on both sides) each run is also
  ranked reciprocally, once per combination in `reciprocal_combinations`
  (`retrieval.COMBINATIONS`; the first is `<run>:reciprocal`, others
  `<run>:reciprocal_<combination>`), using the train swipes of candidates on the
  user as observed P(v likes u) when `back_swipes`. Each non-zero beta of
  `popularity_penalties` adds `<run>:pop<beta>`, the one-way model ranked by
  s(u, v) - beta * log(1 + train likes of v), and of `hubness_penalties`
  `<run>:hub<beta>`, ranked by s(u, v) - beta * qbar . c_v
  (`retrieval.CandidatePenalty`). Each cap of `exposure_caps` adds
  `<entry>:cap<c>` for the one-way model, each hubness entry and the first
  reciprocal mode: lists filled in a seeded request order, each candidate listed
  at most c times (`retrieval.ExposureControl`). The dataset config's `exposure`
  section adds its beta and cap to these.

  Feature matching is the config's `baseline`: its terms, or its `sql` run
  against `db_url` for every evaluated user (`baselines.SqlBaseline`, lists
  judged as the app serves them).

  The ground truth of the oracle_* metrics is the synthetic world's hidden model
  (`world_dir`) or any `oracle` function `package.module:function` returning
  P(u likes v) for arrays of ids (`evaluation.oracle`); pairs already swiped in
  train count with their observed outcome either way.

  Raises:
    EvaluationInputError (a ValueError) for mismatched or unusable inputs, before
    any heavy work and before anything is written; oracle_lib.OracleError for an
    oracle that cannot be imported or answers with the wrong shape.
  """
  options = options or EvaluateOptions()
  ks, rules, world_dir, oracle = options.ks, options.rules(), options.world_dir, options.oracle
  bootstrap, seed, baselines = options.bootstrap, options.seed, options.baselines
  reciprocal, reciprocal_combinations = options.reciprocal, options.reciprocal_combinations
  back_swipes, exposure_caps, db_url = options.back_swipes, options.exposure_caps, options.db_url
  batch_size, overwrite = options.batch_size, options.overwrite
  popularity_penalties, hubness_penalties = (options.popularity_penalties,
                                             options.hubness_penalties)
  ks = sorted(set(int(k) for k in ks))
  if not ks or ks[0] < 1:
    raise EvaluationInputError(f"--k: need positive list lengths, got {ks}")
  unknown = sorted(set(baselines) - set(BASELINES))
  if unknown:
    raise EvaluationInputError(f"--baselines: unknown {unknown} (known: {', '.join(BASELINES)})")
  bad = sorted(set(reciprocal_combinations) - set(retrieval.COMBINATIONS))
  if bad or (reciprocal and not reciprocal_combinations):
    raise EvaluationInputError(f"--reciprocal_combination: unknown {bad or 'empty list'} "
                               f"(known: {', '.join(retrieval.COMBINATIONS)})")
  penalties = {}
  for kind, given in (("popularity", popularity_penalties), ("hubness", hubness_penalties)):
    penalties[kind] = sorted(set(float(b) for b in given if float(b) != 0.0))
    if any(not b > 0 for b in penalties[kind]):
      raise EvaluationInputError(f"--{kind}_penalty: betas must be >= 0, got {list(given)}")
  caps = sorted(set(int(c) for c in exposure_caps))
  if any(c < 1 for c in caps):
    raise EvaluationInputError(f"--exposure_cap: caps must be >= 1, got {list(exposure_caps)}")
  if bootstrap < 10:
    raise EvaluationInputError(f"--bootstrap: need at least 10 resamples, got {bootstrap}")
  if world_dir and oracle:
    raise EvaluationInputError("--world_dir and --oracle both give the ground truth: "
                               "give one")
  like_probability = oracle_lib.load(oracle) if oracle else None
  if os.path.exists(output_dir) and not overwrite:
    raise EvaluationInputError(f"--output_dir {output_dir} already exists (pass --overwrite)")
  dataset = reader.open_dataset(dataset_dir, verify_checksums=options.verify_checksums)
  runs = [_open_run(run_lib, path, dataset, options.verify_checksums) for path in run_dirs]
  exposure = dataset.config.rules.exposure  # the serving rule: measured beside the flags'
  if exposure.hubness_beta > 0:
    penalties["hubness"] = sorted(set(penalties["hubness"]) | {exposure.hubness_beta})
  if exposure.max_impressions_per_day:
    caps = sorted(set(caps) | {exposure.max_impressions_per_day})
  world = _load_world(world_dir) if world_dir else None

  started = time.time()
  data = evaluator.prepare(dataset, rules)
  log("evaluate: %d users with eval swipes (%d with eval likes), %d candidates, %d excluded "
      "train pairs (%.1fs)" % (data.num_users, data.notes["users_with_eval_likes"],
                               data.candidate_ids.size, data.notes["excluded_pairs"],
                               time.time() - started))
  if world is not None:
    try:
      world.user_index(np.concatenate([data.query_ids, data.candidate_ids]))
    except KeyError as e:
      raise EvaluationInputError(f"--world_dir {world_dir}: the world does not hold the "
                                 f"dataset's users ({e}); give the world the dataset was "
                                 "generated from") from None
    like_probability = oracle_lib.checked(world.like_probability, f"--world_dir {world_dir}")
  truth = None
  if like_probability is not None:
    like_probability(data.query_ids[:2], data.candidate_ids[:2])  # fails fast, before the work
    truth = recommenders_lib.realised_oracle(like_probability, data)

  assessed = assessment.assess(
      dataset, data, runs, _run_names(run_dirs), ks, truth=truth, baselines=baselines,
      seed=seed, db_url=db_url,
      reciprocal_combinations=reciprocal_combinations if reciprocal else (),
      back_swipes=back_swipes, penalties=penalties, caps=caps, bootstrap=bootstrap,
      batch_size=batch_size, log=log)
  entries, results, recommenders = assessed.entries, assessed.results, assessed.recommenders

  split_time = int(dataset.manifest["split_time"])
  report = {
      "kind": KIND,
      "dataset": {"path": os.path.abspath(dataset_dir), "config_hash": dataset.config.hash,
                  "manifest_sha256": files.sha256_file(dataset.file("manifest.json")),
                  "split_time": split_time,
                  "split_time_iso": datetime.datetime.fromtimestamp(
                      split_time, datetime.timezone.utc).isoformat()},
      "world_dir": os.path.abspath(world_dir) if world_dir else None,
      "oracle": oracle,
      "k": ks,
      "bootstrap": {"resamples": bootstrap, "seed": seed, "level": 0.95,
                    "unit": "user (query user with eval swipes)"},
      "data": {**data.notes, "candidates": int(data.candidate_ids.size),
               "shown_k": evaluator.shown_k(data, ks[0])},
      "segments": {"definitions": rules.describe(), "rules": dataclasses.asdict(rules),
                   "sizes": {s: int(m.sum()) for s, m in data.segments.items()}},
      "recommenders": recommenders,
      "lift_baseline": LIFT_BASELINE,
      "lifts": assessed.lifts,
      "run_comparisons": assessed.comparisons,
      "feature_matching": recommenders_lib.feature_matching_info(entries),
      "eligibility": dataset.config.eligibility.names if dataset.config.eligibility else None,
      "verdict_thresholds": dataclasses.asdict(dataset.config.rules.verdict),
      "notes": assessment.notes(data, truth is not None),
      "off_policy": assessed.off_policy,
  }
  report["answer"] = report_lib.answer(report)
  report["verdict"] = report_lib.verdict(report)
  for line in report["verdict"].values():
    log("evaluate: verdict: " + line["line"])

  with files.atomic_directory(output_dir, overwrite=overwrite) as out:
    curves = {n: {"labels": data.eval_swipes.labels, "scores": r.swipe_scores}
              for n, r in results.items()}
    percentiles = {n: report_lib.popularity_percentiles(r.top.candidates, data.likes_received,
                                                        ks[-1]) for n, r in results.items()}
    report["plots"] = report_lib.write_plots(out, report, curves, percentiles)
    report_lib.write_report(out, report)
    files.write_json(os.path.join(out, "manifest.json"), {
        "kind": KIND, "created_by": {"package": "tfrs_two_tower",
                                     "version": tfrs_two_tower.__version__},
        "dataset": report["dataset"],
        "runs": [{"path": os.path.abspath(r.path), "run_id": r.manifest.get("run_id"),
                  "manifest_sha256": files.sha256_file(r.file(run_lib.MANIFEST))} for r in runs],
        "flags": {"k": ks, "rules": dataclasses.asdict(rules), "world_dir": world_dir,
                  "oracle": oracle,
                  "bootstrap": bootstrap, "seed": seed, "baselines": list(baselines),
                  "reciprocal": reciprocal,
                  "reciprocal_combinations": list(reciprocal_combinations),
                  "back_swipes": back_swipes, "penalties": penalties,
                  "batch_size": batch_size},
        "files": files.file_checksums(out)})
  log("evaluate: report written to %s (%.1fs)" % (output_dir, time.time() - started))

  if options.tensorboard:
    for entry in entries:
      if entry.run is None or "exposure_cap" in entry.info:  # a cap leaves pair scores as is
        continue
      result = results[entry.scorer.name]
      probabilities = result.swipe_probabilities
      if probabilities is None:  # reciprocal scores are already in [0, 1]
        probabilities = result.swipe_scores
      sub = "eval" if entry.info["mode"] == "one_way" else "eval_" + entry.scorer.name.rsplit(
          ":", 1)[1]
      report_lib.write_tensorboard(
          os.path.join(entry.run.path, run_lib.LOGS, sub),
          int(entry.run.manifest.get("global_step", 0)), recommenders[entry.scorer.name],
          data.eval_swipes.labels, probabilities, prefix=sub)
  return report


def _open_run(run_lib, path: str, dataset, verify_checksums: bool):
  try:
    run = run_lib.open_run(path, verify_checksums=verify_checksums)
  except run_lib.RunFormatError as e:
    raise EvaluationInputError(f"--run_dir: {e}") from None
  try:
    reader.check_config_matches(dataset, run.manifest["config_hash"], f"--run_dir {path}")
  except reader.DatasetFormatError as e:
    raise EvaluationInputError(str(e)) from None
  trained_split = (run.manifest.get("dataset") or {}).get("split_time")
  if trained_split is not None and int(trained_split) != int(dataset.manifest["split_time"]):
    raise EvaluationInputError(
        f"--run_dir {path} was trained on a dataset split at {trained_split}, but "
        f"--dataset_dir {dataset.path} is split at {dataset.manifest['split_time']}: its eval "
        "window would overlap the run's training data")
  return run


def _load_world(world_dir: str):
  try:
    return synthetic.World.load(world_dir)
  except FileNotFoundError as e:
    raise EvaluationInputError(f"--world_dir: {e}") from None


def _run_names(paths: Sequence[str]) -> List[str]:
  names = []
  for path in paths:
    base = os.path.basename(os.path.normpath(path)) or "run"
    name, i = base, 2
    while name in names:
      name, i = f"{base}_{i}", i + 1
    names.append(name)
  return names
