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
import psycopg2

import tfrs_two_tower
from tfrs_two_tower import files
from tfrs_two_tower.data import impressions as impressions_lib
from tfrs_two_tower.data import reader
from tfrs_two_tower.data import sources
from tfrs_two_tower.data import synthetic
from tfrs_two_tower.evaluation import baselines as baselines_lib
from tfrs_two_tower.evaluation import evaluator
from tfrs_two_tower.evaluation import metrics
from tfrs_two_tower.evaluation import off_policy
from tfrs_two_tower.evaluation import oracle as oracle_lib
from tfrs_two_tower.evaluation import report as report_lib
from tfrs_two_tower.evaluation import retrieval
from tfrs_two_tower.evaluation import segments as segments_lib
from tfrs_two_tower.model import run_dir as run_lib

BASELINES = ("random", "popularity", "feature_matching")
LIFT_BASELINE = "feature_matching"
KIND = "tfrs_two_tower.evaluation"


class EvaluationInputError(ValueError):
  """Inputs that do not belong together or cannot be evaluated; the message says which."""


@dataclasses.dataclass
class _Entry:
  scorer: retrieval.Scorer
  kind: str  # "baseline" | "model"
  calibration: Optional[retrieval.PlattCalibration]
  info: Dict[str, object]
  run: object = None


def run(dataset_dir: str, run_dirs: Sequence[str], output_dir: str,
        ks: Sequence[int] = (10, 50, 100),
        rules: segments_lib.SegmentRules = segments_lib.SegmentRules(),
        world_dir: Optional[str] = None, bootstrap: int = 1000, seed: int = 0,
        baselines: Sequence[str] = BASELINES, reciprocal: bool = True,
        reciprocal_combinations: Sequence[str] = ("product",), back_swipes: bool = True,
        popularity_penalties: Sequence[float] = (), hubness_penalties: Sequence[float] = (),
        batch_size: int = 1024, tensorboard: bool = True, overwrite: bool = False,
        verify_checksums: bool = True, log: Callable[..., None] = print,
        oracle: Optional[str] = None,
        exposure_caps: Sequence[int] = (), db_url: Optional[str] = None) -> Dict[str, object]:
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
  dataset = reader.open_dataset(dataset_dir, verify_checksums=verify_checksums)
  runs = [_open_run(run_lib, path, dataset, verify_checksums) for path in run_dirs]
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
    truth = realised_oracle(like_probability, data)

  entries = _baselines(baselines, data, dataset, seed, db_url)
  names = _run_names(run_dirs)
  for name, run_dir in zip(names, runs):
    entries += _models(name, run_dir, data, dataset,
                       reciprocal_combinations if reciprocal else (), back_swipes, penalties,
                       caps, shown_slots=ks[0], log=log)

  counts = metrics.bootstrap_counts(data.num_users, bootstrap, seed)
  popular = metrics.top_popular_mask(data.likes_received, 0.01)
  results, recommenders = {}, {}
  for entry in entries:
    result = evaluator.evaluate(entry.scorer, data, ks, entry.calibration, truth, batch_size)
    result.info = {"kind": entry.kind, **entry.info}
    results[entry.scorer.name] = result
    recommenders[entry.scorer.name] = evaluator.summarize(result, data, counts, ks, popular)
    recommenders[entry.scorer.name]["eligibility_violations"] = evaluator.eligibility_violations(
        result, data)
    all_users = recommenders[entry.scorer.name]["segments"]["all"]
    log("evaluate: %-28s AUC %s  recall@%d %s  (%.1fs)" % (
        entry.scorer.name, report_lib.format_estimate(all_users["auc"]), ks[0],
        report_lib.format_estimate(all_users[f"recall@{ks[0]}"]), result.seconds))

  lifts = {}
  if LIFT_BASELINE in results:
    for name, result in results.items():
      if result.info["kind"] == "model":
        lifts[name] = evaluator.lift(result, results[LIFT_BASELINE], data, counts)
  comparisons = {}
  model_names = [n for n, r in results.items() if r.info["kind"] == "model"
                 and r.info["mode"] == "one_way"]
  for name in model_names[1:]:
    comparisons[f"{name} vs {model_names[0]}"] = evaluator.lift(
        results[name], results[model_names[0]], data, counts)

  off_policy_section = _off_policy(dataset, data, entries, results, counts, ks[0], truth, log)

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
      "lifts": lifts,
      "run_comparisons": comparisons,
      "feature_matching": _feature_matching_info(entries),
      "eligibility": dataset.config.eligibility.names if dataset.config.eligibility else None,
      "verdict_thresholds": dataclasses.asdict(dataset.config.rules.verdict),
      "notes": _notes(data, truth is not None),
      "off_policy": off_policy_section,
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

  if tensorboard:
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


def _baselines(names: Sequence[str], data: evaluator.EvalData, dataset, seed: int,
               db_url: Optional[str] = None) -> List[_Entry]:
  entries = []
  for name in names:
    if name == "random":
      scorer = baselines_lib.RandomScorer(data.query_ids, data.candidate_ids, seed)
    elif name == "popularity":
      scorer = baselines_lib.PopularityScorer(data.query_ids, data.candidate_ids,
                                              data.likes_received)
    elif dataset.config.baseline is not None and dataset.config.baseline.sql:
      scorer = _sql_baseline(dataset.config.baseline.sql, data, db_url)
    else:
      if dataset.config.baseline is None or data.eligible is None:
        raise EvaluationInputError(
            "--baselines=feature_matching: the dataset's config declares no baseline terms "
            "and eligibility rules (config keys `baseline`, `eligibility`); leave it out")
      scorer = baselines_lib.FeatureMatching(dataset.config, data.query_entities,
                                             data.candidate_entities, data.eligible)
    entries.append(_Entry(scorer, "baseline", evaluator.fit_calibration(scorer, data, seed), {}))
  return entries


def _sql_baseline(sql: str, data: evaluator.EvalData, db_url: Optional[str]):
  """The config's baseline.sql run against the app's database for every evaluated user."""
  if not db_url:
    raise EvaluationInputError("the config's baseline is SQL (baseline.sql): give the app's "
                               "database with --db_url")
  try:
    conn = psycopg2.connect(db_url)
  except psycopg2.Error as e:
    raise EvaluationInputError(f"--db_url: cannot connect: {sources.redact(str(e).strip())}") from None
  try:
    return baselines_lib.SqlBaseline(data.query_ids, data.candidate_ids, conn, sql, data.users)
  except baselines_lib.SqlBaselineError as e:
    raise EvaluationInputError(str(e)) from None
  finally:
    conn.close()


def _models(name: str, run, data: evaluator.EvalData, dataset, combinations: Sequence[str],
            back_swipes: bool, penalties: Dict[str, Sequence[float]],
            caps: Sequence[int] = (), shown_slots: int = 10,
            log: Callable[..., None] = print) -> List[_Entry]:
  started = time.time()
  query_embeddings = run.embed("query", data.query_entities)
  ids, embeddings = run.candidate_embeddings()
  rows = retrieval.id_index(np.asarray(ids, dtype=object)).get_indexer(data.candidate_ids)
  if (rows < 0).any():
    raise EvaluationInputError(f"--run_dir {run.path}: candidate_embeddings.npz lacks "
                               f"{int((rows < 0).sum())} of the dataset's candidates "
                               f"(e.g. {data.candidate_ids[rows < 0][0]!r})")
  forward = retrieval.EmbeddingScorer(data.query_ids, data.candidate_ids, query_embeddings,
                                      embeddings[rows], name=name)
  calibration = evaluator.fit_calibration(forward, data)
  flags = run.flags
  info = {"run_dir": os.path.abspath(run.path), "run_id": run.manifest.get("run_id"),
          "global_step": run.manifest.get("global_step"),
          "sampling_probability": run.manifest.get("sampling_probability"),
          "pass_loss_weight": flags.get("pass_loss_weight"),
          "num_hard_negatives": flags.get("num_hard_negatives"),
          "calibration": dataclasses.asdict(calibration) if calibration else None,
          "embedding_seconds": round(time.time() - started, 2)}
  entries = [_Entry(forward, "model", calibration, {**info, "mode": "one_way"}, run)]
  for kind, betas in penalties.items():
    for beta in betas:
      penalised = (retrieval.CandidatePenalty.popularity(forward, data.likes_received, beta)
                   if kind == "popularity" else retrieval.CandidatePenalty.hubness(forward, beta))
      entries.append(_Entry(penalised, "model", evaluator.fit_calibration(penalised, data),
                            {**info, "mode": f"{kind}_penalty", "beta": beta}, run))
  if combinations and dataset.config.same_entity_both_sides and calibration is None:
    log("evaluate: no reciprocal ranking: it multiplies calibrated P(like) of both "
        "directions, and the train swipes have no passes to calibrate on")
  elif combinations and dataset.config.same_entity_both_sides:
    # Both towers see the same profile table: embed every user in the other role too.
    candidate_side_of_queries = run.embed(
        "candidate", retrieval.as_other_side(data.query_entities, "query", "candidate"))
    query_side_of_candidates = run.embed(
        "query", retrieval.as_other_side(data.candidate_entities, "candidate", "query"))
    backward = retrieval.EmbeddingScorer(data.query_ids, data.candidate_ids,
                                         candidate_side_of_queries, query_side_of_candidates,
                                         name=f"{name}:backward")
    observed = _train_back_swipes(forward, data) if back_swipes else None
    for i, combination in enumerate(combinations):
      scorer = retrieval.ReciprocalScorer(
          forward, backward, calibration, combination=combination, back_swipes=observed,
          name=f"{name}:reciprocal" + (f"_{combination}" if i else ""))
      entries.append(_Entry(scorer, "model", None,
                            {**info, "mode": "reciprocal", "combination": combination,
                             "back_swipes": back_swipes}, run))
  return entries + _capped(entries, caps, shown_slots)


def _capped(entries: List[_Entry], caps: Sequence[int], shown_slots: int) -> List[_Entry]:
  """`<entry>:cap<c>` for the one-way, hubness and first reciprocal entries of one run; the
  cap counts the first `shown_slots` places of each list (the smallest K: one feed)."""
  bases = [e for e in entries if e.info["mode"] in ("one_way", "hubness_penalty")]
  bases += [e for e in entries if e.info["mode"] == "reciprocal"][:1]
  return [_Entry(retrieval.ExposureControl(e.scorer, cap, shown_slots=shown_slots), "model",
                 e.calibration,
                 {**e.info, "exposure_cap": cap}, e.run)
          for cap in caps for e in bases]


def _train_back_swipes(scorer: retrieval.Scorer,
                       data: evaluator.EvalData) -> retrieval.BackSwipes:
  """Train swipes of candidates on query users: known when the eval-time lists are made."""
  train = data.train_swipes
  return retrieval.BackSwipes.of_swipes(scorer, data.query_ids[train.users],
                                        data.candidate_ids[train.candidates], train.labels)


def realised_oracle(like_probability: oracle_lib.OracleFn, data: evaluator.EvalData):
  """The oracle's P(swiper likes swipee), except for pairs swiped in train: their outcome.

  A candidate who already liked (passed on) the user matches with certainty
  (never) if the user likes them; the hidden probability would hide what the
  app already knows when it ranks.
  """
  train = data.train_swipes
  ids = retrieval.id_index(np.unique(np.concatenate([data.query_ids, data.candidate_ids])
                                     .astype(str)).astype(object))
  observed = retrieval.BackSwipes.from_swipes(
      ids.get_indexer(data.query_ids[train.users].astype(str)),
      ids.get_indexer(data.candidate_ids[train.candidates].astype(str)), train.labels, ids.size)

  def realised(swiper_ids, swipee_ids):
    outcome = observed.lookup(ids.get_indexer(np.asarray(swiper_ids).astype(str)),
                              ids.get_indexer(np.asarray(swipee_ids).astype(str)))
    return np.where(np.isnan(outcome), like_probability(swiper_ids, swipee_ids), outcome)
  return realised


def _off_policy(dataset, data: evaluator.EvalData, entries: List[_Entry],
                results: Dict[str, evaluator.Result], counts: np.ndarray, k: int, oracle,
                log: Callable[..., None]) -> Optional[Dict[str, object]]:
  """Off-policy estimates of like/match rate@k for every recommender from the dataset's
  impressions log (None without one). Reward model: the first one-way run's calibrated
  P(like), else the lift baseline's; the same for every recommender so DR compares alike."""
  log_frame = impressions_lib.read(dataset)
  if log_frame is None:
    return None
  source = dataset.file(impressions_lib.FILE)
  try:
    feeds = off_policy.logged_feeds(log_frame, data, source)
  except off_policy.ImpressionLogError as e:
    raise EvaluationInputError(str(e)) from None
  if feeds.feed.size == 0:
    return {"refused": f"{source}: no logged feed of an evaluated user in the eval window",
            "log": feeds.notes}
  ranked = [e for e in entries if e.calibration is not None]
  reference = next((e for e in ranked if e.kind == "model"),
                   next((e for e in ranked if e.scorer.name == LIFT_BASELINE), ranked[0]))
  reward = off_policy.reward_model(reference.scorer, reference.calibration, feeds, data,
                                   dataset.config.same_entity_both_sides)
  sections, sums = {}, {}
  for entry in entries:
    name = entry.scorer.name
    sums[name], sections[name] = off_policy.evaluate_ranking(
        entry.scorer, feeds, data, reward, k, counts, oracle, results[name].top.candidates)
    support = sections[name]["support"]
    log("evaluate: off-policy %-24s %s (matched %d, ESS %.0f)" % (
        name, "refused" if sums[name] is None else "DR like@%d %s" % (
            k, report_lib.format_estimate(sections[name]["segments"]["all"]["dr_like"])),
        support["matched_impressions"], support["effective_sample_size"]))
  lifts = {}
  if sums.get(LIFT_BASELINE) is not None:
    lifts = {name: off_policy.lift(s, sums[LIFT_BASELINE], counts, data.segments)
             for name, s in sums.items()
             if s is not None and results[name].info["kind"] == "model"}
  return {"file": impressions_lib.FILE, "k": k, "log": feeds.notes,
          "explored": feeds.explored, "reward_model": reward.name,
          "min_effective_sample_size": off_policy.MIN_EFFECTIVE_SAMPLE,
          "recommenders": sections, "lifts": lifts}


def _feature_matching_info(entries: List[_Entry]) -> Optional[Dict[str, object]]:
  for entry in entries:
    if isinstance(entry.scorer, baselines_lib.FeatureMatching):
      return {"terms": [{k: v for k, v in dataclasses.asdict(t).items()
                         if v is not None and v != float("inf")} for t in entry.scorer.terms],
              "active_terms": list(entry.scorer.active_terms)}
  return None


def _notes(data: evaluator.EvalData, with_world: bool) -> List[str]:
  notes = [
      "Eval likes of pairs already swiped in train are not counted as relevant (they are "
      f"excluded from every list): {data.notes['eval_likes_already_swiped_in_train']} of "
      f"{data.notes['eval_likes']}.",
      "Offline recall only credits candidates the live feed happened to show: if that feed "
      "was feature matching, the logged likes favour feature matching (exposure bias).",
      "success@K = share of recommended users who liked the user back, among recommended "
      "users whose swipe on the user is observed in the eval window (`trials` = observed).",
      "factorized_topK_accuracy: TFRS FactorizedTopK definition (share of eval likes ranked "
      "in the top K of ALL candidates, nothing excluded), for comparison with TFRS tutorials.",
      "Log loss uses a Platt calibration fitted on train swipes; reciprocal scores combine "
      "two probabilities (product or harmonic mean), not P(like), so they have no log loss.",
      "Reciprocal modes (back_swipes on) take P(v likes u) = 1 / 0 when v liked / passed on u "
      "in train; such v rarely swipe u again in the eval window, so success@K judges them "
      "less often (fewer trials).",
  ]
  if with_world:
    notes.append("oracle_*@K: mean hidden probability from the synthetic world over the top-K "
                 "pairs (like: u likes v, like_back: v likes u, match: both); a pair already "
                 "swiped in train counts with its observed outcome (1 like, 0 pass).")
  return notes
