"""Alignment QC of target records: one test per category (count, action, TSV row, alleles)."""
import json

import numpy as np
import pytest

from helpers import record
from embrag_ext.errors import InputError
from embrag_ext.panel_vcf import load_panel
from embrag_ext.qc import CATEGORIES, QCThresholds
from embrag_ext.targets import load_targets

pytestmark = pytest.mark.usefixtures("isolated_cache")

N_PANEL, N_TARGET = 20, 12   # 40 panel haplotypes; 24 target alleles (>= 20: frequencies are compared)


def phased(n_samples, n_alt):
    """Phased genotypes of ``n_samples`` samples with ``n_alt`` ALT alleles (the first ones)."""
    alleles = [1] * n_alt + [0] * (2 * n_samples - n_alt)
    return [f"{alleles[2 * i]}|{alleles[2 * i + 1]}" for i in range(n_samples)]


def panel_record(pos, ref, alt, n_alt):
    return record(pos, ref, alt, *phased(N_PANEL, n_alt))


# panel sites: position -> (REF, ALT, ALT alleles of 40)
PANEL_SITES = {100: ("A", "G", 10), 200: ("C", "T", 10), 300: ("A", "C", 10), 400: ("A", "G", 10),
               500: ("A", "T", 4), 600: ("C", "G", 4), 700: ("A", "T", 18), 900: ("A", "G", 10),
               1000: ("A", "G", 10), 1100: ("A", "G", 10), 1200: ("A", "G", 10), 1300: ("A", "G", 4)}

# category -> (target records, the panel site it maps to or None, allele codes recoded?)
CASES = {
    "allele_swap": ([record(200, "T", "C", *phased(N_TARGET, 18))], 200, True),
    "strand_flip": ([record(300, "T", "G", *phased(N_TARGET, 6))], 300, False),
    "strand_flip_swap": ([record(400, "C", "T", *phased(N_TARGET, 18))], 400, True),
    "ambiguous_same_strand": ([record(500, "A", "T", *phased(N_TARGET, 2))], 500, False),
    "ambiguous_other_strand": ([record(600, "C", "G", *phased(N_TARGET, 22))], 600, True),
    "ambiguous_unresolved": ([record(700, "A", "T", *phased(N_TARGET, 11))], None, False),
    "not_in_panel": ([record(850, "A", "G", *phased(N_TARGET, 6))], None, False),
    "allele_mismatch": ([record(900, "A", "C", *phased(N_TARGET, 6))], None, False),
    "multiallelic": ([record(1000, "A", "G,T", *phased(N_TARGET, 6))], None, False),
    "duplicate": ([record(1100, "A", "G", *phased(N_TARGET, 6)), record(1100, "A", "G", *phased(N_TARGET, 6))],
                  None, False),
    "low_call_rate": ([record(1200, "A", "G", *phased(N_TARGET - 2, 6), "./.", "./.")], None, False),
    "af_discordant": ([record(1300, "A", "G", *phased(N_TARGET, 20))], None, False),
}


@pytest.fixture
def panel(make_vcf):
    samples = [f"p{i}" for i in range(N_PANEL)]
    return load_panel(make_vcf("panel.vcf", [panel_record(pos, *site) for pos, site in PANEL_SITES.items()],
                               samples=samples))


def target_file(make_vcf, records):
    matched = record(100, "A", "G", *phased(N_TARGET, 6))
    return make_vcf("targets.vcf", sorted([matched, *records], key=lambda line: int(line.split("\t")[1])),
                    samples=[f"t{i}" for i in range(N_TARGET)])


def test_every_category_has_a_case():
    assert set(CASES) | {"matched"} == set(CATEGORIES)


@pytest.mark.parametrize("category", sorted(CASES))
def test_category(make_vcf, panel, category):
    records, site_pos, recoded = CASES[category]
    targets = load_targets(target_file(make_vcf, records), panel)
    report = targets.qc
    counts = report.counts()
    assert counts["matched"] == 1 and counts[category] == len(records)
    assert sum(counts.values()) == 1 + len(records)
    action = CATEGORIES[category][0]
    assert report.to_dict()["categories"][category] == {"count": len(records), "action": action,
                                                        "meaning": report.meaning(category)}
    rows = [row.split("\t") for row in report.tsv_text().splitlines()]
    assert rows[0] == ["#CHROM", "POS", "REF", "ALT", "category", "action", "detail"]
    assert [row[:6] for row in rows[1:]] == [["1", line.split("\t")[1], line.split("\t")[3], line.split("\t")[4],
                                              category, action] for line in records]
    sites = targets.qc.decisions
    positions = panel.positions.tolist()
    expected_typed = {100} | ({site_pos} if site_pos else set())
    assert {positions[s] for s in np.flatnonzero(targets.typed)} == expected_typed
    if site_pos:
        given = np.array([[int(a) for a in gt.split("|")] for gt in records[0].split("\t")[9:]]).reshape(-1)
        np.testing.assert_array_equal(targets.haplotypes[positions.index(site_pos)], 1 - given if recoded else given)
    assert len(sites) == 1 + len(records)


def test_ambiguous_detail_states_the_frequencies(make_vcf, panel):
    targets = load_targets(target_file(make_vcf, CASES["ambiguous_other_strand"][0]), panel)
    row = targets.qc.tsv_text().splitlines()[1].split("\t")
    assert row[6] == "target AF 0.917 (same strand), panel AF 0.100"


def test_low_call_rate_threshold_and_sample_warning(make_vcf, panel):
    path = target_file(make_vcf, CASES["low_call_rate"][0])
    report = load_targets(path, panel).qc
    assert report.tsv_text().splitlines()[1].endswith("call rate 0.833")
    assert report.low_call_rate_samples() == []          # over the kept site (100) every sample is called
    relaxed = load_targets(path, panel, thresholds=QCThresholds(min_site_call_rate=0.8)).qc
    assert relaxed.counts()["low_call_rate"] == 0 and relaxed.counts()["matched"] == 2
    assert relaxed.low_call_rate_samples() == [("t10", 0.5), ("t11", 0.5)]
    assert "warning: 2 of 12 samples have a call rate below 0.9 (the lowest: t10 0.500)" in relaxed.table()


def test_json_summary_and_table(make_vcf, panel):
    records = [line for case in ("allele_swap", "not_in_panel", "af_discordant") for line in CASES[case][0]]
    report = load_targets(target_file(make_vcf, records), panel).qc
    summary = json.loads(report.json_text())
    assert summary["records"] == {"total": 4, "kept": 1, "fixed": 1, "excluded": 2}
    assert summary["thresholds"]["max_af_diff"] == 0.2 and summary["thresholds"]["af_z"] == 5.0
    assert summary["samples"]["count"] == N_TARGET and summary["samples"]["below_threshold"] == []
    table = report.table("out.qc.tsv")
    assert "  not_in_panel                   1  excluded" in table
    assert "excluded in total              2  (every excluded or changed record: out.qc.tsv)" in table


def test_strict_names_the_exclusions(make_vcf, panel):
    records = CASES["not_in_panel"][0] + CASES["af_discordant"][0]
    report = load_targets(target_file(make_vcf, records), panel).qc
    with pytest.raises(InputError, match=r"--strict: QC excluded 2 target records of .*targets\.vcf "
                                         r"\(1 not_in_panel, 1 af_discordant\); the first: 1:850 A>G not_in_panel"):
        report.check_strict("out.qc.tsv")
    clean = load_targets(target_file(make_vcf, CASES["allele_swap"][0]), panel).qc
    clean.check_strict("out.qc.tsv")   # nothing excluded: no error


def test_frequency_difference_must_be_large_and_significant(make_vcf, panel):
    """1300 has panel AF 0.1: a target AF of 0.625 (diff 0.525, but z 4.5 from 24 alleles) stays."""
    kept = load_targets(target_file(make_vcf, [record(1300, "A", "G", *phased(N_TARGET, 15))]), panel).qc
    assert kept.counts()["af_discordant"] == 0 and kept.counts()["matched"] == 2
    strict = load_targets(target_file(make_vcf, [record(1300, "A", "G", *phased(N_TARGET, 15))]), panel,
                          thresholds=QCThresholds(af_z=4.0)).qc
    assert strict.counts()["af_discordant"] == 1
    assert strict.tsv_text().splitlines()[1].endswith("target AF 0.625, panel AF 0.100, z 4.5")


def test_ambiguous_site_both_strands_fit(make_vcf, panel):
    """Panel AF 0.1 at 500; a target AF of 0.375 / 0.625 cannot exclude either strand at |z| > 5."""
    report = load_targets(target_file(make_vcf, [record(500, "A", "T", *phased(N_TARGET, 9))]), panel).qc
    assert report.counts()["ambiguous_unresolved"] == 1
    assert "both strands fit" in report.tsv_text().splitlines()[1]


def test_few_samples_skip_the_frequency_check(make_vcf, panel):
    """With fewer than 20 called alleles the AF is not compared (and A/T, C/G cannot be settled)."""
    path = make_vcf("few.vcf", [record(100, "A", "G", "1|1", "1|1"), record(500, "A", "T", "0|0", "0|1")],
                    samples=("t1", "t2"))
    counts = load_targets(path, panel).qc.counts()
    assert counts["matched"] == 1 and counts["af_discordant"] == 0 and counts["ambiguous_unresolved"] == 1
