"""Exact vs approximate FAISS search of reference keys at a 5,008-haplotype panel.

    python benchmarks/bench_index.py [--quick] [--markdown PATH] [--windows 4] [--queries 500] [--k 8]
                                     [--threads 2] [--json PATH]

A panel the size of 1000 Genomes (2,504 samples, 5,008 haplotypes) is
simulated with msprime (constant Ne, 1 Mb; a few seconds), plus 250 target
samples whose 500 haplotypes are the queries. Per window (128 sites, key range
= the window and 768 sites on each side, as the defaults) the observed sites
are an array-like 5% of the sites; every reference haplotype is keyed, indexed
and searched for the K nearest of every query, for two kinds of keys:

- ``l2``: today's keys (retrieval.py), the flattened embeddings of the observed
  sites (D = 64 dims per site; an untrained embedding: the ranking of L2 keys
  does not depend on it, see retrieval.py);
- ``learned``: learned_keys.py's keys (2 x ``--key-sites`` dims, the default;
  the untrained encoder, i.e. decay-weighted mismatches over the nearest
  ``--key-sites`` observed sites a side).

Indexes (``--index`` strings): exact ``Flat``; ``IVF64,Flat`` probing 1 and 8
of its 64 lists; ``HNSW32`` (efSearch 16, FAISS's default, and 64);
``IVF64,PQ16x4fs`` (8-byte codes, FAISS fast scan) probing 8. Reported per
key kind and index: build time (training + adding), search time per 1,000
queries (each the best of REPEATS, and as a ratio to the exact index of the
same keys), recall@K against Flat (retrieval.tied_recall: the share of the K
returned that are as near as the exact K-th; haplotypes are often identical at
the observed sites, so which tied ones exact search returns is arbitrary),
index size (serialized).
``--quick``: 500 panel samples, one window, 100 queries (checks the script).
``--markdown PATH`` writes the results-page section and a plot of recall
against search time beside it.
"""
from __future__ import annotations

import embrag_ext  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE)

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import faiss
import numpy as np
import torch

from embrag_ext.config import RetrievalConfig
from embrag_ext.learned_keys import LearnedKeys
from embrag_ext.masking import MaskConfig, array_pattern, rng_for
from embrag_ext.retrieval import Retriever, build_faiss_index, on_gpu, search_index, tied_recall
from embrag_ext.simulate import simulate_sites
from embrag_ext.windows import key_ranges, make_windows

INDEXES = ("Flat", "IVF64,Flat|nprobe=1", "IVF64,Flat|nprobe=8", "HNSW32|efSearch=16", "HNSW32|efSearch=64",
           "IVF64,PQ16x4fs|nprobe=8")
D = 64
REPEATS = 3        # build and search timed this many times, best kept


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
    queries = retriever.query_keys(window, sites, torch.from_numpy(queries_T[:, start + sites]))
    rows = []
    exact = None
    for factory in INDEXES:
        builds, searches = [], []
        for _ in range(REPEATS):
            began = time.perf_counter()
            index = build_faiss_index(factory, refs)
            builds.append(time.perf_counter() - began)
            began = time.perf_counter()
            _, ids = search_index(index, queries, k)
            searches.append(time.perf_counter() - began)
        true_dist = torch.where(ids >= 0, (refs[ids.clamp(min=0)] - queries[:, None]).square().sum(-1), torch.inf)
        true_dist = true_dist.numpy()
        if exact is None:
            exact = true_dist
        hits, total = tied_recall(true_dist, exact)
        rows.append({"index": factory, "dims": int(refs.shape[1]), "build_s": min(builds),
                     "search_ms_per_1000": 1000 * min(searches) / len(queries) * 1000, "recall": hits / total,
                     "index_mib": faiss.serialize_index(on_host(index)).nbytes / 2**20})
    return rows


def on_host(index: faiss.Index) -> faiss.Index:
    """A CPU copy of a GPU index (what FAISS serialises); a CPU index itself."""
    return faiss.index_gpu_to_cpu(index) if on_gpu(index) else index


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small panel, one window: checks the script")
    parser.add_argument("--markdown", help="write the results-page section here (and the plot beside it)")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--queries", type=int, default=500, help="query haplotypes (targets, not in the panel)")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the rows here")
    options = parser.parse_args(argv)
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
    observed_sites = []
    for window in chosen:
        start, end = ranges[window]
        observed = array_pattern(end - start, MaskConfig(ratio_range=(0.05, 0.05)), rng_for(7, int(window)))
        observed_sites.append(int(observed.sum()))
        for name, retriever in retrievers.items():
            results[name].append(bench(retriever, int(window), observed, queries_T, options.k))
    table = []
    for name, per_window in results.items():
        for i, factory in enumerate(INDEXES):
            rows = [w[i] for w in per_window]
            table.append({"keys": name, "index": factory, "dims": rows[-1]["dims"],
                          **{key: float(np.mean([r[key] for r in rows]))
                             for key in ("build_s", "search_ms_per_1000", "recall", "index_mib")}})
    setting = (f"{panel_T.shape[0]} panel haplotypes x {panel_T.shape[1]} sites, {len(queries_T)} query haplotypes, "
               f"{n_windows} window(s) with {min(observed_sites)}-{max(observed_sites)} observed sites in the "
               f"key range, K={options.k}, {options.threads} threads; means over the windows, "
               f"times the best of {REPEATS}")
    lines = markdown_table(table)
    print(f"\n{setting}\n\n" + "\n".join(lines))
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(table, handle, indent=1)
    if options.markdown:
        write_markdown(options.markdown, setting, lines, table, time.perf_counter() - began)
    return table


def markdown_table(table: List[dict]) -> List[str]:
    """The rows, with build and search time as ratios to the exact index of the same keys."""
    exact = {row["keys"]: row for row in table if row["index"] == "Flat"}
    lines = ["| keys | index | dims | build (s) | build / Flat | search (ms / 1,000 queries) | search / Flat "
             "| recall@K | index (MiB) |", "|" + "---|" * 9]
    for row in table:
        base = exact[row["keys"]]
        lines.append(f"| {row['keys']} | `{row['index']}` | {row['dims']} | {row['build_s']:.3f} "
                     f"| {row['build_s'] / max(base['build_s'], 1e-9):.1f} | {row['search_ms_per_1000']:.1f} "
                     f"| {row['search_ms_per_1000'] / base['search_ms_per_1000']:.2f} | {row['recall']:.3f} "
                     f"| {row['index_mib']:.2f} |")
    return lines


def plot(table: List[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for keys, marker in (("l2", "o"), ("learned", "s")):
        for row in (r for r in table if r["keys"] == keys):
            axis.scatter(row["search_ms_per_1000"], row["recall"], marker=marker)
            axis.annotate(f"{keys} {row['index']}", (row["search_ms_per_1000"], row["recall"]), fontsize=6)
    axis.set_xscale("log")
    axis.set_xlabel("search time, ms per 1,000 queries (log)")
    axis.set_ylabel("recall@K against exact search")
    axis.set_title("FAISS indexes at a 5,008-haplotype panel")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_markdown(markdown: str, setting: str, lines: List[str], table: List[dict], seconds: float) -> None:
    path = Path(markdown)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = path.with_name(path.stem + "_recall.png")
    plot(table, picture)
    command = "python benchmarks/bench_index.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = ["## Exact and approximate search of reference keys", "",
            "Build time, search time and recall@K (against exact search, ties counted: "
            "retrieval.tied_recall) of FAISS indexes over every reference haplotype's key in a window, "
            "for today's L2 keys (flattened embeddings of the observed sites) and learned keys "
            f"(2 x {RetrievalConfig.key_sites} dims, untrained encoder). {setting}. Run time {seconds:.0f} s.", "", f"    {command.strip()}", "",
            f"![recall against search time]({picture.name})", "", *lines]
    path.write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
