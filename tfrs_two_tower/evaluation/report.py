"""Writes the evaluation report: report.json, report.md, PNG plots, TensorBoard summaries.

`report.json` holds every number as {"value", "ci": [low, high], ...}; report.md
renders the headline tables from it (baseline vs model, lift with CI, per
segment) and the verdict against the users' gates.
"""

import os
from typing import Dict, List, Optional

import numpy as np

from tfrs_two_tower import files
from tfrs_two_tower import rules as rules_lib
from tfrs_two_tower.evaluation import off_policy

# Defaults of the config's `verdict` (rules.DEFAULT_VERDICT): the users' AUC gate and their
# expected "+20-40 % accuracy" over feature matching.
DEFAULT_THRESHOLDS = dict(rules_lib.DEFAULT_VERDICT)
LIFT_ALARM = 10.0  # +1,000 %: a lift this large says more about the baseline than the model
HEADLINE_METRICS = ("auc", "gauc", "shown_precision", "shown_ndcg", "shown_match_precision",
                    "recall@{k}", "ndcg@{k}", "hit_rate@{k}", "mrr", "match_recall@{k}",
                    "success@{k}", "factorized_top{k}_accuracy", "log_loss",
                    "oracle_like@{k}", "oracle_match@{k}")


def verdict(report: Dict) -> Dict[str, object]:
  """The users' gates for each model (thresholds: `report["verdict_thresholds"]`, the
  config's `verdict`), judged by what the model's scores mean:

    one-way (P(u likes v), penalties and caps included): AUC > auc_gate, and the
      like-rate lift over feature matching by the best estimator the data supports
      (`answer`), at the smallest K (about one feed);
    reciprocal (a match score, not a like probability): no AUC gate; the MATCH
      lift of the same estimator.

  A gate "passes" when the whole 95 % interval is on the right side; logged recall
  is shown, never decisive. No lift is judged against a baseline whose lists broke
  the eligibility rules (`_baseline_error`), and a lift above LIFT_ALARM is flagged
  as a probable broken baseline (`_lift_alarm`).
  """
  k = min(report["k"])
  thresholds = _thresholds(report)
  baseline_error = _baseline_error(report)
  out = {}
  for name, rec in report["recommenders"].items():
    if rec["kind"] != "model":
      continue
    reciprocal = rec.get("mode") == "reciprocal"
    lifts = report["lifts"].get(name, {}).get("all", {})
    line, auc_pass = [], None
    if reciprocal:
      line.append("AUC gate not applied (a reciprocal score is not a like probability)")
    elif (rec["segments"]["all"]["auc"]["value"] is None
          and rec["segments"]["all"]["auc"].get("reason")):
      # The gate does not apply (e.g. likes-only data: no passes to separate).
      line.append(f"AUC {format_estimate(rec['segments']['all']['auc'])}: gate not applicable")
    else:
      auc = rec["segments"]["all"]["auc"]
      auc_pass = auc["ci"][0] is not None and auc["value"] > thresholds["auc_gate"]
      line.append(f"AUC {format_estimate(auc)} {'>' if auc_pass else '<='} "
                  f"{thresholds['auc_gate']}: {'PASS' if auc_pass else 'FAIL'}")
    lift_pass, alarm = None, None
    if baseline_error:
      line.append(baseline_error)
    else:
      lift_pass, lift_line = _lift_gate(report, name, "match" if reciprocal else "like")
      if lift_line:
        line.append(lift_line)
      oracle_metrics = ((f"oracle_match@{k}", f"oracle_like@{k}") if reciprocal
                        else (f"oracle_like@{k}", f"oracle_match@{k}"))
      parts = [f"{m} {format_lift(lifts[m])}" for m in oracle_metrics
               if lifts.get(m) and lifts[m]["value"] is not None]
      if parts:
        line.append("lift in the oracle's truth (free of the logging feed's bias): "
                    + ", ".join(parts))
      alarm = _lift_alarm(lifts)
      if alarm:
        line.append(alarm)
    out[name] = {"auc_gate": auc_pass, "lift_gate": lift_pass,
                 "judged_on": "match" if reciprocal else "like",
                 "alarm": alarm or baseline_error, "line": "; ".join(line)}
  return out


def _thresholds(report: Dict) -> Dict[str, float]:
  return {**DEFAULT_THRESHOLDS, **(report.get("verdict_thresholds") or {})}


def _expected(report: Dict) -> str:
  t = _thresholds(report)
  return f"users expected {t['expected_lift_low']:+.0%} to {t['expected_lift_high']:+.0%}"


def _baseline_error(report: Dict) -> Optional[str]:
  """Why no lift may be judged against the lift baseline, or None."""
  baseline = report["recommenders"].get(report.get("lift_baseline"))
  broken = (baseline or {}).get("eligibility_violations") or 0
  if broken:
    return (f"ERROR: {report['lift_baseline']}'s lists break the eligibility rules "
            f"({broken} listed pairs): no lift is judged against it")
  return None


def _lift_alarm(lifts: Dict) -> Optional[str]:
  """A warning when any lift exceeds LIFT_ALARM: more likely a broken baseline (e.g. a
  filter that matches nothing) than a better model."""
  big = sorted(m for m, est in lifts.items()
               if est and est.get("value") is not None and est["value"] > LIFT_ALARM)
  if not big:
    return None
  return (f"WARNING: lift above {LIFT_ALARM:+.0%} on {', '.join(big)}: probably a broken "
          "baseline (check its lists and the eligibility mapping), not a better model")


# -- the answer to the users' question: which estimator, why, under what assumptions --------

_OFF_POLICY_ASSUMPTIONS = [
    "logged propensities are the true probabilities that the feed showed each profile",
    "a profile's like does not depend on its position or on the rest of the feed",
    "every profile a ranking lists could be shown (the feed explores the whole eligible "
    "catalogue; lists fixed at the split time)",
    "match rate: with reciprocal probes in the log, from the probed impressions only (the "
    "probed profile's own swipe, weighted by 1 / probe propensity; an unanswered probe counts "
    "as no match); without probes, back-swipes never observed come from the run's calibrated "
    "P(like), and the match estimates are given only when the back-swipe is observed for most "
    "listed pairs (else refused, and the match lift is impression-conditioned match "
    "precision)"]
ASSUMPTIONS = {
    **{f"off_policy_{e}": _OFF_POLICY_ASSUMPTIONS for e in ("ips", "snips", "dr")},
    "impression_conditioned": [
        "users' swipes on what they were shown reflect their taste",
        "only re-ranking of what the feed showed is measured: profiles it never showed "
        "cannot count, for or against"],
}


def answer(report: Dict) -> Dict[str, Dict[str, object]]:
  """Per model: does it beat feature matching, by the best estimator the data supports.

  1. off-policy like rate@K, when the dataset has an exploring impressions log
     and both lists have an effective sample size >= the minimum: of IPS, SNIPS
     and DR (unbiased or consistent under the same assumptions) the one with the
     narrowest lift interval -- usually DR, unless the reward model is poor;
  2. otherwise impression-conditioned like precision@K among shown profiles (GAUC
     beside it): independent of what the old feed chose to show;
  never logged recall, which favours the feed that produced the logs.
  Returns name -> {"estimator", "why", "assumptions", "lift", "match_lift", "beats",
  "line", "logged_recall_lift", "oracle_lift"}.
  """
  k = min(report["k"])
  out = {}
  for name, rec in report["recommenders"].items():
    if rec["kind"] != "model" or name not in report["lifts"]:
      continue
    lifts = report["lifts"][name]["all"]
    chosen = _off_policy_choice(report, name) or {
        "estimator": "impression_conditioned",
        "metric": f"like precision@{report['data']['shown_k']} among shown",
        "lift": lifts.get("shown_precision"), "match_lift": lifts.get("shown_match_precision"),
        "why": _no_off_policy_reason(report, name) + "; so the lift is measured on what each "
               f"user was shown: like precision among the top {report['data']['shown_k']} of "
               "their shown profiles re-ranked by each recommender (GAUC lift "
               f"{format_lift(lifts.get('gauc'))})"}
    lift = chosen["lift"]
    beats = bool(lift and lift.get("ci") and lift["ci"][0] is not None and lift["ci"][0] > 0)
    chosen.update(
        assumptions=ASSUMPTIONS[chosen["estimator"]], beats=beats,
        logged_recall_lift=lifts.get(f"recall@{k}"),
        oracle_lift=lifts.get(f"oracle_like@{k}"))
    text = (f"{chosen['metric']} lift over feature matching {format_lift(lift)}: "
            f"{'PASS' if beats else 'FAIL'} ({_expected(report)}; estimator: "
            f"{chosen['estimator']})")
    if chosen.get("match_lift"):
      text += (f"; match ({chosen.get('match_estimator', chosen['estimator'])}): "
               f"{format_lift(chosen['match_lift'])}")
    chosen["line"] = text
    out[name] = chosen
  return out


def _off_policy_choice(report: Dict, name: str) -> Optional[Dict[str, object]]:
  """The off-policy estimator with the narrowest lift interval, when the log supports one."""
  off = report.get("off_policy") or {}
  lifts = (off.get("lifts") or {}).get(name)
  if not lifts or not off.get("explored"):
    return None
  sections = [off["recommenders"][n] for n in (name, report["lift_baseline"])]
  ess = min(s["support"]["effective_sample_size"] for s in sections)
  if ess < off["min_effective_sample_size"]:
    return None
  k = off["k"]
  widths = {e: _width(lifts["all"][f"{e}_like"]) for e in ("dr", "snips", "ips")}
  best = min(widths, key=widths.get)  # ties keep the order: DR, SNIPS, IPS
  match_lift, match_estimator = lifts["all"][f"{best}_match"], f"off_policy_{best}"
  match_why = None
  if match_lift.get("value") is None:  # the log does not support a match estimate
    match_why = f"off-policy match refused: {match_lift.get('reason')}"
    match_lift = report["lifts"][name]["all"].get("shown_match_precision")
    match_estimator = "impression_conditioned"
  return {"estimator": f"off_policy_{best}", "metric": f"off-policy {best.upper()} like rate@{k}",
          "lift": lifts["all"][f"{best}_like"], "match_lift": match_lift,
          "match_estimator": match_estimator, "match_why": match_why,
          "why": f"the impressions log explores (propensities < 1) and both rankings have an "
                 f"effective sample size >= {ess:.0f}, so off-policy estimates are possible; "
                 f"of IPS, SNIPS and DR (all unbiased or consistent given the logged "
                 f"propensities; DR with the calibrated P(like) of {off['reward_model']} as "
                 f"reward model) {best.upper()} gives the narrowest lift interval here "
                 "(widths " + ", ".join(f"{e.upper()} {w:.0%}" for e, w in widths.items()) + ")"}


def _width(est: Optional[Dict]) -> float:
  if not est or est.get("ci") is None or est["ci"][0] is None:
    return float("inf")
  return est["ci"][1] - est["ci"][0]


def _no_off_policy_reason(report: Dict, name: str) -> str:
  off = report.get("off_policy")
  if not off:
    return "the dataset has no impressions log (docs/data.md), so no off-policy estimate"
  if off.get("refused"):
    return "off-policy refused: " + off["refused"]
  if not off.get("explored"):
    return ("the impressions log has no exploration (every propensity is 1), so off-policy "
            "estimates cannot reach beyond what the feed showed")
  for n in (name, report["lift_baseline"]):
    section = off["recommenders"].get(n, {})
    if section.get("refused"):
      return f"off-policy refused for {n}: {section['refused']}"
  return (f"the effective sample size is below {off['min_effective_sample_size']}: too little "
          "logged support for an off-policy interval")


def _lift_gate(report: Dict, name: str, target: str):
  """(beats or None, verdict text) for the answer's `target` ("like" | "match") lift over
  feature matching; the logged recall of the same target only as a labelled aside (it
  favours the feed that produced the logs)."""
  logged_metric = f"{'match_' if target == 'match' else ''}recall@{min(report['k'])}"
  logged = report["lifts"].get(name, {}).get("all", {}).get(logged_metric)
  aside = ""
  if logged and logged.get("value") is not None:
    aside = (f" [logged {logged_metric} lift {format_lift(logged)}: biased toward the logging "
             "feed, not used]")
  chosen = (report.get("answer") or {}).get(name)
  if target == "like":
    if chosen is None:
      return None, aside.strip(" []")
    return chosen["beats"], chosen["line"] + aside
  lift = (chosen or {}).get("match_lift")
  if not lift or lift.get("value") is None:
    return None, aside.strip(" []")
  beats = lift["ci"][0] is not None and lift["ci"][0] > 0
  estimator = chosen.get("match_estimator", chosen["estimator"])
  return beats, (f"match lift over feature matching ({estimator}) {format_lift(lift)}: "
                 f"{'PASS' if beats else 'FAIL'} ({_expected(report)})" + aside)


def format_estimate(est: Optional[Dict], digits: int = 3) -> str:
  if not est or est.get("value") is None:
    return f"n/a ({est['reason']})" if est and est.get("reason") else "n/a"
  low, high = est["ci"]
  if low is None:
    return f"{est['value']:.{digits}f}"
  return f"{est['value']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def format_lift(est: Optional[Dict]) -> str:
  if not est or est.get("value") is None:
    return "n/a"
  low, high = est["ci"]
  ci = f" [{low:+.0%}, {high:+.0%}]" if low is not None else ""
  return f"{est['value']:+.0%}{ci}"


def render_markdown(report: Dict) -> str:
  """report.md: verdict, baseline-vs-model table, lifts, segments, diversity, notes."""
  k = min(report["k"])
  ks = sorted(report["k"])
  recs = report["recommenders"]
  lines = ["# Evaluation report", "",
           f"Dataset `{report['dataset']['path']}` "
           f"(config {report['dataset']['config_hash'][:12]}),"
           f" eval split after {report['dataset']['split_time_iso']}; "
           f"{report['data']['evaluated_users']} users with eval swipes, "
           f"{report['data']['users_with_eval_likes']} with eval likes. "
           f"All candidates ranked ({report['data']['candidates']}), train swipes and self "
           f"excluded. 95 % bootstrap intervals over users ({report['bootstrap']['resamples']} "
           "resamples), lifts paired by user.", "", "## Verdict", ""]
  for name, v in report["verdict"].items():
    lines.append(f"- **{name}**: {v['line']}")
  if not report["verdict"]:
    lines.append("- no model run given: baselines only")
  lines += render_answer(report)
  lines += _new_users_section(report, k)
  lines += ["", f"## All users (K = {', '.join(map(str, ks))})", ""]
  names = [m.format(k=kk) for m in HEADLINE_METRICS for kk in (ks if "{k}" in m else [None])]
  present = [n for n in names if any(n in r["segments"]["all"] for r in recs.values())]
  lines.append("| metric | " + " | ".join(recs) + " |")
  lines.append("|---|" + "---|" * len(recs))
  for metric in present:
    lines.append(f"| {metric} | " + " | ".join(
        format_estimate(r["segments"]["all"].get(metric)) for r in recs.values()) + " |")
  lines += ["", "recall, ndcg, hit_rate, mrr, match_recall, success, factorized accuracy: "
            "**logged** metrics, biased toward the feed that produced the logs (a perfect "
            "ranker can score below it). gauc, shown_*: impression-conditioned (each user's eval "
            f"swipes re-ranked; shown_* among the top {report['data'].get('shown_k')}). "
            "oracle_*: a synthetic world's hidden truth."]
  lines += render_off_policy(report)
  if report["lifts"]:
    lines += ["", f"## Lift over {report['lift_baseline']} (relative, paired by user)", ""]
    segments = list(report["segments"]["definitions"])
    for name, by_segment in report["lifts"].items():
      lines += [f"### {name}", "", "| metric | " + " | ".join(segments) + " |",
                "|---|" + "---|" * len(segments)]
      for metric in [m for m in present if m in by_segment["all"]]:
        lines.append(f"| {metric} | " + " | ".join(
            format_lift(by_segment[s].get(metric)) for s in segments) + " |")
      lines.append("")
  if report.get("run_comparisons"):
    lines += ["## Run comparisons (relative, paired by user, all users)", "",
              "| comparison | " + " | ".join(f"recall@{kk}" for kk in ks) + " | mrr |",
              "|---|" + "---|" * (len(ks) + 1)]
    for name, by_segment in report["run_comparisons"].items():
      cells = [format_lift(by_segment["all"].get(m))
               for m in [f"recall@{kk}" for kk in ks] + ["mrr"]]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
  models = {n: r for n, r in recs.items() if r["kind"] == "model"}
  if models:
    lines += ["## Runs", "", "| recommender | mode | logQ (sampling_probability) | "
              "pass_loss_weight | hard negatives | global step | run dir |",
              "|---|---|---|---|---|---|---|"]
    for name, r in models.items():
      lines.append(f"| {name} | {r.get('mode')} | {r.get('sampling_probability')} | "
                   f"{r.get('pass_loss_weight')} | {r.get('num_hard_negatives')} | "
                   f"{r.get('global_step')} | `{r.get('run_dir')}` |")
    lines.append("")
  lines += ["", "## Per segment", ""]
  for metric in ["auc", "gauc", "shown_precision", f"recall@{k}", f"ndcg@{k}", f"match_recall@{k}",
                 f"oracle_like@{k}"]:
    if not any(metric in r["segments"]["all"] for r in recs.values()):
      continue
    lines += [f"### {metric}", "", "| recommender | " + " | ".join(
        f"{s} ({report['segments']['sizes'][s]})" for s in report["segments"]["definitions"])
        + " |", "|---|" + "---|" * len(report["segments"]["definitions"])]
    for name, r in recs.items():
      cells = [format_estimate(r["segments"][s].get(metric))
               for s in report["segments"]["definitions"]]
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
  lines += ["## Diversity and exposure (all users)", "",
            "| recommender | " + " | ".join(f"coverage@{kk} | gini@{kk} | top-1% share@{kk}"
                                              for kk in ks) + " |",
            "|---|" + "---|---|---|" * len(ks)]
  for name, r in recs.items():
    cells = []
    for kk in ks:
      e = r["exposure"][str(kk)]
      cells += [format_estimate(e[name]) for name in ("coverage", "gini", "top1pct_share")]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", "## Segments", ""]
  for s, text in report["segments"]["definitions"].items():
    lines.append(f"- `{s}` ({report['segments']['sizes'][s]} users): {text}")
  lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
  lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in report["plots"]), ""]
  return "\n".join(lines)


def render_answer(report: Dict) -> List[str]:
  """'Does it beat feature matching?': per model the estimator used, why, its assumptions."""
  if not report.get("answer"):
    return []
  lines = ["", "## Does it beat feature matching?", ""]
  for name, a in report["answer"].items():
    lines += [f"- **{name}**: {a['line']}.", f"  - why this estimator: {a['why']}.",
              "  - assumptions: " + "; ".join(a["assumptions"]) + "."]
    if a.get("match_why"):
      lines.append(f"  - match lift from match precision among shown: {a['match_why']}.")
    if a.get("oracle_lift"):
      lines.append(f"  - check against the synthetic world's truth: oracle like rate lift "
                   f"{format_lift(a['oracle_lift'])}.")
  return lines


def render_off_policy(report: Dict) -> List[str]:
  """Off-policy table: every estimator beside its support figures (never one without)."""
  off = report.get("off_policy")
  if not off:
    return []
  k = off["k"]
  lines = ["", f"## Off-policy estimates from `{off['file']}` (each ranking's top {k} at "
           "every logged feed)", ""]
  if off.get("refused"):
    return lines + [f"Refused: {off['refused']}"]
  names = ["ips_like", "snips_like", "dr_like", "ips_match", "snips_match", "dr_match"]
  names += [n for n in ("oracle_like", "oracle_match")
            if any(n in r.get("segments", {}).get("all", {}) for r in off["recommenders"].values())]
  lines += [f"Log: {off['log']['feeds']} eval-window feeds, {off['log']['rows']} logged rows, "
            f"{off['log']['shown']} shown; exploring: {'yes' if off['explored'] else 'NO'}; "
            f"reward model for DR: {off['reward_model']}.", "",
            "| recommender | " + " | ".join(names) + " | matched | ESS | min propensity | "
            "max weight | warnings |", "|---|" + "---|" * (len(names) + 5)]
  for name, r in off["recommenders"].items():
    s = r["support"]
    if r.get("refused"):
      cells = ["refused"] * len(names)
    else:
      cells = [("not supported (warnings)" if n in off_policy.MATCH_TARGETS
                and r["segments"]["all"][n].get("value") is None
                else format_estimate(r["segments"]["all"].get(n))) for n in names]
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['matched_impressions']} | "
                 f"{s['effective_sample_size']:.0f} | {s['min_propensity_in_lists']} | "
                 f"{s.get('max_weight', 'n/a')} | "
                 f"{'; '.join(r.get('warnings', [])) or r.get('refused', '')} |")
  probed = {name: r["support"]["probes"] for name, r in off["recommenders"].items()
            if "probes" in r["support"]}
  if probed:  # the match columns' own support: the probed impressions
    lines += ["", f"Match rates from reciprocal probes ({off['log'].get('probed', 0)} probed "
              "rows in the eval window): " + "; ".join(
                  f"{name} {p['matched_probed_impressions']} probed impressions in its lists, "
                  f"ESS {p['effective_sample_size']:.0f}, max weight {p['max_weight']}, "
                  f"{p['unanswered_probes']} unanswered" for name, p in probed.items()) + "."]
  for name, by_segment in off.get("lifts", {}).items():
    lines += ["", f"Lift of {name} over {report['lift_baseline']}: " + ", ".join(
        f"{n} {format_lift(by_segment['all'].get(n))}" for n in names
        if by_segment["all"].get(n, {}).get("reason") is None)]
    refused = by_segment["all"].get("dr_match", {}).get("reason")
    if refused:
      lines.append(f"Match lifts refused: {refused}.")
  return lines


def _new_users_section(report: Dict, k: int) -> List[str]:
  """Users unseen in training (segment `new`) against the baselines, at the smallest K."""
  sizes = report["segments"]["sizes"]
  if not sizes.get("new"):
    return []
  recs = report["recommenders"]
  metrics = [m for m in (f"recall@{k}", f"oracle_like@{k}")
             if any(m in r["segments"]["new"] for r in recs.values())]
  lines = ["", f"## Users new since training ({sizes['new']} users with no train swipes)", "",
           "| recommender | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
  for name, rec in recs.items():
    lines.append(f"| {name} | " + " | ".join(format_estimate(rec["segments"]["new"].get(m))
                                             for m in metrics) + " |")
  return lines


def write_plots(directory: str, report: Dict, curves: Dict[str, Dict[str, np.ndarray]],
                popularity_percentiles: Dict[str, np.ndarray]) -> List[str]:
  """recall_at_k.png, roc.png, segments.png, popularity.png; returns their names.

  Args:
    curves: recommender -> {"labels": [P], "scores": [P]} of the eval swipes.
    popularity_percentiles: recommender -> [U * K] popularity percentile (0-100)
      of every recommended candidate at the largest K.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from sklearn.metrics import roc_curve
  recs = report["recommenders"]
  ks = sorted(report["k"])
  written = []

  fig, ax = plt.subplots(figsize=(6, 4))
  for name, r in recs.items():
    est = [r["segments"]["all"][f"recall@{k}"] for k in ks]
    values = np.array([e["value"] or 0 for e in est])
    ax.errorbar(ks, values, yerr=_error_bars(values, est), marker="o", capsize=3, label=name)
  ax.set(xlabel="K", ylabel="recall@K", title="Recall@K over all candidates (95 % CI)")
  ax.legend(fontsize=7)
  written.append(_save(fig, directory, "recall_at_k.png"))

  # No ROC curve without both labels (likes-only data: AUC is n/a with its reason).
  curves = {n: c for n, c in curves.items()
            if recs[n]["segments"]["all"]["auc"]["value"] is not None}
  if curves:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, c in curves.items():
      fpr, tpr, _ = roc_curve(c["labels"], c["scores"])
      ax.plot(fpr, tpr,
              label=f"{name} (AUC {recs[name]['segments']['all']['auc']['value']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate",
           title="Like vs pass on eval swipes")
    ax.legend(fontsize=7)
    written.append(_save(fig, directory, "roc.png"))

  k = ks[0]
  segments = list(report["segments"]["definitions"])
  fig, ax = plt.subplots(figsize=(7, 4))
  width = 0.8 / max(len(recs), 1)
  for i, (name, r) in enumerate(recs.items()):
    est = [r["segments"][s][f"recall@{k}"] for s in segments]
    values = np.array([e["value"] or 0 for e in est])
    ax.bar(np.arange(len(segments)) + i * width, values, width,
           yerr=_error_bars(values, est), capsize=2, label=name)
  ax.set_xticks(np.arange(len(segments)) + width * (len(recs) - 1) / 2, segments)
  ax.set(ylabel=f"recall@{k}", title=f"recall@{k} per segment (95 % CI)")
  ax.legend(fontsize=7)
  written.append(_save(fig, directory, "segments.png"))

  fig, ax = plt.subplots(figsize=(6, 4.5))
  for name, pct in popularity_percentiles.items():
    x = np.sort(pct)
    ax.plot(x, np.arange(1, x.size + 1) / max(x.size, 1), label=name)
  ax.plot([0, 100], [0, 1], "k:", lw=1, label="popularity-neutral")
  ax.set(xlabel="popularity percentile of the candidate (train likes received)",
         ylabel="share of recommendations (cumulative)",
         title=f"Who gets recommended (top-{ks[-1]} lists)")
  ax.legend(fontsize=7)
  written.append(_save(fig, directory, "popularity.png"))
  return written


def _error_bars(values: np.ndarray, estimates: List[Dict]) -> np.ndarray:
  """[2, n] lengths below and above each value, from its percentile interval.

  With few resamples (`--bootstrap=10`) a percentile interval can lie wholly
  on one side of the point estimate; that side's bar is drawn with length 0
  (matplotlib refuses negative lengths). A missing bound draws no bar.
  """
  low = np.array([np.nan if e["ci"][0] is None else e["ci"][0] for e in estimates], np.float64)
  high = np.array([np.nan if e["ci"][1] is None else e["ci"][1] for e in estimates], np.float64)
  bars = np.stack([values - low, high - values])
  return np.where(np.isfinite(bars), np.maximum(bars, 0.0), 0.0)


def _save(fig, directory: str, name: str) -> str:
  import matplotlib.pyplot as plt
  fig.tight_layout()
  fig.savefig(os.path.join(directory, name), dpi=110)
  plt.close(fig)
  return name


def write_tensorboard(log_dir: str, step: int, recommender: Dict, labels: np.ndarray,
                      probabilities: np.ndarray, prefix: str = "eval") -> None:
  """One model's scalars (all users; AUC and recall per segment) and a like-vs-pass PR curve.

  Args:
    log_dir: e.g. `<run>/logs/eval`; step: the run's global step.
    labels, probabilities: [P] eval swipe labels and calibrated P(like).
  """
  import tensorflow as tf
  from tensorboard.plugins.pr_curve import summary as pr_summary
  writer = tf.summary.create_file_writer(log_dir)
  with writer.as_default():
    for metric, est in recommender["segments"]["all"].items():
      if est.get("value") is not None:
        tf.summary.scalar(f"{prefix}/{metric}", est["value"], step=step)
    for segment, block in recommender["segments"].items():
      for metric in [m for m in block if m == "auc" or m.startswith("recall@")]:
        if block[metric].get("value") is not None:
          tf.summary.scalar(f"{prefix}_segments/{segment}/{metric}", block[metric]["value"],
                            step=step)
    pb = pr_summary.pb(f"{prefix}/like_vs_pass_pr", labels=np.asarray(labels, bool),
                       predictions=np.asarray(probabilities, np.float32), num_thresholds=201)
    tf.summary.experimental.write_raw_pb(pb.SerializeToString(), step=step)
  writer.flush()
  writer.close()


def write_report(directory: str, report: Dict) -> None:
  files.write_json(os.path.join(directory, "report.json"), report)
  with open(os.path.join(directory, "report.md"), "w", encoding="utf-8") as f:
    f.write(render_markdown(report))


def popularity_percentiles(top_candidates: np.ndarray, likes_received: np.ndarray,
                           k: int) -> np.ndarray:
  """[U * k] popularity percentile (0 = least liked, 100 = most) of every recommendation."""
  from scipy import stats
  pct = stats.rankdata(likes_received) / len(likes_received) * 100
  top = np.asarray(top_candidates)[:, :k].ravel()
  return pct[top[top >= 0]]
