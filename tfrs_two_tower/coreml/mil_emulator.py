"""Evaluates a saved `.mlpackage` as a MIL program in numpy, op by op.

There is no Core ML runtime on Linux. This module loads the **saved** package
back into MIL (`coremltools.converters.mil.frontend.milproto.load`, the same
reader coremltools uses for the file on disk) and runs every operation with
coremltools' own constant-folding code: `op.value_inference()` for ordinary
ops and `op.materialized_val_inference()` for the `constexpr_*` ops that hold
compressed (int8 / palettized) weights. Every intermediate value is stored in
the dtype the MIL program declares for it (fp16 where the program computes in
fp16), so precision loss is reproduced as written in the program.

This is an EMULATION OF THE MIL PROGRAM, NOT APPLE'S RUNTIME: Core ML may fuse
ops, pick other kernels or accumulate fp16 matmuls differently on CPU, GPU or
Neural Engine. It checks that the conversion and the compression preserved the
model's math; on-device numbers can differ within fp16 rounding.

Why it is hand-written: coremltools' `MLModel.predict` needs the Core ML
framework (macOS only) and no other library runs an `.mlpackage`; this module
only walks the program and calls coremltools' own per-op value inference, so the
math stays coremltools'.
"""

import os
from typing import Dict, Mapping

import numpy as np

STATEMENT = ("emulation of the saved MIL program in numpy (coremltools value inference, op by "
             "op), not Apple's Core ML runtime")


class EmulationError(RuntimeError):
  """An op of the program that this emulation cannot evaluate."""


def _weights_dir(package: str) -> str:
  return os.path.join(package, "Data", "com.apple.CoreML", "weights")


class MilProgramEmulator:
  """A saved `.mlpackage` (ML Program) as a numpy function.

  Usage: `MilProgramEmulator(path).predict({"query_id": int32 [B], ...})`
  returns `{output name: np.ndarray}` with the program's output dtypes.
  """

  def __init__(self, package: str):
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto import load as milproto_load
    if not os.path.isdir(package):
      raise FileNotFoundError(f"{package}: no such .mlpackage")
    self.package = package
    spec = ct.utils.load_spec(package)
    if spec.WhichOneof("Type") != "mlProgram":
      raise EmulationError(f"{package}: not an ML Program (got {spec.WhichOneof('Type')})")
    program = milproto_load.load(spec, spec.specificationVersion, _weights_dir(package))
    self.function = program.functions["main"]
    self.input_names = list(self.function.inputs)
    self.output_names = [o.name for o in spec.description.output]
    self._normalise_bool_constants()

  def _normalise_bool_constants(self) -> None:
    # The proto loader yields numpy bools for scalar flags (keep_dims, transpose_x);
    # numpy >= 2.4 rejects np.bool_ where reductions expect a Python bool.
    for op in self.function.operations:
      if op.op_type == "const" and isinstance(op.outputs[0].val, np.bool_):
        op.outputs[0]._sym_val.val = bool(op.outputs[0].val)

  @property
  def op_types(self) -> Dict[str, int]:
    """How many ops of each type the program has (for reports)."""
    counts: Dict[str, int] = {}
    for op in self.function.operations:
      counts[op.op_type] = counts.get(op.op_type, 0) + 1
    return dict(sorted(counts.items()))

  def predict(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Runs the program on a batch; `feeds` maps every input name to an array."""
    missing = [n for n in self.input_names if n not in feeds]
    if missing:
      raise ValueError(f"{self.package}: missing inputs {missing} (expects {self.input_names})")
    saved = {}
    try:
      for name, var in self.function.inputs.items():
        _bind(var, feeds[name], saved)
      for op in self.function.operations:
        if op.op_type == "const":
          continue
        values = _evaluate(op)
        if not isinstance(values, (tuple, list)):
          values = (values,)
        for var, value in zip(op.outputs, values):
          _bind(var, value, saved)
      by_var = {v.name: v.val for v in self.function.outputs}
      return {name: by_var[name] for name in self.output_names}
    finally:
      # Restores the symbolic types/values so the program can run again on another batch.
      for var, (sym_type, sym_val) in saved.items():
        var._sym_type, var._sym_val = sym_type, sym_val


def _evaluate(op):
  try:
    if op.op_type.startswith("constexpr_"):
      values = op.materialized_val_inference()
    else:
      values = op.value_inference()
  except NotImplementedError:
    raise EmulationError(f"op {op.name!r} of type {op.op_type!r} has no value inference in "
                         "coremltools: this emulation cannot evaluate it") from None
  if values is None:
    raise EmulationError(f"op {op.name!r} ({op.op_type}) produced no value")
  return values


def _bind(var, value, saved) -> None:
  """Gives `var` a concrete value (in its declared dtype) and a matching concrete type."""
  from coremltools.converters.mil.mil import types
  saved.setdefault(var, (var._sym_type, var._sym_val))
  dtype = var.dtype
  value = np.asarray(value, dtype=types.nptype_from_builtin(dtype))
  var._sym_type = types.tensor(dtype, value.shape) if value.ndim else dtype
  holder = var._sym_type()
  holder.val = value
  var._sym_val = holder
