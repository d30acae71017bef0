"""Target samples (the "array"), aligned to the reference panel's sites.

``load_targets(path, panel)`` reads a phased target VCF and places its
genotypes on the panel's sites: ``haplotypes`` is uint8 [S_panel, 2T] with 0
REF, 1 ALT and MASK (2) where the site is not typed or the genotype is missing.

Alignment is by chromosome, position, REF and ALT:
- a record whose REF/ALT are the panel's ALT/REF is flipped (0 <-> 1), counted;
- a record matching no panel site is dropped, counted (multi-allelic target
  records too);
- strand: alleles are never complemented. A strand-ambiguous SNP (A/T or C/G)
  is kept only when REF and ALT match the panel's exactly (counted in
  ``n_strand_ambiguous``); swapped A/T or C/G alleles could be a REF/ALT swap
  or a strand flip, so such records are dropped (counted in
  ``n_ambiguous_dropped``).
Targets must be phased; phase them against the panel first, e.g.
``beagle gt=targets.vcf.gz ref=panel.vcf.gz impute=false out=phased``.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from .errors import InputError
from .panel import SiteKey, site_keys
from .tokens import MASK
from .vcf_io import Region, genotype_alleles, iter_records, open_vcf, parse_region

_AMBIGUOUS_PAIRS = {("A", "T"), ("T", "A"), ("C", "G"), ("G", "C")}
PHASING_HINT = ("phase them first, e.g. "
                "beagle gt=targets.vcf.gz ref=panel.vcf.gz impute=false out=phased")


@dataclass
class Targets:
    """Target genotypes on the panel's sites."""
    samples: List[str]          # [T]
    haplotypes: np.ndarray      # uint8 [S_panel, 2T]: 0 REF, 1 ALT, 2 MASK
    typed: np.ndarray           # bool [S_panel]: site present in the target VCF
    n_flipped: int              # records with REF/ALT swapped relative to the panel
    n_dropped_not_in_panel: int  # records matching no panel site (or multi-allelic)
    n_missing: int              # alleles missing in typed records (set to MASK)
    n_strand_ambiguous: int     # A/T, C/G records kept (REF/ALT match the panel)
    n_ambiguous_dropped: int    # A/T, C/G records with swapped alleles, dropped
    source: str                 # path of the target VCF

    @property
    def n_typed(self) -> int:
        return int(self.typed.sum())


def _is_ambiguous(ref: str, alt: str) -> bool:
    return (ref, alt) in _AMBIGUOUS_PAIRS


def _site_index(panel) -> Dict[SiteKey, int]:
    """(POS, REF, ALT) -> panel site index."""
    return {key: site for site, key in enumerate(site_keys(panel))}


def _target_alleles(record, path: str, samples: List[str]) -> np.ndarray:
    """uint8 [2T] alleles of a biallelic record: 0/1, MASK where missing.
    Raises InputError on an unphased (non-missing) genotype."""
    alleles, phased = genotype_alleles(record, path)  # [T, 2], [T]
    missing = alleles < 0
    unphased = ~phased & ~missing.any(axis=1)
    if unphased.any():
        raise InputError(f"{path}: record {record.CHROM}:{record.POS}: unphased genotype for sample "
                         f"{samples[int(np.argmax(unphased))]}: targets must be phased; "
                         f"{PHASING_HINT}")
    return np.where(missing, MASK, alleles).astype(np.uint8).reshape(-1)


def load_targets(path: Union[str, os.PathLike], panel, region: Union[str, Region, None] = None) -> Targets:
    """Read a phased target VCF and align it to ``panel`` (see module doc).

    region: restrict to ``CHROM[:START-END]``; by default the panel's contig.
    Warns when target samples are also panel samples (leakage).
    """
    path = os.fspath(path)
    region = parse_region(region) if isinstance(region, str) else region
    region = region or Region(panel.chrom)
    if region.chrom != panel.chrom:
        raise InputError(f"region {region}: contig {region.chrom} is absent from the panel "
                         f"({panel.source} holds {panel.chrom})")
    vcf = open_vcf(path)
    samples = list(vcf.samples)
    _warn_leakage(path, samples, panel)
    site_of = _site_index(panel)
    haplotypes = np.full((panel.n_sites, 2 * len(samples)), MASK, dtype=np.uint8)
    typed = np.zeros(panel.n_sites, dtype=bool)
    counts = dict(n_flipped=0, n_dropped_not_in_panel=0, n_missing=0,
                  n_strand_ambiguous=0, n_ambiguous_dropped=0)
    n_records = 0
    for record in iter_records(vcf, path, region):
        n_records += 1
        site, flip = _match(record, site_of, counts)
        if site is None:
            continue
        if typed[site]:
            raise InputError(f"{path}: record {record.CHROM}:{record.POS} matches panel site "
                             "already typed by another record")
        alleles = _target_alleles(record, path, samples)
        if flip:
            alleles = np.where(alleles == MASK, MASK, 1 - alleles).astype(np.uint8)
        haplotypes[site] = alleles
        typed[site] = True
        counts["n_missing"] += int((alleles == MASK).sum())
    if n_records == 0:
        raise InputError(f"{path}: no records on {region} (the panel's contig is {panel.chrom}; "
                         f"contigs in the target header: {', '.join(vcf.seqnames) or 'none listed'})")
    if not typed.any():
        raise InputError(f"{path}: none of its {n_records} records on {region} matches a panel site "
                         f"of {panel.source} by position, REF and ALT")
    return Targets(samples=samples, haplotypes=haplotypes, typed=typed, source=path, **counts)


def _match(record, site_of: Dict[SiteKey, int],
           counts: Dict[str, int]) -> Tuple[Optional[int], bool]:
    """(panel site index or None, flip alleles?) for a record; updates counts."""
    if len(record.ALT) != 1:
        counts["n_dropped_not_in_panel"] += 1
        return None, False
    ref, alt = record.REF, record.ALT[0]
    site = site_of.get((record.POS, ref, alt))
    if site is not None:
        counts["n_strand_ambiguous"] += _is_ambiguous(ref, alt)
        return site, False
    site = site_of.get((record.POS, alt, ref))
    if site is None:
        counts["n_dropped_not_in_panel"] += 1
        return None, False
    if _is_ambiguous(ref, alt):
        counts["n_ambiguous_dropped"] += 1
        return None, False
    counts["n_flipped"] += 1
    return site, True


def _warn_leakage(path: str, samples: List[str], panel) -> None:
    shared = sorted(set(samples) & set(panel.samples))
    if shared:
        warnings.warn(f"{path}: {len(shared)} target samples are also panel samples "
                      f"({', '.join(shared[:3])}{', ...' if len(shared) > 3 else ''}): "
                      "leakage, accuracy measured on them is inflated; remove them from the panel "
                      "(panel.subset_samples)", stacklevel=3)
