"""One exit-code grammar: library failures become one message and a documented exit code."""
import os

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
