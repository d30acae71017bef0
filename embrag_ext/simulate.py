"""Simulated cohorts: a reference panel, array targets and their truth.

``python -m embrag_ext.simulate --out DIR`` simulates diploid samples with
msprime (constant size, human-like: Ne 10,000, mutation rate 1.25e-8,
recombination rate 1e-8 per bp per generation) or, with ``--model ooa``,
stdpopsim's HomSap OutOfAfrica_3G09 (samples spread over YRI, CEU, CHB;
uniform recombination rate; needs ``pip install stdpopsim``). Only biallelic
sites are kept (sites hit by one mutation on a discrete genome). The samples
are shuffled with the seed and split into panel and targets, and it writes:

- ``DIR/panel.vcf.gz``: panel samples (``panel_0001``...), all sites, phased;
- ``DIR/truth.vcf.gz``: target samples (``target_0001``...), all panel sites;
- ``DIR/targets.vcf.gz``: target samples at one site in ``--array-every``.

``--haploid-fraction F`` makes a fraction F of the samples (panel and
targets alike, chosen with the seed) haploid, as males are on chrX outside
the pseudo-autosomal regions: they keep their first simulated haplotype and
are written haploid (GT ``0``/``1``); ``--chrom X`` names the contig. All
files are bgzipped, indexed and deterministic for a given ``--seed``.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import msprime
import numpy as np

from .errors import InputError, run_cli
from .panel import haplotype_columns
from .tokens import MASK
from .vcf_writer import write_phased_vcf

CHROM = "1"
MODELS = ("constant", "ooa")
POPULATION_SIZE = 10_000
MUTATION_RATE = 1.25e-8
RECOMBINATION_RATE = 1e-8
OOA_POPULATIONS = ("YRI", "CEU", "CHB")


@dataclass
class SimulatedSites:
    """Biallelic sites of a simulation."""
    positions: np.ndarray   # int64 [S], 1-based
    ref: np.ndarray         # str [S] ancestral allele
    alt: np.ndarray         # str [S] derived allele
    haplotypes: np.ndarray  # uint8 [S, 2 * n_samples], individual i -> columns 2i, 2i+1


def _constant_tree_sequence(n_samples: int, length: int, seed: int):
    return msprime.sim_ancestry(samples=n_samples, ploidy=2, population_size=POPULATION_SIZE,
                                recombination_rate=RECOMBINATION_RATE, sequence_length=length,
                                random_seed=seed)


def _out_of_africa_tree_sequence(n_samples: int, length: int, seed: int):
    try:
        import stdpopsim
    except ImportError:
        raise InputError("--model ooa needs stdpopsim: pip install stdpopsim") from None
    species = stdpopsim.get_species("HomSap")
    model = species.get_demographic_model("OutOfAfrica_3G09")
    contig = species.get_contig(length=length, mutation_rate=model.mutation_rate)
    counts = np.diff(np.linspace(0, n_samples, len(OOA_POPULATIONS) + 1).round().astype(int))
    samples = dict(zip(OOA_POPULATIONS, counts.tolist()))
    engine = stdpopsim.get_engine("msprime")
    return engine.simulate(model, contig, samples, seed=seed)


def simulate_sites(n_samples: int, length: int, seed: int, model: str = "constant") -> SimulatedSites:
    """Simulate ``n_samples`` diploid individuals over ``length`` bp; biallelic sites only."""
    if model == "constant":
        ts = _constant_tree_sequence(n_samples, length, seed)
        ts = msprime.sim_mutations(ts, rate=MUTATION_RATE, random_seed=seed, discrete_genome=True)
    else:
        ts = _out_of_africa_tree_sequence(n_samples, length, seed)
    mutations_per_site = np.bincount(ts.tables.mutations.site, minlength=ts.num_sites)
    biallelic = mutations_per_site == 1
    sites = [site for site in ts.sites() if biallelic[site.id]]
    haplotypes = ts.genotype_matrix()[biallelic].astype(np.uint8)  # [S, 2 * n_samples]
    return SimulatedSites(
        positions=np.array([int(site.position) + 1 for site in sites], dtype=np.int64),
        ref=np.array([site.ancestral_state for site in sites], dtype=str),
        alt=np.array([site.mutations[0].derived_state for site in sites], dtype=str),
        haplotypes=haplotypes)


def simulate_cohort(out_dir: str, seed: int = 1, n_panel: int = 500, n_target: int = 50,
                    length: int = 1_000_000, array_every: int = 10,
                    model: str = "constant", haploid_fraction: float = 0.0, chrom: str = CHROM) -> Dict[str, str]:
    """Simulate and write ``panel.vcf.gz``, ``truth.vcf.gz`` and ``targets.vcf.gz``
    in ``out_dir`` (see module doc). Returns ``{"panel", "truth", "targets": path}``."""
    _check_arguments(n_panel, n_target, length, array_every, model, haploid_fraction)
    sites = simulate_sites(n_panel + n_target, length, seed, model)
    if len(sites.positions) == 0:
        raise InputError(f"--length {length}: the simulation produced no sites; use a longer region")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_panel + n_target)
    ploidy = np.where(rng.random(n_panel + n_target) < haploid_fraction, 1, 2).astype(np.uint8)
    sites.haplotypes[:, 1::2][:, ploidy == 1] = MASK
    array_sites = np.arange(0, len(sites.positions), array_every)
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f"{name}.vcf.gz") for name in ("panel", "truth", "targets")}
    groups = {"panel": (order[:n_panel], "panel", slice(None)), "truth": (order[n_panel:], "target", slice(None)),
              "targets": (order[n_panel:], "target", array_sites)}
    for name, (individuals, prefix, rows) in groups.items():
        names = [f"{prefix}_{i:04d}" for i in range(1, len(individuals) + 1)]
        write_phased_vcf(paths[name], chrom, sites.positions[rows], sites.ref[rows], sites.alt[rows], names,
                         sites.haplotypes[rows][:, haplotype_columns(individuals)], ploidy=ploidy[individuals])
    return paths


def _check_arguments(n_panel: int, n_target: int, length: int, array_every: int, model: str,
                     haploid_fraction: float) -> None:
    checks = (("--n-panel", n_panel, n_panel >= 1), ("--n-target", n_target, n_target >= 1),
              ("--length", length, length >= 1000), ("--array-every", array_every, array_every >= 1))
    for name, value, ok in checks:
        if not ok:
            raise InputError(f"{name} {value}: out of range ({name} must be >= "
                             f"{1000 if name == '--length' else 1})")
    if model not in MODELS:
        raise InputError(f"--model {model}: expected one of {', '.join(MODELS)}")
    if not 0 <= haploid_fraction <= 1:
        raise InputError(f"--haploid-fraction {haploid_fraction}: must be in [0, 1]")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, str]:
    parser = argparse.ArgumentParser(prog="python -m embrag_ext.simulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n-panel", type=int, default=500, help="panel samples (diploid)")
    parser.add_argument("--n-target", type=int, default=50, help="target samples (diploid)")
    parser.add_argument("--length", type=int, default=1_000_000, help="region length in bp")
    parser.add_argument("--array-every", type=int, default=10, help="targets keep one site in N")
    parser.add_argument("--model", choices=MODELS, default="constant")
    parser.add_argument("--haploid-fraction", type=float, default=0.0,
                        help="fraction of samples made haploid (chrX-like males)")
    parser.add_argument("--chrom", default=CHROM, help="contig name (e.g. X)")
    args = parser.parse_args(argv)
    paths = simulate_cohort(args.out, seed=args.seed, n_panel=args.n_panel, n_target=args.n_target,
                            length=args.length, array_every=args.array_every, model=args.model,
                            haploid_fraction=args.haploid_fraction, chrom=args.chrom)
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return paths


def cli() -> None:
    """The console script ``embrag-simulate`` (the same as ``python -m embrag_ext.simulate``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
