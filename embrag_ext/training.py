"""Training an imputation model from a :class:`~embrag_ext.config.RunConfig`.

Samples are split train/validation BY SAMPLE; the model learns from the
training samples' haplotypes as queries. The reference panel is every panel
sample, as at imputation, and a query never copies from nor retrieves its
own sample; the allele frequencies the model sees leave the batch's own
samples out. An epoch is ``steps_per_epoch`` batches drawn at random from
all (span, sample) batches (0: all of them); a span is ``windows_per_step``
consecutive windows that share one copying posterior. The learning rate
halves with every epoch's worth of steps, down to a tenth (a schedule of the
step alone, so a resumed run continues it exactly); the copying rates learn
at a tenth of it. Observed sites are the array's
(``--array``: array-aware training) or array-like patterns drawn per batch.
After each epoch a fixed sample of validation windows (up to
``VALIDATION_WINDOWS``, evenly spaced) is scored for a fixed sample of the
validation samples (up to ``VALIDATION_SAMPLES``) on their hidden sites
(loss, the seed's ALT-F1 rare / common, dosage r2) and
``checkpoint.pt`` and ``metrics.json`` are written to the output directory
(atomically), which is made once the inputs are read and the settings checked
against the panel (run_checks.py). A step whose loss or gradient is NaN or Inf
stops the run before the optimizer steps, keeping the last checkpoint;
``clip_grad`` clips the gradients' norm (numerics.py). On the CPU a run is
deterministic given the seed. The command line is train.py.
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from .progress import note, progress

from .array_sites import array_sites
from .atomic import atomic_output
from .checkpoint import CHECKPOINT_NAME, Checkpoint, check_panel, write_checkpoint
from .config import RunConfig
from .dataset import SpanBatches, loader, split_samples
from .demo import demo_cohort
from .genetic_map import genetic_positions
from .learned_keys import attach_learned_keys
from .masking import MaskConfig
from .metrics import hidden_site_scores
from .model import ImputationModel
from .numerics import is_finite_step, loss_and_grad_norm, non_finite_loss
from .panel import haplotype_columns
from .panel_vcf import load_panel
from .precision import use_autocast
from .predict import PanelSites, Predictor, ReferencePanel, key_encoder
from .retrieval import make_retriever
from .run_checks import check_settings_fit_panel
from .tokens import MASK
from .windows import make_windows

VALIDATION_SEED_OFFSET = 7919   # validation patterns: fixed, different from training's
VALIDATION_WINDOWS = 16         # windows scored per validation (evenly spaced): cost follows the budget
VALIDATION_SAMPLES = 100        # validation samples scored (evenly spaced in panel order): cost follows the budget


class TrainData:
    """The panel split by sample, its windows, the array's sites, and the reference panel."""

    def __init__(self, config: RunConfig, device: torch.device):
        data = config.data
        self.panel = load_panel(data.panel or demo_cohort()["panel"], **data.panel_options())
        self.windows = make_windows(self.panel.n_sites, data.window, data.overlap)    # [W, 2]
        self.array = None if data.array is None else array_sites(data.array, self.panel)  # bool [S]
        self.train, self.val = split_samples(len(self.panel.samples), data.val_fraction, config.train.seed)
        self.ref_tokens_T = np.ascontiguousarray(self.panel.haplotypes.T)           # [2N, S]
        self.ref_present = self.panel.present_haplotypes()                           # [2N] (haploid: 2nd absent)
        self.train_haplotypes_T = np.ascontiguousarray(self.ref_tokens_T[haplotype_columns(self.train)])
        self.val_haplotypes_T = np.ascontiguousarray(self.ref_tokens_T[haplotype_columns(self.val)])
        cm = genetic_positions(self.panel.chrom, self.panel.positions, data.genetic_map)
        self.reference = ReferencePanel(self.ref_tokens_T.T, cm, device, self.ref_present)   # no second copy
        self.sites = PanelSites(self.panel.af, self.panel.variant_type, device)

    def describe(self) -> str:
        array = "" if self.array is None else f", array of {int(self.array.sum())} sites"
        return (f"{self.panel.source}: {self.panel.n_sites} sites, {len(self.windows)} windows, "
                f"{len(self.train)} training / {len(self.val)} validation samples{array}")


class Trainer:
    """One training run: model, optimizer, retriever, and where it stands (epoch, step)."""

    def __init__(self, config: RunConfig, out_dir: str):
        self.config, self.out_dir = config, out_dir
        self.device = torch.device(config.train.device)
        torch.manual_seed(config.train.seed)
        self.data = TrainData(config, self.device)
        check_settings_fit_panel(config, self.data.panel)
        self.model = ImputationModel(config.model, config.copying).to(self.device)
        self.optimizer = make_optimizer(self.model, config.train.lr)
        uses_faiss = config.model.mode != "none" and self.model.copying is None
        self.retriever = make_retriever(config.retrieval, self.data.ref_tokens_T, self.data.windows,
                                        self.data.ref_present, self.device) if uses_faiss else None
        self.predictor = Predictor(self.model, config, self.data.sites, self.data.reference,
                                   self.data.windows, self.retriever,
                                   autocast=use_autocast(config.train.amp, self.device))
        self.keys = attach_learned_keys(config, self.data.panel.af, self.data.windows, self.device,
                                        self.predictor, self.retriever, self.optimizer)   # --keys learned
        self.epoch, self.step, self.history = 0, 0, []
        self.refresh_seconds = 0.0

    def refresh(self, why: str) -> None:
        """Re-encode the reference keys with the current embedding, or the learned
        key encoder (logged, timed, with the approximate index's recall@K)."""
        if self.keys is not None:
            self.refresh_seconds += self.keys.refresh()
        if self.retriever is None:
            return
        data = self.data
        encode = (key_encoder(self.model, data.sites, data.windows, self.retriever.key_ranges) if self.keys is None
                  else self.keys.window_encoder(self.retriever.key_ranges))
        seconds = self.retriever.refresh(encode)
        self.refresh_seconds += seconds
        recall = self.retriever.recall()
        recall = "" if recall is None else f", recall@{self.retriever.k} {recall:.3f} against exact search"
        note(f"refreshed reference keys of {len(data.windows)} windows ({why}) in {seconds:.3f}s{recall}")

    def train_epoch(self) -> float:
        """One epoch over (window, sample batches); returns the mean loss."""
        train, refresh_every = self.config.train, self.config.retrieval.refresh_every
        if self.epoch > 0 and refresh_every == 0:
            self.refresh(f"epoch {self.epoch + 1}")
        batches = self.train_batches()
        n_steps = min(len(batches), train.steps_per_epoch or len(batches))
        losses = []
        self.model.train()
        bar = progress(loader(batches, train.workers), total=n_steps, desc=f"epoch {self.epoch + 1}", leave=False)
        for batch in bar:
            if len(losses) == n_steps:
                break
            if refresh_every and self.step and self.step % refresh_every == 0:
                self.refresh(f"step {self.step}")
            loss = self.train_step(batch)
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4f}")
        bar.close()
        return float(np.mean(losses))

    def train_batches(self) -> SpanBatches:
        """The training batches of the current epoch (one span of windows_per_step windows each)."""
        train = self.config.train
        batches = SpanBatches(self.data.train_haplotypes_T, self.span_ranges, self.context_sites,
                              train.batch_size, train.mask, train.seed, panel_sample=self.data.train,
                              observed_sites=self.data.array)
        batches.set_epoch(self.epoch)
        return batches

    @property
    def spans(self) -> List[np.ndarray]:
        """The training spans: consecutive groups of windows_per_step windows (window indices)."""
        per_step = self.config.train.windows_per_step
        return [np.arange(i, min(i + per_step, len(self.data.windows)))
                for i in range(0, len(self.data.windows), per_step)]

    @property
    def span_ranges(self) -> np.ndarray:
        """int64 [G, 2]: the site range of each training span."""
        windows = self.data.windows
        return np.array([[windows[span[0], 0], windows[span[-1], 1]] for span in self.spans], dtype=np.int64)

    @property
    def context_sites(self) -> int:
        """Observed sites on each side of a window that a batch carries: the HMM's context, or
        (FAISS neighbours) enough to cover the key flank."""
        if self.model.copying is not None:
            return self.config.copying.context_sites
        return max(1, self.config.retrieval.key_flank)

    def loss(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of a batch (the mean over its span's windows): copying,
        retrieval and the forward passes, with autograd."""
        windows = self.spans[batch["span"]]
        losses = [masked_loss(hap_logits, gt_logits, window_slice(batch, *self.data.windows[window]))
                  for window, (hap_logits, gt_logits) in self.predictor.span_logits(
                      batch, windows, self.config.retrieval.detach_reference)]
        loss = torch.stack(losses).mean()
        if self.keys is not None:                                # learned keys: their contrastive loss
            loss = loss + self.config.retrieval.key_weight * self.key_loss(batch)
        return loss

    def key_loss(self, batch: Dict[str, torch.Tensor], n_queries: Optional[int] = None) -> torch.Tensor:
        """The learned keys' contrastive loss of a batch (learned_keys.LearnedKeys.loss)."""
        key_ranges = None if self.retriever is None else self.retriever.key_ranges
        return self.keys.loss(batch, self.spans[batch["span"]], self.data.reference, key_ranges, n_queries)

    def train_step(self, batch: Dict[str, torch.Tensor]) -> float:
        set_learning_rate(self.optimizer, self.step, self.steps_per_epoch)
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value, grad_norm = loss_and_grad_norm(loss, self.model.parameters(), self.config.train.clip_grad)
        if not is_finite_step(value, grad_norm):    # stop before the step: the checkpoint on disk stays good
            raise non_finite_loss(value, grad_norm, self.epoch + 1, self.step + 1,
                                  os.path.join(self.out_dir, CHECKPOINT_NAME), self.config.train.lr)
        self.optimizer.step()
        self.step += 1
        return value

    @property
    def steps_per_epoch(self) -> int:
        """Training steps in an epoch."""
        train = self.config.train
        batches = len(self.spans) * -(-len(self.data.train) // train.batch_size)
        return max(1, min(batches, train.steps_per_epoch or batches))

    @torch.no_grad()
    def validate(self) -> Dict[str, object]:
        """Loss, ALT-F1 and dosage r2 of the validation samples on their hidden sites.

        Up to VALIDATION_WINDOWS windows, evenly spaced, each under one fixed
        pattern (the array's, or array-like without sporadic missing), the same
        at every epoch; up to VALIDATION_SAMPLES of the validation samples, evenly
        spaced in the panel's order (a file sorted by population gives each its
        share), in batches of 2 x batch_size.
        """
        data, train = self.data, self.config.train
        picked = np.unique(np.linspace(0, len(data.val) - 1, min(len(data.val), VALIDATION_SAMPLES)).round().astype(int))
        mask = MaskConfig(ratio_range=train.mask.ratio_range, jitter=train.mask.jitter, sporadic_missing=0.0)
        chosen = np.unique(np.linspace(0, len(data.windows) - 1, VALIDATION_WINDOWS).round().astype(int))
        batches = SpanBatches(data.val_haplotypes_T[haplotype_columns(picked)], data.windows[chosen],
                              self.context_sites, 2 * train.batch_size, mask, train.seed + VALIDATION_SEED_OFFSET,
                              panel_sample=data.val[picked], observed_sites=data.array, shuffle=False)
        self.model.eval()
        losses, pieces = [], []
        for batch in progress(loader(batches, train.workers), total=len(batches), desc="validation", leave=False):
            ((_, (hap_logits, gt_logits)),) = self.predictor.span_logits(batch, [int(chosen[batch["span"]])])
            losses.append(float(masked_loss(hap_logits, gt_logits, batch)))
            pieces.append(hidden_site_predictions(batch, torch.sigmoid(hap_logits.float()).cpu(), data.panel.af))
        return {"val_loss": float(np.mean(losses)), **hidden_site_scores(pieces)}

    def fit(self) -> List[dict]:
        """Train the remaining epochs; with none to train, save the model as it is."""
        if self.epoch == 0 and self.step == 0:
            self.refresh("initial encoder")
        if self.epoch >= self.config.train.epochs:
            self.save()
        for _ in range(self.epoch, self.config.train.epochs):
            began, self.refresh_seconds = time.perf_counter(), 0.0
            train_loss = self.train_epoch()
            record = {"epoch": self.epoch + 1, "step": self.step, "train_loss": train_loss, **self.validate(),
                      "refresh_seconds": self.refresh_seconds, "seconds": time.perf_counter() - began}
            if self.retriever is not None and self.retriever.recall() is not None:
                record["recall_at_k"] = self.retriever.recall()
            if self.model.copying is not None:
                record["copying"] = self.model.copying.describe()
            self.history.append(record)
            self.epoch += 1
            print(epoch_line(record), flush=True)
            self.save()
        return self.history

    def save(self) -> None:
        """checkpoint.pt and metrics.json in the output directory, each written
        to a temporary file and renamed (an interrupted save never leaves a half-written file)."""
        data = self.data
        write_checkpoint(os.path.join(self.out_dir, CHECKPOINT_NAME), Checkpoint(
            config=self.config, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            retriever=self.retriever.state_dict() if self.retriever else None,
            keys=self.keys.state_dict() if self.keys is not None else None,
            epoch=self.epoch, step=self.step, history=self.history,
            train_samples=[data.panel.samples[i] for i in data.train],
            val_samples=[data.panel.samples[i] for i in data.val],
            windows=data.windows, panel_positions=data.panel.positions,
            array_positions=None if data.array is None else data.panel.positions[data.array]))
        with atomic_output(os.path.join(self.out_dir, "metrics.json")) as metrics_path:
            with open(metrics_path, "w") as handle:
                json.dump({"config": self.config.to_dict(), "history": self.history}, handle, indent=1)

    def load(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint of this run."""
        self.model.load_state_dict(checkpoint.model)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        if self.retriever is not None:
            self.retriever.load_state_dict(checkpoint.retriever)
        if self.keys is not None:
            self.keys.load_state_dict(checkpoint.keys)
        self.epoch, self.step, self.history = checkpoint.epoch, checkpoint.step, checkpoint.history


def train(config: RunConfig, out_dir: str, resume: Optional[Checkpoint] = None,
          trainer_class: Optional[type] = None) -> List[dict]:
    """Train (or, from ``resume``, continue) the run ``config`` describes;
    checkpoints and metrics go to ``out_dir``. Returns the per-epoch records.
    ``trainer_class``: a Trainer subclass (distributed.py's, under torchrun)."""
    trainer = (trainer_class or Trainer)(config, out_dir)
    if resume is not None:
        check_panel(trainer.data.panel, resume)
        trainer.load(resume)
    os.makedirs(out_dir, exist_ok=True)          # once the inputs are read: a bad input leaves nothing
    copying = "off" if trainer.model.copying is None else trainer.model.copying.describe()
    print(f"{trainer.data.describe()}; mode {config.model.mode}, copying {copying}, "
          f"refresh {config.retrieval.refresh}; output {out_dir}", flush=True)
    return trainer.fit()


def make_optimizer(model: ImputationModel, lr: float) -> torch.optim.Optimizer:
    """AdamW; the copying rates (two scalars) learn at a tenth of ``lr``."""
    rates = [] if model.copying is None else list(model.copying.parameters())
    rest = [p for p in model.parameters() if all(p is not r for r in rates)]
    groups = [{"params": rest, "base_lr": lr}] + ([{"params": rates, "base_lr": lr / 10}] if rates else [])
    return torch.optim.AdamW(groups, lr=lr, weight_decay=0.01)


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, steps_per_epoch: int) -> None:
    """Each group's base_lr halved every ``steps_per_epoch`` steps, never below a tenth of it."""
    factor = max(0.1, 0.5 ** (step / steps_per_epoch))
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def window_slice(batch: Dict[str, torch.Tensor], start: int, end: int) -> Dict[str, torch.Tensor]:
    """The truth and tokens of a span batch over one of its windows, [start, end)."""
    offset = batch["start"]
    return {"haplotypes": batch["haplotypes"][..., start - offset:end - offset],
            "tokens": batch["tokens"][..., start - offset:end - offset]}


def masked_loss(hap_logits: torch.Tensor, gt_logits: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """BCE of the ALT logits on hidden alleles + 0.5 * genotype CE on sites with a hidden allele."""
    truth = batch["haplotypes"].to(hap_logits.device).long()                  # [B, 2, L]
    hidden = (batch["tokens"].to(truth.device) == MASK) & (truth != MASK)    # [B, 2, L]
    hap_loss = F.binary_cross_entropy_with_logits(hap_logits.float()[hidden], truth[hidden].float())
    scored = (truth != MASK).all(1) & hidden.any(1)                           # [B, L]
    # The mean over the scored sites, 0 with none (a batch of haploid samples: a mean would be 0/0 = NaN).
    gt_loss = F.cross_entropy(gt_logits.float()[scored], truth.sum(1)[scored], reduction="sum") / scored.sum().clamp(min=1)
    return hap_loss + 0.5 * gt_loss


def hidden_site_predictions(batch: Dict[str, torch.Tensor], alt_prob: torch.Tensor,
                            af: np.ndarray) -> Dict[str, np.ndarray]:
    """Truth and predictions at a validation batch's hidden sites (shared pattern), as numpy
    (the input of metrics.hidden_site_scores)."""
    hidden = ~batch["observed"].numpy()                                       # [L]
    start = int(batch["start"])
    truth = batch["haplotypes"].numpy()[:, :, hidden]                          # [B, 2, n]
    prob = alt_prob.numpy()[:, :, hidden]                                     # [B, 2, n]
    return {"truth": truth, "prob": prob, "af": af[start:start + len(hidden)][hidden]}


def epoch_line(record: dict) -> str:
    recall = f", recall@K {record['recall_at_k']:.3f}" if "recall_at_k" in record else ""
    copying = f", copying {record['copying']}" if "copying" in record else ""
    return (f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}, "
            f"ALT-F1 rare {record['alt_f1_rare']:.4f} common {record['alt_f1_common']:.4f}, "
            f"dosage r2 {record['dosage_r2']:.4f}{recall}{copying} ({record['seconds']:.0f}s)")
