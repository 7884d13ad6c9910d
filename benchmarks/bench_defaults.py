#!/usr/bin/env python3
"""The DEFAULT training command on data the team did not generate, against ALS, BPR and popularity.

Data sets (temporal split, the export's default eval fraction):

  movielens        MovieLens 100k (943 users, 1,682 movies, 100k ratings) as shipped inside
                   the `recbole` wheel (recbole/dataset_example/ml-100k; installed with
                   --no-deps and never imported: only its data files are read). Exported
                   through the CSV path with a config written for it: user-to-item, the
                   rating column mapped by `interactions.action_thresholds`
                   (rating >= 4 -> like, <= 3 -> pass).
  popularity_world a second synthetic dating world with a different feed (WorldParams
                   feed="popularity": profiles ranked by the likes they received so far,
                   no eligibility rule) and different parameters (3,000 users, 90 days,
                   12 profiles a day, stronger taste and appeal).
  default_world    the embedded default world (oracle headroom and AUC targets).
  exploring_world  the default world's parameters with a feed that explores (WorldParams
                   exploration=0.2: a fifth of the feeds drawn from the eligible catalogue),
                   so that its validation and eval swipes include pairs off the
                   feature-matching feed's support (not in the default --datasets).

For each: `train_model.py --dataset_dir=D --run_dir=R` (no other flags unless
--train_flags is given, to measure a proposal), then one in-process evaluation with the
library's definitions (filtered recall@K over all candidates, macro over users with an
eval like, train swipes excluded) of: the model, a popularity ranking, feature matching
(dating worlds), ALS and BPR from `implicit` (factors and regularisation tuned on a
dataset's validation split, fitted on train like the model), and on the worlds the
world's own P(like) ranking (the oracle). Segments: `warm` users (train swipes) and
`new` users (no train swipes: unseen in training, scored from their profile).

Figures, printed side by side with their ratios:
  warm recall@50: model vs popularity, ALS, BPR        (target: model beats all three)
  new recall@50:  model vs popularity                   (target: model beats popularity)
  default world:  oracle_like@10 headroom share = (model - feature matching) /
                  (oracle ranking - feature matching)    (target >= 50 %), AUC (>= 0.80)

Benchmark-only dependencies (requirements-bench.txt): implicit, recbole (--no-deps).

  python benchmarks/bench_defaults.py --work_dir=/tmp/bench_defaults \
      [--datasets=movielens,popularity_world,default_world] [--train_flags="--epochs=5"]
      [--oracle_parts]   (rank by the world's utility with single terms switched off,
                          with the scenes of tastes and styles inferred from the swipes,
                          and by a factor model told every term of the world but the
                          hidden appeal, tastes and styles)
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's advice for its own threads

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.optimize  # noqa: E402
import scipy.sparse  # noqa: E402
import scipy.special  # noqa: E402

from tfrs_two_tower import config as config_lib  # noqa: E402
from tfrs_two_tower import features as features_lib  # noqa: E402
from tfrs_two_tower.data import dataset_format as fmt  # noqa: E402
from tfrs_two_tower.data import reader  # noqa: E402
from tfrs_two_tower.data import seeding  # noqa: E402
from tfrs_two_tower.data import synthetic  # noqa: E402
from tfrs_two_tower.evaluation import baselines as baselines_lib  # noqa: E402
from tfrs_two_tower.evaluation import evaluator  # noqa: E402
from tfrs_two_tower.evaluation import metrics  # noqa: E402
from tfrs_two_tower.evaluation import recommenders  # noqa: E402
from tfrs_two_tower.evaluation import retrieval  # noqa: E402
from tfrs_two_tower.model import run_dir as run_lib  # noqa: E402
from tfrs_two_tower.stages import export_stage  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KS = (10, 50)
VALIDATION_FRACTION = 0.10
POPULARITY_WORLD = synthetic.WorldParams(num_users=3000, days=90, feed_size=12,
                                         mean_activity=0.15, taste_weight=2.0,
                                         attractiveness_scale=1.4, feed="popularity", seed=11)
EXPLORING_WORLD = synthetic.WorldParams(exploration=0.2)
WORLDS = {"popularity_world": POPULARITY_WORLD, "default_world": synthetic.WorldParams(),
          "exploring_world": EXPLORING_WORLD}
ALS_GRID = [dict(factors=f, regularization=r) for f in (16, 64, 128) for r in (0.01, 0.1, 1.0)]
BPR_GRID = [dict(factors=f, learning_rate=lr, regularization=r)
            for f in (32, 128) for lr in (0.01, 0.05) for r in (0.001, 0.01)]


# -- data sets ------------------------------------------------------------------------------

MOVIELENS_CONFIG = {
    "format_version": 1,
    "description": "MovieLens 100k: users rate movies 1-5; >= 4 is a like, <= 3 a pass.",
    "interactions": {
        "table": "ratings", "query_id_column": "user_id", "candidate_id_column": "item_id",
        "action_column": "rating", "timestamp_column": "rated_at", "weight_column": None,
        "sql": None,
        "actions": {"like": {"label": 1, "weight": 1.0}, "pass": {"label": 0, "weight": 1.0}},
        "action_thresholds": [{"action": "like", "min": 4}, {"action": "pass", "max": 3}]},
    "query": {"entity": "user"},
    "candidate": {"entity": "movie"},
    "entities": {
        "user": {"table": "users", "id_column": "user_id", "created_at_column": None,
                 "sql": None, "features": [
                     {"name": "id", "type": "id", "embedding_dim": 32},
                     {"name": "age", "type": "numeric", "normalization": "zscore",
                      "bucket_boundaries": [18, 25, 35, 45, 50, 56], "embedding_dim": 8},
                     {"name": "gender", "type": "categorical", "embedding_dim": 4},
                     {"name": "occupation", "type": "categorical", "embedding_dim": 8},
                     {"name": "zip_region", "type": "categorical", "embedding_dim": 8}]},
        "movie": {"table": "movies", "id_column": "item_id", "created_at_column": None,
                  "sql": None, "features": [
                      {"name": "id", "type": "id", "embedding_dim": 32},
                      {"name": "genres", "type": "multi_categorical", "embedding_dim": 16,
                       "max_length": 6},
                      {"name": "release_year", "type": "numeric",
                       "normalization": "zscore", "fill": "mean"}]}}}


def movielens_files() -> str:
  """The directory of recbole's shipped ml-100k atomic files."""
  try:
    dist = importlib.metadata.distribution("recbole")
  except importlib.metadata.PackageNotFoundError:
    sys.exit("bench_defaults: needs the recbole wheel for its shipped MovieLens 100k files: "
             "pip install --no-deps recbole==1.2.1 (see requirements-bench.txt)")
  return str(dist.locate_file("recbole/dataset_example/ml-100k"))


def _atomic(path: str, name: str) -> pd.DataFrame:
  frame = pd.read_csv(os.path.join(path, f"ml-100k.{name}"), sep="\t", dtype=str)
  frame.columns = [c.split(":")[0] for c in frame.columns]
  return frame


def movielens_dump(directory: str, history=None) -> str:
  """ml-100k as CSV tables (users, movies, ratings) and the config written for them
  (with `history` as its `history` section when given)."""
  src = movielens_files()
  os.makedirs(directory, exist_ok=True)
  users = _atomic(src, "user")
  users = pd.DataFrame({"user_id": users["user_id"], "age": users["age"].astype(int),
                        "gender": users["gender"], "occupation": users["occupation"],
                        "zip_region": users["zip_code"].str[:1]})
  items = _atomic(src, "item")
  movies = pd.DataFrame({
      "item_id": items["item_id"],
      "genres": items["class"].fillna("").str.split().map(seeding.array_literal),
      "release_year": pd.to_numeric(items["release_year"], errors="coerce")})
  inter = _atomic(src, "inter")
  # ISO times: the CSV path reads them without a unit in the config.
  ratings = pd.DataFrame({
      "user_id": inter["user_id"], "item_id": inter["item_id"],
      "rating": inter["rating"].astype(float).astype(int),
      "rated_at": pd.to_datetime(inter["timestamp"].astype(float).astype(np.int64), unit="s",
                                 utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")})
  users.to_csv(os.path.join(directory, "users.csv"), index=False)
  movies.to_csv(os.path.join(directory, "movies.csv"), index=False)
  ratings.to_csv(os.path.join(directory, "ratings.csv"), index=False)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump({**MOVIELENS_CONFIG, **({"history": history} if history else {})}, f, indent=2)
  return directory


def prepare_dataset(name: str, work: str, log, history=None) -> dict:
  """Writes the data set's dataset dir (and world dir); returns their paths.

  `history`: a config `history` section added to the data set's config (the
  dataset dir is then `dataset_history_<its hash>`, so every form can sit side by side).
  """
  suffix = "_history_" + config_lib.config_hash(history)[:8] if history else ""
  out = {"dataset": os.path.join(work, name, "dataset" + suffix), "world": None}
  if name == "movielens":
    dump = movielens_dump(os.path.join(work, name, "csv" + suffix), history)
    if not os.path.exists(out["dataset"]):
      export_stage.run(out["dataset"], export_stage.ExportOptions(
          config_path=os.path.join(dump, "config.json"), input_dir=dump), log=log)
    return out
  out["world"] = os.path.join(work, name, "world")
  if not os.path.exists(out["dataset"]):
    params = WORLDS[name]
    if os.path.exists(os.path.join(out["world"], "world.json")):  # written by an earlier run
      world = synthetic.World.load(out["world"])
    else:
      world = synthetic.generate_world(params)
      world.save(out["world"], overwrite=True)
    config = config_lib.load_config()
    if history:
      config = config_lib.parse_config({**config.raw, "history": history})
    synthetic.write_world_dataset(world, config, out["dataset"])
  return out


# -- the model: the default command ----------------------------------------------------------

def train_default(dataset_dir: str, run_dir: str, extra_flags, log) -> float:
  """`train_model.py --dataset_dir --run_dir` (+ extra flags); returns wall seconds."""
  shutil.rmtree(run_dir, ignore_errors=True)
  cmd = [sys.executable, os.path.join(REPO, "scripts", "train_model.py"),
         f"--dataset_dir={dataset_dir}", f"--run_dir={run_dir}", *extra_flags]
  log("$ " + " ".join(shlex.quote(c) for c in cmd[1:]))
  started = time.time()
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode:
    sys.exit(f"training failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return time.time() - started


def model_scorer(run_dir: str, data: evaluator.EvalData) -> retrieval.EmbeddingScorer:
  run = run_lib.open_run(run_dir)
  ids, embeddings = run.candidate_embeddings()
  rows = retrieval.id_index(np.asarray(ids, dtype=object)).get_indexer(data.candidate_ids)
  return retrieval.EmbeddingScorer(data.query_ids, data.candidate_ids,
                                   run.embed("query", data.query_entities), embeddings[rows],
                                   name="model")


# -- ALS and BPR, tuned on a validation split of train -----------------------------------------

def _swipes(dataset, data: evaluator.EvalData, split: str):
  """One split's swipes as (query row, candidate row, label, timestamp) arrays."""
  if split not in fmt.SPLITS:  # a dataset format without that split
    return tuple(np.zeros(0, np.int64) for _ in range(4))
  rows = reader.read_interactions(dataset, split, keys=(
      features_lib.QUERY_ID, features_lib.CANDIDATE_ID, features_lib.LABEL,
      features_lib.TIMESTAMP))
  if not rows or not len(rows[features_lib.LABEL]):
    return tuple(np.zeros(0, np.int64) for _ in range(4))
  return (retrieval.id_index(data.query_ids).get_indexer(rows[features_lib.QUERY_ID]),
          retrieval.id_index(data.candidate_ids).get_indexer(rows[features_lib.CANDIDATE_ID]),
          np.asarray(rows[features_lib.LABEL], np.int64),
          np.asarray(rows[features_lib.TIMESTAMP], np.int64))


def _matrix(rows, cols, shape) -> scipy.sparse.csr_matrix:
  m = scipy.sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
  m.data[:] = 1.0  # duplicates count once
  return m


def _validation_recall(user_factors, item_factors, seen, held, k: int = 50) -> float:
  """Macro recall@k over users with a held-out like and a fitted factor, seen pairs excluded."""
  users = np.flatnonzero((np.diff(held.indptr) > 0) & (np.abs(user_factors).sum(axis=1) > 0))
  recalls = []
  for start in range(0, users.size, 512):
    block = users[start:start + 512]
    scores = user_factors[block] @ item_factors.T
    scores[seen[block].toarray() > 0] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    for i, u in enumerate(block):
      liked = held.indices[held.indptr[u]:held.indptr[u + 1]]
      recalls.append(np.isin(liked, top[i]).mean())
  return float(np.mean(recalls)) if recalls else 0.0


def tuned_factor_models(dataset, data: evaluator.EvalData, log) -> dict:
  """ALS and BPR: factors/regularisation chosen on the validation split.

  Like the model: fitted on the train split, chosen on the dataset's validation
  split, not refitted. A dataset without a validation split: the last 10 % of
  train by time validates, then the winner is refitted on all of train.
  """
  import implicit
  q, c, label, ts = _swipes(dataset, data, "train")
  vq, vc, vlabel, vts = _swipes(dataset, data, "validation")
  refit = not vq.size
  if refit:  # no validation split in the dataset: carve the last 10 % of train by time
    cut = np.quantile(ts, 1.0 - VALIDATION_FRACTION)
    val = ts >= cut
    vq, vc, vlabel = q[val], c[val], label[val]
    all_likes = _matrix(q[label == 1], c[label == 1], (data.query_ids.size,
                                                        data.candidate_ids.size))
    q, c, label = q[~val], c[~val], label[~val]
  shape = (data.query_ids.size, data.candidate_ids.size)
  fit_likes = _matrix(q[label == 1], c[label == 1], shape)
  seen = _matrix(q, c, shape)
  if shape[0] == shape[1] and (data.query_ids == data.candidate_ids).all():
    seen = seen + scipy.sparse.identity(shape[0], format="csr")  # never recommend oneself
  held = _matrix(vq[vlabel == 1], vc[vlabel == 1], shape)
  held = held - held.multiply(seen > 0)
  held.eliminate_zeros()
  out = {}
  for name, grid, make in (
      ("als", ALS_GRID, lambda p: implicit.als.AlternatingLeastSquares(
          iterations=15, random_state=0, num_threads=2, **p)),
      ("bpr", BPR_GRID, lambda p: implicit.bpr.BayesianPersonalizedRanking(
          iterations=100, random_state=0, num_threads=2, **p))):
    trials = []
    for params in grid:
      model = make(params)
      model.fit(fit_likes, show_progress=False)
      trials.append((_validation_recall(model.user_factors, model.item_factors, seen, held),
                     params))
    best_recall, best = max(trials, key=lambda t: t[0])
    log(f"  {name}: best validation recall@50 {best_recall:.4f} with {best} "
        f"({len(trials)} trials)")
    model = make(best)
    model.fit(all_likes if refit else fit_likes, show_progress=False)
    out[name] = (retrieval.EmbeddingScorer(data.query_ids, data.candidate_ids,
                                           np.asarray(model.user_factors),
                                           np.asarray(model.item_factors), name=name),
                 {"params": best, "validation_recall@50": round(best_recall, 4)})
  return out


# -- the world's oracle ranking ----------------------------------------------------------------

# Rankers by the world's utility with terms switched off (`--oracle_parts`): where the
# headroom between feature matching and the oracle lies. "observables" keeps what the
# profile shows (gender, age, distance, interests; the users' hidden preferences over them
# included) and drops the two latent terms only ids can learn: the candidate's appeal and
# the taste x style match.
ORACLE_PARTS = {
    "oracle w/o taste": dict(taste_weight=0.0),
    "oracle w/o appeal": dict(attractiveness_scale=0.0),
    "oracle w/o distance": dict(distance_weight=0.0),
    "oracle w/o age": dict(age_weight=0.0),
    "oracle w/o interests": dict(interest_weight=0.0),
    "oracle observables": dict(taste_weight=0.0, attractiveness_scale=0.0),
}


class OracleScorer(retrieval.Scorer):
  """The world's own P(like): the best any one-way ranker can do in that world.

  `without`: WorldParams overrides that switch utility terms off (ORACLE_PARTS).
  """
  name = "oracle"

  def __init__(self, world: synthetic.World, query_ids, candidate_ids, without=None):
    super().__init__(query_ids, candidate_ids)
    if without:
      world = synthetic.World(dataclasses.replace(world.params, **without), world.profiles,
                              world.swipes, world.hidden)
    self.world = world
    self._q = world.user_index(self.query_ids)
    self._c = world.user_index(self.candidate_ids)

  def _scores(self, query_rows, utility, candidate_rows):
    """The scores from the world's utility (its switched-off terms excluded), for
    broadcastable row and column indices; subclasses add what they infer or fit."""
    return utility

  def score_block(self, query_rows):
    import tensorflow as tf
    rows = np.asarray(query_rows)
    u = np.repeat(self._q[rows][:, None], self._c.size, axis=1)
    v = np.broadcast_to(self._c[None, :], u.shape)
    utility = self.world.utility(u, v).astype(np.float32)
    return tf.constant(self._scores(rows[:, None], utility, np.arange(self._c.size)[None, :])
                       .astype(np.float32))

  def pair_scores(self, query_rows, candidate_rows):
    rows, cols = np.asarray(query_rows), np.asarray(candidate_rows)
    utility = self.world.utility(self._q[rows], self._c[cols]).astype(np.float32)
    return self._scores(rows, utility, cols).astype(np.float32)


class LatentSceneScorer(OracleScorer):
  """The world's P(like) with the scenes unknown, inferred by Bayes from swipes.

  It knows every hidden trait but the users' liked scene k_u (a user's taste is taken
  as TASTE_SCENE_SCALE x the centroid of k_u, the centroid being the mean style of the
  scene's members; the taste's personal noise is dropped) and, with `infer_styles`, the
  profiles' own scene j_v (their style is then taken as j_v's centroid). Priors are the
  generator's: P(k_u) = OWN_SCENE_SHARE q(j_u) + (1 - OWN_SCENE_SHARE) / K, with q(j_u) the
  user's own scene (known, or inferred), and P(j_v | interests) ∝ prod_i f_j(i), f_j the
  share of scene j's members who list interest i. With z_kj(u, v) the utility under
  (k_u, j_v), mean field over `swipes` (`evaluator.Pairs`: every swipe before the ranking
  time; none = the priors alone), `iterations` rounds when the styles are inferred, else one:

    log q(k_u) = log P(k_u) + sum_{u's swipes i} sum_j q(j_{v_i}) log sigmoid(±z_kj(u, v_i))
    log q(j_v) = log P(j_v | interests) + sum_{v's received i} sum_k q(k_{u_i}) log sigmoid(±z_kj)
    score(u, v) = sum_k sum_j q(k_u) q(j_v) sigmoid(z_kj(u, v))

  Knowing the styles, the gap between no swipes and the swipes is what a history can tell
  a ranker: the ceiling of a swipe history in the query tower. Inferring them too, it is
  what a learner that knows the world's form (but not its scenes) could reach.
  """

  def __init__(self, world: synthetic.World, query_ids, candidate_ids, swipes=(),
               infer_styles: bool = False, iterations: int = 8):
    super().__init__(world, query_ids, candidate_ids, without=dict(taste_weight=0.0))
    params, hidden = world.params, world.hidden
    scenes = params.num_scenes
    centroids = np.stack([hidden["style"][hidden["scene"] == k].mean(0) for k in range(scenes)])
    taste = params.taste_weight * synthetic.TASTE_SCENE_SCALE * centroids
    own_scene = np.eye(scenes)[hidden["scene"]]  # [profiles, scenes] one-hot
    if infer_styles:
      bits = np.unpackbits(hidden["interest_bits"].view(np.uint8), axis=-1, bitorder="little")
      bits = bits[:, :len(synthetic.INTEREST_NAMES)].astype(np.float64)
      shares = own_scene.T @ bits + 0.5  # [scenes, interests], smoothed
      log_prior = bits @ np.log(shares / shares.sum(1, keepdims=True)).T
      own_scene = scipy.special.softmax(log_prior, axis=1)
      # [scenes k, scenes j, candidates]: a centroid's style for every candidate.
      self._terms = np.broadcast_to((taste @ centroids.T)[:, :, None], (scenes, scenes,
                                                                         self._c.size))
      style_prior = self.style_posterior = own_scene[self._c]
    else:
      self._terms = (taste @ hidden["style"][self._c].T)[:, None, :]  # [scenes, 1, candidates]
      self.style_posterior = np.ones((self._c.size, 1))
    users = np.concatenate([part.users for part in swipes]).astype(np.int64) if swipes else None
    if users is not None:
      candidates = np.concatenate([part.candidates for part in swipes]).astype(np.int64)
      liked = np.concatenate([part.labels for part in swipes]) > 0
      z = (self.world.utility(self._q[users], self._c[candidates])[:, None, None]
           + np.moveaxis(self._terms[:, :, candidates], 2, 0))  # [swipes, k, j]
      log_like = -np.logaddexp(0.0, np.where(liked[:, None, None], -z, z))
    for _ in range(iterations if infer_styles and users is not None else 1):
      log_taste = np.log(synthetic.OWN_SCENE_SHARE * own_scene[self._q]
                         + (1 - synthetic.OWN_SCENE_SHARE) / scenes)
      if users is not None:
        per_swipe = np.einsum("nkj,nj->nk", log_like, self.style_posterior[candidates])
        log_taste += np.stack([np.bincount(users, per_swipe[:, k], self._q.size)
                               for k in range(scenes)], 1)
      self.taste_posterior = scipy.special.softmax(log_taste, axis=1)  # [queries, scenes]
      if infer_styles and users is not None:
        per_swipe = np.einsum("nkj,nk->nj", log_like, self.taste_posterior[users])
        log_style = np.log(style_prior) + np.stack(
            [np.bincount(candidates, per_swipe[:, j], self._c.size) for j in range(scenes)], 1)
        self.style_posterior = scipy.special.softmax(log_style, axis=1)
        own_scene[self._c] = self.style_posterior

  def _scores(self, query_rows, rest, candidate_rows):
    return sum(self.taste_posterior[query_rows, k] * self.style_posterior[candidate_rows, j]
               * scipy.special.expit(rest + self._terms[k, j][candidate_rows])
               for k in range(self._terms.shape[0]) for j in range(self._terms.shape[1]))


class FormFitScorer(OracleScorer):
  """A learner that knows the world's form but none of its hidden profile or taste values.

  Every observable term of the utility is given exactly (interests, age, distance, gender,
  the user's selectivity: the hidden per-user preferences included), and so are the form
  and size of the rest: a_v + taste_weight <t_u, s_v>, rank style_dim, with the generator's
  own variances as Gaussian priors. a, t and s are fitted to `swipes` by MAP
  (L-BFGS on the logistic log-likelihood plus 0.5 x^2 / var per parameter). Unlike
  `LatentSceneScorer` it does not know that styles and tastes cluster into scenes: it is
  the best a factor model could do here if it were told everything else.
  """

  def __init__(self, world: synthetic.World, query_ids, candidate_ids, swipes,
               max_iterations: int = 3000):
    super().__init__(world, query_ids, candidate_ids,
                     without=dict(taste_weight=0.0, attractiveness_scale=0.0))
    params, hidden = world.params, world.hidden
    users = np.concatenate([part.users for part in swipes]).astype(np.int64)
    candidates = np.concatenate([part.candidates for part in swipes]).astype(np.int64)
    liked = (np.concatenate([part.labels for part in swipes]) > 0).astype(np.float64)
    offset = self.world.utility(self._q[users], self._c[candidates])
    nq, nc, rank = self._q.size, self._c.size, params.style_dim
    weight = params.taste_weight
    var_a = np.var(params.attractiveness_scale * hidden["attractiveness"])
    var_t, var_s = np.var(hidden["taste"], 0).mean(), np.var(hidden["style"], 0).mean()
    precision = np.concatenate([np.full(nc, 1 / var_a), np.full(nq * rank, 1 / var_t),
                                np.full(nc * rank, 1 / var_s)])

    def split(x):
      return x[:nc], x[nc:nc + nq * rank].reshape(nq, rank), x[nc + nq * rank:].reshape(nc, rank)

    def objective(x):
      a, t, s = split(x)
      z = offset + a[candidates] + weight * np.einsum("nd,nd->n", t[users], s[candidates])
      residual = scipy.special.expit(z) - liked
      grad = scipy.sparse.csr_matrix((residual, (users, candidates)), shape=(nq, nc))
      gradient = np.concatenate([np.asarray(grad.sum(0)).ravel(),
                                 (weight * (grad @ s)).ravel(), (weight * (grad.T @ t)).ravel()])
      return (np.sum(np.logaddexp(0.0, z) - liked * z) + 0.5 * np.sum(precision * x * x),
              gradient + precision * x)

    # Started from a draw of the prior, not at 0: zero is a stationary point of the
    # factors. Rows without swipes start (and stay) at their prior mean 0.
    start = np.random.default_rng(0).normal(0.0, 1.0 / np.sqrt(precision))
    start[:nc] = 0.0
    _, start_t, start_s = split(start)
    start_t[np.bincount(users, minlength=nq) == 0] = 0.0
    start_s[np.bincount(candidates, minlength=nc) == 0] = 0.0
    fit = scipy.optimize.minimize(objective, start, jac=True, method="L-BFGS-B",
                                  options=dict(maxiter=max_iterations, ftol=1e-12))
    self.appeal, self.taste, self.style = split(fit.x)
    self.taste_weight, self.iterations = weight, int(fit.nit)

  def without_tastes(self) -> "FormFitScorer":
    """The same fit with every user's taste at its prior mean (0): what the swipes' taste
    adds, e.g. for users new since training, whose swipes a history would read."""
    other = copy.copy(self)
    other.taste = np.zeros_like(self.taste)
    return other

  def _scores(self, query_rows, rest, candidate_rows):
    # self.world is the world with these terms switched off (weight 0): the fit's own weight.
    return (rest + self.appeal[candidate_rows] + self.taste_weight
            * np.sum(self.taste[query_rows] * self.style[candidate_rows], axis=-1))


# -- one data set ---------------------------------------------------------------------------------

def bench(name: str, work: str, extra_flags, bootstrap: int, log, tag: str = "default",
          factor_models: bool = True, reuse_run: bool = False,
          oracle_parts: bool = False, history=None) -> dict:
  paths = prepare_dataset(name, work, log, history)
  dataset = reader.open_dataset(paths["dataset"])
  stats = dataset.stats
  log(f"[{name}] {stats['rows']['train']:,} train / {stats['rows']['eval']:,} eval swipes, "
      f"{stats['entities']['query']:,} query / {stats['entities']['candidate']:,} candidate "
      "entities")
  run_dir = os.path.join(work, name, f"run_{tag}")
  if reuse_run and os.path.exists(os.path.join(run_dir, "manifest.json")):
    log(f"[{name}] reusing the trained {run_dir}")
    train_seconds = float("nan")
    # The reused run's flags are its own, not this invocation's --train_flags.
    extra_flags = [f"(reused run: see {os.path.join(run_dir, run_lib.FLAGS)})"]
  else:
    train_seconds = train_default(paths["dataset"], run_dir, extra_flags, log)
  data = evaluator.prepare(dataset)
  data.segments["warm"] = ~data.segments["new"]
  scorers = {"model": (model_scorer(run_dir, data), {}),
             "popularity": (baselines_lib.PopularityScorer(data.query_ids, data.candidate_ids,
                                                           data.likes_received), {})}
  world, oracle = None, None
  if paths["world"]:
    world = synthetic.World.load(paths["world"])
    oracle = recommenders.realised_oracle(world.like_probability, data)
    scorers["feature_matching"] = (baselines_lib.FeatureMatching(
        dataset.config, data.query_entities, data.candidate_entities, data.eligible), {})
    scorers["oracle"] = (OracleScorer(world, data.query_ids, data.candidate_ids), {})
    if oracle_parts:
      scorers.update({label: (OracleScorer(world, data.query_ids, data.candidate_ids, without),
                              {}) for label, without in ORACLE_PARTS.items()})
      before_split = (data.train_swipes, data.validation_swipes)
      for label, swipes, infer_styles in (("liked scene: prior", (), False),
                                          ("liked scene: swipes", before_split, False),
                                          ("all scenes: swipes", before_split, True)):
        scorers[label] = (LatentSceneScorer(world, data.query_ids, data.candidate_ids, swipes,
                                            infer_styles), {})
      log(f"[{name}] fitting the form-known factor model (a few minutes)")
      form = FormFitScorer(world, data.query_ids, data.candidate_ids, before_split)
      scorers["form known: MAP factors"] = (form, {"iterations": form.iterations})
      scorers["form known: tastes at the prior"] = (form.without_tastes(), {})
  started = time.time()
  if factor_models:
    scorers.update(tuned_factor_models(dataset, data, log))
  tune_seconds = time.time() - started
  counts = metrics.bootstrap_counts(data.num_users, bootstrap, 0)
  popular = metrics.top_popular_mask(data.likes_received, 0.01)
  out = {"train_seconds": round(train_seconds, 1), "baseline_tuning_seconds": round(tune_seconds),
         "segment_sizes": {s: int(m.sum()) for s, m in data.segments.items()},
         "flags": extra_flags, "recommenders": {}}
  for label, (scorer, info) in scorers.items():
    result = evaluator.evaluate(scorer, data, KS, None, oracle)
    summary = evaluator.summarize(result, data, counts, KS, popular)
    wanted = [m for m in ("auc", "recall@10", "recall@50", "oracle_like@10")
              if m in summary["segments"]["all"]]
    out["recommenders"][label] = {"info": info, **{
        segment: {**{m: block[m]["value"] for m in wanted},
                  **{f"{m}_ci": block[m]["ci"] for m in wanted}}
        for segment, block in summary["segments"].items()}}
  return out


def _fmt(x) -> str:
  return "  n/a " if x is None else f"{x:.4f}"


def _ratio(a, b) -> str:
  return "  n/a" if a is None or not b else f"{a / b:5.2f}x"


def print_table(name: str, result: dict) -> None:
  recs = result["recommenders"]
  model = recs["model"]
  sizes = result["segment_sizes"]
  print(f"\n== {name} (warm users {sizes['warm']}, new users {sizes['new']}; training "
        f"{result['train_seconds']}s; flags: {' '.join(result['flags']) or '(defaults)'})")
  print(f"{'recommender':<18} {'warm R@50':>9} {'model/it':>8} {'new R@50':>9} {'model/it':>8}"
        f" {'all R@10':>9} {'AUC':>7} {'oracle_like@10':>14}")
  for label, rec in recs.items():
    warm, new, all_ = rec["warm"], rec["new"], rec["all"]
    print(f"{label:<18} {_fmt(warm['recall@50']):>9} "
          f"{_ratio(model['warm']['recall@50'], warm['recall@50']):>8} "
          f"{_fmt(new['recall@50']):>9} {_ratio(model['new']['recall@50'], new['recall@50']):>8}"
          f" {_fmt(all_['recall@10']):>9} {_fmt(all_['auc']):>7} "
          f"{_fmt(all_.get('oracle_like@10')):>14}")
  verdicts = [f"warm recall@50 beats {b}: {model['warm']['recall@50'] > recs[b]['warm']['recall@50']}"
              for b in ("popularity", "als", "bpr") if b in recs]
  verdicts.append(f"new recall@50 beats popularity: "
                  f"{(model['new']['recall@50'] or 0) > (recs['popularity']['new']['recall@50'] or 0)}")
  if "oracle" in recs:
    fm, orc = recs["feature_matching"]["all"]["oracle_like@10"], recs["oracle"]["all"]["oracle_like@10"]
    share = (model["all"]["oracle_like@10"] - fm) / (orc - fm)
    result["headroom_share"] = share
    verdicts.append(f"oracle_like@10 headroom share (model - FM) / (oracle - FM) = "
                    f"({model['all']['oracle_like@10']:.3f} - {fm:.3f}) / ({orc:.3f} - {fm:.3f}) "
                    f"= {share:.1%} (target >= 50 %)")
    verdicts.append(f"AUC {model['all']['auc']:.3f} (target >= 0.80)")
  for line in verdicts:
    print("  " + line)
  for label in ("als", "bpr"):
    if label in recs:
      print(f"  {label} tuned: {recs[label]['info']}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--work_dir", default="/tmp/bench_defaults")
  parser.add_argument("--datasets", default="movielens,popularity_world,default_world")
  parser.add_argument("--train_flags", default="", help="extra train_model.py flags (a "
                      "proposal to measure); empty: the default command")
  parser.add_argument("--tag", default="default", help="names the run directory "
                      "(run_<tag>), so that variants share the data sets")
  parser.add_argument("--bootstrap", type=int, default=100)
  parser.add_argument("--no_factor_models", action="store_true", help="skip ALS/BPR (faster "
                      "when only the model's flags change)")
  parser.add_argument("--reuse_runs", action="store_true", help="evaluate an existing "
                      "run_<tag> instead of training it again")
  parser.add_argument("--oracle_parts", action="store_true", help="on the worlds, also rank "
                      "by the world's utility with single terms switched off (where the "
                      "oracle headroom lies) and with the users' liked scenes (and the "
                      "profiles' scenes) inferred from the swipes or from the priors alone (what "
                      "a swipe history can add; what knowing the world's form gives), and "
                      "by a factor model fitted with every other term of the world given "
                      "(what a factor model can reach without the scenes)")
  parser.add_argument("--history", type=json.loads, default=None, help="a config `history` "
                      "section (JSON) declared in every data set's config, e.g. "
                      "'{\"max_length\": 20, \"lists\": [\"liked\"], "
                      "\"share_candidate_id_embedding\": true}'; use with --tag")
  parser.add_argument("--output", default=None, help="also write the figures as JSON here")
  args = parser.parse_args()
  log = lambda *a: print(*a, flush=True)  # noqa: E731
  results = {}
  names = [n for n in args.datasets.split(",") if n]
  unknown = sorted(set(names) - {"movielens", *WORLDS})
  if unknown:
    parser.error(f"--datasets: unknown {unknown}; known: movielens, {', '.join(WORLDS)}")
  for name in names:
    results[name] = bench(name, args.work_dir, shlex.split(args.train_flags), args.bootstrap,
                          log, args.tag, not args.no_factor_models, args.reuse_runs,
                          args.oracle_parts, args.history)
    print_table(name, results[name])
  if args.output:
    with open(args.output, "w") as f:
      json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
  main()
