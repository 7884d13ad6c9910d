"""The config's structure as a JSON Schema (`config.schema.json`), checked with `jsonschema`.

The schema (draft 2020-12) is shipped with the package so that any language can
validate a config before handing it over (the iOS side, SQL tooling, an editor).
It says what a schema can say: keys, types, enums, bounds, which keys a feature
type allows, which rule forms exclude each other. `config.py` makes the checks
that relate values to each other once a part passed the schema.

jsonschema's own messages name neither the key path in config terms nor the
rule in words ("Additional properties are not allowed ('x' was unexpected)");
`check` turns each error into one line naming the path, e.g.
`entities.user.features[3] (age).normalisation: unknown key (allowed: ...)`.
"""

import dataclasses
import json
import os
from typing import Any, Iterable, Iterator, List, Tuple, Union

import jsonschema

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "config.schema.json")
with open(SCHEMA_PATH, encoding="utf-8") as _f:
  SCHEMA = json.load(_f)
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

Path = Tuple[Union[str, int], ...]

_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number",
               "boolean": "true or false", "object": "an object", "array": "a list",
               "null": "null"}
_BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}


@dataclasses.dataclass(frozen=True)
class Problem:
  """One schema violation: the key path it is at (or below) and its one-line message."""
  path: Path
  message: str


@dataclasses.dataclass(frozen=True)
class SchemaCheck:
  """The schema's verdict on one config: its problems and which parts may be trusted."""
  problems: Tuple[Problem, ...]

  @property
  def messages(self) -> List[str]:
    return [p.message for p in self.problems]

  def valid(self, *path: Union[str, int]) -> bool:
    """No problem at, above or below `path`: the part passed the schema whole."""
    return not any(p.path[:len(path)] == path or path[:len(p.path)] == p.path
                   for p in self.problems)

  def readable(self, *path: Union[str, int]) -> bool:
    """No problem at or above `path`: it has the schema's type (parts below may be bad)."""
    return not any(path[:len(p.path)] == p.path for p in self.problems)


def check(raw: Any) -> SchemaCheck:
  """Every schema violation of `raw`, one line each, ordered by message (= by path)."""
  found = {}
  for error in _VALIDATOR.iter_errors(raw):
    for problem in _explain(error, raw):
      found.setdefault(problem.message, problem)
  return SchemaCheck(tuple(sorted(found.values(), key=lambda p: p.message)))


def _explain(error: jsonschema.ValidationError, raw: Any) -> Iterator[Problem]:
  path, kind, value, schema = (tuple(error.absolute_path), error.validator, error.instance,
                               error.schema)
  if kind == "required":
    for key in error.validator_value:
      if key not in value:
        yield _problem(raw, path + (key,), "missing (required)")
  elif kind == "additionalProperties":
    allowed = sorted(schema.get("properties", {}))
    for key in value:
      if key not in allowed:
        yield _problem(raw, path + (key,), f"unknown key (allowed: {', '.join(allowed)})")
  elif "propertyNames" in error.absolute_schema_path:
    yield _problem(raw, path + (value,), f"names must match {schema.get('pattern')}")
  elif kind in ("oneOf", "anyOf"):
    yield from _explain_alternatives(error, raw)
  else:
    yield _problem(raw, path, _keyword_message(kind, error.validator_value, value, schema))


def _explain_alternatives(error: jsonschema.ValidationError, raw: Any) -> Iterator[Problem]:
  """A value matching none (or, for oneOf, several) of the alternatives.

  When all alternatives but one fail on the value's type itself (`null` or an
  object), the problems inside that one are the real ones; otherwise the
  schema's description of the alternatives says what was expected.
  """
  branches = {}
  for sub in error.context:
    branches.setdefault(sub.relative_schema_path[0], []).append(sub)
  fitting = [errs for errs in branches.values()
             if not any(not e.relative_path and e.validator in ("type", "const", "enum")
                        for e in errs)]
  path, value = tuple(error.absolute_path), error.instance
  if len(fitting) == 1 and len(branches) == len(error.validator_value):
    for sub in fitting[0]:
      yield from _explain(sub, raw)
  elif "description" in error.schema:
    yield _problem(raw, path, f"expected {error.schema['description']}{_got(value)}")
  else:
    types = [e.validator_value for errs in branches.values() for e in errs
             if e.validator == "type" and not e.relative_path]
    words = [_type_words(t) for t in types] or ["one of the allowed forms"]
    yield _problem(raw, path, f"must be {' or '.join(words)}{_got(value)}")


def _keyword_message(kind: str, expected: Any, value: Any, schema: dict) -> str:
  if kind == "type":
    return f"must be {_type_words(expected)}{_got(value)}"
  if kind == "enum":
    return f"must be one of {list(expected)}{_got(value)}"
  if kind == "const":
    return f"must be {expected!r}{_got(value)}"
  if kind in _BOUNDS:
    word = _type_words(schema.get("type")) if isinstance(schema.get("type"), str) else "a number"
    return f"must be {word} {_BOUNDS[kind]} {expected:g}{_got(value)}"
  if kind == "minLength":
    return f"must be a non-empty string{_got(value)}"
  if kind in ("minItems", "minProperties") and expected == 1:
    return f"must not be empty{_got(value)}"
  if kind == "minItems":
    return f"must have at least {expected} items{_got(value)}"
  if kind == "maxItems":
    return f"must have at most {expected} items{_got(value)}"
  if kind == "uniqueItems":
    return f"must not repeat an item{_got(value)}"
  if kind == "pattern" and "description" in schema:
    return f"expected {schema['description']}{_got(value)}"
  if kind == "pattern":
    return f"must match {expected}{_got(value)}"
  return f"schema keyword {kind} failed{_got(value)}"


def _type_words(types: Union[str, Iterable[str]]) -> str:
  types = [types] if isinstance(types, str) else list(types)
  return " or ".join(_TYPE_WORDS.get(t, t) for t in types)


def _got(value: Any) -> str:
  text = repr(value)
  return f", got {text}" if len(text) <= 80 else f", got {text[:77]}..."


def _problem(raw: Any, path: Path, message: str) -> Problem:
  return Problem(path, f"{render_path(raw, path) or '(top level)'}: {message}")


def render_path(raw: Any, path: Path) -> str:
  """('entities', 'user', 'features', 3, 'fill') -> 'entities.user.features[3] (age).fill':
  list items are labelled with their name (features) or type (baseline terms), the way a
  reader finds them in the file."""
  text, node = "", raw
  for step in path:
    if isinstance(step, int):
      text += f"[{step}]"
      node = node[step] if isinstance(node, list) and step < len(node) else None
      label = node.get("name", node.get("type")) if isinstance(node, dict) else None
      if isinstance(label, str):
        text += f" ({label})"
    else:
      text += f".{step}" if text else str(step)
      node = node.get(step) if isinstance(node, dict) else None
  return text
