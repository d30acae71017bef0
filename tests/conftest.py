"""Fixtures the tests share: small VCFs, a simulated cohort, a tiny model trained on it."""
import os
import shutil

import numpy as np
import pytest

from helpers import TINY_TRAINING
from embrag_ext import train
from embrag_ext.simulate import simulate_cohort
from embrag_ext.vcf_writer import write_phased_vcf

HEADER = ("##fileformat=VCFv4.2\n"
          "##contig=<ID=1>\n##contig=<ID=2>\n"
          '##INFO=<ID=AF,Number=A,Type=Float,Description="ALT frequency">\n'
          '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n')


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Point $EMBRAG_CACHE_DIR at a fresh directory; returns it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMBRAG_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def make_vcf(tmp_path):
    """make_vcf(name, records, samples=("s1", "s2")) -> path of a plain-text VCF.

    records: VCF lines from CHROM to the last sample column (see helpers.record()).
    """
    def write(name, records, samples=("s1", "s2")):
        path = tmp_path / name
        columns = "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples])
        path.write_text(HEADER + columns + "\n" + "".join(line + "\n" for line in records))
        return str(path)
    return write


@pytest.fixture
def random_panel(tmp_path):
    """A 40-site x 6-sample phased panel.vcf.gz; returns (path, haplotypes uint8 [40, 12])."""
    rng = np.random.default_rng(7)
    haplotypes = (rng.random((40, 12)) < 0.3).astype(np.uint8)
    positions = np.arange(1, 41) * 100
    path = str(tmp_path / "panel.vcf.gz")
    write_phased_vcf(path, "1", positions, ["A"] * 40, ["C"] * 40, [f"p{i}" for i in range(6)], haplotypes)
    return path, haplotypes


@pytest.fixture(scope="session")
def cohort_dir(tmp_path_factory):
    """A small simulated cohort (80 panel, 10 target samples, 200 kb); read-only."""
    out = tmp_path_factory.mktemp("cohort")
    simulate_cohort(str(out), seed=3, n_panel=80, n_target=10, length=200_000, array_every=5)
    return str(out)


@pytest.fixture
def cohort(cohort_dir, tmp_path):
    """A private copy of the simulated cohort; returns {"panel", "truth", "targets": path}."""
    out = tmp_path / "cohort"
    shutil.copytree(cohort_dir, out)
    return {name: os.path.join(out, f"{name}.vcf.gz") for name in ("panel", "truth", "targets")}


@pytest.fixture(scope="session")
def trained(cohort_dir, tmp_path_factory):
    """A tiny model trained on the test cohort's panel: {"checkpoint", "panel", "truth", "targets"}; read-only."""
    run = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBRAG_CACHE_DIR", str(run / "cache"))
        train.main(["--panel", os.path.join(cohort_dir, "panel.vcf.gz"), "--out", str(run), *TINY_TRAINING,
                    "--epochs", "1"])
    return {"checkpoint": str(run / "checkpoint.pt"),
            **{name: os.path.join(cohort_dir, f"{name}.vcf.gz") for name in ("panel", "truth", "targets")}}
