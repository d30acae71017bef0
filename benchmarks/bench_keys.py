"""Learned keys vs L2 keys: retrieval utility, index size, search time; option A vs B.

    python benchmarks/bench_keys.py [--quick] [--out DIR] [--steps 300] [--k 8] [--templates 64]

On a simulated admixed cohort (stdpopsim AmericanAdmixture, the targets' array
= 1 in 10 of the sites of panel MAF >= 5%, as issue 10's), in the two places
where references are retrieved:

- ``faiss``: the seed's design (``--copying off``): the K nearest references of
  each query haplotype per window (L2 keys = flattened embeddings of the
  observed sites, vs learned keys);
- ``templates``: the choice of K copying templates per query for large panels
  (``--templates K``): copying.select_templates (Hamming over stretches of
  observed sites) vs the same votes over learned keys.

The key encoder alone is trained (its contrastive loss with mined hard
negatives, ``--steps`` batches of the training samples under the array),
refreshed every ``--refresh-every`` steps (option B) or never after the initial
encoding (option A). Scored on the validation samples under the array, at the
masked sites of every other window: the share of masked alleles (all, ALT,
ALT at MAF < 5%) carried by at least one of the K retrieved, and the mean
agreement of the K there; for templates also the dosage r2 of the untrained
copying HMM over them (Trainer.validate with an untrained model is the HMM).
Index size and search time: one window's index over every panel haplotype,
Flat, searched by every validation haplotype.

Writes DIR/keys.json and prints a markdown table.
"""
from __future__ import annotations

import embrag_ext  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch loads)

import argparse
import dataclasses
import json
import os
import tempfile
import time
from typing import Dict, List

import faiss
import numpy as np
import torch

from embrag_ext.config import CopyConfig, DataConfig, ModelConfig, RetrievalConfig, RunConfig, TrainConfig
from embrag_ext.dataset import SpanBatches
from embrag_ext.masking import MaskConfig
from embrag_ext.metrics import retrieval_utility
from embrag_ext.predict import key_encoder
from embrag_ext.simulate import simulate_cohort
from embrag_ext.training import Trainer

COHORT = dict(model="admix", n_panel=600, n_target=50, length=1_000_000, array_every=10, array_maf=0.05)
QUICK_COHORT = dict(model="admix", n_panel=150, n_target=10, length=300_000, array_every=10, array_maf=0.05)


def make_config(cohort: Dict[str, str], place: str, keys: str, refresh: str, k: int, templates: int,
                seed: int) -> RunConfig:
    copying = CopyConfig(enabled=False) if place == "faiss" else CopyConfig(templates=templates)
    return RunConfig(data=DataConfig(panel=cohort["panel"], array=cohort["targets"]), copying=copying,
                     retrieval=RetrievalConfig(k=k, keys=keys, refresh=refresh), model=ModelConfig(),
                     train=TrainConfig(seed=seed, batch_size=16))


def train_keys(trainer: Trainer, steps: int, refresh_every: int) -> float:
    """Train the key encoder alone for ``steps`` batches; returns the seconds."""
    began = time.perf_counter()
    optimizer = torch.optim.AdamW(trainer.keys.parameters(), lr=trainer.config.train.lr, weight_decay=0.01)
    trainer.refresh("initial encoder")
    step, epoch = 0, 0
    while step < steps:
        batches = trainer.train_batches()
        for index in range(len(batches)):
            if step == steps:
                break
            if trainer.config.retrieval.refresh_every and step and step % refresh_every == 0:
                trainer.refresh(f"step {step}")
            loss = trainer.key_loss(batches[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        epoch += 1
        trainer.epoch = epoch
    trainer.epoch = 0
    return time.perf_counter() - began


def validation_batches(trainer: Trainer, every: int) -> SpanBatches:
    data = trainer.data
    windows = data.windows[::every]
    return SpanBatches(data.val_haplotypes_T, windows, trainer.context_sites, 32, MaskConfig(sporadic_missing=0.0),
                       trainer.config.train.seed + 1, panel_sample=data.val, observed_sites=data.array,
                       shuffle=False), np.arange(len(data.windows))[::every]


@torch.no_grad()
def utility(trainer: Trainer, place: str, every: int) -> Dict[str, float]:
    """Retrieval utility of what the trainer retrieves, on the validation samples."""
    batches, window_ids = validation_batches(trainer, every)
    maf = np.minimum(trainer.data.panel.af, 1 - trainer.data.panel.af)
    ref = trainer.data.ref_tokens_T
    pieces: List[Dict[str, float]] = []
    predictor = trainer.predictor
    seconds = 0.0
    for index in range(len(batches)):
        batch = batches[index]
        window = int(window_ids[batch["span"]])
        start, end = (int(x) for x in trainer.data.windows[window])
        B = batch["tokens"].shape[0]
        query_sample = batch["sample"].repeat_interleave(2)
        began = time.perf_counter()
        if place == "faiss":
            ids = predictor._search(batch, window, query_sample, B).ids.numpy()
        else:
            ids = predictor._posterior(batch, query_sample)[1].numpy()
        seconds += time.perf_counter() - began
        hidden = ~batch["observed"].numpy()
        sites = np.arange(start, end)[hidden]
        truth = batch["haplotypes"].reshape(2 * B, -1).numpy()[:, hidden]
        pieces.append(retrieval_utility(ids, ref[:, sites], truth, maf[sites]))
    out = {}
    for name, weight in (("carried", "alleles"), ("carried_alt", "alt_alleles"),
                         ("carried_rare_alt", "rare_alt_alleles"), ("agreement", "alleles")):
        w = np.array([p[weight] for p in pieces], dtype=float)
        v = np.array([p[name] for p in pieces], dtype=float)
        ok = np.isfinite(v) & (w > 0)
        out[name] = float((v[ok] * w[ok]).sum() / w[ok].sum())
    out["retrieval_seconds"] = seconds
    return out


def use_l2(trainer: Trainer) -> None:
    """Switch a trainer with learned keys back to L2 keys / Hamming selection."""
    trainer.keys = None
    trainer.predictor.keys = None
    if trainer.retriever is not None:
        trainer.retriever.keys = None
    trainer.refresh("L2 keys")


def index_cost(trainer: Trainer, every: int) -> Dict[str, float]:
    """Bytes and search time of one window's Flat index over every panel haplotype."""
    retriever = trainer.retriever
    window = len(trainer.data.windows) // 2
    start, end = (int(x) for x in retriever.key_ranges[window])
    observed = trainer.data.array[start:end]
    sites = np.flatnonzero(observed)
    queries = trainer.data.val_haplotypes_T[:, start + sites].astype(np.int64)
    keys = retriever.reference_keys(window, sites)
    query_keys = retriever.query_keys(window, sites, queries)
    index = faiss.IndexFlatL2(keys.shape[1])
    index.add(keys)
    began = time.perf_counter()
    for _ in range(5):
        index.search(query_keys, retriever.k + 2)
    per_query = (time.perf_counter() - began) / 5 / len(queries)
    return {"dims": int(keys.shape[1]), "observed_sites": int(len(sites)), "index_mib": keys.nbytes / 2**20,
            "search_us_per_query": per_query * 1e6, "references": int(keys.shape[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench_keys")
    parser.add_argument("--quick", action="store_true", help="a small cohort and few steps (checks the script)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--refresh-every", type=int, default=25)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--templates", type=int, default=64)
    parser.add_argument("--every", type=int, default=2, help="score every N-th window")
    parser.add_argument("--places", default="faiss,templates")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    steps = 20 if options.quick else options.steps
    cohort_dir = os.path.join(options.out, "cohort")
    if not os.path.isfile(os.path.join(cohort_dir, "panel.vcf.gz")):
        simulate_cohort(cohort_dir, seed=1, **(QUICK_COHORT if options.quick else COHORT))
    cohort = {name: os.path.join(cohort_dir, f"{name}.vcf.gz") for name in ("panel", "targets")}
    results = {"cohort": QUICK_COHORT if options.quick else COHORT, "steps": steps,
               "refresh_every": options.refresh_every, "k": options.k, "n_templates": options.templates}
    scratch = tempfile.mkdtemp()
    for place in options.places.split(","):
        rows = {}
        for option, refresh in (("A", "fixed"), ("B", str(options.refresh_every))):
            config = make_config(cohort, place, "learned", refresh, options.k, options.templates, options.seed)
            trainer = Trainer(config, scratch)
            if option == "A":                      # the same trainer scores L2 first (keys never used)
                saved_keys = trainer.keys
                use_l2(trainer)
                rows["l2"] = utility(trainer, place, options.every)
                if place == "faiss":
                    rows["l2"].update(index_cost(trainer, options.every))
                else:
                    rows["l2"]["hmm_r2"] = trainer.validate()["dosage_r2"]
                trainer = Trainer(config, scratch)
                del saved_keys
            train_seconds = train_keys(trainer, steps, options.refresh_every)
            row = utility(trainer, place, options.every)
            row["train_seconds"] = train_seconds
            row["mined"] = trainer.keys.last_mined
            if place == "faiss":
                row.update(index_cost(trainer, options.every))
            else:
                row["hmm_r2"] = trainer.validate()["dosage_r2"]
            rows[f"learned {option}"] = row
            print(place, option, json.dumps(row), flush=True)
        print(place, "l2", json.dumps(rows["l2"]), flush=True)
        results[place] = rows
    os.makedirs(options.out, exist_ok=True)
    with open(os.path.join(options.out, "keys.json"), "w") as handle:
        json.dump(results, handle, indent=1)
    print_table(results)


def print_table(results: dict) -> None:
    for place in ("faiss", "templates"):
        if place not in results:
            continue
        k = results["k"] if place == "faiss" else results["n_templates"]
        print(f"\n{place} (K={k}) | carried | carried ALT | carried rare ALT | agreement | extra")
        print("|---|---|---|---|---|---|")
        for name, row in results[place].items():
            extra = (f"{row['dims']} dims, {row['index_mib']:.2f} MiB, {row['search_us_per_query']:.1f} us/query"
                     if "dims" in row else f"HMM r2 {row['hmm_r2']:.4f}")
            print(f"| {name} | {row['carried']:.4f} | {row['carried_alt']:.4f} | {row['carried_rare_alt']:.4f} "
                  f"| {row['agreement']:.4f} | {extra} |")


if __name__ == "__main__":
    main()
