"""Window-grouped batches: a sample's two haplotypes in one window, plus a mask.

Every batch holds B samples of ONE window (the fusion's site tables and the
retrieval index are per window). Retrieval compares haplotypes over a wider
"key range": the window plus ``flank`` sites on each side (clipped to the
panel), so the observed pattern is drawn over the key range. Item ``i`` of a :class:`WindowBatches` is a
batch, a pure function of (seed, epoch, i), so a DataLoader with workers, a
restart or a resume all see the same batches.

A batch is a dict of tensors:
    window      int64 []        window index
    start       int64 []        first site of the window
    haplotypes  uint8 [B, 2, L] true alleles (MASK where unknown, e.g. untyped targets)
    tokens      int64 [B, 2, L] model input: the allele where observed, else MASK
    observed    bool  [L]       the window's shared observed-site pattern
    key_tokens  int64 [B, 2, Lk] tokens over the key range (retrieval queries)
    key_observed bool [Lk]      the observed pattern over the key range
    sample      int64 [B]       row of each sample in the retrieval panel (its
                                haplotypes are rows 2s, 2s+1), -1 if not in it
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .errors import InputError
from .masking import MaskConfig, array_pattern, rng_for, sporadic_missing
from .panel import haplotype_columns
from .tokens import MASK
from .windows import key_ranges


def split_samples(n_samples: int, val_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train, validation) sample indices, sorted int64, split at random by sample."""
    if not 0 < val_fraction < 1:
        raise InputError(f"validation fraction {val_fraction}: must be in (0, 1)")
    n_val = max(1, int(round(n_samples * val_fraction)))
    if n_val >= n_samples:
        raise InputError(f"{n_samples} samples: too few to keep {n_val} for validation")
    order = rng_for(seed, 0xDA7A).permutation(n_samples)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class WindowBatches(torch.utils.data.Dataset):
    """The batches of one epoch over (window, samples).

    haplotypes_T: uint8 [2N, S], haplotype rows of the N query samples.
    windows: int64 [W, 2] site ranges; flank: key-range sites per side. panel_sample: int64 [N], each query
        sample's row in the retrieval panel (-1 if absent), for self-exclusion.
    observed_sites: bool [S] fixed observed sites (inference: the typed
        sites); None draws an array-like pattern per batch from ``mask``.
    shuffle: shuffle samples within windows and batches across windows per epoch.
    """

    def __init__(self, haplotypes_T: np.ndarray, windows: np.ndarray, flank: int, batch_size: int,
                 mask: MaskConfig, seed: int, panel_sample: np.ndarray,
                 observed_sites: Optional[np.ndarray] = None, shuffle: bool = True):
        if batch_size < 1:
            raise InputError(f"batch size {batch_size}: must be >= 1")
        self.haplotypes_T = haplotypes_T
        self.windows = np.asarray(windows, dtype=np.int64)
        self.key_ranges = key_ranges(windows, flank, haplotypes_T.shape[1])
        self.batch_size = batch_size
        self.mask = mask
        self.seed = seed
        self.panel_sample = np.asarray(panel_sample, dtype=np.int64)
        self.observed_sites = observed_sites
        self.shuffle = shuffle
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Plan the batches of ``epoch``: a list of (window, sample indices)."""
        self.epoch = epoch
        rng = rng_for(self.seed, epoch, 0xBA7C)
        n_samples = self.haplotypes_T.shape[0] // 2
        plan: List[Tuple[int, np.ndarray]] = []
        for window in range(len(self.windows)):
            order = rng.permutation(n_samples) if self.shuffle else np.arange(n_samples)
            plan += [(window, order[i:i + self.batch_size]) for i in range(0, n_samples, self.batch_size)]
        if self.shuffle:
            plan = [plan[i] for i in rng.permutation(len(plan))]
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        window, samples = self.plan[index]
        start, end = self.windows[window]
        key_start, key_end = self.key_ranges[window]
        rng = rng_for(self.seed, self.epoch, index)
        haplotypes = self.haplotypes_T[haplotype_columns(samples), key_start:key_end]    # [2B, Lk]
        haplotypes = haplotypes.reshape(len(samples), 2, key_end - key_start)       # [B, 2, Lk]
        if self.observed_sites is None:
            observed = array_pattern(key_end - key_start, self.mask, rng)           # [Lk]
            missing = sporadic_missing((len(samples), 1, key_end - key_start), self.mask, rng)
            seen = observed & ~missing                                                # [B, 1, Lk]
        else:
            observed = seen = self.observed_sites[key_start:key_end]
        tokens = torch.from_numpy(np.where(seen & (haplotypes != MASK), haplotypes, MASK).astype(np.int64))
        observed = torch.from_numpy(np.ascontiguousarray(observed))
        haplotypes = torch.from_numpy(np.ascontiguousarray(haplotypes))
        inside = slice(start - key_start, end - key_start)
        return {"window": torch.tensor(window), "start": torch.tensor(start),
                "haplotypes": haplotypes[..., inside].contiguous(), "tokens": tokens[..., inside].contiguous(),
                "observed": observed[inside].contiguous(), "key_tokens": tokens, "key_observed": observed,
                "sample": torch.from_numpy(self.panel_sample[samples])}


def loader(batches: WindowBatches, workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over prepared batches (no re-batching, order kept)."""
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                                       persistent_workers=False)
