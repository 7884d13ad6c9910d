"""End-to-end training: a real run directory, reloaded in a fresh process."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from sklearn import metrics as sklearn_metrics

from tfrs_two_tower.data import reader
from tfrs_two_tower.model import epoch_eval
from tfrs_two_tower.model import towers
from tfrs_two_tower.model import run_dir as run_lib
from tfrs_two_tower.model import table_memory
from tfrs_two_tower.model import train_options
from tfrs_two_tower.model import training_run
from tfrs_two_tower.stages import train_stage
from conftest import TINY_TRAINING as FAST


@pytest.fixture(scope="module")
def trained(tiny_training):
  """(path, result) of conftest's shared brief training (read-only)."""
  return tiny_training


_RELOAD = r"""
import json, sys
import numpy as np
import tfrs_two_tower
import tensorflow as tf
from tfrs_two_tower.data import reader
from tfrs_two_tower.model import epoch_eval
from tfrs_two_tower.model import run_dir as run_lib
from tfrs_two_tower.model import table_memory
path, dataset_dir, out = sys.argv[1:4]
run = run_lib.open_run(path)
ds = reader.open_dataset(dataset_dir)
swipes = reader.read_interactions(ds, "eval")
n = 50
query = {k: v[:n] for k, v in swipes.items() if k.startswith("query_")}
candidate = {k: v[:n] for k, v in swipes.items() if k.startswith("candidate_")}
core_in = {k: tf.constant(v) for k, v in np.load(out + ".core_in.npz").items()}
core = run.core("query").signatures["serving_default"](**core_in)["embedding"].numpy()
top = run.index().signatures["serving_default"](
    **{k: tf.constant(v) for k, v in query.items() if k in run.raw_input_specs("query")},
    exclude_ids=tf.constant([[swipes["candidate_id"][0], ""]] * n), k=tf.constant(5))
np.savez(out, query=run.embed("query", query), candidate=run.embed("candidate", candidate),
         core=core, top_ids=top["ids"].numpy().astype(str), top_scores=top["scores"].numpy())
"""


@pytest.mark.slow
def test_run_dir_contract_and_fresh_process_reload(trained, tiny_dataset_dir, tmp_path):
  path, result = trained
  for name in ("manifest.json", "flags.json", "config.json", "preprocessing.json", "vocab",
               "query_model", "candidate_model", "query_core", "candidate_core", "index",
               "candidate_embeddings.npz", "checkpoints", "logs"):
    assert os.path.exists(os.path.join(path, name)), name
  assert not os.path.exists(path + training_run.INCOMPLETE_SUFFIX)
  run = run_lib.open_run(path)
  assert run.manifest["global_step"] == FAST["steps_per_epoch"]
  assert run.flags["batch_size"] == FAST["batch_size"]

  dataset = reader.open_dataset(tiny_dataset_dir)
  swipes = reader.read_interactions(dataset, "eval")
  n = 50
  query = {k: v[:n] for k, v in swipes.items() if k.startswith("query_")}
  candidate = {k: v[:n] for k, v in swipes.items() if k.startswith("candidate_")}
  keys = [s["key"] for s in result.query_tower.preprocessing.specs]
  q_mem = result.query_tower({k: query[k] for k in keys}).numpy()
  keys_c = [s["key"] for s in result.candidate_tower.preprocessing.specs]
  c_mem = result.candidate_tower({k: candidate[k] for k in keys_c}).numpy()
  core_in = {k: v.numpy() for k, v in
             result.query_tower.preprocessing({k: query[k] for k in keys}).items()}
  out = str(tmp_path / "reloaded.npz")
  np.savez(out + ".core_in.npz", **core_in)
  subprocess.run([sys.executable, "-c", _RELOAD, path, tiny_dataset_dir, out], check=True,
                 env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
  got = np.load(out)
  assert np.abs(got["query"] - q_mem).max() <= 1e-5
  assert np.abs(got["candidate"] - c_mem).max() <= 1e-5
  assert np.abs(got["core"] - q_mem).max() <= 1e-5
  np.testing.assert_allclose(np.linalg.norm(got["query"], axis=1), 1.0, atol=1e-5)

  # The index is an exact top-k over all candidates, minus the excluded id.
  ids, emb = run.candidate_embeddings()
  scores = q_mem @ emb.T
  scores[:, list(ids).index(swipes["candidate_id"][0])] = -np.inf
  expected = np.sort(scores, axis=1)[:, ::-1][:, :5]
  np.testing.assert_allclose(got["top_scores"], expected, atol=1e-5)
  assert swipes["candidate_id"][0] not in set(got["top_ids"].ravel())


def test_open_run_refuses_tampered_or_incomplete(trained, tmp_path):
  import shutil
  path, _ = trained
  copy = str(tmp_path / "copy")
  shutil.copytree(path, copy)
  with open(os.path.join(copy, "candidate_embeddings.npz"), "ab") as f:
    f.write(b"x")
  with pytest.raises(run_lib.RunFormatError, match="candidate_embeddings.npz"):
    run_lib.open_run(copy)
  os.remove(os.path.join(copy, "manifest.json"))
  with pytest.raises(run_lib.RunFormatError, match="not a complete run"):
    run_lib.open_run(copy)
  with pytest.raises(run_lib.RunFormatError, match="config"):
    run_lib.open_run(path, dataset_config_hash="0" * 64)


def test_bad_flags_are_named(tiny_dataset_dir, tmp_path):
  with pytest.raises(train_options.TrainError, match="--layer_sizes"):
    train_stage.run(tiny_dataset_dir, str(tmp_path / "r"),
                    train_options.TrainOptions(layer_sizes="64,x"))
  with pytest.raises(train_options.TrainError, match="--dataset_dir"):
    train_stage.run(str(tmp_path / "nope"), str(tmp_path / "r"))
  with pytest.raises(train_options.TrainError, match=r"--id_dropout must be in \[0, 1\)"):
    train_stage.run(tiny_dataset_dir, str(tmp_path / "r"),
                    train_options.TrainOptions(id_dropout=1.0))
  with pytest.raises(train_options.TrainError, match="--new_user_swipes must be >= 0"):
    train_stage.run(tiny_dataset_dir, str(tmp_path / "r"),
                    train_options.TrainOptions(new_user_swipes=-1))


@pytest.mark.slow  # XLA compilation of the train step
def test_mixed_precision_and_xla_train_and_export(tiny_dataset_dir, tmp_path):
  import tensorflow as tf
  path = str(tmp_path / "run")
  # The towers' own outputs (unit norm): the like residual would append its columns.
  options = train_options.TrainOptions(**{**FAST, "steps_per_epoch": 6, "mixed_precision": True,
                                        "jit_compile": True, "eval_ks": [10],
                                        "like_residual": False})
  result = train_stage.run(tiny_dataset_dir, path, options, log=lambda *a: None)
  assert tf.keras.mixed_precision.global_policy().name == "float32"  # restored
  run = run_lib.open_run(path)
  assert run.manifest["global_step"] == 6
  ids, embeddings = run.candidate_embeddings()
  assert embeddings.dtype == np.float32 and np.isfinite(embeddings).all()
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-3)
  # The recorded AUC is the saved model's: recompute it from the reloaded run on the
  # validation swipes (training never reads eval).
  from tfrs_two_tower.evaluation import metrics
  swipes = reader.read_interactions(reader.open_dataset(tiny_dataset_dir), "validation")
  row = {c: i for i, c in enumerate(ids)}
  known = np.array([c in row for c in swipes["candidate_id"]])
  q = run.embed("query", {k: v[known] for k, v in swipes.items()})
  pair = np.einsum("nd,nd->n", q, embeddings[[row[c] for c in swipes["candidate_id"][known]]])
  expected = metrics.roc_auc(swipes["label"][known].astype(np.int64), pair)
  assert 0 <= expected <= 1
  assert result.manifest["metrics"]["final"]["validation_auc"] == pytest.approx(expected,
                                                                                abs=0.01)


def test_scann_index_agrees_with_brute_force(trained, tmp_path):
  pytest.importorskip("scann")  # importing registers the Scann ops needed for loading
  import tensorflow as tf
  from tfrs_two_tower.model import export
  path, result = trained
  run = run_lib.open_run(path)
  ids, embeddings = run.candidate_embeddings()
  assert export.save_index(str(tmp_path / "index"), result.query_tower, ids, embeddings,
                           "scann") == "scann"
  index = tf.saved_model.load(str(tmp_path / "index")).signatures["serving_default"]
  query = {s["key"]: v[:20] for s in result.query_tower.preprocessing.specs
           for v in [reader.read_entities(reader.open_dataset(run.manifest["dataset"]["path"]),
                                          "query")[s["key"]]]}
  excluded = ids[0]
  got = index(**{k: tf.constant(v) for k, v in query.items()},
              exclude_ids=tf.constant([[excluded]] * 20), k=tf.constant(10))
  got_ids = got["ids"].numpy().astype(str)
  assert excluded not in set(got_ids.ravel())
  scores = result.query_tower(query).numpy() @ embeddings.T
  scores[:, 0] = -np.inf
  exact = ids[np.argsort(-scores, axis=1)[:, :10]]
  # Approximate (a quarter of the partitions searched), but the scores are exact re-scores.
  overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got_ids, exact)])
  assert overlap >= 0.5, overlap
  row = {c: i for i, c in enumerate(ids)}
  expected = np.take_along_axis(scores, np.vectorize(row.get)(got_ids), axis=1)
  np.testing.assert_allclose(got["scores"].numpy(), expected, atol=1e-4)


def _poison_eval_split(path):
  """Replaces the eval shards by undecodable records (manifest checksums updated)."""
  import json
  import tensorflow as tf
  from tfrs_two_tower import files
  from tfrs_two_tower.data import dataset_format as fmt
  manifest = json.load(open(os.path.join(path, fmt.MANIFEST)))
  for shard in manifest["shards"]["eval"]:
    with tf.io.TFRecordWriter(os.path.join(path, shard["file"]), fmt.COMPRESSION) as w:
      w.write(b"not a tf.train.Example")
  manifest["files"] = files.file_checksums(path)
  files.write_json(os.path.join(path, fmt.MANIFEST), manifest)


@pytest.mark.slow
def test_training_never_reads_eval_and_restores_the_best_validation_epoch(dataset_copy,
                                                                          tmp_path):
  """One 3-epoch training on a dataset whose eval split is poisoned: it never reads eval
  (nor does the like residual's fit), and the run keeps the epoch with the best validation
  GAUC (--selection_metric=gauc)."""
  import tensorflow as tf
  _poison_eval_split(dataset_copy)
  ds = reader.open_dataset(dataset_copy)
  with pytest.raises(Exception):  # the poison is real: reading eval fails
    reader.read_interactions(ds, "eval")
  # Selecting on the non-default metric also checks that the key follows --selection_metric.
  result = train_stage.run(dataset_copy, str(tmp_path / "run"), train_options.TrainOptions(
      **{**FAST, "epochs": 3, "early_stopping_patience": 0, "selection_metric": "gauc",
         "like_residual": True}), log=lambda *a: None)
  assert "fitted" in result.manifest["like_residual"]  # its fit ran on train + validation
  metrics = result.manifest["metrics"]
  history = metrics["history"]
  assert [h["epoch"] for h in history] == [1, 2, 3]
  assert all(k.startswith("validation_") for h in history for k in h if k != "epoch")
  key = "validation_gauc"
  with open(tmp_path / "run" / "flags.json") as f:
    assert json.load(f)["selection_metric"] == "gauc"
  best = max(history, key=lambda h: h[key])
  assert metrics["selected_epoch"] == best["epoch"] and metrics["final"] == best
  # The written towers are the selected epoch's: re-evaluating them gives its metrics (the
  # towers alone: the "embedding" layer, before a fitted residual's scale and columns).
  evaluator = epoch_eval.ValidationEvaluator(ds)
  alone = [towers.Tower(t.preprocessing, tf.keras.Model(t.core.input,
                                                        t.core.get_layer("embedding").output))
           for t in (result.query_tower, result.candidate_tower)]
  again = evaluator(*alone)
  assert again[key] == pytest.approx(best[key], abs=1e-6)


@pytest.mark.slow
def test_collapsed_model_is_refused_with_exit_3(tiny_dataset_dir, tmp_path):
  run = str(tmp_path / "run")
  proc = subprocess.run(
      [sys.executable, os.path.join(os.path.dirname(__file__), "..", "scripts", "train_model.py"),
       f"--dataset_dir={tiny_dataset_dir}", f"--run_dir={run}", "--learning_rate=1e6",
       "--epochs=1", "--steps_per_epoch=12", "--batch_size=128", "--no_tune"],
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 3, proc.stderr[-2000:]
  assert "the model has collapsed" in proc.stderr and "--learning_rate" in proc.stderr
  assert not os.path.exists(run)


def test_tables_too_large_for_memory_are_refused_before_training(tiny_dataset_dir, tmp_path):
  # The tiny world's tables need ~0.5 MB; a 100 kB budget refuses the run before
  # anything is written.
  path = str(tmp_path / "run")
  options = train_options.TrainOptions(**{**FAST, "table_memory_budget": 100_000})
  with pytest.raises(train_options.TrainError) as error:
    train_stage.run(tiny_dataset_dir, path, options, log=lambda *a: None)
  message = str(error.value)
  for needed in ("GB in training", "query_id", "min_count", "num_oov_buckets", "embedding_dim",
                 "--table_memory_budget", tiny_dataset_dir):
    assert needed in message, message
  assert not os.path.exists(path) and not os.path.exists(path + training_run.INCOMPLETE_SUFFIX)


def test_table_memory_counts_weights_slots_and_dense_temporaries():
  tables = [("query_id", 1_000_002, 32), ("candidate_id", 1_000_002, 32)]
  weights = 4 * 2 * 1_000_002 * 32
  assert table_memory.training_bytes(tables, "adam", sparse_updates=True) == 3 * weights
  assert table_memory.training_bytes(tables, "adagrad", sparse_updates=True) == 2 * weights
  assert table_memory.training_bytes(tables, "adam", sparse_updates=False) == 5 * weights
  assert table_memory.check_fits(tables, "adam", True, budget_bytes=10 ** 9) == 3 * weights
  with pytest.raises(table_memory.TablesTooLargeError, match=r"0\.77 GB.*query_id: 1,000,002"):
    table_memory.check_fits(tables, "adam", True, budget_bytes=5 * 10 ** 8)


def test_validation_gauc_is_the_mean_of_each_users_own_auc(trained, tiny_dataset_dir):
  # Recomputed independently: sklearn's AUC of each user's validation swipes, averaged
  # over the users who have both a like and a pass.
  _, result = trained
  dataset = reader.open_dataset(tiny_dataset_dir)
  evaluator = epoch_eval.ValidationEvaluator(dataset, ks=(50,))
  got = evaluator(result.query_tower, result.candidate_tower)
  swipes = reader.read_interactions(dataset, "validation")
  q = evaluator.embed(result.query_tower, swipes, "query")
  c = evaluator.embed(result.candidate_tower, swipes, "candidate")
  scores = (q * c).sum(axis=1)
  per_user = []
  for user in np.unique(swipes["query_id"]):
    rows = swipes["query_id"] == user
    labels = swipes["label"][rows]
    if 0 < labels.sum() < labels.size:
      per_user.append(sklearn_metrics.roc_auc_score(labels, scores[rows]))
  assert len(per_user) > 10
  assert got["validation_gauc"] == pytest.approx(np.mean(per_user), abs=1e-4)
  # The recall's standard error over the n users with a validation like: per-user recalls
  # lie in [0, 1], so their variance is at most r (1 - r) n / (n - 1).
  recall, n = got["validation_recall@50"], got["validation_users"]
  standard_error = got["validation_recall@50_standard_error"]
  assert 0 < standard_error <= np.sqrt(recall * (1 - recall) / (n - 1)) + 1e-9


def test_selection_on_like_vs_pass_falls_back_to_recall_without_validation_passes(
    tiny_dataset_dir):
  dataset = reader.open_dataset(tiny_dataset_dir)
  stats = json.loads(json.dumps(dataset.stats))
  stats["labels"]["validation"]["negative"] = 0
  likes_only = types.SimpleNamespace(stats=stats)
  logs = []
  options = training_run.implicit_feedback_options(
      likes_only, train_options.TrainOptions(selection_metric="gauc"), logs.append)
  assert options.selection_metric == "recall"
  assert any("--selection_metric=gauc" in m and "no passes" in m for m in logs)


@pytest.mark.slow
def test_epoch_eval_score_blocks_give_the_same_metrics(trained, tiny_dataset_dir):
  # Score blocks of one row (what a 1M-candidate corpus gets) give the same metrics as
  # the default block size.
  _, result = trained
  dataset = reader.open_dataset(tiny_dataset_dir)
  towers_ = (result.query_tower, result.candidate_tower)
  full = epoch_eval.ValidationEvaluator(dataset, ks=(50,))(*towers_)
  one_row = epoch_eval.ValidationEvaluator(dataset, ks=(50,), score_block_bytes=1)(*towers_)
  assert one_row == full


def _pairs(evaluator, users, columns):
  """(user id, candidate id) pairs of an evaluator's index arrays."""
  return set(zip(evaluator.queries["query_id"][users], evaluator.candidate_ids[columns]))


def test_epoch_eval_samples_validation_users_beyond_the_cap(tiny_dataset_dir):
  # Capped, the evaluator keeps a seeded sample of users with exactly the full
  # evaluator's relevant likes and train exclusions for those users.
  dataset = reader.open_dataset(tiny_dataset_dir)
  full = epoch_eval.ValidationEvaluator(dataset)
  users = len(full.queries["query_id"])
  assert users > 40, users
  capped = epoch_eval.ValidationEvaluator(dataset, max_users=40, seed=3)
  sampled = set(capped.queries["query_id"])
  assert len(sampled) <= 40 and sampled < set(full.queries["query_id"])
  for index in (("relevant_user", "relevant_column"), ("excluded_user", "excluded_column")):
    want = {p for p in _pairs(full, *(getattr(full, i) for i in index)) if p[0] in sampled}
    assert _pairs(capped, *(getattr(capped, i) for i in index)) == want
  assert any(c >= 0 for c in capped.excluded_column)
  again = epoch_eval.ValidationEvaluator(dataset, max_users=40, seed=3)
  assert list(again.queries["query_id"]) == list(capped.queries["query_id"])
  other = epoch_eval.ValidationEvaluator(dataset, max_users=40, seed=4)
  assert set(other.queries["query_id"]) != sampled
  # At or above the number of users nothing is sampled: the same arrays as uncapped.
  whole = epoch_eval.ValidationEvaluator(dataset, max_users=users + 100)
  assert np.array_equal(whole.excluded_user, full.excluded_user)
  assert np.array_equal(whole.relevant_column, full.relevant_column)


def test_the_training_index_marks_each_users_first_swipes(tiny_dataset_dir):
  from tfrs_two_tower.model import inputs, training
  dataset = reader.open_dataset(tiny_dataset_dir)
  options = train_options.TrainOptions(**FAST, new_user_swipes=3)
  _, index = training.training_inputs(dataset, training.feature_specs(dataset), options)
  marked = index.tensors[inputs.NEW_USER_COLUMN].numpy()
  rows = index.tensors["query_row"].numpy()
  train = reader.read_interactions(dataset, "train", keys=("query_id", "timestamp"))
  assert [i.decode() for i in index.query.ids[rows]] == list(train["query_id"])  # same order
  for row in np.unique(rows):
    mine = rows == row
    assert marked[mine].sum() == min(3, mine.sum())
    if (~marked[mine]).any():  # nothing marked is later than anything unmarked
      assert train["timestamp"][mine & marked].max() <= train["timestamp"][mine & ~marked].min()
  _, plain = training.training_inputs(dataset, training.feature_specs(dataset),
                                      train_options.TrainOptions(**FAST, new_user_swipes=0))
  assert inputs.NEW_USER_COLUMN not in plain.tensors  # off: no column, no timestamps read


def test_epoch_eval_takes_its_train_exclusions_from_the_training_index(tiny_dataset_dir):
  # The trainer hands the evaluator its in-memory train index (one pass over the train
  # shards per run): the exclusions and relevant likes equal those of reading the split.
  from tfrs_two_tower.model import training
  dataset = reader.open_dataset(tiny_dataset_dir)
  options = train_options.TrainOptions(**FAST)
  _, index = training.training_inputs(dataset, training.feature_specs(dataset), options)
  for max_users in (40, 10_000):
    read = epoch_eval.ValidationEvaluator(dataset, max_users=max_users, seed=3)
    shared = epoch_eval.ValidationEvaluator(dataset, max_users=max_users, seed=3,
                                            train_pairs=index.pairs_of)
    for name in ("excluded_user", "excluded_column", "relevant_user", "relevant_column"):
      assert np.array_equal(getattr(shared, name), getattr(read, name)), (max_users, name)
    assert read.excluded_user.size > len(read.queries["query_id"])  # train swipes, not self


def test_residual_features_give_each_known_id_row_its_entitys_features(tiny_dataset_dir):
  """`training.residual_features`: a group per feature name, a row per id table row with
  that entity's token counts over sqrt(their number); padding and OOV rows empty."""
  from tfrs_two_tower.model import like_residual, training
  from tfrs_two_tower.model import preprocessing as prep
  dataset = reader.open_dataset(tiny_dataset_dir)
  specs = training.feature_specs(dataset)
  _, index = training.training_inputs(dataset, specs, train_options.TrainOptions(**FAST))
  id_keys = {side: next(s["key"] for s in specs[side] if s["type"] == "id")
             for side in ("query", "candidate")}
  features = training.residual_features(index, specs, id_keys)
  assert "interests" in features.groups and set(features.groups["interests"]) == {
      "query", "candidate"}
  for side in ("query", "candidate"):
    id_spec = next(s for s in specs[side] if s["key"] == id_keys[side])
    values = getattr(index, side).values
    id_rows = values[id_keys[side]].numpy().reshape(-1)
    known = id_rows >= 1 + id_spec["num_oov_buckets"]
    assert known.any() and (~known).any()  # the tiny world has users unseen in training
    spec = next(s for s in specs[side] if s["key"] == f"{side}_interests")
    matrix = features.groups["interests"][side]
    assert matrix.shape == (prep.num_rows(id_spec), prep.num_rows(spec))
    hot = like_residual.multi_hot(values[spec["key"]].numpy(), prep.num_rows(spec))
    np.testing.assert_allclose(matrix[id_rows[known]].toarray(), hot[known].toarray())
    unused = np.setdiff1d(np.arange(matrix.shape[0]), id_rows[known])
    assert matrix[unused].nnz == 0 and 0 in unused  # padding, OOV, ids of no entity
