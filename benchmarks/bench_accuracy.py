"""Imputation accuracy next to Beagle 5.4 and Minimac4, on simulated cohorts.

    python benchmarks/bench_accuracy.py [--quick] [--out DIR] [--markdown PATH] [--cohorts constant,admix,ooa]
                                        [--seeds 1,2] [--modes embedding,token,none] [--no-ablation]
                                        [--ablation hmm-alone,no-transformer,templates-256,no-array,seed-design]
                                        [--threads 2] [--fresh]

Per cohort (a demography and a seed; simulated once, cached in DIR/cohorts):

- Beagle 5.4 (``beagle ref= gt= out=``) and Minimac4 (reference compressed once
  to .msav, untimed, as a panel is prepared once) impute the targets;
- embrag_ext trains on the panel with the targets' array (``--array``) in the
  modes ``embedding`` (the default), ``token`` and ``none``, then imputes;
- all three get the same input: every typed site as given (``impute
  --trust-strand``; the simulated targets are on the panel's strand) and
  every panel site imputed (``--impute-all``);
- every output is scored the same way on the untyped sites (evaluate.py):
  aggregate dosage r2 per MAF bin of the panel, NRD, the seed's ALT-F1
  rare / common, and the tool's own r2 estimate (DR2 / R2) beside the true
  per-site r2 per bin; train and impute wall time (``--threads`` cores for
  every tool).

On the first cohort, an ablation: the untrained HMM (copying posterior over
every panel haplotype, Beagle's default rates), the HMM with learned rates
and fusion but no transformer block, 256 selected templates instead of all,
random array-like training patterns instead of the array, and the seed's
design (FAISS neighbours, no copying posterior).

Writes the tables as a markdown section (``--markdown``, default
DIR/accuracy.md), every figure beside it (the same name, .json) and
DIR/r2_by_maf_<cohort>.png. Each tool's result on a cohort is kept in its run
directory (result.json, with the command that made it) and reused by a later
invocation with the same options unless ``--fresh``: an interrupted run
continues where it stopped. ``--quick`` runs small cohorts and short training,
to check that the script works (its figures mean little).
"""
from __future__ import annotations

import embrag_ext  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch loads, as the CLIs run)

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from embrag_ext import evaluate
from embrag_ext.metrics import MAF_BINS, bin_label
from embrag_ext.simulate import simulate_cohort

COHORTS = {  # issue 10: about 1,000 panel samples, 100 targets, 2 Mb
    "constant": dict(model="constant", n_panel=1000, n_target=100, length=2_000_000, array_every=20,
                     array_maf=0.0),
    "admix": dict(model="admix", n_panel=900, n_target=100, length=2_000_000, array_every=10, array_maf=0.05),
    "ooa": dict(model="ooa", n_panel=1000, n_target=100, length=2_000_000, array_every=10, array_maf=0.05),
    # the README's worked example: `python -m embrag_ext.simulate --out cohort --seed 1` (its defaults)
    "readme": dict(model="constant", n_panel=500, n_target=50, length=1_000_000, array_every=10, array_maf=0.0),
}
QUICK_SIZE = dict(n_panel=120, n_target=12, length=250_000)
QUICK_TRAIN = ["--epochs", "1", "--steps-per-epoch", "4", "--batch-size", "4"]
MODES = {"embedding": [], "token": ["--mode", "token"], "none": ["--mode", "none"]}
ABLATION = {  # --ablation id: (row label, options)
    "hmm-alone": ("HMM alone (untrained, Beagle's rates)", ["--epochs", "0", "--fixed-rates"]),
    "no-transformer": ("HMM + fusion, no transformer block", ["--layers", "0"]),
    "templates-256": ("256 selected templates", ["--templates", "256"]),
    "no-array": ("random patterns, not the array", ["--no-array"]),
    "seed-design": ("seed design (FAISS neighbours, no copying)", ["--copying", "off"]),
}
QUICK_ABLATION = {"templates-256": ["--templates", "64"]}   # under --quick: its panel has 240 haplotypes
BINS = [bin_label(low, high) for low, high in MAF_BINS]
# Beagle and Minimac4 take every typed site as given and impute every panel site: so does embrag_ext here
SAME_INPUT_AS_BEAGLE = ["--trust-strand", "--impute-all"]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/accuracy", help="output directory")
    p.add_argument("--cohorts", default="constant,admix", help="comma-separated: " + ", ".join(COHORTS))
    p.add_argument("--seeds", default="1,2", help="comma-separated simulation seeds per demography")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated embrag_ext modes: " + ", ".join(MODES))
    p.add_argument("--markdown", help="the markdown section to write (default OUT/accuracy.md)")
    p.add_argument("--fresh", action="store_true", help="run every tool again instead of reusing results")
    p.add_argument("--quick", action="store_true", help="small cohorts, short training: checks the script")
    p.add_argument("--no-ablation", action="store_true", help="skip the ablation on the first cohort")
    p.add_argument("--ablation", default=",".join(ABLATION), help="comma-separated ablation variants: "
                                                                   + ", ".join(ABLATION))
    p.add_argument("--threads", type=int, default=2, help="cores every tool may use")
    args = p.parse_args(argv)
    for option, known in (("cohorts", COHORTS), ("modes", MODES), ("ablation", ABLATION)):
        unknown = set(getattr(args, option).split(",")) - set(known)
        if unknown:
            p.error(f"--{option}: unknown {', '.join(sorted(unknown))}")
    return args


def run(command: List[str], log: Path, threads: int) -> float:
    """Run a command (its output to ``log``); the wall-clock seconds it took. Fails loudly."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    began = time.perf_counter()
    with open(log, "w") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}; see {log}")
    return seconds


def cohort_files(out: Path, demography: str, seed: int, quick: bool) -> Dict[str, str]:
    """The cohort's panel, targets and truth VCFs, simulated on first use."""
    directory = out / "cohorts" / f"{demography}-{seed}{'-quick' if quick else ''}"
    paths = {name: str(directory / f"{name}.vcf.gz") for name in ("panel", "targets", "truth")}
    if not all(os.path.exists(path) for path in paths.values()):
        settings = {**COHORTS[demography], **(QUICK_SIZE if quick else {})}
        simulate_cohort(str(directory), seed=seed, **settings)
    return paths


def score(files: Dict[str, str], imputed: str) -> dict:
    """evaluate.py's report of one imputed file on the cohort's untyped sites."""
    args = argparse.Namespace(truth=files["truth"], imputed=imputed, panel=files["panel"], typed=files["targets"])
    return evaluate.evaluate(args)


def reused(result_file: Path, command: List[str], fresh: bool, compute) -> dict:
    """``compute()`` (a tool's result), stored in ``result_file`` with ``command``;
    the stored result when it was made by the same command (unless ``fresh``)."""
    if not fresh and result_file.is_file():
        stored = json.loads(result_file.read_text())
        if stored.get("command") == command:
            return stored["result"]
    result = compute()
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps({"command": command, "result": result}))
    return result


def beagle(files: Dict[str, str], work: Path, threads: int) -> dict:
    seconds = run(["beagle", f"ref={files['panel']}", f"gt={files['targets']}", f"out={work / 'beagle'}",
                   f"nthreads={threads}"], work / "beagle.stdout", threads)
    return {"impute_seconds": seconds, "train_seconds": None, "report": score(files, str(work / "beagle.vcf.gz"))}


def minimac4(files: Dict[str, str], work: Path, threads: int) -> dict:
    reference = work / "panel.msav"
    run(["minimac4", "--compress-reference", files["panel"], "-o", str(reference)], work / "msav.stdout", threads)
    out = work / "minimac4.vcf.gz"
    seconds = run(["minimac4", str(reference), files["targets"], "-o", str(out), "-O", "vcf.gz", "-t", str(threads),
                   "--format", "GT,DS,GP"], work / "minimac4.stdout", threads)
    return {"impute_seconds": seconds, "train_seconds": None, "report": score(files, str(out))}


def run_directory(work: Path, name: str) -> Path:
    return work / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "").replace("'", "")


def embrag(files: Dict[str, str], work: Path, name: str, options: List[str], quick: bool, threads: int) -> dict:
    """Train (with the targets' array unless --no-array) and impute; timed."""
    run_dir = run_directory(work, name)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    array = [] if "--no-array" in options else ["--array", files["targets"]]
    train_options = [option for option in options if option != "--no-array"] + (QUICK_TRAIN if quick else [])
    train_seconds = run([sys.executable, "-m", "embrag_ext.train", "--panel", files["panel"], *array,
                         "--out", str(run_dir), *train_options], run_dir / "train.log", threads)
    out = run_dir / "imputed.vcf.gz"
    impute_seconds = run([sys.executable, "-m", "embrag_ext.impute", "--checkpoint", str(run_dir / "checkpoint.pt"),
                          "--panel", files["panel"], "--targets", files["targets"], "--out", str(out),
                          *SAME_INPUT_AS_BEAGLE, "--threads", str(threads)], run_dir / "impute.log", threads)
    return {"train_seconds": train_seconds, "impute_seconds": impute_seconds, "report": score(files, str(out))}


def summary(result: dict) -> dict:
    """The figures of one tool on one cohort that the tables show."""
    dosage, f1 = result["report"]["dosage"], result["report"].get("alt_f1", {})
    return {"r2": {b["bin"]: b["aggregate_r2"] for b in dosage["bins"]} | {"all": dosage["all"]["aggregate_r2"]},
            "nrd": dosage["all"]["nrd"],
            "f1_rare": f1.get("rare", {}).get("f1"), "f1_common": f1.get("common", {}).get("f1"),
            "estimated_r2": {b["bin"]: b["mean_estimated_r2"] for b in dosage["bins"]},
            "true_site_r2": {b["bin"]: b["mean_site_r2"] for b in dosage["bins"]},
            "n_sites": dosage["all"]["n_sites"],
            "train_seconds": result["train_seconds"], "impute_seconds": result["impute_seconds"]}


def cohort_table(title: str, rows: Dict[str, dict]) -> List[str]:
    header = ["tool", *[f"r2 {b}" for b in BINS], "r2 all", "NRD", "ALT-F1 rare / common", "train s", "impute s"]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for tool, row in rows.items():
        cells = [tool, *[_fmt(row["r2"][b]) for b in BINS], _fmt(row["r2"]["all"]), _fmt(row["nrd"]),
                 f"{_fmt(row['f1_rare'])} / {_fmt(row['f1_common'])}",
                 _fmt(row["train_seconds"], 0), _fmt(row["impute_seconds"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Estimated r2 (DR2 / R2) against the true per-site r2, mean per MAF bin:", "",
              "| tool | " + " | ".join(BINS) + " |", "|" + "---|" * (len(BINS) + 1)]
    for tool, row in rows.items():
        cells = [f"{_fmt(row['estimated_r2'][b], 3)} vs {_fmt(row['true_site_r2'][b], 3)}" for b in BINS]
        lines.append(f"| {tool} | " + " | ".join(cells) + " |")
    return lines + [""]


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def plot(title: str, rows: Dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(7, 4))
    for tool, row in rows.items():
        axes.plot(range(len(BINS)), [row["r2"][b] for b in BINS], marker="o", label=tool)
    axes.set_xticks(range(len(BINS)), BINS)
    axes.set_xlabel("MAF bin (panel)")
    axes.set_ylabel("aggregate dosage r2 (untyped sites)")
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    markdown = Path(args.markdown) if args.markdown else out / "accuracy.md"
    command = "python benchmarks/bench_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results, lines = {}, ["## Imputation accuracy next to Beagle 5.4 and Minimac4", "",
                          f"`{command.strip()}` (every tool on {args.threads} threads; {os.cpu_count()} cores, "
                          f"{platform.platform()}; {time.strftime('%Y-%m-%d')}). Aggregate dosage r2 per MAF bin "
                          "of the panel and NRD on the untyped sites; train and impute wall time in seconds.", ""]
    cohorts = [(demography, int(seed)) for demography in args.cohorts.split(",") for seed in args.seeds.split(",")]
    for index, (demography, seed) in enumerate(cohorts):
        name = f"{demography}-{seed}"
        files = cohort_files(out, demography, seed, args.quick)
        work = out / "runs" / name
        work.mkdir(parents=True, exist_ok=True)
        print(f"== {name}", flush=True)

        def tool(label: str, key: List[str], compute) -> dict:
            key = [*key, f"quick={args.quick}", f"threads={args.threads}"]
            return reused(run_directory(work, label) / "result.json", key, args.fresh, compute)

        rows = {"Beagle 5.4": tool("beagle", ["beagle"], lambda: beagle(files, work, args.threads)),
                "Minimac4": tool("minimac4", ["minimac4"], lambda: minimac4(files, work, args.threads))}
        for mode in args.modes.split(","):
            rows[f"embrag_ext {mode}"] = tool(mode, MODES[mode], lambda: embrag(
                files, work, mode, MODES[mode], args.quick, args.threads))
        results[name] = {label: summary(result) for label, result in rows.items()}
        lines += cohort_table(f"{name}: {COHORTS[demography]}", results[name])
        plot(name, results[name], out / f"r2_by_maf_{name}.png")
        lines += [f"![r2 by MAF, {name}]({os.path.relpath(out / f'r2_by_maf_{name}.png', markdown.parent)})", ""]
        if index == 0 and not args.no_ablation:
            ablation = {}
            for variant in args.ablation.split(","):
                label, options = ABLATION[variant]
                options = QUICK_ABLATION.get(variant, options) if args.quick else options
                ablation[label] = summary(tool(label, options, lambda: embrag(
                    files, work, label, options, args.quick, args.threads)))
            if "embrag_ext embedding" in results[name]:
                ablation["full model (embedding)"] = results[name]["embrag_ext embedding"]
            results[f"{name} ablation"] = ablation
            lines += cohort_table(f"Ablation on {name}", ablation)
        markdown.with_suffix(".json").write_text(json.dumps(results, indent=1))
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text("\n".join(lines) + "\n")
        print("\n".join(cohort_table(name, results[name])), flush=True)
    return results


if __name__ == "__main__":
    main()
