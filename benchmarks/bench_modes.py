"""The seed's table: training steps of none / token / embedding retrieval, side by side.

    python benchmarks/bench_modes.py [--quick] [--markdown PATH] [--k 8,1,32] [--steps N] [--warmup N]
                                     [--batch-size B] [--dim D] [--layers N] [--heads H] [--window L]
                                     [--device cpu|cuda] [--out result.json]

Four variants train the same model size on the same batches of the demo cohort
(``embrag_ext.demo.demo_cohort()``: 500 samples, 1 Mb), each built by
``embrag_ext.training.Trainer`` from the training CLI's options:

- ``none`` (seed V13): no retrieval;
- ``token`` (seed V17): the K neighbours re-encoded through the transformer every step;
- ``embedding --refresh fixed`` (option A) and ``embedding --refresh epoch``
  (option B): the neighbours fused by ``rag_fusion`` from the embedding tables.

The retrieval modes run the seed's design (``--copying off``: neighbours found
by FAISS in embedding space, no copying posterior) with one window per batch
(``--windows-per-step 1``), at the seed's size by default: D=128, 4 layers,
4 heads, L=512, batch 16 samples (32 haplotypes), K=8, then K=1 (the seed's K)
and K=32. Per variant and K:

- the median training step over ``--steps`` steps after ``--warmup`` untimed
  ones: building the batch (``SpanBatches[i]``, what the data loader does),
  retrieval, forward, backward and the optimizer step (``Trainer.train_step``);
- retrieval apart: the time in ``Retriever.search`` during the step (a FAISS
  index over the window's keys under the batch's observed pattern, the query
  keys, the search);
- the refresh apart (``Trainer.refresh``: every window's key tables
  re-encoded; the median of 3) and amortised over a default training run
  (``--refresh epoch``: once per epoch; ``fixed``: once per run; 3 epochs of
  250 steps);
- peak memory of the timed steps: on the CPU the rise of the process's peak
  resident set above its resident set before them (peak_memory.py); on CUDA,
  ``torch.cuda.max_memory_allocated`` above the allocation before them.

Each variant runs in a process of its own (its peak memory is its own), all
of them alive at once: the parent asks for step i of every variant, then step
i + 1, so a load that comes and goes on the machine falls on all alike. A
variant that dies (e.g. out of memory) is reported as such. ``--quick``: D=32,
1 layer, 2 heads, L=128, batch 4, K=8, 2 steps (checks the script).
"""
from __future__ import annotations

import embrag_ext  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch loads, as the CLIs run)

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

import peak_memory
import section
from embrag_ext import train, training

VARIANTS = {
    "none": ["--mode", "none"],
    "token": ["--mode", "token"],
    "embedding --refresh fixed": ["--mode", "embedding", "--refresh", "fixed"],
    "embedding --refresh epoch": ["--mode", "embedding", "--refresh", "epoch"],
}
SEED_DESIGN = ["--copying", "off", "--windows-per-step", "1"]
SIZES = ("batch_size", "dim", "layers", "heads", "window", "device")   # passed to the training CLI
FULL = dict(k="8,1,32", steps=5, warmup=1, batch_size=16, dim=128, layers=4, heads=4, window=512)
QUICK = dict(k="8", steps=2, warmup=1, batch_size=4, dim=32, layers=1, heads=2, window=128)
REFRESH_REPEATS = 3
GOALS = {"faster than token": 3.0, "less memory than token": 2.0, "of none's step, at most": 1.2}
REPLY = "@@bench_modes "   # prefix of a child's replies on its stdout


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    section.add_arguments(p, "D=32, 1 layer, L=128, batch 4, K=8, 2 steps: checks the script")
    p.add_argument("--k", help=f"comma-separated neighbours per haplotype, one table each (default {FULL['k']})")
    p.add_argument("--steps", type=int, help=f"timed steps per variant (default {FULL['steps']})")
    p.add_argument("--warmup", type=int, help=f"untimed steps per variant first (default {FULL['warmup']})")
    p.add_argument("--batch-size", type=int, help="samples per batch, 2 haplotypes each (default 16)")
    p.add_argument("--dim", type=int, help="model width (default 128)")
    p.add_argument("--layers", type=int, help="transformer blocks (default 4)")
    p.add_argument("--heads", type=int, help="attention heads (default 4)")
    p.add_argument("--window", type=int, help="window length in sites (default 512)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", help="also write every measurement to this JSON file")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)   # internal: the variant a child runs
    args = p.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.steps, args.warmup) < 1:
        p.error("--steps and --warmup must be >= 1")
    return args


def train_argv(args: argparse.Namespace, variant: str, k: int) -> List[str]:
    """The training CLI's arguments of ``variant`` with the benchmark's sizes."""
    argv = [*VARIANTS[variant], *SEED_DESIGN, "--k", str(k)]
    for name in SIZES:
        argv += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    return argv


# --- a variant's process -------------------------------------------------------------------------

def reply(message: dict) -> None:
    print(REPLY + json.dumps(message), flush=True)


class Variant:
    """In a child process: one variant's trainer, its batches, and the time spent in retrieval."""

    def __init__(self, args: argparse.Namespace, variant: str, k: int):
        config = train.run_config(train.parse_options(train_argv(args, variant, k)))
        self.trainer = training.Trainer(config, out_dir=tempfile.mkdtemp(prefix="bench_modes-"))
        self.trainer.refresh("initial encoder")
        self.batches = self.trainer.train_batches()
        self.retrieval_s = 0.0
        retriever = self.trainer.retriever
        if retriever is not None:
            search = retriever.search

            def timed_search(*search_args):
                began = time.perf_counter()
                try:
                    return search(*search_args)
                finally:
                    self.retrieval_s += time.perf_counter() - began
            retriever.search = timed_search
        self.memory_before = 0

    def describe(self) -> dict:
        trainer = self.trainer
        return {"parameters": sum(p.numel() for p in trainer.model.parameters()),
                "refresh_s": self.refresh_seconds(), "refreshes_per_run": refreshes_per_run(trainer),
                "steps_per_run": trainer.steps_per_epoch * trainer.config.train.epochs,
                "batches": len(self.batches), "windows": len(trainer.data.windows),
                "threads": torch.get_num_threads()}

    def refresh_seconds(self) -> Optional[float]:
        """Median seconds of a refresh of every window's keys (None without a retriever)."""
        if self.trainer.retriever is None:
            return None
        times = []
        for _ in range(REFRESH_REPEATS):
            before = self.trainer.refresh_seconds
            self.trainer.refresh("benchmark")
            times.append(self.trainer.refresh_seconds - before)
        return statistics.median(times)

    def step(self, index: int) -> dict:
        """Training step ``index`` (its batch built here), timed; with its retrieval time."""
        device = self.trainer.device
        synchronize(device)
        self.retrieval_s = 0.0
        began = time.perf_counter()
        self.trainer.train_step(self.batches[index])
        synchronize(device)
        return {"step_s": time.perf_counter() - began, "retrieval_s": self.retrieval_s}

    def reset_memory(self) -> None:
        if self.trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.trainer.device)
            self.memory_before = torch.cuda.memory_allocated(self.trainer.device)
        else:
            self.memory_before = peak_memory.reset_peak()

    def peak_memory(self) -> int:
        if self.trainer.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.trainer.device) - self.memory_before
        return peak_memory.peak_bytes() - self.memory_before


def refreshes_per_run(trainer: training.Trainer) -> int:
    """Key refreshes in a training run of the trainer's config (0 without a retriever)."""
    if trainer.retriever is None:
        return 0
    every, epochs = trainer.config.retrieval.refresh_every, trainer.config.train.epochs
    if every is None:
        return 1
    if every == 0:
        return epochs
    return 1 + (epochs * trainer.steps_per_epoch - 1) // every


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def child_main(args: argparse.Namespace) -> None:
    """Serve the parent's commands on stdin: ``step I``, ``reset`` (the memory baseline), ``peak``, ``quit``."""
    variant = Variant(args, args.child, int(args.k))
    reply(variant.describe())
    for line in sys.stdin:
        command, *operands = line.split()
        if command == "step":
            reply(variant.step(int(operands[0])))
        elif command == "reset":
            variant.reset_memory()
            reply({})
        elif command == "peak":
            reply({"peak_bytes": variant.peak_memory()})
        elif command == "quit":
            return


# --- the parent ---------------------------------------------------------------------------------

class ChildFailed(RuntimeError):
    pass


class Child:
    """A variant's process, driven line by line."""

    def __init__(self, args: argparse.Namespace, variant: str, k: int):
        options = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in (*SIZES, "steps", "warmup")]
        self.variant = variant
        self.process = subprocess.Popen(
            [sys.executable, __file__, *options, f"--k={k}", "--child", variant],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent,
            env=dict(os.environ, **peak_memory.CHILD_ENV))

    def read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        raise ChildFailed(f"{self.variant}: its process ended (exit status {self.process.wait()})")

    def ask(self, command: str) -> dict:
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass   # read() reports the exit
        return self.read()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        self.process.wait()


def measure(args: argparse.Namespace, k: int) -> Dict[str, dict]:
    """Per variant at ``k``: its description, step and retrieval seconds, peak bytes (or its error)."""
    children = {variant: Child(args, variant, k) for variant in VARIANTS}
    results: Dict[str, dict] = {}

    def each(work):
        for variant, child in list(children.items()):
            try:
                work(variant, child)
            except ChildFailed as error:
                results[variant] = {"error": str(error)}
                child.close()
                del children[variant]

    try:
        def ready(variant: str, child: Child) -> None:
            results[variant] = {**child.read(), "steps": []}

        def step(variant: str, child: Child) -> None:
            measured = child.ask(f"step {i}")
            if i >= args.warmup:
                results[variant]["steps"].append(measured)

        each(ready)
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                each(lambda variant, child: child.ask("reset"))
            each(step)
        each(lambda variant, child: results[variant].update(child.ask("peak")))
    finally:
        for child in children.values():
            child.close()
    return {variant: summarise(results[variant]) for variant in VARIANTS}


def summarise(result: dict) -> dict:
    """Medians and the amortised step of one variant's measurements."""
    if "error" in result:
        return result
    step = statistics.median(s["step_s"] for s in result["steps"])
    retrieval = statistics.median(s["retrieval_s"] for s in result["steps"])
    refresh_per_step = (result["refresh_s"] or 0.0) * result["refreshes_per_run"] / result["steps_per_run"]
    return {**result, "step_s": step, "retrieval_s": retrieval, "refresh_per_step_s": refresh_per_step,
            "amortised_step_s": step + refresh_per_step}


# --- the report ----------------------------------------------------------------------------------

def k_table(k: int, rows: Dict[str, dict]) -> List[str]:
    header = ["variant", "parameters", "step ms (median)", "retrieval ms", "step without retrieval ms",
              "refresh s (once)", "refresh per step ms", "amortised step ms", "peak memory MiB"]
    cells = []
    for variant, row in rows.items():
        if "error" in row:
            cells.append([f"`{variant}`", "-", f"failed: {row['error']}", *["-"] * 6])
            continue
        cells.append([f"`{variant}`", f"{row['parameters']:,}", section.ms(row["step_s"]), section.ms(row["retrieval_s"]),
                      section.ms(row["step_s"] - row["retrieval_s"]),
                      section.fmt(row["refresh_s"], 3) if row["refresh_s"] is not None else "-",
                      section.ms(row["refresh_per_step_s"]), section.ms(row["amortised_step_s"]), section.mib(row["peak_bytes"])])
    return [f"### K = {k}", "", *section.table(header, cells), ""]


def ratio_lines(rows: Dict[str, dict]) -> List[str]:
    """Ratios of each embedding variant to token and none, with the issue's goals."""
    token, none = rows.get("token", {}), rows.get("none", {})
    lines = []
    for variant in ("embedding --refresh fixed", "embedding --refresh epoch"):
        row = rows[variant]
        if "error" in row:
            continue
        parts = []
        if "error" not in token:
            speed = token["amortised_step_s"] / row["amortised_step_s"]
            memory = token["peak_bytes"] / max(row["peak_bytes"], 1)
            parts += [f"{speed:.2f}x faster than `token` (amortised step; goal >= {GOALS['faster than token']}x: "
                      f"{met(speed >= GOALS['faster than token'])})",
                      f"{memory:.2f}x less peak memory (goal >= {GOALS['less memory than token']}x: "
                      f"{met(memory >= GOALS['less memory than token'])})"]
        if "error" not in none:
            of_none = row["amortised_step_s"] / none["step_s"]
            limit = GOALS["of none's step, at most"]
            parts.append(f"{of_none:.2f}x the step of `none` (goal <= {limit}x: {met(of_none <= limit)})")
        lines.append(f"- `{variant}`: " + "; ".join(parts) + ".")
    return lines


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def markdown(args: argparse.Namespace, argv: Sequence[str], results: Dict[int, Dict[str, dict]]) -> List[str]:
    first = next(row for rows in results.values() for row in rows.values() if "error" not in row)
    device = f"{args.device} ({first['threads']} threads)" if args.device == "cpu" else args.device
    lines = [
        "## The seed's table: a training step of none, token and embedding retrieval",
        "",
        f"`{section.command(argv)}`",
        "",
        f"The seed's design (`--copying off`: neighbours found by FAISS in embedding space; one window per batch) "
        f"at D={args.dim}, {plural(args.layers, 'layer')}, {plural(args.heads, 'head')}, L={args.window} sites, batch "
        f"{args.batch_size} samples ({2 * args.batch_size} haplotypes), on the demo cohort (500 samples, 1 Mb, "
        f"{first['windows']} windows of {args.window} sites), device {device}. A step: building the batch, "
        "retrieval, forward, backward, optimizer (`Trainer.train_step`); the median of "
        f"{args.steps} steps after {args.warmup} untimed, the variants interleaved step by step, each in a process "
        "of its own. Retrieval: the time in `Retriever.search` (a FAISS index over the window's keys under the "
        f"batch's observed pattern, then the search). Refresh: every window's keys re-encoded (median of "
        f"{REFRESH_REPEATS}), amortised over a default run ({first['steps_per_run']} steps: `--refresh epoch` "
        "refreshes once per epoch, `fixed` once). Peak memory: "
        + ("the rise of the peak resident set (VmHWM) above the resident set before the timed steps."
           if args.device == "cpu" else "`torch.cuda.max_memory_allocated` above the allocation before them."),
        "",
    ]
    for k, rows in results.items():
        lines += k_table(k, rows) + ratio_lines(rows) + [""]
    return lines


def main(argv: Optional[Sequence[str]] = None) -> Dict[int, Dict[str, dict]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return {}
    results = {}
    for k in (int(k) for k in args.k.split(",")):
        began = time.perf_counter()
        results[k] = measure(args, k)
        print(f"K={k}: measured in {time.perf_counter() - began:.0f} s", flush=True)
    lines = markdown(args, argv, results)
    print("\n".join(lines), flush=True)
    if args.markdown:
        section.write(args.markdown, lines)
    if args.out:
        Path(args.out).write_text(json.dumps({"options": vars(args), "results": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
