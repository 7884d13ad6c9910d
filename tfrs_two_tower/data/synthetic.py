"""A synthetic dating world: profiles, hidden tastes, a feed, swipes, and an oracle.

Generative story (all vectorised; one numpy Generator seeded from `seed`):

1. Users join over `days` days: `initial_fraction` exist on day 0, the rest join
   at a uniform random time, so the eval window has genuinely new users.
2. Observed profile: gender (man/woman/nonbinary), seeking (men/women/everyone,
   mostly heterosexual), age (18-60, skewed young), city (one of 16 with real
   coordinates; location jittered ~10 km), interests (3-7 of 80, long-tailed and
   drawn from the user's hidden "scene" cluster), photo_count, verified,
   bio_length.
3. Hidden traits: `style` (how a profile comes across, an 8-d vector: the scene's
   centroid + personal noise, so interests tell part of it), `taste` (the style
   a user likes: partly their own scene, partly another), `attractiveness`
   (heavy-tailed: a few profiles get most likes; correlated with photo_count
   and verified), `selectivity`, `activity` (lognormal: how often they open the
   app), preferred age centre/width and distance tolerance.
4. The utility of u seeing v is
      s(u, v) = attractiveness_v + taste_weight * <taste_u, style_v>
                + interest_weight * |interests_u & interests_v|
                - age_weight * ((age_v - age_pref_u) / width_u)^2
                - distance_weight * max(0, km(u, v) / tolerance_u - 1)
                - 4 * [v's gender is not what u seeks] - selectivity_u
   and u likes v with P = sigmoid(s) (logistic noise). That P is the **oracle**.
   A superlike is a like with s above `superlike_utility`.
5. Each day every user who has joined is active with P = activity. Active users
   get a feed of F = `feed_size` profiles: `feed_size * 4` candidates are sampled
   (80 % from their own city), ranked by a feature-matching score (mutual
   gender/seeking, age gap, shared interests) plus exploration noise, the top
   F are shown (the *exploit* feed S_f; repeats and the viewer are dropped).
   Repeated pairs are dropped (keep the first).
   With `exploration` = eps > 0 a feed is, with probability eps, instead drawn
   from the viewer's **eligible catalogue** E_f: everyone joined so far, not the
   viewer, whom the config's eligibility rules allow (`eligibility.PairRules`;
   the packaged config's unless `generate_world` gets another) -- the same rules
   every ranked list of the evaluation and the A/B simulator obeys, so any
   ranker's list lies in it. Two independent uniform draws without replacement:
   n_l = round(`exploration_local` * F) profiles from E_f within the viewer's city
   (E_f,local; where the lists are: ~94 % of a ranker's top 10 on the default
   world) and F - n_l from all of E_f; a profile drawn twice is shown once.
   `exploration_local` = 0 is a plain uniform draw from E_f. Opt-in: eps = 0
   draws nothing extra and leaves the world byte-identical.
6. Matches are mutual likes.
7. Every feed is logged (`World.impressions`, the impressions log of
   docs/data.md): one row per distinct profile shown, with the viewer, time,
   position, the feed's score (the noisy ranking score; the noise-free feed
   score for an exploring feed) and the propensity, the probability that the
   feed shows v given its pool and score noise (both drawn independently of
   any response, so conditioning on them keeps IPS unbiased):
      propensity(v) = eps * (1 - (1 - a_l 1[v in E_f,local]) (1 - a 1[v in E_f]))
                      + (1 - eps) * 1[v in S_f]
   with a_l = min(n_l, |E_f,local|) / |E_f,local| and a = min(F - n_l, |E_f|) / |E_f|
   (`inclusion_probability`). Every eligible profile has propensity >= eps a > 0,
   so off-policy estimates can evaluate any ranker's whole-catalogue lists.
   With eps = 0 every propensity is 1.

8. Reciprocal probes (opt-in, `reciprocal_probe` = rho > 0): when a logged
   impression u -> v (step 7) is drawn -- every impression, or with `probe_scope`
   "explored" only those of exploring feeds -- then with probability rho,
   independently of any response (a separate random stream), v is shown u as a
   probe and answers at once: a swipe v -> u at the time of u's swipe on v (the
   first swipe of a pair is kept, step 5, so an earlier v -> u stays). The row
   logs `probed` and `probe_propensity` = P(v shown to u AND probed):
   rho * propensity (scope "all") or rho * eps * P(v in the exploring draw)
   (scope "explored"). Probes are not feed impressions: no log row, no effect on
   any feed (the popularity feed counts feed likes only). Every probed row's
   back-swipe v -> u exists, an unbiased draw of P(v likes u), which makes
   off-policy match-rate estimates unbiased (`evaluation.off_policy`).

What it does not model: messaging, unmatching, profile edits, churn, time of
day, the feed reacting to who liked whom, photos themselves, fake accounts.
"""

import dataclasses
import os
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn import metrics as sk_metrics

from tfrs_two_tower import config as config_lib
from tfrs_two_tower import eligibility as eligibility_lib
from tfrs_two_tower import files
from tfrs_two_tower.data import impressions as impressions_lib
from tfrs_two_tower.data import writer as writer_lib

START = pd.Timestamp("2026-01-05", tz="UTC")  # a Monday: weeks line up with readiness
SECONDS_PER_DAY = 86_400
CITIES = (  # name, latitude, longitude
    ("New York", 40.71, -74.01), ("Los Angeles", 34.05, -118.24), ("Chicago", 41.88, -87.63),
    ("Houston", 29.76, -95.37), ("Phoenix", 33.45, -112.07), ("Philadelphia", 39.95, -75.17),
    ("San Antonio", 29.42, -98.49), ("San Diego", 32.72, -117.16), ("Dallas", 32.78, -96.80),
    ("Austin", 30.27, -97.74), ("Seattle", 47.61, -122.33), ("Denver", 39.74, -104.99),
    ("Boston", 42.36, -71.06), ("Miami", 25.76, -80.19), ("Atlanta", 33.75, -84.39),
    ("Portland", 45.52, -122.68))
CITY_WEIGHTS = np.array([16, 12, 9, 8, 6, 6, 5, 5, 5, 4, 4, 4, 4, 4, 4, 4], np.float64)
INTEREST_NAMES = (
    "hiking", "coffee", "travel", "music", "movies", "cooking", "fitness", "reading", "dogs",
    "cats", "yoga", "running", "photography", "art", "gaming", "wine", "craft beer", "dancing",
    "concerts", "festivals", "camping", "climbing", "cycling", "surfing", "skiing", "tennis",
    "soccer", "basketball", "football", "baseball", "golf", "swimming", "meditation", "tech",
    "startups", "politics", "history", "science", "astronomy", "poetry", "writing", "theatre",
    "comedy", "podcasts", "anime", "board games", "karaoke", "volunteering", "gardening",
    "fashion", "sneakers", "vintage", "thrifting", "baking", "vegan", "bbq", "sushi", "tacos",
    "brunch", "museums", "jazz", "hip hop", "techno", "indie", "metal", "country", "k-pop",
    "languages", "road trips", "beach", "mountains", "sailing", "fishing", "horses", "cars",
    "motorcycles", "diy", "crypto", "investing", "spirituality")
GENDERS = np.array(["man", "woman", "nonbinary"], dtype=object)
SEEKING = np.array(["men", "women", "everyone"], dtype=object)
_SEEKS_GENDER = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1]], np.float64)  # seeking x gender


PROBE_SCOPES = ("all", "explored")
# The probes' own random stream (`np.random.default_rng([seed, PROBE_STREAM])`): the feeds
# and the feed swipes are the same draws with and without probes.
PROBE_STREAM = 1
# A user's taste is TASTE_SCENE_SCALE x the centroid of the scene they like (their own with
# probability OWN_SCENE_SHARE, else a uniform one) + noise. Named for the benchmark's ranker
# that infers the scenes (benchmarks/bench_defaults.py, `LatentSceneScorer`).
OWN_SCENE_SHARE = 0.5
TASTE_SCENE_SCALE = 1.5


@dataclasses.dataclass(frozen=True)
class WorldParams:
  """Knobs of the world; the defaults make the embedded default (~5k users, ~200k swipes)."""
  num_users: int = 5000
  days: int = 120
  initial_fraction: float = 0.3
  feed_size: int = 8
  mean_activity: float = 0.11
  style_dim: int = 8
  num_scenes: int = 8
  taste_weight: float = 1.6
  interest_weight: float = 0.35
  age_weight: float = 0.8
  distance_weight: float = 0.6
  attractiveness_scale: float = 1.0
  base_utility: float = -0.6
  superlike_utility: float = 3.0
  exploration: float = 0.0  # share of feeds drawn from the eligible catalogue (step 5)
  exploration_local: float = 0.75  # share of an exploring feed drawn from the viewer's city
  # Reciprocal probes (step 8): P(a logged impression u -> v makes v be shown u at once);
  # 0 draws nothing and leaves the world byte-identical.
  reciprocal_probe: float = 0.0
  # Which impressions may fire a probe: only "explored" ones (exploring feeds), or "all".
  # "explored" (with rho / eps) gave ~7x the match ESS of "all" at the same number of
  # probes (docs/evaluation.md, "Reciprocal probes").
  probe_scope: str = "explored"
  # Who the feed shows (FEEDS): "feature_matching" ranks the pool by the
  # hand-written score (the users' Phase 1&2), "popularity" by the likes each
  # profile received so far (a feed with no eligibility rule at all).
  feed: str = "feature_matching"
  seed: int = 0

  def __post_init__(self):
    for name in ("exploration", "exploration_local", "reciprocal_probe"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"WorldParams.{name} must be in [0, 1], got {getattr(self, name)}")
    if self.probe_scope not in PROBE_SCOPES:
      raise ValueError(f"WorldParams.probe_scope must be one of {PROBE_SCOPES}, got "
                       f"{self.probe_scope!r}")
    if self.reciprocal_probe > 0 and self.probe_scope == "explored" and self.exploration == 0:
      raise ValueError("WorldParams.probe_scope 'explored' (the default) needs exploration > 0 "
                       "(no impression would ever fire a probe); probe_scope='all' probes "
                       "any feed")


class World:
  """Profiles, swipes and the hidden traits that generated them.

  Attributes:
    params: the WorldParams.
    profiles: DataFrame in the default `profiles` schema (id, gender, seeking,
      age, city, latitude, longitude, interests, photo_count, verified,
      bio_length, created_at).
    swipes: DataFrame in the default `swipes` schema (swiper_id, swipee_id,
      action, created_at), sorted by time.
    hidden: name -> numpy array of hidden traits, indexed like `profiles`.
    impressions: DataFrame in the default impressions-log schema (feed_id,
      viewer_id, profile_id, shown_at, position, score, propensity, shown), or
      None for a world saved before the log existed.
  """

  def __init__(self, params: WorldParams, profiles: pd.DataFrame, swipes: pd.DataFrame,
               hidden: Dict[str, np.ndarray], impressions: Optional[pd.DataFrame] = None):
    self.params, self.profiles, self.swipes, self.hidden = params, profiles, swipes, hidden
    self.impressions = impressions
    self._index = pd.Index(profiles["id"].to_numpy())

  # -- the oracle -----------------------------------------------------------------
  def user_index(self, ids) -> np.ndarray:
    idx = self._index.get_indexer(np.asarray(ids, dtype=object))
    if (idx < 0).any():
      raise KeyError(f"unknown user id {np.asarray(ids)[idx < 0][0]!r}")
    return idx

  def utility(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Noise-free utility s(u, v) for index arrays of equal shape."""
    return _utility(self.params, self.hidden, u, v)

  def like_probability(self, swiper_ids, swipee_ids) -> np.ndarray:
    """Oracle P(swiper likes swipee), elementwise, for id arrays of equal shape."""
    u, v = self.user_index(swiper_ids), self.user_index(swipee_ids)
    return _sigmoid(self.utility(u, v))

  def match_probability(self, ids_a, ids_b) -> np.ndarray:
    """Oracle P(mutual like) = P(a likes b) * P(b likes a)."""
    return self.like_probability(ids_a, ids_b) * self.like_probability(ids_b, ids_a)

  def respond(self, swiper_ids, swipee_ids, rng: np.random.Generator) -> np.ndarray:
    """Samples like (True) / pass (False) decisions from the oracle."""
    return rng.random(len(swiper_ids)) < self.like_probability(swiper_ids, swipee_ids)

  # -- persistence ------------------------------------------------------------------
  def save(self, directory: str, overwrite: bool = False) -> None:
    """Writes profiles, swipes, feed_impressions (.parquet), hidden.npz, world.json atomically."""
    with files.atomic_directory(directory, overwrite=overwrite) as tmp:
      self.profiles.to_parquet(os.path.join(tmp, "profiles.parquet"), index=False)
      _write_parquet(self.swipes, os.path.join(tmp, "swipes.parquet"))
      if self.impressions is not None:
        _write_parquet(self.impressions, os.path.join(tmp, "feed_impressions.parquet"))
      np.savez(os.path.join(tmp, "hidden.npz"), **self.hidden)
      files.write_json(os.path.join(tmp, "world.json"),
                       {"params": dataclasses.asdict(self.params), "summary": self.summary()})

  @classmethod
  def load(cls, directory: str, profiles_only: bool = False) -> "World":
    """The world `save` wrote. `profiles_only`: no swipes (an empty frame with the
    columns) and no impressions log -- a 1M-user world's swipes and log take ~20 GB
    in memory, and seeding profiles or ranking needs neither."""
    meta_path = os.path.join(directory, "world.json")
    if not os.path.exists(meta_path):
      raise FileNotFoundError(f"{meta_path}: not a world directory (generate_world.py writes it)")
    params = WorldParams(**files.read_json(meta_path)["params"])
    with np.load(os.path.join(directory, "hidden.npz")) as npz:
      hidden = {k: npz[k] for k in npz.files}
    swipes_path = os.path.join(directory, "swipes.parquet")
    impressions_path = os.path.join(directory, "feed_impressions.parquet")
    if profiles_only:
      swipes, impressions = pq.read_schema(swipes_path).empty_table().to_pandas(), None
    else:
      swipes = pd.read_parquet(swipes_path)
      impressions = (pd.read_parquet(impressions_path) if os.path.exists(impressions_path)
                     else None)
    return cls(params, pd.read_parquet(os.path.join(directory, "profiles.parquet")), swipes,
               hidden, impressions)

  def summary(self) -> Dict[str, Any]:
    actions = self.swipes["action"].value_counts().to_dict()
    return {"users": int(len(self.profiles)), "swipes": int(len(self.swipes)),
            "actions": {k: int(v) for k, v in sorted(actions.items())},
            "matches": int(count_matches(self.swipes))}


def _write_parquet(frame: pd.DataFrame, path: str, chunk_rows: int = 1 << 22) -> None:
  """`frame.to_parquet(path)` converted to Arrow `chunk_rows` rows at a time.

  A 1M-user world has ~65M swipes: its id columns as Arrow strings at once
  would take ~44 bytes a row and column on top of the frame.
  """
  if len(frame) <= chunk_rows:
    frame.to_parquet(path, index=False)
    return
  with pq.ParquetWriter(path, pa.Table.from_pandas(frame.iloc[:1], preserve_index=False)
                        .schema) as out:
    for start in range(0, len(frame), chunk_rows):
      out.write_table(pa.Table.from_pandas(frame.iloc[start:start + chunk_rows],
                                           preserve_index=False))


def count_matches(swipes: pd.DataFrame) -> int:
  """Mutual likes (like or superlike both ways), each pair counted once.

  Ids become integer codes (one factorisation of both columns), a like a -> b
  the key a * n + b; a pair matches when the key of b -> a is also a like.
  """
  likes = swipes.loc[swipes["action"] != "pass", ["swiper_id", "swipee_id"]]
  codes, uniques = pd.factorize(pd.concat([likes["swiper_id"], likes["swipee_id"]],
                                          ignore_index=True))
  a, b = np.split(codes.astype(np.int64), [len(likes)])
  width = np.int64(max(len(uniques), 1))
  forward = np.unique(a * width + b)
  return int(np.isin(forward % width * width + forward // width, forward).sum()) // 2


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


def _haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
  lat1, lon1, lat2, lon2 = (np.radians(a) for a in (lat1, lon1, lat2, lon2))
  a = (np.sin((lat2 - lat1) / 2) ** 2
       + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2)
  return 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def _utility(p: WorldParams, h: Dict[str, np.ndarray], u: np.ndarray, v: np.ndarray) -> np.ndarray:
  taste = np.einsum("...d,...d->...", h["taste"][u], h["style"][v])
  shared = _shared_interests(h["interest_bits"][u], h["interest_bits"][v])
  age_gap = (h["age"][v] - h["age_pref_center"][u]) / h["age_pref_width"][u]
  km = _haversine_km(h["latitude"][u], h["longitude"][u], h["latitude"][v], h["longitude"][v])
  far = np.maximum(0.0, km / h["distance_tolerance_km"][u] - 1.0)
  wrong_gender = 1.0 - _SEEKS_GENDER[h["seeking"][u], h["gender"][v]]
  return (p.base_utility + p.attractiveness_scale * h["attractiveness"][v]
          + p.taste_weight * taste + p.interest_weight * shared
          - p.age_weight * age_gap ** 2 - p.distance_weight * np.minimum(far, 5.0)
          - 4.0 * wrong_gender - h["selectivity"][u])


def _shared_interests(bits_u: np.ndarray, bits_v: np.ndarray) -> np.ndarray:
  """Popcount of the AND of two uint64 bitsets per row ([..., words])."""
  both = np.bitwise_and(bits_u, bits_v)
  return np.unpackbits(both.view(np.uint8), axis=-1).sum(axis=-1).astype(np.float64)


def generate_world(params: WorldParams = WorldParams(), progress=None,
                   config: Optional[config_lib.Config] = None) -> World:
  """Generates profiles and swipes; deterministic in `params` (seed included) and `config`.

  Args:
    params: the world's knobs.
    progress: optional callable(day, swipes_so_far) for long runs.
    config: whose eligibility rules the exploring feed draws from (step 5); default
      the packaged config. Unused when `params.exploration` is 0.
  """
  rng = np.random.default_rng(params.seed)
  n = params.num_users
  profiles, hidden = _make_users(params, rng)
  rules = None
  if params.exploration > 0:
    rules = eligibility_rules(profiles, config or config_lib.load_config())
  swipes, log = _simulate_feed(params, hidden, rng, progress, rules)
  ids = profiles["id"].to_numpy()
  # 0 pass, 1 like, 2 superlike: index a 3-element object array (8 bytes a swipe).
  action = np.array(["pass", "like", "superlike"], dtype=object)[
      swipes.pop("like").astype(np.int8) + swipes.pop("superlike").astype(np.int8)]
  created = START + pd.to_timedelta(swipes.pop("t"), unit="s")
  # Id and action columns stay object arrays of shared str objects (8 bytes a row); as
  # pandas' default Arrow strings every row would hold its own copy (~44 bytes a row:
  # ~12 GB for the four id columns of a 1M-user world).
  swipe_frame = pd.DataFrame({"swiper_id": _objects(ids[swipes.pop("u")]),
                              "swipee_id": _objects(ids[swipes.pop("v")]),
                              "action": _objects(action), "created_at": created})
  del action, created
  impressions = pd.DataFrame({
      "feed_id": log.pop("feed"), "viewer_id": _objects(ids[log.pop("u")]),
      "profile_id": _objects(ids[log.pop("v")]),
      "shown_at": START + pd.to_timedelta(log.pop("t"), unit="s"),
      "position": log.pop("position"), "score": log.pop("score"),
      "propensity": log.pop("propensity"), "shown": log.pop("shown")})
  if params.reciprocal_probe > 0:
    impressions["probed"] = log.pop("probed")
    impressions["probe_propensity"] = log.pop("probe_propensity")
  assert len(profiles) == n
  return World(params, profiles, swipe_frame.reset_index(drop=True), hidden, impressions)


def _objects(values: np.ndarray) -> pd.Series:
  """An object-dtype column of `values` (no conversion to Arrow strings)."""
  return pd.Series(values, dtype=object, copy=False)


def _make_users(p: WorldParams, rng: np.random.Generator):
  n = p.num_users
  # Join times: ids are assigned in join order (user i joined no later than i+1).
  join = np.sort(np.where(rng.random(n) < p.initial_fraction, 0.0,
                          rng.random(n) * p.days * SECONDS_PER_DAY))
  gender = rng.choice(3, size=n, p=[0.48, 0.48, 0.04])
  seeking = np.empty(n, np.int64)
  seeking[gender == 0] = rng.choice(3, size=(gender == 0).sum(), p=[0.06, 0.9, 0.04])
  seeking[gender == 1] = rng.choice(3, size=(gender == 1).sum(), p=[0.9, 0.06, 0.04])
  seeking[gender == 2] = rng.choice(3, size=(gender == 2).sum(), p=[0.2, 0.2, 0.6])
  age = np.clip(np.round(18 + rng.gamma(2.2, 5.0, n)), 18, 60)
  city = rng.choice(len(CITIES), size=n, p=CITY_WEIGHTS / CITY_WEIGHTS.sum())
  city_lat = np.array([c[1] for c in CITIES])[city]
  city_lon = np.array([c[2] for c in CITIES])[city]
  latitude = np.round(city_lat + rng.normal(0, 0.09, n), 5)
  longitude = np.round(city_lon + rng.normal(0, 0.11, n), 5)

  # Scenes tie visible interests to hidden style.
  scene = rng.integers(0, p.num_scenes, n)
  centroids = rng.normal(0, 1, (p.num_scenes, p.style_dim)) / np.sqrt(p.style_dim)
  style = centroids[scene] + rng.normal(0, 0.55, (n, p.style_dim)) / np.sqrt(p.style_dim)
  liked_scene = np.where(rng.random(n) < OWN_SCENE_SHARE, scene,
                         rng.integers(0, p.num_scenes, n))
  taste = (TASTE_SCENE_SCALE * centroids[liked_scene]
           + rng.normal(0, 0.8, (n, p.style_dim)) / np.sqrt(p.style_dim))

  num_interests = len(INTEREST_NAMES)
  base_popularity = 1.0 / np.arange(1, num_interests + 1) ** 0.9
  scene_affinity = rng.gamma(0.35, 1.0, (p.num_scenes, num_interests))
  interest_p = base_popularity[None, :] * (0.15 + scene_affinity)
  interest_p /= interest_p.sum(axis=1, keepdims=True)
  count = rng.integers(3, 8, n)
  # Gumbel top-k: sample `count` distinct interests per user, vectorised.
  keys = np.log(interest_p[scene]) - np.log(-np.log(rng.random((n, num_interests))))
  order = np.argsort(-keys, axis=1)
  words = (num_interests + 63) // 64
  interest_bits = np.zeros((n, words), np.uint64)
  interests = []
  for i in range(n):
    chosen = np.sort(order[i, :count[i]])
    interests.append([INTEREST_NAMES[j] for j in chosen])
    for j in chosen:
      interest_bits[i, j // 64] |= np.uint64(1) << np.uint64(j % 64)

  photo_count = np.clip(rng.poisson(3.0, n) + 1, 1, 9)
  verified = rng.random(n) < 0.35
  bio_length = np.where(rng.random(n) < 0.2, 0, np.round(rng.lognormal(4.2, 0.9, n)))
  # Heavy tail: Gumbel-distributed appeal, nudged by photos and verification.
  attractiveness = (0.55 * (rng.gumbel(0, 1, n) - 0.5772) + 0.12 * (photo_count - 4)
                    + 0.25 * verified)
  selectivity = rng.normal(0.0, 0.5, n)
  activity = np.clip(rng.lognormal(np.log(p.mean_activity) - 0.32, 0.8, n), 0.01, 0.9)
  age_pref_center = age + np.where(gender == 0, -2.0, 2.0) + rng.normal(0, 2.0, n)
  age_pref_width = rng.uniform(4.0, 9.0, n)
  distance_tolerance_km = rng.lognormal(np.log(30.0), 0.5, n)

  ids = [str(uuid.UUID(bytes=bytes(b), version=4)) for b in rng.integers(0, 256, (n, 16),
                                                                           dtype=np.uint8)]
  created_at = START + pd.to_timedelta(np.round(join), unit="s")
  profiles = pd.DataFrame({
      "id": np.array(ids, dtype=object),
      "gender": GENDERS[gender], "seeking": SEEKING[seeking],
      "age": age.astype(np.int64),
      "city": np.array([c[0] for c in CITIES], dtype=object)[city],
      "latitude": latitude, "longitude": longitude,
      "interests": interests,
      "photo_count": photo_count.astype(np.int64), "verified": verified,
      "bio_length": bio_length.astype(np.int64),
      "created_at": created_at,
  })
  hidden = {"join": join, "gender": gender, "seeking": seeking, "age": age.astype(np.float64),
            "city": city, "latitude": latitude, "longitude": longitude, "scene": scene,
            "style": style, "taste": taste, "interest_bits": interest_bits,
            "attractiveness": attractiveness, "selectivity": selectivity, "activity": activity,
            "age_pref_center": age_pref_center, "age_pref_width": age_pref_width,
            "distance_tolerance_km": distance_tolerance_km}
  return profiles, hidden


def feature_matching_score(h: Dict[str, np.ndarray], u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """The feed's (and the users' Phase 1&2) hand-written score of v for u.

  Mutual gender/seeking compatibility dominates; then a 5-year age window, then
  shared interests. Distance is handled by sampling mostly from the same city.
  """
  mutual = (_SEEKS_GENDER[h["seeking"][u], h["gender"][v]]
            * _SEEKS_GENDER[h["seeking"][v], h["gender"][u]])
  age_gap = np.abs(h["age"][v] - h["age"][u])
  shared = _shared_interests(h["interest_bits"][u], h["interest_bits"][v])
  return 3.0 * mutual - 0.2 * np.maximum(age_gap - 5.0, 0.0) + 0.5 * shared


FEEDS = ("feature_matching", "popularity")


def _feed_score(p: WorldParams, h: Dict[str, np.ndarray], likes_received: np.ndarray,
                u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """The feed's noise-free score of v for u (index arrays of equal shape)."""
  if p.feed == "feature_matching":
    return feature_matching_score(h, u, v)
  return np.log1p(likes_received[v])


def _simulate_feed(p: WorldParams, h: Dict[str, np.ndarray], rng: np.random.Generator,
                   progress=None, rules: Optional[eligibility_lib.PairRules] = None
                   ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
  """Returns (swipes: u, v, t, like, superlike arrays; impressions log arrays).

  `rules`: the eligibility the exploring feed draws from (None: everyone)."""
  if p.feed not in FEEDS:
    raise ValueError(f"WorldParams.feed must be one of {FEEDS}, got {p.feed!r}")
  n = p.num_users
  likes_received = np.zeros(n, np.float64)  # for the popularity feed
  join_day = np.floor(h["join"] / SECONDS_PER_DAY)
  by_city = [np.flatnonzero(h["city"] == c) for c in range(len(CITIES))]
  pool = p.feed_size * 4
  chunks = {k: [] for k in ("u", "v", "t", "like", "superlike")}
  logged = ("u", "v", "position", "score", "propensity", "shown")
  probe_rng = None
  if p.reciprocal_probe > 0:  # opt-in: without probes nothing is drawn from this stream
    probe_rng = np.random.default_rng([p.seed, PROBE_STREAM])
    logged += ("probed", "probe_propensity")
  logs = {k: [] for k in ("feed", "t") + logged}
  total = feeds = 0
  for day in range(p.days):
    joined = np.searchsorted(join_day, day, side="right")  # ids are join-ordered
    if joined < 2:
      continue
    active = np.flatnonzero(rng.random(joined) < h["activity"][:joined])
    if active.size == 0:
      continue
    # Candidate pool: 80 % from the user's own city (among joined), 20 % anywhere.
    cand = rng.integers(0, joined, (active.size, pool))
    local = rng.random((active.size, pool)) < 0.8
    for c, members in enumerate(by_city):
      members = members[members < joined]
      rows = np.flatnonzero(h["city"][active] == c)
      if members.size == 0 or rows.size == 0:
        continue
      picks = members[rng.integers(0, members.size, (rows.size, pool))]
      cand[rows] = np.where(local[rows], picks, cand[rows])
    users = np.repeat(active[:, None], pool, axis=1)
    score = _feed_score(p, h, likes_received, users, cand) + rng.gumbel(0, 1.0, cand.shape)
    score[cand == users] = -np.inf
    order = np.argsort(-score, axis=1, kind="stable")
    top = order[:, :p.feed_size]
    shown = np.take_along_axis(cand, top, axis=1)
    ranked_by = np.take_along_axis(score, top, axis=1)
    explored = np.zeros(active.size, bool)
    if p.exploration > 0:  # opt-in: draws nothing when off, so the default world is unchanged
      strata = _exploration_strata(p, h, rules, active, joined)
      exploit = shown
      shown, explored = exploring_feed(exploit, active, strata, p.exploration, rng)
      viewers = users[:, :p.feed_size]
      ranked_by = np.where(explored[:, None],
                           _feed_score(p, h, likes_received, viewers, shown), ranked_by)
      feed_log = _shown_log(shown, active, ranked_by, inclusion_probability(
          exploit, active, strata, p.exploration, shown))
      if p.probe_scope == "explored":
        feed_log["explore_inclusion"] = exploration_inclusion(strata, shown)[
            feed_log["row"], feed_log["col"]]
    else:
      feed_log = _shown_log(shown, active, ranked_by)
    shown = shown.ravel()
    swipers = np.repeat(active, p.feed_size)
    ok = shown != swipers
    session = np.repeat(np.arange(active.size), p.feed_size)[ok]
    swipers, shown = swipers[ok], shown[ok]
    utility = _utility(p, h, swipers, shown)
    like = rng.random(utility.size) < _sigmoid(utility)
    np.add.at(likes_received, shown[like], 1.0)
    # A swipe happens after both joined; spread over the day.
    t = day * SECONDS_PER_DAY + rng.integers(0, SECONDS_PER_DAY, swipers.size)
    t = np.maximum(t, np.ceil(np.maximum(h["join"][swipers], h["join"][shown])) + 1)
    swiped = [(swipers, shown, t, like, utility)]
    if probe_rng is not None:
      at = np.zeros(ok.size, np.int64)  # [A * F] the time of each feed slot's swipe
      at[ok] = t
      swiped.append(_reciprocal_probes(p, h, probe_rng, feed_log, explored,
                                       at[feed_log["row"] * p.feed_size + feed_log["col"]]))
    for u, v, when, liked, s_uv in swiped:
      for key, value in (("u", u.astype(np.int32)), ("v", v.astype(np.int32)),
                         ("t", when.astype(np.int64)), ("like", liked),
                         ("superlike", liked & (s_uv > p.superlike_utility))):
        chunks[key].append(value)
    # The feed is logged when it is opened: at its first swipe.
    opened = np.full(active.size, np.iinfo(np.int64).max)
    np.minimum.at(opened, session, t.astype(np.int64))
    keep = np.isin(feed_log["row"], np.unique(session))  # feeds that showed someone
    for key in logged:
      logs[key].append(feed_log[key][keep])
    logs["feed"].append(feeds + feed_log["row"][keep])
    logs["t"].append(opened[feed_log["row"][keep]])
    feeds += active.size
    total += swipers.size
    if progress is not None:
      progress(day, total)
  out = {k: np.concatenate(chunks.pop(k)) if chunks[k] else np.array([], np.int64)
         for k in list(chunks)}
  log = {k: np.concatenate(logs.pop(k)) if logs[k] else np.array([], np.int64)
         for k in list(logs)}  # popped: each key's chunks freed once joined
  # A pair is shown once: keep its first swipe; then order by time.
  order = np.lexsort((out["v"], out["u"], out["t"]))
  pair = out["u"][order].astype(np.int64) * np.int64(n) + out["v"][order]
  _, first = np.unique(pair, return_index=True)
  del pair
  keep = order[np.sort(first)]
  del order, first
  return {k: out.pop(k)[keep] for k in list(out)}, log


def _reciprocal_probes(p: WorldParams, h: Dict[str, np.ndarray], rng: np.random.Generator,
                       feed_log: Dict[str, np.ndarray], explored: np.ndarray,
                       when: np.ndarray) -> Tuple[np.ndarray, ...]:
  """Step 8: fires probes on a day's logged rows [R] and answers them.

  Adds `probed` [R] bool and `probe_propensity` [R] to `feed_log`; `explored` [A] says
  which feeds explored, `when` [R] the time of each row's swipe. Returns the probe
  swipes (swiper = the row's profile, swipee = its viewer, time, like, utility)."""
  fired = rng.random(feed_log["row"].size) < p.reciprocal_probe
  if p.probe_scope == "explored":
    fired &= explored[feed_log["row"]]
    feed_log["probe_propensity"] = (p.reciprocal_probe * p.exploration
                                    * feed_log.pop("explore_inclusion"))
  else:
    feed_log["probe_propensity"] = p.reciprocal_probe * feed_log["propensity"]
  feed_log["probed"] = fired
  swiper, swipee = feed_log["v"][fired], feed_log["u"][fired]
  utility = _utility(p, h, swiper, swipee)
  return swiper, swipee, when[fired], rng.random(utility.size) < _sigmoid(utility), utility


def _distinct_pool(cand: np.ndarray, users: np.ndarray) -> np.ndarray:
  """[A, M] bool: the first occurrence of each candidate in its row, self excluded."""
  ordered = np.sort(cand, axis=1)
  rank = np.argsort(np.argsort(cand, axis=1, kind="stable"), axis=1, kind="stable")
  first = np.take_along_axis(np.c_[np.ones(len(cand), bool),
                                   ordered[:, 1:] != ordered[:, :-1]], rank, axis=1)
  return first & (cand != users)


def eligibility_rules(profiles: pd.DataFrame, config: config_lib.Config
                      ) -> Optional[eligibility_lib.PairRules]:
  """The config's eligibility rules over the world's profiles (rows = world index);
  None when the config has none (everyone is eligible)."""
  if config.eligibility is None:
    return None
  attributes = eligibility_lib.encode(config, profiles, "world profiles")
  return eligibility_lib.PairRules(config.eligibility, attributes, attributes)


def _exploration_strata(p: WorldParams, h: Dict[str, np.ndarray],
                        rules: Optional[eligibility_lib.PairRules], viewers: np.ndarray,
                        joined: int) -> List[Tuple[np.ndarray, int]]:
  """The exploring feed's draws: [(eligible [A, joined] bool, draws)], ids join-ordered.

  The eligible catalogue E: the joined whom the rules allow, the viewer excluded;
  `exploration_local` of the F slots come from E within the viewer's city, the rest
  from all of E."""
  eligible = (np.ones((viewers.size, joined), bool) if rules is None
              else rules.mask(viewers, np.arange(joined)))
  eligible[np.arange(viewers.size), viewers] = False  # never oneself
  local = int(round(p.exploration_local * p.feed_size))
  same_city = h["city"][viewers][:, None] == h["city"][None, :joined]
  strata = [(eligible & same_city, local), (eligible, p.feed_size - local)]
  return [(mask, draws) for mask, draws in strata if draws > 0]


def exploring_feed(exploit: np.ndarray, viewers: np.ndarray,
                   strata: Sequence[Tuple[np.ndarray, int]], eps: float,
                   rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
  """The epsilon-exploring feed: with probability eps a feed's exploit list is replaced.

  Args:
    exploit: [A, F] profile indices the exploit feed shows (repeats and the viewer
      allowed: they are not shown).
    viewers: [A] each feed's viewer.
    strata: [(mask [A, N] bool, n)] with sum n = F: an exploring feed shows, from each
      stratum independently, min(n, |mask|) distinct profiles drawn uniformly without
      replacement from its mask (a profile drawn by two strata is shown once).
  Returns:
    ([A, F] shown profiles, padded with the viewer (never shown); [A] bool whether
    the feed explored).
  """
  explored = rng.random(len(exploit)) < eps
  rows = np.flatnonzero(explored)
  shown = exploit.copy()
  if rows.size:
    draws = []
    for mask, n in strata:
      keys = np.where(mask[rows], rng.random((rows.size, mask.shape[1])), 2.0)
      drawn = np.argsort(keys, axis=1, kind="stable")[:, :n]  # uniform n-subset of the mask
      real = np.take_along_axis(keys, drawn, axis=1) < 2.0
      draws.append(np.where(real, drawn, viewers[rows, None]))
    shown[rows] = np.concatenate(draws, axis=1)
  return shown, explored


def inclusion_probability(exploit: np.ndarray, viewers: np.ndarray,
                          strata: Sequence[Tuple[np.ndarray, int]], eps: float,
                          profiles: np.ndarray) -> np.ndarray:
  """[A, C] P(profile is shown in the feed | its exploit list) for `profiles` [A, C]:

      eps * (1 - prod_s (1 - min(n_s, |E_s|) / |E_s| * 1[v in E_s])) + (1 - eps) * 1[v in S]

  with E_s, n_s the strata (independent draws) and S the distinct profiles of the
  exploit list other than the viewer."""
  in_exploit = ((profiles[:, :, None] == exploit[:, None, :]).any(axis=2)
                & (profiles != viewers[:, None]))
  return eps * exploration_inclusion(strata, profiles) + (1 - eps) * in_exploit


def exploration_inclusion(strata: Sequence[Tuple[np.ndarray, int]],
                          profiles: np.ndarray) -> np.ndarray:
  """[A, C] P(profile is drawn by an exploring feed) = 1 - prod_s (1 - min(n_s, |E_s|) /
  |E_s| * 1[v in E_s]) for `profiles` [A, C] (`exploring_feed`'s strata)."""
  missed = np.ones(profiles.shape)
  for mask, n in strata:
    size = mask.sum(axis=1)
    share = np.minimum(n, size) / np.maximum(size, 1)
    inside = np.take_along_axis(mask, np.clip(profiles, 0, mask.shape[1] - 1), axis=1) & (
        profiles < mask.shape[1])
    missed *= 1 - share[:, None] * inside
  return 1 - missed


def _shown_log(shown: np.ndarray, viewers: np.ndarray, scores: np.ndarray,
               propensity: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
  """The feed log: one row per distinct, non-self profile shown ([A, F] inputs); without
  `propensity` (a feed that does not explore) every propensity is 1."""
  valid = _distinct_pool(shown, viewers[:, None])
  row, col = np.nonzero(valid)
  return {"row": row, "col": col, "u": viewers[row], "v": shown[row, col], "position": col,
          "score": scores[row, col],
          "propensity": np.ones(row.size) if propensity is None else propensity[row, col],
          "shown": np.ones(row.size, bool)}


def answered_share(likes_received: np.ndarray, attention: float) -> np.ndarray:
  """Limited attention: the share of the likes each user receives that they get to answer.

  A user reviews at most `attention` of the likes they receive in a day (a
  popular profile cannot answer every admirer), so with L_v expected likes
  received, each is answered with probability min(1, attention / L_v). This is
  what makes concentrated exposure costly in a dating market. Used by the A/B
  simulator's `true_match_probability_limited`; the world's history does not use
  it, so the default world and its figures are unchanged.
  """
  received = np.asarray(likes_received, np.float64)
  return np.minimum(1.0, attention / np.maximum(received, 1e-12))


def oracle_auc(world: World, swiper_ids, swipee_ids, labels) -> float:
  """AUC of the oracle probability against realised labels: the ceiling for any model."""
  labels = np.asarray(labels)
  if labels.min(initial=1) == labels.max(initial=0):  # one class only: AUC undefined
    return float("nan")
  return float(sk_metrics.roc_auc_score(labels, world.like_probability(swiper_ids, swipee_ids)))


def write_world_dataset(world: World, config, output_dir: str, *, eval_fraction: float = 0.15,
                        split_time: Optional[int] = None,
                        validation_fraction: float = writer_lib.DEFAULT_VALIDATION_FRACTION,
                        validation_days: float = 0.0, overwrite: bool = False,
                        chunk_size: int = 200_000, **writer_kwargs) -> str:
  """Writes the world's dataset directory through the common writer.

  The world's profiles are both the query and the candidate entity table (users
  swipe on users). `stats.json` gets an `oracle` section: the oracle's AUC on
  the eval swipes, the ceiling any model can reach. The feed's impressions log
  goes in too (`impressions.parquet`) when the config declares one.
  """
  swipes = world.swipes
  seconds = writer_lib.to_unix_seconds(swipes["created_at"], "world swipes", "created_at",
                                       None, check_dates=False)
  if split_time is None:
    split_time = writer_lib.default_split_time(seconds, eval_fraction)
  eval_rows = seconds >= split_time
  validation_time = writer_lib.validation_time(
      split_time, lambda share: writer_lib.default_split_time(seconds[~eval_rows], share),
      validation_fraction=validation_fraction, validation_days=validation_days)
  labels = (swipes["action"] != "pass").to_numpy()
  auc = oracle_auc(world, swipes["swiper_id"].to_numpy()[eval_rows],
                   swipes["swipee_id"].to_numpy()[eval_rows], labels[eval_rows])
  with writer_lib.DatasetWriter(
      config, output_dir, split_time, world.profiles, world.profiles,
      validation_time=validation_time, query_source="world profiles", candidate_source="world profiles", overwrite=overwrite,
      source_description={"kind": "synthetic", "params": dataclasses.asdict(world.params)},
      check_dates=False, **writer_kwargs) as writer:
    for start in range(0, len(swipes), chunk_size):
      writer.add_interactions(swipes.iloc[start:start + chunk_size], source="world swipes",
                              first_row=start)
    writer.extra_stats["oracle"] = {
        "eval_auc": round(float(auc), 4),
        "note": "AUC of the hidden like-probabilities on the eval swipes: the ceiling for "
                "any model of this world."}
    writer.extra_stats["world"] = world.summary()
    if world.impressions is not None and config.impressions is not None:
      impressions_lib.add_to_dataset(writer, impressions_lib.chunks_of(world.impressions),
                                    "world impressions")
  return output_dir
