"""Shared fixtures: a tiny synthetic world, its dataset, and a real PostgreSQL server.

TF_USE_LEGACY_KERAS must be set before TensorFlow is first imported; importing the
package does it, and conftest is imported before any test module.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import shutil  # noqa: E402
import tempfile  # noqa: E402
import types  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfrs_two_tower  # noqa: E402,F401
from tfrs_two_tower import config as config_lib  # noqa: E402
from tfrs_two_tower.data import synthetic  # noqa: E402

# Small but real: enough users and swipes for the readiness gate, a time split
# with new users, and a model that learns something in a few hundred steps.
TINY_WORLD = synthetic.WorldParams(num_users=700, days=50, seed=7)


@pytest.fixture(scope="session")
def default_config():
  return config_lib.load_config()


@pytest.fixture(scope="session")
def tiny_world():
  return synthetic.generate_world(TINY_WORLD)


@pytest.fixture(scope="session")
def tiny_world_dir(tmp_path_factory, tiny_world):
  path = str(tmp_path_factory.mktemp("world") / "world")
  tiny_world.save(path)
  return path


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory, tiny_world, default_config):
  """A complete dataset directory of the tiny world (read-only: copy before mutating)."""
  path = str(tmp_path_factory.mktemp("dataset") / "dataset")
  synthetic.write_world_dataset(tiny_world, default_config, path, num_train_shards=3,
                                num_eval_shards=2)
  return path


@pytest.fixture(scope="session")
def exploring_world():
  """The tiny world with an epsilon-exploring feed (eps = 0.2): propensities < 1 logged.

  Its draws are uniform over the eligible catalogue (exploration_local 0): the tiny
  world's cities hold a few dozen users, so most listed profiles live elsewhere."""
  import dataclasses
  return synthetic.generate_world(dataclasses.replace(TINY_WORLD, exploration=0.2,
                                                      exploration_local=0.0))


@pytest.fixture(scope="session")
def exploring_dataset_dir(tmp_path_factory, exploring_world, default_config):
  """The exploring world's dataset directory, impressions log included (read-only)."""
  path = str(tmp_path_factory.mktemp("exploring") / "dataset")
  synthetic.write_world_dataset(exploring_world, default_config, path, num_train_shards=2,
                                num_eval_shards=1)
  return path


@pytest.fixture
def dataset_copy(tmp_path, tiny_dataset_dir):
  """A private, mutable copy of the tiny dataset."""
  path = str(tmp_path / "dataset")
  shutil.copytree(tiny_dataset_dir, path)
  return path


@pytest.fixture(scope="session")
def postgres():
  """A real PostgreSQL 16 (+ pgvector) from pgserver, started once, stopped at the end.

  Yields a libpq URI for a fresh server. Tests that need isolation create their
  own database with `fresh_database`.
  """
  pgserver = pytest.importorskip("pgserver")
  directory = tempfile.mkdtemp(prefix="tfrs-pg-")
  server = pgserver.get_server(directory, cleanup_mode="stop")
  try:
    yield server.get_uri()
  finally:
    server.cleanup()
    shutil.rmtree(directory, ignore_errors=True)


def _drop_database(server_uri, name):
  import psycopg2
  from psycopg2 import sql
  admin = psycopg2.connect(server_uri)
  admin.autocommit = True
  with admin.cursor() as cur:
    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
  admin.close()


@pytest.fixture(scope="session")
def make_database(postgres):
  """make_database(name) -> URI of a new, empty database of that name on the shared server.

  An existing database of that name is dropped first; all are dropped at the end.
  """
  import psycopg2
  from psycopg2 import sql
  created = []

  def make(name):
    _drop_database(postgres, name)
    admin = psycopg2.connect(postgres)
    admin.autocommit = True
    with admin.cursor() as cur:
      cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    admin.close()
    created.append(name)
    base, _, query = postgres.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
  yield make
  for name in created:
    _drop_database(postgres, name)


_db_counter = [0]


@pytest.fixture
def fresh_database(postgres, make_database):
  """A new empty database on the shared server, dropped after the test; returns its URI."""
  _db_counter[0] += 1
  name = f"test_{os.getpid()}_{_db_counter[0]}"
  yield make_database(name)
  _drop_database(postgres, name)


# A few real training steps: enough for SavedModels, an index and embeddings that rank;
# logs and checkpoints every few steps so that the run holds them too.
# The like residual is off here: on the tiny world it never beats the towers (it is
# skipped after its fits), and the tests that exercise it turn it on.
TINY_TRAINING = dict(epochs=1, steps_per_epoch=12, batch_size=128, log_every_steps=4,
                     checkpoint_every_steps=5, layer_sizes=[32], embedding_dim=16, no_tune=True,
                     like_residual=False)


@pytest.fixture(scope="session")
def tiny_training(tmp_path_factory, tiny_dataset_dir):
  """(run directory, in-memory training result) of one brief training on the tiny dataset,
  shared by every test that only reads a run (read-only: copy before mutating)."""
  from tfrs_two_tower.model import train_options
  from tfrs_two_tower.stages import train_stage
  path = str(tmp_path_factory.mktemp("run") / "run")
  result = train_stage.run(tiny_dataset_dir, path, train_options.TrainOptions(**TINY_TRAINING),
                           log=lambda *a: None)
  return path, result


@pytest.fixture(scope="session")
def tiny_run_dir(tiny_training):
  """The shared brief training's run directory (read-only: copy before mutating)."""
  return tiny_training[0]


@pytest.fixture(scope="session")
def tiny_bias_run_dir(tmp_path_factory, tiny_dataset_dir):
  """The same brief training with --candidate_bias: outputs [q, 1] / [c, b_c] (read-only)."""
  from tfrs_two_tower.model import train_options
  from tfrs_two_tower.stages import train_stage
  path = str(tmp_path_factory.mktemp("bias_run") / "run")
  train_stage.run(tiny_dataset_dir, path, train_options.TrainOptions(
      **TINY_TRAINING, candidate_bias=True), log=lambda *a: None)
  return path


@pytest.fixture(scope="session")
def tiny_residual_run(tmp_path_factory, default_config):
  """(run, dataset directory): the brief training with --like_residual ([a q, 1, b_u, p_u] /
  [c, b_v, 1, s_v]) on a tiny world with stronger appeal and taste and 3x the swipes, where
  the residual beats the towers on validation (on the tiny world it does not; read-only)."""
  import dataclasses
  from tfrs_two_tower.model import train_options
  from tfrs_two_tower.stages import train_stage
  world = synthetic.generate_world(dataclasses.replace(
      TINY_WORLD, attractiveness_scale=2.5, taste_weight=3.0, mean_activity=0.3))
  dataset = str(tmp_path_factory.mktemp("tasteful_dataset") / "dataset")
  synthetic.write_world_dataset(world, default_config, dataset, num_train_shards=3,
                                num_eval_shards=2)
  path = str(tmp_path_factory.mktemp("residual_run") / "run")
  train_stage.run(dataset, path, train_options.TrainOptions(
      **{**TINY_TRAINING, "like_residual": True}), log=lambda *a: None)
  return path, dataset


@pytest.fixture
def exploring_replications():
  """Builds the small exploring-feed world the off-policy unbiasedness tests replicate.

  `build(seed)`: 150 feeds over a 40-profile catalogue, F = 4 shown; exploring with
  eps = 0.3 (3 draws from a local part of each viewer's eligible catalogue, 1 from
  all of it), else a fixed exploit list; P(like) ~ Beta(2, 5); a new ranking's top-5
  lists drawn from the whole eligible catalogue (`feed`, `candidates`). Its
  `replicate()` draws one log: (feed rows, positions, profiles, propensities, explored),
  and `assert_unbiased(estimates, truth, snips)` checks the mean of each estimator's
  replications within 4 standard errors of the truth (SNIPS: + its small bias 0.02).
  """
  def build(seed):
    rng = np.random.default_rng(seed)
    s = types.SimpleNamespace(rng=rng, feeds_n=150, n=40, f=4, eps=0.3, k=5)
    s.viewers = np.full(s.feeds_n, s.n)  # outside the catalogue: any profile may be shown
    s.eligible = rng.random((s.feeds_n, s.n)) < 0.5
    s.p_like = rng.beta(2, 5, (s.feeds_n, s.n))
    s.exploit = np.argsort(-(s.p_like + rng.normal(0, 0.3, s.p_like.shape)), axis=1)[:, :s.f]
    new_top = np.argsort(np.where(s.eligible, rng.random((s.feeds_n, s.n)), -1.0),
                         axis=1)[:, ::-1][:, :s.k]
    s.strata = [(s.eligible & (np.arange(s.n) < 10)[None, :], 3), (s.eligible, s.f - 3)]
    s.feed, s.candidates = np.repeat(np.arange(s.feeds_n), s.k), new_top.ravel()

    def replicate():
      shown, explored = synthetic.exploring_feed(s.exploit, s.viewers, s.strata, s.eps, rng)
      propensity = synthetic.inclusion_probability(s.exploit, s.viewers, s.strata, s.eps, shown)
      row, col = np.nonzero(shown < s.n)
      return row, col, shown[row, col], propensity[row, col], explored, shown

    def assert_unbiased(estimates, truth, snips, context=()):
      for name, values in estimates.items():
        se = np.std(values) / np.sqrt(len(values))
        tolerance = 4 * se + (0.02 if name == snips else 0.0)
        assert abs(np.mean(values) - truth) < tolerance, (*context, name, np.mean(values),
                                                          truth, se)
    s.replicate, s.assert_unbiased = replicate, assert_unbiased
    return s
  return build
