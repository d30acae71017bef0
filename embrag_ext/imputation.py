"""Imputing target haplotypes with a trained model.

The windows are grouped into chunks of consecutive windows (``chunk_spans``);
for each chunk and batch of targets the copying posterior is computed once
over the chunk's context (the targets' typed sites inside it and the
``context_sites`` nearest on each side), then every window of the chunk is
predicted from it. Without copying, retrieval searches the panel with keys
under the typed-site mask. Window outputs are stitched (overlaps averaged).
The command line is impute.py.
"""
from __future__ import annotations

import warnings
from typing import List

import numpy as np
import torch
from .progress import progress

from .array_sites import pattern_difference
from .checkpoint import Checkpoint
from .dataset import SpanBatches, loader
from .genetic_map import genetic_positions
from .learned_keys import attach_learned_keys
from .masking import MaskConfig
from .model import ImputationModel
from .panel import Panel
from .precision import use_autocast
from .predict import PanelSites, Predictor, ReferencePanel
from .retrieval import make_retriever
from .windows import stitch

CHUNK_OBSERVED_SITES = 1024        # typed sites per chunk whose copying posterior is computed at once
POSTERIOR_BYTES_PER_BATCH = 2**29  # target batches are cut so that a posterior fits in 512 MiB
ARRAY_TOLERANCE = 0.1              # typed sites may differ from the trained array's by 10% of their union


def warn_if_other_array(checkpoint: Checkpoint, panel: Panel, typed: np.ndarray) -> None:
    """One-line warning when the targets are typed at other sites than the array the model learned."""
    if checkpoint.array_positions is None:
        return
    trained = np.isin(panel.positions, checkpoint.array_positions)
    difference = pattern_difference(trained, typed)
    if difference > ARRAY_TOLERANCE:
        warnings.warn(f"the targets' {int(typed.sum())} typed sites differ from the {int(trained.sum())} "
                      f"array sites the model was trained on by {difference:.0%} of their union "
                      f"(tolerance {ARRAY_TOLERANCE:.0%}): accuracy may suffer; train with --array TARGETS",
                      stacklevel=2)


def load_model(checkpoint: Checkpoint, device: torch.device) -> ImputationModel:
    """The trained model of a checkpoint, in eval mode on ``device``."""
    model = ImputationModel(checkpoint.config.model, checkpoint.config.copying).to(device)
    model.load_state_dict(checkpoint.model)
    return model.eval()


def chunk_spans(windows: np.ndarray, typed: np.ndarray, max_observed: int) -> List[np.ndarray]:
    """Consecutive windows grouped so that each group spans at most ``max_observed``
    typed sites (a group holds at least one window); a list of window-index arrays."""
    typed_before = np.concatenate([[0], np.cumsum(typed)])                       # [S + 1]
    groups, first = [], 0
    for window in range(1, len(windows) + 1):
        if window == len(windows) or typed_before[windows[window, 1]] - typed_before[windows[first, 0]] > max_observed:
            groups.append(np.arange(first, window))
            first = window
    return groups


def impute_haplotypes(checkpoint: Checkpoint, panel: Panel, target_haplotypes: np.ndarray,
                      typed: np.ndarray, batch_size: int, device: torch.device, amp: str = "auto") -> np.ndarray:
    """P(ALT) float32 [S, 2T] for the targets' haplotypes uint8 [S, 2T] (MASK where untyped);
    ``amp``: --amp (precision.use_autocast)."""
    config, windows = checkpoint.config, np.asarray(checkpoint.windows)
    model = load_model(checkpoint, device)
    cm = genetic_positions(panel.chrom, panel.positions, config.data.genetic_map)
    reference = ReferencePanel(panel.haplotypes, cm, device, panel.present_haplotypes())
    retriever = None
    if checkpoint.retriever is not None and model.copying is None:
        retriever = make_retriever(config.retrieval, np.ascontiguousarray(panel.haplotypes.T), windows,
                                   panel.present_haplotypes(), device)
        retriever.load_state_dict(checkpoint.retriever)
    predictor = Predictor(model, config, PanelSites(panel.af, panel.variant_type, device), reference, windows,
                          retriever, autocast=use_autocast(amp, device))
    keys = attach_learned_keys(config, panel.af, windows, device, predictor, retriever)
    if keys is not None:
        keys.load_state_dict(checkpoint.keys)
    groups = chunk_spans(windows, typed, CHUNK_OBSERVED_SITES)
    spans = np.array([[windows[g[0], 0], windows[g[-1], 1]] for g in groups])
    context = config.copying.context_sites if model.copying is not None else max(1, config.retrieval.key_flank)
    typed_per_chunk = max(int(typed[start:end].sum()) for start, end in spans)
    observed = min(int(typed.sum()), typed_per_chunk + 2 * context)           # the largest context
    batch_size = min(batch_size, _batch_fitting_posterior(observed, panel.n_haplotypes))
    n_targets = target_haplotypes.shape[1] // 2
    batches = SpanBatches(np.ascontiguousarray(target_haplotypes.T), spans, context, batch_size, MaskConfig(),
                          seed=0, panel_sample=np.full(n_targets, -1), observed_sites=typed, shuffle=False)
    per_window: List[List[np.ndarray]] = [[] for _ in windows]
    with torch.no_grad():
        for batch in progress(loader(batches, 0), total=len(batches), desc="imputing"):
            for window, (hap_logits, _) in predictor.span_logits(batch, groups[int(batch["span"])]):
                prob = torch.sigmoid(hap_logits.float()).cpu().numpy()           # [B, 2, L]
                per_window[window].append(prob.reshape(-1, prob.shape[-1]).T)   # [L, 2B]
    return stitch([np.concatenate(parts, axis=1) for parts in per_window], windows, panel.n_sites)


def _batch_fitting_posterior(observed_sites: int, templates: int) -> int:
    """Samples per batch whose copying posterior (2 haplotypes x sites x templates floats) fits."""
    return max(1, POSTERIOR_BYTES_PER_BATCH // (2 * observed_sites * templates * 4))
