"""Which FAISS distribution embrag_ext requires: faiss-cpu, unless a GPU build
of FAISS is installed in the environment already, then that one.

Both kinds install the same module, ``faiss``: with faiss-cpu required beside
an installed faiss-gpu, pip would install both and one's files would overwrite
the other's, and uninstalling either then removes files the other needs
(measured with faiss-cpu 1.15.1 and faiss-gpu 1.15.1: after both and
``pip uninstall faiss-cpu``, ``import faiss`` loads without GPU support). An
extra (``pip install ".[gpu]"``) can only add a requirement, never drop
faiss-cpu, so the GPU install is: faiss-gpu first, then embrag_ext, whose build
sees it here (setup.py runs with the environment's site-packages on its path,
tools/build_backend.py) and requires it instead.
"""
from importlib import metadata
from typing import Callable

GPU_DISTRIBUTIONS = ("faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11")   # PyPI names of GPU builds


def is_installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def faiss_requirement(installed: Callable[[str], bool] = is_installed) -> str:
    """The first GPU FAISS distribution installed, else "faiss-cpu"."""
    return next((name for name in GPU_DISTRIBUTIONS if installed(name)), "faiss-cpu")
