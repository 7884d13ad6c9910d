"""Options dataclasses whose fields are also command-line flags.

A field declared with `option(default, help, ...)` carries its flag's help text
(and optionally another flag name, enum choices, bounds) in its metadata, so the
library's options (`TrainOptions`, `EvaluateOptions`, `ExportOptions`) and the
scripts' flags cannot drift apart: `stages/cli.py` defines the flags from them.
This module knows nothing of absl; the bottom layer, importable from anywhere.
"""

import dataclasses
from typing import Any, List, Optional, Sequence


def option(default: Any = dataclasses.MISSING, help: str = "", *,  # noqa: A002 (the flag's)
           flag: Optional[str] = None, choices: Optional[Sequence[str]] = None,
           lower_bound: Optional[float] = None, upper_bound: Optional[float] = None,
           factory: Any = dataclasses.MISSING) -> Any:
  """A dataclass field that is also a flag: its help, and optionally another flag name
  (`flag`), enum `choices` and bounds. A list default needs `factory`."""
  metadata = {"help": help, "flag": flag, "choices": choices, "lower_bound": lower_bound,
              "upper_bound": upper_bound}
  if factory is not dataclasses.MISSING:
    return dataclasses.field(default_factory=factory, metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def flag_fields(options_cls) -> List[dataclasses.Field]:
  """The fields of `options_cls` declared with `option(...)`, in order."""
  return [f for f in dataclasses.fields(options_cls) if "help" in f.metadata]


def flag_name(field: dataclasses.Field) -> str:
  """The flag of a field: its own name unless `option(flag=...)` gave another."""
  return field.metadata.get("flag") or field.name
