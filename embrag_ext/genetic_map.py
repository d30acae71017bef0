"""Genetic positions (centimorgans) of the panel's sites.

Switching between copied reference haplotypes happens at recombinations, so
the copying model measures distance in cM. Without a map, 1 cM = 1 Mb (as
Beagle does). With a map in PLINK format (``chrom id cM bp`` per line,
whitespace separated, the format Beagle's ``map=`` and the imputation servers
use), positions between map entries are interpolated linearly and positions
beyond its ends extrapolated with the map's mean rate.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .errors import InputError

CM_PER_BP_WITHOUT_MAP = 1e-6


def genetic_positions(chrom: str, positions: np.ndarray, map_path: Optional[str] = None) -> np.ndarray:
    """float64 [S]: cM of 1-based base-pair ``positions`` on ``chrom``."""
    positions = np.asarray(positions, dtype=np.float64)
    if map_path is None:
        return positions * CM_PER_BP_WITHOUT_MAP
    bp, cm = read_plink_map(map_path, chrom)
    inside = np.interp(positions, bp, cm)
    rate = (cm[-1] - cm[0]) / (bp[-1] - bp[0]) if bp[-1] > bp[0] else CM_PER_BP_WITHOUT_MAP
    before, after = positions < bp[0], positions > bp[-1]
    inside[before] = cm[0] - (bp[0] - positions[before]) * rate
    inside[after] = cm[-1] + (positions[after] - bp[-1]) * rate
    return inside


def read_plink_map(map_path: str, chrom: str) -> Tuple[np.ndarray, np.ndarray]:
    """(bp float64 [E], cM float64 [E]) of ``chrom``'s lines of a PLINK map, sorted by bp."""
    bp, cm = [], []
    try:
        with open(map_path) as handle:
            for line_number, line in enumerate(handle, start=1):
                fields = line.split()
                if not fields or fields[0].startswith("#") or _strip_chr(fields[0]) != _strip_chr(chrom):
                    continue
                try:
                    cm.append(float(fields[2]))
                    bp.append(float(fields[3]))
                except (IndexError, ValueError):
                    raise InputError(f"{map_path}: line {line_number}: expected 'chrom id cM bp' "
                                     "(PLINK map format)") from None
    except OSError as error:
        raise InputError(f"--map {map_path}: {error.strerror or error}") from None
    if len(bp) < 2:
        raise InputError(f"{map_path}: fewer than 2 map positions on chromosome {chrom}")
    order = np.argsort(bp, kind="stable")
    bp, cm = np.asarray(bp)[order], np.asarray(cm)[order]
    if (np.diff(cm) < 0).any():
        raise InputError(f"{map_path}: genetic positions decrease along chromosome {chrom}")
    return bp, cm


def _strip_chr(name: str) -> str:
    return name[3:] if name.lower().startswith("chr") else name
