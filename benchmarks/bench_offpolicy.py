#!/usr/bin/env python3
"""Off-policy estimates against the truth: the default world with an exploring feed.

For each exploration rate eps the default world (5000 users, 120 days) is generated
with `WorldParams(exploration=eps)`: a feed is, with probability eps, a uniformly
random `feed_size` of its candidate pool (step 5 of `data/synthetic.py`), and the
feed writes the impressions log with propensities. A model is trained once, on the
world of `--main_epsilon`, and applied to every world (same users; the eps worlds
differ in their swipes). Printed side by side, for the trained model and feature
matching (the logging feed's own ranker):

  1. off-policy IPS / SNIPS / DR estimates of like rate@10 and match rate@10 of the
     feed's pools re-ranked by each, vs the oracle truth of the same lists (is it
     inside the 95 % CI?), and their support (matched impressions, ESS);
  2. the model's lift over feature matching: off-policy, oracle (same lists),
     oracle of the whole-catalogue lists, the A/B simulator (14 days, 50/50, the
     arms' true like probability and observed like share), impression-conditioned
     (GAUC, precision/NDCG/match precision among shown) and the naive logged
     recall@10 -- and which of them point the wrong way;
  3. ESS and CI width vs eps.

  python benchmarks/bench_offpolicy.py [--epsilons=0.05,0.1,0.2 --main_epsilon=0.1]
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from tfrs_two_tower import config as config_lib  # noqa: E402
from tfrs_two_tower.abtest import assignment  # noqa: E402
from tfrs_two_tower.abtest import simulator  # noqa: E402
from tfrs_two_tower.data import impressions  # noqa: E402
from tfrs_two_tower.data import reader  # noqa: E402
from tfrs_two_tower.data import synthetic  # noqa: E402
from tfrs_two_tower.evaluation import baselines  # noqa: E402
from tfrs_two_tower.evaluation import evaluator  # noqa: E402
from tfrs_two_tower.evaluation import metrics  # noqa: E402
from tfrs_two_tower.evaluation import off_policy  # noqa: E402
from tfrs_two_tower.evaluation import report  # noqa: E402
from tfrs_two_tower.evaluation import retrieval  # noqa: E402
from tfrs_two_tower.model import run_dir as run_lib  # noqa: E402
from tfrs_two_tower.stages import train_stage  # noqa: E402

K = 10
ESTIMATORS = ("ips", "snips", "dr")


def model_scorer(run, data):
  ids, embeddings = run.candidate_embeddings()
  rows = retrieval.id_index(np.asarray(ids, dtype=object)).get_indexer(data.candidate_ids)
  return retrieval.EmbeddingScorer(data.query_ids, data.candidate_ids,
                                   run.embed("query", data.query_entities), embeddings[rows],
                                   name="model")


def evaluate_world(world, dataset_dir, run, bootstrap):
  """Off-policy and impression-conditioned figures of model vs feature matching."""
  dataset = reader.open_dataset(dataset_dir)
  data = evaluator.prepare(dataset)
  model = model_scorer(run, data)
  fm = baselines.FeatureMatching(dataset.config, data.query_entities,
                                 data.candidate_entities, data.eligible)
  counts = metrics.bootstrap_counts(data.num_users, bootstrap, seed=0)
  calibration = evaluator.fit_calibration(model, data)
  feeds = off_policy.logged_feeds(impressions.read(dataset), data, impressions.FILE)
  reward = off_policy.reward_model(model, calibration, feeds, data, two_sided=True)
  oracle = world.like_probability
  out = {"feeds": feeds, "sums": {}, "sections": {}, "results": {}}
  for scorer, cal in ((model, calibration), (fm, evaluator.fit_calibration(fm, data))):
    result = evaluator.evaluate(scorer, data, [K], cal, oracle)
    out["results"][scorer.name] = result
    out["sums"][scorer.name], out["sections"][scorer.name] = off_policy.evaluate_ranking(
        scorer, feeds, data, reward, K, counts, oracle, result.top.candidates)
  out["off_lift"] = off_policy.lift(out["sums"]["model"], out["sums"]["feature_matching"],
                                    counts, {"all": np.ones(data.num_users, bool)})["all"]
  out["lift"] = evaluator.lift(out["results"]["model"], out["results"]["feature_matching"],
                               data, counts)["all"]
  return out


def ab_lift(world, run_path, days, bootstrap):
  """The A/B simulator: true like probability of each arm's shown pairs, observed like share."""
  config = config_lib.load_config()
  experiment = assignment.Experiment.from_weights(
      "offpolicy_bench", [("control", 0.5), ("treatment", 0.5)])
  sim = simulator.simulate(world, {"control": simulator.feature_matching(world, config),
                                   "treatment": simulator.two_tower(world, run_path)},
                           experiment, simulator.SimulationParams(days=days), log=lambda *a: None)
  ids = world.profiles["id"].astype(str).to_numpy()
  user = retrieval.id_index(ids).get_indexer(sim.swipes["swiper_id"].to_numpy())
  liked = (sim.swipes["action"] != "pass").to_numpy(np.float64)
  arm = sim.arms[user]
  counts = metrics.bootstrap_counts(ids.size, bootstrap, seed=1)
  n = {a: np.bincount(user[arm == a], weights=liked[arm == a], minlength=ids.size)
       for a in ("control", "treatment")}
  d = {a: np.bincount(user[arm == a], minlength=ids.size).astype(np.float64)
       for a in ("control", "treatment")}
  observed = metrics.bootstrap_ratio_lift(n["treatment"], d["treatment"], n["control"],
                                          d["control"], counts)
  true = {m: getattr(sim, f"true_{m}_probability")["treatment"]
          / getattr(sim, f"true_{m}_probability")["control"] - 1 for m in ("like", "match")}
  return observed, true, int(d["control"].sum() + d["treatment"].sum())


def inside(est, truth):
  low, high = est["ci"]
  return "yes" if low is not None and low <= truth <= high else "NO"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epsilons", default="0.05,0.1,0.2")
  parser.add_argument("--main_epsilon", type=float, default=0.1)
  parser.add_argument("--num_users", type=int, default=synthetic.WorldParams.num_users)
  parser.add_argument("--days", type=int, default=synthetic.WorldParams.days)
  parser.add_argument("--epochs", type=int, default=train_stage.TrainOptions.epochs)
  parser.add_argument("--bootstrap", type=int, default=500)
  parser.add_argument("--ab_days", type=int, default=14)
  parser.add_argument("--workdir", default=None)
  args = parser.parse_args()
  epsilons = sorted({float(e) for e in args.epsilons.split(",")} | {args.main_epsilon})
  work = args.workdir or tempfile.mkdtemp(prefix="bench_offpolicy_")
  config = config_lib.load_config()
  worlds, started = {}, time.time()
  for eps in epsilons:
    path = os.path.join(work, f"dataset_eps{eps}")
    worlds[eps] = synthetic.generate_world(synthetic.WorldParams(
        num_users=args.num_users, days=args.days, exploration=eps))
    if not os.path.exists(path):
      synthetic.write_world_dataset(worlds[eps], config, path)
  print(f"worlds and datasets: {time.time() - started:.0f}s ({args.num_users} users, "
        f"{args.days} days, eps {epsilons})")
  run_path = os.path.join(work, f"run_eps{args.main_epsilon}")
  if not os.path.exists(run_path):
    started = time.time()
    train_stage.run(os.path.join(work, f"dataset_eps{args.main_epsilon}"), run_path,
                    train_stage.TrainOptions(epochs=args.epochs), log=lambda *a: None)
    print(f"trained on eps {args.main_epsilon}: {time.time() - started:.0f}s")
  run = run_lib.open_run(run_path)
  figures = {}
  for eps in epsilons:
    started = time.time()
    figures[eps] = evaluate_world(worlds[eps], os.path.join(work, f"dataset_eps{eps}"), run,
                                  args.bootstrap)
    print(f"evaluated eps {eps}: {time.time() - started:.0f}s")

  main_fig = figures[args.main_epsilon]
  print(f"\n== 1. Estimates vs the truth of the same lists (eps {args.main_epsilon}, k {K}, "
        f"{args.bootstrap} bootstrap resamples over users) ==")
  print(f"log: {main_fig['feeds'].notes}")
  print("| ranker | target | IPS | SNIPS | DR | oracle (same lists) | oracle in CI "
        "(IPS/SNIPS/DR) | matched | ESS | catalogue overlap |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for name, section in main_fig["sections"].items():
    seg, sup = section["segments"]["all"], section["support"]
    for target in ("like", "match"):
      truth = seg[f"oracle_{target}"]["value"]
      print(f"| {name} | {target} rate@{K} | " + " | ".join(
          report.format_estimate(seg[f"{e}_{target}"]) for e in ESTIMATORS)
          + f" | {truth:.3f} | " + "/".join(inside(seg[f"{e}_{target}"], truth)
                                          for e in ESTIMATORS)
          + f" | {sup['matched_impressions']} | {sup['effective_sample_size']:.0f} | "
          f"{section['catalogue_overlap']} |")

  print(f"\n== 2. Lift of the model over feature matching (eps {args.main_epsilon}) ==")
  observed, true, ab_swipes = ab_lift(worlds[args.main_epsilon], run_path, args.ab_days,
                                      args.bootstrap)
  off, lift = main_fig["off_lift"], main_fig["lift"]
  # Each row's truth: the oracle lift of the same lists and target (pools re-ranked for the
  # off-policy rows; whole-catalogue lists for the rest).
  same = {t: off[f"oracle_{t}"] for t in ("like", "match")}
  whole = {"like": lift[f"oracle_like@{K}"], "match": lift[f"oracle_match@{K}"]}
  rows = []
  for target in ("like", "match"):
    for e in ESTIMATORS:
      rows.append((f"off-policy {e.upper()} {target} rate@{K}", off[f"{e}_{target}"],
                   same[target]))
    rows.append((f"oracle {target} rate@{K}, same lists (truth)", same[target], same[target]))
  rows += [(f"oracle like@{K}, whole-catalogue lists (truth)", whole["like"], whole["like"]),
           (f"oracle match@{K}, whole-catalogue lists (truth)", whole["match"], whole["match"]),
           (f"A/B simulator ({args.ab_days} days, {ab_swipes} swipes): observed like share",
            observed, whole["like"]),
           ("A/B simulator: true like probability of shown pairs",
            {"value": true["like"], "ci": [None, None]}, whole["like"]),
           ("A/B simulator: true match probability of shown pairs",
            {"value": true["match"], "ci": [None, None]}, whole["match"]),
           ("impression-conditioned GAUC", lift["gauc"], whole["like"]),
           ("impression-conditioned like precision among shown", lift["shown_precision"],
            whole["like"]),
           ("impression-conditioned NDCG among shown", lift["shown_ndcg"], whole["like"]),
           ("impression-conditioned match precision among shown",
            lift["shown_match_precision"], whole["match"]),
           (f"naive logged recall@{K} (biased toward the logging feed)", lift[f"recall@{K}"],
            whole["like"])]
  print("| estimate | lift | truth it estimates | same sign | truth inside the CI |")
  print("|---|---|---|---|---|")
  for label, est, truth in rows:
    agrees = "yes" if np.sign(est["value"]) == np.sign(truth["value"]) else "**NO**"
    covered = inside(est, truth["value"]) if est["ci"][0] is not None else "n/a"
    print(f"| {label} | {report.format_lift(est)} | {report.format_lift(truth)} | {agrees} | "
          f"{covered} |")

  print(f"\n== 3. Support and interval width vs eps (model, like rate@{K}) ==")
  print("| eps | feeds | matched | ESS | IPS CI width | SNIPS CI width | DR CI width | "
        "DR lift CI width | DR lift | oracle lift (same lists) |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for eps, fig in figures.items():
    seg = fig["sections"]["model"]["segments"]["all"]
    sup = fig["sections"]["model"]["support"]
    widths = [seg[f"{e}_like"]["ci"][1] - seg[f"{e}_like"]["ci"][0] for e in ESTIMATORS]
    dr = fig["off_lift"]["dr_like"]
    print(f"| {eps} | {sup['feeds']} | {sup['matched_impressions']} | "
          f"{sup['effective_sample_size']:.0f} | " + " | ".join(f"{w:.3f}" for w in widths)
          + f" | {dr['ci'][1] - dr['ci'][0]:.0%} | {report.format_lift(dr)} | "
          f"{report.format_lift(fig['off_lift']['oracle_like'])} |")
  print(f"\nworkdir: {work}")


if __name__ == "__main__":
  main()
