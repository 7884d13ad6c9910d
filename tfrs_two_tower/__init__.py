"""tfrs-two-tower: two-tower retrieval for swipe data, from Postgres to Core ML.

TensorFlow Recommenders 0.7.7 needs Keras 2 (`tf-keras`). TensorFlow binds `tf.keras`
from `TF_USE_LEGACY_KERAS` when it is first imported/accessed, so the package sets it
here, before any module of ours imports TensorFlow. Scripts and tests import this
package (or set the variable) before anything else. That variable is the only global
state importing the package changes: it is what TFRS requires (a process that already
imported TensorFlow with Keras 3 cannot use TFRS; import this package first).
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

__version__ = "0.1.0"
