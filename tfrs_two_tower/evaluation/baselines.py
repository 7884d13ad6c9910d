"""Baselines scored by the same retrieval code as the model: random, popularity, feature matching.

`FeatureMatching` is the users' Phase 1&2 recommender written down: a
hand-weighted score of candidate v for user u from profile features only,

  score(u, v) = mutual_weight * (mutual(u, v) - 1)                 gender/seeking filter
              - age_weight * max(0, |age_u - age_v| - age_window)     years outside the window
              - distance_weight * min(max(0, km(u, v) - radius) / radius, distance_cap)
              + interest_weight * |interests_u ∩ interests_v|

with mutual(u, v) = 1 when u seeks v's gender AND v seeks u's gender, else 0.
The default mutual_weight (10) outweighs every other term together, so it acts
as the filter the app applies, yet keeps a total order (incompatible profiles
rank last instead of disappearing). Defaults (`FeatureMatchingWeights`): age
window 5 years, 0.2 per year outside; radius 50 km, 1 per radius beyond, capped
at 5; 0.5 per shared interest.

It reads the dataset's entity tables through `reader.read_entities` and finds
its features by NAME in the config (`FeatureMatchingSpec`: gender, seeking,
age, location, interests by default). A term whose feature is absent from
either side, or whose value is missing for a pair (empty category, NaN number),
contributes 0: the recommender degrades to the terms it can compute
(`active_terms` says which).
"""

import dataclasses
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from tfrs_two_tower import features as features_lib
from tfrs_two_tower.data import reader
from tfrs_two_tower.evaluation import retrieval

EARTH_RADIUS_KM = 6371.0
ANY_GENDER = "*"


class RandomScorer(retrieval.Scorer):
  """Uniformly random ranking (independent scores), reproducible from `seed`."""
  name = "random"

  def __init__(self, query_ids, candidate_ids, seed: int = 0):
    super().__init__(query_ids, candidate_ids)
    self.seed = seed

  def score_block(self, query_rows):
    import tensorflow as tf
    # Seeded by the block's first row: reproducible for a given batching.
    return tf.random.stateless_uniform([len(query_rows), self.num_candidates],
                                       seed=[self.seed, int(query_rows[0]) if len(query_rows)
                                             else 0])

  def pair_scores(self, query_rows, candidate_rows):
    return np.random.default_rng(self.seed).random(len(query_rows)).astype(np.float32)


class PopularityScorer(retrieval.Scorer):
  """Everyone gets the most liked candidates: score(u, v) = log(1 + train likes received by v)."""
  name = "popularity"
  traceable = True

  def __init__(self, query_ids, candidate_ids, likes_received: np.ndarray):
    super().__init__(query_ids, candidate_ids)
    # A tiny index-based tie-break keeps the order deterministic among equals.
    tie_break = -np.arange(self.num_candidates) * 1e-9
    self.scores = (np.log1p(np.asarray(likes_received, np.float64)) + tie_break).astype(np.float32)

  def score_block(self, query_rows):
    import tensorflow as tf
    return tf.tile(tf.constant(self.scores)[None, :], [tf.shape(query_rows)[0], 1])

  def pair_scores(self, query_rows, candidate_rows):
    return self.scores[np.asarray(candidate_rows)]


@dataclasses.dataclass(frozen=True)
class FeatureMatchingWeights:
  """Weights of the feature-matching score (see the module docstring)."""
  mutual: float = 10.0
  age_window_years: float = 5.0
  age_per_year: float = 0.2
  distance_radius_km: float = 50.0
  distance_per_radius: float = 1.0
  distance_cap: float = 5.0
  interest: float = 0.5


@dataclasses.dataclass(frozen=True)
class FeatureMatchingSpec:
  """Which config features play which role, and what each `seeking` value accepts.

  Attributes:
    gender, seeking: categorical feature names; `seeks` maps a seeking value to
      the gender values it accepts ("*" = any). Unknown seeking values accept any.
    age: numeric feature name (years).  location: geo feature name.
    interests: multi_categorical feature name.
  """
  gender: str = "gender"
  seeking: str = "seeking"
  age: str = "age"
  location: str = "location"
  interests: str = "interests"
  seeks: Mapping[str, Tuple[str, ...]] = dataclasses.field(default_factory=lambda: {
      "men": ("man",), "women": ("woman",), "everyone": (ANY_GENDER,)})


class FeatureMatching(retrieval.Scorer):
  """The Phase 1&2 hand-written recommender over entity tables.

  Usage (the A/B simulator imports this):
    fm = FeatureMatching(reader.open_dataset(path))
    ids, scores = fm.top_k(query_ids, k=10, exclude=already_swiped_lists)
    s = fm.score(query_ids, candidate_ids)   # elementwise

  Args:
    dataset: an open dataset (its entity tables and config are read), or None
      when `config` and both entity tables are given (`from_entities`).
    weights: the score's weights.
    spec: which features play which role.
  """
  name = "feature_matching"

  def __init__(self, dataset=None, weights: FeatureMatchingWeights = FeatureMatchingWeights(),
               spec: FeatureMatchingSpec = FeatureMatchingSpec(), *, config=None,
               query_entities: Optional[Dict[str, np.ndarray]] = None,
               candidate_entities: Optional[Dict[str, np.ndarray]] = None):
    if dataset is not None:
      config = dataset.config
      query_entities = reader.read_entities(dataset, "query")
      candidate_entities = reader.read_entities(dataset, "candidate")
    if config is None or query_entities is None or candidate_entities is None:
      raise ValueError("FeatureMatching needs a dataset, or config + both entity tables")
    super().__init__(query_entities["query_id"], candidate_entities["candidate_id"])
    self.weights, self.spec = weights, spec
    q = _Side(config, "query", query_entities, spec)
    c = _Side(config, "candidate", candidate_entities, spec)
    self._q, self._c = q, c
    self.active_terms = tuple(t for t, ok in (
        ("mutual", q.has("gender", "seeking") and c.has("gender", "seeking")),
        ("age", q.has("age") and c.has("age")),
        ("distance", q.has("location") and c.has("location")),
        ("interests", q.has("interests") and c.has("interests"))) if ok)
    if "mutual" in self.active_terms:
      genders = sorted(set(q.values["gender"]) | set(c.values["gender"]))
      seekings = sorted(set(q.values["seeking"]) | set(c.values["seeking"]))
      # accepts[s, g]: seeking value s accepts gender g; the last index is "missing".
      self._accepts = np.ones((len(seekings) + 1, len(genders) + 1), np.float32)
      for i, s in enumerate(seekings):
        allowed = spec.seeks.get(s)
        if allowed is not None and ANY_GENDER not in allowed:
          self._accepts[i, :len(genders)] = [g in allowed for g in genders]
      for side in (q, c):
        side.codes["gender"] = _codes(side.values["gender"], genders)
        side.codes["seeking"] = _codes(side.values["seeking"], seekings)
    if "interests" in self.active_terms:
      vocab = sorted({t for side in (q, c) for row in side.values["interests"] for t in row
                      if t != features_lib.MISSING_TOKEN})
      for side in (q, c):
        side.codes["interests"] = _multi_hot(side.values["interests"], vocab)

  @classmethod
  def from_entities(cls, config, query_entities, candidate_entities, **kwargs):
    """From `reader.read_entities`-style dicts (e.g. a world's profiles already encoded)."""
    return cls(None, config=config, query_entities=query_entities,
               candidate_entities=candidate_entities, **kwargs)

  def score(self, query_ids: Sequence[str], candidate_ids: Sequence[str]) -> np.ndarray:
    """Elementwise score of [P] (query id, candidate id) pairs -> [P] float32."""
    return self.pair_scores(self.query_rows(query_ids), self.candidate_rows(candidate_ids))

  def score_block(self, query_rows):
    import tensorflow as tf
    return tf.constant(self._score(np.asarray(query_rows)[:, None],
                                   np.arange(self.num_candidates)[None, :]))

  def pair_scores(self, query_rows, candidate_rows):
    return self._score(np.asarray(query_rows), np.asarray(candidate_rows))

  def _score(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Scores for broadcastable query rows u and candidate rows v."""
    w, q, c = self.weights, self._q, self._c
    shape = np.broadcast_shapes(u.shape, v.shape)
    score = np.zeros(shape, np.float32)
    if "mutual" in self.active_terms:
      mutual = (self._accepts[q.codes["seeking"][u], c.codes["gender"][v]]
                * self._accepts[c.codes["seeking"][v], q.codes["gender"][u]])
      score += w.mutual * (mutual - 1.0)
    if "age" in self.active_terms:
      gap = np.abs(q.values["age"][u] - c.values["age"][v])
      score -= np.nan_to_num(w.age_per_year * np.maximum(gap - w.age_window_years, 0.0))
    if "distance" in self.active_terms:
      km = haversine_km(q.values["location"][u], c.values["location"][v])
      beyond = np.maximum(km - w.distance_radius_km, 0.0) / w.distance_radius_km
      score -= np.nan_to_num(w.distance_per_radius * np.minimum(beyond, w.distance_cap))
    if "interests" in self.active_terms:
      qi, ci = q.codes["interests"], c.codes["interests"]
      if u.ndim == 2 and u.shape[1] == 1 and v.ndim == 2 and v.shape[0] == 1:
        shared = qi[u[:, 0]] @ ci[v[0]].T  # block: one matrix product
      else:
        shared = np.einsum("...t,...t->...", qi[u], ci[v])
      score += w.interest * shared
    return np.broadcast_to(score, shape).astype(np.float32)


class _Side:
  """One side's feature values by role, looked up by feature name in the config."""

  def __init__(self, config, side: str, entities: Dict[str, np.ndarray],
               spec: FeatureMatchingSpec):
    types = {"gender": ("categorical",), "seeking": ("categorical",), "age": ("numeric",),
             "location": ("geo",), "interests": ("multi_categorical",)}
    by_name = {f.name: f for f in config.features(side)}
    self.values, self.codes = {}, {}
    for role, allowed in types.items():
      feature = by_name.get(getattr(spec, role))
      if feature is None or feature.type not in allowed or feature.key(side) not in entities:
        continue
      value = entities[feature.key(side)]
      if feature.type in ("numeric", "geo"):
        value = np.asarray(value, np.float32)
      self.values[role] = value

  def has(self, *roles: str) -> bool:
    return all(r in self.values for r in roles)


def _codes(values: np.ndarray, vocabulary: Sequence[str]) -> np.ndarray:
  """Category index per row; missing ("") -> len(vocabulary) (accepts / accepted by all)."""
  lookup = {v: i for i, v in enumerate(vocabulary)}
  missing = len(vocabulary)
  return np.array([missing if v == features_lib.MISSING_TOKEN else lookup[v] for v in values],
                  np.int64)


def _multi_hot(rows: np.ndarray, vocabulary: Sequence[str]) -> np.ndarray:
  """[n, L] token lists (padded with "") -> [n, V] float32 multi-hot."""
  lookup = {t: i for i, t in enumerate(vocabulary)}
  out = np.zeros((len(rows), len(vocabulary)), np.float32)
  for i, row in enumerate(rows):
    for token in row:
      if token != features_lib.MISSING_TOKEN:
        out[i, lookup[token]] = 1.0
  return out


def haversine_km(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Great-circle distance of [..., 2] (lat, lon) degree arrays, broadcast; NaN if missing."""
  a, b = np.radians(np.asarray(a, np.float64)), np.radians(np.asarray(b, np.float64))
  dlat, dlon = b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
  h = np.sin(dlat / 2) ** 2 + np.cos(a[..., 0]) * np.cos(b[..., 0]) * np.sin(dlon / 2) ** 2
  return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0, 1)))
