#!/usr/bin/env python3
"""Swipe history in the query tower vs the same model without it, side by side.

For each synthetic world (the default shape and a second, differently shaped
one) and each variant (no history; history with its own id table; history
sharing the candidate id table), the same seeds, export, training options:

* at the split (`evaluate_stage`, history = every swipe before the split):
  oracle_like@10 and recall@50 for new / active / long-time / joined after
  training / swiped after training (the validation window) / all users;
* fresh (the app's setting: the history is the user's swipes up to the moment
  of ranking): each eval user is ranked once, at the time of their median eval
  swipe, with the history just before it (from that swipe's record); top-K over
  all candidates not swiped before; oracle_like@10 (mean hidden P(like) of the
  top 10) and recall@50 of the user's likes from then on, for users new since
  training and returning users;
* training throughput: examples/s of the training step on the same batches
  (best of `repeats`, interleaved across the variants), and the ratio to the model without history.

  python benchmarks/bench_history.py --num_users=1500 --days=60 --epochs=3
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import dataclasses  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tfrs_two_tower import config as config_lib  # noqa: E402
from tfrs_two_tower.data import reader  # noqa: E402
from tfrs_two_tower.data import synthetic  # noqa: E402
from tfrs_two_tower.model import inputs  # noqa: E402
from tfrs_two_tower.model import run_dir as run_lib  # noqa: E402
from tfrs_two_tower.model import train_options  # noqa: E402
from tfrs_two_tower.model import training  # noqa: E402
from tfrs_two_tower.stages import evaluate_stage  # noqa: E402
from tfrs_two_tower.stages import train_stage  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", "/tmp/bench_history", "Scratch directory (replaced).")
flags.DEFINE_integer("num_users", 1500, "Users of each world.")
flags.DEFINE_integer("days", 60, "Days of each world.")
flags.DEFINE_integer("max_length", 20, "History length N of each list.")
flags.DEFINE_integer("epochs", 3, "Training epochs of every variant.")
flags.DEFINE_integer("batch_size", 256, "Training batch size of every variant.")
flags.DEFINE_integer("throughput_steps", 40, "Timed training steps per variant and repeat.")
flags.DEFINE_integer("repeats", 3, "Timed repeats per variant, interleaved across the "
                     "variants (best kept).")
flags.DEFINE_list("variants", ["none", "own", "shared"],
                  "Variants to compare: none, own, shared (liked + passed lists, own or shared "
                  "id table), residual (read by the like residual's history map only, "
                  "history.embed_in_core false), liked_own, liked_shared, liked_residual (the "
                  "liked list only).")
flags.DEFINE_list("worlds", ["default", "taste_active"], "Worlds to measure on.")
flags.DEFINE_float("recency_decay", 1.0, "history.recency_decay of every history variant "
                   "(1: plain mean).")
flags.DEFINE_float("history_dropout", 0.0, "history.dropout of every history variant.")
flags.DEFINE_float("id_dropout", train_options.TrainOptions.id_dropout,
                   "Training id dropout of every variant (the share of examples that train "
                   "the OOV id row, i.e. users unseen in training).")
flags.DEFINE_float("embedding_l2", train_options.TrainOptions.embedding_l2,
                   "L2 penalty on the embedding tables of every variant (the history lists' "
                   "own tables too).")

K_LIKE, K_RECALL = 10, 50
# The second world: taste drives likes more, interests less, users are more
# active and see bigger feeds (longer histories), on another seed.
WORLDS = {
    "default": {},
    "taste_active": dict(taste_weight=2.6, interest_weight=0.1, mean_activity=0.2,
                         feed_size=12, seed=3),
}


def variant_config(variant: str) -> config_lib.Config:
  raw = config_lib.load_config().raw
  if variant != "none":
    raw["history"] = {"max_length": FLAGS.max_length,
                      "lists": ["liked"] if variant.startswith("liked") else ["liked", "passed"],
                      "share_candidate_id_embedding": variant.endswith("shared"),
                      "recency_decay": FLAGS.recency_decay, "dropout": FLAGS.history_dropout,
                      "embed_in_core": not variant.endswith("residual")}
  return config_lib.parse_config(raw)


def at_split(dataset_dir, run_dir, world_dir, out):
  # Long-time = joined in the first half of the world (short worlds have no 90-day users).
  report = evaluate_stage.run(dataset_dir, [run_dir], out, evaluate_stage.EvaluateOptions(
      ks=[K_LIKE, K_RECALL], long_time_days=FLAGS.days / 2, world_dir=world_dir, bootstrap=20,
      baselines=[], reciprocal=False, tensorboard=False), log=lambda *a: None)
  model = next(iter(report["recommenders"].values()))["segments"]
  return {f"split {metric} {segment}": _point(model[segment].get(metric))
          for segment in ("new", "active", "long_time", "joined_after_training",
                          "swiped_after_training", "joined_and_swiped_after_training", "all")
          for metric in (f"oracle_like@{K_LIKE}", f"recall@{K_RECALL}")}


def _point(estimate):
  return estimate["value"] if isinstance(estimate, dict) else estimate


def fresh(dataset_dir, run_dir, world):
  """Ranking at each eval user's median eval swipe, history just before it."""
  dataset, run = reader.open_dataset(dataset_dir), run_lib.open_run(run_dir)
  train = reader.read_interactions(dataset, "train", keys=["query_id", "candidate_id"])
  held = reader.read_interactions(dataset, "eval")
  cand_ids, cand_emb = run.candidate_embeddings()
  column = {c: i for i, c in enumerate(cand_ids)}
  order = np.lexsort((held["timestamp"], held["query_id"]))
  users, first, counts = np.unique(held["query_id"][order], return_index=True,
                                   return_counts=True)
  anchor = order[first + counts // 2]  # each user's median eval swipe
  q = run.embed("query", {k: v[anchor] for k, v in held.items()})
  scores = q @ cand_emb.T
  seen = {}
  for u, c in zip(train["query_id"], train["candidate_id"]):
    seen.setdefault(u, set()).add(c)
  returning = np.array([u in seen for u in users])
  like_at, recall_at = [], []
  for i, (u, a) in enumerate(zip(users, anchor)):
    mine = held["query_id"] == u
    before = mine & (held["timestamp"] < held["timestamp"][a])
    after = mine & ~before & (held["label"] == 1)
    blocked = [column[c] for c in seen.get(u, set()) | set(held["candidate_id"][before])
               | {u} if c in column]
    row = scores[i].copy()
    row[blocked] = -np.inf
    top = np.argsort(-row)[:K_RECALL]
    like_at.append(world.like_probability(np.repeat(u, K_LIKE), cand_ids[top[:K_LIKE]]).mean())
    targets = {column[c] for c in held["candidate_id"][after] if c in column} - set(blocked)
    recall_at.append(len(targets & set(top.tolist())) / len(targets) if targets else np.nan)
  like_at, recall_at = np.array(like_at), np.array(recall_at)
  out = {}
  for name, mask in (("new", ~returning), ("returning", returning)):
    out[f"fresh oracle_like@{K_LIKE} {name}"] = float(like_at[mask].mean())
    out[f"fresh recall@{K_RECALL} {name}"] = float(np.nanmean(recall_at[mask]))
  out["fresh users new/returning"] = f"{int((~returning).sum())}/{int(returning.sum())}"
  return out


def training_pass(dataset_dir, options):
  """A function timing one pass of the training step on prepared batches (as train_stage
  builds it): warm-up, then `throughput_steps` steps -> examples/s."""
  dataset = reader.open_dataset(dataset_dir)
  specs = training.feature_specs(dataset)
  _, index = training.training_inputs(dataset, specs, options)
  model = training.build_model(options, specs)
  model.compile(optimizer=training.make_optimizer(options))
  step = training.distributed_step(tf.distribute.get_strategy(), model, False)  # noqa
  batches = list(inputs.training_dataset(index, options.batch_size, 0, 0,
                                         num_batches=FLAGS.throughput_steps + 5))

  def timed():
    for batch in batches[:5]:
      step(batch)
    started = time.perf_counter()
    for batch in batches[5:]:
      float(step(batch)["loss"])
    return FLAGS.throughput_steps * options.batch_size / (time.perf_counter() - started)
  return timed


def main(argv):
  del argv
  shutil.rmtree(FLAGS.work_dir, ignore_errors=True)
  options = train_options.TrainOptions(epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
                                       log_every_steps=10**6, id_dropout=FLAGS.id_dropout,
                                       embedding_l2=FLAGS.embedding_l2)
  for world_name in FLAGS.worlds:
    overrides = WORLDS[world_name]
    params = synthetic.WorldParams(num_users=FLAGS.num_users, days=FLAGS.days, **overrides)
    world = synthetic.generate_world(params)
    base = os.path.join(FLAGS.work_dir, world_name)
    world.save(os.path.join(base, "world"))
    print(f"\n== world {world_name}: {len(world.profiles)} users, {len(world.swipes)} swipes "
          f"({', '.join(f'{k}={v}' for k, v in overrides.items()) or 'default shape'})")
    rows, passes = {}, {}
    for variant in FLAGS.variants:
      ds, run = os.path.join(base, f"ds_{variant}"), os.path.join(base, f"run_{variant}")
      started = time.time()
      synthetic.write_world_dataset(world, variant_config(variant), ds)
      export_seconds = time.time() - started
      started = time.time()
      train_stage.run(ds, run, options, log=lambda *a: None)
      figures = {"export s": round(export_seconds, 1),
                 "train s": round(time.time() - started, 1),
                 "examples/s": 0.0}  # measured below
      passes[variant] = training_pass(ds, options)
      figures.update(at_split(ds, run, os.path.join(base, "world"),
                              os.path.join(base, f"eval_{variant}")))
      figures.update(fresh(ds, run, world))
      rows[variant] = figures
    # Repeats interleaved across the variants, best kept: a load change on a shared
    # machine then hits every variant alike.
    for _ in range(FLAGS.repeats):
      for variant, timed in passes.items():
        rows[variant]["examples/s"] = max(rows[variant]["examples/s"], timed())
    names = list(rows)
    width = max(14, *(len(n) + 2 for n in names))
    label = max(len(m) for m in rows[names[0]]) + 2
    print(f"{'metric':{label}s}" + "".join(f"{n:>{width}s}" for n in names))
    for metric in rows[names[0]]:
      cells = "".join(f"{rows[n][metric]:>{width}.4f}" if isinstance(rows[n][metric], float)
                      else f"{str(rows[n][metric]):>{width}s}" for n in names)
      print(f"{metric:{label}s}{cells}")
    base_rate = rows[names[0]]["examples/s"]
    print("throughput slowdown vs " + names[0] + ": " + ", ".join(
        f"{n} {base_rate / rows[n]['examples/s']:.2f}x" for n in names[1:]))
  print(f"\nsettings: {dataclasses.asdict(options)['epochs']} epochs, batch "
        f"{FLAGS.batch_size}, N={FLAGS.max_length}, recency_decay={FLAGS.recency_decay}, "
        f"history dropout={FLAGS.history_dropout}, id dropout={FLAGS.id_dropout}, "
        f"{FLAGS.num_users} users x {FLAGS.days} days")


if __name__ == "__main__":
  app.run(main)
