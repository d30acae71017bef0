"""Impute target samples at every panel site: ``python -m embrag_ext.impute``.

    python -m embrag_ext.impute --checkpoint runs/X/checkpoint.pt \\
        --panel panel.vcf.gz --targets targets.vcf.gz --out imputed.vcf.gz

The targets (phased, typed at a subset of the panel's sites) are run window
by window; each window's observed sites are the typed sites, and retrieval
searches the panel's haplotypes with keys under that mask. Window outputs are
stitched (overlaps averaged), typed alleles are kept as given, and the VCF
carries GT:DS:GP and INFO AF/DR2/IMP (vcf_writer.py).
"""
from __future__ import annotations

import argparse
import time
from typing import List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import load_checkpoint
from .dataset import WindowBatches, key_ranges, loader
from .errors import InputError, run_cli
from .masking import MaskConfig
from .model import ImputationModel, ModelConfig
from .panel import Panel
from .panel_vcf import load_panel
from .predict import PanelSites, predict_batch
from .retrieval import Retriever
from .targets import load_targets
from .vcf_writer import write_imputed_vcf
from .windows import stitch


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


def check_panel(panel: Panel, checkpoint: dict) -> None:
    """The model's windows are over the training panel's sites: require the same sites."""
    trained = np.asarray(checkpoint["panel_positions"])
    if panel.n_sites != len(trained) or not np.array_equal(panel.positions, trained):
        raise InputError(f"{panel.source}: its {panel.n_sites} sites differ from the {len(trained)} "
                         "sites the model was trained on (use the training panel and region)")


def impute_windows(model: ImputationModel, checkpoint: dict, panel: Panel, target_haplotypes: np.ndarray,
                   typed: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """P(ALT) float32 [S, 2T] for the targets' haplotypes uint8 [S, 2T] (MASK where untyped)."""
    windows, args = np.asarray(checkpoint["windows"]), checkpoint["args"]
    sites = PanelSites(panel.af, panel.variant_type, device)
    ref_tokens_T = np.ascontiguousarray(panel.haplotypes.T)                      # [H, S]
    retriever = None
    if checkpoint["retriever"] is not None:
        ranges = key_ranges(windows, args["key_flank"], panel.n_sites)
        retriever = Retriever(ref_tokens_T, windows, ranges, args["k"], args["key_decay"], args["index"])
        retriever.load_state_dict(checkpoint["retriever"])
    n_targets = target_haplotypes.shape[1] // 2
    batches = WindowBatches(np.ascontiguousarray(target_haplotypes.T), windows, args["key_flank"],
                            batch_size, MaskConfig(),
                            seed=0, panel_sample=np.full(n_targets, -1), observed_sites=typed, shuffle=False)
    per_window: List[List[np.ndarray]] = [[] for _ in windows]
    ref_tokens = torch.from_numpy(ref_tokens_T).to(device)
    with torch.no_grad():
        for batch in tqdm(loader(batches, 0), total=len(batches), desc="imputing"):
            hap_logits, _ = predict_batch(model, batch, sites, retriever, ref_tokens)
            prob = torch.sigmoid(hap_logits.float()).cpu().numpy()               # [B, 2, L]
            per_window[int(batch["window"])].append(prob.reshape(-1, prob.shape[-1]).T)  # [L, 2B]
    return stitch([np.concatenate(parts, axis=1) for parts in per_window], windows, panel.n_sites)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    checkpoint = load_checkpoint(args.checkpoint, args.device)
    panel = load_panel(args.panel, region=args.region or checkpoint["args"]["region"])
    check_panel(panel, checkpoint)
    targets = load_targets(args.targets, panel)
    model = ImputationModel(ModelConfig(**checkpoint["model_config"])).to(args.device)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    began = time.perf_counter()
    alt_prob = impute_windows(model, checkpoint, panel, targets.haplotypes, targets.typed,
                              args.batch_size, torch.device(args.device))
    seconds = time.perf_counter() - began
    write_imputed_vcf(args.out, panel, targets.samples, alt_prob, typed=targets.typed,
                      typed_haplotypes=targets.haplotypes)
    print(f"imputed {len(targets.samples)} samples x {panel.n_sites} sites ({targets.n_typed} typed) "
          f"in {seconds:.1f}s: {len(targets.samples) / seconds:.1f} samples/s; wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
