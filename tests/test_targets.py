"""Aligning target (array) genotypes to the panel's sites."""
import numpy as np
import pytest

from helpers import record
from embrag_ext.errors import InputError
from embrag_ext.panel_vcf import load_panel
from embrag_ext.qc import QCThresholds
from embrag_ext.targets import load_targets
from embrag_ext.tokens import MASK

pytestmark = pytest.mark.usefixtures("isolated_cache")

ANY_CALL_RATE = QCThresholds(min_site_call_rate=0.0)   # small files with missing calls keep their sites


@pytest.fixture
def panel(make_vcf):
    return load_panel(make_vcf("panel.vcf", [
        record(100, "A", "G", "0|1", "1|1"),
        record(200, "C", "T", "0|0", "1|1"),
        record(300, "A", "T", "0|1", "0|0"),   # strand-ambiguous
        record(400, "G", "C", "0|0", "0|1"),   # strand-ambiguous
        record(500, "T", "G", "1|1", "0|0"),
        record(600, "A", "C", "1|0", "0|0"),
    ], samples=("p1", "p2")))


def test_alignment_recodes_masks_and_records_every_decision(make_vcf, panel):
    """Few samples: no frequency check; every record has a QC decision (tests/test_qc.py has one test per category)."""
    path = make_vcf("targets.vcf", [
        record(100, "A", "G", "0|1", "1|0"),    # exact match
        record(150, "A", "G", "0|1", "1|0"),    # not in panel: excluded
        record(200, "T", "C", "0|1", "1|1"),    # REF/ALT swapped: recoded
        record(300, "A", "T", "1|0", "0|0"),    # ambiguous, too few alleles to settle: excluded
        record(500, "T", "A", "1|1", "0|0"),    # other ALT allele: excluded
        record(600, "A", "C", ".|1", "./."),    # call rate 0.5: excluded
    ], samples=("t1", "t2"))
    targets = load_targets(path, panel)
    assert targets.samples == ["t1", "t2"] and targets.source == path
    assert targets.typed.tolist() == [True, True, False, False, False, False]
    M = MASK
    assert targets.haplotypes.dtype == np.uint8
    assert targets.haplotypes.tolist() == [[0, 1, 1, 0], [1, 0, 0, 0]] + [[M, M, M, M]] * 4
    assert [d.category for d in targets.qc.decisions] == ["matched", "not_in_panel", "allele_swap",
                                                        "ambiguous_unresolved", "allele_mismatch", "low_call_rate"]
    assert targets.n_typed == 2 and targets.ploidy.tolist() == [2, 2]
    assert not targets.phase_unknown.any() and targets.unphased_samples().tolist() == []


def test_missing_alleles_are_masked_and_counted(make_vcf, panel):
    path = make_vcf("targets.vcf", [record(100, "A", "G", ".|1", "0|0", "1|1", "0|1", "1|0", "0|0", "0|0",
                                           "0|0", "0|0", "0|0")], samples=[f"t{i}" for i in range(10)])
    targets = load_targets(path, panel)
    assert targets.haplotypes[0, :4].tolist() == [MASK, 1, 0, 0]
    assert targets.qc.genotype_counts["missing_alleles"] == 1


def test_unphased_targets_say_how_to_phase(make_vcf, panel):
    path = make_vcf("unphased.vcf", [record(100, "A", "G", "0/1", "1|0")], samples=("t1", "t2"))
    with pytest.raises(InputError, match=r"unphased\.vcf: record 1:100: unphased genotype for sample t1: "
                                         r"targets must be phased; impute phases them .* --phaser auto"):
        load_targets(path, panel)


def test_phase_free_homozygotes_are_accepted(make_vcf, panel):
    path = make_vcf("homozygous.vcf", [record(100, "A", "G", "0/0", "1/1"), record(200, "C", "T", "1/1", "0|1")],
                    samples=("t1", "t2"))
    targets = load_targets(path, panel)
    assert targets.haplotypes[:2].tolist() == [[0, 0, 1, 1], [1, 1, 0, 1]]


def test_half_missing_unphased_is_refused_under_the_phased_contract(make_vcf, panel):
    path = make_vcf("half.vcf", [record(100, "A", "G", "0|1", "0/.")], samples=("t1", "t2"))
    with pytest.raises(InputError, match=r"half\.vcf: record 1:100: unphased half-missing genotype \(such as "
                                         r"0/\.\) for sample t2"):
        load_targets(path, panel)
    phased_half = make_vcf("phased_half.vcf", [record(100, "A", "G", "0|1", "0|.")], samples=("t1", "t2"))
    assert load_targets(phased_half, panel, thresholds=ANY_CALL_RATE).haplotypes[0].tolist() == [0, 1, 0, MASK]


def test_unphased_and_mixed_targets_are_flagged_for_phasing(make_vcf, panel):
    path = make_vcf("mixed.vcf", [record(100, "A", "G", "0/1", "1|0", "0/."),
                                  record(200, "C", "T", "1/1", "0|1", "0/1")], samples=("t1", "t2", "t3"))
    targets = load_targets(path, panel, thresholds=ANY_CALL_RATE, allow_unphased=True)
    assert targets.phase_unknown[:2].tolist() == [[True, False, False], [False, False, True]]
    assert targets.unphased_samples().tolist() == [0, 2]
    assert targets.haplotypes[0].tolist() == [0, 1, 1, 0, MASK, MASK]   # 0/. set missing
    assert targets.qc.genotype_counts["half_missing_set_missing"] == 1


def test_haploid_and_mixed_ploidy_targets(make_vcf, panel):
    path = make_vcf("x.vcf", [record(100, "A", "G", "1", "0|1", "."), record(200, "C", "T", "0", "1|1", "1")],
                    samples=("male", "female", "male2"))
    targets = load_targets(path, panel, thresholds=ANY_CALL_RATE)
    assert targets.ploidy.tolist() == [1, 2, 1]
    assert targets.haplotypes[:2].tolist() == [[1, MASK, 0, 1, MASK, MASK], [0, MASK, 1, 1, 1, MASK]]
    mixed = make_vcf("bad_x.vcf", [record(100, "A", "G", "1", "0|1"), record(200, "C", "T", "0|1", "1|1")],
                     samples=("male", "female"))
    with pytest.raises(InputError, match=r"bad_x\.vcf: record 1:200: sample male has a diploid call here and "
                                         r"haploid calls before"):
        load_targets(mixed, panel)


def test_leakage_warning(make_vcf, panel):
    path = make_vcf("leak.vcf", [record(100, "A", "G", "0|1", "1|0")], samples=("p2", "t1"))
    with pytest.warns(UserWarning, match=r"1 target samples are also panel samples \(p2\): leakage"):
        load_targets(path, panel)


def test_no_shared_sites(make_vcf, panel):
    path = make_vcf("none.vcf", [record(150, "A", "G", "0|1", "1|0")], samples=("t1", "t2"))
    with pytest.raises(InputError, match=r"none\.vcf: none of its 1 records on 1 passed the alignment QC "
                                         r"against .*panel\.vcf \(1 not_in_panel\)"):
        load_targets(path, panel)


def test_contig_absent_from_panel(make_vcf, panel):
    path = make_vcf("chr2.vcf", [record(100, "A", "G", "0|1", "1|0", chrom="2")], samples=("t1", "t2"))
    with pytest.raises(InputError, match=r"chr2\.vcf: no records on 1 \(the panel's contig is 1"):
        load_targets(path, panel)
    with pytest.raises(InputError, match=r"region 2: contig 2 is absent from the panel"):
        load_targets(path, panel, region="2")


def test_other_contigs_are_ignored(make_vcf, panel):
    path = make_vcf("two.vcf", [record(100, "A", "G", "0|1", "1|0"),
                                record(100, "A", "G", "0|1", "1|0", chrom="2")], samples=("t1", "t2"))
    assert load_targets(path, panel).typed.tolist() == [True] + [False] * 5


def test_duplicate_target_samples(make_vcf, panel):
    path = make_vcf("dup.vcf", [record(100, "A", "G", "0|1", "1|0")], samples=("t1", "t1"))
    with pytest.raises(InputError, match=r"dup\.vcf: duplicate sample name 't1'"):
        load_targets(path, panel)


def test_simulated_array_matches_truth(cohort):
    panel = load_panel(cohort["panel"])
    targets = load_targets(cohort["targets"], panel)
    truth = load_panel(cohort["truth"])
    excluded = {d.site for d in targets.qc.decisions if d.action == "excluded"}
    counts = {name: n for name, n in targets.qc.counts().items() if n}
    assert set(counts) == {"matched", "ambiguous_same_strand", "ambiguous_unresolved"}   # 1/3 of msprime SNPs are A/T, C/G
    assert np.flatnonzero(targets.typed).tolist() == [s for s in range(0, panel.n_sites, 5) if s not in excluded]
    np.testing.assert_array_equal(targets.haplotypes[targets.typed], truth.haplotypes[targets.typed])
    assert (targets.haplotypes[~targets.typed] == MASK).all()
