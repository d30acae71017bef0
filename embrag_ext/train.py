"""Train an imputation model: ``python -m embrag_ext.train``.

With no arguments it trains the ``embedding`` mode on the demo cohort
(demo.py) with small defaults that finish in a few minutes on two CPU cores.
Samples are split train/validation BY SAMPLE; the retrieval panel is the
training samples only (a training query never retrieves its own sample).
An epoch is ``--steps-per-epoch`` batches drawn at random from all (window,
sample) batches (0: all of them). Each epoch prints the train and validation loss, the seed's ALT-F1 (rare /
common, masked alleles) and the dosage r2 of the validation samples, and
writes ``checkpoint.pt`` and ``metrics.json`` to the output directory
(default ``runs/<mode>-<time>``; printed).

Options may also come from ``--config file.json`` (keys = option names with
underscores); command-line options win. ``--resume DIR`` continues the run in
DIR with its stored options (only --epochs, --device, --workers are taken
from the command line). On the CPU a run is deterministic given ``--seed``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import load_checkpoint
from .dataset import WindowBatches, key_ranges, loader, split_samples
from .demo import demo_cohort
from .errors import InputError, run_cli
from .masking import MaskConfig
from .metrics import alt_f1, dosage_metrics
from .model import MODES, ImputationModel, ModelConfig
from .panel import haplotype_columns
from .panel_vcf import load_panel
from .predict import PanelSites, key_encoder, predict_batch
from .retrieval import Retriever
from .tokens import MASK
from .windows import make_windows

RESUME_OVERRIDES = ("epochs", "device", "workers")
VALIDATION_SEED_OFFSET = 7919   # validation patterns: fixed, different from training's


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m embrag_ext.train", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="JSON file of options (keys: option names with underscores)")
    p.add_argument("--panel", help="phased reference panel VCF/BCF (default: the demo cohort)")
    p.add_argument("--region", help="CHROM[:START-END] of the panel to use")
    p.add_argument("--window", type=int, default=128, help="window length in sites")
    p.add_argument("--overlap", type=int, default=32, help="overlap of consecutive windows in sites")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mode", choices=MODES, default="embedding")
    p.add_argument("--k", type=int, default=8, help="neighbours retrieved per haplotype")
    p.add_argument("--key-flank", type=int, default=768,
                   help="retrieval compares the window plus this many sites on each side")
    p.add_argument("--key-decay", type=float, default=128,
                   help="a flank site at distance d from the window weighs exp(-d / decay) (0: all 1)")
    p.add_argument("--half-width", type=int, default=16, help="local-agreement half window (sites)")
    p.add_argument("--refresh", default="epoch",
                   help="'fixed' (option A), 'epoch' or a number of steps (option B)")
    p.add_argument("--index", default="Flat", help="FAISS index factory string (default exact 'Flat')")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=250,
                   help="batches per epoch, drawn at random from all (window, samples) batches; 0 = all")
    p.add_argument("--batch-size", type=int, default=16, help="samples per batch (2 haplotypes each)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1, help="fraction of samples held out")
    p.add_argument("--mask-ratio", type=float, nargs=2, default=(0.05, 0.2), metavar=("LOW", "HIGH"),
                   help="range of the observed-site fraction of training patterns")
    p.add_argument("--sporadic-missing", type=float, default=0.02,
                   help="probability that an observed site is missing for a sample")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--out", help="output directory (default runs/<mode>-<time>)")
    p.add_argument("--resume", help="output directory (or checkpoint.pt) of a run to continue")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        parser.set_defaults(**read_config(args.config, parser))
        args = parser.parse_args(argv)
    args.refresh_every = refresh_steps(args.refresh)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    for name in ("window", "epochs", "batch_size", "dim", "layers", "heads"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if args.steps_per_epoch < 0:
        raise InputError(f"--steps-per-epoch {args.steps_per_epoch}: must be >= 0")
    return args


def read_config(path: str, parser: argparse.ArgumentParser) -> dict:
    try:
        with open(path) as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise InputError(f"--config {path}: {error}") from None
    if not isinstance(config, dict):
        raise InputError(f"--config {path}: expected a JSON object of options")
    unknown = sorted(set(config) - {action.dest for action in parser._actions})
    if unknown:
        raise InputError(f"--config {path}: unknown options {', '.join(unknown)}")
    return config


def refresh_steps(refresh: str) -> Optional[int]:
    """None for 'fixed', 0 for 'epoch', N for every N steps."""
    if refresh == "fixed":
        return None
    if refresh == "epoch":
        return 0
    if refresh.isdigit() and int(refresh) > 0:
        return int(refresh)
    raise InputError(f"--refresh {refresh!r}: expected 'fixed', 'epoch' or a positive number of steps")


class TrainData:
    """The panel split by sample, its windows, and the retrieval panel."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        path = args.panel or demo_cohort()["panel"]
        self.panel = load_panel(path, region=args.region)
        self.windows = make_windows(self.panel.n_sites, args.window, args.overlap)    # [W, 2]
        self.key_ranges = key_ranges(self.windows, args.key_flank, self.panel.n_sites)  # [W, 2]
        self.train, self.val = split_samples(len(self.panel.samples), args.val_fraction, args.seed)
        haplotypes_T = self.panel.haplotypes.T                                       # [2N, S]
        self.ref_tokens_T = np.ascontiguousarray(haplotypes_T[haplotype_columns(self.train)])  # [H, S]
        self.val_haplotypes_T = np.ascontiguousarray(haplotypes_T[haplotype_columns(self.val)])
        self.ref_tokens = torch.from_numpy(self.ref_tokens_T).to(device)
        self.sites = PanelSites(self.panel.af, self.panel.variant_type, device)

    def describe(self) -> str:
        return (f"{self.panel.source}: {self.panel.n_sites} sites, {len(self.windows)} windows, "
                f"{len(self.train)} training / {len(self.val)} validation samples")


class Trainer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        torch.manual_seed(args.seed)
        self.data = TrainData(args, self.device)
        self.model_config = ModelConfig(mode=args.mode, dim=args.dim, layers=args.layers, heads=args.heads,
                                        max_window=args.window, half_width=args.half_width)
        self.model = ImputationModel(self.model_config).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=0.01)
        self.retriever = None if args.mode == "none" else Retriever(
            self.data.ref_tokens_T, self.data.windows, self.data.key_ranges, args.k, args.key_decay, args.index)
        self.mask = MaskConfig(ratio_range=tuple(args.mask_ratio), sporadic_missing=args.sporadic_missing)
        self.epoch, self.step, self.history = 0, 0, []
        self.refresh_seconds = 0.0

    @property
    def detach_reference(self) -> bool:
        """Option A: fixed reference encodings get no gradient."""
        return self.args.refresh_every is None

    def refresh(self, why: str) -> None:
        """Re-encode the reference keys with the current embedding (logged, timed)."""
        if self.retriever is None:
            return
        data = self.data
        seconds = self.retriever.refresh(key_encoder(self.model, data.sites, data.windows, data.key_ranges))
        self.refresh_seconds += seconds
        tqdm.write(f"refreshed reference keys of {len(self.data.windows)} windows ({why}) in {seconds:.3f}s")

    def train_epoch(self) -> float:
        """One epoch over (window, sample batches); returns the mean loss."""
        args = self.args
        if self.epoch > 0 and args.refresh_every == 0:
            self.refresh(f"epoch {self.epoch + 1}")
        batches = self.train_batches()
        n_steps = min(len(batches), args.steps_per_epoch or len(batches))
        losses = []
        self.model.train()
        bar = tqdm(loader(batches, args.workers), total=n_steps, desc=f"epoch {self.epoch + 1}",
                   leave=False)
        for batch in bar:
            if len(losses) == n_steps:
                break
            if args.refresh_every and self.step and self.step % args.refresh_every == 0:
                self.refresh(f"step {self.step}")
            loss = self.train_step(batch)
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4f}")
        bar.close()
        return float(np.mean(losses))

    def train_batches(self) -> WindowBatches:
        """The training batches of the current epoch."""
        args = self.args
        batches = WindowBatches(self.data.ref_tokens_T, self.data.windows, args.key_flank, args.batch_size, self.mask,
                                args.seed, panel_sample=np.arange(len(self.data.train)))
        batches.set_epoch(self.epoch)
        return batches

    def loss(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of a batch: retrieval and the forward pass, with autograd."""
        hap_logits, gt_logits = predict_batch(self.model, batch, self.data.sites, self.retriever,
                                              self.data.ref_tokens, self.detach_reference)
        return masked_loss(hap_logits, gt_logits, batch)

    def train_step(self, batch: Dict[str, torch.Tensor]) -> float:
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.item()

    @torch.no_grad()
    def validate(self) -> Dict[str, object]:
        """Loss, ALT-F1 and dosage r2 of the validation samples on their hidden sites.

        Each window is one batch of every validation sample under one fixed
        array-like pattern (no sporadic missing), the same at every epoch.
        """
        data, args = self.data, self.args
        mask = MaskConfig(ratio_range=tuple(args.mask_ratio), sporadic_missing=0.0)
        batches = WindowBatches(data.val_haplotypes_T, data.windows, args.key_flank, len(data.val), mask,
                                args.seed + VALIDATION_SEED_OFFSET,
                                panel_sample=np.full(len(data.val), -1), shuffle=False)
        self.model.eval()
        losses, pieces = [], []
        for batch in tqdm(loader(batches, args.workers), total=len(batches), desc="validation", leave=False):
            hap_logits, gt_logits = predict_batch(self.model, batch, data.sites, self.retriever, data.ref_tokens)
            losses.append(float(masked_loss(hap_logits, gt_logits, batch)))
            pieces.append(hidden_site_predictions(batch, torch.sigmoid(hap_logits.float()).cpu(), data.panel.af))
        return {"val_loss": float(np.mean(losses)), **score(pieces)}

    def fit(self) -> List[dict]:
        if self.epoch == 0 and self.step == 0:
            self.refresh("initial encoder")
        for _ in range(self.epoch, self.args.epochs):
            began, self.refresh_seconds = time.perf_counter(), 0.0
            train_loss = self.train_epoch()
            record = {"epoch": self.epoch + 1, "step": self.step, "train_loss": train_loss, **self.validate(),
                      "refresh_seconds": self.refresh_seconds, "seconds": time.perf_counter() - began}
            if self.retriever is not None and self.retriever.recall() is not None:
                record["recall_at_k"] = self.retriever.recall()
            self.history.append(record)
            self.epoch += 1
            print(epoch_line(record), flush=True)
            self.save()
        return self.history

    def save(self) -> None:
        """Checkpoint and metrics, each written to a temporary file and renamed
        (an interrupted save never leaves a half-written file)."""
        out = self.args.out
        checkpoint = {"args": vars(self.args), "model_config": asdict(self.model_config),
                      "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                      "retriever": self.retriever.state_dict() if self.retriever else None,
                      "epoch": self.epoch, "step": self.step, "history": self.history,
                      "train_samples": [self.data.panel.samples[i] for i in self.data.train],
                      "val_samples": [self.data.panel.samples[i] for i in self.data.val],
                      "windows": self.data.windows, "panel_positions": self.data.panel.positions}
        checkpoint_path, metrics_path = os.path.join(out, "checkpoint.pt"), os.path.join(out, "metrics.json")
        torch.save(checkpoint, checkpoint_path + ".tmp")
        with open(metrics_path + ".tmp", "w") as handle:
            json.dump({"args": vars(self.args), "history": self.history}, handle, indent=1)
        os.replace(checkpoint_path + ".tmp", checkpoint_path)
        os.replace(metrics_path + ".tmp", metrics_path)

    def load(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.retriever is not None:
            self.retriever.load_state_dict(checkpoint["retriever"])
        self.epoch, self.step, self.history = checkpoint["epoch"], checkpoint["step"], checkpoint["history"]


def masked_loss(hap_logits: torch.Tensor, gt_logits: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """BCE of the ALT logits on hidden alleles + 0.5 * genotype CE on sites with a hidden allele."""
    truth = batch["haplotypes"].to(hap_logits.device).long()                  # [B, 2, L]
    hidden = (batch["tokens"].to(truth.device) == MASK) & (truth != MASK)    # [B, 2, L]
    hap_loss = F.binary_cross_entropy_with_logits(hap_logits.float()[hidden], truth[hidden].float())
    scored = (truth != MASK).all(1) & hidden.any(1)                           # [B, L]
    gt_loss = F.cross_entropy(gt_logits.float()[scored], truth.sum(1)[scored])
    return hap_loss + 0.5 * gt_loss


def hidden_site_predictions(batch: Dict[str, torch.Tensor], alt_prob: torch.Tensor,
                            af: np.ndarray) -> Dict[str, np.ndarray]:
    """Truth and predictions at a validation batch's hidden sites (shared pattern)."""
    hidden = ~batch["observed"].numpy()                                       # [L]
    start = int(batch["start"])
    truth = batch["haplotypes"].numpy()[:, :, hidden]                          # [B, 2, n]
    prob = alt_prob.numpy()[:, :, hidden]                                     # [B, 2, n]
    return {"truth": truth, "prob": prob, "af": af[start:start + len(hidden)][hidden]}


def score(pieces: List[Dict[str, np.ndarray]]) -> Dict[str, object]:
    """ALT-F1 rare/common and dosage r2 (overall and by MAF bin) over hidden sites."""
    true_gt = np.concatenate([p["truth"].sum(1).T for p in pieces])           # [R, B]
    dosage = np.concatenate([p["prob"].sum(1).T for p in pieces])             # [R, B]
    af = np.concatenate([p["af"] for p in pieces])                            # [R]
    maf = np.minimum(af, 1 - af)
    true_haps = np.concatenate([p["truth"].transpose(2, 0, 1).reshape(len(p["af"]), -1) for p in pieces])
    pred_haps = np.concatenate([(p["prob"] > 0.5).transpose(2, 0, 1).reshape(len(p["af"]), -1) for p in pieces])
    f1 = alt_f1(true_haps, pred_haps.astype(np.uint8), True, maf[:, None])
    dosage_r2 = dosage_metrics(true_gt, dosage, af)
    return {"alt_f1_rare": f1["rare"]["f1"], "alt_f1_common": f1["common"]["f1"],
            "dosage_r2": dosage_r2["all"]["aggregate_r2"],
            "dosage_r2_by_maf": {b["bin"]: b["aggregate_r2"] for b in dosage_r2["bins"]}}


def epoch_line(record: dict) -> str:
    recall = f", recall@K {record['recall_at_k']:.3f}" if "recall_at_k" in record else ""
    return (f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}, "
            f"ALT-F1 rare {record['alt_f1_rare']:.4f} common {record['alt_f1_common']:.4f}, "
            f"dosage r2 {record['dosage_r2']:.4f}{recall} ({record['seconds']:.0f}s)")


def resumed_args(args: argparse.Namespace) -> tuple:
    """(stored args with the command line's RESUME_OVERRIDES, checkpoint)."""
    path = args.resume
    path = os.path.join(path, "checkpoint.pt") if os.path.isdir(path) else path
    if not os.path.isfile(path):
        raise InputError(f"--resume {args.resume}: no checkpoint.pt there")
    checkpoint = load_checkpoint(path, args.device, flag="--resume")
    stored = argparse.Namespace(**checkpoint["args"])
    for name in RESUME_OVERRIDES:
        setattr(stored, name, getattr(args, name))
    stored.out, stored.resume = os.path.dirname(os.path.abspath(path)), args.resume
    return stored, checkpoint


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args = parse_args(argv)
    checkpoint = None
    if args.resume:
        args, checkpoint = resumed_args(args)
    args.out = args.out or os.path.join("runs", f"{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(args.out, exist_ok=True)
    trainer = Trainer(args)
    if checkpoint is not None:
        trainer.load(checkpoint)
    print(f"{trainer.data.describe()}; mode {args.mode}, refresh {args.refresh}; output {args.out}", flush=True)
    history = trainer.fit()
    print(f"checkpoint and metrics in {args.out}")
    return history


if __name__ == "__main__":
    run_cli(main)
