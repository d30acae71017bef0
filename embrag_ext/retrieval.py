"""Per-window nearest-neighbour search of reference haplotypes (FAISS).

Keys. Haplotypes are compared over a window's key range: the window plus a
flank of sites on each side (a long stretch of observed sites tells close
haplotypes apart far better than a window's few). The query encoder is the
model's embedding layer (``window_embed``). Its output at site l for allele t
is ``E[t, l] = token_emb[t] + site_emb[l]``, so the encoded reference panel of
a key range is the small table of its allele encodings ``E`` [V, Lk, D]
(re-encoded by :meth:`Retriever.refresh`). The key of a haplotype under the
observed-site pattern is its embedding at the observed sites, each scaled by
``sqrt(w)``, flattened: ``sqrt(w[obs]) * E[tokens[obs], obs]`` -> [n_obs * D],
with ``w = exp(-d / decay)`` for a site d sites away from the window (w = 1
inside it): far sites still count, near ones count more, so neighbours that
match around the window win. A query allele that is MASK at an observed site
(a sporadic missing call) is keyed at the midpoint of the REF and ALT
encodings there, equally far from both, so it cannot change the ranking: only
sites observed in the query compare. (The site part of E is common to query
and reference and cancels in L2: the squared distance is
``||E[ALT] - E[REF]||^2`` times the weighted count of mismatching sites.)

Search. One FAISS index per (window, observed pattern), built on demand from
the stored encodings; the last one is kept while the same window and pattern
come back (inference runs window by window under the typed sites; training
draws a new pattern per batch). One batched search per call, h1 and h2 of
every sample as separate queries. A query from the panel never retrieves its
own sample's two haplotypes: we search K + 2 and drop them. Distances are
returned as the weighted count of mismatching observed sites (0 = identical).
Any FAISS factory string may replace the exact "Flat" index; its recall@K
against exact search is then measured on every search.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Tuple

import faiss
import numpy as np
import torch

from .config import RetrievalConfig
from .errors import InputError
from .tokens import ALT, MASK, REF
from .windows import key_ranges

EncodeFn = Callable[[int], torch.Tensor]  # window -> allele encodings [V, Lk, D] of its key range


class Retriever:
    """Top-K reference haplotypes per query haplotype, per window.

    ref_tokens_T: uint8 [H, S] reference haplotypes (rows 2s, 2s + 1 are
        sample s); windows: int64 [W, 2]; key_ranges: int64 [W, 2] the sites
        compared for each window (windows.key_ranges); decay: site weight
        scale in sites (0: all sites weigh 1); factory: FAISS index factory string;
        present: bool [H] rows that are haplotypes (default all; a haploid
        sample's second row is not, Panel.present_haplotypes): only these are indexed.
    """

    def __init__(self, ref_tokens_T: np.ndarray, windows: np.ndarray, key_ranges: np.ndarray, k: int,
                 decay: float = 0.0, factory: str = "Flat", present: Optional[np.ndarray] = None):
        if k < 1:
            raise InputError(f"K={k}: must be >= 1")
        if decay < 0:
            raise InputError(f"key decay {decay}: must be >= 0")
        self.ref_tokens_T = ref_tokens_T
        self.key_ranges = np.asarray(key_ranges, dtype=np.int64)
        self.scales = [site_scales(window, key_range, decay) for window, key_range in zip(windows, key_ranges)]
        self.k = k
        self.factory = factory
        self.rows = np.arange(len(ref_tokens_T)) if present is None else np.flatnonzero(present)  # indexed rows
        self.encodings: Optional[list] = None       # per window float32 [V, Lk, D]
        self._last: Optional[Tuple[int, bytes, faiss.Index]] = None   # (window, pattern, index)
        self.recall_hits = self.recall_total = 0
        _check_factory(factory)

    def refresh(self, encode: EncodeFn) -> float:
        """Re-encode every key range's alleles with ``encode`` and drop the
        built indexes (rebuilt on the next search). Returns the seconds it took."""
        began = time.perf_counter()
        with torch.no_grad():
            self.encodings = [encode(window).float().cpu().numpy() for window in range(len(self.key_ranges))]
        self._last = None
        return time.perf_counter() - began

    def state_dict(self) -> dict:
        return {"encodings": self.encodings}

    def load_state_dict(self, state: dict) -> None:
        self.encodings = state["encodings"]
        self._last = None

    def search(self, window: int, observed: np.ndarray, query_tokens: np.ndarray,
               query_sample: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        """Neighbours of Q query haplotypes of one window.

        observed: bool [Lk] the observed pattern over the window's key range;
        query_tokens: int64 [Q, Lk]; query_sample: int64 [Q] each query's
        sample row in the panel (-1 if none). Returns ids int64 [Q, K] (rows
        of ref_tokens_T, -1 = none) and distances float32 [Q, K].
        """
        sites = np.flatnonzero(observed)                                       # [n]
        encodings = self.encodings[window]                                     # [V, Lk, D]
        index = self._index(window, observed, sites)
        scales = self.scales[window][sites]                                    # [n]
        queries = _query_keys(encodings, query_tokens[:, sites], sites, scales)  # [Q, n * D]
        n_results = self.k + (2 if (query_sample >= 0).any() else 0)
        dist, ids = index.search(queries, n_results)                            # [Q, K (+2)]
        ids = np.where(ids >= 0, self.rows[np.maximum(ids, 0)], -1)            # index rows -> panel rows
        ids, dist = _drop_own_sample(ids, dist, query_sample, self.k)         # [Q, K]
        if self.factory != "Flat":
            self._count_recall(window, sites, queries, query_sample, n_results, ids)
        mismatch = float(((encodings[ALT, 0] - encodings[REF, 0]) ** 2).sum())
        dist = np.where(ids >= 0, dist / max(mismatch, 1e-12), 0.0)
        return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(dist.astype(np.float32))

    def recall(self) -> Optional[float]:
        """recall@K of the approximate index against exact search so far (None for Flat)."""
        return self.recall_hits / self.recall_total if self.recall_total else None

    def _index(self, window: int, observed: np.ndarray, sites: np.ndarray) -> faiss.Index:
        """The window's index under this observed pattern (the last one if they repeat)."""
        pattern = observed.tobytes()
        if self._last is not None and self._last[:2] == (window, pattern):
            return self._last[2]
        index = _build_index(self.factory, self.reference_keys(window, sites))  # keys [H, n * D]
        self._last = (window, pattern, index)
        return index

    def reference_keys(self, window: int, sites: np.ndarray) -> np.ndarray:
        """float32 [R, n * D]: every indexed reference haplotype's (``rows``) encoding at ``sites``
        (key-range offsets)."""
        start = self.key_ranges[window, 0]
        tokens = self.ref_tokens_T[np.ix_(self.rows, start + sites)]            # [R, n]
        keys = self.encodings[window][tokens, sites] * self.scales[window][sites, None]  # [H, n, D]
        return np.ascontiguousarray(keys.reshape(len(tokens), -1), dtype=np.float32)

    def _count_recall(self, window: int, sites: np.ndarray, queries: np.ndarray,
                      query_sample: np.ndarray, n_results: int, found: np.ndarray) -> None:
        """Add the overlap of ``found`` [Q, K] with the exact top-K to the recall counts."""
        exact = faiss.IndexFlatL2(queries.shape[1])
        exact.add(self.reference_keys(window, sites))
        exact_dist, exact_ids = exact.search(queries, n_results)
        exact_ids = np.where(exact_ids >= 0, self.rows[np.maximum(exact_ids, 0)], -1)
        exact_ids = _drop_own_sample(exact_ids, exact_dist, query_sample, self.k)[0]
        for got, want in zip(found, exact_ids):
            self.recall_hits += len(np.intersect1d(got[got >= 0], want[want >= 0]))
            self.recall_total += int((want >= 0).sum())


def make_retriever(config: RetrievalConfig, ref_tokens_T: np.ndarray, windows: np.ndarray,
                   present: Optional[np.ndarray] = None) -> Retriever:
    """The retriever ``config`` describes over reference haplotypes ref_tokens_T uint8 [H, S]
    (``present``: bool [H], rows that are haplotypes) and windows int64 [W, 2]
    (training and imputation build theirs here)."""
    ranges = key_ranges(windows, config.key_flank, ref_tokens_T.shape[1])
    return Retriever(ref_tokens_T, windows, ranges, config.k, config.key_decay, config.index, present)


def _check_factory(factory: str) -> None:
    try:
        faiss.index_factory(8, factory)
    except RuntimeError as error:
        raise InputError(f"FAISS index factory {factory!r}: {str(error).splitlines()[0]}") from None


def _build_index(factory: str, keys: np.ndarray) -> faiss.Index:
    """A FAISS index over keys [H, d] (trained on them if it needs training;
    moved to the GPU when this faiss has GPUs)."""
    index = faiss.index_factory(keys.shape[1], factory)
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    if not index.is_trained:
        index.train(keys)
    index.add(keys)
    return index


def site_scales(window: np.ndarray, key_range: np.ndarray, decay: float) -> np.ndarray:
    """float32 [Lk]: sqrt(exp(-d / decay)) per key-range site, d = sites from the window."""
    sites = np.arange(key_range[0], key_range[1])
    outside = np.maximum(np.maximum(window[0] - sites, sites - (window[1] - 1)), 0)   # [Lk]
    if decay == 0:
        return np.ones(len(sites), dtype=np.float32)
    return np.exp(-outside / (2.0 * decay)).astype(np.float32)


def _query_keys(encodings: np.ndarray, tokens: np.ndarray, sites: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 [Q, n * D] query keys; MASK alleles keyed at the REF/ALT midpoint."""
    midpoint = 0.5 * (encodings[REF] + encodings[ALT])                          # [Lk, D]
    table = np.concatenate([encodings[:MASK], midpoint[None]], axis=0)         # [3, Lk, D]
    keys = table[np.minimum(tokens, MASK), sites] * scales[:, None]             # [Q, n, D]
    return np.ascontiguousarray(keys.reshape(len(tokens), -1), dtype=np.float32)


def _drop_own_sample(ids: np.ndarray, dist: np.ndarray, query_sample: np.ndarray,
                     k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The first k results [Q, k] of each row that are not the query's own sample."""
    own = (ids // 2 == query_sample[:, None]) & (query_sample[:, None] >= 0) & (ids >= 0)
    order = np.argsort(own, axis=1, kind="stable")[:, :k]                      # own ones last
    ids, dist = np.take_along_axis(ids, order, 1), np.take_along_axis(dist, order, 1)
    return np.where(np.take_along_axis(own, order, 1), -1, ids), dist
