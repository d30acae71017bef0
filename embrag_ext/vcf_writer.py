"""Writing VCFs: imputed output and phased haplotypes.

Output format follows the file name: ``.vcf.gz`` / ``.vcf.bgz`` (bgzip, with a
.tbi index), ``.bcf`` (with a .csi index) or ``.vcf`` (plain text). Files are
written with cyvcf2 to a temporary file in the output directory, indexed with
the htslib inside cyvcf2 (no bgzip/tabix binaries needed) and renamed into
place at the end: a failed run never leaves a half-written output.

Imputed output follows Beagle 5 / Minimac4: FORMAT GT (phased), DS, GP; INFO
AF (estimated ALT frequency), DR2 (estimated dosage r2) and IMP (site not typed
in the target).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import tempfile
from typing import Iterator, Optional, Sequence, Tuple

import cyvcf2
import numpy as np

from .errors import InputError
from .tokens import MASK
from .vcf_io import build_index

# extension -> (cyvcf2 write mode, index suffix or None)
OUTPUT_FORMATS = {".vcf.gz": ("wz", ".tbi"), ".vcf.bgz": ("wz", ".tbi"),
                  ".bcf": ("wb", ".csi"), ".vcf": ("w", None)}

# "a|b" for allele codes a, b in 0 (REF), 1 (ALT), 2 (MASK -> '.'), indexed by 3a + b.
_GT_STRINGS = np.array([f"{'01.'[a]}|{'01.'[b]}" for a in range(3) for b in range(3)])

_GT_FORMAT = '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">'
_IMPUTED_HEADER_LINES = (
    '##INFO=<ID=AF,Number=A,Type=Float,Description="Estimated ALT Allele Frequencies">',
    '##INFO=<ID=DR2,Number=A,Type=Float,Description="Dosage R-Squared: estimated squared '
    'correlation between estimated REF dose [P(RA) + 2*P(RR)] and true REF dose">',
    '##INFO=<ID=IMP,Number=0,Type=Flag,Description="Imputed marker">',
    _GT_FORMAT,
    '##FORMAT=<ID=DS,Number=A,Type=Float,Description="estimated ALT dose [P(RA) + 2*P(AA)]">',
    '##FORMAT=<ID=GP,Number=G,Type=Float,Description="Estimated Genotype Probability">',
)


def output_format(out_path: str) -> Tuple[str, Optional[str]]:
    """(cyvcf2 write mode, index suffix) for an output file name."""
    for extension, mode_and_index in OUTPUT_FORMATS.items():
        if out_path.endswith(extension):
            return mode_and_index
    raise InputError(f"{out_path}: output name must end in {', '.join(OUTPUT_FORMATS)}")


def _header(chrom: str, samples: Sequence[str], lines: Sequence[str]) -> str:
    if len(set(samples)) != len(samples):
        raise InputError("sample names: duplicates are not allowed in an output VCF")
    columns = "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples])
    return "\n".join(["##fileformat=VCFv4.2",
                      f"##filedate={datetime.date.today():%Y%m%d}",
                      "##source=embrag_ext",
                      f"##contig=<ID={chrom}>",
                      *lines, columns]) + "\n"


def _default_file_mode() -> int:
    """The mode a newly created file gets under the current umask (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def _atomic_writer(out_path: str, header: str) -> Iterator[cyvcf2.Writer]:
    """A cyvcf2 Writer on a temporary file that becomes ``out_path`` (and its
    index) only when the block completes without error."""
    out_path = os.fspath(out_path)
    mode, index_suffix = output_format(out_path)
    directory = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(directory):
        raise InputError(f"{out_path}: output directory {directory} does not exist")
    handle, temp_path = tempfile.mkstemp(prefix=f".{os.path.basename(out_path)}.", suffix=".tmp",
                                         dir=directory)
    os.close(handle)
    temp_index = temp_path + (index_suffix or "")
    try:
        writer = cyvcf2.Writer.from_string(temp_path, header, mode=mode)
        try:
            yield writer
        finally:
            writer.close()
        if index_suffix:
            build_index(temp_path, csi=index_suffix == ".csi")
        os.chmod(temp_path, _default_file_mode())
        os.replace(temp_path, out_path)
        if index_suffix:
            os.replace(temp_index, out_path + index_suffix)
    finally:
        for leftover in {temp_path, temp_index}:
            if os.path.exists(leftover):
                os.remove(leftover)


def _gt_column(alleles: np.ndarray) -> str:
    """Tab-joined phased GT strings of one site's allele codes uint8 [2T]."""
    return "\t".join(_GT_STRINGS[3 * alleles[0::2] + alleles[1::2]].tolist())


def _record_line(chrom: str, pos: int, ref: str, alt: str, info: str, fmt: str, samples_text: str) -> str:
    return f"{chrom}\t{pos}\t.\t{ref}\t{alt}\t.\tPASS\t{info}\t{fmt}\t{samples_text}"


def write_phased_vcf(out_path: str, chrom: str, positions: np.ndarray, ref: Sequence[str],
                     alt: Sequence[str], samples: Sequence[str], haplotypes: np.ndarray) -> None:
    """Write phased genotypes (FORMAT GT only).

    haplotypes: uint8 [S, 2N], 0 REF, 1 ALT, 2 (MASK) written as missing '.'.
    """
    haplotypes = np.asarray(haplotypes, dtype=np.uint8)
    if haplotypes.shape != (len(positions), 2 * len(samples)):
        raise ValueError(f"haplotypes shape {haplotypes.shape} != (sites {len(positions)}, "
                         f"2 * samples {2 * len(samples)})")
    with _atomic_writer(out_path, _header(chrom, samples, [_GT_FORMAT])) as writer:
        for site, pos in enumerate(positions):
            line = _record_line(chrom, int(pos), ref[site], alt[site], ".", "GT", _gt_column(haplotypes[site]))
            writer.write_record(writer.variant_from_string(line))


def estimated_dosage_r2(genotype_probs: np.ndarray) -> np.ndarray:
    """Beagle 5's DR2 from genotype probabilities float [S, T, 3] -> float32 [S].

    With dose d = P1 + 2 P2 and E[X^2] = P1 + 4 P2 per genotype, over the T
    genotypes of a site: DR2 = (sum d^2 - (sum d)^2 / T) / (sum E[X^2] - (sum d)^2 / T),
    the numerator floored at 0; 0 when the denominator is below 1e-8.
    """
    probs = np.asarray(genotype_probs, dtype=np.float64)
    n_genotypes = probs.shape[1]
    dose = probs[..., 1] + 2 * probs[..., 2]            # [S, T]
    expected_square = probs[..., 1] + 4 * probs[..., 2]  # [S, T]
    mean_term = dose.sum(axis=1) ** 2 / n_genotypes
    numerator = np.maximum((dose ** 2).sum(axis=1) - mean_term, 0.0)
    denominator = expected_square.sum(axis=1) - mean_term
    safe = denominator >= 1e-8
    return np.where(safe, numerator / np.where(safe, denominator, 1.0), 0.0).astype(np.float32)


def _genotype_probs(alt_prob: np.ndarray) -> np.ndarray:
    """P(0, 1, 2 ALT alleles) float32 [S, T, 3] from per-haplotype P(ALT) [S, 2T]."""
    p1, p2 = alt_prob[:, 0::2], alt_prob[:, 1::2]  # [S, T]
    return np.stack([(1 - p1) * (1 - p2), p1 * (1 - p2) + (1 - p1) * p2, p1 * p2], axis=-1)


def _keep_typed_alleles(alt_prob: np.ndarray, typed: np.ndarray,
                        typed_haplotypes: Optional[np.ndarray]) -> np.ndarray:
    """alt_prob with the given target alleles (0/1, not MASK) at typed sites."""
    if typed_haplotypes is None:
        return alt_prob
    typed_haplotypes = np.asarray(typed_haplotypes)
    if typed_haplotypes.shape != alt_prob.shape:
        raise ValueError(f"typed_haplotypes shape {typed_haplotypes.shape} != alt_prob shape {alt_prob.shape}")
    given = typed[:, None] & (typed_haplotypes != MASK)  # bool [S, 2T]
    return np.where(given, typed_haplotypes.astype(np.float32), alt_prob)


def write_imputed_vcf(out_path: str, panel, sample_names: Sequence[str], alt_prob: np.ndarray,
                      typed: Optional[np.ndarray] = None,
                      typed_haplotypes: Optional[np.ndarray] = None) -> None:
    """Write imputed genotypes of T target samples at every panel site.

    alt_prob: float [S, 2T], P(ALT) per haplotype (columns sample0-hap1,
        sample0-hap2, ...) at each of the panel's S sites.
    typed: bool [S], sites typed in the targets (no IMP flag). Default: none.
    typed_haplotypes: uint8 [S, 2T] target alleles (0/1; MASK = 2 for
        missing): at typed sites the given alleles are written as they are
        (hard GT, DS, GP).
    GT allele = P(ALT) > 0.5; DS = p1 + p2; GP = ((1-p1)(1-p2), p1(1-p2) + (1-p1)p2, p1 p2);
    INFO AF = mean DS / 2, DR2 = :func:`estimated_dosage_r2`.
    """
    alt_prob = np.asarray(alt_prob, dtype=np.float32)
    if alt_prob.shape != (panel.n_sites, 2 * len(sample_names)):
        raise ValueError(f"alt_prob shape {alt_prob.shape} != (panel sites {panel.n_sites}, "
                         f"2 * samples {2 * len(sample_names)})")
    typed = np.zeros(panel.n_sites, dtype=bool) if typed is None else np.asarray(typed, dtype=bool)
    alt_prob = _keep_typed_alleles(alt_prob, typed, typed_haplotypes)
    alleles = (alt_prob > 0.5).astype(np.uint8)                   # [S, 2T]
    genotype_probs = np.round(_genotype_probs(alt_prob), 3)       # [S, T, 3]
    dosage = np.round(alt_prob[:, 0::2] + alt_prob[:, 1::2], 3)   # [S, T]
    alt_freq = dosage.mean(axis=1) / 2                            # [S]
    dr2 = estimated_dosage_r2(genotype_probs)                     # [S]
    header = _header(panel.chrom, sample_names, _IMPUTED_HEADER_LINES)
    with _atomic_writer(out_path, header) as writer:
        for site in range(panel.n_sites):
            info = f"AF={alt_freq[site]:.4g};DR2={dr2[site]:.2f}" + ("" if typed[site] else ";IMP")
            line = _record_line(panel.chrom, int(panel.positions[site]), panel.ref[site], panel.alt[site],
                                info, "GT", _gt_column(alleles[site]))
            record = writer.variant_from_string(line)
            record.set_format("DS", dosage[site][:, None].astype(np.float32))
            record.set_format("GP", genotype_probs[site].astype(np.float32))
            writer.write_record(record)
