"""Windows over panel sites and stitching per-window values back to sites."""
import numpy as np
import pytest

from embrag_ext.errors import InputError
from embrag_ext.windows import make_windows, stitch


@pytest.mark.parametrize("n_sites, length, overlap, expected", [
    (10, 4, 1, [[0, 4], [3, 7], [6, 10]]),            # tiles exactly
    (11, 4, 1, [[0, 4], [3, 7], [6, 10], [7, 11]]),   # last window shifted left to end at 11
    (8, 4, 0, [[0, 4], [4, 8]]),
    (4, 4, 2, [[0, 4]]),
    (3, 4, 2, [[0, 3]]),                              # fewer sites than a window
])
def test_make_windows(n_sites, length, overlap, expected):
    windows = make_windows(n_sites, length, overlap)
    assert windows.dtype == np.int64 and windows.tolist() == expected


@pytest.mark.parametrize("n_sites, length, overlap", [(1000, 64, 16), (1001, 64, 63), (517, 100, 0)])
def test_windows_cover_every_site_with_full_length(n_sites, length, overlap):
    windows = make_windows(n_sites, length, overlap)
    assert (windows[:, 1] - windows[:, 0] == length).all()
    assert windows[0, 0] == 0 and windows[-1, 1] == n_sites
    assert (np.diff(windows[:, 0]) > 0).all() and (windows[1:, 0] <= windows[:-1, 1] - overlap).all()


@pytest.mark.parametrize("n_sites, length, overlap, message", [
    (10, 4, 4, "overlap=4"), (10, 4, -1, "overlap=-1"), (10, 0, 0, "length=0"), (0, 4, 1, "n_sites=0")])
def test_make_windows_rejects_bad_arguments(n_sites, length, overlap, message):
    with pytest.raises(InputError, match=message):
        make_windows(n_sites, length, overlap)


def test_stitch_averages_overlaps_by_hand():
    windows = np.array([[0, 3], [2, 5]])
    values = [np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0, 7.0])]
    np.testing.assert_allclose(stitch(values, windows, 5), [1.0, 2.0, 4.0, 6.0, 7.0])


def test_stitch_keeps_trailing_dims_and_recovers_per_site_values():
    rng = np.random.default_rng(0)
    per_site = rng.random((103, 4, 2)).astype(np.float32)
    windows = make_windows(103, 20, 7)
    stitched = stitch([per_site[start:end] for start, end in windows], windows, 103)
    assert stitched.shape == (103, 4, 2) and stitched.dtype == np.float32
    np.testing.assert_allclose(stitched, per_site, rtol=1e-6)


def test_stitch_rejects_uncovered_sites_and_bad_shapes():
    with pytest.raises(ValueError, match="site 3 is not covered"):
        stitch([np.zeros(3)], np.array([[0, 3]]), 4)
    with pytest.raises(ValueError, match="shape"):
        stitch([np.zeros(2)], np.array([[0, 3]]), 3)
