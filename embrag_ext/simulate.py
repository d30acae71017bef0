"""Simulated cohorts: a reference panel, array targets and their truth.

``python -m embrag_ext.simulate --out DIR`` simulates diploid samples with
msprime (constant size, human-like: Ne 10,000, mutation rate 1.25e-8,
recombination rate 1e-8 per bp per generation) or one of stdpopsim's HomSap
models (uniform recombination rate 1e-8; needs ``pip install stdpopsim``):
``--model ooa``, OutOfAfrica_3G09, panel and targets drawn from YRI, CEU and
CHB alike; ``--model admix``, AmericanAdmixture_4B18, a panel of the three
source populations (AFR, EUR, ASIA) and admixed American targets (ADMIX).
Only biallelic sites are kept (sites hit by one mutation on a discrete
genome). The samples are shuffled with the seed and split into panel and
targets, and it writes:

- ``DIR/panel.vcf.gz``: panel samples (``panel_0001``...), all sites, phased;
- ``DIR/truth.vcf.gz``: target samples (``target_0001``...), all panel sites;
- ``DIR/targets.vcf.gz``: target samples at the array's sites: one in
  ``--array-every`` of the sites whose panel MAF is at least ``--array-maf``
  (0: every site is a candidate; an array of common sites, like a real one,
  takes e.g. ``--array-maf 0.05``).

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
from typing import Dict, Optional, Sequence, Tuple

import msprime
import numpy as np

from .atomic import check_output_directory
from .errors import InputError, run_cli
from .panel import haplotype_columns
from .tokens import MASK
from .vcf_writer import write_phased_vcf

CHROM = "1"
MODELS = ("constant", "ooa", "admix")
POPULATION_SIZE = 10_000
MUTATION_RATE = 1.25e-8
RECOMBINATION_RATE = 1e-8
# stdpopsim model, the panel's populations, the targets' population (None: drawn with the panel's)
STDPOPSIM_MODELS = {"ooa": ("OutOfAfrica_3G09", ("YRI", "CEU", "CHB"), None),
                    "admix": ("AmericanAdmixture_4B18", ("AFR", "EUR", "ASIA"), "ADMIX")}


@dataclass
class SimulatedSites:
    """Biallelic sites of a simulation."""
    positions: np.ndarray   # int64 [S], 1-based
    ref: np.ndarray         # str [S] ancestral allele
    alt: np.ndarray         # str [S] derived allele
    haplotypes: np.ndarray  # uint8 [S, 2 * n_samples], individual i -> columns 2i, 2i+1
    population: np.ndarray  # str [n_samples] population of each individual


def _stdpopsim_tree_sequence(model: str, counts: Dict[str, int], length: int, seed: int):
    try:
        import stdpopsim
    except ImportError:
        raise InputError(f"--model {model} needs stdpopsim: pip install stdpopsim") from None
    species = stdpopsim.get_species("HomSap")
    demography = species.get_demographic_model(STDPOPSIM_MODELS[model][0])
    contig = species.get_contig(length=length, mutation_rate=demography.mutation_rate,
                                recombination_rate=RECOMBINATION_RATE)
    return stdpopsim.get_engine("msprime").simulate(demography, contig, counts, seed=seed)


def _population_counts(model: str, n_panel: int, n_target: int) -> Dict[str, int]:
    """Individuals to simulate per population: the panel spread over the panel's
    populations, plus the targets in their own population when the model has one."""
    _, panel_populations, target_population = STDPOPSIM_MODELS[model]
    n_spread = n_panel + (n_target if target_population is None else 0)
    shares = np.diff(np.linspace(0, n_spread, len(panel_populations) + 1).round().astype(int))
    counts = dict(zip(panel_populations, shares.tolist()))
    if target_population is not None:
        counts[target_population] = n_target
    return counts


def simulate_sites(n_panel: int, n_target: int, length: int, seed: int, model: str = "constant") -> SimulatedSites:
    """Simulate the panel's and the targets' individuals over ``length`` bp; biallelic sites only."""
    if model == "constant":
        ts = msprime.sim_ancestry(samples=n_panel + n_target, ploidy=2, population_size=POPULATION_SIZE,
                                  recombination_rate=RECOMBINATION_RATE, sequence_length=length, random_seed=seed)
        ts = msprime.sim_mutations(ts, rate=MUTATION_RATE, random_seed=seed, discrete_genome=True)
    else:
        ts = _stdpopsim_tree_sequence(model, _population_counts(model, n_panel, n_target), length, seed)
    mutations_per_site = np.bincount(ts.tables.mutations.site, minlength=ts.num_sites)
    biallelic = mutations_per_site == 1
    sites = [site for site in ts.sites() if biallelic[site.id]]
    haplotypes = ts.genotype_matrix()[biallelic].astype(np.uint8)  # [S, 2 * n_samples]
    names = [population.metadata.get("name", str(population.id)) if population.metadata else str(population.id)
             for population in ts.populations()]
    population = np.array([names[ts.node(individual.nodes[0]).population] for individual in ts.individuals()])
    return SimulatedSites(
        positions=np.array([int(site.position) + 1 for site in sites], dtype=np.int64),
        ref=np.array([site.ancestral_state for site in sites], dtype=str),
        alt=np.array([site.mutations[0].derived_state for site in sites], dtype=str),
        haplotypes=haplotypes, population=population)


def simulate_cohort(out_dir: str, seed: int = 1, n_panel: int = 500, n_target: int = 50,
                    length: int = 1_000_000, array_every: int = 10, model: str = "constant",
                    array_maf: float = 0.0, haploid_fraction: float = 0.0, chrom: str = CHROM) -> Dict[str, str]:
    """Simulate and write ``panel.vcf.gz``, ``truth.vcf.gz`` and ``targets.vcf.gz``
    in ``out_dir`` (see module doc). Returns ``{"panel", "truth", "targets": path}``."""
    _check_arguments(n_panel, n_target, length, array_every, model, array_maf, haploid_fraction)
    check_output_directory(out_dir, "--out")
    sites = simulate_sites(n_panel, n_target, length, seed, model)
    if len(sites.positions) == 0:
        raise InputError(f"--length {length}: the simulation produced no sites; use a longer region")
    rng = np.random.default_rng(seed)
    panel_individuals, target_individuals = _split(sites.population, n_panel, model, rng.permutation(len(sites.population)))
    ploidy = np.where(rng.random(len(sites.population)) < haploid_fraction, 1, 2).astype(np.uint8)
    sites.haplotypes[:, 1::2][:, ploidy == 1] = MASK
    array_sites = _array(sites.haplotypes[:, haplotype_columns(panel_individuals)], array_every, array_maf, seed)
    if len(array_sites) == 0:
        raise InputError(f"--array-maf {array_maf}: no site of the panel is that common; lower it")
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f"{name}.vcf.gz") for name in ("panel", "truth", "targets")}
    groups = {"panel": (panel_individuals, "panel", slice(None)), "truth": (target_individuals, "target", slice(None)),
              "targets": (target_individuals, "target", array_sites)}
    for name, (individuals, prefix, rows) in groups.items():
        names = [f"{prefix}_{i:04d}" for i in range(1, len(individuals) + 1)]
        write_phased_vcf(paths[name], chrom, sites.positions[rows], sites.ref[rows], sites.alt[rows], names,
                         sites.haplotypes[rows][:, haplotype_columns(individuals)], ploidy=ploidy[individuals])
    return paths


def _split(population: np.ndarray, n_panel: int, model: str, order: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(panel, target) individual indices in the shuffled ``order``; targets from their own
    population when the model has one."""
    target_population = STDPOPSIM_MODELS[model][2] if model in STDPOPSIM_MODELS else None
    if target_population is None:
        return order[:n_panel], order[n_panel:]
    is_target = population[order] == target_population
    return order[~is_target], order[is_target]


def _array(panel_haplotypes: np.ndarray, every: int, min_maf: float, seed: int) -> np.ndarray:
    """Site indices of the array: one in ``every`` of the sites with panel MAF >= ``min_maf``
    (all sites when 0), from a phase drawn with the seed when the candidates are filtered."""
    if min_maf <= 0:
        return np.arange(0, panel_haplotypes.shape[0], every)
    af = panel_haplotypes.mean(axis=1)
    candidates = np.flatnonzero(np.minimum(af, 1 - af) >= min_maf)
    return candidates[np.random.default_rng(seed).integers(every)::every]


def _check_arguments(n_panel: int, n_target: int, length: int, array_every: int, model: str,
                     array_maf: float, haploid_fraction: float) -> None:
    checks = (("--n-panel", n_panel, n_panel >= 1), ("--n-target", n_target, n_target >= 1),
              ("--length", length, length >= 1000), ("--array-every", array_every, array_every >= 1))
    for name, value, ok in checks:
        if not ok:
            raise InputError(f"{name} {value}: out of range ({name} must be >= "
                             f"{1000 if name == '--length' else 1})")
    if model not in MODELS:
        raise InputError(f"--model {model}: expected one of {', '.join(MODELS)}")
    if not 0 <= array_maf < 0.5:
        raise InputError(f"--array-maf {array_maf}: must be in [0, 0.5)")
    if not 0 <= haploid_fraction <= 1:
        raise InputError(f"--haploid-fraction {haploid_fraction}: must be in [0, 1]")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, str]:
    parser = argparse.ArgumentParser(prog="python -m embrag_ext.simulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n-panel", type=int, default=500, help="panel samples (diploid)")
    parser.add_argument("--n-target", type=int, default=50, help="target samples (diploid)")
    parser.add_argument("--length", type=int, default=1_000_000, help="region length in bp")
    parser.add_argument("--array-every", type=int, default=10, help="targets keep one candidate site in N")
    parser.add_argument("--array-maf", type=float, default=0.0,
                        help="candidate array sites have at least this panel MAF (0: all sites)")
    parser.add_argument("--model", choices=MODELS, default="constant")
    parser.add_argument("--haploid-fraction", type=float, default=0.0,
                        help="fraction of samples made haploid (chrX-like males)")
    parser.add_argument("--chrom", default=CHROM, help="contig name (e.g. X)")
    args = parser.parse_args(argv)
    paths = simulate_cohort(args.out, seed=args.seed, n_panel=args.n_panel, n_target=args.n_target,
                            length=args.length, array_every=args.array_every, model=args.model,
                            array_maf=args.array_maf, haploid_fraction=args.haploid_fraction, chrom=args.chrom)
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return paths


def cli() -> None:
    """The console script ``embrag-simulate`` (the same as ``python -m embrag_ext.simulate``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
