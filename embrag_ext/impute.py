"""Impute target samples at the panel's sites: ``python -m embrag_ext.impute`` (``embrag-impute``).

    python -m embrag_ext.impute --panel panel.vcf.gz --targets array.vcf.gz --out imputed.vcf.gz \\
        [--checkpoint runs/X/checkpoint.pt]

What it does, in order:

1. reads the panel as the checkpoint's training run read it (region and the
   panel options, unless given here); without ``--checkpoint``, as given here;
2. aligns the targets to the panel with the alignment QC of qc.py and prints
   its table on stderr; ``--strict`` stops (exit 2) if QC excluded anything;
3. pre-phases samples with unphased genotypes against the panel with an
   installed phaser (``--phaser``, phasing.py; phased input is used as it is);
4. without ``--checkpoint``, trains a model for this panel with the targets'
   typed sites as its array, or reuses the one trained before for the same
   panel file, options and typed sites (model_cache.py); then imputes every
   panel site (imputation.py); typed alleles are kept as given;
5. writes, each atomically and only once everything has worked (the VCF
   renamed into place last, after its index and reports):
   ``<out>`` (GT:DS:GP, INFO AF/DR2 and TYPED or IMP), ``<name>.info.gz``
   (Minimac-style per-site quality, every panel site), ``<name>.qc.json``
   (QC counts, thresholds, call rates, phasing and imputation summaries) and
   ``<name>.qc.tsv`` (every excluded or changed target record with its
   reason), where ``<name>`` is ``<out>`` without .vcf.gz/.bcf/.vcf.

Imputed sites farther than ``--flank`` bp (default 50 kb) beyond the first
and last typed site are not written unless ``--impute-all`` (the info file
marks them ``NotImputed:OutsideTypedSpan``); with ``--min-dr2`` imputed sites
with a lower DR2 are left out of the VCF (marked ``DR2<x`` there).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .atomic import atomic_output
from .checkpoint import check_model_weights, check_panel, load_checkpoint
from .config import DataConfig, TrainConfig, add_amp_argument, add_panel_arguments
from .errors import InputError, run_cli
from .imputation import impute_haplotypes, warn_if_other_array
from .model_cache import cached_checkpoint
from .panel_vcf import load_panel
from .phasing import PHASER_CHOICES, find_phaser, prephase
from .qc import QCThresholds
from .targets import Targets, load_targets
from .vcf_writer import (OUTSIDE_SPAN, check_output_path, imputed_sites, info_file_text,
                         sibling_path, write_gzip_text, write_imputed_sites)

DEFAULT_FLANK = 50_000
QC = QCThresholds()


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m embrag_ext.impute", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="checkpoint.pt written by embrag_ext.train (default: a model trained "
                                        "for this panel and these typed sites, cached for next time)")
    p.add_argument("--panel", required=True, help="the reference panel the model was trained on")
    p.add_argument("--targets", required=True, help="target VCF/BCF (typed sites; phased, unphased or mixed)")
    p.add_argument("--out", required=True, help="output .vcf.gz, .bcf or .vcf")
    p.add_argument("--region", help="CHROM[:START-END] (default: the training run's)")
    add_panel_arguments(p)
    p.add_argument("--phaser", choices=PHASER_CHOICES, default="auto",
                   help="pre-phases unphased targets: auto = the first of eagle, shapeit4, beagle installed; "
                        "none = the targets must be phased")
    p.add_argument("--genetic-map", help="genetic map for the phaser, in its own format (default: 1 cM/Mb)")
    p.add_argument("--threads", type=int, default=default_threads(),
                   help="threads for the phaser and the VCF compression (default: the CPUs available)")
    p.add_argument("--strict", action="store_true", help="stop (exit 2) if QC excludes any target record")
    p.add_argument("--trust-strand", action="store_true",
                   help="keep A/T and C/G sites as given (the targets are on the panel's strand, as Beagle and "
                        "Minimac4 assume) instead of settling their strand by allele frequency")
    p.add_argument("--max-af-diff", type=float, default=QC.max_af_diff,
                   help="exclude sites whose target AF differs from the panel's by more (and |z| > 5)")
    p.add_argument("--min-site-call-rate", type=float, default=QC.min_site_call_rate,
                   help="exclude target sites with a lower call rate")
    p.add_argument("--min-sample-call-rate", type=float, default=QC.min_sample_call_rate,
                   help="warn about samples with a lower call rate")
    p.add_argument("--min-dr2", type=float, default=0.0, help="leave imputed sites with a lower DR2 out of the VCF")
    p.add_argument("--flank", type=int, default=DEFAULT_FLANK,
                   help="impute this many bp beyond the first and last typed site (default 50,000)")
    p.add_argument("--impute-all", action="store_true", help="impute every panel site, however far from typed ones")
    p.add_argument("--batch-size", type=int, default=64, help="target samples per batch")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    add_amp_argument(p, TrainConfig.amp)
    return p


def check_arguments(args: argparse.Namespace) -> None:
    """One-line errors for values that cannot work (before any work is done)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    for name in ("batch_size", "threads"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if not 0 <= args.min_dr2 <= 1:
        raise InputError(f"--min-dr2 {args.min_dr2}: must be in [0, 1]")
    if args.flank < 0:
        raise InputError(f"--flank {args.flank}: must be >= 0")
    if args.genetic_map is not None and not os.path.isfile(args.genetic_map):
        raise InputError(f"--genetic-map {args.genetic_map}: no such file")
    check_output_path(args.out)


def load_inputs(args: argparse.Namespace, thresholds: QCThresholds):
    """(checkpoint, panel, targets): the panel read as the checkpoint's run read it
    (or, without a checkpoint, as the options here say); the targets aligned to it
    (QC); without --checkpoint, the cached model for this panel and typed sites."""
    checkpoint = None if args.checkpoint is None else load_checkpoint(args.checkpoint, args.device)
    given = {name: getattr(args, name) for name in ("region", "multiallelic", "af_from_info", "af_file",
                                                    "drop_bad_sites") if getattr(args, name) is not None}
    data = dataclasses.replace(DataConfig() if checkpoint is None else checkpoint.config.data, **given)
    panel = load_panel(args.panel, **data.panel_options())
    targets = load_targets(args.targets, panel, thresholds=thresholds, allow_unphased=args.phaser != "none")
    if checkpoint is None:
        checkpoint = cached_checkpoint(args.panel, data, panel, targets.typed, args.device, args.amp)
    check_model_weights(checkpoint, f"--checkpoint {args.checkpoint}" if args.checkpoint else "the cached model")
    check_panel(panel, checkpoint)
    warn_if_other_array(checkpoint, panel, targets.typed)
    return checkpoint, panel, targets


def phase_targets(args: argparse.Namespace, targets: Targets, panel) -> None:
    """Pre-phase the unphased samples; the summary goes into the QC report."""
    unphased = targets.unphased_samples()
    if len(unphased) == 0:
        targets.qc.sections["phasing"] = {"needed": False}
        return
    phaser = find_phaser(args.phaser)
    print(f"phasing {len(unphased)} of {len(targets.samples)} samples with {phaser}, {args.threads} threads",
          file=sys.stderr, flush=True)
    summary = prephase(targets, panel, phaser, args.threads, args.genetic_map)
    print(f"phased {summary.unphased_heterozygotes} heterozygous genotypes at {summary.sites} sites "
          f"in {summary.seconds:.1f} s", file=sys.stderr, flush=True)
    targets.qc.sections["phasing"] = {"needed": True, **summary.to_dict()}


def impute_span(args: argparse.Namespace, panel, targets: Targets) -> Optional[Tuple[int, int]]:
    """(first, last) position imputed: the typed span plus the flank; None with --impute-all."""
    if args.impute_all:
        return None
    typed_positions = panel.positions[targets.typed]
    return max(int(typed_positions[0]) - args.flank, 1), int(typed_positions[-1]) + args.flank


def imputation_section(args, panel, targets: Targets, span, status: np.ndarray) -> dict:
    typed = targets.typed
    return {"sites": panel.n_sites, "typed": int(typed.sum()), "written": int((status == "PASS").sum()),
            "span": None if span is None else list(span), "flank": None if span is None else args.flank,
            "not_imputed_outside_span": int((status == OUTSIDE_SPAN).sum()), "min_dr2": args.min_dr2,
            "dropped_below_min_dr2": int(np.char.startswith(status.astype(str), "DR2<").sum())}


def write_reports(out: str, panel, targets: Targets, sites) -> None:
    """The info file and the QC report (.qc.json, .qc.tsv) of the VCF ``out``,
    each written atomically; a failure leaves none of them."""
    paths = {"info": sibling_path(out, ".info.gz"), "json": sibling_path(out, ".qc.json"),
             "tsv": sibling_path(out, ".qc.tsv")}
    with contextlib.ExitStack() as outputs:
        temps = {name: outputs.enter_context(atomic_output(path)) for name, path in paths.items()}
        write_gzip_text(temps["info"], info_file_text(panel, sites))
        with open(temps["json"], "w") as handle:
            handle.write(targets.qc.json_text())
        with open(temps["tsv"], "w") as handle:
            handle.write(targets.qc.tsv_text())


def write_outputs(args: argparse.Namespace, panel, targets: Targets, alt_prob: np.ndarray) -> np.ndarray:
    """The VCF and its reports. The reports are written once the VCF (and its
    index) are complete, and renamed into place before it: a failure leaves none
    of the files, and a run killed at any moment leaves no VCF or a complete one
    with its index and reports."""
    span = impute_span(args, panel, targets)
    sites = imputed_sites(panel, alt_prob, targets.typed, targets.haplotypes, targets.ploidy, args.min_dr2, span)
    targets.qc.sections["imputation"] = imputation_section(args, panel, targets, span, sites.status)
    write_imputed_sites(args.out, panel, targets.samples, sites, args.threads,
                        before_commit=lambda: write_reports(args.out, panel, targets, sites))
    return sites.status


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    check_arguments(args)
    thresholds = QCThresholds(max_af_diff=args.max_af_diff, min_site_call_rate=args.min_site_call_rate,
                              min_sample_call_rate=args.min_sample_call_rate, trust_strand=args.trust_strand)
    checkpoint, panel, targets = load_inputs(args, thresholds)
    print(targets.qc.table(sibling_path(args.out, ".qc.tsv")), file=sys.stderr, flush=True)
    if args.strict:
        targets.qc.check_strict(sibling_path(args.out, ".qc.tsv"))
    phase_targets(args, targets, panel)
    began = time.perf_counter()
    alt_prob = impute_haplotypes(checkpoint, panel, targets.haplotypes, targets.typed, args.batch_size,
                                 torch.device(args.device), args.amp)
    seconds = time.perf_counter() - began
    status = write_outputs(args, panel, targets, alt_prob)
    section = targets.qc.sections["imputation"]
    print(f"imputed {len(targets.samples)} samples x {panel.n_sites} sites ({targets.n_typed} typed) "
          f"in {seconds:.1f}s: {len(targets.samples) / seconds:.1f} samples/s; wrote {args.out} "
          f"({int((status == 'PASS').sum())} sites; {section['not_imputed_outside_span']} outside the typed span, "
          f"{section['dropped_below_min_dr2']} below --min-dr2) with its .info.gz, .qc.json and .qc.tsv")
    return targets.qc.to_dict()


def cli() -> None:
    """The console script ``embrag-impute`` (the same as ``python -m embrag_ext.impute``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
