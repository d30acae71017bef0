"""Windows: fixed-length ranges of panel sites, and stitching per-window values back.

A window is a ``[start, end)`` range of site indices. ``make_windows`` tiles
``n_sites`` sites with windows of exactly ``length`` sites overlapping by
``overlap`` sites; the last window is shifted left to end at ``n_sites`` (so it
may overlap its neighbour by more). ``key_ranges`` widens each window by a flank
(the sites retrieval compares). ``stitch`` maps per-window values back to
sites, averaging where windows overlap.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import InputError


def make_windows(n_sites: int, length: int, overlap: int) -> np.ndarray:
    """Window site ranges int64 [W, 2] of ``[start, end)``.

    Every window has ``length`` sites when ``n_sites >= length``; with fewer
    sites there is one window ``[0, n_sites)``.
    """
    if n_sites < 1:
        raise InputError(f"n_sites={n_sites}: need at least one site")
    if length < 1:
        raise InputError(f"window length={length}: must be >= 1")
    if not 0 <= overlap < length:
        raise InputError(f"window overlap={overlap}: must be >= 0 and < length ({length})")
    if n_sites <= length:
        return np.array([[0, n_sites]], dtype=np.int64)
    starts = np.arange(0, n_sites - length + 1, length - overlap, dtype=np.int64)
    if starts[-1] + length < n_sites:
        starts = np.append(starts, n_sites - length)
    return np.stack([starts, starts + length], axis=1)


def key_ranges(windows: np.ndarray, flank: int, n_sites: int) -> np.ndarray:
    """int64 [W, 2]: each window widened by ``flank`` sites per side, clipped to [0, n_sites)."""
    if flank < 0:
        raise InputError(f"key flank {flank}: must be >= 0")
    windows = np.asarray(windows, dtype=np.int64)
    return np.stack([np.maximum(windows[:, 0] - flank, 0), np.minimum(windows[:, 1] + flank, n_sites)], axis=1)


def stitch(window_values: Sequence[np.ndarray], window_info: np.ndarray, n_sites: int) -> np.ndarray:
    """Per-site values [n_sites, ...] from per-window values, overlaps averaged.

    window_values[w]: array [end_w - start_w, ...] (any trailing dims, the same
    for every window); window_info: [W, 2] ``[start, end)`` ranges. Every site
    must be covered by a window. The result is floating point.
    """
    window_info = np.asarray(window_info, dtype=np.int64)
    if len(window_values) != len(window_info):
        raise ValueError(f"{len(window_values)} window values for {len(window_info)} windows")
    trailing = np.shape(window_values[0])[1:]
    dtype = np.result_type(np.asarray(window_values[0]).dtype, np.float32)
    total = np.zeros((n_sites, *trailing), dtype=np.float64)
    count = np.zeros(n_sites, dtype=np.int64)
    for values, (start, end) in zip(window_values, window_info):
        if np.shape(values) != (end - start, *trailing):
            raise ValueError(f"window [{start}, {end}) values have shape {np.shape(values)}, "
                             f"expected {(end - start, *trailing)}")
        total[start:end] += values
        count[start:end] += 1
    if not count.all():
        raise ValueError(f"site {int(np.argmin(count))} is not covered by any window")
    return (total / count.reshape(-1, *[1] * len(trailing))).astype(dtype)
