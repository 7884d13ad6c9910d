"""Statistics against known values, SRM, power, verdicts, reports, CSV mode, the script."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from tfrs_two_tower import config as config_lib
from tfrs_two_tower.abtest import analysis
from tfrs_two_tower.abtest import assignment
from tfrs_two_tower.abtest import definition as definition_lib
from tfrs_two_tower.abtest import metrics
from tfrs_two_tower.abtest import power
from tfrs_two_tower.abtest import report
from tfrs_two_tower.abtest import stats
from tfrs_two_tower.data import sources
from tfrs_two_tower.stages import abtest_stage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_proportion_z_test_known_values():
  # 120/1000 vs 150/1000. Pooled p = 0.135, z = 0.03 / sqrt(.135 * .865 * 2/1000) = 1.9632.
  c = stats.two_proportion_z_test(120, 1000, 150, 1000)
  assert c.difference == pytest.approx(0.03)
  assert c.p_value == pytest.approx(0.049640, abs=1e-6)
  # The pooled z-test is the uncorrected 2x2 chi-square test.
  chi2 = scipy_stats.chi2_contingency([[120, 880], [150, 850]], correction=False)
  assert c.p_value == pytest.approx(chi2.pvalue, rel=1e-9)
  # Wald CI: 0.03 +- 1.959964 * sqrt(.12 * .88 / 1000 + .15 * .85 / 1000) = 0.03 +- 0.029924.
  assert (c.ci_low, c.ci_high) == pytest.approx((0.000076, 0.059924), abs=1e-6)
  assert c.relative_lift == pytest.approx(0.25)
  assert c.significant()
  same = stats.two_proportion_z_test(0, 10, 0, 10)
  assert same.p_value == 1.0 and same.difference == 0


def test_welch_matches_scipy():
  rng = np.random.default_rng(1)
  a, b = rng.normal(1.0, 1.0, 300), rng.normal(1.3, 2.5, 200)
  c = stats.welch_test_samples(a, b)
  ref = scipy_stats.ttest_ind(b, a, equal_var=False)
  assert c.p_value == pytest.approx(ref.pvalue, rel=1e-9)
  ci = ref.confidence_interval()
  assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_ratio_test_reduces_to_proportions_with_one_trial_per_user():
  rng = np.random.default_rng(2)
  likes_c, likes_t = rng.random(20_000) < 0.2, rng.random(20_000) < 0.22
  ones = np.ones(20_000)
  ratio = stats.ratio_test(likes_c, ones, likes_t, ones)
  z = stats.two_proportion_z_test(int(likes_c.sum()), 20_000, int(likes_t.sum()), 20_000)
  assert ratio.difference == pytest.approx(z.difference)
  assert (ratio.ci_low, ratio.ci_high) == pytest.approx((z.ci_low, z.ci_high), rel=1e-3)


def test_sample_ratio_check():
  ok = stats.sample_ratio_check({"c": 5000, "t": 5000}, {"c": 0.5, "t": 0.5})
  assert ok.passed and ok.chi2 == 0
  bad = stats.sample_ratio_check({"c": 5200, "t": 4800}, {"c": 0.5, "t": 0.5})
  assert bad.chi2 == pytest.approx(16.0)
  assert bad.p_value == pytest.approx(6.33e-5, rel=1e-2) and not bad.passed
  weighted = stats.sample_ratio_check({"c": 9000, "t": 1000}, {"c": 0.9, "t": 0.1})
  assert weighted.passed
  with pytest.raises(ValueError, match="does not have"):
    stats.sample_ratio_check({"c": 1, "x": 1}, {"c": 0.5, "t": 0.5})


def test_power_check_value_and_inverse():
  # The check value: 12 % -> 13.5 %, alpha 0.05 two-sided, power 0.8: about 7,760.
  n = power.users_per_arm_for_rate(0.12, 0.135)
  assert n == 7761  # 7,760.06 rounded up
  plan = power.plan(0.12, relative_mde=0.125, daily_exposed_users=1000)
  assert plan.users_per_arm == 7761 and plan.days == pytest.approx(7761 / 500)
  assert power.detectable_difference_for_rate(0.12, 7761) == pytest.approx(0.015, abs=1e-4)
  # Means: 2 sd^2 (1.96 + 0.8416)^2 / d^2 = 2 * 4 * 7.849 / 0.04 = 1570 (+ rounding up).
  assert power.users_per_arm_for_mean(2.0, 0.2) == 1570
  with pytest.raises(ValueError):
    power.plan(0.12)


def test_cuped_removes_explained_variance_without_bias():
  rng = np.random.default_rng(3)
  x = rng.gamma(2.0, 2.0, 50_000)
  y = 0.8 * x + rng.normal(0, 1, x.size)
  adjusted, theta, reduction = stats.cuped_adjust(y, x)
  assert theta == pytest.approx(0.8, abs=0.02)
  assert adjusted.mean() == pytest.approx(y.mean())
  assert reduction > 0.8


def _population(n_per_arm, rate_c, rate_t, seed=0, arms=("control", "treatment"),
                swipes_t=20.0):
  rng = np.random.default_rng(seed)
  rows = []
  for arm, rate in zip(arms, (rate_c, rate_t) + (rate_c,) * (len(arms) - 2)):
    swipes = rng.poisson(swipes_t if arm != arms[0] else 20.0, n_per_arm[arm])
    likes = rng.binomial(swipes, 0.25)
    matches = rng.binomial(3, rate / 3, n_per_arm[arm])
    rows.append(pd.DataFrame({
        "user_id": [f"{arm}-{i}" for i in range(n_per_arm[arm])], "arm": arm,
        "first_exposed_at": pd.Timestamp("2026-05-02", tz="UTC"), "swipes": swipes,
        "likes_given": likes, "likes_received": rng.poisson(3, n_per_arm[arm]),
        "matches": matches, "pre_swipes": swipes + rng.poisson(2, n_per_arm[arm]),
        "pre_likes_given": likes, "pre_likes_received": rng.poisson(3, n_per_arm[arm]),
        "pre_matches": matches}))
  return pd.concat(rows, ignore_index=True)


def _definition(arms=("control", "treatment"), **kwargs):
  return definition_lib.Definition(
      assignment.Experiment.from_weights("exp", {a: 1 for a in arms}),
      "2026-05-01", "2026-05-15", **kwargs)


def test_srm_makes_the_verdict_invalid_and_hides_effects():
  outcomes = _population({"control": 5000, "treatment": 4600}, 0.3, 0.4)
  result = analysis.analyze(outcomes, _definition())
  assert result["verdict"] == analysis.INVALID
  assert "sample ratio mismatch" in result["verdict_detail"]
  assert "comparisons" not in result
  assert "No effects are reported" in report.markdown(result)


def test_verdicts_better_guardrail_and_no_difference():
  sizes = {"control": 4000, "treatment": 4000}
  better = analysis.analyze(_population(sizes, 0.30, 0.36), _definition())
  assert better["verdict"] == analysis.BETTER
  primary = better["comparisons"]["treatment"]["match_rate"]
  assert primary["ci_low"] > 0 and primary["relative_lift"] > 0
  assert better["detectable_difference"]["users_per_arm"] == 4000
  flat = analysis.analyze(_population(sizes, 0.30, 0.30, seed=5), _definition())
  assert flat["verdict"] == analysis.NO_DIFFERENCE
  # Fewer swipes per user in treatment: the engagement guardrail vetoes the win.
  vetoed = analysis.analyze(_population(sizes, 0.30, 0.36, swipes_t=18.0), _definition())
  assert vetoed["verdict"] == analysis.GUARDRAIL
  assert vetoed["arm_verdicts"]["treatment"]["guardrails_violated"] == ["swipes_per_user"]
  cuped = analysis.analyze(_population(sizes, 0.30, 0.36), _definition(), cuped=True)
  assert cuped["comparisons"]["treatment"]["matches_per_user"]["variance_reduction"] > 0.5


def test_several_treatments_get_holm_adjusted_primary_p_values():
  arms = ("control", "a", "b")
  result = analysis.analyze(_population({a: 3000 for a in arms}, 0.3, 0.36, arms=arms),
                            _definition(arms))
  assert set(result["arm_verdicts"]) == {"a", "b"}
  raw = [result["comparisons"][arm]["match_rate"]["p_value"] for arm in ("a", "b")]
  adjusted = [result["comparisons"][arm]["match_rate"]["p_value_adjusted"] for arm in ("a", "b")]
  np.testing.assert_allclose(adjusted, stats.holm_adjust(raw), rtol=1e-12)


def test_holm_adjustment_known_values():
  # Sorted p .01 < .03 < .04 get factors 3, 2, 1: .03, .06, .04 -> running max .03, .06, .06,
  # reported in the input order.
  np.testing.assert_allclose(stats.holm_adjust([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
  np.testing.assert_allclose(stats.holm_adjust([0.5, 0.6]), [1.0, 1.0])  # capped at 1
  np.testing.assert_allclose(stats.holm_adjust([0.02]), [0.02])


def test_peeking_warnings():
  outcomes = _population({"control": 500, "treatment": 500}, 0.3, 0.3)
  result = analysis.analyze(outcomes, _definition(planned_users_per_arm=7761),
                            snapshot_at=pd.Timestamp("2026-05-08", tz="UTC"))
  assert any("horizon not reached" in w for w in result["warnings"])
  assert any("still running" in w for w in result["warnings"])
  assert analysis.PEEKING_WARNING in result["notes"]
  assert analysis.INTERFERENCE_NOTE in result["notes"]


def test_report_files(tmp_path):
  result = analysis.analyze(_population({"control": 2000, "treatment": 2000}, 0.3, 0.36),
                            _definition())
  out = report.write(result, str(tmp_path / "report"), {"kind": "test"})
  names = sorted(os.listdir(out))
  assert names == ["analysis.json", "manifest.json", "report.md", "report.png"]
  text = open(os.path.join(out, "report.md")).read()
  assert text.startswith("# A/B test `exp`\n\n**Verdict: treatment better.**")
  assert "peeking" in text and "Interference" in text
  assert os.path.getsize(os.path.join(out, "report.png")) > 5000


def _write_csvs(tmp_path):
  base = pd.Timestamp("2026-05-01", tz="UTC")
  exposures = pd.DataFrame({
      "experiment": ["exp"] * 4 + ["other"],
      "user_id": ["a", "b", "c", "d", "a"], "arm": ["control", "treatment", "control",
                                                    "treatment", "treatment"],
      "first_exposed_at": [base + pd.Timedelta(hours=h) for h in (1, 2, 3, 4, 5)]})
  t = lambda h: base + pd.Timedelta(hours=h)  # noqa: E731
  swipes = pd.DataFrame([
      ("a", "b", "like", t(-100)),      # pre-period like a->b
      ("b", "a", "like", t(3)),         # after b's exposure: match for both (a since t1)
      ("c", "d", "like", t(5)),         # d exposed at t4: c->d like, counts as received by d
      ("d", "c", "pass", t(6)),
      ("d", "c", "like", t(7)),         # re-swipe: latest is like -> match c-d at t7
      ("c", "a", "pass", t(500)),       # after ends_at: ignored
  ], columns=["swiper_id", "swipee_id", "action", "created_at"])
  exposures.to_csv(tmp_path / "exposures.csv", index=False)
  swipes.to_csv(tmp_path / "swipes.csv", index=False)


def test_csv_outcomes_follow_the_definitions(tmp_path):
  _write_csvs(tmp_path)
  definition, outcomes, *_ = abtest_stage.load(
      experiment="exp", db_url=None, exposures_csv=str(tmp_path / "exposures.csv"),
      swipes_csv=str(tmp_path / "swipes.csv"), arms="control=1,treatment=1",
      starts_at="2026-05-01", ends_at="2026-05-10", primary_metric="match_rate",
      guardrails=[], pre_period_days=28, planned_users_per_arm=None,
      config=config_lib.load_config())
  rows = outcomes.set_index("user_id")
  assert list(rows.index) == ["a", "b", "c", "d"]
  assert rows.loc["a", ["swipes", "likes_given", "likes_received", "matches", "pre_likes_given",
                        "pre_matches"]].tolist() == [0, 0, 1, 1, 1, 0]
  assert rows.loc["b", ["swipes", "likes_given", "matches", "pre_likes_received"]].tolist() == \
      [1, 1, 1, 1]
  assert rows.loc["c", ["swipes", "likes_given", "likes_received", "matches"]].tolist() == \
      [1, 1, 1, 1]
  assert rows.loc["d", ["swipes", "likes_given", "likes_received", "matches"]].tolist() == \
      [2, 1, 1, 1]
  assert definition.experiment.arms == (("control", 5000), ("treatment", 5000))


def test_csv_errors_name_the_file_and_column(tmp_path):
  _write_csvs(tmp_path)
  broken = pd.read_csv(tmp_path / "swipes.csv").drop(columns=["action"])
  broken.to_csv(tmp_path / "broken.csv", index=False)
  with pytest.raises(ValueError, match=r"broken.csv: missing column\(s\) \['action'\]"):
    abtest_stage.run(experiment="exp", exposures_csv=str(tmp_path / "exposures.csv"),
                     swipes_csv=str(tmp_path / "broken.csv"), log=lambda *a: None)
  with pytest.raises(ValueError, match="unknown metric"):
    _definition(primary_metric="happiness")


def test_unknown_actions_are_refused_like_the_export(tmp_path):
  """LIKE, PASS and 42.5 are not actions of the config: named with their counts, exit 16
  (the export's code for the same data), instead of being counted as non-likes."""
  _write_csvs(tmp_path)
  swipes = pd.read_csv(tmp_path / "swipes.csv", dtype=str)
  swipes.loc[0, "action"], swipes.loc[1, "action"] = "LIKE", "LIKE"
  swipes.loc[2, "action"], swipes.loc[3, "action"] = "PASS", "42.5"
  swipes.to_csv(tmp_path / "cased.csv", index=False)
  with pytest.raises(sources.UnknownActionError,
                     match=r"cased.csv: 4 interactions .* 'LIKE' x2, .*'PASS' x1.*'42.5' x1"):
    abtest_stage.run(experiment="exp", exposures_csv=str(tmp_path / "exposures.csv"),
                     swipes_csv=str(tmp_path / "cased.csv"), log=lambda *a: None)
  env = {**os.environ, "PYTHONPATH": ROOT}
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "analyze_experiment.py"),
                         "--experiment=exp", f"--exposures_csv={tmp_path}/exposures.csv",
                         f"--swipes_csv={tmp_path}/cased.csv"],
                        capture_output=True, text=True, env=env, timeout=120)
  assert proc.returncode == sources.UnknownActionError.exit_code == 16, proc.stderr
  assert "'LIKE' x2" in proc.stderr and "'42.5' x1" in proc.stderr
  assert "verdict" not in proc.stderr


@pytest.mark.slow  # script subprocesses
def test_script_plan_and_csv_analysis(tmp_path):
  _write_csvs(tmp_path)
  env = {**os.environ, "PYTHONPATH": ROOT}
  script = os.path.join(ROOT, "scripts", "analyze_experiment.py")
  plan = subprocess.run([sys.executable, script, "--plan", "--baseline_rate=0.12", "--mde=0.015",
                         "--logtostderr"], capture_output=True, text=True, env=env, timeout=120)
  assert plan.returncode == 0, plan.stderr
  assert "7761 users per arm" in plan.stderr
  out = tmp_path / "report"
  analysed = subprocess.run(
      [sys.executable, script, "--experiment=exp", f"--exposures_csv={tmp_path}/exposures.csv",
       f"--swipes_csv={tmp_path}/swipes.csv", f"--output_dir={out}", "--ends_at=2026-05-10",
       "--logtostderr"], capture_output=True, text=True, env=env, timeout=120)
  assert analysed.returncode == 0, analysed.stderr
  assert "verdict: no significant difference" in analysed.stderr
  assert (out / "report.md").exists() and (out / "manifest.json").exists()
  missing = subprocess.run([sys.executable, script, "--experiment=exp",
                            f"--exposures_csv={tmp_path}/nope.csv",
                            f"--swipes_csv={tmp_path}/swipes.csv"],
                           capture_output=True, text=True, env=env, timeout=120)
  assert missing.returncode == 2 and "nope.csv: no such file" in missing.stderr


def test_metric_catalogue_is_consistent():
  assert set(metrics.METRICS) >= {"match_rate", "like_rate", "matches_per_user"}
  for m in metrics.METRICS.values():
    assert m.kind in metrics.KINDS
    assert (m.denominator is not None) == (m.kind == "ratio")
