"""phasing.py without running a real phaser: choice, failure, and the checks on what comes back."""
import numpy as np
import pytest

from helpers import record
from embrag_ext import phasing
from embrag_ext.errors import InputError
from embrag_ext.panel_vcf import load_panel
from embrag_ext.qc import QCThresholds
from embrag_ext.targets import load_targets
from embrag_ext.tokens import MASK

pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture
def unphased(make_vcf):
    panel = load_panel(make_vcf("panel.vcf", [record(100, "A", "G", "0|1", "1|1"), record(200, "C", "T", "0|0", "1|0")],
                                samples=("p1", "p2")))
    targets = load_targets(make_vcf("targets.vcf", [record(100, "A", "G", "0/1", "1|1"),
                                                    record(200, "C", "T", "1/0", "0|0")], samples=("t1", "t2")),
                           panel, thresholds=QCThresholds(min_site_call_rate=0), allow_unphased=True)
    return panel, targets


def test_a_failing_phaser_is_a_one_line_error(unphased):
    panel, targets = unphased
    with pytest.raises(InputError, match=r"--phaser beagle: false failed \(exit status 1\)"):
        phasing.prephase(targets, panel, phasing.Phaser("beagle", "/bin/false", "0"))
    assert targets.phase_unknown.any()                      # nothing changed


def test_eagle_needs_a_numbered_chromosome(tmp_path):
    assert open(phasing._eagle_map(str(tmp_path), "chrX", np.array([10, 500]))).read().splitlines()[1:] == [
        "23 9 1.0 0.000009", "23 501 1.0 0.000501"]
    with pytest.raises(InputError, match=r"Eagle phases chromosomes 1-22 and X, not chrUn_1; use --phaser shapeit4"):
        phasing._eagle_map(str(tmp_path), "chrUn_1", np.array([10, 500]))


def test_only_phase_may_change():
    given = np.array([[0, 1, 1, 1], [1, 0, MASK, MASK]], dtype=np.uint8)        # 2 sites x 2 samples
    phased = np.array([[1, 0, 1, 1], [0, 1, 0, 0]], dtype=np.uint8)              # site 2, sample 2 imputed
    found = np.array([True, True])
    phaser = phasing.Phaser("eagle", "eagle", "2")
    assert phasing._merge(given, phased, found, ["a", "b"], np.array([100, 200]), phaser) == 0
    assert phased.tolist() == [[1, 0, 1, 1], [0, 1, MASK, MASK]]                # missing stays missing
    changed = np.array([[1, 1, 1, 1], [0, 1, 0, 0]], dtype=np.uint8)
    with pytest.raises(InputError, match=r"--phaser eagle: changed the genotype of sample a at position 100 "
                                         r"\(1 -> 2 ALT alleles\)"):
        phasing._merge(given, changed, found, ["a", "b"], np.array([100, 200]), phaser)


def test_heterozygotes_at_sites_the_phaser_dropped_become_missing():
    given = np.array([[0, 1, 1, 1]], dtype=np.uint8)
    phased = np.full((1, 4), MASK, dtype=np.uint8)
    dropped = phasing._merge(given, phased, np.array([False]), ["a", "b"], np.array([100]),
                             phasing.Phaser("shapeit4", "shapeit4", "4"))
    assert dropped == 1 and phased.tolist() == [[MASK, MASK, 1, 1]]


def test_half_missing_genotypes_go_to_the_phaser_wholly_missing():
    haplotypes = np.array([[0, MASK, 1, 0]], dtype=np.uint8)
    assert phasing._whole_genotypes(haplotypes).tolist() == [[MASK, MASK, 1, 0]]
