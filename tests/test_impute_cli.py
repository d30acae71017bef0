"""The impute command end to end: unphased targets through each phaser, QC
files, the typed span, --min-dr2, --strict, haploid samples, console scripts."""
import gzip
import importlib.metadata
import json
import os
import shutil

import numpy as np
import pytest

from helpers import TINY_TRAINING, record, run_module
from embrag_ext import phasing, train
from embrag_ext.errors import InputError
from embrag_ext.metrics import switch_error_rate
from embrag_ext.panel_vcf import load_panel
from embrag_ext.simulate import simulate_cohort
from embrag_ext.tokens import MASK
from embrag_ext.vcf_io import read_imputed
from embrag_ext.vcf_writer import write_phased_vcf

pytestmark = pytest.mark.usefixtures("isolated_cache")


def unphased_copy(path, out, phased_samples=()):
    """``path`` (phased) rewritten with '/' except for the samples at ``phased_samples``."""
    calls = load_panel(path, use_cache=False)
    out = str(out)
    write_phased_vcf(out, calls.chrom, calls.positions, calls.ref, calls.alt, calls.samples, calls.haplotypes,
                     ploidy=calls.ploidy, unphased=True)
    if phased_samples:
        text = gzip.open(out, "rt").read().splitlines()
        body = []
        for line in text:
            fields = line.split("\t")
            if not line.startswith("#"):
                for sample in phased_samples:
                    fields[9 + sample] = fields[9 + sample].replace("/", "|")
            body.append("\t".join(fields))
        os.remove(out)
        os.remove(out + ".tbi")
        out = out[:-3]
        open(out, "w").write("\n".join(body) + "\n")
    return out


def run_impute(trained, targets, out, *extra):
    return run_module("impute", "--checkpoint", trained["checkpoint"], "--panel", trained["panel"],
                      "--targets", targets, "--out", out, "--threads", 1, *extra)


def outputs(out):
    stem = str(out)[: -len(".vcf.gz")]
    return {"vcf": str(out), "info": stem + ".info.gz", "json": stem + ".qc.json", "tsv": stem + ".qc.tsv"}


@pytest.mark.parametrize("name", phasing.PHASERS)
def test_unphased_targets_through_each_phaser(trained, tmp_path, name):
    if phasing._executable(name) is None:
        pytest.skip(f"{name} is not installed here ({phasing.INSTALL[name]}; CI installs it)")
    targets = unphased_copy(trained["targets"], tmp_path / "unphased.vcf.gz")
    out = tmp_path / "imputed.vcf.gz"
    result = run_impute(trained, targets, out, "--phaser", name)
    assert result.returncode == 0, result.stderr
    version = phasing.find_phaser(name).version
    assert f"phasing 10 of 10 samples with {name} {version}" in result.stderr
    report = json.loads(open(outputs(out)["json"]).read())
    assert report["phasing"]["phaser"] == name and report["phasing"]["samples_phased"] == 10
    calls, truth = read_imputed(str(out)), read_imputed(trained["truth"])
    assert calls.phased
    typed = ~calls.imputed
    rows = np.isin(truth.positions, calls.positions[typed])
    genotype = lambda haps: haps[:, 0::2].astype(int) + haps[:, 1::2]
    np.testing.assert_array_equal(genotype(calls.haplotypes[typed]), genotype(truth.haplotypes[rows]))
    assert switch_error_rate(truth.haplotypes[rows], calls.haplotypes[typed]) < 0.1


def test_phaser_none_keeps_the_phased_contract(trained, tmp_path):
    targets = unphased_copy(trained["targets"], tmp_path / "unphased.vcf.gz")
    out = tmp_path / "out" / "imputed.vcf.gz"
    out.parent.mkdir()
    result = run_impute(trained, targets, out, "--phaser", "none")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and ": unphased genotype for sample target_" in result.stderr
    assert "--phaser auto" in result.stderr
    assert os.listdir(out.parent) == []


def test_no_phaser_installed_names_the_install_commands(monkeypatch):
    monkeypatch.setattr(phasing, "_executable", lambda name: None)
    with pytest.raises(InputError, match=r"no phaser is installed: install one \(apt-get install bio-eagle; "
                                         r"apt-get install shapeit4; apt-get install beagle\)"):
        phasing.find_phaser("auto")
    with pytest.raises(InputError, match=r"--phaser shapeit4: shapeit4 not found; install it with apt-get install "
                                         r"shapeit4"):
        phasing.find_phaser("shapeit4")


def test_phased_input_is_used_as_it_is(trained, tmp_path):
    out = tmp_path / "imputed.vcf.gz"
    result = run_impute(trained, trained["targets"], out, "--phaser", "auto")
    assert result.returncode == 0, result.stderr
    assert "phasing" not in result.stderr.replace("target QC", "")
    assert json.loads(open(outputs(out)["json"]).read())["phasing"] == {"needed": False}
    calls, given = read_imputed(str(out)), read_imputed(trained["targets"])
    typed = ~calls.imputed
    np.testing.assert_array_equal(calls.haplotypes[typed], given.haplotypes[np.isin(given.positions,
                                                                                  calls.positions[typed])])


@pytest.mark.skipif(shutil.which("beagle") is None, reason="beagle is not installed (apt-get install beagle)")
def test_mixed_targets_phase_only_the_unphased_samples(trained, tmp_path):
    targets = unphased_copy(trained["targets"], tmp_path / "mixed.vcf.gz", phased_samples=range(5))
    out = tmp_path / "imputed.vcf.gz"
    result = run_impute(trained, targets, out, "--phaser", "beagle")
    assert result.returncode == 0, result.stderr
    assert "phasing 5 of 10 samples with beagle" in result.stderr
    calls, given = read_imputed(str(out)), read_imputed(trained["targets"])
    typed = ~calls.imputed
    rows = np.isin(given.positions, calls.positions[typed])
    np.testing.assert_array_equal(calls.haplotypes[typed][:, :10], given.haplotypes[rows][:, :10])


def test_outputs_span_flags_and_info_file(trained, tmp_path):
    """Targets typed over the first half of the region: nothing written beyond the typed span plus the
    flank; an all-missing typed record is imputed (IMP); the info file lists every panel site."""
    given = load_panel(trained["targets"], use_cache=False)
    half = given.positions <= given.positions[len(given.positions) // 2]
    all_missing = int(np.flatnonzero(half)[3])
    haplotypes = given.haplotypes[half].copy()
    haplotypes[3] = MASK
    targets = str(tmp_path / "half.vcf.gz")
    write_phased_vcf(targets, given.chrom, given.positions[half], given.ref[half], given.alt[half], given.samples,
                     haplotypes)
    out = tmp_path / "imputed.vcf.gz"
    result = run_impute(trained, targets, out, "--flank", 10_000, "--min-site-call-rate", 0)
    assert result.returncode == 0, result.stderr
    files = outputs(out)
    assert all(os.path.isfile(path) for path in files.values())
    panel = load_panel(trained["panel"])
    calls = read_imputed(str(out))
    last_typed = given.positions[half][-1]
    assert calls.positions.max() <= last_typed + 10_000 < panel.positions.max()
    missing_row = int(np.flatnonzero(calls.positions == given.positions[all_missing])[0])
    assert calls.imputed[missing_row]                                          # all-missing typed record: IMP
    info = [line.split("\t") for line in gzip.open(files["info"], "rt").read().splitlines()]
    assert info[0][:8] == ["SNP", "REF(0)", "ALT(1)", "ALT_Frq", "MAF", "AvgCall", "Rsq", "Genotyped"]
    assert len(info) == panel.n_sites + 1
    outside = [row for row in info[1:] if row[-1] == "NotImputed:OutsideTypedSpan"]
    assert len(outside) == panel.n_sites - len(calls.positions) > 0
    assert all(int(row[0].split(":")[1]) > last_typed + 10_000 for row in outside)
    report = json.loads(open(files["json"]).read())
    assert report["imputation"]["not_imputed_outside_span"] == len(outside)
    assert report["imputation"]["span"][1] == last_typed + 10_000
    everything = tmp_path / "all.vcf.gz"
    assert run_impute(trained, targets, everything, "--impute-all").returncode == 0
    assert len(read_imputed(str(everything)).positions) == panel.n_sites


def test_min_dr2_drops_imputed_sites_and_says_so(trained, tmp_path):
    out = tmp_path / "imputed.vcf.gz"
    result = run_impute(trained, trained["targets"], out, "--min-dr2", "0.9", "--impute-all")
    assert result.returncode == 0, result.stderr
    info = [line.split("\t") for line in gzip.open(outputs(out)["info"], "rt").read().splitlines()[1:]]
    dropped = [row for row in info if row[-1] == "DR2<0.9"]
    assert dropped and all(float(row[8]) < 0.9 and row[7] == "Imputed" for row in dropped)
    assert len(read_imputed(str(out)).positions) == len(info) - len(dropped)
    assert json.loads(open(outputs(out)["json"]).read())["imputation"]["dropped_below_min_dr2"] == len(dropped)


def test_qc_table_and_strict(trained, tmp_path, make_vcf):
    truth = load_panel(trained["targets"], use_cache=False)
    samples = truth.samples
    lines = [record(int(p), r, a, *[f"{h[2 * i]}|{h[2 * i + 1]}" for i in range(len(samples))])
             for p, r, a, h in zip(truth.positions, truth.ref, truth.alt, truth.haplotypes)]
    lines.insert(1, record(int(truth.positions[0]) + 1, "A", "G", *["0|1"] * len(samples)))   # not in the panel
    targets = make_vcf("targets.vcf", lines, samples=samples)
    out = tmp_path / "out" / "imputed.vcf.gz"
    out.parent.mkdir()
    result = run_impute(trained, targets, out, "--strict")
    assert result.returncode == 2
    assert "not_in_panel                   1  excluded" in result.stderr       # the table comes first
    assert result.stderr.splitlines()[-1].startswith("error: --strict: QC excluded ")
    assert os.listdir(out.parent) == []
    result = run_impute(trained, targets, out)
    assert result.returncode == 0, result.stderr
    rows = open(outputs(out)["tsv"]).read().splitlines()
    assert f"1\t{int(truth.positions[0]) + 1}\tA\tG\tnot_in_panel\texcluded" in "\n".join(rows)


def test_chrx_cohort_with_haploid_males_end_to_end(tmp_path):
    """Half of the samples haploid (chrX outside the PARs in males): read, trained on, phased around,
    imputed as one haplotype and written haploid; evaluate scores the result."""
    cohort = simulate_cohort(str(tmp_path / "x"), seed=5, n_panel=60, n_target=10, length=150_000, array_every=5,
                             haploid_fraction=0.5, chrom="X")
    panel = load_panel(cohort["panel"])
    assert panel.chrom == "X" and 0 < (panel.ploidy == 1).sum() < len(panel.samples)
    train.main(["--panel", cohort["panel"], "--out", str(tmp_path / "run"), *TINY_TRAINING, "--epochs", "3",
                "--steps-per-epoch", "40"])
    targets = unphased_copy(cohort["targets"], tmp_path / "unphased.vcf.gz")    # females unphased, males haploid
    installed = [name for name in phasing.PHASERS if phasing._executable(name)]
    if not installed:
        pytest.skip("no phaser is installed here (apt-get install beagle; CI installs them)")
    out = tmp_path / "imputed.vcf.gz"
    result = run_module("impute", "--checkpoint", tmp_path / "run" / "checkpoint.pt", "--panel", cohort["panel"],
                        "--targets", targets, "--out", out, "--threads", 1, "--phaser", installed[0])
    assert result.returncode == 0, result.stderr
    calls, truth = read_imputed(str(out)), read_imputed(cohort["truth"])
    male = truth.haploid[0]
    assert male.any() and not male.all()
    assert (calls.haploid == male).all() and (calls.haplotypes[:, 1::2][:, male] == MASK).all()
    assert f"phasing {int((~male).sum())} of 10 samples" in result.stderr
    typed = ~calls.imputed
    rows = np.isin(truth.positions, calls.positions[typed])
    np.testing.assert_array_equal(calls.dosage[typed], truth.dosage[rows])      # typed genotypes kept
    report = run_module("evaluate", "--truth", cohort["truth"], "--imputed", out, "--panel", cohort["panel"],
                        "--out-json", tmp_path / "eval.json")
    assert report.returncode == 0, report.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["dosage"]["all"]["aggregate_r2"] > 0.5


def test_console_scripts_are_declared():
    scripts = {entry.name: entry.value for entry in importlib.metadata.entry_points(group="console_scripts")
               if entry.name.startswith("embrag-")}
    assert scripts == {f"embrag-{name}": f"embrag_ext.{name}:cli" for name in ("train", "impute", "evaluate", "simulate")}
