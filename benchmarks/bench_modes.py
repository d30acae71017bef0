"""Speed and memory of the three retrieval modes (none, token, embedding) in training.

    python benchmarks/bench_modes.py [--steps N] [--warmup N] [--memory-steps N] [--batch-size B] [--k K]
                                     [--dim D] [--layers N] [--heads H] [--window L]
                                     [--device cpu|cuda] [--out result.json]

Every mode trains the same model size on the same batches of the demo cohort
(``embrag_ext.demo.demo_cohort()``), built by the project's own
``embrag_ext.training.Trainer`` from the training CLI's options (defaults: the
training CLI's). What is measured, per mode:

- time per training step: building the batch (``WindowBatches[i]``, what the
  data loader does), retrieval, forward, backward and the optimizer step
  (``Trainer.train_step``); the median over ``--steps`` steps after
  ``--warmup`` untimed ones;
- time per forward pass: retrieval, forward and loss with autograd recording,
  as in training (``Trainer.loss``), on batches the retriever has not seen
  (its FAISS index is built per batch, as in training); median over ``--steps``.
  The three modes are timed interleaved (step i of every mode, then step i + 1),
  so a load that comes and goes on the machine falls on all of them alike;
- peak memory of a training step and of a forward pass (graph kept until the
  loss exists): the highest peak over ``--memory-steps`` passes on the same
  batches for every mode, after one warm-up step, each (mode, pass) in a fresh
  subprocess so that modes don't pollute each other. On the CPU: the rise of
  the process's peak resident set above the resident set before the passes
  (VmHWM - VmRSS from /proc/self/status, the peak reset by writing "5" to
  /proc/self/clear_refs; the child runs with MALLOC_MMAP_THRESHOLD_=65536 so
  large frees go back to the OS). On CUDA: torch.cuda.max_memory_allocated
  above the memory allocated before the passes.

The reference keys are encoded once before timing (``Trainer.refresh``, as at
the start of training); that per-epoch cost is not in the step time. Prints a
table and the ratios token/embedding and none/embedding; ``--out`` also writes
them, with every timing, as JSON.
"""
from __future__ import annotations

import embrag_ext  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch loads, as the CLIs run)

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

import peak_memory as peak_memory_tools
from embrag_ext import train, training
from embrag_ext.config import MODES

TRAIN_OPTIONS = ("batch_size", "k", "dim", "layers", "heads", "window", "device")  # passed to the training CLI
MiB = 2 ** 20


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps (and forward passes) per mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per mode before timing")
    p.add_argument("--batch-size", type=int, default=16, help="samples per batch (2 haplotypes each)")
    p.add_argument("--k", type=int, default=8, help="neighbours retrieved per haplotype")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--window", type=int, default=128, help="window length in sites")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", help="write the results to this JSON file")
    p.add_argument("--memory-steps", type=int, default=2,
                   help="passes whose peak memory is taken (after one warm-up step)")
    p.add_argument("--memory-child", choices=MODES, help=argparse.SUPPRESS)  # internal: the subprocess's mode
    p.add_argument("--memory-pass", choices=("step", "forward"), help=argparse.SUPPRESS)  # and its pass
    args = p.parse_args(argv)
    if min(args.steps, args.warmup, args.memory_steps) < 1:
        p.error("--steps, --warmup and --memory-steps must be >= 1")
    return args


def train_argv(args: argparse.Namespace, mode: str) -> List[str]:
    """The training CLI's arguments for ``mode`` with the benchmark's model size and batch."""
    argv = ["--mode", mode]
    for name in TRAIN_OPTIONS:
        argv += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    return argv


def build_trainer(args: argparse.Namespace, mode: str) -> training.Trainer:
    """A trainer of ``mode`` with its reference keys encoded, as at the start of training."""
    config = train.run_config(train.parse_options(train_argv(args, mode)))
    trainer = training.Trainer(config, out_dir=tempfile.mkdtemp(prefix="bench_modes-"))
    trainer.refresh("initial encoder")
    return trainer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(trainer: training.Trainer, work: Callable[[], object]) -> float:
    """Wall-clock seconds of ``work()`` (the device synchronised before and after)."""
    synchronize(trainer.device)
    began = time.perf_counter()
    work()
    synchronize(trainer.device)
    return time.perf_counter() - began


def step(trainer: training.Trainer, batch: Dict[str, torch.Tensor]) -> None:
    """One training step: retrieval, forward, backward, optimizer step."""
    trainer.train_step(batch)


def forward(trainer: training.Trainer, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Retrieval, forward and loss of one batch, autograd recording as in training."""
    return trainer.loss(batch).detach()


PASSES = {"step": step, "forward": forward}


def time_modes(args: argparse.Namespace,
               trainers: Dict[str, training.Trainer]) -> Dict[str, Dict[str, List[float]]]:
    """Per mode, the seconds of each timed training step and forward pass, interleaved across modes."""
    batches = {mode: trainer.train_batches() for mode, trainer in trainers.items()}  # the same plan for all
    first_forward = args.warmup + args.steps
    if len(batches["none"]) < first_forward + args.steps:
        raise SystemExit(f"only {len(batches['none'])} batches per epoch: lower --steps or --batch-size")
    times = {mode: {"step": [], "forward": []} for mode in trainers}
    for i in range(args.warmup + args.steps):
        for mode, trainer in trainers.items():
            step_seconds = seconds(trainer, lambda: step(trainer, batches[mode][i]))  # builds the batch too
            if i >= args.warmup:
                times[mode]["step"].append(step_seconds)
    for i in range(first_forward, first_forward + args.steps):
        for mode, trainer in trainers.items():
            batch = batches[mode][i]
            times[mode]["forward"].append(seconds(trainer, lambda: forward(trainer, batch)))
    return times


# --- peak memory, one fresh subprocess per mode and pass ---------------------------------------------

def memory_method(device: str) -> str:
    if device == "cuda":
        return "CUDA max_memory_allocated above the allocation before the pass"
    return peak_memory_tools.METHOD


def peak_memory(argv: Sequence[str], mode: str) -> Dict[str, int]:
    """{"step": bytes, "forward": bytes}: peak memory of ``mode``, each pass in a fresh subprocess."""
    return {kind: peak_memory_tools.child_peak_bytes(
                [__file__, *argv, "--memory-child", mode, "--memory-pass", kind])
            for kind in PASSES}


def peak_rise(device: torch.device, work: Callable[[], object]) -> int:
    """Bytes by which memory peaks above its level before ``work()``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        work()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return peak_memory_tools.rss_rise_bytes(work)


def memory_child(args: argparse.Namespace) -> None:
    """In the subprocess: one warm-up step, then print as JSON the peak of
    ``--memory-steps`` passes (training steps or forward passes) on the same
    batches for every mode."""
    trainer = build_trainer(args, args.memory_child)
    batches = trainer.train_batches()
    step(trainer, batches[0])
    measured = [batches[i] for i in range(1, 1 + args.memory_steps)]
    run_pass = PASSES[args.memory_pass]
    peak = peak_rise(trainer.device, lambda: [run_pass(trainer, batch) for batch in measured])
    peak_memory_tools.print_peak(peak)


# --- report ------------------------------------------------------------------------------------

def summarise(times: Dict[str, Dict[str, List[float]]], peaks: Dict[str, Dict[str, int]],
              params: Dict[str, int]) -> Dict[str, Dict[str, float]]:
    """Per mode: median step and forward seconds, peak step and forward bytes, trainable parameters."""
    return {mode: {"step_s": statistics.median(times[mode]["step"]),
                   "forward_s": statistics.median(times[mode]["forward"]),
                   "peak_step_bytes": peaks[mode]["step"], "peak_forward_bytes": peaks[mode]["forward"],
                   "parameters": params[mode]}
            for mode in MODES}


def ratios(summary: Dict[str, Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    """token/embedding and none/embedding of every measure but the parameter count."""
    measures = ("step_s", "forward_s", "peak_step_bytes", "peak_forward_bytes")
    return {f"{mode}/embedding": {m: summary[mode][m] / max(summary["embedding"][m], 1e-12) for m in measures}
            for mode in ("token", "none")}


def print_report(args: argparse.Namespace, summary: dict, ratio: dict, threads: int) -> None:
    print(f"\ndemo cohort, device {args.device} ({threads} threads), batch {args.batch_size} samples "
          f"(= {2 * args.batch_size} haplotypes), window {args.window}, dim {args.dim}, layers {args.layers}, "
          f"heads {args.heads}, K {args.k}; medians of {args.steps} steps after {args.warmup} warm-up")
    print(f"peak memory: {memory_method(args.device)}, highest of {args.memory_steps} passes, "
          f"each mode and pass in a fresh subprocess\n")
    print(f"{'mode':<10} {'params':>8} {'step ms':>9} {'forward ms':>11} {'peak step MiB':>14} "
          f"{'peak fwd MiB':>13}")
    for mode, row in summary.items():
        print(f"{mode:<10} {row['parameters']:>8} {row['step_s'] * 1e3:>9.1f} {row['forward_s'] * 1e3:>11.1f} "
              f"{row['peak_step_bytes'] / MiB:>14.1f} {row['peak_forward_bytes'] / MiB:>13.1f}")
    print()
    for name, row in ratio.items():
        print(f"{name:<16} step time {row['step_s']:5.2f}x   forward time {row['forward_s']:5.2f}x   "
              f"peak step memory {row['peak_step_bytes']:5.2f}x   peak forward memory "
              f"{row['peak_forward_bytes']:5.2f}x")


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return
    trainers = {mode: build_trainer(args, mode) for mode in MODES}
    times = time_modes(args, trainers)
    params = {mode: sum(p.numel() for p in trainer.model.parameters()) for mode, trainer in trainers.items()}
    del trainers
    peaks = {mode: peak_memory(argv, mode) for mode in MODES}
    summary = summarise(times, peaks, params)
    ratio = ratios(summary)
    print_report(args, summary, ratio, torch.get_num_threads())
    if args.out:
        result = {"options": vars(args), "memory_method": memory_method(args.device), "modes": summary,
                  "ratios": ratio, "times_s": times}
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
