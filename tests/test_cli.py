"""One exit-code grammar: library failures become one message and a documented exit code."""
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf
from absl import app
from absl import flags

from tfrs_two_tower import files
from tfrs_two_tower.model import train_options
from tfrs_two_tower.stages import abtest_stage
from tfrs_two_tower.stages import cli


def _exit(capsys, fail):
  with pytest.raises(SystemExit) as raised:
    with cli.user_errors():
      fail()
  err = capsys.readouterr().err
  assert "Traceback" not in err
  return raised.value.code, err


def test_a_full_disk_exits_5_and_leaves_nothing_half_written(capsys, tmp_path):
  final = str(tmp_path / "out")

  def write_to_a_full_disk():
    with files.atomic_directory(final) as tmp:
      with open(os.path.join(tmp, "part"), "w") as f:
        f.write("x")
      with open("/dev/full", "w") as f:  # the kernel's always-full device: ENOSPC
        f.write("x" * 65536)

  code, err = _exit(capsys, write_to_a_full_disk)
  assert code == cli.EXIT_DISK_FULL == 5 and "the disk is full" in err
  assert os.listdir(tmp_path) == []

  def tensorflow_write_to_a_full_disk():  # TensorFlow wraps ENOSPC as ResourceExhaustedError
    with tf.io.gfile.GFile("/dev/full", "w") as f:
      f.write("x" * 65536)

  code, err = _exit(capsys, tensorflow_write_to_a_full_disk)
  assert code == 5 and "ResourceExhaustedError" in err


def test_a_non_finite_loss_exits_4_with_its_message(capsys):
  def diverge():
    raise train_options.NonFiniteLossError("loss is nan at step 3: training stopped")
  code, err = _exit(capsys, diverge)
  assert code == 4 and "error: loss is nan at step 3" in err


def test_a_bug_keeps_its_traceback():
  with pytest.raises(ZeroDivisionError):
    with cli.user_errors():
      _ = 1 / 0


def test_analysis_of_a_database_without_the_ab_schema_exits_13(capsys, make_database):
  url = make_database("no_ab_schema")
  code, err = _exit(capsys, lambda: abtest_stage.run(experiment="exp", db_url=url,
                                                     env_file=None, output_dir=None))
  assert code == 13 and "has no A/B testing schema" in err and "abtest.sql" in err


ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


def _script(name, *flags):
  return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *flags],
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_bad_flag_values_exit_2_whether_absl_or_the_library_refuses_them(tmp_path):
  absl = _script("generate_world.py", "--num_users=1", f"--world_dir={tmp_path / 'w'}")
  assert absl.returncode == cli.EXIT_INPUT_ERROR == 2, absl.stderr[-2000:]
  assert "error: " in absl.stderr and "--num_users" in absl.stderr
  library = _script("train_model.py", "--eval_ks=0", f"--dataset_dir={tmp_path}",
                    f"--run_dir={tmp_path / 'run'}")
  assert library.returncode == 2 and "--eval_ks" in library.stderr, library.stderr[-2000:]
  boolean = _script("train_model.py", "--candidate_bias=maybe", f"--dataset_dir={tmp_path}",
                    f"--run_dir={tmp_path / 'run'}")
  assert boolean.returncode == 2 and "--candidate_bias" in boolean.stderr, boolean.stderr[-2000:]
  assert "Traceback" not in absl.stderr + library.stderr + boolean.stderr


@pytest.mark.parametrize("changes, flag", [
    ({"eval_ks": [0]}, "--eval_ks"), ({"eval_ks": []}, "--eval_ks"),
    ({"l2": -0.1}, "--l2"), ({"pass_loss_weight": -1.0}, "--pass_loss_weight"),
    ({"l2": float("nan")}, "--l2"), ({"embedding_l2": -1e-3}, "--embedding_l2"),
    ({"layer_sizes": []}, "--layer_sizes"),
    ({"layer_sizes": "128"}, "--layer_sizes"), ({"candidate_bias": "yes"}, "--candidate_bias"),
    ({"like_residual": 1}, "--like_residual")])
def test_silently_bad_training_flags_are_refused_by_name(changes, flag):
  with pytest.raises(train_options.TrainError, match=flag):
    train_options.TrainOptions(**changes).check()


def test_the_readme_exit_code_table_lists_every_code_the_library_uses():
  text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
  table = text[text.index("### Exit codes"):]
  table = table[:table.index("\n\n", table.index("| exit |"))]
  listed = set()
  for first in re.findall(r"^\| (\d+(?:–\d+)?) \|", table, flags=re.M):
    low, _, high = first.partition("–")
    listed |= set(range(int(low), int(high or low) + 1))
  from tfrs_two_tower.data import sources
  from tfrs_two_tower.stages import convert_stage
  used = ({0, 1, cli.EXIT_INPUT_ERROR, cli.EXIT_DISK_FULL, convert_stage.ParityError.exit_code,
           train_options.NonFiniteLossError.exit_code} | set(sources.EXIT_CODES.values()))
  assert listed == used


# One flag grammar (the README's "One flag grammar").

def test_list_flags_are_parsed_once_into_numbers():
  values = flags.FlagValues()
  cli.define_option_flags(train_options.TrainOptions, flag_values=values)
  values(["prog", "--layer_sizes=256,128", "--eval_ks=10,50"])
  options = cli.options_from_flags(train_options.TrainOptions, flag_values=values)
  assert options.layer_sizes == [256, 128] and options.eval_ks == [10, 50]
  assert options.layers() == [256, 128] and options.ks() == [10, 50]
  with pytest.raises(flags.IllegalFlagValueError, match="--layer_sizes.*comma-separated ints"):
    values(["prog", "--layer_sizes=128,x"])
  defaults = cli.options_from_flags(train_options.TrainOptions, flag_values=flags.FlagValues())
  assert defaults == train_options.TrainOptions()  # no flags defined: the dataclass defaults


def test_generated_flags_keep_the_help_names_and_bounds_of_the_options():
  from tfrs_two_tower.stages import evaluate_stage
  from tfrs_two_tower.stages import export_stage
  values = flags.FlagValues()
  cli.define_option_flags(evaluate_stage.EvaluateOptions, flag_values=values)
  cli.define_option_flags(export_stage.ExportOptions, flag_values=flags.FlagValues())
  assert "List lengths K" in values["k"].help  # flag name from option(flag="k")
  values(["prog", "--k=5,20", "--hubness_penalty=0.25,0.5", "--exposure_cap=3",
          "--noreciprocal_back_swipes", "--active_min_swipes=7"])
  options = cli.options_from_flags(evaluate_stage.EvaluateOptions, flag_values=values,
                                   db_url="postgresql://x")
  assert (options.ks, options.hubness_penalties, options.exposure_caps) == ([5, 20],
                                                                           [0.25, 0.5], [3])
  assert not options.back_swipes and options.rules().active_min_swipes == 7
  assert options.db_url == "postgresql://x"  # the shared database flags, not an option field
  with pytest.raises(flags.IllegalFlagValueError):
    values(["prog", "--bootstrap=5"])  # option(lower_bound=10)


def test_a_stray_positional_argument_is_a_usage_error_exit_2():
  cli.refuse_positional_arguments(["script.py"])
  with pytest.raises(app.UsageError, match=r"unexpected argument\(s\) \['out/run'\]") as error:
    cli.refuse_positional_arguments(["script.py", "out/run"])
  assert error.value.exitcode == cli.EXIT_INPUT_ERROR


def test_an_unset_db_url_means_the_environment_and_embedded_only_when_asked(tmp_path,
                                                                             monkeypatch):
  for name in ("SUPABASE_DB_URL", "DATABASE_URL"):
    monkeypatch.delenv(name, raising=False)

  def url(*argv, required=True):
    values = flags.FlagValues()
    cli.define_database_flags(embedded=True, flag_values=values)
    values(["prog", f"--env_file={tmp_path / 'none.env'}", *argv])
    return cli.database_url(required, flag_values=values)
  assert url("--embedded_db") is None
  assert url("--db_url=postgresql://given") == "postgresql://given"
  with pytest.raises(ValueError, match="--embedded_db"):
    url()  # nothing given anywhere: refused, naming the way to the demo
  assert url(required=False) is None
  with pytest.raises(ValueError, match="both"):
    url("--embedded_db", "--db_url=postgresql://given")
  (tmp_path / "app.env").write_text("DATABASE_URL=postgresql://from-env-file\n")
  assert url(f"--env_file={tmp_path / 'app.env'}") == "postgresql://from-env-file"
  monkeypatch.setenv("DATABASE_URL", "postgresql://from-environment")
  assert url() == "postgresql://from-environment"


REQUIRED = {"train_model.py": ["--dataset_dir=d", "--run_dir=r"],
            "evaluate.py": ["--dataset_dir=d", "--output_dir=o"],
            "export_data.py": ["--output_dir=o"], "generate_world.py": ["--world_dir=w"],
            "convert_to_coreml.py": ["--run_dir=r", "--dataset_dir=d", "--output_dir=o"],
            "publish_embeddings.py": ["--run_dir=r", "--dataset_dir=d"],
            "simulate_experiment.py": ["--output_dir=o"]}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(os.listdir(os.path.join(ROOT, "scripts"))))
def test_every_script_refuses_a_stray_argument(script, tmp_path):
  result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script),
                           *REQUIRED.get(script, []), "stray-word"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "unexpected argument(s) ['stray-word']" in result.stderr
  assert not os.listdir(tmp_path)  # refused before anything was written


@pytest.mark.slow
def test_one_meaning_per_flag_name_across_scripts():
  helps = {name: _script(name, "--helpfull").stdout for name in
           ("generate_world.py", "seed_database.py", "run_pipeline.py",
            "simulate_experiment.py")}
  for name in ("generate_world.py", "seed_database.py", "run_pipeline.py"):
    assert "--days: Simulated days of the synthetic world." in helps[name], name
    assert "--exploration: Share of feeds" in helps[name], name
  assert "--days:" not in helps["simulate_experiment.py"]
  assert "--experiment_days: Experiment length" in helps["simulate_experiment.py"]
  assert "--embedded_db" in helps["run_pipeline.py"] + helps["simulate_experiment.py"]
