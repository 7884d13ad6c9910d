#!/usr/bin/env python3
"""Synthetic world generation speed and memory, and how they scale.

Prints swipes generated per second and peak RSS for the default world (the
baseline) and for a larger world, each in its own subprocess, and the ratio of
the large world's throughput to the default's (1.0 = perfectly linear scaling).

  python benchmarks/bench_synthetic.py                      # default vs 200k users
  python benchmarks/bench_synthetic.py --users=1000000      # >= 50M swipes
"""
import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, sys, time
import tfrs_two_tower
from tfrs_two_tower.data import synthetic
params = synthetic.WorldParams(num_users=int(sys.argv[1]), days=int(sys.argv[2]))
t = time.time()
world = synthetic.generate_world(params)
elapsed = time.time() - t
print(json.dumps({"users": params.num_users, "days": params.days, "swipes": len(world.swipes),
                  "seconds": elapsed, "swipes_per_second": len(world.swipes) / elapsed,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(users: int, days: int) -> dict:
  out = subprocess.run([sys.executable, "-c", CHILD, str(users), str(days)], check=True,
                       capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--users", type=int, default=200_000)
  parser.add_argument("--days", type=int, default=120)
  args = parser.parse_args()
  baseline = measure(5000, 120)
  large = measure(args.users, args.days)
  for row in (baseline, large):
    print(f"{row['users']:>9,} users {row['days']} days: {row['swipes']:>12,} swipes in "
          f"{row['seconds']:7.1f}s = {row['swipes_per_second']:>12,.0f} swipes/s, "
          f"peak RSS {row['peak_rss_mb']:,.0f} MB")
  print(f"throughput ratio large/default: {large['swipes_per_second'] / baseline['swipes_per_second']:.2f}")
  print(f"extrapolated time for 50M swipes at the large world's rate: "
        f"{50e6 / large['swipes_per_second'] / 60:.1f} min")


if __name__ == "__main__":
  main()
