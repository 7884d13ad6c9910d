#!/usr/bin/env python3
"""Export throughput and peak memory: our streaming export vs the naive route.

Same PostgreSQL (pgserver, started here unless --db_url is given), same data: a
synthetic world with >= 1M swipes, seeded with `seed_stage` (COPY), plus a second
database with the same profiles and only the first --small_swipes swipes.

  ours:  export_stage.run (REPEATABLE READ snapshot, audit, server-side dedup and
         time order, named cursor in chunks -> DatasetWriter: records, vocabularies,
         stats, entity tables, TFDS metadata).
  naive: pandas.read_sql of the whole swipes x profiles x profiles join, then one
         tf.train.Example per row into a gzip TFRecord file (records only).

Each run is a separate subprocess reporting its own peak RSS
(getrusage(RUSAGE_SELF).ru_maxrss) and the RSS after imports, so the figures do
not mix. rows/s = swipes / seconds of work (imports excluded).

  python benchmarks/bench_export.py                 # ~10 minutes on 2 cores
  python benchmarks/bench_export.py --num_users=5000 --small_swipes=20000   # quick
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"

NAIVE_QUERY = """
SELECT s.swiper_id::text AS query_id, s.swipee_id::text AS candidate_id, s.action, s.created_at,
  q.gender AS query_gender, q.seeking AS query_seeking, q.age AS query_age, q.city AS query_city,
  q.latitude AS query_latitude, q.longitude AS query_longitude, q.interests AS query_interests,
  q.photo_count AS query_photo_count, q.verified AS query_verified,
  q.bio_length AS query_bio_length,
  c.gender AS candidate_gender, c.seeking AS candidate_seeking, c.age AS candidate_age,
  c.city AS candidate_city, c.latitude AS candidate_latitude,
  c.longitude AS candidate_longitude, c.interests AS candidate_interests,
  c.photo_count AS candidate_photo_count, c.verified AS candidate_verified,
  c.bio_length AS candidate_bio_length
FROM swipes s JOIN profiles q ON q.id = s.swiper_id JOIN profiles c ON c.id = s.swipee_id
"""


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_ours(db_url: str, out: str) -> dict:
  import tfrs_two_tower  # noqa: F401
  import tensorflow  # noqa: F401  (both routes pay the TF import before the clock starts)
  from tfrs_two_tower.stages import export_stage
  base = _rss_mb()
  started = time.time()
  stats = export_stage.run(out, export_stage.ExportOptions(db_url=db_url, env_file=None),
      log=lambda m: None)
  rows = stats["rows"]["train"] + stats["rows"]["eval"]
  return {"rows": rows, "seconds": time.time() - started, "rss_after_imports_mb": base,
          "peak_rss_mb": _rss_mb()}


def child_naive(db_url: str, out: str) -> dict:
  import warnings
  import pandas as pd
  import psycopg2
  import tensorflow as tf
  warnings.filterwarnings("ignore")  # pandas prefers SQLAlchemy connections
  base = _rss_mb()
  started = time.time()
  conn = psycopg2.connect(db_url)
  frame = pd.read_sql(NAIVE_QUERY, conn)
  conn.close()
  read_seconds = time.time() - started

  def feature(key, value):
    if key.endswith("interests"):
      return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in value]))
    if isinstance(value, str):
      return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))

  os.makedirs(out)
  options = tf.io.TFRecordOptions(compression_type="GZIP")
  with tf.io.TFRecordWriter(os.path.join(out, "interactions.tfrecord.gz"), options) as writer:
    for row in frame.itertuples(index=False):
      values = row._asdict()
      created = values.pop("created_at")
      features = {k: feature(k, v) for k, v in values.items()}
      features["timestamp"] = tf.train.Feature(
          int64_list=tf.train.Int64List(value=[int(created.timestamp())]))
      features["label"] = tf.train.Feature(
          int64_list=tf.train.Int64List(value=[int(values["action"] != "pass")]))
      writer.write(tf.train.Example(
          features=tf.train.Features(feature=features)).SerializeToString())
  return {"rows": len(frame), "seconds": time.time() - started, "read_sql_seconds": read_seconds,
          "rss_after_imports_mb": base, "peak_rss_mb": _rss_mb()}


def run_child(method: str, db_url: str, out: str) -> dict:
  result = subprocess.run([sys.executable, os.path.abspath(__file__), f"--child={method}",
                           f"--db_url={db_url}", f"--out={out}"], capture_output=True, text=True)
  if result.returncode != 0:
    raise RuntimeError(f"{method} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--db_url", help="Server URL (a database 'postgres' on it); default: "
                      "start pgserver in a temporary directory.")
  parser.add_argument("--num_users", type=int, default=20000, help="World users (20000 gives "
                      "~1.24M swipes).")
  parser.add_argument("--days", type=int, default=120)
  parser.add_argument("--small_swipes", type=int, default=100_000,
                      help="Swipes of the small database (memory growth check).")
  parser.add_argument("--skip_naive_large", action="store_true",
                      help="Skip the naive route on the large database (it takes minutes).")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--out", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    result = (child_ours if args.child == "ours" else child_naive)(args.db_url, args.out)
    print(json.dumps(result))
    return

  import psycopg2
  from tfrs_two_tower.data import synthetic
  from tfrs_two_tower.data import seeding
  work = tempfile.mkdtemp(prefix="bench-export-")
  server = None
  try:
    if args.db_url:
      server_url = args.db_url
    else:
      import pgserver
      server = pgserver.get_server(os.path.join(work, "pg"), cleanup_mode="stop")
      server_url = server.get_uri()
    started = time.time()
    world = synthetic.generate_world(synthetic.WorldParams(num_users=args.num_users,
                                                           days=args.days, seed=1))
    print(f"world: {len(world.profiles):,} users, {len(world.swipes):,} swipes "
          f"({time.time() - started:.1f}s)")
    small = synthetic.World(world.params, world.profiles,
                            world.swipes.iloc[:args.small_swipes], world.hidden)
    urls = {}
    for name, w in (("large", world), ("small", small)):
      admin = psycopg2.connect(server_url)
      admin.autocommit = True
      with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS bench_{name}")
        cur.execute(f"CREATE DATABASE bench_{name}")
      admin.close()
      base, _, query = server_url.partition("?")
      urls[name] = f"{base.rsplit('/', 1)[0]}/bench_{name}" + (f"?{query}" if query else "")
      conn = psycopg2.connect(urls[name])
      started = time.time()
      seeding.seed(conn, w, log=lambda m: None)
      conn.close()
      elapsed = time.time() - started
      print(f"seed {name}: {len(w.swipes):,} swipes in {elapsed:.1f}s "
            f"({len(w.swipes) / elapsed:,.0f} swipes/s, COPY)")
    results = {}
    plan = [("ours", "small"), ("ours", "large"), ("naive", "small")]
    if not args.skip_naive_large:
      plan.append(("naive", "large"))
    for method, name in plan:
      out = os.path.join(work, f"{method}-{name}")
      r = run_child(method, urls[name], out)
      results[(method, name)] = r
      shutil.rmtree(out, ignore_errors=True)
      print(f"{method:5s} {name:5s}: {r['rows']:>9,} rows in {r['seconds']:6.1f}s = "
            f"{r['rows'] / r['seconds']:>8,.0f} rows/s; peak RSS {r['peak_rss_mb']:,.0f} MB "
            f"(after imports {r['rss_after_imports_mb']:,.0f} MB)")
    print("\nsummary")
    for name in ("small", "large"):
      if ("naive", name) in results:
        o, n = results[("ours", name)], results[("naive", name)]
        print(f"  {name}: throughput ours/naive = "
              f"{(o['rows'] / o['seconds']) / (n['rows'] / n['seconds']):.1f}x (target >= 2x); "
              f"peak RSS ours/naive = {o['peak_rss_mb'] / n['peak_rss_mb']:.2f}")
    s, l = results[("ours", "small")], results[("ours", "large")]
    growth = l["peak_rss_mb"] / s["peak_rss_mb"] - 1
    print(f"  ours peak RSS {s['rows']:,} -> {l['rows']:,} swipes: {s['peak_rss_mb']:,.0f} -> "
          f"{l['peak_rss_mb']:,.0f} MB ({growth:+.1%}; target within 20%)")
  finally:
    if server is not None:
      server.cleanup()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
