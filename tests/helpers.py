"""Small helpers the tests share (fixtures are in conftest.py)."""
import subprocess
import sys
import tempfile

import torch


# The devices a device-parametrised test runs on: the CPU always, CUDA where present
# (the same Python code on both, only the device differs).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# A training run that takes seconds on the test cohort (tests/conftest.py).
TINY_TRAINING = ["--epochs", "2", "--window", "32", "--overlap", "8", "--dim", "16", "--layers", "1", "--heads", "2",
                 "--k", "4", "--key-flank", "16", "--context-sites", "12", "--half-width", "4", "--batch-size", "8",
                 "--steps-per-epoch", "3", "--val-fraction", "0.2"]


def record(pos, ref, alt, *genotypes, chrom="1", info="."):
    """One VCF record line with GT genotypes."""
    return "\t".join([chrom, str(pos), ".", ref, alt, ".", "PASS", info, "GT", *genotypes])


def run_module(module, *args):
    """Run ``python -m embrag_ext.<module> args`` as a user would: against the
    installed package (from a scratch directory, so that the source tree, which
    has no compiled extension in a regular install, does not shadow it)."""
    with tempfile.TemporaryDirectory() as scratch:
        return subprocess.run([sys.executable, "-m", f"embrag_ext.{module}", *map(str, args)],
                              capture_output=True, text=True, cwd=scratch)
