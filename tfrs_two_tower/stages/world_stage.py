"""generate_world.py: the synthetic world and its dataset."""

import time
from typing import Callable, Optional

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.data import readiness
from tfrs_two_tower.data import reader
from tfrs_two_tower.data import synthetic
from tfrs_two_tower.data import writer as writer_lib
from tfrs_two_tower.stages.cli import parse_time


def run(world_dir: str, dataset_dir: Optional[str] = None, config_path: Optional[str] = None,
        num_users: int = 5000, days: int = 120, feed_size: int = 8, mean_activity: float = 0.11,
        exploration: float = 0.0, seed: int = 0, eval_fraction: float = 0.15,
        split_time: Optional[str] = None,
        validation_fraction: float = writer_lib.DEFAULT_VALIDATION_FRACTION,
        validation_days: float = 0.0,
        train_shards: int = 4, eval_shards: int = 2, overwrite: bool = False,
        log: Callable[..., None] = print) -> synthetic.World:
  config = config_lib.load_config(config_path)
  params = synthetic.WorldParams(num_users=num_users, days=days, feed_size=feed_size,
                                 mean_activity=mean_activity, exploration=exploration,
                                 seed=seed)
  started = time.time()
  last = [started]

  def progress(day, swipes):
    if time.time() - last[0] > 5:
      log("world: day %d/%d, %d swipes (%.0f swipes/s)" % (day + 1, days, swipes,
                                                          swipes / (time.time() - started)))
      last[0] = time.time()
  world = synthetic.generate_world(params, progress=progress)
  elapsed = time.time() - started
  summary = world.summary()
  log("world: %d users, %d swipes (%s), %d matches in %.1fs (%.0f swipes/s)" % (
      summary["users"], summary["swipes"], summary["actions"], summary["matches"], elapsed,
      summary["swipes"] / max(elapsed, 1e-9)))
  world.save(world_dir, overwrite=overwrite)
  log("world: written to %s" % world_dir)
  if dataset_dir:
    synthetic.write_world_dataset(world, config, dataset_dir, eval_fraction=eval_fraction,
                                  split_time=parse_time(split_time, "split_time"),
                                  validation_fraction=validation_fraction,
                                  validation_days=validation_days,
                                  overwrite=overwrite, num_train_shards=train_shards,
                                  num_eval_shards=eval_shards)
    dataset = reader.open_dataset(dataset_dir)
    log("dataset: %s: train %d, validation %d, eval %d interactions; oracle eval AUC %.3f" % (
        dataset_dir, dataset.num_rows("train"), dataset.num_rows("validation"),
        dataset.num_rows("eval"),
        dataset.stats["oracle"]["eval_auc"]))
    log(readiness.format_readiness(dataset.stats["readiness"]))
  return world
