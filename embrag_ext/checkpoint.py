"""The checkpoint that training writes (``checkpoint.pt``) and imputation and
``--resume`` read: the run's config, model weights, optimizer and retriever
state, where training stands, the sample split, windows and panel sites.

On disk it is a dict of plain values (the config as ``RunConfig.to_dict()``)
in torch's zip format; in memory a :class:`Checkpoint`. Writing goes through
atomic.py (a temporary file, synced and renamed: a killed run leaves the
previous checkpoint). Reading checks every record's CRC-32 first (torch
itself does not, so flipped bytes in the weights would load silently) and
gives one-line errors for a user, as do :func:`check_model_weights` (weights
of another model size or version) and :func:`check_panel` (another panel).
"""
from __future__ import annotations

import dataclasses
import io
import pickle
import zipfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .atomic import atomic_output
from .config import RunConfig, run_config_from_checkpoint
from .errors import InputError
from .model import ImputationModel
from .panel import Panel

CHECKPOINT_NAME = "checkpoint.pt"   # in a training run's output directory
REQUIRED_KEYS = ("model", "windows", "panel_positions")
ZIP_MAGIC = b"PK\x03\x04"             # how torch's checkpoint format (a zip archive) begins


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
    """Write ``checkpoint`` to ``path`` atomically (atomic.py): a failed or killed
    write leaves the file that was there before."""
    stored = {field.name: getattr(checkpoint, field.name) for field in dataclasses.fields(checkpoint)}
    stored["config"] = checkpoint.config.to_dict()
    serialized = io.BytesIO()   # torch.save's own file writes fail with an opaque RuntimeError on a full disk
    torch.save(stored, serialized)
    with atomic_output(path) as temporary, open(temporary, "wb") as handle:
        handle.write(serialized.getbuffer())


def check_archive(path: str, source: str) -> None:
    """InputError naming ``source`` if ``path`` is a damaged zip archive (torch's
    checkpoint format): truncated, or a record whose CRC-32 does not match. Other
    files (missing, not a zip) are left to torch.load to describe."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(ZIP_MAGIC))
    except OSError:
        return
    if magic != ZIP_MAGIC:
        return
    if not zipfile.is_zipfile(path):
        raise InputError(f"{source}: a truncated checkpoint (a zip archive without its end); "
                         "copy it again or train again")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise InputError(f"{source}: a damaged checkpoint ({error})") from None
    if damaged is not None:
        raise InputError(f"{source}: a corrupt checkpoint (record {damaged} fails its CRC-32 check); "
                         "copy it again or train again")


def load_checkpoint(path: str, device: str, flag: str = "--checkpoint") -> Checkpoint:
    """The checkpoint at ``path`` with tensors on ``device``; InputError naming
    ``flag`` if the file is missing, truncated, corrupt or not an embrag_ext
    checkpoint. Checkpoints of embrag_ext 0.1 (options stored as ``args``) are read too."""
    source = f"{flag} {path}"
    check_archive(path, source)
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


def weight_differences(stored: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor]) -> List[str]:
    """What keeps ``stored`` weights from loading where ``expected`` ones go: missing
    and unexpected names, and shapes that differ (the first of each), as phrases."""
    missing = [name for name in expected if name not in stored]
    unexpected = [name for name in stored if name not in expected]
    reshaped = [name for name in expected if name in stored and tuple(stored[name].shape) != tuple(expected[name].shape)]
    phrases = []
    if missing:
        phrases.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if unexpected:
        phrases.append(f"{len(unexpected)} unknown, e.g. {unexpected[0]}")
    if reshaped:
        name = reshaped[0]
        phrases.append(f"{len(reshaped)} of another shape, e.g. {name} {list(stored[name].shape)} "
                       f"instead of {list(expected[name].shape)}")
    return phrases


def check_model_weights(checkpoint: Checkpoint, source: str) -> None:
    """InputError naming ``source`` unless the checkpoint's weights fit the model its
    config describes in this version of embrag_ext (same names and shapes). The model
    is built on the CPU with the random state restored afterwards (building it on the
    meta device would cost seconds of one-time set-up in every imputation)."""
    with torch.random.fork_rng(devices=[]):
        expected = ImputationModel(checkpoint.config.model, checkpoint.config.copying).state_dict()
    stored = checkpoint.model if isinstance(checkpoint.model, dict) else {}
    differences = weight_differences(stored, expected)
    if differences:
        raise InputError(f"{source}: its weights do not fit the model its config describes "
                         f"({'; '.join(differences)}): a checkpoint of another embrag_ext version or "
                         "model size; train the model again with this version")


def check_panel(panel: Panel, checkpoint: Checkpoint) -> None:
    """The model's windows are over the training panel's sites: require the same sites."""
    trained = np.asarray(checkpoint.panel_positions)
    if panel.n_sites != len(trained) or not np.array_equal(panel.positions, trained):
        raise InputError(f"{panel.source}: its {panel.n_sites} sites differ from the {len(trained)} "
                         "sites the model was trained on (use the training panel and region)")
