"""Alignment QC of target records against the panel, as the imputation servers report it.

Every target record on the panel's contig gets one category (:data:`CATEGORIES`):
kept as it is, fixed (alleles recoded or complemented to the panel's), or
excluded with its reason. The rules, in the order they are applied:

1. multi-allelic records are excluded (split them with ``bcftools norm -m-``);
2. alleles against the panel's site at that position: the same REF/ALT
   (matched), swapped (fixed: allele codes 0 <-> 1), complemented (a strand
   flip, SNPs only: fixed), complemented and swapped (fixed); a position the
   panel lacks is ``not_in_panel``, one where the panel has other alleles is
   ``allele_mismatch``;
3. strand-ambiguous SNPs (A/T, C/G) match either way, so the allele
   frequency decides, as Will Rayner's HRC/1000G check tool (used before the
   Michigan and TOPMed servers) does: excluded when the panel's MAF > 0.4 or
   the site has fewer than 20 called target alleles; otherwise the strand
   whose ALT frequency is closer to the panel's is taken, provided the other
   strand's reading is rejected by the frequency test below (|z| > 5), else
   excluded as unresolved (a small target set cannot tell 0.35 from 0.65);
   with ``trust_strand`` (``impute --trust-strand``: the targets are known to
   be on the panel's strand, as Beagle and Minimac4 assume) they are kept as
   given;
4. several records on one panel site: all of them are excluded (``duplicate``);
5. site call rate (samples with a complete genotype / samples) below 0.9:
   excluded, as the Michigan server excludes "SNPs call rate < 90%";
6. allele frequency: with at least 20 called alleles, a site whose target
   ALT frequency (after alignment) differs from the panel's by more than 0.2
   (``|target AF - panel AF| > 0.2``, the check tool's default) AND
   significantly (two-proportion test on the allele counts, the square root of
   the 2x2 chi-square: ``|z| > 5``, p < 6e-7) is excluded. The check tool
   uses the 0.2 alone, on cohorts of hundreds; with tens of samples sampling
   noise alone passes 0.2 at many common sites, hence the test. The servers
   themselves only plot target against panel frequencies.

Per sample, the call rate over the kept sites is reported, with a warning
below 0.9 (nothing is excluded for it). Thresholds are :class:`QCThresholds`.
:class:`QCReport` collects the decisions and writes them: a table for stderr,
a JSON summary and a TSV with one row per record that was not simply matched.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError

KEPT, FIXED, EXCLUDED = "kept", "fixed", "excluded"

# category -> (action, what it means); the order of the table and the JSON.
CATEGORIES: Dict[str, Tuple[str, str]] = {
    "matched": (KEPT, "REF and ALT as in the panel"),
    "allele_swap": (FIXED, "REF/ALT swapped relative to the panel: allele codes recoded 0 <-> 1"),
    "strand_flip": (FIXED, "alleles on the other strand: complemented"),
    "strand_flip_swap": (FIXED, "other strand and REF/ALT swapped: complemented and recoded"),
    "ambiguous_same_strand": (KEPT, "A/T or C/G SNP: target AF agrees with the panel on the same strand"),
    "ambiguous_other_strand": (FIXED, "A/T or C/G SNP: target AF agrees with the panel on the other strand: "
                                      "recoded"),
    "ambiguous_unresolved": (EXCLUDED, "A/T or C/G SNP whose strand the AF cannot settle (panel MAF > "
                                       "{ambiguous_max_maf}, < {min_af_alleles} called alleles, or both strands "
                                       "fit: |z| <= {af_z})"),
    "not_in_panel": (EXCLUDED, "no panel site at this position"),
    "allele_mismatch": (EXCLUDED, "the panel's site at this position has other alleles"),
    "multiallelic": (EXCLUDED, "more than one ALT allele"),
    "duplicate": (EXCLUDED, "several records on one panel site: all excluded"),
    "low_call_rate": (EXCLUDED, "site call rate < {min_site_call_rate}"),
    "af_discordant": (EXCLUDED, "|target AF - panel AF| > {max_af_diff} and |z| > {af_z} (sites with "
                                ">= {min_af_alleles} called alleles)"),
}

_COMPLEMENT = str.maketrans("ACGT", "TGCA")
_AMBIGUOUS = {frozenset("AT"), frozenset("CG")}


@dataclass(frozen=True)
class QCThresholds:
    """The QC's thresholds (see the module doc)."""
    max_af_diff: float = 0.2           # |target AF - panel AF| above this (and |z| > af_z): excluded
    af_z: float = 5.0                  # two-proportion z beyond which frequencies differ
    ambiguous_max_maf: float = 0.4     # A/T, C/G sites with a larger panel MAF: excluded
    min_af_alleles: int = 20           # called target alleles needed to compare frequencies
    min_site_call_rate: float = 0.9    # sites below: excluded
    min_sample_call_rate: float = 0.9  # samples below: warned about
    trust_strand: bool = False         # A/T, C/G sites kept as given, without the frequency check

    def __post_init__(self):
        for name in ("max_af_diff", "ambiguous_max_maf", "min_site_call_rate", "min_sample_call_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise InputError(f"--{name.replace('_', '-')} {value}: must be in [0, 1]")
        if self.af_z < 0:
            raise InputError(f"af_z {self.af_z}: must be >= 0")
        if self.min_af_alleles < 1:
            raise InputError(f"min_af_alleles {self.min_af_alleles}: must be >= 1")


@dataclass
class Decision:
    """What QC did with one target record."""
    chrom: str
    pos: int
    ref: str
    alt: str                      # comma-joined for a multi-allelic record
    category: str
    site: Optional[int] = None    # panel site index, when it maps to one
    recode: bool = False          # allele codes 0 <-> 1 relative to the record
    detail: str = ""

    @property
    def action(self) -> str:
        return CATEGORIES[self.category][0]


def is_ambiguous(ref: str, alt: str) -> bool:
    """A strand-ambiguous SNP: A/T or C/G (in either order)."""
    return len(ref) == 1 and len(alt) == 1 and frozenset(ref + alt) in _AMBIGUOUS


def complement(allele: str) -> Optional[str]:
    """The allele on the other strand (A<->T, C<->G), or None for anything but A, C, G, T."""
    return allele.translate(_COMPLEMENT) if allele and set(allele) <= set("ACGT") else None


def match_alleles(ref: str, alt: str, candidates: Sequence[Tuple[str, str, int]]) -> Tuple[str, Optional[int], bool]:
    """(category, panel site, recode) of a biallelic record against the panel
    sites at its position, ``candidates`` = [(REF, ALT, site index)]. An
    ambiguous SNP returns ``"ambiguous"`` with its same-strand recode; the AF
    settles it later (:func:`settle_ambiguous`)."""
    if not candidates:
        return "not_in_panel", None, False
    snp = len(ref) == 1 and len(alt) == 1
    flipped = (complement(ref), complement(alt)) if snp else (None, None)
    for panel_ref, panel_alt, site in candidates:
        if is_ambiguous(ref, alt) and {ref, alt} == {panel_ref, panel_alt}:
            return "ambiguous", site, ref == panel_alt
        if (ref, alt) == (panel_ref, panel_alt):
            return "matched", site, False
        if (ref, alt) == (panel_alt, panel_ref):
            return "allele_swap", site, True
        if flipped == (panel_ref, panel_alt):
            return "strand_flip", site, False
        if flipped == (panel_alt, panel_ref):
            return "strand_flip_swap", site, True
    return "allele_mismatch", None, False


def frequency_z(target_af: float, n_target: int, panel_af: float, n_panel: int) -> float:
    """Two-proportion z of the target's and the panel's ALT frequencies from
    ``n_target`` and ``n_panel`` alleles (pooled variance); 0 when both are monomorphic alike."""
    pooled = (target_af * n_target + panel_af * n_panel) / (n_target + n_panel)
    variance = pooled * (1 - pooled) * (1 / n_target + 1 / n_panel)
    if variance <= 0:
        return 0.0 if target_af == panel_af else float("inf")
    return (target_af - panel_af) / variance ** 0.5


def frequencies_differ(target_af: float, n_target: int, panel_af: float, n_panel: int,
                       thresholds: QCThresholds) -> bool:
    """|difference| > max_af_diff and |z| > af_z."""
    return (abs(target_af - panel_af) > thresholds.max_af_diff
            and abs(frequency_z(target_af, n_target, panel_af, n_panel)) > thresholds.af_z)


def settle_ambiguous(same_strand_af: float, n_alleles: int, panel_af: float, n_panel: int,
                     thresholds: QCThresholds) -> Tuple[str, str]:
    """(category, detail) of an A/T or C/G site from its target ALT frequency
    on the same-strand reading (``n_alleles`` called) and the panel's (``n_panel`` alleles)."""
    detail = f"target AF {same_strand_af:.3f} (same strand), panel AF {panel_af:.3f}"
    if thresholds.trust_strand:
        return "ambiguous_same_strand", f"{detail}: kept as given (--trust-strand)"
    if min(panel_af, 1 - panel_af) > thresholds.ambiguous_max_maf:
        return "ambiguous_unresolved", f"panel MAF {min(panel_af, 1 - panel_af):.3f} > {thresholds.ambiguous_max_maf}"
    if n_alleles < thresholds.min_af_alleles:
        return "ambiguous_unresolved", f"{n_alleles} called alleles < {thresholds.min_af_alleles}"
    same_is_closer = abs(same_strand_af - panel_af) <= abs(1 - same_strand_af - panel_af)
    other_reading = 1 - same_strand_af if same_is_closer else same_strand_af
    if abs(frequency_z(other_reading, n_alleles, panel_af, n_panel)) <= thresholds.af_z:
        return "ambiguous_unresolved", f"{detail}: both strands fit (|z| <= {thresholds.af_z})"
    return ("ambiguous_same_strand" if same_is_closer else "ambiguous_other_strand"), detail


def check_site(call_rate: float, target_af: float, n_alleles: int, panel_af: float, n_panel: int,
               thresholds: QCThresholds) -> Optional[Tuple[str, str]]:
    """(category, detail) when an aligned site fails the call-rate or the AF
    check, else None."""
    if call_rate < thresholds.min_site_call_rate:
        return "low_call_rate", f"call rate {call_rate:.3f}"
    if n_alleles >= thresholds.min_af_alleles and frequencies_differ(target_af, n_alleles, panel_af, n_panel,
                                                                     thresholds):
        z = frequency_z(target_af, n_alleles, panel_af, n_panel)
        return "af_discordant", f"target AF {target_af:.3f}, panel AF {panel_af:.3f}, z {z:.1f}"
    return None


@dataclass
class QCReport:
    """The QC of one target file against one panel: every decision, the
    per-sample call rates, and sections later stages add (phasing, imputation)."""
    targets: str
    panel: str
    region: str
    thresholds: QCThresholds
    decisions: List[Decision] = field(default_factory=list)
    samples: List[str] = field(default_factory=list)
    sample_call_rate: Optional[np.ndarray] = None     # float [T] over the kept sites
    genotype_counts: Dict[str, int] = field(default_factory=dict)
    sections: Dict[str, Dict[str, object]] = field(default_factory=dict)

    def counts(self) -> Dict[str, int]:
        """Records per category, every category listed."""
        counts = {name: 0 for name in CATEGORIES}
        for decision in self.decisions:
            counts[decision.category] += 1
        return counts

    def excluded(self) -> List[Decision]:
        return [decision for decision in self.decisions if decision.action == EXCLUDED]

    def low_call_rate_samples(self) -> List[Tuple[str, float]]:
        if self.sample_call_rate is None:
            return []
        low = self.sample_call_rate < self.thresholds.min_sample_call_rate
        return [(self.samples[i], float(self.sample_call_rate[i])) for i in np.flatnonzero(low)]

    def meaning(self, category: str) -> str:
        return CATEGORIES[category][1].format(**dataclasses.asdict(self.thresholds))

    def to_dict(self) -> Dict[str, object]:
        counts = self.counts()
        by_action = {action: sum(n for name, n in counts.items() if CATEGORIES[name][0] == action)
                     for action in (KEPT, FIXED, EXCLUDED)}
        rates = self.sample_call_rate
        return {
            "targets": self.targets, "panel": self.panel, "region": self.region,
            "thresholds": dataclasses.asdict(self.thresholds),
            "records": {"total": len(self.decisions), **by_action},
            "categories": {name: {"count": counts[name], "action": CATEGORIES[name][0],
                                  "meaning": self.meaning(name)} for name in CATEGORIES},
            "genotypes": dict(self.genotype_counts),
            "samples": {"count": len(self.samples),
                        "call_rate_min": None if rates is None or not len(rates) else float(rates.min()),
                        "call_rate_mean": None if rates is None or not len(rates) else float(rates.mean()),
                        "below_threshold": [{"sample": name, "call_rate": round(rate, 4)}
                                            for name, rate in self.low_call_rate_samples()]},
            **self.sections,
        }

    def table(self, tsv_path: Optional[str] = None) -> str:
        """The summary table printed on stderr."""
        counts = self.counts()
        lines = [f"target QC: {self.targets} against {self.panel} (region {self.region})",
                 f"  {'category':<24}{'records':>8}  action"]
        lines += [f"  {name:<24}{counts[name]:>8}  {CATEGORIES[name][0]}" for name in CATEGORIES]
        n_excluded = len(self.excluded())
        lines.append(f"  {'excluded in total':<24}{n_excluded:>8}"
                     + (f"  (every excluded or changed record: {tsv_path})" if tsv_path else ""))
        low = self.low_call_rate_samples()
        if low:
            lines.append(f"  warning: {len(low)} of {len(self.samples)} samples have a call rate below "
                         f"{self.thresholds.min_sample_call_rate} (the lowest: {low[0][0]} {low[0][1]:.3f})")
        lines += [f"  {name}: {value}" for name, value in self.genotype_counts.items() if value]
        return "\n".join(lines)

    def tsv_text(self) -> str:
        """The TSV: a header and one row per record that was not simply matched."""
        rows = ["#CHROM\tPOS\tREF\tALT\tcategory\taction\tdetail"]
        rows += [f"{d.chrom}\t{d.pos}\t{d.ref}\t{d.alt}\t{d.category}\t{d.action}\t{d.detail or self.meaning(d.category)}"
                 for d in self.decisions if d.category != "matched"]
        return "\n".join(rows) + "\n"

    def json_text(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    def check_strict(self, tsv_name: str) -> None:
        """--strict: any excluded record is an InputError summarising them."""
        excluded = self.excluded()
        if not excluded:
            return
        counts = {name: n for name, n in self.counts().items() if n and CATEGORIES[name][0] == EXCLUDED}
        first = excluded[0]
        raise InputError(f"--strict: QC excluded {len(excluded)} target records of {self.targets} "
                         f"({', '.join(f'{n} {name}' for name, n in counts.items())}); the first: "
                         f"{first.chrom}:{first.pos} {first.ref}>{first.alt} {first.category} "
                         f"(run without --strict to get them all in {tsv_name})")
