"""The kernels section: the fused ops against plain-PyTorch compositions, from their pytest-benchmark runs.

    python benchmarks/bench_kernels.py [--quick] [--markdown PATH] [--json PATH] [-k EXPRESSION]

Runs the kernel benchmarks (FILES: window_embed, rag_fusion, copy_posterior)
with pytest-benchmark (``--quick`` passed on: smaller batches, the op at the
issue's size, the cost curves and the old ops left out) and summarises what
they recorded (conftest.record): per op, case and pass, the median time of the
fused op and of two plain-PyTorch compositions, "naive" (the obvious one, e.g.
rag_fusion's keys and values materialised as [B, K, L, D]) and "algebra" (the
best composition we know with the kernels' algebra: what fusion buys beyond
the algebra); their peak memory; the fused op's throughput in the bytes its
pass must move; the bytes the kernels' design moves against those (the
bandwidth model of csrc/kernels); today's rag_fusion ops against the old ones;
copy_posterior at the issue's size and its cost per element over K and M.

:func:`summary_tables` is the one place these ratios are computed: pytest's
terminal summary prints the same tables (conftest.py).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import section

HERE = Path(__file__).resolve().parent
FILES = ("bench_window_embed.py", "bench_rag_fusion.py", "bench_copy_posterior.py")
BASELINES = ("naive", "algebra")
QUICK_OPTIONS = ("--quick", "--benchmark-max-time=0.1", "--benchmark-min-rounds=2")   # and fewer rounds
MB = 1e6


def run_benchmarks(quick: bool, json_path: Path, select: Optional[str]) -> List[dict]:
    """Run the kernel benchmarks; the records pytest-benchmark wrote (one dict per benchmark)."""
    command = [sys.executable, "-m", "pytest", *FILES, "--benchmark-only", f"--benchmark-json={json_path}",
               "-q", "-p", "no:cacheprovider", *(QUICK_OPTIONS if quick else []), *(["-k", select] if select else [])]
    print(" ".join(command[2:]), flush=True)
    subprocess.run(command, cwd=HERE, check=True)
    return json.loads(json_path.read_text())["benchmarks"]


def grouped(records: List[dict], kind: str) -> Dict[Tuple[str, str, str], Dict[str, dict]]:
    """{(op, case, pass): {impl: record}} of the records of ``kind``, in the order they ran."""
    groups: Dict[Tuple[str, str, str], Dict[str, dict]] = {}
    for rec in records:
        info = rec.get("extra_info", {})
        if info.get("kind") == kind:
            groups.setdefault((info["op"], info["case"], info["which"]), {})[info["impl"]] = rec
    return groups


def median(rec: Optional[dict]) -> Optional[float]:
    return None if rec is None else rec["stats"]["median"]


def info(rec: Optional[dict], name: str):
    return None if rec is None else rec["extra_info"].get(name)


def compare_table(records: List[dict]) -> List[str]:
    header = ["op", "case", "pass", "fused ms", "naive ms", "naive / fused", "algebra ms", "algebra / fused",
              "fused peak MiB", "naive / fused peak", "algebra / fused peak", "fused GB/s of the bytes it must move",
              "bytes moved / must move"]
    rows = []
    for (op, case, which), impls in grouped(records, "compare").items():
        fused = impls.get("fused")
        time, peak = median(fused), info(fused, "peak_bytes")
        row = [f"`{op}`", case, which, section.ms(time)]
        for baseline in BASELINES:
            baseline_time = median(impls.get(baseline))
            row += [section.ms(baseline_time), section.ratio(baseline_time, time, 1)]
        row.append(section.fmt(None if peak is None else peak / 2 ** 20, 1))
        row += [section.ratio(info(impls.get(baseline), "peak_bytes"), peak, 1) for baseline in BASELINES]
        must, moved = info(fused, "must_bytes"), info(fused, "moved_bytes")
        row += [section.fmt(None if must is None or not time else must / time / 1e9, 2),
                section.ratio(moved, must)]
        rows.append(row)
    return section.table(header, rows) if rows else []


def bandwidth_table(records: List[dict]) -> List[str]:
    rows = []
    for (op, case, _), impls in grouped(records, "compare").items():
        for op_pass, figures in (info(impls.get("fused"), "bandwidth") or {}).items():
            rows.append([f"`{op}`", case, op_pass, section.fmt(figures["must"] / MB, 1),
                         section.fmt(figures["moved"] / MB, 1), section.ratio(figures["moved"], figures["must"]),
                         section.fmt(figures["cpu_extra_allocated"] / MB, 2), figures.get("note", "")])
    header = ["op", "case", "op pass", "must move MB", "design moves MB", "moved / must",
              "CPU allocations beyond the outputs MB", "note"]
    return section.table(header, rows) if rows else []


def old_vs_new_table(records: List[dict]) -> List[str]:
    rows = [[f"`{op}`", case, which, info(versions.get("old"), "old") or "-", section.ms(median(versions.get("old"))),
             section.ms(median(versions.get("new"))), section.ratio(median(versions.get("old")), median(versions.get("new")))]
            for (op, case, which), versions in grouped(records, "old vs new").items()]
    header = ["op", "case", "op alone", "old version", "old ms", "today ms", "old / today"]
    return section.table(header, rows) if rows else []


def at_size_lines(records: List[dict]) -> List[str]:
    by_case: Dict[Tuple[str, str], Dict[str, dict]] = {}
    for (op, case, which), impls in grouped(records, "at size").items():
        by_case.setdefault((op, case), {})[which] = impls["fused"]
    lines = []
    for (op, case), passes in by_case.items():
        rows = [[which, section.fmt(median(rec), 2), section.fmt(info(rec, "cpu_seconds"), 2), info(rec, "threads")]
                for which, rec in passes.items()]
        lines += section.table(["pass", "wall s (median)", "CPU s (one call, all threads)", "threads"], rows)
        if {"forward", "forward+backward"} <= set(passes):
            forward, both = median(passes["forward"]), median(passes["forward+backward"])
            lines += ["", f"`{op}` at {case}: the backward takes {(both - forward) / forward:.1f}x the forward."]
    return lines


def curve_lines(records: List[dict]) -> List[str]:
    curves: Dict[Tuple[str, str], Dict[str, Dict[int, float]]] = {}
    for rec in records:
        if info(rec, "kind") == "curve":
            curve = curves.setdefault((info(rec, "op"), info(rec, "case")), {}).setdefault(info(rec, "which"), {})
            curve[info(rec, "size")] = median(rec) / info(rec, "elements") * 1e9
    lines = []
    for (op, case), passes in curves.items():
        axis = case.split()[1].rstrip(",")
        sizes = sorted({size for curve in passes.values() for size in curve})
        rows = []
        for which, curve in passes.items():
            later = [curve[size] for size in sizes[2:] if size in curve]
            rows.append([which, *[section.fmt(curve.get(size), 2) for size in sizes],
                         section.ratio(max(later), min(later)) if later else "-"])
        lines += [f"`{op}`, ns per query x site x template {case}:", "",
                  *section.table(["pass", *[f"{axis}={size}" for size in sizes],
                                  f"max / min from {axis}={sizes[min(2, len(sizes) - 1)]}"], rows), ""]
    return lines


def summary_tables(records: List[dict]) -> List[str]:
    """Every table of the kernels section, from pytest-benchmark's records (the JSON's "benchmarks")."""
    parts = [("Fused ops against the compositions (median times, peak memory as the rise of the resident set "
              "in a fresh process, throughput in the bytes a pass must move):", compare_table(records)),
             ("Bandwidth model per op pass (csrc/kernels): bytes a pass must move (inputs read once, outputs "
              "written once) and bytes the kernels' design moves:", bandwidth_table(records)),
             ("Today's ops against the old ones, built from the old commit and timed in the same run:",
              old_vs_new_table(records)),
             ("The op at the issue's size:", at_size_lines(records)),
             ("Cost per element (flat = linear):", curve_lines(records))]
    lines: List[str] = []
    for title, body in parts:
        if body:
            lines += [title, "", *body, ""]
    return lines


def markdown(command: str, pytest_command: str, records: List[dict], machine_threads: str) -> List[str]:
    return ["## Kernels: the fused ops against plain-PyTorch compositions",
            "",
            f"`{command}` runs `{pytest_command}` (pytest-benchmark) and summarises it. CPU kernels on "
            f"{machine_threads}; the CUDA kernels are compiled and checked but not timed here. The compositions: "
            "*naive*, the obvious one (`rag_fusion`: keys and values materialised as [B, K, L, D]; `window_embed`: "
            "every lookup per haplotype and site; `copy_posterior`: the textbook log-space forward-backward in "
            "float64) and *algebra*, the best plain-PyTorch composition with the kernels' algebra (`rag_fusion`: "
            "keys and values from the projected [V, D] and [L, D] tables, scores as V dot products, no "
            "[B, K, L, D]; `window_embed`: the site rows built once per site; `copy_posterior`: the scaled "
            "forward-backward with rank-one transitions, float32); the ratio to *algebra* is what fusion buys "
            "beyond the algebra. The bytes a pass must move: its inputs read once and its outputs written once.",
            "", *summary_tables(records)]


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    section.add_arguments(parser, "smaller batches; no old ops, no op at the issue's size, no cost curves")
    parser.add_argument("--json", help="keep pytest-benchmark's JSON here (default: a temporary file)")
    parser.add_argument("-k", dest="select", help="pytest -k expression: run only these benchmarks")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        json_path = Path(args.json) if args.json else Path(scratch) / "kernels.json"
        records = run_benchmarks(args.quick, json_path.resolve(), args.select)
    import torch
    pytest_command = " ".join(["pytest", *[f"benchmarks/{name}" for name in FILES], "--benchmark-only",
                               *(QUICK_OPTIONS if args.quick else []), *(["-k", repr(args.select)] if args.select else [])])
    lines = markdown(section.command(argv), pytest_command, records, f"{torch.get_num_threads()} threads")
    if args.markdown:
        section.write(args.markdown, lines)
    return records


if __name__ == "__main__":
    main()
