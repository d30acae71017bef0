"""Observed-site patterns for training: what an array would have typed.

A genotyping array types a regular-ish subset of a panel's sites. In training
each batch draws, for its window, one such pattern (shared by every sample of
the batch: the retrieval keys are built under it), then each sample loses a
few more observed sites at random ("sporadic missing", as array calls fail).
The model is scored on the sites it did not see.

Everything is drawn from a numpy Generator, so a pattern is a pure function
of the seed it is given (see :func:`rng_for`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class MaskConfig:
    """How observed sites are drawn.

    ratio_range: the fraction of sites that are observed is drawn
        log-uniformly from [low, high] for every pattern (a real array types
        1-5% of a sequenced panel's sites; train with the array itself when
        you have it: DataConfig.array).
    jitter: each observed site moves by up to this fraction of the spacing
        (0 = perfectly regular, 0.5 = anywhere in its slot).
    sporadic_missing: probability that an observed site is missing for one sample.
    """
    ratio_range: Tuple[float, float] = (0.01, 0.2)
    jitter: float = 0.4
    sporadic_missing: float = 0.02

    def __post_init__(self):
        low, high = self.ratio_range
        if not 0 < low <= high <= 1:
            raise InputError(f"mask ratio range {low}-{high}: need 0 < low <= high <= 1")
        if not 0 <= self.jitter <= 0.5:
            raise InputError(f"mask jitter {self.jitter}: must be in [0, 0.5]")
        if not 0 <= self.sporadic_missing < 1:
            raise InputError(f"sporadic missing rate {self.sporadic_missing}: must be in [0, 1)")


def rng_for(*keys: int) -> np.random.Generator:
    """A Generator determined by a tuple of non-negative ints (seed, epoch, batch...)."""
    return np.random.default_rng([int(key) for key in keys])


def draw_ratio(config: MaskConfig, rng: np.random.Generator) -> float:
    """An observed-site fraction, log-uniform in config.ratio_range (arrays span
    an order of magnitude of densities; each decade is drawn alike)."""
    low, high = config.ratio_range
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def array_pattern(length: int, config: MaskConfig, rng: np.random.Generator,
                  ratio: Optional[float] = None) -> np.ndarray:
    """bool [length]: a regular-ish observed subset at ``ratio`` (default drawn by :func:`draw_ratio`).

    Sites sit one per slot of ``1 / ratio`` sites, at a random phase, each moved
    by a random jitter; at least one site is observed.
    """
    ratio = draw_ratio(config, rng) if ratio is None else ratio
    spacing = 1.0 / ratio
    slots = np.arange(rng.uniform(0, spacing), length, spacing)             # [n]
    slots = slots + rng.uniform(-config.jitter, config.jitter, slots.shape) * spacing
    observed = np.zeros(length, dtype=bool)
    observed[np.clip(np.rint(slots).astype(np.int64), 0, length - 1)] = True
    if not observed.any():
        observed[rng.integers(length)] = True
    return observed


def sporadic_missing(shape: Tuple[int, ...], config: MaskConfig, rng: np.random.Generator) -> np.ndarray:
    """bool [shape]: observed sites that are nevertheless missing for one sample."""
    return rng.random(shape) < config.sporadic_missing
