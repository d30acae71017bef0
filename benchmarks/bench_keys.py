"""Learned retrieval keys vs today's keys, and option A vs option B, where keys matter.

    python benchmarks/bench_keys.py [--quick] [--markdown PATH] [--out DIR] [--cohorts constant,admix]
                                    [--seeds 1,2] [--steps 100] [--refresh-every 25] [--places faiss,templates]

Cohorts: bench_accuracy.py's demographies and arrays (``constant``: 1 site in
20; ``admix``: stdpopsim AmericanAdmixture, 1 in 10 of the sites of panel MAF
>= 5%), smaller (400 panel samples, 40 targets, 500 kb) so that the whole run
takes about ten minutes on 2 cores; one cohort per demography and seed (the
seed also seeds training). Keys matter in two places:

- ``faiss``: the seed's design (``--copying off``): the K nearest references of
  each query haplotype per window, by L2 keys (the flattened embeddings of the
  observed sites, retrieval.py) or by learned keys (learned_keys.py);
- ``templates``: the copying posterior over ``--templates N`` references per
  query, chosen by copying.select_templates (Hamming votes over stretches of
  observed sites) or by the same votes over learned keys.

Per cohort and place, three runs train the whole model (``--array``
targets, ``--steps`` steps, one epoch): today's keys; learned keys under
option A (``--refresh fixed``: the reference keys of the initial encoder); and
learned keys under option B (refreshed every ``--refresh-every`` steps). Each
trained checkpoint imputes the cohort's targets (imputation.py, as ``impute``
does), scored at their untyped sites against the truth: aggregate dosage r2
and the seed's ALT-F1 rare / common. Retrieval utility: for the targets, in
every window, under their array, the share of the untyped alleles (all, ALT,
ALT at MAF < 5%) carried by at least one of the references drawn on (the K
neighbours, or the N templates), and their mean agreement there
(metrics.retrieval_utility). Index size and search time (``faiss``): one
window's exact index over every panel haplotype, searched by every target
haplotype (best of 5).

The verdicts on the issue's goals (learned keys beat today's keys on every
cohort; B beats A) are computed from the table, on dosage r2.
``--markdown PATH`` writes the section for the results page (benchmarks/RESULTS.md)
and the plot beside it; DIR/keys.json keeps every figure.
"""
from __future__ import annotations

import embrag_ext  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch loads)

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import faiss
import numpy as np
import torch

from bench_accuracy import COHORTS
from embrag_ext.checkpoint import CHECKPOINT_NAME, load_checkpoint
from embrag_ext.config import CopyConfig, DataConfig, RetrievalConfig, RunConfig, TrainConfig
from embrag_ext.dataset import SpanBatches
from embrag_ext.imputation import impute_haplotypes
from embrag_ext.masking import MaskConfig
from embrag_ext.metrics import alt_f1, dosage_metrics, retrieval_utility
from embrag_ext.panel_vcf import load_panel
from embrag_ext.simulate import simulate_cohort
from embrag_ext.tokens import MASK
from embrag_ext.training import Trainer

SIZE = dict(n_panel=400, n_target=40, length=500_000)
QUICK_SIZE = dict(n_panel=120, n_target=12, length=250_000)
VARIANTS = {  # name: (keys, option); option A = refresh fixed, B = refresh every --refresh-every steps
    "today's keys": ("l2", None), "learned, option A": ("learned", "A"), "learned, option B": ("learned", "B")}
PLACES = {"faiss": "FAISS neighbours (`--copying off`)", "templates": "copying templates (`--templates N`)"}
UTILITY = ("carried", "carried_alt", "carried_rare_alt", "agreement")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/keys", help="cohorts, runs and keys.json")
    p.add_argument("--markdown", help="write the results-page section here (and the plot beside it)")
    p.add_argument("--quick", action="store_true", help="one tiny cohort, a few steps: checks the script")
    p.add_argument("--cohorts", default="constant,admix", help="comma-separated: " + ", ".join(COHORTS))
    p.add_argument("--seeds", default="1,2", help="comma-separated seeds (simulation and training)")
    p.add_argument("--steps", type=int, default=100, help="training steps per run")
    p.add_argument("--refresh-every", type=int, default=25, help="option B: steps between refreshes")
    p.add_argument("--k", type=int, default=8, help="FAISS neighbours fused per haplotype")
    p.add_argument("--templates", type=int, default=64, help="copying templates per query")
    p.add_argument("--key-sites", type=int, default=RetrievalConfig.key_sites,
                   help="learned keys: observed sites on each side of the focus")
    p.add_argument("--places", default="faiss,templates", help="comma-separated: " + ", ".join(PLACES))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.quick:
        args.cohorts, args.seeds, args.steps, args.refresh_every = "constant", "1", 8, 4
    return args


def cohort_files(out: Path, demography: str, seed: int, quick: bool) -> Dict[str, str]:
    directory = out / "cohorts" / f"{demography}-{seed}{'-quick' if quick else ''}"
    paths = {name: str(directory / f"{name}.vcf.gz") for name in ("panel", "targets", "truth")}
    if not all(os.path.exists(path) for path in paths.values()):
        simulate_cohort(str(directory), seed=seed, **{**COHORTS[demography], **(QUICK_SIZE if quick else SIZE)})
    return paths


def run_config(files: Dict[str, str], place: str, variant: str, args: argparse.Namespace, seed: int) -> RunConfig:
    keys, option = VARIANTS[variant]
    refresh = {None: "epoch", "A": "fixed", "B": str(args.refresh_every)}[option]
    copying = CopyConfig(enabled=False) if place == "faiss" else CopyConfig(templates=args.templates)
    return RunConfig(data=DataConfig(panel=files["panel"], array=files["targets"]), copying=copying,
                     retrieval=RetrievalConfig(k=args.k, keys=keys, refresh=refresh, key_sites=args.key_sites),
                     train=TrainConfig(epochs=1, steps_per_epoch=args.steps, seed=seed))


def truth_haplotypes(files: Dict[str, str], panel) -> np.ndarray:
    """uint8 [S, 2T]: the targets' true alleles at the panel's sites."""
    truth = load_panel(files["truth"], use_cache=False)
    if not np.array_equal(truth.positions, panel.positions):
        raise SystemExit(f"{files['truth']}: its sites differ from the panel's")
    return truth.haplotypes


def accuracy(trainer: Trainer, truth: np.ndarray) -> Dict[str, float]:
    """Impute the targets from the saved checkpoint; dosage r2 and ALT-F1 at their untyped sites."""
    panel, typed = trainer.data.panel, trainer.data.array
    checkpoint = load_checkpoint(os.path.join(trainer.out_dir, CHECKPOINT_NAME), "cpu")
    targets = np.where(typed[:, None], truth, MASK).astype(np.uint8)
    began = time.perf_counter()
    prob = impute_haplotypes(checkpoint, panel, targets, typed, 32, torch.device("cpu"))      # [S, 2T]
    seconds = time.perf_counter() - began
    untyped = ~typed
    dosage = dosage_metrics(truth[:, 0::2].astype(np.int64) + truth[:, 1::2], prob[:, 0::2] + prob[:, 1::2],
                            panel.af, untyped)
    f1 = alt_f1(truth, (prob > 0.5).astype(np.uint8), untyped[:, None], np.minimum(panel.af, 1 - panel.af)[:, None])
    return {"r2": dosage["all"]["aggregate_r2"], "f1_rare": f1["rare"]["f1"], "f1_common": f1["common"]["f1"],
            "impute_seconds": seconds}


@torch.no_grad()
def utility(trainer: Trainer, truth: np.ndarray) -> Dict[str, float]:
    """Retrieval utility of what the trained predictor draws on for the targets, every window."""
    data = trainer.data
    truth_T = np.ascontiguousarray(truth.T)
    batches = SpanBatches(truth_T, data.windows, trainer.context_sites, 64, MaskConfig(sporadic_missing=0.0),
                          seed=0, panel_sample=np.full(len(truth_T) // 2, -1), observed_sites=data.array,
                          shuffle=False)
    maf = np.minimum(data.panel.af, 1 - data.panel.af)
    pieces = []
    for index in range(len(batches)):
        batch = batches[index]
        window = int(batch["span"])
        ids = trainer.predictor.references(batch, window).cpu().numpy()                   # [2B, K]
        start, end = (int(x) for x in data.windows[window])
        hidden = ~batch["observed"].numpy()
        sites = np.arange(start, end)[hidden]
        queries = batch["haplotypes"].reshape(len(ids), -1).numpy()[:, hidden]
        pieces.append(retrieval_utility(ids, data.ref_tokens_T[:, sites], queries, maf[sites]))
    weights = {"carried": "alleles", "carried_alt": "alt_alleles", "carried_rare_alt": "rare_alt_alleles",
               "agreement": "alleles"}
    out = {}
    for name, weight in weights.items():
        w = np.array([p[weight] for p in pieces], dtype=float)
        v = np.array([p[name] for p in pieces], dtype=float)
        ok = np.isfinite(v) & (w > 0)
        out[name] = float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")
    return out


def index_cost(trainer: Trainer, truth: np.ndarray) -> Dict[str, float]:
    """Size and search time of one window's exact index over every panel haplotype, the targets as queries."""
    retriever = trainer.retriever
    window = len(trainer.data.windows) // 2
    start, end = (int(x) for x in retriever.key_ranges[window])
    sites = np.flatnonzero(trainer.data.array[start:end])
    references = retriever.reference_keys(window, sites)
    queries = retriever.query_keys(window, sites, torch.from_numpy(truth.T[:, start + sites].astype(np.int64)))
    index = faiss.IndexFlatL2(references.shape[1])
    index.add(references)
    times = []
    for _ in range(5):
        began = time.perf_counter()
        index.search(queries, retriever.k + 2)
        times.append(time.perf_counter() - began)
    return {"dims": int(references.shape[1]), "index_mib": references.nbytes / 2**20,
            "search_us_per_query": min(times) / len(queries) * 1e6}


def run_one(files: Dict[str, str], place: str, variant: str, args: argparse.Namespace, seed: int,
            run_dir: Path, truth: Optional[np.ndarray]) -> Tuple[dict, np.ndarray]:
    run_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    trainer = Trainer(run_config(files, place, variant, args, seed), str(run_dir))
    history = trainer.fit()
    train_seconds = time.perf_counter() - began
    if truth is None:
        truth = truth_haplotypes(files, trainer.data.panel)
    row = {"train_seconds": train_seconds, "val_r2": history[-1]["dosage_r2"], **accuracy(trainer, truth),
           **utility(trainer, truth)}
    if "recall_at_k" in history[-1]:
        row["recall_at_k"] = history[-1]["recall_at_k"]
    if place == "faiss":
        row.update(index_cost(trainer, truth))
    return row, truth


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    out = Path(args.out)
    places = args.places.split(",")
    results = {"settings": {key: value for key, value in vars(args).items() if key != "markdown"},
               "size": QUICK_SIZE if args.quick else SIZE, "cohorts": {}}
    began = time.perf_counter()
    for demography in args.cohorts.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            name = f"{demography}-{seed}"
            files = cohort_files(out, demography, seed, args.quick)
            truth, rows = None, {}
            for place in places:
                for variant in VARIANTS:
                    run_dir = out / "runs" / name / place / variant.replace(",", "").replace(" ", "_").replace("'", "")
                    row, truth = run_one(files, place, variant, args, seed, run_dir, truth)
                    rows[f"{place}|{variant}"] = row
                    print(f"{name} {place} {variant}: {json.dumps(row)}", flush=True)
            results["cohorts"][name] = rows
    results["seconds"] = time.perf_counter() - began
    with open(out / "keys.json", "w") as handle:
        json.dump(results, handle, indent=1)
    lines = report(results, places)
    print("\n".join(lines))
    if args.markdown:
        write_markdown(args, results, places, lines)
    return results


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def verdicts(results: dict, place: str) -> List[str]:
    """The issue's goals, checked cohort by cohort: learned keys raise the retrieval ceiling
    (carried ALT) and the final accuracy (dosage r2) over today's keys; option B beats option A
    (and the seed's ALT-F1 claim for B over A: +0.5 to +1 point)."""
    rows = list(results["cohorts"].values())
    value = lambda variant, metric: np.array([row[f"{place}|{variant}"][metric] for row in rows], dtype=float)
    lines = []
    for metric, label in (("r2", "dosage r2"), ("carried_alt", "carried ALT")):
        for better, worse in (("learned, option B", "today's keys"), ("learned, option A", "today's keys"),
                              ("learned, option B", "learned, option A")):
            diff = value(better, metric) - value(worse, metric)
            wins = int((diff > 0).sum())
            lines.append(f"- {label}: {better} > {worse} on {wins} of {len(diff)} cohorts "
                         f"({'met' if wins == len(diff) else 'not met'}); mean difference {diff.mean():+.4f}")
    f1 = [value("learned, option B", f"f1_{kind}") - value("learned, option A", f"f1_{kind}")
          for kind in ("rare", "common")]
    lines.append(f"- ALT-F1 rare / common, option B - option A (the seed expected +0.005 to +0.01): "
                 f"mean {f1[0].mean():+.4f} / {f1[1].mean():+.4f}")
    return lines


def report(results: dict, places: List[str]) -> List[str]:
    lines = []
    for place in places:
        k = results["settings"]["k"] if place == "faiss" else results["settings"]["templates"]
        lines += [f"### {PLACES[place]}, K = {k}", "",
                  "| cohort | keys | r2 (targets, untyped) | ALT-F1 rare / common | carried | carried ALT "
                  "| carried rare ALT | agreement | train s |", "|" + "---|" * 9]
        for cohort, rows in results["cohorts"].items():
            for variant in VARIANTS:
                row = rows[f"{place}|{variant}"]
                lines.append(f"| {cohort} | {variant} | {_fmt(row['r2'])} | {_fmt(row['f1_rare'], 3)} / "
                             f"{_fmt(row['f1_common'], 3)} | " + " | ".join(_fmt(row[u]) for u in UTILITY)
                             + f" | {row['train_seconds']:.0f} |")
        lines += ["", "Goals of the issue, per cohort:", "", *verdicts(results, place), ""]
        if place == "faiss":
            lines += ["Index and search (one window, exact index over the panel, targets as queries):", "",
                      "| cohort | keys | dims | index MiB | search us / query | size ratio | search ratio |",
                      "|" + "---|" * 7]
            for cohort, rows in results["cohorts"].items():
                base = rows["faiss|today's keys"]
                for variant in VARIANTS:
                    row = rows[f"faiss|{variant}"]
                    lines.append(f"| {cohort} | {variant} | {row['dims']} | {row['index_mib']:.3f} "
                                 f"| {row['search_us_per_query']:.1f} | {row['index_mib'] / base['index_mib']:.3f} "
                                 f"| {row['search_us_per_query'] / base['search_us_per_query']:.3f} |")
            lines.append("")
    return lines


def plot(results: dict, places: List[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cohorts = list(results["cohorts"])
    figure, axes = plt.subplots(1, len(places), figsize=(5 * len(places), 3.6), squeeze=False)
    width = 0.8 / len(VARIANTS)
    for axis, place in zip(axes[0], places):
        for i, variant in enumerate(VARIANTS):
            values = [results["cohorts"][c][f"{place}|{variant}"]["r2"] for c in cohorts]
            axis.bar(np.arange(len(cohorts)) + (i - 1) * width, values, width, label=variant)
        every = [results["cohorts"][c][f"{place}|{v}"]["r2"] for c in cohorts for v in VARIANTS]
        axis.set_ylim(max(0.0, min(every) - 0.01), min(1.0, max(every) + 0.01))
        axis.set_xticks(range(len(cohorts)), cohorts)
        axis.set_ylabel("dosage r2, untyped sites")
        axis.set_title(place)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_markdown(args: argparse.Namespace, results: dict, places: List[str], lines: List[str]) -> None:
    path = Path(args.markdown)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = path.with_name(path.stem + "_r2.png")
    plot(results, places, picture)
    size = results["size"]
    command = "python benchmarks/bench_keys.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = ["## Learned retrieval keys vs today's keys; option A vs option B", "",
            f"Simulated cohorts ({size['n_panel']} panel samples, {size['n_target']} targets, "
            f"{size['length'] // 1000} kb; bench_accuracy.py's demographies and arrays), seeds {args.seeds}. "
            f"Each run trains the whole model for {args.steps} steps with the targets' array, then imputes the "
            "targets; r2 and ALT-F1 are scored at their untyped sites. Retrieval utility: share of the untyped "
            "alleles carried by at least one of the references drawn on (K neighbours or N templates), and their "
            f"mean agreement there. Option B refreshes every {args.refresh_every} steps. "
            f"Run time {results['seconds'] / 60:.1f} min.", "", f"    {command.strip()}", "",
            f"![dosage r2 per cohort]({picture.name})", "", *lines]
    path.write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
