"""Training across processes: ``torchrun --nproc_per_node=N -m embrag_ext.train ...``.

Under torchrun (``WORLD_SIZE`` > 1) train.py opens a :func:`session`: a process
group (gloo on the CPU, NCCL with ``--device cuda``, one GPU per local rank)
and :class:`DistributedTrainer`, a Trainer with DistributedDataParallel.
Without torchrun nothing here runs.

What is split, what is shared:

- Batches: every rank plans the same batches (same seed) and loads each whole
  batch; it keeps its contiguous share of the batch's samples. The allele
  frequencies the model sees still leave the *whole* batch out
  (``batch_haplotypes`` / ``batch_sample``, read by predict.py), so a sample's
  prediction does not depend on how the batch was split.
- Loss: a rank's share is its sums divided by the whole batch's counts
  (:func:`masked_loss_share`; the learned keys' loss likewise), so the shares
  add up to the one-process loss. DDP averages gradients over ranks, so each
  rank backpropagates ``world * share``; the value a step returns (logged,
  checked for NaN) is the all-reduced whole-batch loss. With N ranks a step is
  therefore the one-process step on the same batch, up to float rounding.
- Reference encoding and every refresh: windows are split across ranks (rank r
  encodes windows r, r + N, ...) and the encodings all-gathered
  (:func:`sharded_encode`), so every rank holds the same keys and builds the same
  index.
- Validation: every rank scores every validation batch (identical numbers; it
  costs what one process costs).
- Output: rank 0 prints, draws progress and writes checkpoints; the other
  ranks' stdout goes to /dev/null.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .tokens import MASK
from .training import Trainer, window_slice

PER_SAMPLE_KEYS = ("haplotypes", "tokens", "context_tokens", "sample")   # dataset.py's [B, ...] entries


def launched() -> bool:
    """True under torchrun (or any launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_and_world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def session(device: str) -> Iterator[Optional[type]]:
    """A process group for the run when launched by torchrun (yields
    DistributedTrainer), else nothing (yields None)."""
    if not launched():
        yield None
        return
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    quiet = None
    if dist.get_rank() != 0:
        os.environ["EMBRAG_PROGRESS"] = "lines"        # no bars; the leave=False stages print nothing
        quiet = open(os.devnull, "w")
        sys.stdout = quiet
    try:
        yield DistributedTrainer
    finally:
        dist.destroy_process_group()
        if quiet is not None:
            sys.stdout = sys.__stdout__
            quiet.close()


def sharded_encode(encode, n_windows: int) -> list:
    """Retriever.encode_windows across ranks: this rank encodes windows rank, rank + N, ...;
    the encodings (float32 CPU tensors) are all-gathered into the list of every window."""
    rank, world = rank_and_world()
    mine = {window: encode(window).float().cpu() for window in range(rank, n_windows, world)}
    gathered: List[Dict[int, torch.Tensor]] = [None] * world
    dist.all_gather_object(gathered, mine)
    merged = {window: table for part in gathered for window, table in part.items()}
    return [merged[window] for window in range(n_windows)]


def shard_batch(batch: Dict[str, torch.Tensor], rank: int, world: int) -> Tuple[Dict[str, torch.Tensor], float]:
    """(this rank's share of a batch, its weight): contiguous samples, the whole batch
    kept under batch_haplotypes / batch_sample. A rank left without a sample (fewer
    samples than ranks) gets the first one with weight 0."""
    B = batch["tokens"].shape[0]
    rows = np.array_split(np.arange(B), world)[rank]
    weight = 1.0
    if len(rows) == 0:
        rows, weight = np.array([0]), 0.0
    index = torch.from_numpy(rows)
    local = dict(batch)
    for key in PER_SAMPLE_KEYS:
        local[key] = batch[key].index_select(0, index)
    local["batch_haplotypes"], local["batch_sample"] = batch["haplotypes"], batch["sample"]
    return local, weight


def masked_loss_share(hap_logits: torch.Tensor, gt_logits: torch.Tensor, local: Dict[str, torch.Tensor],
                      whole: Dict[str, torch.Tensor]) -> torch.Tensor:
    """training.masked_loss of the whole batch, restricted to this rank's samples:
    the sums over ``local``'s samples divided by the counts over ``whole``'s, so
    the shares of all ranks add up to masked_loss(whole)."""
    truth = local["haplotypes"].to(hap_logits.device).long()                   # [b, 2, L]
    hidden = (local["tokens"].to(truth.device) == MASK) & (truth != MASK)
    hap_sum = F.binary_cross_entropy_with_logits(hap_logits.float()[hidden], truth[hidden].float(), reduction="sum")
    scored = (truth != MASK).all(1) & hidden.any(1)                            # [b, L]
    gt_sum = F.cross_entropy(gt_logits.float()[scored], truth.sum(1)[scored], reduction="sum")
    all_truth = whole["haplotypes"].long()
    all_hidden = (whole["tokens"] == MASK) & (all_truth != MASK)
    n_hap = all_hidden.sum()
    n_gt = ((all_truth != MASK).all(1) & all_hidden.any(1)).sum()
    return hap_sum / n_hap.to(hap_sum.device) + 0.5 * gt_sum / n_gt.to(gt_sum.device)


class _Step(nn.Module):
    """What DDP wraps: the trained modules, and a forward that is a rank's share of a step's loss."""

    def __init__(self, trainer: "DistributedTrainer", parts: nn.ModuleDict):
        super().__init__()
        self.parts = parts
        object.__setattr__(self, "trainer", trainer)    # not a submodule

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.trainer.loss_share(batch)


class DistributedTrainer(Trainer):
    """A Trainer whose steps, reference encodings and refreshes are split across
    the ranks of the process group (see the module doc)."""

    def __init__(self, config, out_dir: str):
        super().__init__(config, out_dir)
        self.rank, self.world = rank_and_world()
        if self.retriever is not None:
            self.retriever.encode_windows = sharded_encode
        parts = nn.ModuleDict({"model": self.model})
        if self.keys is not None:
            parts["key_encoder"] = self.keys.encoder
        device_ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(_Step(self, parts), device_ids=device_ids, find_unused_parameters=True)

    def loss(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Whole-batch loss in value; in gradient, world x this rank's share (DDP averages)."""
        share = self.ddp(batch)
        whole = share.detach().clone()
        dist.all_reduce(whole)
        scaled = share * self.world
        return scaled + (whole - scaled).detach()

    def loss_share(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """This rank's share of Trainer.loss(batch) (the shares add up to it)."""
        local, weight = shard_batch(batch, self.rank, self.world)
        windows = self.spans[batch["span"]]
        shares = [masked_loss_share(hap_logits, gt_logits, window_slice(local, *self.data.windows[window]),
                                    window_slice(batch, *self.data.windows[window]))
                  for window, (hap_logits, gt_logits) in self.predictor.span_logits(
                      local, windows, self.config.retrieval.detach_reference)]
        loss = torch.stack(shares).mean()
        if self.keys is not None:
            n_queries = 2 * batch["tokens"].shape[0]
            loss = loss + self.config.retrieval.key_weight * self.key_loss(local, n_queries=n_queries)
        return loss * weight

    def save(self) -> None:
        if self.rank == 0:
            super().save()
        dist.barrier()
