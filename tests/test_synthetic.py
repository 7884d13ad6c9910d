"""The synthetic world: determinism, realism checks, the oracle, the script."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tfrs_two_tower.data import reader
from tfrs_two_tower.data import synthetic


def _tree_digest(path):
  digest = hashlib.sha256()
  for root, dirs, names in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(names):
      full = os.path.join(root, name)
      digest.update(os.path.relpath(full, path).encode())
      digest.update(open(full, "rb").read())
  return digest.hexdigest()


def test_same_seed_gives_byte_identical_world_and_dataset(tmp_path, default_config):
  params = synthetic.WorldParams(num_users=300, days=20, seed=11)
  digests = []
  for run in ("a", "b"):
    world = synthetic.generate_world(params)
    world.save(str(tmp_path / run / "world"))
    synthetic.write_world_dataset(world, default_config, str(tmp_path / run / "ds"),
                                  eval_fraction=0.2)
    digests.append((_tree_digest(str(tmp_path / run / "world")),
                    _tree_digest(str(tmp_path / run / "ds"))))
  assert digests[0] == digests[1]
  other = synthetic.generate_world(synthetic.WorldParams(num_users=300, days=20, seed=12))
  assert not other.swipes.equals(synthetic.generate_world(params).swipes)


def test_world_shape_and_realism(tiny_world):
  swipes, profiles = tiny_world.swipes, tiny_world.profiles
  assert len(profiles) == 700 and len(swipes) > 5000
  assert not swipes.duplicated(["swiper_id", "swipee_id"]).any()
  assert (swipes["swiper_id"] != swipes["swipee_id"]).all()
  assert swipes["created_at"].is_monotonic_increasing
  # Nobody swipes before both users exist.
  created = profiles.set_index("id")["created_at"]
  assert (swipes["created_at"].to_numpy() > created[swipes["swiper_id"]].to_numpy()).all()
  assert (swipes["created_at"].to_numpy() > created[swipes["swipee_id"]].to_numpy()).all()
  like_share = (swipes["action"] != "pass").mean()
  assert 0.1 < like_share < 0.5
  # Heavy-tailed popularity: the top 5 % of profiles receive far more than 5 % of likes.
  likes = swipes[swipes["action"] != "pass"]["swipee_id"].value_counts()
  top = likes.iloc[:max(1, len(profiles) // 20)].sum() / likes.sum()
  assert top > 0.15
  assert 0 < tiny_world.summary()["matches"] < len(swipes)


def test_oracle_is_calibrated_against_the_swipes_it_generated(tiny_world):
  p = tiny_world.like_probability(tiny_world.swipes["swiper_id"], tiny_world.swipes["swipee_id"])
  liked = (tiny_world.swipes["action"] != "pass").to_numpy()
  bins = np.digitize(p, [0.1, 0.3, 0.5, 0.7, 0.9])
  for b in np.unique(bins):
    mask = bins == b
    if mask.sum() > 300:
      assert abs(liked[mask].mean() - p[mask].mean()) < 0.05
  match = tiny_world.match_probability(tiny_world.swipes["swiper_id"][:10],
                                       tiny_world.swipes["swipee_id"][:10])
  assert (match <= p[:10] + 1e-12).all()


def test_dataset_reports_oracle_auc_and_new_users(tiny_dataset_dir):
  ds = reader.open_dataset(tiny_dataset_dir)
  assert 0.7 < ds.stats["oracle"]["eval_auc"] < 0.99  # learnable, not trivial
  assert ds.stats["entities"]["query_new_in_eval"] > 0  # the time split has new users
  assert ds.stats["readiness"]["verdict"] == "ready"


def test_save_load_round_trip(tiny_world, tiny_world_dir):
  loaded = synthetic.World.load(tiny_world_dir)
  assert loaded.params == tiny_world.params
  # Generated id columns are object arrays of shared strings (memory at 1M users),
  # loaded ones pandas' Arrow strings: the same values.
  pd.testing.assert_frame_equal(loaded.swipes, tiny_world.swipes, check_dtype=False)
  pd.testing.assert_frame_equal(loaded.impressions, tiny_world.impressions,
                                check_dtype=False)
  ids = tiny_world.profiles["id"].to_numpy()[:50]
  np.testing.assert_array_equal(loaded.like_probability(ids, ids[::-1]),
                                tiny_world.like_probability(ids, ids[::-1]))
  with pytest.raises(KeyError, match="unknown user id"):
    loaded.like_probability(["nobody"], ids[:1])


@pytest.mark.slow  # three script subprocesses
def test_generate_world_script(tmp_path):
  script = os.path.join(os.path.dirname(__file__), "..", "scripts", "generate_world.py")
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, script, f"--world_dir={out}/world",
                         f"--dataset_dir={out}/ds", "--num_users=250", "--days=20"],
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "readiness: TOO_EARLY" in proc.stderr or "readiness: NOT_YET" in proc.stderr
  assert reader.open_dataset(str(out / "ds")).num_rows("train") > 0
  again = subprocess.run([sys.executable, script, f"--world_dir={out}/world", "--num_users=250",
                          "--days=20"], capture_output=True, text=True)
  assert again.returncode != 0 and "--overwrite" in again.stderr
  bad = subprocess.run([sys.executable, script, f"--world_dir={out}/w2", "--num_users=1"],
                       capture_output=True, text=True)
  assert bad.returncode != 0 and "num_users" in bad.stderr


def test_popularity_feed_concentrates_exposure_on_liked_profiles():
  small = dict(num_users=800, days=30, seed=5)
  shown = {feed: synthetic.generate_world(synthetic.WorldParams(feed=feed, **small))
           .swipes["swipee_id"].value_counts() for feed in synthetic.FEEDS}
  top = {feed: counts.iloc[:8].sum() / counts.sum() for feed, counts in shown.items()}
  assert top["popularity"] > 1.4 * top["feature_matching"], top
  with pytest.raises(ValueError, match="feed"):
    synthetic.generate_world(synthetic.WorldParams(feed="random", **small))


def test_large_frames_are_written_in_chunks_and_matches_counted_by_codes(tiny_world, tmp_path):
  # The 1M-user world writes its ~65M rows chunk by chunk; the file reads back the same.
  path = str(tmp_path / "swipes.parquet")
  synthetic._write_parquet(tiny_world.swipes, path, chunk_rows=1000)
  assert len(tiny_world.swipes) > 3000
  pd.testing.assert_frame_equal(pd.read_parquet(path),
                                pd.read_parquet(os.path.join(_saved(tiny_world, tmp_path),
                                                             "swipes.parquet")))
  likes = tiny_world.swipes[tiny_world.swipes["action"] != "pass"]
  pairs = set(zip(likes["swiper_id"], likes["swipee_id"]))
  by_hand = sum((b, a) in pairs for a, b in pairs) // 2
  assert by_hand > 10 and synthetic.count_matches(tiny_world.swipes) == by_hand


def _saved(world, tmp_path) -> str:
  path = str(tmp_path / "world")
  world.save(path)
  return path


def test_load_profiles_only_skips_swipes_and_log(tiny_world, tiny_world_dir):
  # Seeding profiles at 1M users must not hold the world's swipes and log (~20 GB).
  world = synthetic.World.load(tiny_world_dir, profiles_only=True)
  pd.testing.assert_frame_equal(world.profiles, tiny_world.profiles, check_dtype=False)
  assert len(world.swipes) == 0 and list(world.swipes.columns) == list(tiny_world.swipes.columns)
  assert world.impressions is None and world.params == tiny_world.params
