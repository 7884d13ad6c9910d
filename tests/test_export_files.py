"""Export from CSV/Parquet dumps: the same dataset, the same checks as the database path."""
import json
import os

import pandas as pd
import pytest

from test_export import SMALL_GATE, assert_same_dataset, read, run_main
from tfrs_two_tower import config as config_lib
from tfrs_two_tower.data import seeding
from tfrs_two_tower.stages import export_stage


def supabase_csv(world, directory, swipes=None, profiles=None):
  """The world's tables as Supabase's dashboard exports them: arrays {a,b}, times +00, t/f."""
  os.makedirs(directory, exist_ok=True)
  profiles = (world.profiles if profiles is None else profiles).copy()
  profiles["interests"] = profiles["interests"].map(seeding.array_literal)
  profiles["verified"] = profiles["verified"].map({True: "true", False: "false"})
  swipes = (world.swipes if swipes is None else swipes).copy()
  for frame in (profiles, swipes):
    frame["created_at"] = frame["created_at"].dt.strftime("%Y-%m-%d %H:%M:%S+00")
  profiles.to_csv(os.path.join(directory, "profiles.csv"), index=False)
  swipes.to_csv(os.path.join(directory, "swipes.csv"), index=False)
  return str(directory)


@pytest.mark.slow
def test_parquet_dump_equals_world_dataset(tiny_world_dir, tiny_dataset_dir, tmp_path):
  out = str(tmp_path / "parquet")
  export_stage.run(out, export_stage.ExportOptions(input_dir=tiny_world_dir, train_shards=3,
      eval_shards=2), log=lambda m: None)
  assert_same_dataset(out, tiny_dataset_dir)
  assert read(out, "manifest.json")["source"]["kind"] == "files"


@pytest.mark.slow
def test_supabase_csv_dump_equals_world_dataset(tiny_world, tiny_dataset_dir, tmp_path):
  dump = supabase_csv(tiny_world, tmp_path / "dump")
  assert '"{' in open(os.path.join(dump, "profiles.csv")).read()
  out = str(tmp_path / "csv")
  code, logs, errors = run_main(tmp_path, input_dir=dump, output_dir=out)
  assert code == 0, errors
  assert "rows/s" in logs
  assert_same_dataset(out, tiny_dataset_dir)


@pytest.mark.slow
def test_file_partitions_combine_to_the_whole(tiny_world_dir, tiny_dataset_dir, tmp_path):
  for p in range(2):
    export_stage.run(str(tmp_path / f"part-{p}"), export_stage.ExportOptions(
        input_dir=tiny_world_dir, num_partitions=2, partition=p), log=lambda m: None)
  out = str(tmp_path / "combined")
  export_stage.run(out, export_stage.ExportOptions(
      combine=[str(tmp_path / "part-0"), str(tmp_path / "part-1")]), log=lambda m: None)
  assert_same_dataset(out, tiny_dataset_dir)


def _swipes(world, case):
  swipes = world.swipes.copy()
  if case == "unknown_actions":
    swipes.loc[swipes.index[:3], "action"] = "block"
  elif case == "nulls":
    swipes.loc[swipes.index[:2], "action"] = None
  elif case == "missing_profiles":
    swipes.loc[swipes.index[:4], "swiper_id"] = "00000000-0000-4000-8000-00000000beef"
  elif case == "empty":
    swipes = swipes.iloc[:0]
  elif case == "missing_column":
    swipes = swipes.rename(columns={"swiper_id": "swiper"})
  elif case == "not_ready":
    swipes = swipes.iloc[:300]
  return swipes


@pytest.mark.parametrize("case, code, expected", [
    ("missing_file", 13, ["no file for table 'swipes'", "config interactions.table"]),
    ("missing_column", 13, ["'swiper_id'", "config interactions.query_id_column"]),
    ("wrong_type", 14, ["'age'", "features[3] (age)"]),
    ("empty", 15, ["have no rows"]),
    ("unknown_actions", 16, ["'block' x3"]),
    ("nulls", 17, ["'action': 2"]),
    ("missing_profiles", 18, ["4 with a 'swiper_id' not in 'profiles'"]),
    ("not_ready", 10, ["readiness gate not met"]),
])
def test_file_errors_match_the_database_ones(tiny_world, tmp_path, case, code, expected):
  profiles = tiny_world.profiles.copy()
  if case == "wrong_type":
    profiles["age"] = profiles["age"].astype(str) + " years"
  dump = supabase_csv(tiny_world, tmp_path / "dump", _swipes(tiny_world, case), profiles)
  if case == "missing_file":
    os.remove(os.path.join(dump, "swipes.csv"))
  got, logs, errors = run_main(tmp_path, input_dir=dump)
  assert got == code, errors
  for text in expected:
    assert text in errors, (text, errors)
  assert not (tmp_path / "out").exists()


def test_duplicates_keep_the_latest_and_are_counted(tiny_world, tmp_path):
  swipes = tiny_world.swipes.iloc[:2000]
  again = swipes.iloc[:7].assign(action="superlike",
                                 created_at=swipes["created_at"].iloc[:7] + pd.Timedelta("1h"))
  dump = supabase_csv(tiny_world, tmp_path / "dump", pd.concat([again, swipes]))
  out = str(tmp_path / "out")
  code, logs, errors = run_main(tmp_path, input_dir=dump, **SMALL_GATE)
  assert code == 0, errors
  assert read(out, "stats.json")["dropped"]["duplicates"] == 7
  assert sum(read(out, "stats.json")["rows"].values()) == 2000


RATINGS = {"superlike": 5, "like": 4, "pass": 2}


def _config_with(tmp_path, **interactions):
  """The default config with `interactions` keys set; returns its path."""
  raw = config_lib.load_config().raw
  raw = dict(raw, interactions=dict(raw["interactions"], **interactions))
  path = str(tmp_path / f"config-{config_lib.config_hash(raw)[:12]}.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(raw, f)
  return path


def _numeric_times(frame, per_second):
  seconds = frame["created_at"].astype("datetime64[ns, UTC]").astype("int64") // 10**9
  return frame.assign(created_at=seconds * per_second)


def test_unix_seconds_in_a_csv_need_and_honour_the_unit(tiny_world, tiny_dataset_dir, tmp_path):
  dump = str(tmp_path / "dump")
  os.makedirs(dump)
  supabase_csv(tiny_world, dump)
  for name in ("profiles", "swipes"):  # the times as unix seconds, everything else unchanged
    table = getattr(tiny_world, name)
    csv = pd.read_csv(os.path.join(dump, f"{name}.csv"), dtype=object, keep_default_na=False)
    csv["created_at"] = _numeric_times(table, 1)["created_at"].to_numpy()
    csv.to_csv(os.path.join(dump, f"{name}.csv"), index=False)
  code, _, errors = run_main(tmp_path, input_dir=dump)
  assert code == 19 and "'created_at' holds numbers" in errors and "timestamp_unit" in errors
  assert "looks like unix s" in errors and not (tmp_path / "out").exists()
  out = str(tmp_path / "seconds")
  code, _, errors = run_main(tmp_path, input_dir=dump, output_dir=out,
                             config_path=_config_with(tmp_path, timestamp_unit="s"))
  assert code == 0, errors
  assert_same_dataset(out, tiny_dataset_dir, same_config=False)  # the config names a unit


def test_parquet_milliseconds_are_never_read_as_seconds(tiny_world, tiny_dataset_dir, tmp_path):
  dump = tmp_path / "dump"
  dump.mkdir()
  _numeric_times(tiny_world.profiles, 1000).to_parquet(dump / "profiles.parquet", index=False)
  swipes = _numeric_times(tiny_world.swipes, 1000)
  swipes.to_parquet(dump / "swipes.parquet", index=False)
  code, _, errors = run_main(tmp_path, input_dir=str(dump))
  assert code == 19 and "looks like unix ms" in errors, errors
  code, _, errors = run_main(tmp_path, input_dir=str(dump),
                             config_path=_config_with(tmp_path, timestamp_unit="s"))
  assert code == 19 and "swipes.parquet: column 'created_at' row 0" in errors, errors
  assert "read as unix s" in errors and "looks like unix ms" in errors
  assert not (tmp_path / "out").exists()
  out = str(tmp_path / "ms")
  code, _, errors = run_main(tmp_path, input_dir=str(dump), output_dir=out,
                             config_path=_config_with(tmp_path, timestamp_unit="ms"))
  assert code == 0, errors
  assert_same_dataset(out, tiny_dataset_dir, same_config=False)


def test_implausible_dates_name_file_column_and_row(tiny_world, tmp_path):
  swipes = tiny_world.swipes.copy()
  swipes.loc[swipes.index[5], "created_at"] = pd.Timestamp("1970-01-02", tz="UTC")
  dump = supabase_csv(tiny_world, tmp_path / "dump", swipes)
  code, _, errors = run_main(tmp_path, input_dir=dump)
  assert code == 19 and "swipes.csv: column 'created_at' row 5: 1970-01-02" in errors, errors
  assert "1990-01-01 .. tomorrow" in errors and not (tmp_path / "out").exists()


def test_a_repeated_profile_id_is_named_not_a_traceback(tiny_world, tmp_path):
  profiles = pd.concat([tiny_world.profiles, tiny_world.profiles.iloc[[7]]], ignore_index=True)
  dump = supabase_csv(tiny_world, tmp_path / "dump", profiles=profiles)
  code, _, errors = run_main(tmp_path, input_dir=dump)
  repeated = tiny_world.profiles["id"].iloc[7]
  assert code == 19 and f"id {repeated!r} appears more than once in column 'id'" in errors
  assert f"rows 7, {len(tiny_world.profiles)}" in errors and "profiles.csv" in errors


def test_unreadable_files_are_named(tiny_world, tmp_path):
  dump = supabase_csv(tiny_world, tmp_path / "dump")
  swipes = os.path.join(dump, "swipes.csv")
  lines = open(swipes, "rb").read().split(b"\n")
  lines[41] = lines[41][:10] + b"\xff" + lines[41][10:]  # a Latin-1 byte on line 42
  open(swipes, "wb").write(b"\n".join(lines))
  code, _, errors = run_main(tmp_path, input_dir=dump)
  assert code == 19 and f"{swipes}: line 42 is not UTF-8" in errors, errors
  open(os.path.join(dump, "profiles.csv"), "wb").close()
  code, _, errors = run_main(tmp_path, input_dir=dump)
  assert code == 19 and "profiles.csv: the file is empty (0 bytes)" in errors, errors


def test_rating_thresholds_map_to_the_same_dataset(tiny_world, tiny_dataset_dir, tmp_path):
  swipes = tiny_world.swipes.assign(action=tiny_world.swipes["action"].map(RATINGS))
  dump = supabase_csv(tiny_world, tmp_path / "dump", swipes)
  config = _config_with(tmp_path, action_thresholds=[{"action": "superlike", "min": 5},
                                     {"action": "like", "min": 3.5, "max": 4.5},
                                     {"action": "pass", "max": 3}])
  out = str(tmp_path / "out")
  code, logs, errors = run_main(tmp_path, input_dir=dump, config_path=config)
  assert code == 0, errors
  # The same records, labels and action counts; only the config (and its hash) differs.
  assert_same_dataset(out, tiny_dataset_dir, same_config=False)


def test_unmapped_rating_is_refused_naming_the_config_key(tiny_world, tmp_path):
  swipes = tiny_world.swipes.assign(
      action=tiny_world.swipes["action"].map(RATINGS).astype(float))
  swipes.loc[swipes.index[:2], "action"] = 3.7  # between the pass and like ranges
  dump = supabase_csv(tiny_world, tmp_path / "dump", swipes)
  config = _config_with(tmp_path, action_thresholds=[{"action": "superlike", "min": 5},
                                     {"action": "like", "min": 4, "max": 4.5},
                                     {"action": "pass", "max": 3}])
  code, logs, errors = run_main(tmp_path, input_dir=dump, config_path=config)
  assert code == 16, errors
  assert "interactions.action_thresholds" in errors and "'3.7' x2" in errors, errors
  assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_likes_only_data_is_implicit_feedback_end_to_end(tiny_world, tmp_path):
  """Likes-only data exports with a warning, trains without the pass loss, AUC is n/a."""
  from tfrs_two_tower.stages import evaluate_stage
  from tfrs_two_tower.model import train_options
  from tfrs_two_tower.stages import train_stage
  likes = tiny_world.swipes[tiny_world.swipes["action"] != "pass"]
  dump = supabase_csv(tiny_world, tmp_path / "dump", likes)
  out = str(tmp_path / "out")
  code, logs, errors = run_main(tmp_path, input_dir=dump, min_users=100, min_interactions=1000)
  assert code == 0, errors  # the like share does not fail the gate
  assert "warning: no passes: implicit feedback" in logs
  assert read(out, "stats.json")["readiness"]["feedback"] == "implicit"
  lines = []
  run_dir = str(tmp_path / "run")
  train_stage.run(out, run_dir, train_options.TrainOptions(
      epochs=1, steps_per_epoch=5, batch_size=128, layer_sizes=[16], embedding_dim=8),
      log=lambda *a: lines.append(" ".join(map(str, a))))
  assert any("no passes (implicit feedback" in line for line in lines), lines
  assert read(run_dir, "flags.json")["pass_loss_weight"] == 0.0
  report = evaluate_stage.run(out, [run_dir], str(tmp_path / "eval"),
                              evaluate_stage.EvaluateOptions(ks=(10,), bootstrap=20,
                                                             reciprocal=False, tensorboard=False),
                              log=lambda *a: None)
  auc = report["recommenders"]["run"]["segments"]["all"]["auc"]
  assert auc["value"] is None and "no passes" in auc["reason"]
  assert "gate not applicable" in report["verdict"]["run"]["line"]
  assert report["recommenders"]["run"]["segments"]["all"]["recall@10"]["value"] > 0
  markdown = read(str(tmp_path / "eval"), "report.md")
  assert "AUC n/a (no passes among the eval swipes" in markdown
  new_users = report["segments"]["sizes"]["new"]
  assert new_users > 0 and f"## Users new since training ({new_users} users" in markdown
  assert "| popularity | " in markdown.split("## Users new since training")[1]
