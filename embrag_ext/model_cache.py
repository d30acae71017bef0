"""Models trained for a panel and an array, cached: imputation in one command.

``impute`` without ``--checkpoint`` asks :func:`cached_checkpoint` for a model
trained on this panel (file, region, read options) with these typed sites as
the array (array-aware training, the default settings otherwise). The first
call trains one into ``$EMBRAG_CACHE_DIR/models/<fingerprint>`` (written to a
temporary directory and renamed, so an interrupted training leaves nothing
half-made); later calls with the same panel file, options and typed sites
reuse it. A changed panel file (size or modification time) gets a new model.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .atomic import check_output_directory
from .checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint
from .config import CONFIG_VERSION, DataConfig, RunConfig
from .panel import Panel
from .panel_cache import atomic_directory, cache_root, file_fingerprint
from .progress import note
from .run_checks import usable_haplotypes
from .training import train


def model_dir(panel_path: str, data: DataConfig, typed_positions: np.ndarray) -> Path:
    """The cache directory of the model for this panel file, read options and typed sites."""
    key = {"config_version": CONFIG_VERSION, "panel": file_fingerprint(panel_path),
           "options": data.panel_options(), "typed": np.asarray(typed_positions, dtype=np.int64).tolist()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_root() / "models" / digest


def default_run_for(panel: Panel, data: DataConfig, device: str, amp: str) -> RunConfig:
    """The default settings on ``data`` (on ``device``, with ``amp``), with the window
    and K cut to what a small panel has (run_checks.py refuses more)."""
    defaults = RunConfig()
    window = min(data.window, panel.n_sites)
    k = max(1, min(defaults.retrieval.k, usable_haplotypes(panel)))
    return defaults.replace(data=dataclasses.replace(data, window=window, overlap=min(data.overlap, window - 1)),
                            retrieval=dataclasses.replace(defaults.retrieval, k=k),
                            train=dataclasses.replace(defaults.train, device=device, amp=amp))


def cached_checkpoint(panel_path: str, data: DataConfig, panel: Panel, typed: np.ndarray,
                      device: str, amp: str = "auto") -> Checkpoint:
    """The checkpoint of a model trained for ``panel`` with its ``typed`` sites (bool [S])
    as the array; trained now (default settings, on ``device`` with ``amp``) if not cached yet."""
    directory = model_dir(panel_path, data, panel.positions[typed])
    checkpoint_path = directory / CHECKPOINT_NAME
    n_typed = int(typed.sum())
    if checkpoint_path.is_file():
        note(f"no --checkpoint: reusing the model trained for this panel and these {n_typed} typed sites "
             f"({directory})")
    else:
        check_output_directory(str(directory.parent), "no --checkpoint: model cache")
        note(f"no --checkpoint: training a model for this panel and these {n_typed} typed sites "
             f"(array-aware, default settings; cached in {directory} for next time)")
        sites_file = directory.with_name(directory.name + ".array_sites.txt")
        sites_file.parent.mkdir(parents=True, exist_ok=True)
        sites_file.write_text("".join(f"{panel.chrom}\t{pos}\n" for pos in panel.positions[typed]))
        data = dataclasses.replace(data, panel=os.path.abspath(panel_path), array=str(sites_file))
        config = default_run_for(panel, data, device, amp)
        with atomic_directory(directory) as staging:
            train(config, str(staging))
    return load_checkpoint(str(checkpoint_path), device)
