"""One function per script: what a script does, importable and testable.

Each `run(...)` takes plain arguments (no flags) and returns what it wrote.
Scripts in scripts/ only parse flags and call these.
"""

import os

# The command-line doors keep TensorFlow's C++ start-up chatter (CPU feature notes, cuInit on
# CPU-only machines) out of the stages' progress lines. Only the scripts' import path sets it:
# importing the library itself changes no environment beyond TF_USE_LEGACY_KERAS.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
