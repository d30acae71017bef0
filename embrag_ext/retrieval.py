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
against exact search is then measured at every refresh, on a sample of panel
haplotypes as queries (:meth:`Retriever.measure_recall`).

Learned keys (``--keys learned``, learned_keys.py) replace the keys above: the
retriever then stores, per window, what the key encoder's snapshot gives each
allele at each key-range site, and asks its ``keys`` object for reference and
query keys (2 * key_sites dims instead of n_obs * D); distances are returned
as they are (squared key distances).

Refresh across processes: :meth:`Retriever.refresh` encodes the windows
through ``encode_windows`` (default: all of them here); distributed.py swaps in
one that encodes this rank's share and gathers the rest, so every rank
searches the same index.

Devices. Keys, queries, ids and distances are torch tensors on the retriever's
device, and FAISS takes them as they are (faiss.contrib.torch_utils): on a CUDA
device with faiss-gpu the index lives on that GPU and a search reads and writes
device memory, with no host copy (:func:`place_index`). The same code runs on
the CPU with faiss-cpu; there the only difference is where the index lives.
With faiss-cpu on a CUDA run, or an index type FAISS has no GPU form of (HNSW),
the index stays on the CPU and the queries are copied to the host (one warning
says so).
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, Tuple

import faiss
import faiss.contrib.torch_utils  # noqa: F401  (FAISS indexes take torch tensors, on the CPU or a GPU)
import numpy as np
import torch

from .config import RetrievalConfig
from .errors import InputError
from .masking import MaskConfig, array_pattern, rng_for
from .tokens import ALT, MASK, REF
from .windows import key_ranges

EncodeFn = Callable[[int], torch.Tensor]  # window -> allele encodings [V, Lk, D] of its key range
RECALL_WINDOWS = 4        # windows (evenly spaced) of the recall sample at each refresh
RECALL_QUERIES = 64       # panel haplotypes searched per window of the sample
RECALL_MASK = MaskConfig(ratio_range=(0.05, 0.05), sporadic_missing=0.0)   # the sample's observed pattern
FAISS_GPU_INSTALL = "pip uninstall -y faiss-cpu && pip install faiss-gpu"


def encode_every_window(encode: EncodeFn, n_windows: int) -> list:
    """float32 encodings of windows 0..n_windows-1 (one process)."""
    return [encode(window).float() for window in range(n_windows)]


class Retriever:
    """Top-K reference haplotypes per query haplotype, per window.

    ref_tokens_T: uint8 [H, S] reference haplotypes (rows 2s, 2s + 1 are
        sample s; numpy or torch); windows: int64 [W, 2]; key_ranges: int64 [W, 2]
        the sites compared for each window (windows.key_ranges); decay: site weight
        scale in sites (0: all sites weigh 1); factory: FAISS index factory string;
        present: bool [H] rows that are haplotypes (default all; a haploid
        sample's second row is not, Panel.present_haplotypes): only these are indexed;
        device: where the keys, the index and the results live.
    """

    def __init__(self, ref_tokens_T, windows: np.ndarray, key_ranges: np.ndarray, k: int,
                 decay: float = 0.0, factory: str = "Flat", present: Optional[np.ndarray] = None,
                 device: torch.device = torch.device("cpu")):
        if k < 1:
            raise InputError(f"K={k}: must be >= 1")
        if decay < 0:
            raise InputError(f"key decay {decay}: must be >= 0")
        self.device = torch.device(device)
        self.ref_tokens = torch.as_tensor(ref_tokens_T).to(self.device)          # uint8 [H, S]
        self.key_ranges = np.asarray(key_ranges, dtype=np.int64)
        self.scales = [torch.from_numpy(site_scales(window, key_range, decay)).to(self.device)
                       for window, key_range in zip(windows, key_ranges)]         # per window [Lk]
        self.k = k
        self.factory = factory
        rows = np.arange(len(ref_tokens_T)) if present is None else np.flatnonzero(present)
        self.rows = torch.from_numpy(rows).to(self.device)                        # [R] indexed panel rows
        self.encodings: Optional[list] = None   # per window float32 [V, Lk, D] (learned keys: [V, Lk])
        self._last: Optional[Tuple[int, bytes, faiss.Index]] = None   # (window, pattern, index)
        self.last_recall: Optional[float] = None
        self.keys = None               # learned keys (learned_keys.RetrieverKeys); None: L2 keys
        self.encode_windows = encode_every_window   # distributed.py shards this across ranks
        _check_factory(factory)

    @property
    def approximate(self) -> bool:
        return self.factory != "Flat"

    def refresh(self, encode: EncodeFn) -> float:
        """Re-encode every key range's alleles with ``encode`` and drop the
        built indexes (rebuilt on the next search); with an approximate index,
        measure its recall@K (:meth:`measure_recall`). Returns the seconds the
        re-encoding took."""
        began = time.perf_counter()
        with torch.no_grad():
            encodings = self.encode_windows(encode, len(self.key_ranges))
        self.encodings = [table.to(self.device) for table in encodings]
        self._last = None
        seconds = time.perf_counter() - began
        if self.approximate:
            self.measure_recall()
        return seconds

    def state_dict(self) -> dict:
        return {"encodings": [table.cpu() for table in self.encodings]}

    def load_state_dict(self, state: dict) -> None:
        """Stored encodings: CPU tensors (numpy arrays in checkpoints of embrag_ext 0.1)."""
        self.encodings = [torch.as_tensor(table).to(self.device) for table in state["encodings"]]
        self._last = None

    def search(self, window: int, observed: np.ndarray, query_tokens: torch.Tensor,
               query_sample: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Neighbours of Q query haplotypes of one window.

        observed: bool numpy [Lk] the observed pattern over the window's key range;
        query_tokens: int [Q, Lk]; query_sample: int64 [Q] each query's sample
        row in the panel (-1 if none). Returns, on the retriever's device, ids
        int64 [Q, K] (rows of ref_tokens_T, -1 = none) and distances float32 [Q, K].
        """
        sites = np.flatnonzero(observed)                                          # [n]
        index = self._index(window, observed, sites)
        at = torch.from_numpy(sites).to(self.device)
        queries = self.query_keys(window, sites, torch.as_tensor(query_tokens).to(self.device).index_select(1, at))
        ids, dist = self._search(index, queries, torch.as_tensor(query_sample).to(self.device))   # [Q, K]
        if self.keys is None:
            encodings = self.encodings[window]
            mismatch = (encodings[ALT, 0] - encodings[REF, 0]).square().sum()
            dist = dist / mismatch.clamp(min=1e-12)
        return ids, torch.where(ids >= 0, dist, torch.zeros_like(dist))

    def query_keys(self, window: int, sites: np.ndarray, tokens: torch.Tensor) -> torch.Tensor:
        """float32 [Q, d]: keys of query alleles int [Q, n] at key-range offsets ``sites``."""
        if self.keys is not None:
            return self.keys.query(window, sites, tokens)
        at = torch.from_numpy(sites).to(self.device)
        return _query_keys(self.encodings[window], tokens.to(self.device).long(), at, self.scales[window][at])

    def _search(self, index: faiss.Index, queries: torch.Tensor,
                query_sample: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(ids [Q, K] panel rows, -1 none; squared distances [Q, K]), the query's own sample dropped.
        K + 2 are searched whatever the queries (whether any is a panel sample is not asked: asking
        would wait for the device)."""
        dist, found = search_index(index, queries, self.k + 2)                    # [Q, K + 2]
        ids = torch.where(found >= 0, self.rows[found.clamp(min=0)], -1)          # index rows -> panel rows
        return drop_own_sample(ids, dist, query_sample, self.k)

    def recall(self) -> Optional[float]:
        """recall@K of the approximate index against exact search at the last
        refresh (:meth:`measure_recall`); None for Flat or before any."""
        return self.last_recall

    def measure_recall(self, n_windows: int = RECALL_WINDOWS, n_queries: int = RECALL_QUERIES,
                       seed: int = 0) -> Optional[float]:
        """recall@K of this index against exact search (:func:`tied_recall`: the share
        of the K returned that are as near as the exact K-th), over ``n_queries`` panel haplotypes (their own
        sample excluded) in ``n_windows`` evenly spaced windows, under an array-like
        pattern of 5% of the sites. Stored for :meth:`recall`; None for Flat."""
        if not self.approximate:
            return None
        hits = total = 0
        chosen = np.unique(np.linspace(0, len(self.key_ranges) - 1, n_windows).round().astype(int))
        indexed = self.rows.cpu().numpy()
        for window in chosen:
            rng = rng_for(seed, int(window), 0x5EC)
            start, end = (int(x) for x in self.key_ranges[window])
            observed = array_pattern(end - start, RECALL_MASK, rng)
            sites = np.flatnonzero(observed)
            rows = torch.from_numpy(np.sort(rng.choice(indexed, min(n_queries, len(indexed)), replace=False)))
            rows = rows.to(self.device)
            tokens = self.ref_tokens.index_select(1, start + torch.from_numpy(sites).to(self.device)).index_select(0, rows)
            queries = self.query_keys(int(window), sites, tokens)
            found = self._search(self._index(int(window), observed, sites), queries, rows // 2)[0]
            refs = self.reference_keys(int(window), sites)
            want_ids, want_dist = self._search(build_faiss_index("Flat", refs), queries, rows // 2)
            found_keys = refs[torch.searchsorted(self.rows, found.clamp(min=0))]          # [Q, K, d]
            found_dist = torch.where(found >= 0, (found_keys - queries[:, None]).square().sum(-1), torch.inf)
            window_hits, window_total = tied_recall(
                found_dist.cpu().numpy(), torch.where(want_ids >= 0, want_dist, torch.inf).cpu().numpy())
            hits, total = hits + window_hits, total + window_total
        self._last = None
        self.last_recall = hits / total if total else None
        return self.last_recall

    def _index(self, window: int, observed: np.ndarray, sites: np.ndarray) -> faiss.Index:
        """The window's index under this observed pattern (the last one if they repeat)."""
        pattern = observed.tobytes()
        if self._last is not None and self._last[:2] == (window, pattern):
            return self._last[2]
        index = build_faiss_index(self.factory, self.reference_keys(window, sites))  # keys [R, n * D]
        self._last = (window, pattern, index)
        return index

    def reference_keys(self, window: int, sites: np.ndarray) -> torch.Tensor:
        """float32 [R, n * D] on the device: every indexed reference haplotype's (``rows``)
        encoding at ``sites`` (key-range offsets)."""
        at = torch.from_numpy(sites).to(self.device)
        tokens = self.ref_tokens.index_select(1, self.key_ranges[window, 0] + at).index_select(0, self.rows)  # [R, n]
        if self.keys is not None:
            return self.keys.reference(window, self.encodings[window], sites, tokens)
        keys = self.encodings[window][tokens.long(), at] * self.scales[window][at, None]     # [R, n, D]
        return keys.reshape(len(tokens), -1).float().contiguous()


def tied_recall(found_dist: np.ndarray, exact_dist: np.ndarray) -> Tuple[int, int]:
    """(hits, total) of recall@K with ties: a returned neighbour is a hit when its
    true distance is within the exact K-th distance (haplotypes are often identical at
    the observed sites, and which of tied references exact search returns is arbitrary).
    found_dist [Q, K]: true distances of the returned neighbours (inf = none);
    exact_dist [Q, K]: exact search's distances (inf = none)."""
    hits = total = 0
    for got, want in zip(found_dist, exact_dist):
        want = want[np.isfinite(want)]
        if len(want) == 0:
            continue
        bound = want.max() * (1 + 1e-5) + 1e-6
        hits += min(len(want), int((got <= bound).sum()))
        total += len(want)
    return hits, total


def overlap_recall(found: np.ndarray, exact: np.ndarray) -> Tuple[int, int]:
    """(hits, total): how many of the exact top K [Q, K] (-1 = none) the approximate
    results [Q, K] contain, and how many there were to find."""
    hits = total = 0
    for got, want in zip(found, exact):
        hits += len(np.intersect1d(got[got >= 0], want[want >= 0]))
        total += int((want >= 0).sum())
    return hits, total


def make_retriever(config: RetrievalConfig, ref_tokens_T: np.ndarray, windows: np.ndarray,
                   present: Optional[np.ndarray] = None, device: torch.device = torch.device("cpu")) -> Retriever:
    """The retriever ``config`` describes over reference haplotypes ref_tokens_T uint8 [H, S]
    (``present``: bool [H], rows that are haplotypes) and windows int64 [W, 2], searching
    on ``device`` (training and imputation build theirs here)."""
    ranges = key_ranges(windows, config.key_flank, ref_tokens_T.shape[1])
    return Retriever(ref_tokens_T, windows, ranges, config.k, config.key_decay, config.index, present, device)


def _check_factory(factory: str) -> None:
    name, _, parameters = factory.partition("|")
    try:
        index = faiss.index_factory(8, name)
        if parameters:
            faiss.ParameterSpace().set_index_parameters(index, parameters)
    except RuntimeError as error:
        raise InputError(f"FAISS index {factory!r}: {str(error).strip().splitlines()[-1]}") from None


def build_faiss_index(factory: str, keys: torch.Tensor) -> faiss.Index:
    """A FAISS index over keys float32 [H, d] (trained on them if it needs training),
    on the keys' device where FAISS can put it there (:func:`place_index`). ``factory``:
    a FAISS index factory string, optionally followed by ``|`` and search parameters in
    FAISS's ParameterSpace syntax (``IVF64,Flat|nprobe=8``, ``HNSW32|efSearch=64``)."""
    name, _, parameters = factory.partition("|")
    index = place_index(faiss.index_factory(keys.shape[1], name), keys.device, factory)
    keys = faiss_input(keys, index)
    if not index.is_trained:
        index.train(keys)
    index.add(keys)
    if parameters:
        space = faiss.GpuParameterSpace() if on_gpu(index) else faiss.ParameterSpace()
        space.set_index_parameters(index, parameters)
    return index


_gpu_resources: dict = {}     # CUDA ordinal -> faiss.StandardGpuResources (one per process and GPU)
_warned: set = set()


def faiss_has_gpus() -> bool:
    """Whether this faiss is a GPU build that sees a GPU (faiss-gpu; faiss-cpu never does)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def place_index(index: faiss.Index, device: torch.device, factory: str = "") -> faiss.Index:
    """``index`` on ``device``: for a CUDA device, a GPU copy on that GPU when this faiss
    has GPUs; otherwise (a CPU device, faiss-cpu, or an index type with no GPU form) the
    CPU index itself, with one warning per cause on a CUDA run."""
    if device.type != "cuda":
        return index
    if not faiss_has_gpus():
        _warn_once("faiss-cpu", f"FAISS searches on the CPU: this faiss has no GPU support; "
                                f"for search on the GPU: {FAISS_GPU_INSTALL}")
        return index
    ordinal = device.index if device.index is not None else torch.cuda.current_device()
    if ordinal not in _gpu_resources:
        _gpu_resources[ordinal] = faiss.StandardGpuResources()
    try:
        return faiss.index_cpu_to_gpu(_gpu_resources[ordinal], ordinal, index)
    except RuntimeError as error:
        _warn_once(factory, f"FAISS index {factory!r} searches on the CPU: FAISS has no GPU form of it "
                            f"({str(error).strip().splitlines()[-1]})")
        return index


def on_gpu(index: faiss.Index) -> bool:
    """Whether ``index`` lives on a GPU (a faiss GpuIndex)."""
    return hasattr(index, "getDevice")


def faiss_input(x: torch.Tensor, index: faiss.Index) -> torch.Tensor:
    """x as ``index`` reads it: float32, contiguous, and on the host for a CPU index."""
    if x.is_cuda and not on_gpu(index):
        x = x.cpu()
    return x.float().contiguous()


def search_index(index: faiss.Index, queries: torch.Tensor, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(squared distances float32 [Q, n], index ids int64 [Q, n], -1 = none) of the n
    nearest keys to queries [Q, d], on the queries' device."""
    dist, ids = index.search(faiss_input(queries, index), n)
    return dist.to(queries.device), ids.to(queries.device)


def _warn_once(cause: str, message: str) -> None:
    if cause not in _warned:
        _warned.add(cause)
        print(f"warning: {message}", file=sys.stderr)


def site_scales(window: np.ndarray, key_range: np.ndarray, decay: float) -> np.ndarray:
    """float32 [Lk]: sqrt(exp(-d / decay)) per key-range site, d = sites from the window."""
    sites = np.arange(key_range[0], key_range[1])
    outside = np.maximum(np.maximum(window[0] - sites, sites - (window[1] - 1)), 0)   # [Lk]
    if decay == 0:
        return np.ones(len(sites), dtype=np.float32)
    return np.exp(-outside / (2.0 * decay)).astype(np.float32)


def _query_keys(encodings: torch.Tensor, tokens: torch.Tensor, sites: torch.Tensor,
                scales: torch.Tensor) -> torch.Tensor:
    """float32 [Q, n * D] query keys of tokens [Q, n] at key-range sites [n];
    MASK alleles keyed at the REF/ALT midpoint."""
    midpoint = 0.5 * (encodings[REF] + encodings[ALT])                               # [Lk, D]
    table = torch.cat([encodings[:MASK], midpoint[None]], 0)                        # [3, Lk, D]
    keys = table[tokens.clamp(max=MASK), sites] * scales[:, None]                   # [Q, n, D]
    return keys.reshape(len(tokens), -1).float().contiguous()


def drop_own_sample(ids: torch.Tensor, dist: torch.Tensor, query_sample: torch.Tensor,
                    k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first k results [Q, k] of each row of ids / dist [Q, k + 2] that are not the
    query's own sample (query_sample [Q], -1 = none); -1 where fewer than k are left."""
    own = (ids // 2 == query_sample[:, None]) & (query_sample[:, None] >= 0) & (ids >= 0)
    order = torch.sort(own.to(torch.uint8), dim=1, stable=True).indices[:, :k]       # own ones last
    ids, dist = ids.gather(1, order), dist.gather(1, order)
    return torch.where(own.gather(1, order), -1, ids), dist
