"""embrag_ext: retrieval-augmented transformer genotype imputation with the
retrieval done in a learned embedding space and the hot path in fused
C++/CUDA operators (``embrag_ext.ops``).

Importing the package is light: the compiled extension loads with
``embrag_ext.ops`` (or ``build_info()``), so the data-layer modules work
without it.
"""
import os

__version__ = "0.1.0"

# Idle OpenMP threads sleep instead of spinning (takes effect only if torch has
# not loaded yet; set OMP_WAIT_POLICY yourself to override). On a CPU shared
# with other jobs, spinning threads made a training step ~10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load_extension():
    """Import the compiled extension ``embrag_ext._C`` (registers torch.ops.embrag)."""
    import torch  # noqa: F401  (loads libc10/libtorch, which _C links against)

    try:
        from . import _C
    except ImportError as error:
        here = os.path.dirname(os.path.abspath(__file__))
        raise ImportError(
            f"embrag_ext's compiled extension is missing from {here}: in a checkout, build it with "
            "`pip install --no-build-isolation -e .`; after a regular `pip install .`, run Python "
            f"from outside the source tree ({error})") from error
    return _C


def build_info() -> dict:
    """How the fused-operator extension was built: the torch version it was
    compiled against, whether CUDA kernels are compiled and for which
    architectures, and the compiler versions."""
    return dict(load_extension().build_info())
