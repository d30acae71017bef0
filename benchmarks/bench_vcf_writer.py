"""Speed of the imputed-VCF writer (vcf_writer.write_imputed_vcf).

    python benchmarks/bench_vcf_writer.py [--samples 100] [--sites 30000] [--threads 1 2] [--repeats 3]

Writes T samples x S sites of GT:DS:GP (every 10th site typed) as .vcf.gz,
.bcf and .vcf, and prints the median wall time of ``--repeats`` writes and
the file size, for two kinds of P(ALT):

- ``imputation-like``: logistic of N(+-6, 3) logits (most haplotypes called
  with near certainty, a tail of uncertain ones), as imputed output looks;
- ``worst case``: 30% of the haplotypes uniform in [0, 1], the rest 0 or 1
  (almost every genotype's text distinct, so the per-genotype text cache
  rarely hits).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

from embrag_ext.panel import Panel
from embrag_ext.vcf_writer import write_imputed_vcf


def probabilities(kind: str, n_sites: int, n_haplotypes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "imputation-like":
        logits = rng.normal(6.0, 3.0, (n_sites, n_haplotypes)) * rng.choice([-1, 1], (n_sites, n_haplotypes))
        return (1 / (1 + np.exp(-logits))).astype(np.float32)
    soft = rng.random((n_sites, n_haplotypes)) < 0.3
    return np.where(soft, rng.random((n_sites, n_haplotypes)), rng.random((n_sites, n_haplotypes)) < 0.2
                    ).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--sites", type=int, default=30_000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n_sites = args.sites
    panel = Panel(chrom="1", positions=np.arange(1, n_sites + 1) * 10, ref=np.array(["A"] * n_sites),
                  alt=np.array(["G"] * n_sites), haplotypes=np.zeros((n_sites, 2), np.uint8), samples=["p"],
                  af=np.zeros(n_sites, np.float32), variant_type=np.zeros(n_sites, np.uint8), source="bench")
    names = [f"s{i}" for i in range(args.samples)]
    typed = np.arange(n_sites) % 10 == 0
    print(f"{args.samples} samples x {n_sites} sites")
    print(f"{'probabilities':<18}{'format':<9}{'threads':>8}{'seconds':>9}{'MB':>8}")
    with tempfile.TemporaryDirectory() as scratch:
        for kind in ("imputation-like", "worst case"):
            prob = probabilities(kind, n_sites, 2 * args.samples)
            for suffix in (".vcf.gz", ".bcf", ".vcf"):
                for threads in (args.threads if suffix == ".vcf.gz" else [1]):
                    out = os.path.join(scratch, "imputed" + suffix)
                    times = []
                    for _ in range(args.repeats):
                        began = time.perf_counter()
                        write_imputed_vcf(out, panel, names, prob, typed=typed, threads=threads)
                        times.append(time.perf_counter() - began)
                    print(f"{kind:<18}{suffix:<9}{threads:>8}{statistics.median(times):>9.2f}"
                          f"{os.path.getsize(out) / 1e6:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
