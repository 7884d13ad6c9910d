"""Simulated experiments on the synthetic world: the proof that the A/B loop works end to end.

The world's hidden model (`World.respond`) plays the users, so the true effect
of a recommender is known to the simulation and hidden from the analysis:

  users ──assignment.Experiment (the real hash)──▶ arm ──▶ that arm's recommender
     each simulated day, each active user (P = hidden activity) opens the app:
       first open -> exposure (first_exposed_at); feed = recommender.top_k(user, feed_size,
       exclude = everyone the user already swiped); swipes ~ World.respond
       (a reciprocal recommender also knows every swipe made before that day)
  history swipes + experiment swipes ──COPY──▶ PostgreSQL `swipes`
  exposures ──ab_log_exposure()──▶ `ab_exposures`  (SQL assignment, idempotent)
  analysis reads ONE snapshot of `ab_user_outcomes`

A recommender is anything with the evaluation's `Scorer.top_k` interface,
`top_k(user_ids [U], k, exclude=[U lists of ids]) -> (ids [U, k] with None
padding, scores)`: `evaluation.baselines.FeatureMatching` (control) and
`evaluation.retrieval.EmbeddingScorer` over a run dir's towers (treatment)
both are. A `retrieval.ReciprocalScorer` is re-armed each day with the swipes
observed so far (`with_back_swipes`): who already liked or passed on the user.
A run whose query tower reads the swipe history (config `history`) is a
`HistoryTwoTower`: rebuilt each day (`as_of`) with every user's history as of
that day's start, the world's swipes and the experiment's so far -- what the
app does by computing the query embedding at request time.

The experiment starts where the world's history ends, so the pre-period
(CUPED covariates) is the world's own history.
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Sequence, Tuple

import numpy as np
import pandas as pd

from tfrs_two_tower import eligibility as eligibility_lib
from tfrs_two_tower import features as features_lib
from tfrs_two_tower.abtest import assignment
from tfrs_two_tower.abtest import database
from tfrs_two_tower.abtest import definition as definition_lib
from tfrs_two_tower.data import history as history_lib
from tfrs_two_tower.data import synthetic
from tfrs_two_tower.evaluation import baselines
from tfrs_two_tower.evaluation import retrieval
from tfrs_two_tower.model import run_dir

SECONDS_PER_DAY = synthetic.SECONDS_PER_DAY
SESSION_SECONDS = 1800  # a session's swipes fall within half an hour of opening the app

class Recommender(Protocol):
  """User ids -> ranked candidate ids (the `evaluation.retrieval.Scorer` interface)."""
  name: str

  def top_k(self, query_ids: Sequence[str], k: int,
            exclude: Optional[Sequence[Sequence[str]]] = None,
            exclude_self: bool = True, eligible=None) -> Tuple[np.ndarray, np.ndarray]:
    ...


def world_entities(world: synthetic.World, config, side: str) -> Dict[str, Any]:
  """The world's profiles encoded as one side's entity table (dataset keys)."""
  return features_lib.encode_entity_table(config, side, world.profiles, "world profiles")


def world_rules(world: synthetic.World, config,
                now: Optional[float] = None) -> Optional[eligibility_lib.PairRules]:
  """The config's eligibility rules over the world's profiles (rows = world index);
  None when the config has no eligibility section. The same rules the world's
  exploring feed draws from (`synthetic.eligibility_rules`)."""
  rules = synthetic.eligibility_rules(world.profiles, config)
  return rules if rules is None or now is None else rules.at(now)


def with_exposure_control(recommender, exposure) -> Recommender:
  """The recommender under the config's `exposure` rules: the hubness penalty (one-way
  model scorers only: it shifts the query embedding) and the per-day candidate cap."""
  if isinstance(recommender, HistoryTwoTower):  # applied to each day's rebuilt scorer
    return dataclasses.replace(recommender, exposure=exposure)
  if exposure.hubness_beta > 0 and isinstance(recommender, retrieval.EmbeddingScorer):
    recommender = retrieval.CandidatePenalty.hubness(recommender, exposure.hubness_beta)
  if exposure.max_impressions_per_day:
    recommender = retrieval.ExposureControl(recommender, exposure.max_impressions_per_day)
  return recommender


def feature_matching(world: synthetic.World, config):
  """Control: the users' Phase 1&2 feature matching (the config's baseline terms)."""
  return baselines.FeatureMatching(config, world_entities(world, config, "query"),
                                   world_entities(world, config, "candidate"),
                                   world_rules(world, config))


def two_tower(world: synthetic.World, run_path: str, reciprocal: bool = False,
              combination: str = "product"):
  """Treatment: q_u . c_v from a run dir's towers, over the world's profiles.

  With `reciprocal`, `evaluation.retrieval.ReciprocalScorer`: P(u likes v) and
  P(v likes u) combined by `combination` ("product" = P(match), "harmonic" =
  RECON), both calibrated by a Platt fit on the world's history swipes (what the
  model was trained on); `simulate` adds the observed back-swipes.
  """
  run = run_dir.open_run(run_path)
  candidate = run.embed("candidate", world_entities(world, run.config, "candidate"))
  if run.config.history:
    return HistoryTwoTower(world, run, candidate, reciprocal, combination).as_of(
        swipe_interactions(world.swipes))
  query = run.embed("query", world_entities(world, run.config, "query"))
  return _two_tower_scorer(world, query, candidate, reciprocal, combination)


def _two_tower_scorer(world: synthetic.World, query: np.ndarray, candidate: np.ndarray,
                      reciprocal: bool, combination: str,
                      calibration: Optional[retrieval.PlattCalibration] = None):
  """The one-way or reciprocal scorer of [n, d] query and candidate embeddings (world rows);
  `calibration` default: fitted on the world's history swipes."""
  ids = world.profiles["id"].astype(str).to_numpy()
  forward = retrieval.EmbeddingScorer(ids, ids, query, candidate, name="two_tower")
  if not reciprocal:
    return forward
  # backward.score_block(rows)[b, j] = s(j likes b) = q_j . c_b
  backward = retrieval.EmbeddingScorer(ids, ids, candidate, query, name="two_tower:backward")
  if calibration is None:
    history = world.swipes
    calibration = retrieval.PlattCalibration.fit(
        forward.pair_scores(forward.query_rows(history["swiper_id"]),
                            forward.candidate_rows(history["swipee_id"])),
        (history["action"] != "pass").to_numpy())
  return retrieval.ReciprocalScorer(forward, backward, calibration, combination=combination,
                                    name="two_tower:reciprocal")


def swipe_interactions(swipes: pd.DataFrame) -> Dict[str, np.ndarray]:
  """World-schema swipes (the world's, or a simulation's) as history interactions
  (`history.histories_at`): ids, label 1 for a like (any action but a pass), timestamp in
  seconds since the world's start."""
  return _interactions(swipes, (swipes["created_at"] - synthetic.START).dt.total_seconds())


def _interactions(swipes: pd.DataFrame, seconds) -> Dict[str, np.ndarray]:
  """World-schema swipes (swiper_id, swipee_id, action) at `seconds` since the world's start
  as history interactions."""
  return {"query_id": swipes["swiper_id"].to_numpy(str).astype(object),
          "candidate_id": swipes["swipee_id"].to_numpy(str).astype(object),
          "label": (swipes["action"] != "pass").to_numpy(np.int64),
          "timestamp": np.asarray(seconds).astype(np.int64)}


@dataclasses.dataclass
class HistoryTwoTower:
  """The two-tower treatment of a run whose query tower reads the swipe history.

  `as_of(swipes)` is the scorer of a day: every user's query embedding with
  their history lists as of then (`history.histories_at` over `swipes`), the
  candidate embeddings as they are (the candidate tower reads no history); a
  reciprocal one keeps the calibration fitted at the world's end. It is itself
  the scorer as of the world's end (`top_k`), so it serves as is too.

  Attributes:
    candidate: [n, d] candidate embeddings of the world's profiles.
    exposure: the config's exposure rules, applied to each day's scorer.
  """
  world: synthetic.World
  run: Any
  candidate: np.ndarray
  reciprocal: bool = False
  combination: str = "product"
  exposure: Any = None
  current: Any = None
  calibration: Optional[retrieval.PlattCalibration] = None

  @property
  def name(self) -> str:
    return self.current.name

  def as_of(self, swipes: Mapping[str, np.ndarray]) -> "HistoryTwoTower":
    """This recommender with every user's history as of after `swipes` (query_id,
    candidate_id, label 1 like / 0 pass, timestamp arrays)."""
    ids = self.world.profiles["id"].astype(str).to_numpy()
    queries = world_entities(self.world, self.run.config, "query")
    queries.update(history_lib.histories_at(self.run.config.history, swipes, ids))
    scorer = _two_tower_scorer(self.world, self.run.embed("query", queries), self.candidate,
                               self.reciprocal, self.combination, self.calibration)
    calibration = getattr(scorer, "calibration", None) if self.reciprocal else None
    if self.exposure is not None:
      scorer = with_exposure_control(scorer, self.exposure)
    return dataclasses.replace(self, current=scorer, calibration=calibration)

  def top_k(self, *args, **kwargs):
    return self.current.top_k(*args, **kwargs)

  def with_back_swipes(self, back_swipes):
    return self.current.with_back_swipes(back_swipes)


def oracle(world: synthetic.World, reciprocal: bool = False):
  """The ceiling: ranks by the world's hidden P(u likes v), or with `reciprocal` by
  P(match) = P(u likes v) P(v likes u). No real recommender can know either."""

  def log_probability(u, v):
    log_like = -np.logaddexp(0.0, -world.utility(u, v))  # log sigmoid
    return log_like - np.logaddexp(0.0, -world.utility(v, u)) if reciprocal else log_like

  class Oracle(retrieval.Scorer):
    name = "oracle:reciprocal" if reciprocal else "oracle"

    def score_block(self, query_rows):
      import tensorflow as tf
      u = np.asarray(query_rows)[:, None]
      return tf.constant(log_probability(u, np.arange(self.num_candidates)[None, :]), tf.float32)

    def pair_scores(self, query_rows, candidate_rows):
      return log_probability(np.asarray(query_rows), np.asarray(candidate_rows)).astype(
          np.float32)

  ids = world.profiles["id"].astype(str).to_numpy()
  return Oracle(ids, ids)


@dataclasses.dataclass(frozen=True)
class SimulationParams:
  """Knobs of one simulated experiment.

  Attributes:
    days: experiment length in simulated days.
    feed_size: profiles per app open (default: the world's).
    seed: randomness of activity, timing and responses (NOT of assignment,
      which is the experiment's hash).
    exposure_log_loss: arm -> fraction of its users whose exposure log never
      reaches the database (a buggy client); injects a sample-ratio mismatch.
    pre_period_days: CUPED pre-period before the start.
    rules: the eligibility rules every arm's feed obeys (`world_rules`); their
      ranking time is set to each simulated day.
    attention_per_day: limited attention (None = unlimited): a user answers at most
      this many of the likes they receive each day, so the expected match of a shown
      pair is P(u likes v) P(v likes u) min(1, attention / L_v), L_v = expected likes
      v receives that day from every arm's feeds (`synthetic.answered_share`).
      Reported as `true_match_probability_limited`.
    like_probability: the ground truth P(swiper likes swipee) for id arrays
      (`evaluation.oracle`; e.g. a team's own simulator); default: the world's
      hidden model. Swipes are drawn from it; a like is a superlike when its
      probability exceeds sigmoid(world.params.superlike_utility).
  """
  days: int = 14
  feed_size: Optional[int] = None
  seed: int = 0
  exposure_log_loss: Mapping[str, float] = dataclasses.field(default_factory=dict)
  pre_period_days: float = 28.0
  rules: Optional[eligibility_lib.PairRules] = None
  attention_per_day: Optional[float] = None
  like_probability: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None


@dataclasses.dataclass
class Simulation:
  """What happened (the truth) and what was logged.

  Attributes:
    definition: the experiment (starts where the world's history ends).
    arms: [n users] every user's assigned arm (exposed or not).
    exposures: logged exposures (user_id, arm, first_exposed_at).
    swipes: the experiment's swipes (swiper_id, swipee_id, action, created_at).
    true_like_probability: arm -> mean oracle P(user likes shown profile).
    true_match_probability: arm -> mean P(both like each other) of the pairs
      shown (the match potential, whether or not the other side ever gets to
      see the user): oracle P(u likes v) times P(v likes u), the latter 1 / 0
      when v had already liked / passed on u before that day.
    impressions: every arm's feeds in the world's impressions-log schema
      (`synthetic.World.impressions`), propensity 1 (a deterministic top-k).
    true_match_probability_limited: true_match_probability under limited
      attention (`SimulationParams.attention_per_day`; empty when unlimited).
  """
  definition: definition_lib.Definition
  arms: np.ndarray
  exposures: pd.DataFrame
  swipes: pd.DataFrame
  true_like_probability: Dict[str, float]
  true_match_probability: Dict[str, float]
  impressions: Optional[pd.DataFrame] = None
  true_match_probability_limited: Dict[str, float] = dataclasses.field(default_factory=dict)


def simulate(world: synthetic.World, recommenders: Mapping[str, Recommender],
             experiment: assignment.Experiment, params: SimulationParams = SimulationParams(),
             log=print) -> Simulation:
  """Runs the experiment on the world (see the module docstring)."""
  missing = set(experiment.arm_names) - set(recommenders)
  if missing:
    raise ValueError(f"no recommender for arm(s) {sorted(missing)}")
  rng = np.random.default_rng(params.seed)
  truth = params.like_probability or world.like_probability
  superlike_probability = 1.0 / (1.0 + np.exp(-world.params.superlike_utility))
  ids = world.profiles["id"].astype(str).to_numpy()
  n = ids.size
  feed_size = params.feed_size or world.params.feed_size
  starts_at = synthetic.START + pd.Timedelta(days=world.params.days)
  start_seconds = world.params.days * SECONDS_PER_DAY
  arms = experiment.assign_many(ids)
  # Already swiped pairs are never shown again (the app's rule; the world's too).
  seen = [set() for _ in range(n)]
  swipers = [world.user_index(world.swipes["swiper_id"])]
  swipees = [world.user_index(world.swipes["swipee_id"])]
  liked = [(world.swipes["action"] != "pass").to_numpy()]
  for u, v in zip(swipers[0], swipees[0]):
    seen[u].add(v)
  first_exposure = np.full(n, -1, np.int64)
  chunks, impressions = [], []
  shown_like = {arm: [] for arm in experiment.arm_names}
  shown_match = {arm: [] for arm in experiment.arm_names}
  shown_limited = {arm: [] for arm in experiment.arm_names}
  activity = world.hidden["activity"]
  history_swipes = (swipe_interactions(world.swipes) if any(isinstance(r, HistoryTwoTower)
                                               for r in recommenders.values()) else None)
  known = 0  # chunks already in history_swipes
  for day in range(params.days):
    # Swipes before today, by world index: (swipee u, swiper v) -> did v like u.
    observed = retrieval.BackSwipes.from_swipes(np.concatenate(swipees), np.concatenate(swipers),
                                                np.concatenate(liked), n)
    if history_swipes is not None:  # every swipe before today: the histories as of today
      history_swipes = _with_swipes(history_swipes, chunks[known:])
      known = len(chunks)
    todays = {arm: _observing(_as_of(recommender, history_swipes), observed, ids)
              for arm, recommender in recommenders.items()}
    rules_today = None if params.rules is None else params.rules.at(
        float((synthetic.START + pd.Timedelta(days=world.params.days + day)).timestamp()))
    active = rng.random(n) < activity
    opened = start_seconds + day * SECONDS_PER_DAY + rng.integers(
        0, SECONDS_PER_DAY - SESSION_SECONDS, n)
    todays_pairs = []  # (arm, shown, P(u likes v) P(v likes u), P(u likes v)) for attention
    newly = active & (first_exposure < 0)
    first_exposure[newly] = opened[newly]
    for arm in experiment.arm_names:
      users = np.flatnonzero(active & (arms == arm))
      if users.size == 0:
        continue
      feed, feed_scores = todays[arm].top_k(ids[users], feed_size,
                                            exclude=[ids[list(seen[u])] for u in users],
                                            eligible=rules_today)
      swiper = np.repeat(users, feed_size)
      shown_ids = np.asarray(feed, dtype=object).ravel()
      ok = np.array([s is not None for s in shown_ids], bool)
      impressions.append(_feed_log(arm, day, swiper[ok], shown_ids[ok],
                                   np.tile(np.arange(feed_size), users.size)[ok],
                                   np.asarray(feed_scores).ravel()[ok], opened, ids))
      swiper, shown = swiper[ok], world.user_index(shown_ids[ok])
      p_like = truth(ids[swiper], ids[shown])
      like = rng.random(swiper.size) < p_like  # = World.respond for the world's truth
      superlike = like & (p_like > superlike_probability)
      shown_like[arm].append(p_like)
      back = observed.lookup(swiper, shown)
      shown_match[arm].append(p_like * np.where(
          np.isnan(back), truth(ids[shown], ids[swiper]), back))
      todays_pairs.append((arm, shown, shown_match[arm][-1], p_like))
      for u, v in zip(swiper, shown):
        seen[u].add(v)
      swipers.append(swiper)
      swipees.append(shown)
      liked.append(like)
      chunks.append(pd.DataFrame({
          "swiper_id": ids[swiper], "swipee_id": ids[shown],
          "action": np.where(like, np.where(superlike, "superlike", "like"), "pass"),
          "t": opened[swiper] + rng.integers(1, SESSION_SECONDS, swiper.size)}))
    if params.attention_per_day is not None and todays_pairs:
      likes_received = np.bincount(np.concatenate([t[1] for t in todays_pairs]),
                                   weights=np.concatenate([t[3] for t in todays_pairs]),
                                   minlength=n)
      answered = synthetic.answered_share(likes_received, params.attention_per_day)
      for arm, shown, match, _ in todays_pairs:
        shown_limited[arm].append(match * answered[shown])
    log("simulate: day %d/%d, %d exposed" % (day + 1, params.days, (first_exposure >= 0).sum()))
  swipes = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(
      columns=["swiper_id", "swipee_id", "action", "t"])
  swipes = swipes.sort_values("t", kind="stable").reset_index(drop=True)
  swipes["created_at"] = synthetic.START + pd.to_timedelta(swipes.pop("t"), unit="s")

  exposed = first_exposure >= 0
  lost = np.zeros(n, bool)
  for arm, fraction in params.exposure_log_loss.items():
    lost |= (arms == arm) & (rng.random(n) < fraction)
  logged = exposed & ~lost
  exposures = pd.DataFrame({
      "user_id": ids[logged], "arm": arms[logged],
      "first_exposed_at": synthetic.START + pd.to_timedelta(first_exposure[logged], unit="s")})
  definition = definition_lib.Definition(
      experiment, starts_at, starts_at + pd.Timedelta(days=params.days),
      pre_period_days=params.pre_period_days)
  def mean(chunks):
    return {a: float(np.concatenate(p).mean()) if p else float("nan") for a, p in chunks.items()}
  return Simulation(definition, arms, exposures, swipes, mean(shown_like), mean(shown_match),
                    pd.concat(impressions, ignore_index=True) if impressions else None,
                    mean(shown_limited) if params.attention_per_day is not None else {})


def _feed_log(arm: str, day: int, swiper: np.ndarray, shown_ids: np.ndarray,
              position: np.ndarray, score: np.ndarray, opened: np.ndarray,
              ids: np.ndarray) -> pd.DataFrame:
  """One arm-day of the impressions log (docs/data.md): each arm's feed is a deterministic
  top-k of its recommender, so every logged row was shown with propensity 1."""
  return pd.DataFrame({
      "feed_id": [f"{arm}:{day}:{u}" for u in ids[swiper]], "viewer_id": ids[swiper],
      "profile_id": shown_ids, "shown_at": synthetic.START + pd.to_timedelta(opened[swiper],
                                                                               unit="s"),
      "position": position, "score": score.astype(np.float64),
      "propensity": np.ones(swiper.size), "shown": np.ones(swiper.size, bool)})


def _with_swipes(swipes: Dict[str, np.ndarray], chunks: Sequence[pd.DataFrame]
                 ) -> Dict[str, np.ndarray]:
  """History interactions (`swipe_interactions`) plus the experiment swipes of `chunks`."""
  if not chunks:
    return swipes
  new = pd.concat(chunks, ignore_index=True)
  added = _interactions(new, new["t"])
  return {k: np.concatenate([swipes[k], added[k]]) for k in swipes}


def _as_of(recommender: Recommender, swipes: Optional[Dict[str, np.ndarray]]) -> Recommender:
  """A `HistoryTwoTower`'s scorer with the histories after `swipes`; others as they are."""
  if isinstance(recommender, HistoryTwoTower):
    return recommender.as_of(swipes).current
  return recommender


def _observing(recommender: Recommender, observed: retrieval.BackSwipes,
               ids: np.ndarray) -> Recommender:
  """A reciprocal scorer knowing the observed swipes (world index space); others as they are."""
  base = getattr(recommender, "scored", recommender)  # under exposure control
  if not isinstance(base, retrieval.ReciprocalScorer):
    return recommender
  return recommender.with_back_swipes(retrieval.BackSwipes.of_swipes(
      recommender, ids[observed.candidates], ids[observed.rows], observed.liked))


def check_empty(conn) -> None:
  """Refuses a database with swipes in it.

  Simulations write synthetic users and swipes and delete their own swipes
  afterwards (`remove_experiment`), which must never happen to real data.
  """
  with conn.cursor() as cur:
    cur.execute("SELECT to_regclass('swipes') IS NOT NULL")
    if cur.fetchone()[0]:
      cur.execute("SELECT EXISTS (SELECT 1 FROM swipes)")
      if cur.fetchone()[0]:
        raise ValueError("the database already has swipes: simulate into an EMPTY database "
                         "(omit --db_url for a throwaway one)")
  conn.rollback()


def write_experiment(conn, simulation: Simulation, config) -> None:
  """Writes one simulated experiment: its row, its swipes (into the config's interactions
  table) and its logged exposures."""
  database.create_experiment(conn, simulation.definition)
  database.copy_swipes(conn, simulation.swipes, config)
  database.log_exposures(conn, simulation.definition.name, simulation.exposures["user_id"],
                         simulation.exposures["first_exposed_at"])


def remove_experiment(conn, simulation: Simulation) -> None:
  """Deletes a simulated experiment: its row, exposures and every swipe since its start."""
  with conn.cursor() as cur:
    cur.execute("DELETE FROM swipes WHERE created_at >= %s",
                (simulation.definition.starts_at.to_pydatetime(),))
    cur.execute("DELETE FROM ab_experiments WHERE name = %s", (simulation.definition.name,))
  conn.commit()
