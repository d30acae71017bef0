"""Simulated cohorts, the demo cohort and the evaluate CLI (bad input: test_bad_inputs.py)."""
import json
import os

import numpy as np
import pytest

from helpers import run_module
from embrag_ext import demo
from embrag_ext.panel_vcf import load_panel
from embrag_ext.simulate import simulate_cohort
from embrag_ext.targets import load_targets
from embrag_ext.vcf_io import read_imputed
from embrag_ext.vcf_writer import write_imputed_vcf

pytestmark = pytest.mark.usefixtures("isolated_cache")


def test_simulate_cli_is_deterministic_and_consistent(tmp_path):
    args = ["--seed", 4, "--n-panel", 30, "--n-target", 5, "--length", 50_000, "--array-every", 3]
    for name in ("a", "b"):
        assert run_module("simulate", "--out", tmp_path / name, *args).returncode == 0
    simulate_cohort(str(tmp_path / "c"), seed=5, n_panel=30, n_target=5, length=50_000, array_every=3)
    panels = {name: load_panel(tmp_path / name / "panel.vcf.gz") for name in "abc"}
    np.testing.assert_array_equal(panels["a"].haplotypes, panels["b"].haplotypes)
    assert panels["a"].positions.tolist() != panels["c"].positions.tolist()
    truth = load_panel(tmp_path / "a" / "truth.vcf.gz")
    targets = load_targets(tmp_path / "a" / "targets.vcf.gz", panels["a"])
    assert panels["a"].samples == [f"panel_{i:04d}" for i in range(1, 31)]
    assert truth.samples == [f"target_{i:04d}" for i in range(1, 6)] == targets.samples
    assert truth.positions.tolist() == panels["a"].positions.tolist()
    # every array site is typed, but A/T and C/G sites, which 10 target alleles cannot settle
    unresolved = {d.site for d in targets.qc.decisions if d.category == "ambiguous_unresolved"}
    assert {d.category for d in targets.qc.decisions} == {"matched", "ambiguous_unresolved"}
    assert targets.typed.nonzero()[0].tolist() == [s for s in range(0, panels["a"].n_sites, 3) if s not in unresolved]
    for path in ("panel", "truth", "targets"):
        assert os.path.exists(tmp_path / "a" / f"{path}.vcf.gz.tbi")
    # only biallelic sites, and distinct positions
    assert len(set(panels["a"].positions.tolist())) == panels["a"].n_sites
    assert all(len(r) == 1 and len(a) == 1 and r != a for r, a in zip(panels["a"].ref, panels["a"].alt))


def test_demo_cohort_is_generated_once(isolated_cache, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_SETTINGS", dict(seed=1, n_panel=20, n_target=4, length=20_000, array_every=10))
    paths = demo.demo_cohort()
    assert set(paths) == {"panel", "truth", "targets"} and all(os.path.exists(p) for p in paths.values())
    assert paths["panel"].startswith(str(isolated_cache / "demo"))
    monkeypatch.setattr(demo, "simulate_cohort", lambda *args, **kwargs: pytest.fail("simulated twice"))
    assert demo.demo_cohort() == paths
    assert [name for name in os.listdir(isolated_cache / "demo") if name.startswith(".tmp")] == []


def test_truth_against_itself(cohort, tmp_path):
    report_path = tmp_path / "report.json"
    result = run_module("evaluate", "--truth", cohort["truth"], "--imputed", cohort["truth"],
                        "--out-json", report_path, "--plot", tmp_path / "r2.png")
    assert result.returncode == 0, result.stderr
    assert "MAF bin" in result.stdout and "concord" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["maf_source"] == "truth" and report["n_sites_evaluated"] == report["n_sites_matched"]
    assert report["dosage"]["all"]["aggregate_r2"] == 1.0 and report["dosage"]["all"]["concordance"] == 1.0
    assert report["dosage"]["all"]["mean_site_r2"] == pytest.approx(1.0)
    assert report["alt_f1"]["common"]["f1"] == 1.0
    assert (tmp_path / "r2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_major_allele_prediction_scores_low(cohort, tmp_path):
    panel = load_panel(cohort["panel"])
    targets = load_targets(cohort["targets"], panel)
    major = np.repeat((panel.af > 0.5).astype(np.float32)[:, None], 2 * len(targets.samples), axis=1)
    imputed = str(tmp_path / "major.vcf.gz")
    write_imputed_vcf(imputed, panel, targets.samples, major, typed=targets.typed,
                      typed_haplotypes=targets.haplotypes)
    result = run_module("evaluate", "--truth", cohort["truth"], "--imputed", imputed, "--panel", cohort["panel"])
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "major.eval.json").read_text())   # default: next to the imputed file
    overall = report["dosage"]["all"]
    assert report["maf_source"] == "panel" and report["n_sites_evaluated"] == int((~targets.typed).sum())
    assert overall["aggregate_r2"] is None and overall["mean_site_r2"] is None   # nan: no information
    assert overall["n_sites_r2_undefined"] == overall["n_sites"]
    truth = read_imputed(cohort["truth"])
    true_gt = truth.haplotypes[:, 0::2].astype(int) + truth.haplotypes[:, 1::2]
    untyped = ~targets.typed
    expected = (true_gt[untyped] == 2 * (panel.af[untyped] > 0.5)[:, None]).mean()
    assert overall["concordance"] == pytest.approx(expected)
    # --compare: both files scored alike, a JSON next to each, one plot
    result = run_module("evaluate", "--truth", cohort["truth"], "--imputed", cohort["truth"],
                        "--compare", imputed, "--panel", cohort["panel"], "--plot", tmp_path / "both.png")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("MAF bin") == 2 and f"== {imputed}" in result.stdout
    assert json.loads((tmp_path / "major.eval.json").read_text())["dosage"] == report["dosage"]
    assert (tmp_path / "both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --typed evaluates the sites absent from the target file; the IMP flags also count the sites QC excluded
    result = run_module("evaluate", "--truth", cohort["truth"], "--imputed", imputed,
                        "--panel", cohort["panel"], "--typed", cohort["targets"], "--out-json", tmp_path / "t.json")
    n_excluded = len(targets.qc.excluded())
    assert n_excluded > 0
    in_file = json.loads((tmp_path / "t.json").read_text())["n_sites_evaluated"]
    assert in_file == panel.n_sites - len(targets.qc.decisions) == report["n_sites_evaluated"] - n_excluded
