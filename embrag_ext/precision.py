"""Whether the model runs under bf16 autocast (``--amp``).

``auto`` turns it on where bf16 matrix products are fast: CUDA, and CPUs with
bf16 instructions (AMX or AVX512-BF16), where it roughly halves the time of an
imputation batch. The copying posterior and the losses stay float32 either
way (the fused ops accumulate in float32); only the model's layers run in bf16.
"""
from __future__ import annotations

import functools

import torch

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")   # /proc/cpuinfo flags of fast bf16 products


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """True on a CPU that advertises AMX-BF16 or AVX512-BF16 (Linux's /proc/cpuinfo)."""
    return read_fast_bf16("/proc/cpuinfo")


def read_fast_bf16(cpuinfo: str) -> bool:
    """Whether the first ``flags`` line of a cpuinfo file names a fast-bf16 flag (False if unreadable)."""
    try:
        with open(cpuinfo) as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def use_autocast(amp: str, device: torch.device) -> bool:
    """--amp (auto, bf16, off) on ``device`` -> whether to autocast the model to bf16."""
    if amp == "auto":
        return device.type == "cuda" or cpu_has_fast_bf16()
    return amp == "bf16"
