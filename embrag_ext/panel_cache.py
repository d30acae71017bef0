"""On-disk cache of parsed reference panels (numpy .npy files).

An entry is a directory named by a hash of everything the parse depends on:
the VCF's absolute path, size and modification time (ns), the load options and
:data:`FORMAT_VERSION`. A changed VCF therefore gets a new key and is never
served stale (old entries are left behind; delete the cache directory to
reclaim space). Entries are written to a temporary directory and renamed into
place, so a reader never sees a half-written entry. Haplotypes are loaded with
``mmap_mode="r"``: a reload costs the time to read the small arrays only.

This module knows arrays and a JSON dict, not the Panel class (see panel.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

# Bump when the meaning or layout of cached arrays changes.
FORMAT_VERSION = 2   # 2: per-sample ploidy
META_FILE = "meta.json"
MMAP_ARRAYS = ("haplotypes",)


def cache_root() -> Path:
    """``$EMBRAG_CACHE_DIR`` if set, else ``~/.cache/embrag_ext``."""
    return Path(os.environ.get("EMBRAG_CACHE_DIR") or Path.home() / ".cache" / "embrag_ext")


def default_cache_dir() -> Path:
    """Where parsed panels go by default: ``<cache_root>/panels``."""
    return cache_root() / "panels"


def file_fingerprint(path: str) -> Dict[str, object]:
    """Absolute path, size and mtime (ns) of a file: changes when it is rewritten."""
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def entry_dir(cache_dir: Optional[os.PathLike], vcf_path: str, options: Dict[str, object]) -> Path:
    """The cache directory for ``vcf_path`` parsed with ``options`` (JSON-able)."""
    key = {"version": FORMAT_VERSION, "vcf": file_fingerprint(vcf_path), "options": options}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return Path(cache_dir or default_cache_dir()) / digest


def read_entry(entry: Path) -> Optional[Tuple[Dict[str, np.ndarray], Dict[str, object]]]:
    """``(arrays, meta)`` of a complete entry, or None if absent or unreadable."""
    try:
        meta = json.loads((entry / META_FILE).read_text())
        arrays = {name: np.load(entry / f"{name}.npy",
                                mmap_mode="r" if name in MMAP_ARRAYS else None)
                  for name in meta["arrays"]}
    except (OSError, ValueError, KeyError):
        return None
    return arrays, meta


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``target``; when the block succeeds,
    rename it to ``target``. If another process created ``target`` first, its
    copy is kept. On error nothing is left behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        yield staging
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_entry(entry: Path, arrays: Dict[str, np.ndarray], meta: Dict[str, object]) -> None:
    """Write an entry atomically (see :func:`atomic_directory`)."""
    with atomic_directory(entry) as staging:
        for name, array in arrays.items():
            np.save(staging / f"{name}.npy", np.asarray(array), allow_pickle=False)
        (staging / META_FILE).write_text(json.dumps({**meta, "arrays": sorted(arrays)}))
