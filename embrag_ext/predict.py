"""One batch through retrieval and the model (shared by training, validation, imputation)."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from .model import ImputationModel, Retrieved, Sites
from .retrieval import Retriever


class PanelSites:
    """The panel's per-site model inputs, sliced per window.

    af: float32 [S] ALT frequency; variant_type: uint8 [S].
    Positions are offsets from the window's first site (rows of the position
    table); sites of a key range outside the window take the nearest edge row.
    """

    def __init__(self, af: np.ndarray, variant_type: np.ndarray, device: torch.device):
        self.af = torch.as_tensor(np.asarray(af, dtype=np.float32), device=device)
        self.type_ids = torch.as_tensor(np.asarray(variant_type, dtype=np.int64), device=device)
        self.device = device

    def window(self, start: int, end: int, origin: Optional[int] = None,
               length: Optional[int] = None) -> Sites:
        """Sites [start, end) of a window that begins at ``origin`` (default
        start) and has ``length`` sites (default end - start)."""
        origin = start if origin is None else origin
        length = end - start if length is None else length
        pos_ids = (torch.arange(start, end, device=self.device) - origin).clamp(0, length - 1)
        return Sites(pos_ids, self.af[start:end], self.type_ids[start:end])


def key_encoder(model: ImputationModel, sites: PanelSites, windows: np.ndarray,
                key_ranges: np.ndarray) -> Callable[[int], torch.Tensor]:
    """encode(window) -> the model's allele encodings [V, Lk, D] over the window's key range."""
    def encode(window: int) -> torch.Tensor:
        (start, end), (key_start, key_end) = windows[window], key_ranges[window]
        return model.embedding.allele_encodings(sites.window(int(key_start), int(key_end), int(start),
                                                             int(end - start)))
    return encode


def predict_batch(model: ImputationModel, batch: Dict[str, torch.Tensor], sites: PanelSites,
                  retriever: Optional[Retriever], ref_tokens: Optional[torch.Tensor],
                  detach_reference: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """ALT logits [B, 2, L] and genotype logits [B, L, 3] of a batch (dataset.py).

    ref_tokens: uint8 [H, S] the retrieval panel's haplotypes (rows as in the
    retriever), on the model's device; unused without a retriever.
    """
    device = sites.device
    start = int(batch["start"])
    B, _, L = batch["tokens"].shape
    retrieved = None
    if retriever is not None:
        query_sample = batch["sample"].repeat_interleave(2).numpy()           # [2B]
        key_tokens = batch["key_tokens"].reshape(2 * B, -1).numpy()            # [2B, Lk]
        ids, dist = retriever.search(int(batch["window"]), batch["key_observed"].numpy(), key_tokens,
                                     query_sample)
        retrieved = Retrieved(ids.to(device), dist.to(device), ref_tokens[:, start:start + L])
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return model(batch["tokens"].to(device), sites.window(start, start + L), retrieved,
                     detach_reference)
