"""The checkpoint that training writes (``checkpoint.pt``) and imputation and
``--resume`` read: the run's config, model weights, optimizer and retriever
state, where training stands, the sample split, windows and panel sites.

On disk it is a dict of plain values (the config as ``RunConfig.to_dict()``);
in memory a :class:`Checkpoint`. Writing goes through a temporary file,
flushed and renamed; reading gives one-line errors for a user.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .config import RunConfig, run_config_from_checkpoint
from .errors import InputError

CHECKPOINT_NAME = "checkpoint.pt"   # in a training run's output directory
REQUIRED_KEYS = ("model", "windows", "panel_positions")


@dataclass
class Checkpoint:
    config: RunConfig
    model: Dict[str, torch.Tensor]           # model state dict
    windows: np.ndarray                      # int64 [W, 2] site ranges of the training panel
    panel_positions: np.ndarray              # int64 [S] positions of the training panel's sites
    optimizer: Optional[Dict[str, Any]] = None
    retriever: Optional[Dict[str, Any]] = None
    epoch: int = 0
    step: int = 0
    history: List[dict] = dataclasses.field(default_factory=list)
    train_samples: List[str] = dataclasses.field(default_factory=list)
    val_samples: List[str] = dataclasses.field(default_factory=list)
    array_positions: Optional[np.ndarray] = None   # int64: the array's sites (array-aware training)
    keys: Optional[Dict[str, Any]] = None          # learned keys: live and snapshot key encoders


def write_checkpoint(path: str, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` through a temporary file that is flushed and renamed."""
    stored = {field.name: getattr(checkpoint, field.name) for field in dataclasses.fields(checkpoint)}
    stored["config"] = checkpoint.config.to_dict()
    temporary = path + ".tmp"
    with open(temporary, "wb") as handle:
        torch.save(stored, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def load_checkpoint(path: str, device: str, flag: str = "--checkpoint") -> Checkpoint:
    """The checkpoint at ``path`` with tensors on ``device``; InputError naming
    ``flag`` if the file is missing, unreadable or not an embrag_ext checkpoint.
    Checkpoints of embrag_ext 0.1 (options stored as ``args``) are read too."""
    source = f"{flag} {path}"
    try:
        stored = torch.load(path, map_location=device, weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise InputError(f"{source}: not a readable embrag_ext checkpoint "
                         f"({str(error).splitlines()[0]})") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(stored, dict) or key not in stored]
    if missing:
        raise InputError(f"{source}: not an embrag_ext checkpoint (missing {', '.join(missing)}); "
                         "use the checkpoint.pt that python -m embrag_ext.train writes")
    config = run_config_from_checkpoint(stored, source)
    known = {field.name for field in dataclasses.fields(Checkpoint)} - {"config"}
    return Checkpoint(config=config, **{key: value for key, value in stored.items() if key in known})
