"""Aligning target (array) genotypes to the panel's sites."""
import numpy as np
import pytest

from helpers import record
from embrag_ext.errors import InputError
from embrag_ext.panel_vcf import load_panel
from embrag_ext.targets import load_targets
from embrag_ext.tokens import MASK

pytestmark = pytest.mark.usefixtures("isolated_cache")


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


def test_alignment_flips_drops_masks_and_counts(make_vcf, panel):
    path = make_vcf("targets.vcf", [
        record(100, "A", "G", "0|1", "1|0"),    # exact match
        record(150, "A", "G", "0|1", "1|0"),    # not in panel: dropped
        record(200, "T", "C", "0|1", "1|1"),    # REF/ALT swapped: flipped
        record(300, "A", "T", "1|0", "0|0"),    # ambiguous, exact: kept
        record(400, "C", "G", "1|0", "0|0"),    # ambiguous, swapped: dropped
        record(500, "T", "A", "1|1", "0|0"),    # other ALT allele: dropped
        record(600, "A", "C", ".|1", "./."),    # missing alleles: masked
    ], samples=("t1", "t2"))
    targets = load_targets(path, panel)
    assert targets.samples == ["t1", "t2"] and targets.source == path
    assert targets.typed.tolist() == [True, True, True, False, False, True]
    M = MASK
    assert targets.haplotypes.dtype == np.uint8
    assert targets.haplotypes.tolist() == [[0, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0],
                                           [M, M, M, M], [M, M, M, M], [M, 1, M, M]]
    assert (targets.n_flipped, targets.n_dropped_not_in_panel, targets.n_missing) == (1, 2, 3)
    assert (targets.n_strand_ambiguous, targets.n_ambiguous_dropped) == (1, 1)
    assert targets.n_typed == 4


def test_unphased_targets_say_how_to_phase(make_vcf, panel):
    path = make_vcf("unphased.vcf", [record(100, "A", "G", "0/1", "1|0")], samples=("t1", "t2"))
    with pytest.raises(InputError, match=r"unphased\.vcf: record 1:100: unphased genotype for sample t1: "
                                         r"targets must be phased; .*beagle .*impute=false"):
        load_targets(path, panel)


def test_leakage_warning(make_vcf, panel):
    path = make_vcf("leak.vcf", [record(100, "A", "G", "0|1", "1|0")], samples=("p2", "t1"))
    with pytest.warns(UserWarning, match=r"1 target samples are also panel samples \(p2\): leakage"):
        load_targets(path, panel)


def test_no_shared_sites(make_vcf, panel):
    path = make_vcf("none.vcf", [record(150, "A", "G", "0|1", "1|0")], samples=("t1", "t2"))
    with pytest.raises(InputError, match=r"none\.vcf: none of its 1 records on 1 matches a panel site"):
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
    assert targets.n_typed == len(range(0, panel.n_sites, 5)) and targets.typed[::5].all()
    np.testing.assert_array_equal(targets.haplotypes[targets.typed], truth.haplotypes[targets.typed])
    assert (targets.haplotypes[~targets.typed] == MASK).all()
