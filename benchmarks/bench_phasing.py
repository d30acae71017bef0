"""Pre-phasing unphased targets: switch error, time and imputation accuracy per phaser.

    python benchmarks/bench_phasing.py [--work DIR] [--checkpoint runs/X/checkpoint.pt] [--threads N]
                                       [--n-panel N] [--array-every N] [--out result.json]

On a simulated cohort (``python -m embrag_ext.simulate --out DIR/cohort --seed 1``:
by default 500 panel samples, 50 targets typed at every 10th site of 1 Mb, as
in the README; a smaller panel and a sparser array make phasing harder), the targets are unphased (every ``|`` written ``/``) and run through
``python -m embrag_ext.impute --phaser P`` for each installed phaser P
(Eagle2, SHAPEIT4, Beagle). Measured per phaser:

- switch error rate of the phased typed genotypes against the true
  haplotypes: phase switches between consecutive heterozygous sites of a
  sample, over all (sample, consecutive heterozygous pair);
- the time phasing takes (``phasing.seconds`` of the run's QC report: writing
  the inputs, the phaser, reading back) and the whole command's wall time;
- imputation accuracy (dosage r2 and concordance by MAF bin, evaluate.py) on
  the sites absent from the target file.

References in the same table: ``impute`` on the true-phase targets (no
phasing), and Beagle 5.4's joint phasing and imputation of the unphased
targets (``beagle gt=unphased ref=panel out=...``). Without ``--checkpoint``
the model is trained first with the README's default command
(``python -m embrag_ext.train --panel DIR/cohort/panel.vcf.gz --out DIR/run``).
"""
from __future__ import annotations

import embrag_ext  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch loads)

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np

from embrag_ext import evaluate, phasing
from embrag_ext.metrics import switch_error_rate
from embrag_ext.panel_vcf import load_panel
from embrag_ext.simulate import simulate_cohort
from embrag_ext.vcf_io import read_imputed
from embrag_ext.vcf_writer import write_phased_vcf


def command(*args) -> float:
    """Run a command, stop on failure; returns its wall time in seconds."""
    began = time.perf_counter()
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, args))}\n{result.stderr[-2000:]}")
    return time.perf_counter() - began


def scores(truth: str, imputed: str, panel: str, typed: str) -> Dict[str, object]:
    args = argparse.Namespace(truth=truth, panel=panel, typed=typed)
    report = evaluate.evaluate(args, imputed)
    return {"r2": report["dosage"]["all"]["aggregate_r2"],
            "r2_by_maf": {b["bin"]: b["aggregate_r2"] for b in report["dosage"]["bins"]},
            "concordance": report["dosage"]["all"]["concordance"], "sites": report["n_sites_evaluated"]}


def typed_switch_error(imputed: str, truth: str) -> float:
    calls, true = read_imputed(imputed), read_imputed(truth)
    typed = ~calls.imputed
    rows = np.isin(true.positions, calls.positions[typed])
    return switch_error_rate(true.haplotypes[rows], calls.haplotypes[typed])


def impute_run(name: str, targets: str, paths: Dict[str, str], work: str, threads: int, phaser: str) -> dict:
    out = os.path.join(work, f"{name}.vcf.gz")
    seconds = command(sys.executable, "-m", "embrag_ext.impute", "--checkpoint", paths["checkpoint"],
                      "--panel", paths["panel"], "--targets", targets, "--out", out, "--threads", threads,
                      "--phaser", phaser, "--impute-all")
    qc = json.load(open(out[: -len(".vcf.gz")] + ".qc.json"))
    phasing_seconds = qc["phasing"].get("seconds", 0.0)
    return {"run": name, "command_seconds": seconds, "phasing_seconds": phasing_seconds,
            "switch_error": typed_switch_error(out, paths["truth"]),
            **scores(paths["truth"], out, paths["panel"], paths["targets"])}


def beagle_joint(unphased: str, paths: Dict[str, str], work: str, threads: int) -> dict:
    prefix = os.path.join(work, "beagle_joint")
    seconds = command("beagle", f"gt={unphased}", f"ref={paths['panel']}", f"out={prefix}",
                      f"nthreads={threads}", "seed=1")
    return {"run": "beagle joint phasing + imputation", "command_seconds": seconds, "phasing_seconds": None,
            "switch_error": typed_switch_error(prefix + ".vcf.gz", paths["truth"]),
            **scores(paths["truth"], prefix + ".vcf.gz", paths["panel"], paths["targets"])}


def prepare(work: str, checkpoint: str, n_panel: int, array_every: int) -> Dict[str, str]:
    """The cohort, an unphased copy of its targets and a checkpoint."""
    cohort = os.path.join(work, "cohort")
    paths = {name: os.path.join(cohort, f"{name}.vcf.gz") for name in ("panel", "truth", "targets")}
    if not os.path.exists(paths["targets"]):
        paths.update(simulate_cohort(cohort, seed=1, n_panel=n_panel, array_every=array_every))
    targets = load_panel(paths["targets"], use_cache=False)
    paths["unphased"] = os.path.join(work, "unphased.vcf.gz")
    write_phased_vcf(paths["unphased"], targets.chrom, targets.positions, targets.ref, targets.alt, targets.samples,
                     targets.haplotypes, ploidy=targets.ploidy, unphased=True)
    if checkpoint is None:
        checkpoint = os.path.join(work, "run", "checkpoint.pt")
        if not os.path.exists(checkpoint):
            print("training the model (python -m embrag_ext.train, README defaults) ...", flush=True)
            command(sys.executable, "-m", "embrag_ext.train", "--panel", paths["panel"], "--out",
                    os.path.dirname(checkpoint))
    paths["checkpoint"] = checkpoint
    return paths


def table(rows: List[dict]) -> str:
    bins = list(rows[0]["r2_by_maf"])
    lines = [f"{'run':<36}{'switch err':>11}{'phasing s':>10}{'command s':>10}{'r2':>8}"
             + "".join(f"{b:>9}" for b in bins)]
    for row in rows:
        phasing_time = "-" if row["phasing_seconds"] is None else f"{row['phasing_seconds']:.1f}"
        lines.append(f"{row['run']:<36}{row['switch_error']:>11.4f}{phasing_time:>10}{row['command_seconds']:>10.1f}"
                     f"{row['r2']:>8.4f}" + "".join(f"{row['r2_by_maf'][b]:>9.4f}" for b in bins))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="bench_phasing", help="working directory (cohort, outputs)")
    parser.add_argument("--checkpoint", help="a model trained on the cohort's panel (default: train one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-panel", type=int, default=500, help="panel samples of a new cohort")
    parser.add_argument("--array-every", type=int, default=10, help="targets typed at one site in N (new cohort)")
    parser.add_argument("--out", help="write the rows as JSON")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    paths = prepare(args.work, args.checkpoint, args.n_panel, args.array_every)
    rows = [impute_run("true phase (no phasing)", paths["targets"], paths, args.work, args.threads, "none")]
    for name in phasing.PHASERS:
        if phasing._executable(name) is None:
            print(f"{name}: not installed ({phasing.INSTALL[name]}), not measured")
            continue
        rows.append(impute_run(f"unphased, --phaser {name}", paths["unphased"], paths, args.work, args.threads, name))
    if shutil.which("beagle"):
        rows.append(beagle_joint(paths["unphased"], paths, args.work, args.threads))
    print(table(rows))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
