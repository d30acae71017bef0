"""Memory over a long training run: does the resident set stay flat?

    python benchmarks/bench_long_run.py [--copying on|off] [--epochs 20] [--steps-per-epoch 10] [--work DIR]

Trains the training CLI's run (``python -m embrag_ext.train``, a small model)
on a simulated cohort of 80 panel samples over 200 kb (576 sites, made in
``--work`` or a temporary directory) for ``--epochs`` epochs, and reads the
process's resident set (VmRSS, /proc/self/status) after every epoch's
checkpoint and after every refresh of the FAISS keys. ``--copying off`` is the
FAISS retrieval mode, whose keys are refreshed at the start of every epoch
(``--refresh epoch``: 20 epochs, 20 refreshes with the initial one); the
default copying mode has no index to refresh and is measured per epoch only.

The growth is the RSS after the last epoch over the RSS after the first
(both after a checkpoint: the allocator's first-epoch warm-up is in the base,
and what a long run keeps adding is in the growth); the peak is the largest
RSS seen. Prints one line per epoch and a summary line:

    copying off: RSS 412.3 MiB after epoch 1, 415.0 MiB after epoch 20 (growth +0.65%), peak 416.2 MiB, 20 refreshes
"""
from __future__ import annotations

import embrag_ext  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch loads, as the CLIs run)

import argparse
import os
import tempfile
from typing import Dict, List

from embrag_ext import train, training
from embrag_ext.simulate import simulate_cohort

MODEL = ["--dim", "32", "--layers", "1", "--heads", "2", "--window", "64", "--overlap", "16", "--k", "8",
         "--key-flank", "32", "--context-sites", "32", "--batch-size", "8", "--val-fraction", "0.2"]


def rss_mib() -> float:
    """The resident set of this process, MiB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def record_rss(samples: Dict[str, List[float]]) -> None:
    """Patch the trainer to append the RSS after each checkpoint and each refresh."""
    save, refresh = training.Trainer.save, training.Trainer.refresh

    def saved(self):
        save(self)
        samples["epochs"].append(rss_mib())
        print(f"epoch {self.epoch}: RSS {samples['epochs'][-1]:.1f} MiB", flush=True)

    def refreshed(self, why):
        refresh(self, why)
        if self.retriever is not None:
            samples["refreshes"].append(rss_mib())
    training.Trainer.save, training.Trainer.refresh = saved, refreshed


def summary(copying: str, samples: Dict[str, List[float]]) -> str:
    first, last = samples["epochs"][0], samples["epochs"][-1]
    peak = max(samples["epochs"] + samples["refreshes"])
    return (f"copying {copying}: RSS {first:.1f} MiB after epoch 1, {last:.1f} MiB after epoch "
            f"{len(samples['epochs'])} (growth {100 * (last / first - 1):+.2f}%), peak {peak:.1f} MiB, "
            f"{len(samples['refreshes'])} refreshes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copying", choices=("on", "off"), default="on")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--steps-per-epoch", type=int, default=10)
    parser.add_argument("--work", help="directory for the cohort and the run (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="embrag-long-run-")
    cohort = simulate_cohort(os.path.join(work, "cohort"), seed=3, n_panel=80, n_target=10, length=200_000,
                             array_every=5)
    samples: Dict[str, List[float]] = {"epochs": [], "refreshes": []}
    record_rss(samples)
    train.main(["--panel", cohort["panel"], "--out", os.path.join(work, f"run-copying-{args.copying}"), *MODEL,
                "--copying", args.copying, "--refresh", "epoch", "--epochs", str(args.epochs),
                "--steps-per-epoch", str(args.steps_per_epoch)])
    print(summary(args.copying, samples), flush=True)


if __name__ == "__main__":
    main()
