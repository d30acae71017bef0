"""Reading VCF/BCF records with cyvcf2, defensively, and the htslib calls the writer shares.

htslib (inside cyvcf2) prints its own messages to stderr and sometimes reads a
corrupt file as if it simply ended. Every reader in the package therefore goes
through this module, which:

- writes bgzipped text and indexes it with that same htslib: :class:`BgzfWriter`,
  :func:`build_index`;
- checks the file before htslib sees it (exists, a VCF/BCF header, a complete
  bgzip stream, unique sample names): :func:`open_vcf`;
- silences htslib's stderr messages while reading: :func:`quiet_htslib`;
- walks records in a region, checking they are sorted and (unless the caller
  counts them itself) not duplicated, and turns read errors into one-line
  :class:`InputError`: :func:`iter_records`;
- reads a record's haploid and diploid genotypes with their phase:
  :func:`genotype_alleles`; and imputed calls back: :func:`read_imputed`.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import gzip
import itertools
import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Iterator, List, Optional

import cyvcf2
import numpy as np

from .errors import InputError
from .tokens import MASK

# The 28-byte empty block that ends every complete BGZF (bgzip / BCF) file.
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
GZIP_MAGIC = b"\x1f\x8b"
BCF_MAGIC = b"BCF\x02"

# cyvcf2 links htslib statically and exports its symbols.
_HTSLIB = ctypes.CDLL(cyvcf2.cyvcf2.__file__, use_errno=True)


def _htslib_write_error(path: str) -> OSError:
    """The OSError of a failed htslib write, with the C errno (e.g. ENOSPC, EFBIG) when it set one."""
    code = ctypes.get_errno() or errno.EIO
    return OSError(code, os.strerror(code), path)


@contextlib.contextmanager
def quiet_htslib():
    """Silence htslib's messages to stderr (we report errors ourselves)."""
    previous = _HTSLIB.hts_get_log_level()
    _HTSLIB.hts_set_log_level(0)
    try:
        yield
    finally:
        _HTSLIB.hts_set_log_level(previous)


_HTSLIB.bgzf_open.restype = ctypes.c_void_p
_HTSLIB.bgzf_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
_HTSLIB.bgzf_write.restype = ctypes.c_ssize_t
_HTSLIB.bgzf_write.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
_HTSLIB.bgzf_close.argtypes = [ctypes.c_void_p]
_HTSLIB.bgzf_flush.argtypes = [ctypes.c_void_p]
_HTSLIB.bgzf_mt.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]


class BgzfWriter:
    """Text written to a bgzip (BGZF) file by htslib, compressed by ``threads``
    threads at ``level`` (4 by default: on imputed VCFs, 2.3x faster than
    bgzip's default 6 for files 5% larger)."""

    def __init__(self, path: str, threads: int = 1, level: int = 4):
        self.path = path
        with quiet_htslib():
            self._handle = _HTSLIB.bgzf_open(os.fsencode(path), f"w{level}".encode())
        if not self._handle:
            raise OSError(f"{path}: htslib cannot open the file for writing")
        if threads > 1:
            _HTSLIB.bgzf_mt(self._handle, threads, 256)

    def write(self, text: str) -> None:
        data = text.encode()
        if _HTSLIB.bgzf_write(self._handle, data, len(data)) != len(data):
            raise _htslib_write_error(self.path)

    def end_block(self) -> None:
        """End the current BGZF block (after a VCF header, as htslib does: the
        header then sits in blocks of its own, which ``bcftools concat --naive`` needs)."""
        if _HTSLIB.bgzf_flush(self._handle) != 0:
            raise _htslib_write_error(self.path)

    def close(self) -> None:
        if self._handle:
            handle, self._handle = self._handle, None
            if _HTSLIB.bgzf_close(handle) != 0:
                raise _htslib_write_error(self.path)


def build_index(path: str, csi: bool) -> None:
    """Write a .tbi (``csi=False``, bgzipped VCF) or .csi index next to ``path``."""
    min_shift = 14 if csi else 0
    with quiet_htslib():
        status = _HTSLIB.bcf_index_build3(os.fsencode(path), None, min_shift, 1)
    if status != 0:
        raise OSError(f"{path}: htslib could not index the file (status {status})")


@dataclass(frozen=True)
class Region:
    """A 1-based, inclusive range on one contig; ``end=None`` means to its end."""
    chrom: str
    start: int = 1
    end: Optional[int] = None

    def contains(self, chrom: str, pos: int) -> bool:
        return chrom == self.chrom and pos >= self.start and (self.end is None or pos <= self.end)

    def __str__(self) -> str:
        if self.start == 1 and self.end is None:
            return self.chrom
        return f"{self.chrom}:{self.start}-{'' if self.end is None else self.end}"


_REGION_RE = re.compile(r"^(?P<chrom>[^:\s]+)(:(?P<start>[\d,]+)?(-(?P<end>[\d,]+)?)?)?$")


def parse_region(text: str) -> Region:
    """Parse ``chr``, ``chr:start-end``, ``chr:start-`` or ``chr:-end``."""
    match = _REGION_RE.match(text.strip()) if text else None
    if match is None:
        raise InputError(f"region {text!r}: expected CHROM or CHROM:START-END")
    start = int((match["start"] or "1").replace(",", ""))
    end = int(match["end"].replace(",", "")) if match["end"] else None
    if start < 1 or (end is not None and end < start):
        raise InputError(f"region {text!r}: START must be >= 1 and END >= START")
    return Region(match["chrom"], start, end)


def _is_bgzf(head: bytes) -> bool:
    """A gzip member whose extra field starts with the BGZF 'BC' subfield."""
    return head[:4] == b"\x1f\x8b\x08\x04" and head[12:14] == b"BC"


def _check_complete_bgzf(path: str) -> None:
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - len(BGZF_EOF)))
        tail = handle.read()
    if tail != BGZF_EOF:
        raise InputError(f"{path}: truncated bgzip file (no BGZF end-of-file block); "
                         "the download or copy was cut short")


def _header_text(path: str, head: bytes) -> str:
    """The header text (## lines and the #CHROM line) of a VCF, VCF.gz or BCF; bytes
    that are not UTF-8 are kept as lone surrogates (surrogateescape)."""
    opener = gzip.open if head[:2] == GZIP_MAGIC else open
    try:
        with opener(path, "rb") as handle:
            if handle.read(4) == BCF_MAGIC:
                handle.read(1)  # minor version
                (length,) = struct.unpack("<I", handle.read(4))
                return handle.read(length).rstrip(b"\0").decode("utf-8", "surrogateescape")
            handle.seek(0)
            lines = []
            for line in handle:
                if not line.startswith(b"#"):
                    break
                lines.append(line.decode("utf-8", "surrogateescape"))
            return "".join(lines)
    except (OSError, EOFError, zlib.error, struct.error, UnicodeError) as error:
        raise InputError(f"{path}: cannot read the header ({error})") from None


def check_vcf_file(path: str) -> List[str]:
    """Check ``path`` is a readable, complete VCF/BCF with unique sample names.

    Returns the sample names. Raises :class:`InputError` otherwise.
    """
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    with open(path, "rb") as handle:
        head = handle.read(18)
    if _is_bgzf(head):
        _check_complete_bgzf(path)
    header = _header_text(path, head)
    if not header.startswith("##fileformat=VCF"):
        raise InputError(f"{path}: not a VCF/BCF file (the first line is not ##fileformat=VCF...)")
    chrom_lines = [line for line in header.splitlines() if line.startswith("#CHROM")]
    if not chrom_lines:
        raise InputError(f"{path}: VCF header has no #CHROM line")
    samples = chrom_lines[0].rstrip("\r\n").split("\t")[9:]
    seen = set()
    for name in samples:
        if not name.isprintable():        # control characters, or bytes that are not UTF-8
            raise InputError(f"{path}: sample name {name!r} in the header is not printable UTF-8 text")
        if name in seen:
            raise InputError(f"{path}: duplicate sample name {name!r} in the header")
        seen.add(name)
    return samples


def _is_bcf(path: str) -> bool:
    with open(path, "rb") as raw:
        opener = gzip.open if raw.read(2) == GZIP_MAGIC else open
    with opener(path, "rb") as handle:
        return handle.read(len(BCF_MAGIC)) == BCF_MAGIC


for _name, _restype, _argtypes in (
        ("hts_open", ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]), ("hts_close", ctypes.c_int, [ctypes.c_void_p]),
        ("bcf_hdr_read", ctypes.c_void_p, [ctypes.c_void_p]), ("bcf_hdr_destroy", None, [ctypes.c_void_p]),
        ("bcf_init", ctypes.c_void_p, []), ("bcf_destroy", None, [ctypes.c_void_p]),
        ("bcf_read", ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]),
        ("bcf_unpack", ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
        ("bcf_get_format_values", ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p,
                                                 ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int),
                                                 ctypes.c_int])):
    getattr(_HTSLIB, _name).restype, getattr(_HTSLIB, _name).argtypes = _restype, _argtypes
_BCF_UN_ALL, _BCF_HT_INT, _BCF_NO_TAG = 15, 1, -3   # <htslib/vcf.h>
_LIBC = ctypes.CDLL(None)


def check_bcf_records(path: str, n_samples: int) -> None:
    """InputError at the first BCF record htslib cannot read or unpack, or whose GT
    has no value for a sample. A binary record is not parsed from text, so a
    damaged one reaches cyvcf2 as it is, and cyvcf2 crashes the process on some
    (a GT of zero values per sample): htslib's own checks run on each record first."""
    with quiet_htslib():
        handle = _HTSLIB.hts_open(os.fsencode(path), b"r")
        header = _HTSLIB.bcf_hdr_read(handle) if handle else None
        record, values, size = _HTSLIB.bcf_init(), ctypes.c_void_p(), ctypes.c_int(0)
        try:
            index, status = 0, 0
            while header and (status := _HTSLIB.bcf_read(handle, header, record)) == 0:
                index += 1
                genotypes = (_HTSLIB.bcf_get_format_values(header, record, b"GT", ctypes.byref(values),
                                                           ctypes.byref(size), _BCF_HT_INT)
                             if _HTSLIB.bcf_unpack(record, _BCF_UN_ALL) == 0 else -1)
                if genotypes != _BCF_NO_TAG and (genotypes <= 0 or genotypes % max(n_samples, 1)):
                    raise InputError(f"{path}: BCF record {index} is damaged (its genotypes cannot be read)")
            if not header or status < -1:
                raise InputError(f"{path}: BCF record {index + 1} is damaged or cut short (htslib status {status})")
        finally:
            _LIBC.free(values)
            _HTSLIB.bcf_destroy(record)
            if header:
                _HTSLIB.bcf_hdr_destroy(header)
            if handle:
                _HTSLIB.hts_close(handle)


def open_vcf(path: str) -> cyvcf2.VCF:
    """Check ``path`` (see :func:`check_vcf_file`, and :func:`check_bcf_records` for a BCF)
    and open it with cyvcf2."""
    path = os.fspath(path)
    samples = check_vcf_file(path)
    if _is_bcf(path):
        check_bcf_records(path, len(samples))
    try:
        with quiet_htslib():
            return cyvcf2.VCF(path, lazy=True)
    except Exception as error:  # cyvcf2 raises bare Exception / OSError
        raise InputError(f"{path}: htslib cannot read the file ({_one_line(error)})") from None


def has_index(path: str) -> bool:
    return any(os.path.exists(path + suffix) for suffix in (".tbi", ".csi"))


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _fetch(vcf: cyvcf2.VCF, path: str, region: Optional[Region]):
    """Records of the region: an index query if there is an index, else all."""
    if region is None or not has_index(path):
        return vcf
    query = region.chrom if region.end is None else f"{region.chrom}:{region.start}-{region.end}"
    try:
        records = iter(vcf(query))
        with warnings.catch_warnings():  # cyvcf2 warns if the contig is not in the index
            warnings.simplefilter("ignore")
            first = next(records, None)
    except Exception as error:
        raise InputError(f"{path}: cannot query region {region} ({_one_line(error)})") from None
    return records if first is None else itertools.chain([first], records)


def _check_parsed(record, path: str, last: Optional[tuple]) -> None:
    """InputError for a line htslib could not parse (empty, a column missing, a position
    that is not a number): cyvcf2 yields it as a record without alleles, whose REF would
    crash the process. Such a record has no CHROM or spans no base (a REF spans one or more)."""
    if not record.CHROM or record.end <= record.start:
        after = "at the first record" if last is None else f"after record {last[0]}:{last[1]}"
        raise InputError(f"{path}: a broken record {after} (an empty line, a missing column or a "
                         "position that is not a number)")


def iter_records(vcf: cyvcf2.VCF, path: str, region: Optional[Region] = None,
                 allow_duplicates: bool = False) -> Iterator:
    """Yield the cyvcf2 records of ``vcf`` (inside ``region`` if given).

    Checks that positions are sorted within a contig and that no record repeats
    (same position, REF and ALT: records at one position with other alleles, as
    a split multi-allelic site gives, are allowed; ``allow_duplicates`` yields
    repeats too, for a caller that reports them). A read error (truncated or
    corrupt file) becomes an :class:`InputError` naming the last good record.
    """
    last = None  # (chrom, pos) of the last record yielded
    alleles_here = set()  # (REF, ALT...) of the records at position `last`
    with quiet_htslib():
        try:
            for record in _fetch(vcf, path, region):
                _check_parsed(record, path, last)
                chrom, pos = record.CHROM, record.POS
                if region is not None and not region.contains(chrom, pos):
                    continue
                alleles = (record.REF, *record.ALT)
                if last is not None and chrom == last[0]:
                    if pos < last[1]:
                        raise InputError(f"{path}: record {chrom}:{pos} comes after {chrom}:{last[1]}: "
                                         "positions are not sorted (sort with bcftools sort)")
                    if pos == last[1] and alleles in alleles_here and not allow_duplicates:
                        raise InputError(f"{path}: duplicate record {chrom}:{pos} "
                                         f"{record.REF}>{','.join(record.ALT)}")
                if last != (chrom, pos):
                    alleles_here = set()
                last = (chrom, pos)
                alleles_here.add(alleles)
                yield record
        except InputError:
            raise
        except Exception as error:
            where = "the first record" if last is None else f"record {last[0]}:{last[1]}"
            raise InputError(f"{path}: cannot read past {where}: file truncated or corrupt "
                             f"({_one_line(error)})") from None


ABSENT = -2   # the second allele of a haploid genotype (htslib's vector end)


@dataclass
class Genotypes:
    """The genotypes of one record.

    alleles: int16 [N, 2] allele indices, -1 = missing, :data:`ABSENT` (-2)
        as the second allele of a haploid call; haploid: bool [N];
    written_phased: bool [N] written with '|' (haploid calls count as phased).
    A genotype's phase is *known* when it is written phased, haploid,
    homozygous (``0/0``, ``1/1``: phase-free) or wholly missing; an unphased
    heterozygote (``0/1``) or an unphased half-missing call (``0/.``) is not.
    """
    alleles: np.ndarray
    haploid: np.ndarray
    written_phased: np.ndarray

    @property
    def missing(self) -> np.ndarray:
        """bool [N, 2]: allele missing ('.'); an absent haploid second allele is not missing."""
        return self.alleles == -1

    @property
    def unphased_heterozygous(self) -> np.ndarray:
        """bool [N]: two different called alleles written with '/'."""
        first, second = self.alleles[:, 0], self.alleles[:, 1]
        return ~self.written_phased & ~self.haploid & (first >= 0) & (second >= 0) & (first != second)

    @property
    def unphased_half_missing(self) -> np.ndarray:
        """bool [N]: diploid calls such as ``0/.``: one allele called, one missing, written with '/'."""
        return ~self.written_phased & ~self.haploid & (self.missing.sum(axis=1) == 1)

    @property
    def phase_unknown(self) -> np.ndarray:
        """bool [N]: unphased heterozygous or unphased half-missing."""
        return self.unphased_heterozygous | self.unphased_half_missing


def genotype_alleles(record, path: str) -> Genotypes:
    """The record's genotypes, haploid and diploid (see :class:`Genotypes`)."""
    try:
        genotypes = record.genotype.array()  # int16 [N, max ploidy + 1]: alleles..., phased flag
    except Exception as error:               # cyvcf2 raises a bare Exception (a line cut short, no GT)
        raise InputError(f"{path}: record {record.CHROM}:{record.POS}: cannot read its genotypes "
                         f"({_one_line(error)})") from None
    if genotypes.shape[1] == 2:          # every call haploid
        alleles = np.stack([genotypes[:, 0], np.full(len(genotypes), ABSENT, genotypes.dtype)], axis=1)
    elif genotypes.shape[1] == 3:
        alleles = genotypes[:, :2]
    else:
        raise InputError(f"{path}: record {record.CHROM}:{record.POS}: genotypes of ploidy "
                         f"{genotypes.shape[1] - 1}: only haploid and diploid calls are supported")
    haploid = alleles[:, 1] == ABSENT
    return Genotypes(alleles=alleles, haploid=haploid, written_phased=(genotypes[:, -1] != 0) | haploid)


class PloidyTracker:
    """Each sample's ploidy over the records of a file, from its called
    genotypes (a wholly missing call, ``.`` or ``./.``, fits either ploidy).
    A sample with haploid calls at some sites and diploid calls at others is
    an :class:`InputError` (a region across a pseudo-autosomal boundary)."""

    def __init__(self, path: str, samples: List[str]):
        self.path, self.samples = path, samples
        self.seen = np.zeros(len(samples), dtype=np.uint8)   # 0 = no called genotype yet

    def update(self, record, genotypes: Genotypes) -> None:
        called = ~(genotypes.alleles < 0).all(axis=1)
        here = np.where(genotypes.haploid, 1, 2).astype(np.uint8)
        conflict = called & (self.seen != 0) & (self.seen != here)
        if conflict.any():
            sample = int(np.argmax(conflict))
            raise InputError(f"{self.path}: record {record.CHROM}:{record.POS}: sample {self.samples[sample]} "
                             f"has a {'haploid' if here[sample] == 1 else 'diploid'} call here and "
                             f"{'diploid' if here[sample] == 1 else 'haploid'} calls before: a sample's "
                             "ploidy must be the same at every site (on chrX, keep the pseudo-autosomal "
                             "region apart with --region)")
        self.seen[called] = here[called]

    @property
    def ploidy(self) -> np.ndarray:
        """uint8 [N]: 1 or 2 (2 for a sample with no called genotype)."""
        return np.where(self.seen == 0, 2, self.seen).astype(np.uint8)


def allele_tokens(alleles: np.ndarray, alt_index: int = 1) -> np.ndarray:
    """uint8 tokens of allele indices: 1 (ALT) where the allele is ``alt_index``,
    MASK where missing or absent, else 0 (REF, or another ALT allele of a
    split multi-allelic record)."""
    return np.where(alleles < 0, MASK, alleles == alt_index).astype(np.uint8)


@dataclass
class ImputedCalls:
    """Genotypes read back from a VCF (imputed output or any phased VCF)."""
    chrom: str
    positions: np.ndarray   # int64 [S]
    ref: np.ndarray         # str [S]
    alt: np.ndarray         # str [S]
    samples: List[str]      # [T]
    dosage: np.ndarray      # float32 [S, T]: FORMAT/DS, or the GT allele count without DS
    haplotypes: np.ndarray  # uint8 [S, 2T] GT alleles; MASK (2) as the second allele of a haploid call
    haploid: np.ndarray     # bool [S, T] haploid calls
    imputed: Optional[np.ndarray]  # bool [S] INFO/IMP flags; None if the header has no IMP
    phased: bool            # every genotype's phase known (phased, haploid or homozygous)
    estimated_r2: Optional[np.ndarray] = None  # float32 [S] INFO/DR2 (Beagle) or INFO/R2 (Minimac4)


ESTIMATED_R2_FIELDS = ("DR2", "R2")   # the imputation tools' own estimate of each site's dosage r2


def read_imputed(path: str) -> ImputedCalls:
    """Read a biallelic, single-contig VCF with complete genotypes (haploid or diploid)."""
    vcf = open_vcf(path)
    has_ds, has_imp = vcf.contains("DS"), vcf.contains("IMP")
    r2_field = next((name for name in ESTIMATED_R2_FIELDS if vcf.contains(name)), None)
    chroms, positions, refs, alts, dosages, haplotypes, haploid, imputed = set(), [], [], [], [], [], [], []
    estimated_r2 = []
    phased = True
    for record in iter_records(vcf, path):
        where = f"{path}: record {record.CHROM}:{record.POS}"
        if len(record.ALT) != 1:
            raise InputError(f"{where}: multi-allelic (split it with bcftools norm -m-)")
        genotypes = genotype_alleles(record, path)
        missing = genotypes.missing.any(axis=1)
        if missing.any():
            raise InputError(f"{where}: missing genotype for sample {vcf.samples[int(np.argmax(missing))]}")
        phased &= not genotypes.phase_unknown.any()
        called = np.where(genotypes.alleles >= 0, genotypes.alleles, 0)              # [T, 2]
        chroms.add(record.CHROM)
        positions.append(record.POS)
        refs.append(record.REF)
        alts.append(record.ALT[0])
        haplotypes.append(allele_tokens(genotypes.alleles).reshape(-1))
        haploid.append(genotypes.haploid)
        dosages.append(record.format("DS")[:, 0] if has_ds else called.sum(axis=1))
        imputed.append(bool(record.INFO.get("IMP")))
        if r2_field is not None:
            value = record.INFO.get(r2_field)
            estimated_r2.append(np.nan if value is None else float(value))
    if len(chroms) != 1:
        raise InputError(f"{path}: expected records on one contig, found {len(chroms) or 'none'}")
    return ImputedCalls(chrom=chroms.pop(), positions=np.asarray(positions, dtype=np.int64),
                        ref=np.asarray(refs, dtype=str), alt=np.asarray(alts, dtype=str),
                        samples=list(vcf.samples), dosage=np.asarray(dosages, dtype=np.float32),
                        haplotypes=np.stack(haplotypes), haploid=np.stack(haploid),
                        imputed=np.asarray(imputed, dtype=bool) if has_imp else None, phased=phased,
                        estimated_r2=np.asarray(estimated_r2, dtype=np.float32) if r2_field else None)
