"""A tower core SavedModel -> a Core ML ML Program (`.mlpackage`).

The core (see `model/towers.py`) takes int32 indices and float32 numerics and
returns {"embedding": [B, d]} L2-normalised. Conversion goes through
coremltools' TensorFlow path:

  * ML Program, `minimum_deployment_target` (iOS16 by default);
  * every input keeps the core's name and dtype; its batch axis is a `RangeDim`
    (1..max_batch), the other axes are fixed;
  * TF2 names the output `Identity`; it is renamed `embedding` and kept float32;
  * precision "float16" computes in fp16 except the L2-normalisation tail (every
    op after the last matmul), which stays fp32: sum(h^2) above 65504 overflows
    in fp16 and the embedding would come out as zeros;
  * compression ("int8", "palettizeN") rewrites weights of at least
    `weight_threshold` elements with `coremltools.optimize.coreml`.
"""

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

PRECISIONS = ("float32", "float16")
COMPRESSIONS = ("none", "int8", "palettize4", "palettize6", "palettize8")
DEPLOYMENT_TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18")
OUTPUT_NAME = "embedding"
# The projection that ends a tower; the ops after the last one form the fp32 tail.
_PROJECTION_OPS = ("matmul", "linear", "einsum", "conv")


class ConversionError(ValueError):
  """A core that cannot be converted as asked; the message names the model and option."""


@dataclasses.dataclass(frozen=True)
class CoreInput:
  """One input of a core: name, dtype ("int32"|"float32") and shape without the batch axis."""
  name: str
  dtype: str
  shape: tuple

  def to_json(self) -> Dict[str, Any]:
    return {"name": self.name, "dtype": self.dtype, "shape": [-1] + list(self.shape)}


def core_inputs(saved_model_dir: str) -> List[CoreInput]:
  """The inputs of a core SavedModel's `serving_default` signature, in signature order."""
  import tensorflow as tf
  loaded = tf.saved_model.load(saved_model_dir)
  if "serving_default" not in loaded.signatures:
    raise ConversionError(f"{saved_model_dir}: no `serving_default` signature")
  signature = loaded.signatures["serving_default"]
  _, specs = signature.structured_input_signature
  inputs = []
  for name, spec in specs.items():
    if spec.dtype not in (tf.int32, tf.float32):
      raise ConversionError(f"{saved_model_dir}: input {name!r} has dtype {spec.dtype.name}; "
                            "a Core ML core takes only int32 indices and float32 numerics")
    if spec.shape.rank is None or spec.shape.rank < 1 or None in spec.shape[1:]:
      raise ConversionError(f"{saved_model_dir}: input {name!r} has shape {spec.shape}; "
                            "expected [batch, fixed...]")
    inputs.append(CoreInput(name, spec.dtype.name, tuple(int(d) for d in spec.shape[1:])))
  outputs = signature.structured_outputs
  if list(outputs) != [OUTPUT_NAME]:
    raise ConversionError(f"{saved_model_dir}: outputs {sorted(outputs)}; expected "
                          f"[{OUTPUT_NAME!r}]")
  return inputs


def fp32_tail(block) -> set:
  """Ops reachable from the last projection (matmul/linear) of a MIL block."""
  ops = list(block.operations)
  last = max((i for i, op in enumerate(ops) if op.op_type in _PROJECTION_OPS), default=None)
  if last is None:
    return set()
  tail, frontier = set(), [ops[last]]
  while frontier:
    for var in frontier.pop().outputs:
      for child in var.child_ops:
        if child not in tail:
          tail.add(child)
          frontier.append(child)
  return tail


class _Fp16ExceptTail:
  """`op_selector` for FP16ComputePrecision: True (fp16) for every op outside the tail."""

  def __init__(self):
    self._tails: Dict[int, set] = {}

  def __call__(self, op) -> bool:
    block = op.enclosing_block
    if id(block) not in self._tails:
      self._tails[id(block)] = fp32_tail(block)
    return op not in self._tails[id(block)]


def _register_ones_like() -> None:
  """TF `OnesLike` for coremltools' TF frontend (9.0 has ZerosLike but not OnesLike).

  Keras' `tf.ones_like` (e.g. in a mean pooling's `maximum(count, ones_like(count))`)
  lowers to it. Same lowering as coremltools' own ZerosLike: fill(shape(x), 1).
  Registered once; a coremltools that has its own converter keeps it.
  """
  from coremltools.converters.mil import Builder as mb
  from coremltools.converters.mil.frontend.tensorflow import tf_op_registry
  from coremltools.converters.mil.mil import types
  if "OnesLike" in tf_op_registry._TF_OPS_REGISTRY:
    return

  def OnesLike(context, node):  # noqa: N802 (the TF op name is the registry key)
    x = context[node.inputs[0]]
    if x.rank == 0:
      x = mb.const(val=types.nptype_from_builtin(x.sym_type)(1), name=node.name)
    else:
      np_type = types.nptype_from_builtin(x.sym_type.get_primitive())
      x = mb.fill(shape=mb.shape(x=x), value=np_type(1), name=node.name)
    context.add(node.name, x)
  tf_op_registry.register_tf_op(OnesLike)


def convert_core(saved_model_dir: str, inputs: Sequence[CoreInput], precision: str = "float32",
                 minimum_deployment_target: str = "iOS16", max_batch: int = 4096):
  """Converts a core SavedModel; returns the `ct.models.MLModel` (output `embedding`)."""
  import coremltools as ct
  if precision not in PRECISIONS:
    raise ConversionError(f"precision {precision!r}: expected one of {PRECISIONS}")
  if minimum_deployment_target not in DEPLOYMENT_TARGETS:
    raise ConversionError(f"minimum_deployment_target {minimum_deployment_target!r}: expected "
                          f"one of {DEPLOYMENT_TARGETS} (ML Program needs iOS15+)")
  batch = ct.RangeDim(lower_bound=1, upper_bound=max_batch, default=1, symbol="batch")
  tensor_types = [ct.TensorType(name=i.name, shape=(batch,) + i.shape,
                                dtype=np.int32 if i.dtype == "int32" else np.float32)
                  for i in inputs]
  _register_ones_like()
  compute_precision = (ct.precision.FLOAT32 if precision == "float32"
                       else ct.transform.FP16ComputePrecision(op_selector=_Fp16ExceptTail()))
  try:
    model = ct.convert(saved_model_dir, source="tensorflow", inputs=tensor_types,
                       outputs=[ct.TensorType(name="Identity", dtype=np.float32)],
                       convert_to="mlprogram", compute_precision=compute_precision,
                       minimum_deployment_target=getattr(ct.target, minimum_deployment_target))
  except NotImplementedError as e:
    # coremltools lacks a TF op: the core must be written with convertible ops.
    first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    raise ConversionError(f"{saved_model_dir}: coremltools {ct.__version__} cannot convert "
                          f"this core: {first}") from None
  return _rename_output(model, OUTPUT_NAME)


def _rename_output(model, name: str):
  import coremltools as ct
  spec = model.get_spec()
  current = spec.description.output[0].name
  if current != name:
    ct.utils.rename_feature(spec, current, name)
  return ct.models.MLModel(spec, weights_dir=model.weights_dir)


def compress(model, compression: str, weight_threshold: int = 2048):
  """Applies a `COMPRESSIONS` option with `coremltools.optimize.coreml` (returns a new model)."""
  import coremltools.optimize.coreml as cto
  if compression not in COMPRESSIONS:
    raise ConversionError(f"compression {compression!r}: expected one of {COMPRESSIONS}")
  if compression == "none":
    return model
  if compression == "int8":
    config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                         weight_threshold=weight_threshold)
    return cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=config))
  nbits = int(compression[len("palettize"):])
  config = cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, weight_threshold=weight_threshold)
  return cto.palettize_weights(model, cto.OptimizationConfig(global_config=config))


def set_metadata(model, *, short_description: str, author: str, license: str, version: str,
                 input_descriptions: Mapping[str, str], output_description: str,
                 user_defined: Mapping[str, Any]) -> None:
  """Writes the model card into the spec (shown in Xcode's model viewer)."""
  model.short_description = short_description
  model.author = author
  model.license = license
  model.version = version
  for name, text in input_descriptions.items():
    model.input_description[name] = text
  model.output_description[OUTPUT_NAME] = output_description
  for key, value in user_defined.items():
    model.user_defined_metadata[key] = str(value)


def package_size(path: str) -> int:
  """Bytes of a `.mlpackage` directory (what ships in the app bundle, before compilation)."""
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, names in os.walk(path) for f in names)


def describe(model) -> Dict[str, Any]:
  """Inputs (name, dtype, shape range) and outputs as recorded in the saved spec."""
  from coremltools.proto import FeatureTypes_pb2
  names = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType
  spec = model.get_spec() if hasattr(model, "get_spec") else model
  out = {"inputs": [], "outputs": [o.name for o in spec.description.output]}
  for feature in spec.description.input:
    array = feature.type.multiArrayType
    out["inputs"].append({
        "name": feature.name,
        "dtype": names.Name(array.dataType).lower(),
        "shape_range": [[r.lowerBound, r.upperBound] for r in array.shapeRange.sizeRanges]})
  return out
