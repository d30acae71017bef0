"""Impute target samples at every panel site: ``python -m embrag_ext.impute``.

    python -m embrag_ext.impute --checkpoint runs/X/checkpoint.pt \\
        --panel panel.vcf.gz --targets targets.vcf.gz --out imputed.vcf.gz

The targets (phased, typed at a subset of the panel's sites) are imputed by
imputation.py; typed alleles are kept as given, and the VCF carries GT:DS:GP
and INFO AF/DR2/IMP (vcf_writer.py).
"""
from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

import torch

from .checkpoint import load_checkpoint
from .errors import InputError, run_cli
from .imputation import check_panel, impute_haplotypes, warn_if_other_array
from .panel_vcf import load_panel
from .targets import load_targets
from .vcf_writer import write_imputed_vcf


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m embrag_ext.impute", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by embrag_ext.train")
    p.add_argument("--panel", required=True, help="the reference panel the model was trained on")
    p.add_argument("--targets", required=True, help="phased target VCF (typed sites)")
    p.add_argument("--out", required=True, help="output .vcf.gz, .bcf or .vcf")
    p.add_argument("--region", help="CHROM[:START-END] (default: the training run's)")
    p.add_argument("--batch-size", type=int, default=64, help="target samples per batch")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: must be >= 1")
    checkpoint = load_checkpoint(args.checkpoint, args.device)
    panel = load_panel(args.panel, region=args.region or checkpoint.config.data.region)
    check_panel(panel, checkpoint)
    targets = load_targets(args.targets, panel)
    warn_if_other_array(checkpoint, panel, targets.typed)
    began = time.perf_counter()
    alt_prob = impute_haplotypes(checkpoint, panel, targets.haplotypes, targets.typed, args.batch_size,
                                 torch.device(args.device))
    seconds = time.perf_counter() - began
    write_imputed_vcf(args.out, panel, targets.samples, alt_prob, typed=targets.typed,
                      typed_haplotypes=targets.haplotypes)
    print(f"imputed {len(targets.samples)} samples x {panel.n_sites} sites ({targets.n_typed} typed) "
          f"in {seconds:.1f}s: {len(targets.samples) / seconds:.1f} samples/s; wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
