"""Reading the checkpoint that ``python -m embrag_ext.train`` writes
(``checkpoint.pt``: model weights, optimizer and retriever state, the run's
options, windows and sample split), with one-line errors for a user."""
from __future__ import annotations

import pickle

import torch

from .errors import InputError

REQUIRED_KEYS = ("args", "model_config", "model", "windows", "panel_positions")


def load_checkpoint(path: str, device: str, flag: str = "--checkpoint") -> dict:
    """The checkpoint at ``path`` on ``device``; InputError naming ``flag`` if
    the file is missing, unreadable or not an embrag_ext checkpoint."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise InputError(f"{flag} {path}: not a readable embrag_ext checkpoint "
                         f"({str(error).splitlines()[0]})") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise InputError(f"{flag} {path}: not an embrag_ext checkpoint (missing {', '.join(missing)}); "
                         "use the checkpoint.pt that python -m embrag_ext.train writes")
    return checkpoint
