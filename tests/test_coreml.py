"""convert_to_coreml.py on a tiny trained run: files, metadata, parity, options, refusals.

Core ML cannot run on Linux; parity is the saved .mlpackage evaluated as a MIL
program in numpy (an emulation of the MIL program, not Apple's runtime).
"""
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from tfrs_two_tower import files
from tfrs_two_tower.coreml import convert
from tfrs_two_tower.coreml import features_json
from tfrs_two_tower.coreml import mil_emulator
from tfrs_two_tower.coreml import parity
from tfrs_two_tower.data import reader
from tfrs_two_tower.model import run_dir as run_lib
from tfrs_two_tower.stages import convert_stage

# Every test here runs subprocesses, conversions or a pipeline: minutes, not seconds.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Parity on fewer examples keeps the per-option conversions fast.
FAST_PARITY = dict(num_examples=500, num_queries=100)


def _quiet(*args):
  del args


@pytest.fixture(scope="session")
def tiny_run(tiny_run_dir):
  return tiny_run_dir  # conftest's briefly trained run, shared with the other stages' tests


@pytest.fixture(scope="session")
def float32_pair(tmp_path_factory, tiny_run, tiny_dataset_dir):
  out = str(tmp_path_factory.mktemp("coreml") / "pair")
  report = convert_stage.run(tiny_run, tiny_dataset_dir, out, num_examples=1000,
                             num_queries=200, log=_quiet)
  return out, report


def test_pair_files_inputs_and_metadata(float32_pair, tiny_run):
  import coremltools as ct
  out, _ = float32_pair
  assert sorted(os.listdir(out)) == ["CandidateTower.mlpackage", "QueryTower.mlpackage",
                                      "features.json", "manifest.json", "parity.json"]
  run = run_lib.open_run(tiny_run)
  features = files.read_json(os.path.join(out, "features.json"))
  # The Platt calibration for reciprocal ranking on the phone: higher scores, more likes.
  assert features["calibration"]["scale"] > 0 and set(features["calibration"]) == {"scale", "bias"}
  manifest = files.read_json(os.path.join(out, "manifest.json"))
  assert manifest["kind"] == convert_stage.KIND and manifest["run_id"] == run.manifest["run_id"]
  assert set(manifest["files"]) >= {"features.json", "parity.json"}
  for side, name in (("query", "QueryTower.mlpackage"), ("candidate", "CandidateTower.mlpackage")):
    spec = ct.utils.load_spec(os.path.join(out, name))
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.specificationVersion == 7  # iOS16
    meta = spec.description.metadata
    assert meta.author == "tfrs_two_tower" and meta.license and meta.shortDescription
    assert meta.versionString == run.manifest["run_id"]
    user = dict(meta.userDefined)
    assert user["run_id"] == run.manifest["run_id"]
    assert user["config_hash"] == run.manifest["config_hash"]
    assert int(user["embedding_dim"]) == 16
    assert float(user["temperature"]) == pytest.approx(run.manifest["temperature"])
    described = convert.describe(spec)
    assert described["outputs"] == ["embedding"]
    assert spec.description.output[0].shortDescription.startswith("embedding (score q . c)")
    want = {i["name"]: i for i in features["towers"][side]["inputs"]}
    got = {i["name"]: i for i in described["inputs"]}
    assert set(got) == set(want) and len(got) > 5
    for name, entry in got.items():
      assert entry["dtype"] == want[name]["dtype"]
      assert entry["shape_range"][0] == [1, 4096]  # RangeDim batch
      assert [r[0] for r in entry["shape_range"][1:]] == want[name]["shape"][1:]
    for feature in spec.description.input:
      assert feature.shortDescription, feature.name
  assert features["embedding_dim"] == 16 and features["run_id"] == run.manifest["run_id"]


def test_float32_parity_figures(float32_pair):
  out, report = float32_pair
  saved = files.read_json(os.path.join(out, "parity.json"))
  assert saved["gate"] == report["gate"]
  assert saved["gate"]["passed"] and saved["gate"]["metric"] == "max_abs_error"
  assert "not Apple's Core ML runtime" in saved["statement"]
  for side in ("query", "candidate"):
    assert saved["towers"][side]["max_abs_error"] <= 1e-4
    assert saved["towers"][side]["min_cosine"] > 0.99999
    assert saved["conversion_only"][side]["max_abs_error"] <= 1e-5
  assert saved["top_k"]["mean_overlap"] >= 0.99
  assert saved["examples"]["eval_rows"] == 1000 and saved["examples"]["candidate_corpus"] >= 500
  assert saved["sizes_bytes"]["QueryTower.mlpackage"] > 0


def _perturb_projection(package: str, shift: float) -> None:
  """Adds `shift` to every weight of the last linear layer, in the saved weight.bin."""
  import coremltools as ct
  spec = ct.utils.load_spec(package)
  function = spec.mlProgram.functions["main"]
  ops = function.block_specializations[function.opset].operations
  last = [op for op in ops if op.type in ("linear", "matmul")][-1]
  weight = last.inputs["weight" if last.type == "linear" else "y"].arguments[0].name
  const = next(op for op in ops if op.type == "const" and op.outputs[0].name == weight)
  offset = const.attributes["val"].blobFileValue.offset
  path = os.path.join(package, "Data", "com.apple.CoreML", "weights", "weight.bin")
  with open(path, "r+b") as f:
    f.seek(offset)
    sentinel, _, size, data_offset = struct.unpack("<IIQQ", f.read(24))
    assert sentinel == 0xDEADBEEF
    f.seek(data_offset)
    values = np.frombuffer(f.read(size), np.float32) + np.float32(shift)
    f.seek(data_offset)
    f.write(values.astype(np.float32).tobytes())


def test_negative_control_perturbed_weight_fails(float32_pair, tiny_run, tiny_dataset_dir,
                                                 tmp_path):
  out, _ = float32_pair
  copy = str(tmp_path / "pair")
  shutil.copytree(out, copy)
  _perturb_projection(os.path.join(copy, "QueryTower.mlpackage"), shift=0.01)
  run = run_lib.open_run(tiny_run)
  dataset = reader.open_dataset(tiny_dataset_dir)
  payload = files.read_json(os.path.join(copy, "features.json"))
  report = parity.verify(run, dataset, copy, payload, "float32", "none",
                                parity.Thresholds(), **FAST_PARITY, batch_size=4096)
  assert not report["gate"]["passed"]
  assert report["towers"]["query"]["max_abs_error"] > 1e-3
  assert report["towers"]["candidate"]["max_abs_error"] <= 1e-4  # untouched tower still passes
  assert any("query tower" in f for f in report["gate"]["failures"])


@pytest.mark.parametrize("precision,compress,metric,op_type", [
    ("float16", "none", "min_cosine", "cast"),
    ("float16", "int8", "top10_overlap", "constexpr_affine_dequantize"),
    ("float16", "palettize6", "top10_overlap", "constexpr_lut_to_dense"),
    ("float32", "palettize8", "top10_overlap", "constexpr_lut_to_dense"),
])
def test_precision_and_compression_options(precision, compress, metric, op_type, float32_pair,
                                           tiny_run, tiny_dataset_dir, tmp_path):
  out = str(tmp_path / "pair")
  report = convert_stage.run(tiny_run, tiny_dataset_dir, out, precision=precision,
                             compress=compress, **FAST_PARITY, log=_quiet)
  assert report["gate"]["passed"] and report["gate"]["metric"] == metric
  assert report["precision"] == precision and report["compression"] == compress
  assert op_type in report["op_types"]["query"]
  for side in ("query", "candidate"):
    assert report["towers"][side]["min_cosine"] > 0.99
  baseline = float32_pair[1]["sizes_bytes"]
  for name in ("QueryTower.mlpackage", "CandidateTower.mlpackage"):
    assert report["sizes_bytes"][name] < 0.8 * baseline[name]
  if precision == "float16":
    # The L2-normalisation tail stays float32 (the fp16 overflow trap).
    function = mil_emulator.MilProgramEmulator(os.path.join(out, "QueryTower.mlpackage")).function
    rsqrt = [op for op in function.operations if op.op_type == "rsqrt"]
    assert rsqrt and all(str(op.outputs[0].dtype.__name__) == "fp32" for op in rsqrt)


def test_below_the_bar_exits_nonzero_and_leaves_nothing(tiny_run, tiny_dataset_dir, tmp_path):
  out = str(tmp_path / "pair")
  cmd = [sys.executable, os.path.join(REPO, "scripts", "convert_to_coreml.py"),
         f"--run_dir={tiny_run}", f"--dataset_dir={tiny_dataset_dir}", f"--output_dir={out}",
         "--compress=palettize4", "--compressed_min_top10_overlap=0.999", "--num_examples=500",
         "--num_queries=100"]
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert result.returncode == 3, result.stderr[-2000:]
  assert "parity below the bar" in result.stderr and "not Apple's runtime" in result.stderr
  assert os.listdir(tmp_path) == []  # no output, no temporary sibling


def test_refuses_incomplete_run_dir(tiny_run, tiny_dataset_dir, tmp_path):
  broken = str(tmp_path / "run")
  shutil.copytree(tiny_run, broken, ignore=shutil.ignore_patterns("checkpoints", "logs"))
  shutil.rmtree(os.path.join(broken, "candidate_core"))
  os.remove(os.path.join(broken, "preprocessing.json"))
  with pytest.raises(convert_stage.ConvertError, match="candidate_core.*preprocessing.json|"
                     "preprocessing.json.*candidate_core"):
    convert_stage.run(broken, tiny_dataset_dir, str(tmp_path / "out"), log=_quiet)
  assert not os.path.exists(tmp_path / "out")
  with pytest.raises(convert_stage.ConvertError, match="no such run directory"):
    convert_stage.run(str(tmp_path / "nope"), tiny_dataset_dir, str(tmp_path / "out"))


# Strings a client can send: unseen ids, empty, unicode, case and whitespace variants.
EDGE_TOKENS = ["", "zz-never-seen", "Zürich", "東京", "🙂 emoji", " hiking", "HIKING",
               "hiking\u0301", "a" * 300, "\x00", "tab\tin", "0", "-1"]


def _edge_batch(dataset: reader.DatasetDir, side: str, n: int = 240):
  """Real rows with string features replaced by known and edge tokens, NaN numerics."""
  rows = reader.read_interactions(dataset, "eval")
  raw = {k: np.array(v[:n], dtype=v.dtype) for k, v in rows.items() if k.startswith(side)}
  rng = np.random.default_rng(0)
  for key, value in raw.items():
    if value.dtype != object:
      if value.ndim == 1:
        value[rng.random(n) < 0.2] = np.nan
      continue
    known = [t for t in np.unique(value) if t][:20]
    pool = np.array(EDGE_TOKENS + known, dtype=object)
    raw[key] = pool[rng.integers(0, len(pool), value.shape)]
  return raw


def test_features_json_reproduces_the_savedmodel_lookup(float32_pair, tiny_run,
                                                        tiny_dataset_dir):
  """Same indices as TF's preprocessing, and the same embeddings as the SavedModel."""
  from tfrs_two_tower.model import preprocessing as prep
  out, _ = float32_pair
  payload = files.read_json(os.path.join(out, "features.json"))
  run = run_lib.open_run(tiny_run)
  dataset = reader.open_dataset(tiny_dataset_dir)
  for side in ("query", "candidate"):
    raw = _edge_batch(dataset, side)
    ours = features_json.preprocess_with_features_json(payload["towers"][side], raw)
    theirs = {k: v.numpy() for k, v in prep.FeaturePreprocessing(run.feature_specs(side))(
        {k: raw[k] for k in run.raw_input_specs(side)}).items()}
    assert set(ours) == set(theirs)
    for name in ours:
      assert ours[name].dtype == theirs[name].dtype, name
      if ours[name].dtype == np.int32:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
      else:  # float32 transcendental functions (log1p, sin, cos) may differ by an ulp
        np.testing.assert_allclose(ours[name], theirs[name], rtol=0, atol=1e-6, err_msg=name)
    # The SavedModel: raw strings through <side>_model == features.json indices through the core.
    core = run.core(side).signatures["serving_default"]
    np.testing.assert_allclose(core(**ours)["embedding"].numpy(), run.embed(side, raw),
                               rtol=0, atol=1e-5)


def test_a_candidate_bias_run_converts_with_parity(tiny_bias_run_dir, tiny_dataset_dir, tmp_path):
  """--candidate_bias: [q, 1] and [c, b_c] (dim d + 1) through the SavedModels and Core ML."""
  run_path = tiny_bias_run_dir
  run = run_lib.open_run(run_path)
  assert run.embedding_dim == 17
  _, candidates = run.candidate_embeddings()
  queries = run.embed("query", reader.read_entities(reader.open_dataset(tiny_dataset_dir),
                                                     "query"))
  assert candidates.shape[1] == queries.shape[1] == 17
  np.testing.assert_allclose(queries[:, -1], 1.0)
  np.testing.assert_allclose(np.linalg.norm(candidates[:, :-1], axis=1), 1.0, atol=1e-5)
  assert np.ptp(candidates[:, -1]) > 0  # a bias per candidate, learned
  out = str(tmp_path / "pair")
  report = convert_stage.run(run_path, tiny_dataset_dir, out, log=_quiet, **FAST_PARITY)
  assert report["gate"]["passed"] and report["top_k"]["mean_overlap"] >= 0.99
  for side in ("query", "candidate"):
    assert report["towers"][side]["max_abs_error"] <= 1e-4
  assert files.read_json(os.path.join(out, "features.json"))["embedding_dim"] == 17


def test_a_like_residual_run_converts_with_parity(tiny_residual_run, tmp_path):
  """--like_residual: [a q, 1, b_u, p_u], [c, b_v, 1, s_v] through the SavedModels, Core ML
  (with the feature maps validation chose: gathers and a pooling in the towers)."""
  run_path, dataset_dir = tiny_residual_run
  run = run_lib.open_run(run_path)
  section = run.manifest["like_residual"]
  assert section["fitted"], section  # the tiny world's appeal and taste beat the towers
  dim = 16 + 2 + section["rank"]
  assert run.embedding_dim == dim
  dataset = reader.open_dataset(dataset_dir)
  entities = reader.read_entities(dataset, "query")
  queries = run.embed("query", entities)
  _, candidates = run.candidate_embeddings()
  assert queries.shape[1] == candidates.shape[1] == dim
  np.testing.assert_allclose(np.linalg.norm(queries[:, :16], axis=1), section["scale"],
                             rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(candidates[:, :16], axis=1), 1.0, atol=1e-5)
  known = np.isin(entities["query_id"], dataset.vocabulary("query_id"))
  assert known.any() and (~known).any()
  np.testing.assert_array_equal(queries[:, 16], 1.0)  # the weight on b_v, unseen users too
  np.testing.assert_array_equal(queries[~known, 17], 0.0)  # unseen users: no b_u
  unseen_factors = queries[~known, 18:]
  # The tiny run chooses profile features (interests, city): so the conversion below covers
  # the maps' gathers and "sqrtn" pooling, and unseen users get p_u = V g_u from them.
  assert section["features"]
  assert np.ptp(unseen_factors, axis=0).max() > 0.01
  assert np.ptp(candidates[:, 16]) > 0 and np.abs(queries[known, 17:]).max() > 0
  out = str(tmp_path / "pair")
  report = convert_stage.run(run_path, dataset_dir, out, log=_quiet, **FAST_PARITY)
  assert report["gate"]["passed"] and report["top_k"]["mean_overlap"] >= 0.99
  for side in ("query", "candidate"):
    assert report["towers"][side]["max_abs_error"] <= 1e-4
  assert files.read_json(os.path.join(out, "features.json"))["embedding_dim"] == dim
