"""Exact vs approximate FAISS search of reference keys at a 5,008-haplotype panel.

    python benchmarks/bench_index.py [--quick] [--windows 2] [--queries 500] [--k 8] [--threads 2]

A panel the size of 1000 Genomes (2,504 samples, 5,008 haplotypes) is
simulated with msprime (constant Ne, 1 Mb; a few seconds), plus 250 target
samples whose 500 haplotypes are the queries. Per window (128 sites, key range
= the window and 768 sites on each side, as the defaults) the observed sites
are an array-like 5% of the sites; every reference haplotype is keyed, indexed
and searched for the K nearest of every query, for two kinds of keys:

- ``l2``: today's keys (retrieval.py), the flattened embeddings of the observed
  sites (D = 64 dims per site; an untrained embedding: the ranking of L2 keys
  does not depend on it, see retrieval.py);
- ``learned``: learned_keys.py's keys (2 x 24 dims; the untrained encoder,
  i.e. decay-weighted mismatches over the 24 nearest observed sites a side).

Indexes (``--index`` strings): exact ``Flat``; ``IVF64,Flat`` probing 1 and 8
of its 64 lists; ``HNSW32`` (efSearch 16, FAISS's default, and 64). Reported per
key kind and index: build time (training + adding), search time per 1,000
queries, recall@K against Flat (retrieval.tied_recall: the share of the K
returned that are as near as the exact K-th; haplotypes are often identical at
the observed sites, so which tied ones exact search returns is arbitrary), index
size. ``--quick``: 500 panel samples, one window, 100 queries (checks the script).
"""
from __future__ import annotations

import embrag_ext  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE)

import argparse
import json
import time
from typing import Dict, List

import faiss
import numpy as np
import torch

from embrag_ext.config import RetrievalConfig
from embrag_ext.learned_keys import LearnedKeys
from embrag_ext.masking import MaskConfig, array_pattern, rng_for
from embrag_ext.retrieval import Retriever, build_faiss_index, tied_recall
from embrag_ext.simulate import simulate_sites
from embrag_ext.windows import key_ranges, make_windows

INDEXES = ("Flat", "IVF64,Flat|nprobe=1", "IVF64,Flat|nprobe=8", "HNSW32|efSearch=16", "HNSW32|efSearch=64")
D = 64


def keyed_retrievers(panel_T: np.ndarray, windows: np.ndarray, ranges: np.ndarray, k: int,
                     af: np.ndarray) -> Dict[str, Retriever]:
    """A Retriever per key kind, encoded (the learned one through LearnedKeys' snapshot tables)."""
    gen = torch.Generator().manual_seed(0)
    tok, site = torch.randn(3, D, generator=gen), torch.randn(int((ranges[:, 1] - ranges[:, 0]).max()), D, generator=gen)
    l2 = Retriever(panel_T, windows, ranges, k, decay=128.0)
    l2.refresh(lambda w: tok[:, None, :] + site[None, :ranges[w, 1] - ranges[w, 0]])
    learned = Retriever(panel_T, windows, ranges, k, decay=128.0)
    keys = LearnedKeys(RetrievalConfig(keys="learned"), af, windows, torch.device("cpu"))
    keys.refresh()
    learned.keys = keys.retriever_keys(ranges)
    learned.refresh(keys.window_encoder(ranges))
    return {"l2": l2, "learned": learned}


def bench(retriever: Retriever, window: int, observed: np.ndarray, queries_T: np.ndarray,
          k: int) -> List[dict]:
    start, end = (int(x) for x in retriever.key_ranges[window])
    sites = np.flatnonzero(observed)
    refs = retriever.reference_keys(window, sites)                          # [H, d]
    queries = retriever.query_keys(window, sites, queries_T[:, start + sites].astype(np.int64))
    rows = []
    exact = None
    for factory in INDEXES:
        began = time.perf_counter()
        index = build_faiss_index(factory, refs)
        built = time.perf_counter() - began
        began = time.perf_counter()
        _, ids = index.search(queries, k)
        searched = time.perf_counter() - began
        true_dist = np.where(ids >= 0, ((refs[np.maximum(ids, 0)] - queries[:, None]) ** 2).sum(-1), np.inf)
        if exact is None:
            exact = true_dist
        hits, total = tied_recall(true_dist, exact)
        size = faiss.serialize_index(index).nbytes if hasattr(faiss, "serialize_index") else refs.nbytes
        rows.append({"index": factory, "dims": int(refs.shape[1]), "build_s": built,
                     "search_ms_per_1000": 1000 * searched / len(queries) * 1000, "recall": hits / total,
                     "index_mib": size / 2**20})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--queries", type=int, default=500, help="query haplotypes (targets, not in the panel)")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the rows here")
    options = parser.parse_args()
    faiss.omp_set_num_threads(options.threads)
    torch.set_num_threads(options.threads)
    n_panel, n_windows, n_queries = (500, 1, 100) if options.quick else (2504, options.windows, options.queries)
    began = time.perf_counter()
    sim = simulate_sites(n_panel, -(-n_queries // 2), 1_000_000, seed=5)
    panel_T = np.ascontiguousarray(sim.haplotypes[:, :2 * n_panel].T)              # [H, S]
    queries_T = np.ascontiguousarray(sim.haplotypes[:, 2 * n_panel:].T)[:n_queries]
    af = panel_T.mean(0).astype(np.float32)
    print(f"panel: {panel_T.shape[0]} haplotypes x {panel_T.shape[1]} sites, {len(queries_T)} queries "
          f"(simulated in {time.perf_counter() - began:.1f} s)", flush=True)
    windows = make_windows(panel_T.shape[1], 128, 32)
    ranges = key_ranges(windows, 768, panel_T.shape[1])
    retrievers = keyed_retrievers(panel_T, windows, ranges, options.k, af)
    chosen = np.linspace(len(windows) // 4, 3 * len(windows) // 4, n_windows).round().astype(int)
    results: Dict[str, List[dict]] = {name: [] for name in retrievers}
    for window in chosen:
        start, end = ranges[window]
        observed = array_pattern(end - start, MaskConfig(ratio_range=(0.05, 0.05)), rng_for(7, int(window)))
        for name, retriever in retrievers.items():
            results[name].append(bench(retriever, int(window), observed, queries_T, options.k))
    print(f"\n{n_windows} window(s), {int(observed.sum())} observed sites in the last key range, K={options.k}, "
          f"{options.threads} threads\n")
    print("| keys | index | dims | build (s) | search (ms / 1,000 queries) | recall@K | index (MiB) |")
    print("|---|---|---|---|---|---|---|")
    table = []
    for name, per_window in results.items():
        for i, factory in enumerate(INDEXES):
            rows = [w[i] for w in per_window]
            row = {"keys": name, "index": factory, "dims": rows[-1]["dims"],
                   **{key: float(np.mean([r[key] for r in rows]))
                      for key in ("build_s", "search_ms_per_1000", "recall", "index_mib")}}
            table.append(row)
            print(f"| {name} | `{factory}` | {row['dims']} | {row['build_s']:.3f} | {row['search_ms_per_1000']:.1f} "
                  f"| {row['recall']:.3f} | {row['index_mib']:.2f} |")
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(table, handle, indent=1)


if __name__ == "__main__":
    main()
