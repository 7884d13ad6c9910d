"""What scripts share: turning the library's input errors into a clean exit.

Library code raises ValueError subclasses (ConfigError, DataError,
DatasetFormatError, ...) and FileExistsError with messages that name the file,
flag, column or row. A user should see that message, not a traceback; a bug
(anything else) still shows its traceback.
"""

import contextlib
import logging as std_logging
import sys

# Exit codes scripts share (documented in the README's troubleshooting table).
EXIT_INPUT_ERROR = 2


@contextlib.contextmanager
def user_errors(exit_code: int = EXIT_INPUT_ERROR):
  """Exits with `exit_code` and a one-paragraph message on bad input.

  Also hides TensorFlow's own INFO chatter (SavedModel fingerprints, signature
  renames): at absl's INFO level it would drown the stages' progress lines.
  """
  std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
  try:
    yield
  except (ValueError, FileExistsError, FileNotFoundError, KeyError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(getattr(e, "exit_code", exit_code))
