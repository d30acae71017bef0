"""The reference panel as arrays: phased haplotypes of one chromosome.

:class:`Panel` holds positions, alleles, haplotypes uint8 [sites, 2 * samples]
(columns sample0-hap1, sample0-hap2, ...; see :func:`haplotype_columns`),
each sample's ploidy, the ALT allele frequency and the variant type of each
site, with the small array helpers the other stages share. Reading a panel
from VCF/BCF (and its on-disk cache) is panel_vcf.py.

Haploid samples (chrX outside the pseudo-autosomal regions in males) keep the
two-column layout: their second column holds MASK at every site and is not a
haplotype. Whatever uses the panel's columns as reference haplotypes takes
:meth:`Panel.present_haplotypes` (or :func:`present_haplotypes`) into account;
:func:`alt_frequency` counts present alleles only.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError
from .tokens import ALT, MASK

VARIANT_TYPES = ("SNP", "insertion", "deletion", "MNP/other")
SNP, INSERTION, DELETION, OTHER = range(len(VARIANT_TYPES))
SiteKey = Tuple[int, str, str]  # (POS, REF, ALT)


@dataclass
class Panel:
    """Phased reference haplotypes of one chromosome.

    Haplotype columns are sample0-hap1, sample0-hap2, sample1-hap1, ...
    Alleles are 0 = REF, 1 = ALT (see tokens.py). A panel loaded from the
    cache holds ``haplotypes`` as a read-only memory map (copy it to modify).
    """
    chrom: str
    positions: np.ndarray      # int64 [S], 1-based
    ref: np.ndarray            # str [S]
    alt: np.ndarray            # str [S]
    haplotypes: np.ndarray     # uint8 [S, 2N]
    samples: List[str]         # [N]
    af: np.ndarray             # float32 [S], ALT allele frequency
    variant_type: np.ndarray   # uint8 [S], index into VARIANT_TYPES
    source: str                # path of the VCF
    af_from_panel: bool = True  # af was computed from these haplotypes
    ploidy: Optional[np.ndarray] = None  # uint8 [N], 1 or 2; None = all diploid

    def __post_init__(self):
        if self.ploidy is None:
            self.ploidy = np.full(len(self.samples), 2, dtype=np.uint8)

    @property
    def n_sites(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_haplotypes(self) -> int:
        return int(self.haplotypes.shape[1])

    @property
    def maf(self) -> np.ndarray:
        """Minor allele frequency, float32 [S]."""
        return np.minimum(self.af, 1.0 - self.af)

    def present_haplotypes(self) -> np.ndarray:
        """bool [2N]: haplotype columns that hold a haplotype (False for a
        haploid sample's second column)."""
        return present_haplotypes(self.ploidy)

    def subset_samples(self, indices: Sequence[int]) -> "Panel":
        """A panel with only the samples at ``indices`` (haplotype columns 2i, 2i+1).

        The AF is recomputed from the kept haplotypes only if it was computed
        from the panel; an AF from a frequency file or INFO/AF is kept as is.
        """
        indices = np.asarray(indices, dtype=np.int64)
        haplotypes = np.ascontiguousarray(self.haplotypes[:, haplotype_columns(indices)])
        af = alt_frequency(haplotypes) if self.af_from_panel else self.af
        return dataclasses.replace(self, haplotypes=haplotypes, af=af, ploidy=self.ploidy[indices],
                                   samples=[self.samples[i] for i in indices])


def haplotype_columns(samples: np.ndarray) -> np.ndarray:
    """Haplotype columns 2i, 2i+1 of each sample index i, int64 [2 * len(samples)]."""
    samples = np.asarray(samples, dtype=np.int64)
    return np.stack([2 * samples, 2 * samples + 1], axis=1).reshape(-1)


def present_haplotypes(ploidy: np.ndarray) -> np.ndarray:
    """bool [2N] of per-sample ploidy uint8 [N]: column 2i is always a
    haplotype, column 2i + 1 only for a diploid sample."""
    ploidy = np.asarray(ploidy)
    return np.stack([np.ones(len(ploidy), dtype=bool), ploidy == 2], axis=1).reshape(-1)


def site_keys(sites) -> List[SiteKey]:
    """(POS, REF, ALT) of each site of anything with positions, ref and alt arrays."""
    return list(zip(sites.positions.tolist(), sites.ref.tolist(), sites.alt.tolist()))


def values_at_sites(table: Dict[SiteKey, float], keys: Sequence[SiteKey], source: str,
                    what: str) -> np.ndarray:
    """``table[key]`` for each key, float64 [len(keys)]; InputError naming
    ``source`` and the first key absent from the table."""
    missing = [key for key in keys if key not in table]
    if missing:
        pos, ref, alt = missing[0]
        raise InputError(f"{source}: no {what} for {len(missing)} sites, the first at {pos} {ref}>{alt}")
    return np.array([table[key] for key in keys], dtype=np.float64)


def alt_frequency(haplotypes: np.ndarray, rows_per_chunk: int = 4096) -> np.ndarray:
    """ALT allele frequency per site of uint8 haplotypes [S, H] -> float32 [S],
    over the alleles that are not MASK (absent haploid columns, missing
    calls); 0 at a site with none. Reads ``rows_per_chunk`` sites at a time."""
    af = np.zeros(haplotypes.shape[0], dtype=np.float32)
    for start in range(0, haplotypes.shape[0], rows_per_chunk):
        chunk = np.asarray(haplotypes[start:start + rows_per_chunk])
        n_alt = (chunk == ALT).sum(axis=1)
        n_present = (chunk != MASK).sum(axis=1)
        af[start:start + len(chunk)] = n_alt / np.maximum(n_present, 1)
    return af


def classify_variant(ref: str, alt: str) -> int:
    """SNP, INSERTION, DELETION or OTHER (MNP, symbolic, complex) for one allele pair."""
    symbolic = alt.startswith("<") or alt in ("*", ".") or "[" in alt or "]" in alt
    if symbolic:
        return OTHER
    if len(ref) == 1 and len(alt) == 1:
        return SNP
    if len(alt) > len(ref) and alt.startswith(ref):
        return INSERTION
    if len(ref) > len(alt) and ref.startswith(alt):
        return DELETION
    return OTHER
