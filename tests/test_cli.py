"""One exit-code grammar: library failures become one message and a documented exit code."""
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from tfrs_two_tower import files
from tfrs_two_tower.stages import abtest_stage
from tfrs_two_tower.stages import cli
from tfrs_two_tower.stages import train_stage


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
    raise train_stage.NonFiniteLossError("loss is nan at step 3: training stopped")
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
  assert "Traceback" not in absl.stderr + library.stderr


@pytest.mark.parametrize("changes, flag", [
    ({"eval_ks": "0"}, "--eval_ks"), ({"eval_ks": ""}, "--eval_ks"),
    ({"l2": -0.1}, "--l2"), ({"pass_loss_weight": -1.0}, "--pass_loss_weight"),
    ({"l2": float("nan")}, "--l2"), ({"layer_sizes": ""}, "--layer_sizes"),
    ({"layer_sizes": " , "}, "--layer_sizes")])
def test_silently_bad_training_flags_are_refused_by_name(changes, flag):
  with pytest.raises(train_stage.TrainError, match=flag):
    train_stage.TrainOptions(**changes).check()


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
           train_stage.NonFiniteLossError.exit_code} | set(sources.EXIT_CODES.values()))
  assert listed == used
