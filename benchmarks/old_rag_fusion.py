"""The rag_fusion op of commit OLD_COMMIT, the last one with the two-stage
kernels (a [B, L, K] stage 1, and a backward that writes [B, L, heads, K] and
[B, L, heads, V] coefficient tensors reduced by ATen einsums), built from
that commit's sources into a module of its own, torch.ops.embrag_old.*: the
benchmarks time today's backward against it in the same run. CPU kernels
only; built once into build/ (about a minute on 2 cores), then reused.
"""
import subprocess
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

OLD_COMMIT = "cdc95fc"
ROOT = Path(__file__).resolve().parent.parent


def old_sources(src):
    """The old commit's csrc and python/ in src; its host-compiled sources, less the pybind module."""
    if not (src / "csrc" / "sources.txt").exists():
        src.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD_COMMIT, "csrc", "python"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        registration = src / "python" / "registration.cpp"
        registration.write_text(registration.read_text().replace("(embrag,", "(embrag_old,"))
    lines = (line.split("#", 1)[0].split() for line in (src / "csrc" / "sources.txt").read_text().splitlines())
    return [str(src / path) for kind, path in (line for line in lines if line)
            if kind == "common" and path != "python/module.cpp"]


def load_old_rag_fusion():
    """torch.ops.embrag_old, with rag_fusion and rag_fusion_backward of OLD_COMMIT
    (signature: q, topk, ref_tokens, tok_k, tok_v, site_k, site_v, dist, beta,
    q_tokens, observed, alpha, n_heads, half_width; K <= 64); skips the
    benchmark when the commit or a compiler is not at hand."""
    build = ROOT / "build" / f"rag_fusion_{OLD_COMMIT}"
    try:
        sources = old_sources(build / "src")
        cpp_extension.load(name=f"embrag_old_{OLD_COMMIT}", sources=sources, extra_cflags=["-O3"],
                           build_directory=str(build), is_python_module=False, verbose=False)
    except (OSError, subprocess.CalledProcessError, RuntimeError) as error:
        pytest.skip(f"cannot build rag_fusion of commit {OLD_COMMIT}: {error}")
    return torch.ops.embrag_old
