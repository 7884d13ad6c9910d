#!/usr/bin/env python3
"""Exposure control in the A/B simulator: Gini and match rate, side by side with feature matching.

Each recommender serves 100 % of the users of a synthetic world for --days
simulated days (both arms of an A/A experiment, so no other recommender competes
for attention), under the config's eligibility rules. Reported per recommender
(means over both arms):

  gini           Gini of impressions over ALL users (0 = equal exposure)
  like           mean hidden P(u likes v) of the shown pairs
  match          mean P(u likes v) P(v likes u) (v's observed back-swipe when known)
  match_limited  the same under limited attention: each user answers at most
                 --attention likes a day (synthetic.answered_share), what makes
                 concentration costly in a dating market

Baseline: feature matching (the config's baseline terms), named in the ratios.
Target of the exposure control: Gini <= feature matching's, match_limited >= the
model's without control.

  python benchmarks/bench_exposure.py --world_dir=/tmp/world --run_dir=/tmp/run \
      --caps=10,20 --hubness=0.5 --days=7
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402

import numpy as np  # noqa: E402

from tfrs_two_tower import config as config_lib  # noqa: E402
from tfrs_two_tower import rules as rules_lib  # noqa: E402
from tfrs_two_tower.abtest import assignment  # noqa: E402
from tfrs_two_tower.abtest import simulator  # noqa: E402
from tfrs_two_tower.data import synthetic  # noqa: E402
from tfrs_two_tower.evaluation import metrics  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--world_dir", required=True)
  parser.add_argument("--run_dir", required=True)
  parser.add_argument("--config", default=None)
  parser.add_argument("--days", type=int, default=7)
  parser.add_argument("--attention", type=float, default=None,
                      help="likes a user answers per day (default: the world's feed size)")
  parser.add_argument("--caps", default="10,20", help="max impressions per candidate per day")
  parser.add_argument("--hubness", default="0.5", help="hubness betas")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  world = synthetic.World.load(args.world_dir)
  config = config_lib.load_config(args.config)
  caps = [int(c) for c in args.caps.split(",") if c]
  betas = [float(b) for b in args.hubness.split(",") if b]
  attention = args.attention or float(world.params.feed_size)
  one_way = simulator.two_tower(world, args.run_dir)
  reciprocal = simulator.two_tower(world, args.run_dir, reciprocal=True)
  recommenders = {"feature_matching": simulator.feature_matching(world, config),
                  "model": one_way, "model:reciprocal": reciprocal}
  for beta in betas:
    recommenders[f"model:hub{beta:g}"] = simulator.with_exposure_control(
        one_way, rules_lib.Exposure(hubness_beta=beta))
  for cap in caps:
    exposure = rules_lib.Exposure(max_impressions_per_day=cap)
    recommenders[f"model:cap{cap}"] = simulator.with_exposure_control(one_way, exposure)
    recommenders[f"model:reciprocal:cap{cap}"] = simulator.with_exposure_control(reciprocal,
                                                                                exposure)
    for beta in betas:
      recommenders[f"model:hub{beta:g}:cap{cap}"] = simulator.with_exposure_control(
          one_way, rules_lib.Exposure(hubness_beta=beta, max_impressions_per_day=cap))

  experiment = assignment.Experiment.from_weights("exposure", {"a": 1, "b": 1})
  params = simulator.SimulationParams(days=args.days, seed=args.seed,
                                      rules=simulator.world_rules(world, config),
                                      attention_per_day=attention)
  n = len(world.profiles)
  print(f"world {args.world_dir}: {n} users, {args.days} days, 100 % traffic per recommender, "
        f"attention {attention:g} likes/day, eligibility {config.eligibility.names}")
  rows = {}
  for name, recommender in recommenders.items():
    sim = simulator.simulate(world, {"a": recommender, "b": recommender}, experiment, params,
                             log=lambda *a: None)
    shown = np.bincount(world.user_index(sim.swipes["swipee_id"]), minlength=n)
    mean = lambda d: float(np.mean(list(d.values())))  # noqa: E731
    rows[name] = (float(metrics.gini(shown[None, :].astype(float))[0]),
                  mean(sim.true_like_probability), mean(sim.true_match_probability),
                  mean(sim.true_match_probability_limited), len(sim.swipes))
  base = rows["feature_matching"]
  print(f"{'recommender':28s} {'gini':>6s} {'like':>6s} {'match':>7s} {'match_lim':>9s} "
        f"{'shown':>7s}   ratios to feature_matching: gini, match_limited")
  for name, (gini, like, match, limited, count) in rows.items():
    print(f"{name:28s} {gini:6.3f} {like:6.3f} {match:7.4f} {limited:9.4f} {count:7d}   "
          f"{gini / base[0]:.2f}x, {limited / base[3]:.2f}x")


if __name__ == "__main__":
  main()
