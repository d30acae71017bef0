"""Writing VCFs (imputed output, phased haplotypes) and the Minimac-style info file.

Output format follows the file name: ``.vcf.gz`` / ``.vcf.bgz`` (bgzip, with a
.tbi index), ``.bcf`` (with a .csi index) or ``.vcf`` (plain text). Records
are formatted here as text: bgzipped by the htslib inside cyvcf2 (with
``threads`` compression threads), plain text as is, and parsed into BCF by
cyvcf2 for ``.bcf``. Every output is written to a temporary file in the output
directory, indexed and renamed into place at the end (atomic.py's :func:`atomic_output`):
a failed run never leaves a half-written output.

Imputed output follows Beagle 5 / Minimac4: FORMAT GT (phased), DS, GP; INFO
AF (estimated ALT frequency), DR2 (estimated dosage r2) and TYPED (a typed
site: some target genotype given) or IMP (imputed, including typed records
whose genotypes are all missing). A haploid sample (ploidy 1) is written
haploid, as Beagle does: GT ``0``/``1``, DS = P(ALT), GP = (P(REF), P(ALT)).
Probabilities are written with 3 decimals; AF, DR2 and the info file are
computed from those written values.

The info file (``<out>.info.gz``) has Minimac4's (1.x) columns and meaning,
one row per panel site: SNP (CHROM:POS:REF:ALT), REF(0), ALT(1), ALT_Frq
(mean ALT probability over the haplotypes), MAF, AvgCall (mean over
haplotypes of max(P(ALT), P(REF))), Rsq (Minimac's estimated r2: the variance
of the haplotype ALT probabilities over ALT_Frq (1 - ALT_Frq)), Genotyped
(Genotyped or Imputed); then DR2 (the VCF's, Beagle's formula) and Filter:
PASS for a site in the VCF, ``DR2<x`` for one dropped by ``min_dr2``,
``NotImputed:OutsideTypedSpan`` for one outside the span (no value there).
"""
from __future__ import annotations

import contextlib
import datetime
import gzip
import os
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import cyvcf2
import numpy as np

from .atomic import atomic_output, check_writable_directory, output_directory, sync
from .errors import InputError
from .panel import present_haplotypes
from .tokens import MASK
from .vcf_io import BgzfWriter, build_index

# extension -> (write mode: "w" plain text, "wz" bgzip, "wb" BCF; index suffix or None)
OUTPUT_FORMATS = {".vcf.gz": ("wz", ".tbi"), ".vcf.bgz": ("wz", ".tbi"),
                  ".bcf": ("wb", ".csi"), ".vcf": ("w", None)}

SCALE = 1000          # probabilities are written in thousandths
_HAPLOID_KEY = (SCALE + 1) ** 2   # sample-field keys: diploid k1 * (SCALE + 1) + k2, haploid _HAPLOID_KEY + k

_GT_FORMAT = '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">'
_IMPUTED_HEADER_LINES = (
    '##INFO=<ID=AF,Number=A,Type=Float,Description="Estimated ALT Allele Frequencies">',
    '##INFO=<ID=DR2,Number=A,Type=Float,Description="Dosage R-Squared: estimated squared '
    'correlation between estimated REF dose [P(RA) + 2*P(RR)] and true REF dose">',
    '##INFO=<ID=IMP,Number=0,Type=Flag,Description="Imputed marker">',
    '##INFO=<ID=TYPED,Number=0,Type=Flag,Description="Typed marker (genotypes given in the targets)">',
    _GT_FORMAT,
    '##FORMAT=<ID=DS,Number=A,Type=Float,Description="estimated ALT dose [P(RA) + 2*P(AA)]">',
    '##FORMAT=<ID=GP,Number=G,Type=Float,Description="Estimated Genotype Probability">',
)
INFO_COLUMNS = ("SNP", "REF(0)", "ALT(1)", "ALT_Frq", "MAF", "AvgCall", "Rsq", "Genotyped", "DR2", "Filter")
OUTSIDE_SPAN = "NotImputed:OutsideTypedSpan"


def output_format(out_path: str) -> Tuple[str, Optional[str]]:
    """(write mode, index suffix) for an output file name."""
    for extension, mode_and_index in OUTPUT_FORMATS.items():
        if out_path.endswith(extension):
            return mode_and_index
    raise InputError(f"{out_path}: output name must end in {', '.join(OUTPUT_FORMATS)}")


def sibling_path(vcf_path: str, suffix: str) -> str:
    """``dir/name<suffix>`` for ``dir/name.vcf.gz`` (or .bcf, .vcf): the report
    files that go with an output VCF."""
    for extension in OUTPUT_FORMATS:
        if vcf_path.endswith(extension):
            return vcf_path[: -len(extension)] + suffix
    return vcf_path + suffix


def check_output_path(out_path: str, flag: str = "--out") -> None:
    """InputError unless ``out_path`` has a VCF/BCF name in an existing, writable directory."""
    output_format(out_path)
    check_writable_directory(output_directory(out_path), f"{flag} {out_path}")


def _header(chrom: str, samples: Sequence[str], lines: Sequence[str]) -> str:
    if len(set(samples)) != len(samples):
        raise InputError("sample names: duplicates are not allowed in an output VCF")
    columns = "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples])
    return "\n".join(["##fileformat=VCFv4.2",
                      f"##filedate={datetime.date.today():%Y%m%d}",
                      "##source=embrag_ext",
                      f"##contig=<ID={chrom}>",
                      *lines, columns]) + "\n"


class _RecordSink:
    """Where record lines go: plain text, bgzip text, or BCF through cyvcf2."""

    def __init__(self, path: str, mode: str, header: str, threads: int):
        self._writer = self._text = None
        if mode == "wb":
            self._writer = cyvcf2.Writer.from_string(path, header, mode="wb")
        else:
            self._text = BgzfWriter(path, threads) if mode == "wz" else open(path, "w")
            self._text.write(header)
            if mode == "wz":
                self._text.end_block()

    def write_lines(self, lines: List[str]) -> None:
        if self._text is not None:
            self._text.write("\n".join(lines) + "\n")
            return
        for line in lines:
            self._writer.write_record(self._writer.variant_from_string(line))

    def close(self) -> None:
        (self._text or self._writer).close()


@contextlib.contextmanager
def _vcf_writer(out_path: str, header: str, threads: int = 1,
                before_commit: Optional[Callable[[], None]] = None) -> Iterator[_RecordSink]:
    """A record sink on a temporary file that becomes ``out_path`` (and its
    index) only when the block completes without error; ``before_commit`` runs
    once the file and its index are complete, before they are renamed."""
    out_path = os.fspath(out_path)
    mode, index_suffix = output_format(out_path)
    with atomic_output(out_path, [index_suffix] if index_suffix else []) as temp_path:
        sink = _RecordSink(temp_path, mode, header, threads)
        try:
            yield sink
        finally:
            sink.close()
        if index_suffix:
            build_index(temp_path, csi=index_suffix == ".csi")
        if before_commit is not None:
            for path in [temp_path] + ([temp_path + index_suffix] if index_suffix else []):
                sync(path)            # on disk before what goes with it is committed
            before_commit()


def _record_lines(chrom: str, positions: np.ndarray, ref: Sequence[str], alt: Sequence[str],
                  info: Sequence[str], fmt: str, sample_columns: Sequence[str]) -> List[str]:
    return [f"{chrom}\t{pos}\t.\t{r}\t{a}\t.\tPASS\t{i}\t{fmt}\t{samples}"
            for pos, r, a, i, samples in zip(positions.tolist(), ref, alt, info, sample_columns)]


# GT text of allele codes a, b in 0 (REF), 1 (ALT), 2 (MASK -> '.'): diploid at 3a + b, haploid at 9 + a.
_GT_STRINGS = np.array([f"{'01.'[a]}|{'01.'[b]}" for a in range(3) for b in range(3)] + ["0", "1", "."])


def _gt_columns(haplotypes: np.ndarray, ploidy: np.ndarray) -> List[str]:
    """Tab-joined GT strings per site of allele codes uint8 [S, 2T]."""
    codes = np.where(ploidy == 1, 9 + haplotypes[:, 0::2], 3 * haplotypes[:, 0::2] + haplotypes[:, 1::2])
    return ["\t".join(row) for row in _GT_STRINGS[codes].tolist()]


def write_phased_vcf(out_path: str, chrom: str, positions: np.ndarray, ref: Sequence[str],
                     alt: Sequence[str], samples: Sequence[str], haplotypes: np.ndarray,
                     ploidy: Optional[np.ndarray] = None, unphased: bool = False) -> None:
    """Write genotypes (FORMAT GT only), phased unless ``unphased``.

    haplotypes: uint8 [S, 2N], 0 REF, 1 ALT, 2 (MASK) written as missing '.'.
    ploidy: uint8 [N] (default all 2); a haploid sample is written from its
    first column only.
    """
    haplotypes = np.asarray(haplotypes, dtype=np.uint8)
    if haplotypes.shape != (len(positions), 2 * len(samples)):
        raise ValueError(f"haplotypes shape {haplotypes.shape} != (sites {len(positions)}, "
                         f"2 * samples {2 * len(samples)})")
    ploidy = np.full(len(samples), 2, dtype=np.uint8) if ploidy is None else np.asarray(ploidy)
    with _vcf_writer(out_path, _header(chrom, samples, [_GT_FORMAT])) as sink:
        for start in range(0, len(positions), _CHUNK):
            part = slice(start, start + _CHUNK)
            columns = _gt_columns(haplotypes[part], ploidy)
            if unphased:
                columns = [column.replace("|", "/") for column in columns]
            sink.write_lines(_record_lines(chrom, np.asarray(positions[part]), ref[part], alt[part],
                                           ["."] * len(columns), "GT", columns))


_CHUNK = 2048   # sites formatted at a time


def _number(value: float) -> str:
    """3 decimals without trailing zeros: 0, 1, 0.5, 0.123."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


_THOUSANDTHS = [_number(k / SCALE) for k in range(2 * SCALE + 1)]   # text of 0, 0.001, ..., 2


def _product(a: int, b: int) -> int:
    """(a / SCALE) * (b / SCALE) in thousandths, rounded half up."""
    return (a * b + SCALE // 2) // SCALE


class _SampleFields(dict):
    """Cache: sample-field key -> its ``GT:DS:GP`` text (see _HAPLOID_KEY), from
    P(ALT) in thousandths; GP values rounded to thousandths."""

    def __missing__(self, key: int) -> str:
        text = _THOUSANDTHS
        if key >= _HAPLOID_KEY:
            k = key - _HAPLOID_KEY
            field = f"{int(k > SCALE // 2)}:{text[k]}:{text[SCALE - k]},{text[k]}"
        else:
            k1, k2 = divmod(key, SCALE + 1)
            both, neither = _product(k1, k2), _product(SCALE - k1, SCALE - k2)
            one = _product(k1, SCALE - k2) + _product(SCALE - k1, k2)
            field = (f"{int(k1 > SCALE // 2)}|{int(k2 > SCALE // 2)}:{text[k1 + k2]}:"
                     f"{text[neither]},{text[one]},{text[both]}")
        self[key] = field
        return field


def _sample_columns(quantized: np.ndarray, ploidy: np.ndarray, fields: _SampleFields) -> List[str]:
    """Tab-joined GT:DS:GP per site of P(ALT) in thousandths int64 [S, 2T]."""
    keys = np.where(ploidy == 1, _HAPLOID_KEY + quantized[:, 0::2],
                    quantized[:, 0::2] * (SCALE + 1) + quantized[:, 1::2])          # [S, T]
    lookup = fields.__getitem__
    return ["\t".join(map(lookup, row)) for row in keys.tolist()]


def _dosage_r2(dose: np.ndarray, expected_square: np.ndarray, n_genotypes: np.ndarray) -> np.ndarray:
    """Beagle 5's DR2 per site from per-genotype doses and E[X^2] (absent
    genotypes contribute 0 to both) over ``n_genotypes`` genotypes per site:
    DR2 = (sum d^2 - (sum d)^2 / n) / (sum E[X^2] - (sum d)^2 / n), the
    numerator floored at 0; 0 when the denominator is below 1e-8."""
    mean_term = dose.sum(axis=1) ** 2 / np.maximum(n_genotypes, 1)
    numerator = np.maximum((dose ** 2).sum(axis=1) - mean_term, 0.0)
    denominator = expected_square.sum(axis=1) - mean_term
    safe = denominator >= 1e-8
    return np.where(safe, numerator / np.where(safe, denominator, 1.0), 0.0).astype(np.float32)


def estimated_dosage_r2(genotype_probs: np.ndarray) -> np.ndarray:
    """Beagle 5's DR2 from diploid genotype probabilities float [S, T, 3] -> float32 [S].

    With dose d = P1 + 2 P2 and E[X^2] = P1 + 4 P2 per genotype, over the T
    genotypes of a site (see :func:`_dosage_r2`).
    """
    probs = np.asarray(genotype_probs, dtype=np.float64)
    return _dosage_r2(probs[..., 1] + 2 * probs[..., 2], probs[..., 1] + 4 * probs[..., 2],
                      np.full(probs.shape[0], probs.shape[1]))


@dataclass
class SiteQuality:
    """Per-site summaries of the written probabilities (the INFO fields and the info file)."""
    alt_freq: np.ndarray   # float [S]: mean P(ALT) over present haplotypes (INFO/AF, ALT_Frq)
    dr2: np.ndarray        # float32 [S]: Beagle's DR2 (haploid genotypes: dose p, E[X^2] p)
    rsq: np.ndarray        # float [S]: Minimac's Rsq
    avg_call: np.ndarray   # float [S]: Minimac's AvgCall


def site_quality(prob: np.ndarray, ploidy: np.ndarray) -> SiteQuality:
    """:class:`SiteQuality` of P(ALT) float [S, 2T] (as written) for samples of ``ploidy`` [T]."""
    present = present_haplotypes(ploidy)                                  # [2T]
    p = prob[:, present].astype(np.float64)                               # [S, H]
    alt_freq = p.mean(axis=1) if p.shape[1] else np.zeros(len(prob))
    variance = ((p - alt_freq[:, None]) ** 2).mean(axis=1) if p.shape[1] else np.zeros(len(prob))
    spread = alt_freq * (1 - alt_freq)
    rsq = np.where(spread > 0, variance / np.where(spread > 0, spread, 1.0), 0.0)
    diploid = ploidy == 2
    p1, p2 = prob[:, 0::2].astype(np.float64), np.where(diploid, prob[:, 1::2], 0.0)   # [S, T]
    dose = p1 + p2
    expected_square = dose + 2 * p1 * p2
    return SiteQuality(alt_freq=alt_freq, dr2=_dosage_r2(dose, expected_square, np.full(len(prob), len(ploidy))),
                       rsq=rsq, avg_call=np.maximum(p, 1 - p).mean(axis=1) if p.shape[1] else np.ones(len(prob)))


def quantize(alt_prob: np.ndarray) -> np.ndarray:
    """P(ALT) in thousandths, int64 (what the VCF holds)."""
    return np.rint(np.clip(alt_prob, 0.0, 1.0) * SCALE).astype(np.int64)


def typed_probabilities(alt_prob: np.ndarray, typed: np.ndarray,
                        typed_haplotypes: Optional[np.ndarray]) -> np.ndarray:
    """alt_prob with the given target alleles (0/1, not MASK) at typed sites."""
    if typed_haplotypes is None:
        return alt_prob
    typed_haplotypes = np.asarray(typed_haplotypes)
    if typed_haplotypes.shape != alt_prob.shape:
        raise ValueError(f"typed_haplotypes shape {typed_haplotypes.shape} != alt_prob shape {alt_prob.shape}")
    given = typed[:, None] & (typed_haplotypes != MASK)  # bool [S, 2T]
    return np.where(given, typed_haplotypes.astype(np.float32), alt_prob)


def site_filter(typed: np.ndarray, dr2: np.ndarray, positions: np.ndarray, min_dr2: float = 0.0,
                impute_span: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """str [S] per site: PASS (written), ``DR2<min_dr2`` for an imputed site
    below ``min_dr2``, :data:`OUTSIDE_SPAN` for an imputed site outside
    ``impute_span`` = (first, last) positions (None: everywhere). Typed sites
    always pass. DR2 is compared as written (2 decimals), so that what a user
    reads in the files agrees with the filter."""
    status = np.full(len(typed), "PASS", dtype=object)
    status[~typed & (np.round(dr2, 2) < min_dr2)] = f"DR2<{min_dr2:g}"
    if impute_span is not None:
        outside = (positions < impute_span[0]) | (positions > impute_span[1])
        status[~typed & outside] = OUTSIDE_SPAN
    return status


@dataclass
class ImputedSites:
    """What an imputed VCF holds, ready to write: per-haplotype P(ALT) as
    written, the per-site quality and each site's filter status."""
    quantized: np.ndarray   # int64 [S, 2T]: P(ALT) in thousandths, typed alleles as given
    quality: SiteQuality
    status: np.ndarray      # str [S]: PASS (written), DR2<x or OUTSIDE_SPAN (site_filter)
    typed: np.ndarray       # bool [S]
    ploidy: np.ndarray      # uint8 [T]


def imputed_sites(panel, alt_prob: np.ndarray, typed: Optional[np.ndarray] = None,
                  typed_haplotypes: Optional[np.ndarray] = None, ploidy: Optional[np.ndarray] = None,
                  min_dr2: float = 0.0, impute_span: Optional[Tuple[int, int]] = None) -> ImputedSites:
    """The :class:`ImputedSites` of T target samples at the panel's S sites.

    alt_prob: float [S, 2T], P(ALT) per haplotype (columns sample0-hap1,
        sample0-hap2, ...).
    typed: bool [S], typed sites (INFO/TYPED; the others get IMP). Default: none.
    typed_haplotypes: uint8 [S, 2T] target alleles (0/1; MASK = 2 for
        missing): at typed sites the given alleles are written as they are.
    ploidy: uint8 [T] (default all 2): haploid samples are written haploid
        from their first column.
    min_dr2, impute_span: which imputed sites are written (:func:`site_filter`;
        default: every site).
    """
    alt_prob = np.asarray(alt_prob, dtype=np.float32)
    n_samples = alt_prob.shape[1] // 2
    if alt_prob.shape != (panel.n_sites, 2 * n_samples):
        raise ValueError(f"alt_prob shape {alt_prob.shape} != (panel sites {panel.n_sites}, 2 * samples)")
    typed = np.zeros(panel.n_sites, dtype=bool) if typed is None else np.asarray(typed, dtype=bool)
    ploidy = np.full(n_samples, 2, dtype=np.uint8) if ploidy is None else np.asarray(ploidy)
    quantized = quantize(typed_probabilities(alt_prob, typed, typed_haplotypes))   # [S, 2T]
    quality = site_quality(quantized / SCALE, ploidy)
    status = site_filter(typed, quality.dr2, panel.positions, min_dr2, impute_span)
    return ImputedSites(quantized=quantized, quality=quality, status=status, typed=typed, ploidy=ploidy)


def write_imputed_sites(out_path: str, panel, sample_names: Sequence[str], sites: ImputedSites,
                        threads: int = 1, before_commit: Optional[Callable[[], None]] = None) -> None:
    """Write the PASS sites of ``sites`` (GT allele = P(ALT) > 0.5; DS = p1 + p2;
    GP = ((1-p1)(1-p2), p1(1-p2) + (1-p1)p2, p1 p2); INFO AF = mean P(ALT)
    over haplotypes, DR2 = :func:`_dosage_r2`). ``before_commit`` runs once the
    VCF and its index are complete, before they are renamed into place."""
    if sites.quantized.shape[1] != 2 * len(sample_names):
        raise ValueError(f"alt_prob shape {sites.quantized.shape} != (panel sites {panel.n_sites}, "
                         f"2 * samples {2 * len(sample_names)})")
    quality = sites.quality
    info = [f"AF={af:.4g};DR2={dr2:.2f};{'TYPED' if is_typed else 'IMP'}"
            for af, dr2, is_typed in zip(quality.alt_freq.tolist(), quality.dr2.tolist(), sites.typed.tolist())]
    fields = _SampleFields()
    header = _header(panel.chrom, sample_names, _IMPUTED_HEADER_LINES)
    written = np.flatnonzero(sites.status == "PASS")
    with _vcf_writer(out_path, header, threads, before_commit) as sink:
        for start in range(0, len(written), _CHUNK):
            part = written[start:start + _CHUNK]
            sink.write_lines(_record_lines(panel.chrom, panel.positions[part], panel.ref[part], panel.alt[part],
                                           [info[site] for site in part], "GT:DS:GP",
                                           _sample_columns(sites.quantized[part], sites.ploidy, fields)))


def write_imputed_vcf(out_path: str, panel, sample_names: Sequence[str], alt_prob: np.ndarray,
                      typed: Optional[np.ndarray] = None, typed_haplotypes: Optional[np.ndarray] = None,
                      ploidy: Optional[np.ndarray] = None, min_dr2: float = 0.0,
                      impute_span: Optional[Tuple[int, int]] = None, threads: int = 1) -> ImputedSites:
    """:func:`imputed_sites` then :func:`write_imputed_sites`; returns the sites."""
    if np.shape(alt_prob)[1] != 2 * len(sample_names):
        raise ValueError(f"alt_prob shape {np.shape(alt_prob)} != (panel sites {panel.n_sites}, "
                         f"2 * samples {2 * len(sample_names)})")
    sites = imputed_sites(panel, alt_prob, typed, typed_haplotypes, ploidy, min_dr2, impute_span)
    write_imputed_sites(out_path, panel, sample_names, sites, threads)
    return sites


def info_file_text(panel, sites: ImputedSites) -> str:
    """The Minimac-style info table (module doc), one row per panel site."""
    quality, status = sites.quality, sites.status
    rows = ["\t".join(INFO_COLUMNS)]
    maf = np.minimum(quality.alt_freq, 1 - quality.alt_freq)
    for site in range(panel.n_sites):
        snp = f"{panel.chrom}:{panel.positions[site]}:{panel.ref[site]}:{panel.alt[site]}"
        if status[site] == OUTSIDE_SPAN:
            values = ["-"] * 4
            dr2 = "-"
        else:
            values = [f"{quality.alt_freq[site]:.5f}", f"{maf[site]:.5f}", f"{quality.avg_call[site]:.5f}",
                      f"{quality.rsq[site]:.5f}"]
            dr2 = f"{quality.dr2[site]:.2f}"
        rows.append("\t".join([snp, panel.ref[site], panel.alt[site], *values,
                               "Genotyped" if sites.typed[site] else "Imputed", dr2, status[site]]))
    return "\n".join(rows) + "\n"


def write_gzip_text(path: str, text: str) -> None:
    """``text`` gzipped (no timestamp, no file name: the same text gives the same bytes)."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as handle:
        handle.write(text.encode())
