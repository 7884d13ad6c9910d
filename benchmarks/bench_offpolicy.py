#!/usr/bin/env python3
"""Off-policy estimates against the truth: the default world with an exploring feed.

For each exploration rate eps the default world (5000 users, 120 days) is generated
with `WorldParams(exploration=eps)`: a feed is, with probability eps, F profiles
drawn uniformly from the viewer's eligible catalogue (the config's eligibility
rules; step 5 of `data/synthetic.py`), and the feed logs what it showed with the
exact propensity. A model is trained once, on the world of `--main_epsilon`, and
applied to every world (same users; the eps worlds differ in their swipes).
Every ranking is evaluated on ONE kind of list: its whole-catalogue top 10 per
user (eligibility rules applied, swipes before the split excluded) -- the
evaluation's lists, which the off-policy estimators score at every logged feed,
and the lists the A/B simulator's arms show (same rules, k = 10 per app open,
already-swiped excluded). Printed side by side, for the trained model and feature
matching:

  1. off-policy IPS / SNIPS / DR estimates of like rate@10 and match rate@10 of
     those lists vs the oracle truth of the same lists (is it inside the 95 % CI?),
     and their support (matched impressions, ESS, largest weight); match estimates
     the log cannot support (back-like observed for < half the listed pairs) are
     refused, and printed beside the refusal as they would have been, against the truth;
  2. the model's lift over feature matching: off-policy, oracle (same lists),
     oracle (the evaluation's per-user lists), the A/B simulator (14 days, 50/50:
     true like probability of each user's first feed -- the same top 10 -- and of
     every feed, and the observed like share), impression-conditioned (GAUC,
     precision/NDCG/match precision among shown) and the naive logged recall@10,
     each with whether it agrees in sign and within its CI with the truth and with
     the A/B simulator;
  3. ESS and CI width vs eps;
  4. with --reciprocal_probe=rho: the main world again with reciprocal probes
     (`WorldParams.reciprocal_probe`, step 8 of `data/synthetic.py`), once firing on
     every impression with probability rho and once only on exploring feeds' impressions
     with rho / eps (the same expected number of probes), and the match rate@10 table
     side by side with the world without probes: truth, IPS / SNIPS / DR with 95 % CIs,
     ESS, and the model-over-feature-matching lift against the oracle and A/B lifts.

  python benchmarks/bench_offpolicy.py [--epsilons=0.05,0.1,0.2 --main_epsilon=0.1]
      [--reciprocal_probe=0.1]
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
from tfrs_two_tower.model import train_options  # noqa: E402
from tfrs_two_tower.stages import train_stage  # noqa: E402

K = 10
DEPTH = 3 * K  # list entries created after a feed was opened are skipped; deeper ones fill in
ESTIMATORS = ("ips", "snips", "dr")


def model_scorer(run, data):
  ids, embeddings = run.candidate_embeddings()
  rows = retrieval.id_index(np.asarray(ids, dtype=object)).get_indexer(data.candidate_ids)
  return retrieval.EmbeddingScorer(data.query_ids, data.candidate_ids,
                                   run.embed("query", data.query_entities), embeddings[rows],
                                   name="model")


PROBE_COLUMNS = {"probe_column": "probed", "probe_propensity_column": "probe_propensity"}


def probe_config():
  """The packaged config with the world's probe columns declared (`impressions`)."""
  raw = config_lib.load_config().raw
  raw["impressions"].update(PROBE_COLUMNS)
  return config_lib.parse_config(raw, source="packaged config + probe columns")


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
    result = evaluator.evaluate(scorer, data, [K, DEPTH], cal, oracle)
    out["results"][scorer.name] = result
    out["sums"][scorer.name], out["sections"][scorer.name] = off_policy.evaluate_ranking(
        scorer, feeds, data, reward, K, counts, oracle, result.top.candidates)
  out["off_lift"] = off_policy.lift(out["sums"]["model"], out["sums"]["feature_matching"],
                                    counts, {"all": np.ones(data.num_users, bool)})["all"]
  out["lift"] = evaluator.lift(out["results"]["model"], out["results"]["feature_matching"],
                               data, counts)["all"]
  # The match estimates as computed before the support rule, to show what it refuses.
  sums = out["sums"]
  out["raw_match"] = {name: {e: metrics.bootstrap_ratio(s.numerators[f"{e}_match"],
                                                        s.denominators[f"{e}_match"], counts)
                             for e in ESTIMATORS} for name, s in sums.items()}
  out["raw_match_lift"] = {e: metrics.bootstrap_ratio_lift(
      sums["model"].numerators[f"{e}_match"], sums["model"].denominators[f"{e}_match"],
      sums["feature_matching"].numerators[f"{e}_match"],
      sums["feature_matching"].denominators[f"{e}_match"], counts) for e in ESTIMATORS}
  return out


def ab_lift(world, run_path, days, bootstrap):
  """The A/B simulator with the evaluation's rules (eligibility, k = K per app open,
  already-swiped excluded): lifts of the true like / match probability of the pairs each
  arm showed (every feed, and each user's first feed = the arm's top K), and of the
  observed like share, each with a bootstrap CI over users."""
  config = config_lib.load_config()
  experiment = assignment.Experiment.from_weights(
      "offpolicy_bench", [("control", 0.5), ("treatment", 0.5)])
  sim = simulator.simulate(
      world, {"control": simulator.feature_matching(world, config),
              "treatment": simulator.two_tower(world, run_path)},
      experiment, simulator.SimulationParams(days=days, feed_size=K,
                                             rules=simulator.world_rules(world, config)),
      log=lambda *a: None)
  ids = world.profiles["id"].astype(str).to_numpy()
  index = retrieval.id_index(ids)
  counts = metrics.bootstrap_counts(ids.size, bootstrap, seed=1)
  shown = sim.impressions
  viewer = index.get_indexer(shown["viewer_id"].to_numpy())
  day = shown["feed_id"].str.split(":").str[1].astype(int).to_numpy()
  first_day = np.full(ids.size, np.iinfo(np.int64).max)
  np.minimum.at(first_day, viewer, day)
  p_like = world.like_probability(shown["viewer_id"].to_numpy(), shown["profile_id"].to_numpy())
  p_match = p_like * world.like_probability(shown["profile_id"].to_numpy(),
                                            shown["viewer_id"].to_numpy())
  swiper = index.get_indexer(sim.swipes["swiper_id"].to_numpy())
  liked = (sim.swipes["action"] != "pass").to_numpy(np.float64)
  rows = {"first feed": (viewer, day == first_day[viewer]),
          "every feed": (viewer, np.ones(viewer.size, bool))}
  out = {}
  for name, (users, keep) in rows.items():
    for target, values in (("like", p_like), ("match", p_match)):
      out[f"{target}, {name}"] = _arm_lift(sim.arms, users[keep], values[keep], ids.size,
                                           counts)
  out["observed like share"] = _arm_lift(sim.arms, swiper, liked, ids.size, counts)
  return out, int(len(sim.swipes))


def _arm_lift(arms, users, values, n, counts):
  """Treatment over control of the pooled mean of `values` [P] by user, bootstrap CI."""
  sums = {a: (np.bincount(users[arms[users] == a], weights=values[arms[users] == a],
                          minlength=n),
              np.bincount(users[arms[users] == a], minlength=n).astype(np.float64))
          for a in ("control", "treatment")}
  return metrics.bootstrap_ratio_lift(*sums["treatment"], *sums["control"], counts)


def inside(est, truth):
  if est.get("ci") is None:  # refused: no estimate
    return "n/a"
  low, high = est["ci"]
  if low is None:
    return "n/a"
  return "yes" if low <= truth <= high else "**NO**"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
  parser.add_argument("--epsilons", default="0.05,0.1,0.2")
  parser.add_argument("--main_epsilon", type=float, default=0.1)
  parser.add_argument("--exploration_local", type=float,
                      default=synthetic.WorldParams.exploration_local)
  parser.add_argument("--uniform_epsilons", default="0.1",
                      help="also worlds whose exploring feed draws uniformly from the "
                           "whole eligible catalogue (exploration_local 0), for comparison")
  parser.add_argument("--num_users", type=int, default=synthetic.WorldParams.num_users)
  parser.add_argument("--days", type=int, default=synthetic.WorldParams.days)
  parser.add_argument("--epochs", type=int, default=train_options.TrainOptions.epochs)
  parser.add_argument("--bootstrap", type=int, default=500)
  parser.add_argument("--ab_days", type=int, default=14)
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--reciprocal_probe", type=float, default=0.0,
                      help="also the main world with reciprocal probes: rho on every "
                           "impression, and rho / eps on exploring feeds' impressions only")
  args = parser.parse_args()
  local = args.exploration_local
  worlds_to_make = sorted({(float(e), local) for e in args.epsilons.split(",")}
                          | {(args.main_epsilon, local)}
                          | {(float(e), 0.0) for e in args.uniform_epsilons.split(",") if e})
  probes = {}  # scope -> rho of the probed copies of the main world
  if args.reciprocal_probe > 0:
    probes = {"all": args.reciprocal_probe,
              "explored": min(1.0, args.reciprocal_probe / args.main_epsilon)}
  work = args.workdir or tempfile.mkdtemp(prefix="bench_offpolicy_")
  config = config_lib.load_config()
  worlds, started = {}, time.time()
  variants = [(key, None) for key in worlds_to_make] + [((args.main_epsilon, local), scope)
                                                        for scope in probes]
  for (eps, share), scope in variants:
    suffix = f"_probes_{scope}{probes[scope]}" if scope else ""
    path = os.path.join(work, f"dataset_eps{eps}_local{share}{suffix}")
    world = synthetic.generate_world(synthetic.WorldParams(
        num_users=args.num_users, days=args.days, exploration=eps, exploration_local=share,
        reciprocal_probe=probes.get(scope, 0.0), probe_scope=scope or "all"), config=config)
    worlds[eps, share, scope] = world, path
    if not os.path.exists(path):
      synthetic.write_world_dataset(world, probe_config() if scope else config, path)
  print(f"worlds and datasets: {time.time() - started:.0f}s ({args.num_users} users, "
        f"{args.days} days, (eps, local share) {worlds_to_make}, probes {probes})")
  main = (args.main_epsilon, local)
  run_path = os.path.join(work, f"run_eps{args.main_epsilon}_local{local}")
  if not os.path.exists(run_path):
    started = time.time()
    train_stage.run(os.path.join(work, f"dataset_eps{main[0]}_local{main[1]}"), run_path,
                    train_options.TrainOptions(epochs=args.epochs), log=lambda *a: None)
    print(f"trained on eps {args.main_epsilon}: {time.time() - started:.0f}s")
  run = run_lib.open_run(run_path)
  figures, probed = {}, {}
  for (eps, share, scope), (world, path) in worlds.items():
    started = time.time()
    figure = evaluate_world(world, path, run, args.bootstrap)
    if scope:
      probed[scope] = figure
    else:
      figures[eps, share] = figure
    print(f"evaluated eps {eps}, local share {share}, probes {scope}: "
          f"{time.time() - started:.0f}s")
  worlds = {key[:2]: world for key, (world, _) in worlds.items() if key[2] is None}

  main_fig = figures[main]
  print(f"\n== 1. Estimates vs the truth of the same lists (eps {args.main_epsilon}, local "
        f"share {local}, "
        f"whole-catalogue top {K}, {args.bootstrap} bootstrap resamples over users) ==")
  print(f"log: {main_fig['feeds'].notes}")
  print("| ranker | target | IPS | SNIPS | DR | oracle (same lists) | oracle in CI "
        "(IPS/SNIPS/DR) | matched | ESS | max weight | skipped (not yet created) |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for name, section in main_fig["sections"].items():
    seg, sup = section["segments"]["all"], section["support"]
    for target in ("like", "match"):
      truth = seg[f"oracle_{target}"]["value"]
      print(f"| {name} | {target} rate@{K} | " + " | ".join(
          ("not supported (below)" if seg[f"{e}_{target}"].get("reason")
           else report.format_estimate(seg[f"{e}_{target}"])) for e in ESTIMATORS)
          + f" | {truth:.3f} | " + "/".join(inside(seg[f"{e}_{target}"], truth)
                                          for e in ESTIMATORS)
          + f" | {sup['matched_impressions']} | {sup['effective_sample_size']:.0f} | "
          f"{sup['max_weight']:.0f} | {sup['not_yet_created']} |")
  print("\nMatch support: share of the back-like observed (not modelled), and the match "
        "estimates without the support rule (what it refuses):")
  print("| ranker | back observed: list slots / weighted matched rows | match supported | "
        "IPS | SNIPS | DR (no rule) | oracle | oracle in CI |")
  print("|---|---|---|---|---|---|---|---|")
  for name, section in main_fig["sections"].items():
    sup, raw = section["support"], main_fig["raw_match"][name]
    truth = section["segments"]["all"]["oracle_match"]["value"]
    shares = sup["back_observed_share"]
    print(f"| {name} | {shares.get('list_slots', float('nan')):.1%} / "
          f"{shares['weighted_matched_rows']:.1%} | "
          f"{'yes' if sup['match_supported'] else '**no: refused**'} | "
          + " | ".join(report.format_estimate(raw[e]) for e in ESTIMATORS)
          + f" | {truth:.3f} | " + "/".join(inside(raw[e], truth) for e in ESTIMATORS) + " |")

  print(f"\n== 2. Lift of the model over feature matching (eps {args.main_epsilon}) ==")
  ab, ab_swipes = ab_lift(worlds[main], run_path, args.ab_days, args.bootstrap)
  if probed:
    match_table(args, {"none": main_fig, **probed}, {"none": 0.0, **probes}, ab)
  off, lift = main_fig["off_lift"], main_fig["lift"]
  same = {t: off[f"oracle_{t}"] for t in ("like", "match")}
  per_user = {t: lift[f"oracle_{t}@{K}"] for t in ("like", "match")}
  rows = []
  for target in ("like", "match"):
    for e in ESTIMATORS:
      est = off[f"{e}_{target}"]
      if est.get("value") is None:  # refused: show the number it would have given
        rows.append((f"off-policy {e.upper()} {target} rate@{K}: REFUSED, not supported "
                     "(the figure without the rule)", main_fig["raw_match_lift"][e], target))
      else:
        rows.append((f"off-policy {e.upper()} {target} rate@{K}", est, target))
  rows += [(f"oracle {t} rate@{K}, same lists, feed-weighted (truth)", same[t], t)
           for t in ("like", "match")]
  rows += [(f"oracle {t}@{K}, the evaluation's lists, user-weighted (truth)", per_user[t], t)
           for t in ("like", "match")]
  rows += [(f"A/B simulator ({args.ab_days} days, {ab_swipes} swipes): true {name}", est,
            name.split(",")[0]) for name, est in ab.items() if name != "observed like share"]
  rows += [("A/B simulator: observed like share", ab["observed like share"], "like"),
           ("impression-conditioned GAUC", lift["gauc"], "like"),
           ("impression-conditioned like precision among shown", lift["shown_precision"],
            "like"),
           ("impression-conditioned NDCG among shown", lift["shown_ndcg"], "like"),
           ("impression-conditioned match precision among shown",
            lift["shown_match_precision"], "match"),
           (f"naive logged recall@{K} (biased toward the logging feed)", lift[f"recall@{K}"],
            "like")]
  print(f"truth = the oracle lift of the same lists ({report.format_lift(same['like'])} like, "
        f"{report.format_lift(same['match'])} match); A/B = the simulator's true lift of each "
        "user's first feed (the same top 10): "
        f"{report.format_lift(ab['like, first feed'])} like, "
        f"{report.format_lift(ab['match, first feed'])} match")
  print("| estimate | lift | same sign as truth | truth in CI | A/B in CI | CIs overlap A/B |")
  print("|---|---|---|---|---|---|")
  for label, est, target in rows:
    truth, reference = same[target]["value"], ab[f"{target}, first feed"]
    agrees = "yes" if np.sign(est["value"]) == np.sign(truth) else "**NO**"
    low, high = est["ci"]
    overlap = ("n/a" if low is None else "yes" if low <= reference["ci"][1]
               and reference["ci"][0] <= high else "**NO**")
    print(f"| {label} | {report.format_lift(est)} | {agrees} | {inside(est, truth)} | "
          f"{inside(est, reference['value'])} | {overlap} |")

  print(f"\n== 3. Support, interval width and agreement vs eps (like rate@{K}; A/B = the "
        f"first-feed lift above, {report.format_lift(ab['like, first feed'])}) ==")
  print("| eps | local share | feeds | matched model / FM | ESS model / FM | CI width IPS / "
        "SNIPS / DR (model) | DR lift | its CI width | oracle lift (same lists) | truth in CI "
        "| A/B in CI |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for (eps, share), fig in figures.items():
    seg = fig["sections"]["model"]["segments"]["all"]
    sup = {n: fig["sections"][n]["support"] for n in ("model", "feature_matching")}
    widths = [seg[f"{e}_like"]["ci"][1] - seg[f"{e}_like"]["ci"][0] for e in ESTIMATORS]
    dr, truth = fig["off_lift"]["dr_like"], fig["off_lift"]["oracle_like"]
    print(f"| {eps} | {share} | {sup['model']['feeds']} | "
          f"{sup['model']['matched_impressions']} / "
          f"{sup['feature_matching']['matched_impressions']} | "
          f"{sup['model']['effective_sample_size']:.0f} / "
          f"{sup['feature_matching']['effective_sample_size']:.0f} | "
          + " / ".join(f"{w:.3f}" for w in widths)
          + f" | {report.format_lift(dr)} | {dr['ci'][1] - dr['ci'][0]:.0%} | "
          f"{report.format_lift(truth)} | {inside(dr, truth['value'])} | "
          f"{inside(dr, ab['like, first feed']['value'])} |")
  print(f"\nworkdir: {work}")


def match_table(args, figures, rhos, ab):
  """Section 4: match rate@10 with and without reciprocal probes, side by side."""
  reference = ab["match, first feed"]
  print(f"\n== 4. Match rate@{K} with and without reciprocal probes (eps {args.main_epsilon}, "
        f"local share {args.exploration_local}; A/B match lift, first feed: "
        f"{report.format_lift(reference)}) ==")
  print("probes: none = the log without probes (refused: the figures without the support "
        "rule); all = rho on every impression; explored = rho on exploring feeds' impressions "
        "only (same expected number of probes)")
  print("| probes | rho | ranker | oracle (same lists) | IPS | SNIPS | DR | oracle in CI "
        "(IPS/SNIPS/DR) | matched probed | match ESS | max weight | unanswered |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for scope, fig in figures.items():
    for name, section in fig["sections"].items():
      seg, sup = section["segments"]["all"], section["support"]
      truth = seg["oracle_match"]["value"]
      est = {e: (fig["raw_match"][name][e] if seg[f"{e}_match"].get("value") is None
                 else seg[f"{e}_match"]) for e in ESTIMATORS}
      probe = sup.get("probes", {})
      ess = probe.get("effective_sample_size", sup["effective_sample_size"])
      print(f"| {scope} | {rhos[scope]:g} | {name} | {truth:.3f} | "
            + " | ".join(report.format_estimate(est[e]) for e in ESTIMATORS)
            + " | " + "/".join(inside(est[e], truth) for e in ESTIMATORS)
            + f" | {probe.get('matched_probed_impressions', '-')} | {ess:.0f} | "
            f"{probe.get('max_weight', sup['max_weight']):.0f} | "
            f"{probe.get('unanswered_probes', '-')} |")
  print("\n| probes | estimate | model over FM lift | oracle lift (same lists) | same sign "
        "| oracle in CI | A/B in CI | CI width |")
  print("|---|---|---|---|---|---|---|---|")
  for scope, fig in figures.items():
    truth = fig["off_lift"]["oracle_match"]
    for e in ESTIMATORS:
      est = fig["off_lift"][f"{e}_match"]
      if est.get("value") is None:
        est = fig["raw_match_lift"][e]
      low, high = est["ci"]
      agrees = "yes" if np.sign(est["value"]) == np.sign(truth["value"]) else "**NO**"
      print(f"| {scope} | {e.upper()} | {report.format_lift(est)} | "
            f"{report.format_lift(truth)} | {agrees} | {inside(est, truth['value'])} | "
            f"{inside(est, reference['value'])} | {high - low:.0%} |")


if __name__ == "__main__":
  main()
