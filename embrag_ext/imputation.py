"""Imputing target haplotypes with a trained model, window by window.

Each window's observed sites are the targets' typed sites; retrieval searches
the panel's haplotypes with keys under that mask. Window outputs are stitched
(overlaps averaged). The command line is impute.py.
"""
from __future__ import annotations

from typing import List

import numpy as np
import torch
from .progress import progress

from .checkpoint import Checkpoint
from .dataset import WindowBatches, loader
from .errors import InputError
from .masking import MaskConfig
from .model import ImputationModel
from .panel import Panel
from .predict import PanelSites, predict_batch
from .retrieval import make_retriever
from .windows import stitch


def check_panel(panel: Panel, checkpoint: Checkpoint) -> None:
    """The model's windows are over the training panel's sites: require the same sites."""
    trained = np.asarray(checkpoint.panel_positions)
    if panel.n_sites != len(trained) or not np.array_equal(panel.positions, trained):
        raise InputError(f"{panel.source}: its {panel.n_sites} sites differ from the {len(trained)} "
                         "sites the model was trained on (use the training panel and region)")


def load_model(checkpoint: Checkpoint, device: torch.device) -> ImputationModel:
    """The trained model of a checkpoint, in eval mode on ``device``."""
    model = ImputationModel(checkpoint.config.model).to(device)
    model.load_state_dict(checkpoint.model)
    return model.eval()


def impute_haplotypes(checkpoint: Checkpoint, panel: Panel, target_haplotypes: np.ndarray,
                      typed: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """P(ALT) float32 [S, 2T] for the targets' haplotypes uint8 [S, 2T] (MASK where untyped)."""
    config, windows = checkpoint.config, np.asarray(checkpoint.windows)
    model = load_model(checkpoint, device)
    sites = PanelSites(panel.af, panel.variant_type, device)
    ref_tokens_T = np.ascontiguousarray(panel.haplotypes.T)                      # [H, S]
    retriever = None
    if checkpoint.retriever is not None:
        retriever = make_retriever(config.retrieval, ref_tokens_T, windows, panel.present_haplotypes())
        retriever.load_state_dict(checkpoint.retriever)
    n_targets = target_haplotypes.shape[1] // 2
    batches = WindowBatches(np.ascontiguousarray(target_haplotypes.T), windows, config.retrieval.key_flank,
                            batch_size, MaskConfig(), seed=0, panel_sample=np.full(n_targets, -1),
                            observed_sites=typed, shuffle=False)
    per_window: List[List[np.ndarray]] = [[] for _ in windows]
    ref_tokens = torch.from_numpy(ref_tokens_T).to(device)
    with torch.no_grad():
        for batch in progress(loader(batches, 0), total=len(batches), desc="imputing"):
            hap_logits, _ = predict_batch(model, batch, sites, retriever, ref_tokens)
            prob = torch.sigmoid(hap_logits.float()).cpu().numpy()               # [B, 2, L]
            per_window[int(batch["window"])].append(prob.reshape(-1, prob.shape[-1]).T)  # [L, 2B]
    return stitch([np.concatenate(parts, axis=1) for parts in per_window], windows, panel.n_sites)
