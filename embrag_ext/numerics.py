"""Numerical safety of a training step: gradient clipping and a stop on a NaN or Inf.

After the backward pass, :func:`loss_and_grad_norm` reads the loss and the
gradients' total norm in one host synchronisation (the step read the loss
anyway), clipping the gradients to ``--clip-grad`` when it is set. If either
is NaN or Inf the optimizer must not step: the trainer raises
:class:`NonFiniteLoss`, whose one-line message says where it happened, which
checkpoint is kept (the last one written, at the end of an epoch whose every
step was finite) and what to change.
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Optional, Tuple

import torch

from .errors import InputError


class NonFiniteLoss(InputError):
    """Training met a NaN or Inf loss or gradient and stopped (exit status 2
    from the command line), keeping the last checkpoint written."""


def loss_and_grad_norm(loss: torch.Tensor, parameters: Iterable[torch.Tensor],
                       clip_grad: float) -> Tuple[float, float]:
    """(loss, total 2-norm of the gradients before clipping), as floats read in one
    synchronisation. With ``clip_grad`` > 0 the gradients are first scaled down to
    that total norm (torch.nn.utils.clip_grad_norm_); 0 leaves them as they are."""
    parameters = [p for p in parameters if p.grad is not None]
    if clip_grad > 0:
        norm = torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
    value, norm = torch.stack([loss.detach().float(), norm.float().to(loss.device)]).tolist()
    return value, norm


def is_finite_step(loss: float, grad_norm: float) -> bool:
    return math.isfinite(loss) and math.isfinite(grad_norm)


def non_finite_loss(loss: float, grad_norm: float, epoch: int, step: int, checkpoint: Optional[str],
                    lr: float) -> NonFiniteLoss:
    """The error of a step whose loss or gradient norm is not finite. ``checkpoint``:
    the path of the checkpoint kept, or None if the run has written none yet."""
    what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {grad_norm}"
    kept = (f"the last good checkpoint, {checkpoint}, is kept" if checkpoint and os.path.isfile(checkpoint)
            else "no checkpoint had been written yet")
    return NonFiniteLoss(f"training stopped at epoch {epoch}, step {step}: {what}; {kept}; "
                         f"train again with a lower --lr (was {lr:g}) or with --clip-grad NORM (e.g. 1)")
