"""embrag_ext: retrieval-augmented transformer genotype imputation with the
retrieval done in a learned embedding space and the hot path in fused
C++/CUDA operators (``embrag_ext.ops``).

Importing the package is light: the compiled extension loads with
``embrag_ext.ops`` (or ``build_info()``), so the data-layer modules work
without it.
"""

__version__ = "0.1.0"


def build_info() -> dict:
    """How the fused-operator extension was built: the torch version it was
    compiled against, whether CUDA kernels are compiled and for which
    architectures, and the compiler versions."""
    import torch  # noqa: F401  (loads libc10/libtorch, which _C links against)

    from . import _C

    return dict(_C.build_info())
