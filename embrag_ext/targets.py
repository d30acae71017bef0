"""Target samples (the "array"), aligned to the reference panel's sites.

``load_targets(path, panel)`` reads a target VCF and places its genotypes on
the panel's sites: ``haplotypes`` is uint8 [S_panel, 2T] with 0 REF, 1 ALT and
MASK (2) where the site is not typed, the allele is missing, or the sample is
haploid (its second column). Every record goes through the alignment QC of
qc.py (matched, swapped, strand-flipped, strand-ambiguous, not in the panel,
multi-allelic, duplicated, call rate, allele frequency); ``Targets.qc`` holds
each record's decision, so nothing is dropped without a reason on record.

Phase. By default (``allow_unphased=False``, the phased contract) every
genotype's phase must be known: written with ``|``, haploid, homozygous
(``0/0`` is phase-free) or wholly missing; an unphased heterozygote (``0/1``)
or an unphased half-missing call (``0/.``) is an :class:`InputError`. With
``allow_unphased=True`` unphased heterozygotes are kept in written order and
flagged in ``phase_unknown`` (phasing.py phases them against the panel), and a
``0/.`` call is set missing (counted in the QC report).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Dict, List, Tuple, Union

import numpy as np

from .errors import InputError
from .qc import EXCLUDED, Decision, QCReport, QCThresholds, check_site, match_alleles, settle_ambiguous
from .tokens import ALT, MASK
from .vcf_io import Genotypes, PloidyTracker, Region, allele_tokens, genotype_alleles, iter_records, open_vcf, \
    parse_region

PHASING_HINT = "impute phases them against the panel with --phaser auto (Eagle2, SHAPEIT4 or Beagle)"


@dataclass
class Targets:
    """Target genotypes on the panel's sites."""
    samples: List[str]          # [T]
    haplotypes: np.ndarray      # uint8 [S_panel, 2T]: 0 REF, 1 ALT, 2 MASK
    typed: np.ndarray           # bool [S_panel]: a record kept by QC with at least one called allele
    ploidy: np.ndarray          # uint8 [T]: 1 (haploid) or 2
    phase_unknown: np.ndarray   # bool [S_panel, T]: unphased heterozygous genotypes
    qc: QCReport                # every record's QC decision
    source: str                 # path of the target VCF

    @property
    def n_typed(self) -> int:
        return int(self.typed.sum())

    def unphased_samples(self) -> np.ndarray:
        """int64 indices of the samples with at least one unphased heterozygous genotype."""
        return np.flatnonzero(self.phase_unknown.any(axis=0))


def load_targets(path: Union[str, os.PathLike], panel, region: Union[str, Region, None] = None,
                 thresholds: QCThresholds = QCThresholds(), allow_unphased: bool = False) -> Targets:
    """Read a target VCF and align it to ``panel`` (see module doc and qc.py).

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
    aligner = _Aligner(path, panel, samples, QCReport(path, panel.source, str(region), thresholds,
                                                      samples=samples), allow_unphased)
    for record in iter_records(vcf, path, region, allow_duplicates=True):
        aligner.add(record)
    if not aligner.report.decisions:
        raise InputError(f"{path}: no records on {region} (the panel's contig is {panel.chrom}; "
                         f"contigs in the target header: {', '.join(vcf.seqnames) or 'none listed'})")
    return aligner.targets()


class _Aligner:
    """Aligns records one by one onto the panel's sites, recording each decision."""

    def __init__(self, path: str, panel, samples: List[str], report: QCReport, allow_unphased: bool):
        self.path, self.panel, self.samples, self.report = path, panel, samples, report
        self.allow_unphased = allow_unphased
        self.candidates: Dict[int, List[Tuple[str, str, int]]] = {}
        for site, (pos, ref, alt) in enumerate(zip(panel.positions.tolist(), panel.ref.tolist(), panel.alt.tolist())):
            self.candidates.setdefault(pos, []).append((ref, alt, site))
        self.haplotypes = np.full((panel.n_sites, 2 * len(samples)), MASK, dtype=np.uint8)
        self.phase_unknown = np.zeros((panel.n_sites, len(samples)), dtype=bool)
        self.kept = np.zeros(panel.n_sites, dtype=bool)
        self.n_panel_alleles = int(panel.present_haplotypes().sum())
        self.claims: Dict[int, List[Decision]] = {}   # panel site -> the records that mapped to it
        self.ploidy = PloidyTracker(path, samples)
        report.genotype_counts.update(missing_alleles=0, half_missing_set_missing=0)

    def add(self, record) -> None:
        decision = Decision(record.CHROM, record.POS, record.REF, ",".join(record.ALT) or ".", "multiallelic")
        self.report.decisions.append(decision)
        if len(record.ALT) != 1:
            return
        category, site, recode = match_alleles(record.REF, record.ALT[0], self.candidates.get(record.POS, ()))
        decision.category, decision.site, decision.recode = category, site, recode
        if site is None or self._duplicate(site, decision):
            return
        genotypes = genotype_alleles(record, self.path)
        self._check_phase(record, genotypes)
        tokens = allele_tokens(genotypes.alleles)                                  # [T, 2]
        if decision.category == "ambiguous":
            self._settle(decision, tokens)
        if decision.recode:
            tokens = np.where(tokens == MASK, MASK, 1 - tokens).astype(np.uint8)
        if decision.action != EXCLUDED and not self._fails_checks(decision, tokens, genotypes):
            self.ploidy.update(record, genotypes)
            self.haplotypes[site] = tokens.reshape(-1)
            self.phase_unknown[site] = genotypes.unphased_heterozygous
            self.kept[site] = True
            self.report.genotype_counts["missing_alleles"] += int(genotypes.missing.sum())

    def _duplicate(self, site: int, decision: Decision) -> bool:
        """Record the claim on ``site``; with an earlier one, exclude them all (True)."""
        claims = self.claims.setdefault(site, [])
        claims.append(decision)
        if len(claims) == 1:
            return False
        for claim in claims:
            claim.category = "duplicate"
            claim.detail = (f"{len(claims)} records on panel site {self.panel.positions[site]} "
                            f"{self.panel.ref[site]}>{self.panel.alt[site]}")
        self.kept[site] = False
        self.haplotypes[site] = MASK
        self.phase_unknown[site] = False
        return True

    def _check_phase(self, record, genotypes: Genotypes) -> None:
        """The phased contract, or (allow_unphased) half-missing unphased calls set missing."""
        where = f"{self.path}: record {record.CHROM}:{record.POS}"
        half = genotypes.unphased_half_missing
        if self.allow_unphased:
            genotypes.alleles[half] = -1
            self.report.genotype_counts["half_missing_set_missing"] += int(half.sum())
            return
        if genotypes.unphased_heterozygous.any():
            sample = self.samples[int(np.argmax(genotypes.unphased_heterozygous))]
            raise InputError(f"{where}: unphased genotype for sample {sample}: targets must be phased; "
                             f"{PHASING_HINT}")
        if half.any():
            raise InputError(f"{where}: unphased half-missing genotype (such as 0/.) for sample "
                             f"{self.samples[int(np.argmax(half))]}: its phase is unknown; write it missing "
                             f"(./.) or phased (0|.), or {PHASING_HINT}")

    def _settle(self, decision: Decision, tokens: np.ndarray) -> None:
        """Strand of an A/T or C/G site from the allele frequency (qc.settle_ambiguous)."""
        n_alleles, af = _allele_frequency(tokens, decision.recode)
        category, detail = settle_ambiguous(af, n_alleles, float(self.panel.af[decision.site]),
                                            self.n_panel_alleles, self.report.thresholds)
        decision.category, decision.detail = category, detail
        if category == "ambiguous_other_strand":
            decision.recode = not decision.recode

    def _fails_checks(self, decision: Decision, tokens: np.ndarray, genotypes: Genotypes) -> bool:
        """Apply the call-rate and AF checks to an aligned record (True: excluded)."""
        complete = (genotypes.alleles != -1).all(axis=1)
        n_alleles, af = _allele_frequency(tokens, False)
        failure = check_site(float(complete.mean()) if len(complete) else 0.0, af, n_alleles,
                             float(self.panel.af[decision.site]), self.n_panel_alleles, self.report.thresholds)
        if failure is None:
            return False
        aligned = "" if decision.category == "matched" else f" (after {decision.category})"
        decision.category, decision.detail = failure[0], failure[1] + aligned
        return True

    def targets(self) -> Targets:
        typed = self.kept & (self.haplotypes != MASK).any(axis=1)
        if not typed.any():
            counts = {name: n for name, n in self.report.counts().items() if n}
            raise InputError(f"{self.path}: none of its {len(self.report.decisions)} records on "
                             f"{self.report.region} passed the alignment QC against {self.panel.source} "
                             f"({', '.join(f'{n} {name}' for name, n in counts.items())})")
        ploidy = self.ploidy.ploidy
        self.report.sample_call_rate = _sample_call_rate(self.haplotypes[self.kept], ploidy)
        return Targets(samples=self.samples, haplotypes=self.haplotypes, typed=typed, ploidy=ploidy,
                       phase_unknown=self.phase_unknown & typed[:, None], qc=self.report, source=self.path)


def _allele_frequency(tokens: np.ndarray, recode: bool) -> Tuple[int, float]:
    """(called alleles, ALT frequency) of a record's tokens, read with codes swapped if ``recode``."""
    called = tokens != MASK
    n_alleles = int(called.sum())
    af = float((tokens == ALT).sum() / n_alleles) if n_alleles else 0.0
    return n_alleles, (1.0 - af if recode and n_alleles else af)


def _sample_call_rate(haplotypes: np.ndarray, ploidy: np.ndarray) -> np.ndarray:
    """float [T]: fraction of the kept sites where each sample's genotype is
    complete (both alleles; the one allele of a haploid sample)."""
    if haplotypes.shape[0] == 0:
        return np.zeros(len(ploidy))
    first, second = haplotypes[:, 0::2] != MASK, haplotypes[:, 1::2] != MASK   # [K, T]
    complete = first & (second | (ploidy == 1)[None, :])
    return complete.mean(axis=0)


def _warn_leakage(path: str, samples: List[str], panel) -> None:
    shared = sorted(set(samples) & set(panel.samples))
    if shared:
        warnings.warn(f"{path}: {len(shared)} target samples are also panel samples "
                      f"({', '.join(shared[:3])}{', ...' if len(shared) > 3 else ''}): "
                      "leakage, accuracy measured on them is inflated; remove them from the panel "
                      "(panel.subset_samples)", stacklevel=3)

