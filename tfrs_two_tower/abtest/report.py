"""The analysis as files: analysis.json, report.md (plain verdict first) and report.png."""

import os
from typing import Any, Dict, Optional

from tfrs_two_tower import files
from tfrs_two_tower.abtest import metrics as metrics_lib

JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "analysis.json", "report.md", "report.png"


def _fmt(value: Optional[float], percent: bool = False) -> str:
  if value is None:
    return "n/a"
  return f"{value:+.1%}" if percent else f"{value:.4g}"


def markdown(result: Dict[str, Any]) -> str:
  """The report: verdict, validity checks, per-arm table, effects, warnings, notes."""
  exp = result["experiment"]
  lines = [f"# A/B test `{exp['name']}`", "",
           f"**Verdict: {result['verdict']}.** {result['verdict_detail']}", ""]
  if result.get("warnings"):
    lines += ["> **Warning:** " + w for w in result["warnings"]] + [""]
  srm = result["srm"]
  lines += ["## Validity checks", "",
            f"* Sample ratio: observed {srm['observed']} vs expected "
            f"{ {a: round(e, 1) for a, e in srm['expected'].items()} }: chi2 = {srm['chi2']:.2f}, "
            f"p = {srm['p_value']:.3g} -> **{'pass' if srm['passed'] else 'FAIL'}** "
            f"(threshold p < {srm['alpha']})",
            f"* Exposures logged in the wrong arm: {result['assignment_mismatches']}",
            f"* Snapshot: {result.get('snapshot_at') or 'CSV input'}; window "
            f"{exp['starts_at']} .. {exp['ends_at'] or 'running'}; primary metric "
            f"`{exp['primary_metric']}`; guardrails {', '.join(exp['guardrails']) or 'none'}", ""]
  names = list(metrics_lib.METRICS)
  lines += ["## Arms", "", "| arm | exposed users | " + " | ".join(names) + " |",
            "|---|---:|" + "---:|" * len(names)]
  for arm, row in result["arms"].items():
    lines.append(f"| {arm} | {row['exposed_users']} | "
                 + " | ".join(_fmt(row[n]) for n in names) + " |")
  lines.append("")
  if "comparisons" in result:
    for arm, comparisons in result["comparisons"].items():
      lines += [f"## {arm} vs control ({result['alpha']:.0%} two-sided tests, "
                f"{1 - result['alpha']:.0%} CIs)", ""]
      if result["cuped"]:
        lines += ["CUPED: control/treatment columns of adjusted metrics are CUPED-adjusted "
                  "means (same expectation, less variance).", ""]
      lines += ["| metric | role | control | treatment | difference [CI] | relative lift [CI] "
                "| p-value | test |", "|---|---|---:|---:|---|---|---:|---|"]
      for name in names:
        c = comparisons[name]
        role = ("primary" if name == exp["primary_metric"] else
                "guardrail" if name in exp["guardrails"] else "secondary")
        p = f"{c['p_value']:.3g}" + (f" (Holm {c['p_value_adjusted']:.3g})"
                                     if "p_value_adjusted" in c else "")
        extra = (f"; variance -{c['variance_reduction']:.0%}" if c.get("cuped") else "")
        lines.append(f"| {name} | {role} | {_fmt(c['control'])} | {_fmt(c['treatment'])} | "
                     f"{c['difference']:+.4g} [{c['ci_low']:+.4g}, {c['ci_high']:+.4g}] | "
                     f"{_fmt(c['relative_lift'], True)} [{_fmt(c['lift_ci_low'], True)}, "
                     f"{_fmt(c['lift_ci_high'], True)}] | {p} | {c['test']}{extra} |")
      lines.append("")
    detectable = result.get("detectable_difference")
    if detectable:
      lines += [f"With {detectable['users_per_arm']} users per arm this test detects a "
                f"{detectable['metric']} difference of {detectable['absolute']:.4g} "
                f"({detectable['relative']:.1%} relative) with {detectable['power']:.0%} power.",
                ""]
  else:
    lines += ["No effects are reported: the experiment is invalid (see above).", ""]
  lines += ["## Read before acting", ""] + [f"* {note}" for note in result["notes"]] + [""]
  if "comparisons" in result:
    lines += [f"![effects]({PLOT_NAME})", ""]
  return "\n".join(lines)


def plot(result: Dict[str, Any], path: str) -> None:
  """Relative lift with its CI per metric and treatment arm (a forest plot)."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  comparisons = result.get("comparisons", {})
  names = list(metrics_lib.METRICS)
  fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.55 * len(names) * max(1, len(comparisons))))
  y = 0
  ticks, labels = [], []
  for arm, per_metric in comparisons.items():
    for name in names:
      c = per_metric[name]
      if c["relative_lift"] is None:
        continue
      color = ("tab:green" if c["p_value"] < result["alpha"] and c["difference"] > 0 else
               "tab:red" if c["p_value"] < result["alpha"] else "tab:gray")
      ax.errorbar([100 * c["relative_lift"]], [y],
                  xerr=[[100 * (c["relative_lift"] - c["lift_ci_low"])],
                        [100 * (c["lift_ci_high"] - c["relative_lift"])]],
                  fmt="o", color=color, capsize=4)
      ticks.append(y)
      primary = name == result["experiment"]["primary_metric"]
      labels.append(name + (" (primary)" if primary else "")
                    + (f" [{arm}]" if len(comparisons) > 1 else ""))
      y -= 1
  ax.axvline(0, color="black", linewidth=0.8)
  ax.set_yticks(ticks, labels)
  ax.set_xlabel("relative lift vs control, % (95 % CI)")
  ax.set_title(f"{result['experiment']['name']}: {result['verdict']}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(result: Dict[str, Any], output_dir: str, manifest: Dict[str, Any],
          overwrite: bool = False) -> str:
  """Writes analysis.json, report.md, report.png (when there are effects) and manifest.json."""
  with files.atomic_directory(output_dir, overwrite=overwrite) as tmp:
    files.write_json(os.path.join(tmp, JSON_NAME), result)
    with open(os.path.join(tmp, MARKDOWN_NAME), "w", encoding="utf-8") as f:
      f.write(markdown(result))
    if "comparisons" in result:
      plot(result, os.path.join(tmp, PLOT_NAME))
    files.write_json(os.path.join(tmp, "manifest.json"),
                     {**manifest, "files": files.file_checksums(tmp)})
  return output_dir
