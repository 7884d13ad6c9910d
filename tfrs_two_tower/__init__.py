"""tfrs-two-tower: two-tower retrieval for swipe data, from Postgres to Core ML.

TensorFlow Recommenders 0.7.7 needs Keras 2 (`tf-keras`). TensorFlow binds `tf.keras`
from `TF_USE_LEGACY_KERAS` when it is first imported/accessed, so the package sets it
here, before any module of ours imports TensorFlow. Scripts and tests import this
package (or set the variable) before anything else. That variable is the only global
state importing the package changes: it is what TFRS requires (a process that already
imported TensorFlow with Keras 3 cannot use TFRS; import this package first).

The Python API (`tfrs_two_tower.api`: load_config, export, train, evaluate, convert,
publish, training_data, build_model) is reachable from the package, loaded on first use
so that `import tfrs_two_tower` stays light.
"""

import importlib
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

__version__ = "0.1.0"

_API = ("load_config", "export", "train", "evaluate", "convert", "publish", "training_data",
        "build_model")


def __getattr__(name):
  if name in _API:
    # Loaded on first use (it imports TensorFlow and every stage); by name, so that the
    # modules that read __version__ from the package do not depend on the API layer.
    return getattr(importlib.import_module("tfrs_two_tower.api"), name)
  raise AttributeError(f"module 'tfrs_two_tower' has no attribute {name!r}")
