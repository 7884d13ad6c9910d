"""Built-in model selection: seeded configs, successive halving, budget, bad input."""
import dataclasses
import json
import os

import pandas as pd
import pytest

from tfrs_two_tower.data import writer as writer_lib
from tfrs_two_tower.model import train_options
from tfrs_two_tower.model import tuning
from tfrs_two_tower.stages import train_stage

BASE = dict(sampling_probability="streaming", estimator_init="static", temperature=0.05,
            learning_rate=0.003, embedding_dim=32, embedding_l2=0.0)
TINY = dict(epochs=3, steps_per_epoch=3, batch_size=128, layer_sizes=[16], log_every_steps=100,
            checkpoint_every_steps=100, tune_trials=3, tune_budget_minutes=30)


def test_configs_are_seeded_distinct_and_keep_fixed_values():
  a = tuning.sample_configs(BASE, [], 6, seed=3)
  assert a == tuning.sample_configs(BASE, [], 6, seed=3)
  assert a != tuning.sample_configs(BASE, [], 6, seed=4)
  assert a[0] == BASE and len({json.dumps(c, sort_keys=True) for c in a}) == 6
  assert {c["sampling_probability"] for c in a} <= set(tuning.LOGQ_MODES)
  assert all(c["estimator_init"] == "static" for c in a
             if c["sampling_probability"] != "streaming")
  assert all(tuning.TEMPERATURE_RANGE[0] <= c["temperature"] <= tuning.TEMPERATURE_RANGE[1]
             for c in a[1:])
  assert {c["embedding_l2"] for c in a} <= set(tuning.EMBEDDING_L2S)
  assert len({c["embedding_l2"] for c in tuning.sample_configs(BASE, [], 20, seed=3)}) > 1
  fixed = tuning.sample_configs(BASE, ["temperature", "embedding_dim"], 6, seed=3)
  assert all(c["temperature"] == 0.05 and c["embedding_dim"] == 32 for c in fixed)
  assert tuning.sample_configs(BASE, tuning.TUNED, 6, seed=3) == [BASE]


class _Clocked:
  """A trial whose epochs take `seconds` on a shared clock and score by its config."""

  def __init__(self, clock, config, seconds):
    self.clock, self.config, self.seconds = clock, config, seconds
    self.epoch, self.done, self.best = 0, False, None

  def run_epoch(self):
    self.clock[0] += self.seconds
    self.epoch += 1
    score = self.config["temperature"] * self.epoch
    result = {"epoch": self.epoch, "validation_recall@50": score,
              "validation_recall@50_standard_error": self.config.get("standard_error", 0.0)}
    if self.best is None or score > self.best["validation_recall@50"]:
      self.best = result
    self.done = self.epoch >= 8
    return result


def test_successive_halving_keeps_the_best_and_respects_the_budget():
  configs = [{"temperature": t} for t in (0.1, 0.5, 0.3, 0.2)]
  clock = [0.0]
  result = tuning.successive_halving(
      configs, lambda i, c: _Clocked(clock, c, 10.0), "validation_recall@50",
      budget_seconds=1000, log=lambda m: None, clock=lambda: clock[0])
  assert result.winner_index == 1 and not result.budget_reached
  epochs = [r.epochs for r in result.records]
  assert epochs == [1, 8, 2, 1]  # rung 1: all; rung 2: the best half; the winner to its end
  assert [r.status for r in result.records].count("winner") == 1
  clock[0] = 0.0
  short = tuning.successive_halving(
      configs, lambda i, c: _Clocked(clock, c, 10.0), "validation_recall@50",
      budget_seconds=35, log=lambda m: None, clock=lambda: clock[0])
  # The search may use half the budget (1 epoch); the winner trains on in the rest.
  assert short.budget_reached and clock[0] <= 35
  assert [r.epochs for r in short.records] == [3, 0, 0, 0]
  assert short.records[0].status == "winner"
  with pytest.raises(tuning.TuningError, match="too small for one trial"):
    clock[0] = 0.0
    tuning.successive_halving(configs, lambda i, c: _Clocked(clock, c, 10.0),
                              "validation_recall@50", budget_seconds=5, log=lambda m: None,
                              clock=lambda: clock[0])


@pytest.mark.parametrize("standard_error, winner", [(0.13, 0), (0.11, 1), (0.0, 1)])
def test_the_defaults_stay_unless_beaten_by_more_than_their_standard_error(standard_error,
                                                                           winner):
  # After one epoch trial 1 leads the defaults (trial 0) by 0.44 - 0.32 = 0.12.
  configs = [{"temperature": 0.32, "standard_error": standard_error},
             {"temperature": 0.44, "standard_error": standard_error}]
  clock = [0.0]
  result = tuning.successive_halving(
      configs, lambda i, c: _Clocked(clock, c, 1.0), "validation_recall@50",
      budget_seconds=1000, log=lambda m: None, clock=lambda: clock[0],
      margin_key="validation_recall@50_standard_error")
  assert result.winner_index == winner
  assert result.records[0].standard_error == standard_error
  # Without the margin the better score always wins.
  clock[0] = 0.0
  assert tuning.successive_halving(
      configs, lambda i, c: _Clocked(clock, c, 1.0), "validation_recall@50",
      budget_seconds=1000, log=lambda m: None, clock=lambda: clock[0]).winner_index == 1


@pytest.mark.slow
def test_tuning_is_reproducible_and_recorded(tiny_dataset_dir, tmp_path):
  runs = []
  for name in ("a", "b"):
    path = str(tmp_path / name)
    train_stage.run(tiny_dataset_dir, path, train_options.TrainOptions(**TINY),
                    log=lambda *a: None, fixed=["embedding_dim"])
    runs.append(path)
  tables = [pd.read_csv(os.path.join(p, "trials.csv")).drop(columns="seconds") for p in runs]
  pd.testing.assert_frame_equal(tables[0], tables[1])
  assert len(tables[0]) == 3 and (tables[0]["embedding_dim"] == 32).all()
  manifest = json.load(open(os.path.join(runs[0], "manifest.json")))
  chosen = manifest["tuning"]["chosen"]
  winner = tables[0][tables[0]["status"] == "winner"].iloc[0]
  assert chosen["temperature"] == winner["temperature"]
  assert manifest["temperature"] == chosen["temperature"]
  assert sorted(os.listdir(os.path.join(runs[0], "logs", "trials"))) == [
      f"trial_{i:02d}" for i in range(3) if i != manifest["tuning"]["winner"]]


@pytest.mark.slow
def test_large_tables_keep_the_dense_table_penalty_out_of_the_search(
    tiny_dataset_dir, tmp_path, monkeypatch):
  options = train_options.TrainOptions(**TINY)
  # The same seed draws a penalty for some trial when the tables are small.
  drawn = tuning.sample_configs(dataclasses.asdict(options), [], options.tune_trials,
                                options.seed)
  assert any(c["embedding_l2"] for c in drawn)
  monkeypatch.setattr(tuning, "DENSE_PENALTY_MAX_ROWS", 10)
  lines = []
  path = str(tmp_path / "run")
  train_stage.run(tiny_dataset_dir, path, options, log=lambda m, *a: lines.append(m % a))
  table = pd.read_csv(os.path.join(path, "trials.csv"))
  assert len(table) == 3 and (table["embedding_l2"] == 0.0).all()
  assert any("tuning keeps --embedding_l2=0" in line for line in lines)


def test_budget_too_small_for_one_trial_is_refused(tiny_dataset_dir, tmp_path):
  path = str(tmp_path / "run")
  with pytest.raises(train_options.TrainError, match="--tune_budget_minutes=0.001 is too small"):
    train_stage.run(tiny_dataset_dir, path, train_options.TrainOptions(
        **{**TINY, "tune_budget_minutes": 0.001}), log=lambda *a: None)
  assert not os.path.exists(path)


def test_validation_split_without_likes_is_refused(tmp_path, default_config, tiny_world):
  t0 = 1_780_000_000
  profiles = tiny_world.profiles
  a, b, c = profiles["id"].iloc[:3]
  swipes = pd.DataFrame({"swiper_id": [a, b, c, a], "swipee_id": [b, a, a, c],
                         "action": ["like", "like", "pass", "like"],
                         "created_at": pd.to_datetime([t0, t0 + 1, t0 + 500, t0 + 1000],
                                                      unit="s", utc=True)})
  path = str(tmp_path / "ds")
  with writer_lib.DatasetWriter(default_config, path, t0 + 1000, profiles, profiles,
                                validation_time=t0 + 400) as w:
    w.add_interactions(swipes, source="swipes.csv")
  with pytest.raises(train_options.TrainError, match="validation split has 1 users and 0 likes"):
    train_stage.run(path, str(tmp_path / "run"), train_options.TrainOptions(no_tune=True),
                    log=lambda *a: None)
