"""Batches: B samples' two haplotypes over one span of sites, plus what they observe.

Every batch holds B samples of ONE span (a window in training; a chunk of
consecutive windows at inference, whose copying posterior is computed once):
their true alleles and model tokens over the span, and the observed sites of
its *context*: the observed sites inside the span and the ``context_sites``
nearest on each side (the copying HMM and the retrieval keys use only
observed sites). The observed pattern is fixed (the array's or the targets'
typed sites) or drawn per batch like an array (masking.py), shared by every
sample of the batch; each sample may miss a few more observed calls (sporadic
missingness, MASK tokens). Item ``i`` of a :class:`SpanBatches` is a pure
function of (seed, epoch, i), so a DataLoader with workers, a restart or a
resume all see the same batches.

A batch is a dict of tensors:
    span            int               span index (plain ints: reading them never waits for a device)
    start           int               first site of the span
    haplotypes      uint8 [B, 2, Ls]  true alleles (MASK where unknown, e.g. untyped targets)
    tokens          int64 [B, 2, Ls]  model input: the allele where observed, else MASK
    observed        bool  [Ls]        the span's shared observed-site pattern
    context_sites   int64 [M]         panel sites observed in the context (sorted)
    context_tokens  int64 [B, 2, M]   the query alleles there (MASK where missing)
    sample          int64 [B]         row of each sample in the retrieval panel (its
                                      haplotypes are rows 2s, 2s+1), -1 if not in it
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .errors import InputError
from .masking import MaskConfig, array_pattern, draw_ratio, rng_for, sporadic_missing
from .panel import haplotype_columns
from .tokens import MASK


def split_samples(n_samples: int, val_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train, validation) sample indices, sorted int64, split at random by sample."""
    if not 0 < val_fraction < 1:
        raise InputError(f"validation fraction {val_fraction}: must be in (0, 1)")
    n_val = max(1, int(round(n_samples * val_fraction)))
    if n_val >= n_samples:
        raise InputError(f"{n_samples} samples: too few to keep {n_val} for validation")
    order = rng_for(seed, 0xDA7A).permutation(n_samples)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class SpanBatches(torch.utils.data.Dataset):
    """The batches of one epoch over (span, samples).

    haplotypes_T: uint8 [2N, S], haplotype rows of the N query samples.
    spans: int64 [G, 2] site ranges; context_sites: observed sites taken on each side of a span.
    panel_sample: int64 [N], each query sample's row in the retrieval panel (-1 if absent), for
        self-exclusion.
    observed_sites: bool [S] fixed observed sites (the array; inference: the
        typed sites); None draws an array-like pattern per batch from ``mask``.
    shuffle: shuffle samples within spans and batches across spans per epoch.
    """

    def __init__(self, haplotypes_T: np.ndarray, spans: np.ndarray, context_sites: int, batch_size: int,
                 mask: MaskConfig, seed: int, panel_sample: np.ndarray,
                 observed_sites: Optional[np.ndarray] = None, shuffle: bool = True):
        if batch_size < 1:
            raise InputError(f"batch size {batch_size}: must be >= 1")
        self.haplotypes_T = haplotypes_T
        self.spans = np.asarray(spans, dtype=np.int64)
        self.context_sites = context_sites
        self.batch_size = batch_size
        self.mask = mask
        self.seed = seed
        self.panel_sample = np.asarray(panel_sample, dtype=np.int64)
        self.observed_sites = observed_sites
        self.shuffle = shuffle
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Plan the batches of ``epoch``: a list of (span, sample indices)."""
        self.epoch = epoch
        rng = rng_for(self.seed, epoch, 0xBA7C)
        n_samples = self.haplotypes_T.shape[0] // 2
        plan: List[Tuple[int, np.ndarray]] = []
        for span in range(len(self.spans)):
            order = rng.permutation(n_samples) if self.shuffle else np.arange(n_samples)
            plan += [(span, order[i:i + self.batch_size]) for i in range(0, n_samples, self.batch_size)]
        if self.shuffle:
            plan = [plan[i] for i in rng.permutation(len(plan))]
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        span, samples = self.plan[index]
        start, end = (int(x) for x in self.spans[span])
        rng = rng_for(self.seed, self.epoch, index)
        rows = haplotype_columns(samples)
        B, Ls = len(samples), end - start
        observed = self._observed_context(start, end, rng)                       # int64 [M]
        context = self.haplotypes_T[rows][:, observed].reshape(B, 2, -1)         # [B, 2, M]
        if self.observed_sites is None:
            context = np.where(sporadic_missing(context.shape, self.mask, rng), MASK, context)
        inside = (observed >= start) & (observed < end)                          # [M]
        haplotypes = self.haplotypes_T[rows, start:end].reshape(B, 2, Ls)
        tokens = np.full((B, 2, Ls), MASK, dtype=np.int64)
        tokens[..., observed[inside] - start] = context[..., inside]
        span_observed = np.zeros(Ls, dtype=bool)
        span_observed[observed[inside] - start] = True
        return {"span": span, "start": start,
                "haplotypes": torch.from_numpy(np.ascontiguousarray(haplotypes)),
                "tokens": torch.from_numpy(tokens), "observed": torch.from_numpy(span_observed),
                "context_sites": torch.from_numpy(observed),
                "context_tokens": torch.from_numpy(context.astype(np.int64)),
                "sample": torch.from_numpy(self.panel_sample[samples])}

    def _observed_context(self, start: int, end: int, rng: np.random.Generator) -> np.ndarray:
        """int64 [M]: the observed sites inside [start, end) and the context_sites nearest on each side."""
        n_sites = self.haplotypes_T.shape[1]
        if self.observed_sites is not None:
            observed = np.flatnonzero(self.observed_sites)
        else:
            ratio = draw_ratio(self.mask, rng)
            pad = int(np.ceil((self.context_sites + 2) / ratio)) + 1
            low, high = max(0, start - pad), min(n_sites, end + pad)
            observed = low + np.flatnonzero(array_pattern(high - low, self.mask, rng, ratio))
        first, last = np.searchsorted(observed, start), np.searchsorted(observed, end)
        context = observed[max(0, first - self.context_sites):last + self.context_sites]
        if len(context) == 0:
            raise InputError(f"sites [{start}, {end}) and their context have no observed site")
        return context


def loader(batches: SpanBatches, workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over prepared batches (no re-batching, order kept)."""
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                                       persistent_workers=False)
