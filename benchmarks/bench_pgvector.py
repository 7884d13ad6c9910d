#!/usr/bin/env python3
"""recommend() latency in PostgreSQL + pgvector: HNSW vs exact, for 10k and 100k candidates.

For each corpus size a synthetic world of that many users (3 days of swipes;
optionally also a saved world such as the default one) is embedded by a
trained run's towers (profiles the model never saw embed through their
features, as cold-start users do), seeded into an embedded PostgreSQL (pgserver)
and published. Then `recommend(user, 20)` is timed for random users with the
HNSW index and with exact brute force (the baseline), and HNSW recall@20 against
exact is reported.

  python benchmarks/bench_pgvector.py --run_dir=out/run
"""
import argparse
import contextlib
import os
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402
import psycopg2  # noqa: E402

from tfrs_two_tower import config as config_lib  # noqa: E402
from tfrs_two_tower import features as features_lib  # noqa: E402
from tfrs_two_tower.data import postgres_source  # noqa: E402
from tfrs_two_tower.data import seeding  # noqa: E402
from tfrs_two_tower.data import synthetic  # noqa: E402
from tfrs_two_tower.model import run_dir as run_lib  # noqa: E402
from tfrs_two_tower.serving import pgvector  # noqa: E402


def embed_profiles(run, world, side):
  return run.embed(side, features_lib.encode_entity_table(run.config, side, world.profiles,
                                                         "world profiles"))


def measure(run, world, queries, k, seed):
  size = len(world.profiles)
  started = time.time()
  q_emb = embed_profiles(run, world, "query")
  c_emb = embed_profiles(run, world, "candidate")
  embed_seconds = time.time() - started
  with contextlib.ExitStack() as stack:
    url = stack.enter_context(postgres_source.embedded_postgres(log=lambda m: None))
    conn = stack.enter_context(contextlib.closing(psycopg2.connect(url)))
    seeding.seed(conn, world, log=lambda m: None)
    ids = world.profiles["id"].tolist()
    started = time.time()
    # The seeded tables are the default schema: its config's rules are what recommend() applies.
    pgvector.publish(conn, config=config_lib.load_config(), run_id=f"bench-{size}",
                     config_hash=run.manifest["config_hash"],
                     temperature=run.manifest["temperature"], query_ids=ids,
                     query_embeddings=q_emb, candidate_ids=ids, candidate_embeddings=c_emb,
                     calibration=(1 / run.manifest["temperature"], 0.0), log=lambda m: None)
    publish_seconds = time.time() - started
    users = np.random.default_rng(seed).choice(ids, queries, replace=False)
    timings = {"hnsw": [], "exact": []}
    hits = total = 0
    for user in users:
      results = {}
      for mode in ("hnsw", "exact"):
        started = time.perf_counter()
        results[mode] = pgvector.recommend(conn, user, k, exact=mode == "exact")
        timings[mode].append(time.perf_counter() - started)
      exact = {c for c, _ in results["exact"]}
      hits += len(exact & {c for c, _ in results["hnsw"]})
      total += len(exact)
  return {"size": size, "embed_s": embed_seconds, "publish_s": publish_seconds,
          "hnsw_ms": 1000 * np.median(timings["hnsw"]),
          "hnsw_p95_ms": 1000 * np.percentile(timings["hnsw"], 95),
          "exact_ms": 1000 * np.median(timings["exact"]), "recall": hits / max(total, 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run_dir", default="out/run")
  parser.add_argument("--sizes", default="10000,100000")
  parser.add_argument("--world_dir", default=None,
                      help="also measure on this world (e.g. the default world, out/world)")
  parser.add_argument("--queries", type=int, default=200)
  parser.add_argument("--k", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  run = run_lib.open_run(args.run_dir)
  worlds = [synthetic.World.load(args.world_dir)] if args.world_dir else []
  worlds += [synthetic.generate_world(synthetic.WorldParams(num_users=int(size), days=3,
                                                            seed=args.seed))
             for size in args.sizes.split(",") if size]
  for world in worlds:
    r = measure(run, world, args.queries, args.k, args.seed)
    print(f"{r['size']:>7,} candidates: recommend(k={args.k}) HNSW median {r['hnsw_ms']:.1f} ms "
          f"(p95 {r['hnsw_p95_ms']:.1f}), exact {r['exact_ms']:.1f} ms -> ratio exact/HNSW "
          f"{r['exact_ms'] / r['hnsw_ms']:.1f}x; HNSW recall@{args.k} vs exact {r['recall']:.3f}; "
          f"embed {r['embed_s']:.1f}s, publish {r['publish_s']:.1f}s")


if __name__ == "__main__":
  main()
