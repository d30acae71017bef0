"""Compare imputed genotypes with the truth: ``python -m embrag_ext.evaluate``.

    python -m embrag_ext.evaluate --truth T.vcf.gz --imputed I.vcf.gz \\
        [--panel P.vcf.gz] [--typed G.vcf.gz] [--out-json F.json] [--plot F.png] \\
        [--compare OTHER.vcf.gz ...]

Sites are matched by position, REF and ALT, samples by name. The MAF of a
site comes from the panel (``--panel``) or, without one, from the truth
samples (said in the report). Evaluated sites are the imputed ones: sites not
in ``--typed`` (the target VCF given to the imputation), or else sites with
the INFO/IMP flag, or else (no IMP in the header) all sites. Prints a table per
MAF bin (metrics.py), writes the report as JSON (default: next to the imputed
file, ``<name>.eval.json``) and, with ``--plot``, draws r2 by MAF bin.
Haploid calls (chrX in males) are scored as homozygous diploid ones (allele
count and dosage doubled), as PLINK codes them.
``--compare`` scores other imputed files (another tool's, e.g. Beagle's) the
same way: a table and a JSON next to each, and one bar series per file in the plot.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from .atomic import atomic_output, check_writable_directory, output_directory
from .errors import InputError, run_cli
from .metrics import alt_f1, dosage_metrics
from .panel import SiteKey, haplotype_columns, site_keys, values_at_sites
from .panel_vcf import load_panel
from .vcf_io import ImputedCalls, iter_records, open_vcf, read_imputed
from .vcf_writer import OUTPUT_FORMATS, sibling_path

def _typedsite_keys(path: str) -> Set[SiteKey]:
    """(POS, REF, ALT) of the typed VCF's records, with REF/ALT also swapped."""
    vcf = open_vcf(path)
    keys = set()
    for record in iter_records(vcf, path):
        for alt in record.ALT:
            keys.update({(record.POS, record.REF, alt), (record.POS, alt, record.REF)})
    return keys


def _matched_rows(truth: ImputedCalls, imputed: ImputedCalls, truth_path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Row indices (truth, imputed) int64 [M] of the sites present in both files."""
    if truth.chrom != imputed.chrom:
        raise InputError(f"{truth_path}: contig {truth.chrom} differs from the imputed file's {imputed.chrom}")
    truth_row = {key: row for row, key in enumerate(site_keys(truth))}
    pairs = [(truth_row[key], row) for row, key in enumerate(site_keys(imputed)) if key in truth_row]
    if not pairs:
        raise InputError(f"{truth_path}: no site in common with the imputed file (by position, REF and ALT)")
    truth_rows, imputed_rows = np.array(pairs, dtype=np.int64).T
    return truth_rows, imputed_rows


def _matched_columns(truth: ImputedCalls, imputed: ImputedCalls, truth_path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Sample indices (truth, imputed) int64 [T] of the samples in both files."""
    truth_index = {name: i for i, name in enumerate(truth.samples)}
    pairs = [(truth_index[name], i) for i, name in enumerate(imputed.samples) if name in truth_index]
    if not pairs:
        raise InputError(f"{truth_path}: no sample in common with the imputed file")
    truth_columns, imputed_columns = np.array(pairs, dtype=np.int64).T
    return truth_columns, imputed_columns


def _panel_af(panel_path: str, keys: List[SiteKey]) -> np.ndarray:
    """ALT frequency float64 [len(keys)] from the panel; raises if a site is absent."""
    panel = load_panel(panel_path)
    return values_at_sites(dict(zip(site_keys(panel), panel.af.tolist())), keys, panel_path,
                           "panel site (frequency)")


def _imputed_site_mask(args, imputed: ImputedCalls, keys: List[SiteKey],
                       imputed_rows: np.ndarray, notes: List[str]) -> np.ndarray:
    if args.typed:
        typed = _typedsite_keys(args.typed)
        return np.array([key not in typed for key in keys], dtype=bool)
    if imputed.imputed is not None:
        return imputed.imputed[imputed_rows]
    notes.append("no --typed file and no INFO/IMP in the imputed file: all sites evaluated")
    return np.ones(len(keys), dtype=bool)


def as_diploid(calls: ImputedCalls) -> ImputedCalls:
    """Haploid calls as homozygous diploid ones: the allele twice, the dosage doubled."""
    if not calls.haploid.any():
        return calls
    haplotypes = calls.haplotypes.copy()
    haplotypes[:, 1::2] = np.where(calls.haploid, haplotypes[:, 0::2], haplotypes[:, 1::2])
    dosage = np.where(calls.haploid, 2 * calls.dosage, calls.dosage)
    return dataclasses.replace(calls, haplotypes=haplotypes, dosage=dosage, haploid=np.zeros_like(calls.haploid))


def evaluate(args, imputed_path: Optional[str] = None) -> Dict[str, object]:
    """The report dict (JSON-able apart from nan) for parsed arguments, of
    ``imputed_path`` (default ``args.imputed``)."""
    imputed_path = imputed_path or args.imputed
    truth, imputed = as_diploid(read_imputed(args.truth)), as_diploid(read_imputed(imputed_path))
    truth_rows, imputed_rows = _matched_rows(truth, imputed, args.truth)
    truth_columns, imputed_columns = _matched_columns(truth, imputed, args.truth)
    keys = [site_keys(imputed)[row] for row in imputed_rows]
    notes: List[str] = []
    if len(imputed_columns) < len(imputed.samples):
        notes.append(f"{len(imputed.samples) - len(imputed_columns)} imputed samples are not in the truth: skipped")
    true_haps = truth.haplotypes[np.ix_(truth_rows, haplotype_columns(truth_columns))]    # [M, 2T]
    pred_haps = imputed.haplotypes[np.ix_(imputed_rows, haplotype_columns(imputed_columns))]
    true_gt = true_haps[:, 0::2].astype(np.int64) + true_haps[:, 1::2]                     # [M, T]
    called_gt = pred_haps[:, 0::2].astype(np.int64) + pred_haps[:, 1::2]
    dosage = imputed.dosage[np.ix_(imputed_rows, imputed_columns)]
    if args.panel:
        af, maf_source = _panel_af(args.panel, keys), "panel"
    else:
        af, maf_source = true_haps.mean(axis=1), "truth"
        notes.append("no --panel: MAF computed from the truth samples")
    site_mask = _imputed_site_mask(args, imputed, keys, imputed_rows, notes)
    maf = np.minimum(af, 1 - af)
    report = {"truth": args.truth, "imputed": imputed_path, "maf_source": maf_source,
              "n_sites_matched": len(keys), "n_sites_evaluated": int(site_mask.sum()),
              "n_samples": len(truth_columns), "notes": notes,
              "dosage": dosage_metrics(true_gt, dosage, af, site_mask, called_gt,
                                       None if imputed.estimated_r2 is None else imputed.estimated_r2[imputed_rows])}
    if truth.phased and imputed.phased:
        report["alt_f1"] = alt_f1(true_haps, pred_haps, site_mask[:, None], maf[:, None])
    else:
        notes.append("truth or imputed genotypes unphased: per-haplotype ALT F1 not computed")
    return report


def _json_safe(value):
    """nan -> None, recursively (JSON has no nan)."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def format_table(report: Dict[str, object]) -> str:
    """The report as a plain-text table."""
    lines = [f"{'MAF bin':<10}{'sites':>8}{'genotypes':>11}{'r2 (agg)':>10}{'r2 (site)':>11}"
             f"{'est. r2':>9}{'concord':>9}{'NRD':>8}"]
    rows = report["dosage"]["bins"] + [{"bin": "all", **report["dosage"]["all"]}]
    for row in rows:
        lines.append(f"{row['bin']:<10}{row['n_sites']:>8}{row['n_genotypes']:>11}"
                     f"{row['aggregate_r2']:>10.4f}{row['mean_site_r2']:>11.4f}"
                     f"{row['mean_estimated_r2']:>9.4f}{row['concordance']:>9.4f}{row['nrd']:>8.4f}")
    for group, scores in report.get("alt_f1", {}).items():
        lines.append(f"ALT allele ({group}): precision {scores['precision']:.4f} "
                     f"recall {scores['recall']:.4f} F1 {scores['f1']:.4f}")
    lines += [f"note: {note}" for note in report["notes"]]
    lines.append(f"MAF from: {report['maf_source']}; sites evaluated: {report['n_sites_evaluated']} "
                 f"of {report['n_sites_matched']}; samples: {report['n_samples']}")
    return "\n".join(lines)


def file_label(path: str) -> str:
    """``beagle`` for ``runs/beagle.vcf.gz``: a short name for a plot legend."""
    name = os.path.basename(path)
    return next((name[: -len(ext)] for ext in OUTPUT_FORMATS if name.endswith(ext)), name)


def plot_r2(reports: List[Dict[str, object]], png_path: str) -> None:
    """Bar chart of r2 by MAF bin: aggregate and mean per-site r2 of one
    report, or the aggregate r2 of each of several (one series per file)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b["bin"] for b in reports[0]["dosage"]["bins"]]
    if len(reports) == 1:
        series = [(f"{name} r2", [b[key] for b in reports[0]["dosage"]["bins"]])
                  for name, key in (("aggregate", "aggregate_r2"), ("mean per-site", "mean_site_r2"))]
    else:
        series = [(file_label(r["imputed"]), [b["aggregate_r2"] for b in r["dosage"]["bins"]]) for r in reports]
    x, width = np.arange(len(bins)), 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(6, 4))
    for i, (label, values) in enumerate(series):
        axes.bar(x + (i - (len(series) - 1) / 2) * width, values, width=width, label=label)
    axes.set_xticks(x, bins)
    axes.set_xlabel("MAF bin")
    axes.set_ylabel("dosage r2" if len(reports) == 1 else "aggregate dosage r2")
    axes.set_ylim(0, 1)
    axes.legend()
    figure.tight_layout()
    with atomic_output(png_path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)


def default_json_path(imputed_path: str) -> str:
    """``dir/name.eval.json`` for ``dir/name.vcf.gz`` (or .bcf, .vcf)."""
    return sibling_path(imputed_path, ".eval.json")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m embrag_ext.evaluate",
                                     description="Imputation accuracy by MAF bin.")
    parser.add_argument("--truth", required=True, help="VCF of the true genotypes")
    parser.add_argument("--imputed", required=True, help="imputed VCF (DS used when present, else GT)")
    parser.add_argument("--panel", help="reference panel VCF: MAF source (default: the truth)")
    parser.add_argument("--typed", help="target VCF given to the imputation: its sites are not evaluated")
    parser.add_argument("--out-json", help="report path (default: <imputed>.eval.json)")
    parser.add_argument("--plot", help="PNG of r2 by MAF bin")
    parser.add_argument("--compare", nargs="+", default=[], metavar="VCF",
                        help="other imputed VCFs (e.g. Beagle's) scored the same way, beside it in the plot")
    args = parser.parse_args(argv)
    paths = [args.imputed, *args.compare]
    json_paths = [(args.out_json if path is args.imputed else None) or default_json_path(path) for path in paths]
    for flag, path in [("--out-json", p) for p in json_paths] + ([("--plot", args.plot)] if args.plot else []):
        check_writable_directory(output_directory(path), f"{flag} {path}")
    reports = [evaluate(args, path) for path in paths]     # all checked before anything is written
    for path, json_path, report in zip(paths, json_paths, reports):
        if args.compare:
            print(f"== {path}")
        print(format_table(report))
        with atomic_output(json_path) as temporary, open(temporary, "w") as handle:
            json.dump(_json_safe(report), handle, indent=2)
    if args.plot:
        plot_r2(reports, args.plot)
    return reports[0]


def cli() -> None:
    """The console script ``embrag-evaluate`` (the same as ``python -m embrag_ext.evaluate``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
