"""Scale: a 1000 Genomes-sized panel, stage by stage, and how each stage grows.

    python benchmarks/bench_scale.py [--quick] [--markdown PATH] [--work DIR] [--growth-steps N]

A panel of 2,504 samples (5,008 haplotypes) and 100 targets is simulated with
msprime (simulate.py: constant Ne 10,000, mutation rate 1.25e-8, recombination
rate 1e-8, LENGTH bp, about 105,000 biallelic sites; the targets typed at one
site in 10). It is simulated once and kept in ``DIR/cohorts`` (``--work``,
default build/bench_scale), as are the smaller panels of the growth points
(the first 500 and 1,252 samples of it).

Each point (haplotypes x sites) runs in a fresh process, stage by stage, each
stage timed with its peak memory (the process's peak resident set during the
stage, and its rise above the resident set before it):

1. parse: ``load_panel`` with no cache (cyvcf2);
2. cache write: the parse again, stored in the panel cache (a first run);
   cache reload: the cached panel memory-mapped (every later run);
3. set-up: ``Trainer(config)``: the panel split, the reference panel's
   layouts, the model (the training defaults, ``--array`` the targets);
4. one refresh: every window's retrieval keys re-encoded (``Retriever.refresh``;
   the FAISS retrieval of the seed's design, ``--copying off``);
5. index build: the FAISS index of every INDEX_STRIDE-th window under the
   array's typed sites, each built and searched once (one query); its time
   scaled to every window (the per-window cost times the windows);
6. training: the default run's epoch (250 steps of 16 samples x 4 windows,
   the copying posterior over every panel haplotype) at the full panel; at the
   growth points ``--growth-steps`` steps, compared per step;
7. validation: ``Trainer.validate`` (training.VALIDATION_WINDOWS windows x
   up to training.VALIDATION_SAMPLES validation samples);
8. imputation of the 100 targets: ``embrag-impute --checkpoint``, from reading
   the files to the written VCF.

Growth: 1,000 and 2,504 haplotypes at every site, and 10,000 and 30,000 sites
(the panel cut with ``--region``) at 5,008 haplotypes, against the full panel;
the log-log slope of each stage's time per axis (1 = linear). Also: the bytes
per reference allele of what the model reads the panel from, against the seed
design's L x D floats per haplotype per window.

``--quick``: 200 samples and 20 targets over 2 Mb, growth points at a quarter
and half of the haplotypes and sites, 3 training steps (checks the script).
"""
from __future__ import annotations

import embrag_ext  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch loads, as the CLIs run)

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

import peak_memory
import section

HERE = Path(__file__).resolve().parent
LENGTH = 23_000_000
FULL = dict(n_panel=2504, n_target=100, length=LENGTH, min_sites=100_000, growth_haplotypes=(1000, 2504),
            growth_sites=(10_000, 30_000), epoch_steps=None)   # None: the training default (250)
QUICK = dict(n_panel=200, n_target=20, length=2_000_000, min_sites=0, growth_haplotypes=(100, 200),
             growth_sites=(0.25, 0.5), epoch_steps=3)
SEED = 1
STAGES = ("parse", "cache write", "cache reload", "set-up", "refresh", "index build", "training", "validation",
          "imputation")
GROWTH_STAGES = ("parse", "cache write", "set-up", "refresh", "index build", "training step", "validation",
                 "imputation")
LINEAR_SLACK = 1.15   # a log-log slope up to this counts as linear (timing noise)
GiB = 2 ** 30
INDEX_STRIDE = 8      # the index build is timed on every 8th window and scaled to all of them


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    section.add_arguments(p, "200 samples over 2 Mb, 3 training steps: checks the script")
    p.add_argument("--work", default=str(HERE.parent / "build" / "bench_scale"),
                   help="where the simulated cohorts, caches and runs go (default build/bench_scale)")
    p.add_argument("--growth-steps", type=int, default=10, help="training steps timed at each growth point")
    p.add_argument("--point", help=argparse.SUPPRESS)   # internal: HAPLOTYPES:SITES:STEPS:JSON, one point's process
    return p.parse_args(argv)


# --- cohorts -------------------------------------------------------------------------------------

def cohort(work: Path, settings: dict) -> Dict[str, str]:
    """The full simulated cohort (panel, targets, truth), simulated on first use."""
    from embrag_ext.simulate import simulate_cohort
    directory = work / "cohorts" / f"panel{2 * settings['n_panel']}-{settings['length'] // 1000}kb-seed{SEED}"
    paths = {name: str(directory / f"{name}.vcf.gz") for name in ("panel", "targets", "truth")}
    if not all(os.path.exists(path) for path in paths.values()):
        simulate_cohort(str(directory), seed=SEED, n_panel=settings["n_panel"], n_target=settings["n_target"],
                        length=settings["length"])
    return paths


def full_panel(path: str, work: Path):
    """The panel at ``path``, parsed once into the benchmark's own cache (not the user's)."""
    from embrag_ext.panel_vcf import load_panel
    return load_panel(path, cache_dir=work / "cache")


def subset_panel(full_path: str, n_haplotypes: int, work: Path) -> str:
    """A panel of the first n_haplotypes / 2 samples of ``full_path``, written beside it on first use."""
    from embrag_ext.vcf_writer import write_phased_vcf
    path = Path(full_path).with_name(f"panel-first{n_haplotypes}.vcf.gz")
    if not path.exists():
        panel = full_panel(full_path, work)
        n_samples = n_haplotypes // 2
        write_phased_vcf(str(path), panel.chrom, panel.positions, panel.ref, panel.alt, panel.samples[:n_samples],
                         panel.haplotypes[:, :2 * n_samples])
    return str(path)


def region_of_first(panel, n_sites: int) -> str:
    """``CHROM:1-POS``: the region holding the panel's first ``n_sites`` sites."""
    return f"{panel.chrom}:1-{int(panel.positions[min(n_sites, panel.n_sites) - 1])}"


# --- one point, in its own process ---------------------------------------------------------------

class Stages:
    """Times and peak memory of the stages of one point."""

    def __init__(self):
        self.results: Dict[str, dict] = {}

    def run(self, name: str, work: Callable[[], object]):
        before = peak_memory.reset_peak()
        began = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - began
        peak = peak_memory.peak_bytes()
        self.results[name] = {"seconds": seconds, "peak_bytes": peak, "rise_bytes": peak - before}
        print(f"{name}: {seconds:.1f} s, peak {peak / GiB:.2f} GiB", flush=True)
        return result


def run_point(panel_path: str, targets: str, region: Optional[str], steps: Optional[int], out: Path) -> dict:
    """Every stage at one point (see the module doc); returns their figures and the panel's."""
    import torch
    from embrag_ext import impute, train, training
    from embrag_ext.panel_vcf import load_panel
    from embrag_ext.predict import key_encoder
    from embrag_ext.retrieval import make_retriever

    shutil.rmtree(out, ignore_errors=True)
    (out / "run").mkdir(parents=True)
    os.environ["EMBRAG_CACHE_DIR"] = str(out / "cache")     # an empty cache: the first run's write is timed
    stages = Stages()
    stages.run("parse", lambda: load_panel(panel_path, region=region, use_cache=False))
    stages.run("cache write", lambda: load_panel(panel_path, region=region))
    stages.run("cache reload", lambda: load_panel(panel_path, region=region))
    options = ["--panel", panel_path, "--array", targets, "--epochs", "1", "--out", str(out / "run")]
    options += (["--region", region] if region else []) + (["--steps-per-epoch", str(steps)] if steps else [])
    config = train.run_config(train.parse_options(options))
    trainer = stages.run("set-up", lambda: training.Trainer(config, str(out / "run")))
    data = trainer.data
    retriever = make_retriever(config.retrieval, data.ref_tokens_T, data.windows, data.ref_present)
    stages.run("refresh", lambda: retriever.refresh(key_encoder(trainer.model, data.sites, data.windows,
                                                                retriever.key_ranges)))
    indexes = stages.run("index build", lambda: build_indexes(retriever, data))
    stages.results["index build"]["seconds"] *= len(data.windows) / max(indexes, 1)   # for every window
    retriever_bytes = sum(encoding.nbytes for encoding in retriever.encodings)
    retriever.encodings = None   # its key tables go before training, as they would with copying
    stages.run("training", trainer.train_epoch)
    stages.run("validation", trainer.validate)
    trainer.save()
    imputed = out / "imputed.vcf.gz"
    stages.run("imputation", lambda: impute.main(["--checkpoint", str(out / "run" / "checkpoint.pt"),
                                                  "--panel", panel_path, "--targets", targets, "--out", str(imputed),
                                                  "--trust-strand", "--phaser", "none"]))
    reference = data.reference
    return {"stages": stages.results, "haplotypes": data.panel.n_haplotypes, "sites": data.panel.n_sites,
            "windows": len(data.windows), "window": config.data.window, "dim": config.model.dim,
            "training_steps": trainer.step, "validation_samples": min(len(data.val), training.VALIDATION_SAMPLES),
            "validation_windows": min(training.VALIDATION_WINDOWS, len(data.windows)),
            "array_sites": int(data.array.sum()), "threads": torch.get_num_threads(),
            "store_bytes": {"reference_panel": reference.by_haplotype.nbytes,
                            "retriever_key_tables": retriever_bytes}}


def build_indexes(retriever, data) -> int:
    """Every INDEX_STRIDE-th window's FAISS index under the array's sites, built and searched once
    (one panel haplotype); the number of windows built."""
    query_tokens = data.ref_tokens_T[:1].astype(np.int64)
    built = 0
    for window in range(0, len(retriever.key_ranges), INDEX_STRIDE):
        start, end = retriever.key_ranges[window]
        observed = data.array[start:end]
        if observed.any():
            retriever.search(window, observed, query_tokens[:, start:end], np.array([0]))
            built += 1
    return built


def point_main(spec: str) -> None:
    panel_path, targets, region, steps, out, result = spec.split("|")
    figures = run_point(panel_path, targets, region or None, int(steps) if steps else None, Path(out))
    Path(result).write_text(json.dumps(figures))


def measure_point(name: str, panel_path: str, targets: str, region: Optional[str], steps: Optional[int],
                  work: Path) -> dict:
    """One point in a fresh process (its output shown as it runs); its figures."""
    result = work / "points" / f"{name}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    spec = "|".join([panel_path, targets, region or "", str(steps or ""), str(work / "runs" / name), str(result)])
    print(f"== point {name}", flush=True)
    subprocess.run([sys.executable, __file__, "--point", spec], check=True, cwd=HERE,
                   env=dict(os.environ, **peak_memory.CHILD_ENV, EMBRAG_PROGRESS="lines"))
    return json.loads(result.read_text())


# --- the report ----------------------------------------------------------------------------------

def stage_table(main: dict) -> List[str]:
    rows = []
    for name in STAGES:
        stage = main["stages"][name]
        rows.append([name, section.fmt(stage["seconds"], 1), section.fmt(stage["peak_bytes"] / GiB, 2),
                     section.fmt(stage["rise_bytes"] / GiB, 2)])
    return section.table(["stage", "seconds", "peak resident set GiB", "rise during the stage GiB"], rows)


def stage_seconds(point: dict, name: str) -> float:
    """A growth stage's time at a point ("training step": the training stage per step)."""
    if name == "training step":
        return point["stages"]["training"]["seconds"] / max(point["training_steps"], 1)
    return point["stages"][name]["seconds"]


def slope(points: List[dict], axis: str, name: str) -> Optional[float]:
    """Least-squares slope of log(time) against log(axis) over the points."""
    if len(points) < 2:
        return None
    x = np.log([p[axis] for p in points])
    y = np.log([max(stage_seconds(p, name), 1e-6) for p in points])
    return float(np.polyfit(x, y, 1)[0])


def growth_table(by_sites: List[dict], by_haplotypes: List[dict]) -> List[str]:
    header = ["stage", *[f"{p['sites']:,} sites s" for p in by_sites], "slope in sites", "linear or better",
              *[f"{p['haplotypes']:,} haps s" for p in by_haplotypes], "slope in haplotypes"]
    rows = []
    for name in GROWTH_STAGES:
        in_sites, in_haplotypes = slope(by_sites, "sites", name), slope(by_haplotypes, "haplotypes", name)
        rows.append([name, *[section.fmt(stage_seconds(p, name), 2) for p in by_sites],
                     section.fmt(in_sites, 2), "-" if in_sites is None else ("yes" if in_sites <= LINEAR_SLACK else
                                                                             "**no**"),
                     *[section.fmt(stage_seconds(p, name), 2) for p in by_haplotypes],
                     section.fmt(in_haplotypes, 2)])
    return section.table(header, rows)


def plot_growth(by_sites: List[dict], by_haplotypes: List[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, points, axis, label in ((axes[0], by_sites, "sites", f"sites ({by_sites[-1]['haplotypes']:,} haplotypes)"),
                                    (axes[1], by_haplotypes, "haplotypes",
                                     f"haplotypes ({by_haplotypes[-1]['sites']:,} sites)")):
        x = [p[axis] for p in points]
        for name in GROWTH_STAGES:
            ax.plot(x, [stage_seconds(p, name) for p in points], marker="o", label=name)
        ax.plot(x, [stage_seconds(points[0], "parse") * v / x[0] for v in x], "k:", label="linear (from parse)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("seconds")
    axes[1].legend(fontsize=7, loc="upper left")
    figure.suptitle("Cost of each stage as the panel grows (log-log)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def store_lines(main: dict) -> List[str]:
    """Bytes per reference allele: what the model reads the panel from, against the seed design's."""
    alleles = main["haplotypes"] * main["sites"]
    store = main["store_bytes"]
    reference = store["reference_panel"]
    window, dim = main["window"], main["dim"]
    # the seed: L x D float32 per haplotype per window, every window
    seed_bytes = main["haplotypes"] * main["windows"] * window * dim * 4
    seed_128 = seed_bytes / dim * 128
    return [f"Store: the model reads the reference panel from `ReferencePanel` (predict.py), its alleles as uint8 "
            f"stored once, by haplotype [H, S] (a window is a view; the copying posterior's [M, H] sites are gathered "
            f"per batch): "
            f"{reference / alleles:.2f} bytes per reference allele ({reference / GiB:.2f} GiB for "
            f"{main['haplotypes']:,} haplotypes x {main['sites']:,} sites). The FAISS retrieval of the seed's design adds its key "
            f"tables, [3, key sites, D] floats per window: {store['retriever_key_tables'] / alleles:.3f} bytes per "
            f"allele. The seed's design stores L x D floats per haplotype per window: at this D={dim} and "
            f"L={window}, {seed_bytes / alleles:,.0f} bytes per allele ({seed_bytes / GiB:,.0f} GiB for this panel; "
            f"{seed_128 / GiB:,.0f} GiB at the seed's D=128), "
            f"{seed_bytes / reference:,.0f}x the store. Goal: at most 1 byte per allele: "
            f"{'met' if reference / alleles <= 1 else '**not met**'}."]


def validation_lines(main: dict, by_sites: List[dict], by_haplotypes: List[dict]) -> List[str]:
    """How validation cost grows: flat in sites; in haplotypes, linear once the panel is large enough
    for the whole sample of VALIDATION_SAMPLES (below it the validation samples grow with the panel)."""
    full = [p for p in by_haplotypes if p["validation_samples"] == main["validation_samples"]]
    in_haplotypes = slope(full, "haplotypes", "validation")
    val_sites = [stage_seconds(p, "validation") for p in by_sites]
    growth = ("" if in_haplotypes is None else
              f"slope {in_haplotypes:.2f} from {full[0]['haplotypes']:,} to {full[-1]['haplotypes']:,} haplotypes, "
              f"linear: {'yes' if in_haplotypes <= LINEAR_SLACK else '**no**'}; ")
    return [f"Validation cost follows the training budget, not the panel's size: it scores a fixed sample of at "
            f"most {main['validation_windows']} windows (training.VALIDATION_WINDOWS) and "
            f"{main['validation_samples']} validation samples (training.VALIDATION_SAMPLES), each against every "
            f"panel haplotype. It stays flat in sites ({min(val_sites):.0f} to {max(val_sites):.0f} s from "
            f"{by_sites[0]['sites']:,} to {by_sites[-1]['sites']:,} sites, slope "
            f"{slope(by_sites, 'sites', 'validation'):.2f}) and grows with the haplotypes ({growth}the validation "
            f"samples scored: {counts(by_haplotypes, 'validation_samples')} at {counts(by_haplotypes, 'haplotypes')} "
            f"haplotypes; a smaller panel has fewer than the sample)."]


def counts(points: List[dict], axis: str) -> str:
    return ", ".join(f"{point[axis]:,}" for point in points)


def markdown(args: argparse.Namespace, argv: Sequence[str], settings: dict, main: dict,
             by_sites: List[dict], by_haplotypes: List[dict], plot_link: str) -> List[str]:
    peak = max(stage["peak_bytes"] for stage in main["stages"].values())
    training = main["stages"]["training"]["seconds"]
    validation = main["stages"]["validation"]["seconds"]
    lines = [
        "## Scale: a 5,008-haplotype panel, stage by stage" if not args.quick
        else "## Scale: a simulated panel, stage by stage (quick: small sizes)",
        "",
        f"`{section.command(argv)}`",
        "",
        f"Simulated with msprime (`embrag_ext.simulate`, constant Ne 10,000, seed {SEED}): "
        f"{settings['n_panel']:,} panel samples ({main['haplotypes']:,} haplotypes) and {settings['n_target']} "
        f"targets over {settings['length'] / 1e6:g} Mb: {main['sites']:,} biallelic sites, {main['windows']:,} "
        f"windows of {main['window']} sites, the targets typed at {main['array_sites']:,} sites (one in 10). The "
        f"training defaults (the copying posterior over every panel haplotype, D={main['dim']}), the targets' sites "
        f"as the array. Each stage's time and peak memory (the process's peak resident set during the stage, and "
        f"its rise over the stage), in one process per point, {main['threads']} threads:",
        "",
        *stage_table(main),
        "",
        f"- Training: {main['training_steps']} steps in {training:.0f} s ({training / main['training_steps']:.2f} s "
        f"per step). Validation: {main['validation_windows']} windows (training.VALIDATION_WINDOWS, evenly "
        f"spaced) x {main['validation_samples']} validation samples (training.VALIDATION_SAMPLES), {validation:.0f} s "
        f"({validation / training:.2f}x the training epoch).",
        f"- Refresh and index build: the FAISS retrieval of the seed's design (`--copying off`; the default "
        f"copies from every haplotype and builds no index); the index build timed on every {INDEX_STRIDE}th window "
        f"and scaled to the {main['windows']:,} windows.",
        f"- Peak memory {peak / GiB:.2f} GiB: fits in 24 GiB: {'yes' if peak <= 24 * GiB else '**no**'}.",
        f"- {store_lines(main)[0]}",
        "",
        f"Growth: the same stages at {counts(by_sites, 'sites')} sites "
        f"({by_sites[-1]['haplotypes']:,} haplotypes; the panel cut with `--region`) and at "
        f"{counts(by_haplotypes, 'haplotypes')} haplotypes (the first samples of the panel; "
        f"{by_haplotypes[-1]['sites']:,} sites); training per step ({by_sites[0]['training_steps']} steps at "
        f"the smaller points). Slope: least squares of log time against log size (1 = linear; up to {LINEAR_SLACK} counted "
        "as linear).",
        "",
        *growth_table(by_sites, by_haplotypes),
        "",
        f"![stage time against sites and haplotypes, log-log]({plot_link})",
        "",
        *validation_lines(main, by_sites, by_haplotypes),
    ]
    return lines


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.point:
        point_main(args.point)
        return {}
    settings = QUICK if args.quick else FULL
    work = Path(args.work) / ("quick" if args.quick else "full")
    began = time.perf_counter()
    files = cohort(work, settings)
    print(f"cohort ready in {time.perf_counter() - began:.0f} s: {files['panel']}", flush=True)
    full = full_panel(files["panel"], work)
    if full.n_sites < settings["min_sites"]:
        raise SystemExit(f"{full.n_sites} sites: fewer than {settings['min_sites']}; lengthen LENGTH")
    regions = [region_of_first(full, int(s * full.n_sites) if s < 1 else s) for s in settings["growth_sites"]]
    del full
    main_point = measure_point("full", files["panel"], files["targets"], None, settings["epoch_steps"], work)
    by_sites, by_haplotypes = [], []
    for region in regions:
        by_sites.append(measure_point(f"region{region.split('-')[-1]}", files["panel"], files["targets"], region,
                                      settings["epoch_steps"] or args.growth_steps, work))
    for haplotypes in settings["growth_haplotypes"]:
        by_haplotypes.append(measure_point(f"haplotypes{haplotypes}", subset_panel(files["panel"], haplotypes, work),
                                           files["targets"], None, settings["epoch_steps"] or args.growth_steps,
                                           work))
    by_sites.append(main_point)
    by_haplotypes.append(main_point)
    results = {"settings": settings, "full": main_point, "by_sites": by_sites, "by_haplotypes": by_haplotypes}
    (work / "scale.json").write_text(json.dumps(results, indent=1))
    markdown_path = args.markdown or str(work / "scale.md")
    plot = section.plot_path(markdown_path, "growth.png")
    plot_growth(by_sites, by_haplotypes, plot)
    lines = markdown(args, argv, settings, main_point, by_sites, by_haplotypes, plot.name)
    print("\n".join(lines), flush=True)
    if args.markdown:
        section.write(args.markdown, lines)
    return results


if __name__ == "__main__":
    main()
