"""Reading the reference panel from VCF/BCF.

``load_panel(path)`` parses a VCF, VCF.gz or BCF with cyvcf2 into a
:class:`~embrag_ext.panel.Panel` (positions, alleles, haplotypes uint8
[sites, 2 * samples], ALT allele frequency, variant type) and caches the
result on disk (panel_cache.py) so that the next load of the same file is fast.

Rules:
- one chromosome per panel: a file with several contigs needs a region;
- multi-allelic records are skipped with a counted warning (default) or, with
  ``multiallelic="split"``, split into one biallelic site per ALT allele (the
  other ALT alleles count as REF at that site, as ``bcftools norm -m-`` does);
- every genotype must be present and its phase known: a missing allele, an
  unphased heterozygote (``0/1``) or an unphased half-missing call (``0/.``)
  is an :class:`InputError` naming the record and sample, unless
  ``drop_bad_sites=True`` drops such sites (counted in a warning). Homozygous
  calls need no phase (``0/0`` and ``1/1`` are fine); haploid calls are read
  as one haplotype (the sample's second column is MASK, see panel.py), and a
  sample's ploidy must be the same at every site.

The command-line flags ``--drop-bad-sites``, ``--af-from-info``,
``--af-file`` and ``--multiallelic`` of ``train`` and ``impute`` set these options.
"""
from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from . import panel_cache
from .errors import InputError
from .panel import Panel, SiteKey, alt_frequency, classify_variant, values_at_sites
from .vcf_io import PloidyTracker, Region, allele_tokens, genotype_alleles, iter_records, open_vcf, parse_region

MULTIALLELIC_MODES = ("skip", "split")


def load_panel(path: Union[str, os.PathLike], region: Union[str, Region, None] = None,
               multiallelic: str = "skip", af_file: Optional[str] = None,
               af_from_info: bool = False, drop_bad_sites: bool = False,
               cache_dir: Optional[Union[str, os.PathLike]] = None,
               use_cache: bool = True) -> Panel:
    """Load a phased reference panel from a VCF, VCF.gz or BCF.

    region: ``CHROM`` or ``CHROM:START-END`` (1-based, inclusive); needed when
        the file holds several contigs. Uses the index if there is one, else
        scans the file.
    multiallelic: "skip" (default, counted warning) or "split".
    af_file: text file of ``CHROM POS REF ALT AF`` lines (whitespace separated,
        '#' lines ignored; e.g. ``bcftools query -f '%CHROM\\t%POS\\t%REF\\t%ALT\\t%AF\\n'``)
        giving the ALT frequency of every panel site. af_from_info: use INFO/AF.
        By default the AF is computed from the panel's haplotypes.
    drop_bad_sites: drop sites with a missing or unphased genotype instead of
        raising :class:`InputError`.
    cache_dir / use_cache: see panel_cache.py (default ``$EMBRAG_CACHE_DIR/panels``
        or ``~/.cache/embrag_ext/panels``).
    """
    path = os.fspath(path)
    if multiallelic not in MULTIALLELIC_MODES:
        raise InputError(f"multiallelic={multiallelic!r}: expected one of {', '.join(MULTIALLELIC_MODES)}")
    if af_file is not None and af_from_info:
        raise InputError("af_file and af_from_info: give one source of allele frequencies, not both")
    for file_path in (path, af_file):
        if file_path is not None and not os.path.isfile(file_path):
            raise InputError(f"{file_path}: no such file")
    region = parse_region(region) if isinstance(region, str) else region
    options = {"region": None if region is None else str(region), "multiallelic": multiallelic,
               "af_file": None if af_file is None else panel_cache.file_fingerprint(af_file),
               "af_from_info": af_from_info, "drop_bad_sites": drop_bad_sites}
    entry = panel_cache.entry_dir(cache_dir, path, options) if use_cache else None
    cached = panel_cache.read_entry(entry) if entry is not None else None
    if cached is not None:
        panel, notes = _panel_from_cache(*cached)
    else:
        panel, notes = _parse_panel(path, region, multiallelic, af_file, af_from_info, drop_bad_sites)
        if entry is not None:
            _store_in_cache(entry, panel, notes)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return panel


_CACHED_ARRAYS = ("positions", "ref", "alt", "haplotypes", "af", "variant_type", "ploidy")


def _store_in_cache(entry, panel: Panel, notes: List[str]) -> None:
    arrays = {name: getattr(panel, name) for name in _CACHED_ARRAYS}
    meta = {"chrom": panel.chrom, "samples": panel.samples, "source": panel.source,
            "af_from_panel": panel.af_from_panel, "notes": notes}
    try:
        panel_cache.write_entry(entry, arrays, meta)
    except OSError as error:
        warnings.warn(f"could not cache the parsed panel in {entry.parent}: {error}", stacklevel=3)


def _panel_from_cache(arrays: Dict[str, np.ndarray], meta: Dict[str, object]) -> Tuple[Panel, List[str]]:
    panel = Panel(chrom=meta["chrom"], samples=list(meta["samples"]), source=meta["source"],
                  af_from_panel=meta["af_from_panel"], **arrays)
    return panel, list(meta["notes"])


class _SiteLists:
    """Per-site values collected while reading records."""

    def __init__(self):
        self.positions: List[int] = []
        self.ref: List[str] = []
        self.alt: List[str] = []
        self.haplotypes: List[np.ndarray] = []  # uint8 [2N] each
        self.info_af: List[float] = []

    def add(self, pos: int, ref: str, alt: str, haplotypes: np.ndarray, info_af: float) -> None:
        self.positions.append(pos)
        self.ref.append(ref)
        self.alt.append(alt)
        self.haplotypes.append(haplotypes)
        self.info_af.append(info_af)


def _parse_panel(path: str, region: Optional[Region], multiallelic: str, af_file: Optional[str],
                 af_from_info: bool, drop_bad_sites: bool) -> Tuple[Panel, List[str]]:
    """Read the VCF into a Panel; returns it with the warnings to show."""
    vcf = open_vcf(path)
    samples = list(vcf.samples)
    if not samples:
        raise InputError(f"{path}: the panel has no samples (a sites-only VCF?)")
    sites = _SiteLists()
    ploidy = PloidyTracker(path, samples)
    chrom = None
    n_multiallelic = n_bad = 0
    for record in iter_records(vcf, path, region):
        chrom = _check_single_contig(path, chrom, record.CHROM)
        if len(record.ALT) > 1 and multiallelic == "skip":
            n_multiallelic += 1
            continue
        alleles = _phased_alleles(record, path, samples, ploidy, raise_if_bad=not drop_bad_sites)
        if alleles is None:
            n_bad += 1
            continue
        n_multiallelic += len(record.ALT) > 1
        for alt_index, alt in enumerate(record.ALT, start=1):
            info_af = _info_af(record, path, alt_index) if af_from_info else np.nan
            sites.add(record.POS, record.REF, alt, allele_tokens(alleles, alt_index), info_af)
    notes = _filter_notes(path, multiallelic, n_multiallelic, n_bad)
    if not sites.positions:
        where = "" if region is None else f" in region {region}"
        raise InputError(f"{path}: no usable sites{where} "
                         f"({n_multiallelic} multi-allelic, {n_bad} with missing/unphased genotypes)")
    return _panel_from_sites(path, chrom, samples, ploidy.ploidy, sites, af_file, af_from_info), notes


def _check_single_contig(path: str, chrom: Optional[str], record_chrom: str) -> str:
    if chrom is not None and record_chrom != chrom:
        raise InputError(f"{path}: records on several contigs ({chrom}, {record_chrom}, ...): "
                         "a panel holds one chromosome; pass a region (--region CHROM[:START-END])")
    return record_chrom


def _phased_alleles(record, path: str, samples: List[str], ploidy: PloidyTracker,
                    raise_if_bad: bool) -> Optional[np.ndarray]:
    """Allele indices int16 [2N] of a record (-2 for a haploid call's absent
    second allele), or None if a genotype is missing or its phase unknown and
    ``raise_if_bad`` is False."""
    genotypes = genotype_alleles(record, path)
    missing = genotypes.missing.any(axis=1)
    bad = missing | genotypes.phase_unknown
    if not bad.any():
        ploidy.update(record, genotypes)
        return genotypes.alleles.reshape(-1)
    if not raise_if_bad:
        return None
    sample = int(np.argmax(bad))
    problem = "unphased half-missing" if genotypes.unphased_half_missing[sample] else (
        "missing" if missing[sample] else "unphased")
    raise InputError(f"{path}: record {record.CHROM}:{record.POS}: {problem} genotype for sample "
                     f"{samples[sample]}: the panel must be phased and complete "
                     "(phase it, or drop such sites with drop_bad_sites / --drop-bad-sites)")


def _info_af(record, path: str, alt_index: int) -> float:
    value = record.INFO.get("AF")
    values = value if isinstance(value, tuple) else (value,)
    if value is None or len(values) < alt_index:
        raise InputError(f"{path}: record {record.CHROM}:{record.POS} has no INFO/AF "
                         "(needed by af_from_info / --af-from-info)")
    return float(values[alt_index - 1])


def _filter_notes(path: str, multiallelic: str, n_multiallelic: int, n_bad: int) -> List[str]:
    notes = []
    if n_multiallelic and multiallelic == "skip":
        notes.append(f"{path}: skipped {n_multiallelic} multi-allelic records "
                     "(pass multiallelic='split' / --multiallelic split to split them instead)")
    if n_bad:
        notes.append(f"{path}: dropped {n_bad} sites with a missing or unphased genotype")
    return notes


def _panel_from_sites(path: str, chrom: str, samples: List[str], ploidy: np.ndarray, sites: _SiteLists,
                      af_file: Optional[str], af_from_info: bool) -> Panel:
    positions = np.asarray(sites.positions, dtype=np.int64)
    ref = np.asarray(sites.ref, dtype=str)
    alt = np.asarray(sites.alt, dtype=str)
    haplotypes = np.stack(sites.haplotypes)  # uint8 [S, 2N]
    if af_file is not None:
        af = values_at_sites(_read_af_file(af_file, chrom), list(zip(sites.positions, sites.ref, sites.alt)),
                             af_file, "frequency").astype(np.float32)
    elif af_from_info:
        af = np.asarray(sites.info_af, dtype=np.float32)
    else:
        af = alt_frequency(haplotypes)
    variant_type = np.array([classify_variant(r, a) for r, a in zip(ref, alt)], dtype=np.uint8)
    return Panel(chrom=chrom, positions=positions, ref=ref, alt=alt, haplotypes=haplotypes,
                 samples=samples, af=af, variant_type=variant_type, source=path,
                 af_from_panel=af_file is None and not af_from_info, ploidy=ploidy)


def _read_af_file(af_file: str, chrom: str) -> Dict[SiteKey, float]:
    """(POS, REF, ALT) -> AF of the ``chrom`` lines of a CHROM POS REF ALT AF file."""
    table = {}
    with open(af_file) as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#") or fields[0] != chrom:
                continue
            try:
                table[(int(fields[1]), fields[2], fields[3])] = float(fields[4])
            except (IndexError, ValueError):
                raise InputError(f"{af_file}: line {line_number}: expected CHROM POS REF ALT AF") from None
    return table
