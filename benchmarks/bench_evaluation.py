#!/usr/bin/env python3
"""Evaluation speed: the whole retrieval evaluation vs the bare matmul + top_k, side by side.

10k query users x 100k candidates, dim 64, top-100, ~50 excluded (already swiped)
candidates per user. Both sides score the same arrays in the same blocks of
`--batch_size` users (a [B, N] block is the memory peak; 10k x 100k floats at
once would be 4 GB):

  baseline:   for each block: tf.math.top_k(tf.matmul(q_block, c, transpose_b=True), 100),
              traced with tf.function (the fastest bare form)
  evaluation: evaluator.evaluate(): the same, plus exclusions (gather + scatter -inf),
              hit matrices, recall/hit/NDCG@{10,50,100}, MRR, match recall, TFRS
              factorized top-K (unfiltered ranks), like-back success lookups, eval
              swipe scores and log loss.
The bootstrap summary (1000 resamples, reporting) is timed separately.

  python benchmarks/bench_evaluation.py [--users=10000 --candidates=100000]
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfrs_two_tower.evaluation import evaluator  # noqa: E402
from tfrs_two_tower.evaluation import metrics  # noqa: E402
from tfrs_two_tower.evaluation import retrieval  # noqa: E402


def synthetic_eval_data(rng, users: int, candidates: int, excluded_per_user: int,
                        likes_per_user: int, swipes_per_user: int) -> evaluator.EvalData:
  """EvalData of random users; query and candidate ids share one space (user-to-user)."""
  ids = np.array([f"u{i}" for i in range(max(users, candidates))], dtype=object)
  query_ids, candidate_ids = ids[:users], ids[:candidates]
  ex_rows = np.repeat(np.arange(users), excluded_per_user)
  exclusions = retrieval.Exclusions.from_pairs(
      np.r_[ex_rows, np.arange(users)],
      np.r_[rng.integers(0, candidates, ex_rows.size), np.arange(users)], users)
  sw_users = np.repeat(np.arange(users), swipes_per_user)
  sw_cands = rng.integers(0, candidates, sw_users.size)
  sw_labels = (np.arange(sw_users.size) % swipes_per_user < likes_per_user).astype(np.int64)
  like = sw_labels == 1
  likes = evaluator.Pairs(sw_users[like], sw_cands[like], sw_labels[like])
  matched = like & (rng.random(sw_users.size) < 0.1)
  gid = np.arange(ids.size)
  back_keys, order = np.unique(gid[sw_users] * ids.size + gid[sw_cands], return_index=True)
  return evaluator.EvalData(
      query_entities={}, candidate_entities={}, query_ids=query_ids, candidate_ids=candidate_ids,
      users=np.arange(users), exclusions=exclusions, likes=likes,
      matches=evaluator.Pairs(sw_users[matched], sw_cands[matched], sw_labels[matched]),
      eval_swipes=evaluator.Pairs(sw_users, sw_cands, sw_labels),
      train_swipes=evaluator.Pairs(sw_users, sw_cands, sw_labels),
      likes_received=rng.poisson(3, candidates), segments={"all": np.ones(users, bool)},
      split_time=0, notes={}, _query_gid=gid[:users], _candidate_gid=gid[:candidates],
      _num_gids=ids.size, back_keys=back_keys, back_labels=sw_labels[order])


def bare_matmul_top_k(query: np.ndarray, candidates: tf.Tensor, k: int, batch_size: int):
  """The floor: one traced matmul + top_k per block, nothing else."""
  @tf.function(input_signature=[tf.TensorSpec([None, query.shape[1]], tf.float32)])
  def block(q):
    return tf.math.top_k(tf.matmul(q, candidates, transpose_b=True), k=k).indices
  return np.concatenate([block(tf.constant(query[start:start + batch_size])).numpy()
                         for start in range(0, query.shape[0], batch_size)])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--users", type=int, default=10_000)
  parser.add_argument("--candidates", type=int, default=100_000)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--k", type=int, default=100)
  parser.add_argument("--excluded_per_user", type=int, default=50)
  parser.add_argument("--batch_size", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  query = rng.normal(size=(args.users, args.dim)).astype(np.float32)
  query /= np.linalg.norm(query, axis=1, keepdims=True)
  cands = rng.normal(size=(args.candidates, args.dim)).astype(np.float32)
  cands /= np.linalg.norm(cands, axis=1, keepdims=True)
  data = synthetic_eval_data(rng, args.users, args.candidates, args.excluded_per_user,
                             likes_per_user=3, swipes_per_user=10)
  scorer = retrieval.EmbeddingScorer(data.query_ids, data.candidate_ids, query, cands)
  ks = [10, 50, args.k]
  calibration = retrieval.PlattCalibration(slope=5.0, intercept=-1.0)
  cands_t = tf.constant(cands)
  # warm-up (tracing, thread pools) on a small slice, both paths
  bare_matmul_top_k(query[:256], cands_t, args.k, args.batch_size)
  retrieval.top_k(scorer, np.arange(256), args.k, batch_size=args.batch_size)

  bare, whole = [], []
  for _ in range(args.repeats):  # interleaved: both see the same machine load
    t = time.perf_counter()
    bare_matmul_top_k(query, cands_t, args.k, args.batch_size)
    bare.append(time.perf_counter() - t)
    t = time.perf_counter()
    result = evaluator.evaluate(scorer, data, ks, calibration, batch_size=args.batch_size)
    whole.append(time.perf_counter() - t)
  t = time.perf_counter()
  counts = metrics.bootstrap_counts(data.num_users, 1000)
  evaluator.summarize(result, data, counts, ks, metrics.top_popular_mask(data.likes_received))
  summary_seconds = time.perf_counter() - t

  print(f"{args.users} users x {args.candidates} candidates, dim {args.dim}, top-{args.k}, "
        f"{data.exclusions.candidates.size} excluded pairs, {data.likes.users.size} eval likes, "
        f"batch {args.batch_size}, {os.cpu_count()} CPUs")
  print(f"bare matmul + top_k:             best {min(bare):7.2f} s  (runs: "
        f"{', '.join(f'{x:.2f}' for x in bare)})")
  print(f"whole evaluation (evaluate()):   best {min(whole):7.2f} s  (runs: "
        f"{', '.join(f'{x:.2f}' for x in whole)})")
  paired = [w / b for w, b in zip(whole, bare)]
  print(f"ratio whole / bare (best):       {min(whole) / min(bare):7.2f}x   (target <= 2x); "
        f"per repeat: {', '.join(f'{r:.2f}x' for r in paired)}")
  print(f"bootstrap summary, 1000 resamples (reporting, not in the ratio): "
        f"{summary_seconds:.2f} s")


if __name__ == "__main__":
  main()
