"""The demo cohort: what ``python -m embrag_ext.train`` uses when given no data.

``demo_cohort()`` simulates (once) a small cohort with simulate.py: 500 panel
samples (1,000 haplotypes), 50 targets, 1 Mb (a few thousand sites), an array
of one site in 10, seed 1. It is cached in ``$EMBRAG_CACHE_DIR/demo`` (default
``~/.cache/embrag_ext/demo``), written to a temporary directory and renamed, so
a crash or a concurrent run never leaves a partial cohort.
"""
from __future__ import annotations

from typing import Dict

from .panel_cache import atomic_directory, cache_root
from .simulate import simulate_cohort

DEMO_VERSION = 1
DEMO_SETTINGS = dict(seed=1, n_panel=500, n_target=50, length=1_000_000, array_every=10)


def demo_cohort() -> Dict[str, str]:
    """Paths ``{"panel", "truth", "targets"}`` of the demo cohort, simulated on first use."""
    cohort_dir = cache_root() / "demo" / f"v{DEMO_VERSION}"
    paths = {name: str(cohort_dir / f"{name}.vcf.gz") for name in ("panel", "truth", "targets")}
    if not cohort_dir.is_dir():
        with atomic_directory(cohort_dir) as staging:
            simulate_cohort(str(staging), **DEMO_SETTINGS)
    return paths
