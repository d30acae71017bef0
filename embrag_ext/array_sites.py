"""The sites a genotyping array types, as a mask over the panel's sites.

Array-aware training (``train --array``) hides every panel site the array
does not type, as imputation will. The array is given as the targets' VCF
(records matched to panel sites by position and alleles, REF/ALT swaps
included) or as a sites file of ``CHROM POS`` lines (every panel site at
that position). :func:`pattern_difference` tells how far the typed sites of
a target file are from the pattern a model was trained on.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .panel import Panel, site_keys
from .vcf_io import iter_records, open_vcf

VCF_SUFFIXES = (".vcf", ".vcf.gz", ".vcf.bgz", ".bcf")


def array_sites(path: str, panel: Panel) -> np.ndarray:
    """bool [S]: the panel sites typed by the array at ``path`` (VCF/BCF or sites file)."""
    typed = _vcf_sites(path, panel) if path.endswith(VCF_SUFFIXES) else _listed_sites(path, panel)
    if not typed.any():
        raise InputError(f"--array {path}: none of its sites is a site of {panel.source}")
    return typed


def _vcf_sites(path: str, panel: Panel) -> np.ndarray:
    site_of = {}
    for site, (pos, ref, alt) in enumerate(site_keys(panel)):
        site_of[(pos, ref, alt)] = site_of[(pos, alt, ref)] = site
    typed = np.zeros(panel.n_sites, dtype=bool)
    for record in iter_records(open_vcf(path), path):
        if record.CHROM == panel.chrom and len(record.ALT) == 1:
            site = site_of.get((record.POS, record.REF, record.ALT[0]))
            if site is not None:
                typed[site] = True
    return typed


def _listed_sites(path: str, panel: Panel) -> np.ndarray:
    positions = []
    try:
        with open(path) as handle:
            for line_number, line in enumerate(handle, start=1):
                fields = line.split()
                if not fields or fields[0].startswith("#"):
                    continue
                if len(fields) < 2 or not fields[1].isdigit():
                    raise InputError(f"--array {path}: line {line_number}: expected 'CHROM POS' "
                                     "(or give the targets' VCF)")
                if fields[0] == panel.chrom:
                    positions.append(int(fields[1]))
    except OSError as error:
        raise InputError(f"--array {path}: {error.strerror or error}") from None
    return np.isin(panel.positions, np.asarray(positions, dtype=np.int64))


def pattern_difference(trained: np.ndarray, typed: np.ndarray) -> float:
    """The share of the union of two site masks (bool [S]) that only one of them has."""
    union = int((trained | typed).sum())
    return int((trained ^ typed).sum()) / union if union else 0.0
