"""convert_to_coreml.py: run dir -> the Core ML pair, features.json and parity.json.

  <output>/
    QueryTower.mlpackage, CandidateTower.mlpackage   ML Program, input names as in
                         features.json, output `embedding` [B, d] float32
    features.json        what the app must compute before calling a tower
    parity.json          TF vs Core ML figures (an emulation of the saved MIL program in
                         numpy, not Apple's runtime), the bar applied and the sizes
    manifest.json        kind "tfrs_two_tower.coreml", run id, config hash, options, files

The output appears atomically and only when the parity bar is cleared: below the
bar the stage raises `ParityError` and leaves nothing at the output location.
"""

import os
import time
from typing import Any, Callable, Dict, List, Optional


import tfrs_two_tower
from tfrs_two_tower import files
from tfrs_two_tower.coreml import convert
from tfrs_two_tower.coreml import features_json
from tfrs_two_tower.coreml import parity
from tfrs_two_tower.coreml.parity import ParityError
from tfrs_two_tower.data import dataset_format as fmt
from tfrs_two_tower.data import history as history_lib
from tfrs_two_tower.data import reader
from tfrs_two_tower.evaluation import retrieval
from tfrs_two_tower.model import run_dir as run_lib

KIND = "tfrs_two_tower.coreml"
FORMAT_VERSION = 1
FEATURES_JSON = "features.json"
PARITY_JSON = "parity.json"
MANIFEST = "manifest.json"
SIDES = ("query", "candidate")
# What conversion reads from a run directory.
REQUIRED_PIECES = (run_lib.MANIFEST, run_lib.CONFIG, run_lib.PREPROCESSING, run_lib.VOCAB_DIR,
                   run_lib.FLAGS) + tuple(
                       os.path.join(d(s), "saved_model.pb")
                       for s in SIDES for d in (run_lib.model_dir, run_lib.core_dir))
TOWER_DESCRIPTIONS = {
    "query": "Query tower: the swiper's profile -> embedding q (L2-normalised; a trailing 1 "
             "with a candidate bias). Score a candidate by q . c (candidate tower).",
    "candidate": "Candidate tower: a profile shown in the feed -> embedding c (L2-normalised; "
                 "a trailing bias with a candidate bias). Score by q . c (query tower).",
}


class ConvertError(ValueError):
  """Bad input for conversion (run dir, dataset, flags); the message names it."""


def check_run_dir(run_dir: str) -> None:
  """Refuses a run directory that lacks any piece conversion needs, naming all of them."""
  if not os.path.isdir(run_dir):
    raise ConvertError(f"--run_dir: {run_dir}: no such run directory")
  missing = [p for p in REQUIRED_PIECES if not os.path.exists(os.path.join(run_dir, p))]
  if missing:
    raise ConvertError(f"--run_dir: {run_dir} is incomplete, missing: {', '.join(missing)} "
                       "(train_model.py writes them; convert needs both towers' _model and "
                       "_core SavedModels, the preprocessing and the vocabularies)")


def _check_inputs(core_dir: str, expected: List[Dict[str, Any]]) -> None:
  """The core's signature must be exactly the inputs features.json documents."""
  got = {i.name: i.to_json() for i in convert.core_inputs(core_dir)}
  want = {i["name"]: {"name": i["name"], "dtype": i["dtype"], "shape": i["shape"]}
          for i in expected}
  if got != want:
    diff = sorted(n for n in set(got) | set(want) if got.get(n) != want.get(n))
    raise ConvertError(f"{core_dir}: the core's inputs differ from the preprocessing rules "
                       f"for {diff}: core {[got.get(n) for n in diff]}, rules "
                       f"{[want.get(n) for n in diff]}")


def _input_description(entry: Dict[str, Any]) -> str:
  role = {"index": "vocabulary index (features.json rules: 0 = missing, 1.. = OOV buckets, "
                   "then the vocabulary)",
          "zscore": "normalised number (features.json: (x_t - mean) / std)",
          "missing": "1.0 when the value is missing, else 0.0",
          "bucket": "bucket index (0 = missing, 1 + count(boundary <= x))",
          "unit_sphere_xyz": "location on the unit sphere (cos la cos lo, cos la sin lo, sin la)"}
  return (f"{entry['feature']}: {role[entry['role']]}; {entry['dtype']} "
          f"{['batch' if d < 0 else d for d in entry['shape']]}")


def _sizes(path: str) -> Dict[str, int]:
  return {name: (convert.package_size(os.path.join(path, name))
                 if name.endswith(".mlpackage") else os.path.getsize(os.path.join(path, name)))
          for name in sorted(os.listdir(path)) if name != MANIFEST}


def format_size_table(sizes: Dict[str, int]) -> str:
  rows = [f"{'file':<28}{'bytes':>12}{'MB':>9}"]
  for name, size in sizes.items():
    rows.append(f"{name:<28}{size:>12,}{size / 1e6:>9.2f}")
  total = sum(sizes.values())
  rows.append(f"{'total':<28}{total:>12,}{total / 1e6:>9.2f}")
  return "\n".join(rows)


def run(run_dir: str, dataset_dir: str, output_dir: str, *,
        minimum_deployment_target: str = "iOS16", precision: str = "float32",
        compress: str = "none", thresholds: Optional[parity.Thresholds] = None,
        num_examples: int = 3000, num_queries: int = 500, max_batch: int = 4096,
        weight_threshold: int = 2048, author: str = "tfrs_two_tower",
        license: str = "Proprietary: trained on the app's own swipe data",
        overwrite: bool = False, log: Callable[..., None] = print) -> Dict[str, Any]:
  """Converts both towers, verifies them, and writes the output directory. Returns parity."""
  thresholds = thresholds or parity.Thresholds()
  if precision not in convert.PRECISIONS:
    raise ConvertError(f"--precision must be one of {convert.PRECISIONS}, got {precision!r}")
  if compress not in convert.COMPRESSIONS:
    raise ConvertError(f"--compress must be one of {convert.COMPRESSIONS}, got {compress!r}")
  if num_examples < 1 or num_queries < 1:
    raise ConvertError("--num_examples and --num_queries must be >= 1")
  output_dir = os.path.abspath(output_dir)
  if os.path.exists(output_dir) and not overwrite:
    raise ConvertError(f"--output_dir: {output_dir} already exists (pass --overwrite)")
  check_run_dir(run_dir)
  try:
    dataset = reader.open_dataset(dataset_dir)
  except reader.DatasetFormatError as e:
    raise ConvertError(f"--dataset_dir: {e}") from None
  try:
    run = run_lib.open_run(run_dir, dataset_config_hash=dataset.manifest["config_hash"])
    reader.check_same_candidates(dataset, run.candidate_embeddings()[0], f"--run_dir {run_dir}")
  except (run_lib.RunFormatError, reader.DatasetFormatError) as e:
    raise ConvertError(f"--run_dir: {e}") from None
  manifest = run.manifest
  specs = {side: run.feature_specs(side) for side in SIDES}
  # The app turns dot products into P(like) for reciprocal ranking: the same Platt
  # calibration (train swipes) that evaluation and pgvector publishing use.
  queries = reader.read_entities(dataset, "query")
  queries.update(history_lib.split_histories(dataset, queries["query_id"]))
  calibration = retrieval.calibrate_on_train_swipes(
      dataset, queries["query_id"], run.embed("query", queries), *run.candidate_embeddings())
  payload = features_json.build(
      specs, run_id=manifest["run_id"], config_hash=manifest["config_hash"],
      embedding_dim=run.embedding_dim, temperature=manifest["temperature"],
      calibration={"scale": calibration.slope, "bias": calibration.intercept},
      eligibility=features_json.eligibility_rules(dataset.config))
  for side in SIDES:
    _check_inputs(run.file(run_lib.core_dir(side)), payload["towers"][side]["inputs"])

  started = time.time()
  with files.atomic_directory(output_dir, overwrite=overwrite) as out:
    for side in SIDES:
      tower = payload["towers"][side]
      core_dir = run.file(run_lib.core_dir(side))
      inputs = [convert.CoreInput(i["name"], i["dtype"], tuple(i["shape"][1:]))
                for i in tower["inputs"]]
      model = convert.convert_core(core_dir, inputs, precision=precision,
                                   minimum_deployment_target=minimum_deployment_target,
                                   max_batch=max_batch)
      model = convert.compress(model, compress, weight_threshold=weight_threshold)
      convert.set_metadata(
          model, short_description=TOWER_DESCRIPTIONS[side], author=author, license=license,
          version=manifest["run_id"],
          input_descriptions={i["name"]: _input_description(i) for i in tower["inputs"]},
          output_description=f"embedding (score q . c), float32 [batch, {run.embedding_dim}]",
          user_defined={"run_id": manifest["run_id"], "config_hash": manifest["config_hash"],
                        "embedding_dim": run.embedding_dim,
                        "temperature": manifest["temperature"], "tower": side,
                        "precision": precision, "compression": compress,
                        "features_json": FEATURES_JSON,
                        "tfrs_two_tower_version": tfrs_two_tower.__version__})
      model.save(os.path.join(out, tower["model"]))
      log("convert: %s tower -> %s (%s, %s)" % (side, tower["model"], precision, compress))
    files.write_json(os.path.join(out, FEATURES_JSON), payload)

    report = parity.verify(run, dataset, out, payload, precision, compress, thresholds,
                           num_examples=num_examples, num_queries=num_queries,
                           batch_size=max_batch)
    report["sizes_bytes"] = _sizes(out)
    report["seconds"] = round(time.time() - started, 1)
    log("convert: %s" % report["statement"])
    for side in SIDES:
      log("convert: %s tower: max abs error %.3g, min cosine %.6f over %d rows" % (
          side, report["towers"][side]["max_abs_error"], report["towers"][side]["min_cosine"],
          report["towers"][side]["rows"]))
    log("convert: top-%d overlap %.4f (min %.2f) over %d queries x %d candidates" % (
        report["top_k"]["k"], report["top_k"]["mean_overlap"], report["top_k"]["min_overlap"],
        report["top_k"]["queries"], report["top_k"]["corpus"]))
    log("convert: sizes\n" + format_size_table(report["sizes_bytes"]))
    if not report["gate"]["passed"]:
      raise ParityError(f"parity below the bar ({precision}, compress={compress}): "
                        f"{'; '.join(report['gate']['failures'])}; nothing written to "
                        f"{output_dir} (figures are an emulation of the MIL program, not "
                        "Apple's runtime)")
    files.write_json(os.path.join(out, PARITY_JSON), report)
    files.write_json(os.path.join(out, MANIFEST), {
        "kind": KIND, "format_version": FORMAT_VERSION, "run_id": manifest["run_id"],
        "config_hash": manifest["config_hash"],
        "run": {"path": os.path.abspath(run_dir),
                "manifest_sha256": files.sha256_file(run.file(run_lib.MANIFEST))},
        "dataset": {"path": dataset.path, "manifest_sha256": files.sha256_file(
            dataset.file(fmt.MANIFEST))},
        "options": {"minimum_deployment_target": minimum_deployment_target,
                    "precision": precision, "compress": compress, "max_batch": max_batch,
                    "weight_threshold": weight_threshold},
        "created_by": _versions(), "files": files.file_checksums(out)})
  log("convert: Core ML pair written to %s" % output_dir)
  return report


def _versions() -> Dict[str, str]:
  import coremltools
  import tensorflow as tf
  return {"package": "tfrs_two_tower", "version": tfrs_two_tower.__version__,
          "coremltools": coremltools.__version__, "tensorflow": tf.__version__}
