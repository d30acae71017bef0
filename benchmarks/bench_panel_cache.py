"""Panel cache speed: parse a VCF.gz with cyvcf2 vs reload the cached numpy arrays.

    python benchmarks/bench_panel_cache.py [--haplotypes 2000] [--sites 100000] [--workdir DIR]

Generates random phased haplotypes (site frequencies from a Beta(0.2, 1)
spectrum; linkage does not change parse cost), writes them as a bgzipped VCF,
then times: the parse (``load_panel(use_cache=False)``), filling the cache,
and reloading from the cache, both as returned (haplotypes memory-mapped) and
with every haplotype byte read once. Prints the times and the ratios.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from embrag_ext.panel_vcf import load_panel
from embrag_ext.vcf_writer import write_phased_vcf


def random_haplotypes(n_sites: int, n_haplotypes: int, seed: int = 0) -> np.ndarray:
    """uint8 [n_sites, n_haplotypes] with a skewed allele frequency spectrum."""
    rng = np.random.default_rng(seed)
    alt_freq = rng.beta(0.2, 1.0, size=n_sites)
    haplotypes = np.empty((n_sites, n_haplotypes), dtype=np.uint8)
    for start in range(0, n_sites, 10_000):  # chunks keep the float draws small
        stop = min(start + 10_000, n_sites)
        haplotypes[start:stop] = rng.random((stop - start, n_haplotypes)) < alt_freq[start:stop, None]
    return haplotypes


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--haplotypes", type=int, default=2000)
    parser.add_argument("--sites", type=int, default=100_000)
    parser.add_argument("--workdir", help="where to write the VCF and cache (default: a temp dir)")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_panel_cache.")
    os.makedirs(workdir, exist_ok=True)
    vcf_path = os.path.join(workdir, "panel.vcf.gz")
    cache_dir = os.path.join(workdir, "cache")
    haplotypes = random_haplotypes(args.sites, args.haplotypes)
    positions = np.arange(1, args.sites + 1, dtype=np.int64) * 10
    samples = [f"s{i}" for i in range(args.haplotypes // 2)]
    _, write_s = timed(write_phased_vcf, vcf_path, "1", positions, ["A"] * args.sites,
                       ["G"] * args.sites, samples, haplotypes)
    print(f"panel: {args.haplotypes} haplotypes x {args.sites} sites, "
          f"{os.path.getsize(vcf_path) / 1e6:.1f} MB VCF.gz (written in {write_s:.1f} s)")
    parsed, parse_s = timed(load_panel, vcf_path, use_cache=False)
    _, fill_s = timed(load_panel, vcf_path, cache_dir=cache_dir)
    cached, reload_s = timed(load_panel, vcf_path, cache_dir=cache_dir)
    start = time.perf_counter()
    cached = load_panel(vcf_path, cache_dir=cache_dir)
    checksum = int(cached.haplotypes.sum(dtype=np.int64))
    reload_read_s = time.perf_counter() - start
    assert np.array_equal(parsed.haplotypes, haplotypes) and checksum == int(haplotypes.sum(dtype=np.int64))
    print(f"parse (cyvcf2):                  {parse_s:8.3f} s")
    print(f"parse + fill cache:              {fill_s:8.3f} s")
    print(f"reload from cache (mmap):        {reload_s:8.4f} s   {parse_s / reload_s:8.0f}x faster")
    print(f"reload + read every haplotype:   {reload_read_s:8.4f} s   {parse_s / reload_read_s:8.0f}x faster")


if __name__ == "__main__":
    main()
