"""The array's sites as a mask over the panel, from a VCF or a sites file."""
import numpy as np
import pytest

from embrag_ext.array_sites import array_sites, pattern_difference
from embrag_ext.errors import InputError
from embrag_ext.panel_vcf import load_panel
from helpers import record

pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture
def panel(make_vcf):
    return load_panel(make_vcf("panel.vcf", [record(pos, "A", "G", "0|1", "1|0") for pos in (100, 200, 300, 400)]))


def test_a_vcf_array_matches_by_position_and_alleles(make_vcf, panel):
    path = make_vcf("array.vcf", [record(100, "A", "G", "0|1", "0|0"), record(200, "G", "A", "0|1", "0|0"),
                                  record(300, "A", "T", "0|1", "0|0"), record(350, "A", "G", "0|1", "0|0")])
    assert array_sites(path, panel).tolist() == [True, True, False, False]   # 200 swapped: kept


def test_a_sites_file_matches_by_position(tmp_path, panel):
    path = tmp_path / "array.txt"
    path.write_text("# CHROM POS\n1 300\n1 400\n2 100\n")
    assert array_sites(str(path), panel).tolist() == [False, False, True, True]
    path.write_text("1 three\n")
    with pytest.raises(InputError, match="line 1: expected 'CHROM POS'"):
        array_sites(str(path), panel)
    path.write_text("1 999\n")
    with pytest.raises(InputError, match="none of its sites"):
        array_sites(str(path), panel)


def test_pattern_difference_is_the_share_of_the_union_in_one_only():
    a = np.array([1, 1, 0, 0, 1], dtype=bool)
    b = np.array([1, 0, 1, 0, 1], dtype=bool)
    assert pattern_difference(a, b) == pytest.approx(2 / 4) and pattern_difference(a, a) == 0
