"""The recommenders one evaluation compares, each a scorer with what the report says of it.

`baseline_entries` builds random, popularity and the config's feature matching
(its terms, or its own SQL run against the app's database); `model_entries`
builds every ranking of one trained run: one-way, popularity/hubness-penalised,
reciprocal (P(u likes v) and P(v likes u) combined) and exposure-capped.
`realised_oracle` is the ground truth the oracle_* metrics judge them by.
Runs are duck-typed (`embed`, `candidate_embeddings`, `flags`, `manifest`,
`path`: `model/run_dir.Run`), so this layer does not import the model code.
"""

import dataclasses
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import psycopg2

from tfrs_two_tower.data import sources
from tfrs_two_tower.evaluation import baselines as baselines_lib
from tfrs_two_tower.evaluation import evaluator
from tfrs_two_tower.evaluation import oracle as oracle_lib
from tfrs_two_tower.evaluation import retrieval

BASELINES = ("random", "popularity", "feature_matching")
LIFT_BASELINE = "feature_matching"


class EvaluationInputError(ValueError):
  """Inputs that do not belong together or cannot be evaluated; the message says which."""


@dataclasses.dataclass
class Entry:
  """One ranked list maker: its scorer, kind, P(like) calibration and report info."""
  scorer: retrieval.Scorer
  kind: str  # "baseline" | "model"
  calibration: Optional[retrieval.PlattCalibration]
  info: Dict[str, object]
  run: object = None


def baseline_entries(names: Sequence[str], data: evaluator.EvalData, dataset, seed: int,
                     db_url: Optional[str] = None) -> List[Entry]:
  """The baselines named in `names` (of BASELINES), each with its Platt calibration."""
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
    entries.append(Entry(scorer, "baseline", evaluator.fit_calibration(scorer, data, seed), {}))
  return entries


def _sql_baseline(sql: str, data: evaluator.EvalData, db_url: Optional[str]):
  """The config's baseline.sql run against the app's database for every evaluated user."""
  if not db_url:
    raise EvaluationInputError("the config's baseline is SQL (baseline.sql): give the app's "
                               "database with --db_url")
  try:
    conn = psycopg2.connect(db_url)
  except psycopg2.Error as e:
    raise EvaluationInputError(
        f"--db_url: cannot connect: {sources.redact(str(e).strip())}") from None
  try:
    return baselines_lib.SqlBaseline(data.query_ids, data.candidate_ids, conn, sql, data.users)
  except baselines_lib.SqlBaselineError as e:
    raise EvaluationInputError(str(e)) from None
  finally:
    conn.close()


def model_entries(name: str, run, data: evaluator.EvalData, dataset,
                  combinations: Sequence[str], back_swipes: bool,
                  penalties: Dict[str, Sequence[float]], caps: Sequence[int] = (),
                  shown_slots: int = 10, log: Callable[..., None] = print) -> List[Entry]:
  """Every ranking of one run, named `name[:mode]` (see `evaluate_stage.run`).

  `penalties`: {"popularity" | "hubness": betas}; `combinations`: reciprocal
  modes (empty: none); `caps`: exposure caps counted over the first
  `shown_slots` places of each list.
  """
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
  entries = [Entry(forward, "model", calibration, {**info, "mode": "one_way"}, run)]
  for kind, betas in penalties.items():
    for beta in betas:
      penalised = (retrieval.CandidatePenalty.popularity(forward, data.likes_received, beta)
                   if kind == "popularity" else retrieval.CandidatePenalty.hubness(forward, beta))
      entries.append(Entry(penalised, "model", evaluator.fit_calibration(penalised, data),
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
    observed = train_back_swipes(forward, data) if back_swipes else None
    for i, combination in enumerate(combinations):
      scorer = retrieval.ReciprocalScorer(
          forward, backward, calibration, combination=combination, back_swipes=observed,
          name=f"{name}:reciprocal" + (f"_{combination}" if i else ""))
      entries.append(Entry(scorer, "model", None,
                            {**info, "mode": "reciprocal", "combination": combination,
                             "back_swipes": back_swipes}, run))
  return entries + _capped(entries, caps, shown_slots)


def _capped(entries: List[Entry], caps: Sequence[int], shown_slots: int) -> List[Entry]:
  """`<entry>:cap<c>` for the one-way, hubness and first reciprocal entries of one run; the
  cap counts the first `shown_slots` places of each list (the smallest K: one feed)."""
  bases = [e for e in entries if e.info["mode"] in ("one_way", "hubness_penalty")]
  bases += [e for e in entries if e.info["mode"] == "reciprocal"][:1]
  return [Entry(retrieval.ExposureControl(e.scorer, cap, shown_slots=shown_slots), "model",
                 e.calibration,
                 {**e.info, "exposure_cap": cap}, e.run)
          for cap in caps for e in bases]


def train_back_swipes(scorer: retrieval.Scorer,
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


def feature_matching_info(entries: List[Entry]) -> Optional[Dict[str, object]]:
  for entry in entries:
    if isinstance(entry.scorer, baselines_lib.FeatureMatching):
      return {"terms": [{k: v for k, v in dataclasses.asdict(t).items()
                         if v is not None and v != float("inf")} for t in entry.scorer.terms],
              "active_terms": list(entry.scorer.active_terms)}
  return None
