"""train_model.py: dataset dir -> run dir (see `model/run_dir.py` for the layout).

The door of `model/training_run.py`: checks the options and the paths, opens the
dataset, trains. Training state lives in `<run_dir>.incomplete/` until the run
ends; started again with the same flags after a crash, training resumes.
"""

import os
from typing import Callable, Optional, Sequence

from tfrs_two_tower.data import reader
from tfrs_two_tower.model import training_run
from tfrs_two_tower.model.train_options import TrainError
from tfrs_two_tower.model.train_options import TrainOptions


def run(dataset_dir: str, run_dir: str, options: Optional[TrainOptions] = None,
        overwrite: bool = False, log: Callable[..., None] = print,
        fixed: Sequence[str] = ()) -> training_run.TrainResult:
  """Trains the two-tower model and writes the run directory (only the chief writes it).

  Unless `options.no_tune`, the tuned options (`tuning.TUNED`) not named in
  `fixed` (the flags the user gave) are chosen on the validation split first.
  """
  options = options or TrainOptions()
  options.check()
  run_dir = os.path.abspath(run_dir)
  if os.path.exists(run_dir) and not overwrite:
    raise TrainError(f"{run_dir} already exists (pass --overwrite to replace it)")
  try:
    dataset = reader.open_dataset(dataset_dir)
  except reader.DatasetFormatError as e:
    raise TrainError(f"--dataset_dir: {e}") from None
  return training_run.train(dataset, run_dir, options, overwrite, log, fixed)
