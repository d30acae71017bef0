"""Genetic positions: 1 cM per Mb without a map; PLINK maps interpolated and extrapolated."""
import numpy as np
import pytest

from embrag_ext.errors import InputError
from embrag_ext.genetic_map import genetic_positions


def test_without_a_map_one_cm_per_megabase():
    np.testing.assert_allclose(genetic_positions("1", np.array([1, 2_500_000])), [1e-6, 2.5])


def test_a_plink_map_is_interpolated_and_extrapolated(tmp_path):
    path = tmp_path / "chr1.map"
    path.write_text("# chrom id cM bp\nchr1 . 1.0 1000\n1 . 3.0 3000\n1 . 3.0 5000\n2 . 9.0 100\n")
    cm = genetic_positions("1", np.array([500, 1000, 2000, 4000, 7000]), str(path))
    rate = 2.0 / 4000                                         # the map's mean rate, cM per bp
    np.testing.assert_allclose(cm, [1.0 - 500 * rate, 1.0, 2.0, 3.0, 3.0 + 2000 * rate])


@pytest.mark.parametrize("content,message", [
    ("1 . x 1000\n1 . 2 2000\n", "line 1: expected 'chrom id cM bp'"),
    ("1 . 1 1000\n", "fewer than 2 map positions on chromosome 1"),
    ("1 . 2 1000\n1 . 1 2000\n", "genetic positions decrease"),
])
def test_a_bad_map_is_one_line(tmp_path, content, message):
    path = tmp_path / "bad.map"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        genetic_positions("1", np.array([1500]), str(path))
    with pytest.raises(InputError, match="--map .*missing.map"):
        genetic_positions("1", np.array([1500]), str(tmp_path / "missing.map"))
