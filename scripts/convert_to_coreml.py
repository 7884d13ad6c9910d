#!/usr/bin/env python3
r"""Converts a run's query and candidate towers into a verified Core ML pair.

Writes QueryTower.mlpackage, CandidateTower.mlpackage, features.json (the
preprocessing the app does before calling a tower), parity.json and a manifest
to --output_dir, atomically, and prints a size table (see docs/ios.md).

Core ML cannot run on Linux: parity is measured by evaluating the SAVED
.mlpackage as a MIL program in numpy (coremltools' value inference, op by op),
an emulation of the MIL program, not Apple's runtime. Below the parity bar the
command exits with code 3 and leaves nothing at --output_dir. Example:

  convert_to_coreml.py --run_dir=out/run --dataset_dir=out/dataset \
      --output_dir=out/coreml --precision=float16 --compress=palettize8
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow

from absl import app
from absl import flags
from absl import logging

from tfrs_two_tower.coreml import convert
from tfrs_two_tower.coreml import parity
from tfrs_two_tower.stages import cli
from tfrs_two_tower.stages import convert_stage

D = parity.Thresholds()
FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", None, "Run directory written by train_model.py.", required=True)
flags.DEFINE_string("dataset_dir", None, "Dataset directory of the run: its eval split and "
                    "candidate table are the parity examples.", required=True)
flags.DEFINE_string("output_dir", None, "Where the Core ML pair goes (written atomically).",
                    required=True)
flags.DEFINE_enum("minimum_deployment_target", "iOS16", list(convert.DEPLOYMENT_TARGETS),
                  "Oldest OS the ML Program must run on.")
flags.DEFINE_enum("precision", "float32", list(convert.PRECISIONS),
                  "Compute precision; float16 keeps the L2-normalisation tail in float32.")
flags.DEFINE_enum("compress", "none", list(convert.COMPRESSIONS),
                  "Weight compression (coremltools.optimize.coreml): int8 linear quantisation "
                  "or k-means palettisation to 4/6/8 bits.")
flags.DEFINE_float("float32_max_abs_error", D.float32_max_abs_error,
                   "Bar for float32 uncompressed: max |TF - Core ML| over all embedding values.")
flags.DEFINE_float("float16_min_cosine", D.float16_min_cosine,
                   "Bar for float16 uncompressed: min cosine(TF, Core ML) over rows.")
flags.DEFINE_float("compressed_min_top10_overlap", D.compressed_min_top10_overlap,
                   "Bar for compressed models: mean overlap of the top-10 candidates ranked "
                   "by TF and by Core ML for the same queries.")
flags.DEFINE_integer("num_examples", 3000, "Eval rows used for parity.", lower_bound=1)
flags.DEFINE_integer("num_queries", 500, "Distinct queries ranked for the top-10 overlap.",
                     lower_bound=1)
flags.DEFINE_integer("max_batch", 4096, "Upper bound of the flexible batch axis (RangeDim).",
                     lower_bound=1)
flags.DEFINE_integer("weight_threshold", 2048, "Compress only weights with at least this "
                     "many elements.", lower_bound=0)
flags.DEFINE_string("author", "tfrs_two_tower", "Model metadata: author.")
flags.DEFINE_string("license", "Proprietary: trained on the app's own swipe data",
                    "Model metadata: license.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --output_dir (atomically).")


def main(argv):
  cli.refuse_positional_arguments(argv)
  with cli.user_errors():
    convert_stage.run(
        FLAGS.run_dir, FLAGS.dataset_dir, FLAGS.output_dir,
        minimum_deployment_target=FLAGS.minimum_deployment_target, precision=FLAGS.precision,
        compress=FLAGS.compress,
        thresholds=parity.Thresholds(
            float32_max_abs_error=FLAGS.float32_max_abs_error,
            float16_min_cosine=FLAGS.float16_min_cosine,
            compressed_min_top10_overlap=FLAGS.compressed_min_top10_overlap),
        num_examples=FLAGS.num_examples, num_queries=FLAGS.num_queries,
        max_batch=FLAGS.max_batch, weight_threshold=FLAGS.weight_threshold,
        author=FLAGS.author, license=FLAGS.license, overwrite=FLAGS.overwrite, log=logging.info)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
