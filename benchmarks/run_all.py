"""One command regenerates benchmarks/RESULTS.md and its plots (benchmarks/results/).

    python benchmarks/run_all.py [--quick] [--sections seed,scale,...] [--accuracy-dir DIR] [--out PATH]

The page is a header (the command, the date, the machine, the versions, where
the time went), then one section per entry of SECTIONS, in that order. Each
section is written by its own script, run as a subprocess with the protocol of
section.py:

    python benchmarks/bench_X.py [--quick] --markdown benchmarks/results/X.md

and taken into the page as written (its relative links made relative to the
page). A section whose script is not in this checkout is skipped with a note
on the page; one that fails is reported there, and the command exits non-zero
once the others have run. Nothing on the page is typed by hand.

The accuracy section runs ``bench_accuracy.py`` with its defaults (its results
are kept per tool in benchmarks/results/accuracy/runs and reused when made by
the same command, so a finished full run is not repeated); ``--accuracy-dir DIR``
takes instead the accuracy.md, accuracy.json and plots of a run already made
in DIR (copied into benchmarks/results/accuracy/), saying so on the page.

Budget: the full run within 60 minutes on a 2-core machine when the accuracy
results exist already (their own full run takes over an hour); ``--quick``
(every script with ``--quick``, written to the same page) within 10 minutes;
CI runs it (.ci/run).
"""
from __future__ import annotations

import embrag_ext  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch loads, as the CLIs run)

import argparse
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import section

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent


@dataclass(frozen=True)
class Section:
    """One section of the page: ``benchmarks/<script>`` writes ``<results>/<name>.md``.
    ``full`` and ``quick``: the script's arguments besides --markdown (``{results}``
    stands for the results folder)."""
    name: str
    script: str
    what: str
    full: Tuple[str, ...] = ()
    quick: Tuple[str, ...] = ("--quick",)


SECTIONS = (
    Section("seed", "bench_modes.py", "the seed's table: none / token / embedding training steps"),
    Section("scale", "bench_scale.py", "a 5,008-haplotype panel, stage by stage, and its growth"),
    Section("kernels", "bench_kernels.py", "the fused ops against plain-PyTorch compositions"),
    Section("index", "bench_index.py", "exact and approximate FAISS search at 5,008 haplotypes"),
    Section("keys", "bench_keys.py", "retrieval keys"),
    # --quick: one cohort of the constant demography (the others need stdpopsim; CI installs none)
    Section("accuracy", "bench_accuracy.py", "imputation accuracy next to Beagle 5.4 and Minimac4",
            full=("--out", "{results}/accuracy"),
            quick=("--quick", "--cohorts", "constant", "--seeds", "1", "--out", "{results}/accuracy-quick")),
)
ACCURACY_FILES = ("accuracy*.md", "accuracy*.json", "*.png")


@dataclass
class Outcome:
    """What a section gave: status "ok", "skipped" (no script), "failed", "included" (--accuracy-dir)
    or "kept" (not selected: an earlier run's fragment) or "not run" (not selected, no earlier fragment)."""
    status: str
    seconds: float
    lines: List[str]
    command: str = ""


def parse_args(argv: Optional[Sequence[str]] = None, sections: Sequence[Section] = SECTIONS) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="every section with --quick (checks the scripts; CI)")
    p.add_argument("--sections", help="comma-separated sections to run (default all); the page keeps the others "
                                      "as an earlier full run wrote them: " + ", ".join(s.name for s in sections))
    p.add_argument("--accuracy-dir", help="take the accuracy section from a run already made in DIR "
                                          "(accuracy.md and its plots) instead of running bench_accuracy.py")
    p.add_argument("--out", default=str(BENCHMARKS / "RESULTS.md"), help="the page (default benchmarks/RESULTS.md)")
    args = p.parse_args(argv)
    if args.sections:
        unknown = set(args.sections.split(",")) - {s.name for s in sections}
        if unknown:
            p.error(f"--sections: unknown {', '.join(sorted(unknown))}")
    return args


def display(path: Path) -> str:
    """A path as the page shows it: relative to the checkout when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# --- sections ------------------------------------------------------------------------------------

def title(entry: Section) -> str:
    """The heading of a section that wrote none (skipped, failed, not run)."""
    return f"{section.HEADING}{entry.what[0].upper()}{entry.what[1:]}"


def run_section(entry: Section, quick: bool, results: Path, benchmarks: Path = BENCHMARKS) -> Outcome:
    """Run one section's script (from the checkout's root, its output shown as it runs)."""
    script = benchmarks / entry.script
    if not script.exists():
        note = (f"*Skipped: `{display(script)}` ({entry.what}) is not in this checkout.*")
        return Outcome("skipped", 0.0, [title(entry), "", note])
    fragment = results / f"{entry.name}.md"
    fragment.unlink(missing_ok=True)
    arguments = [argument.format(results=display(results)) for argument in (entry.quick if quick else entry.full)]
    command = ["python", display(script), *arguments, "--markdown", display(fragment)]
    print(f"\n=== {entry.name}: {shlex.join(command)}", flush=True)
    began = time.perf_counter()
    returncode = subprocess.run([sys.executable, *command[1:]], cwd=ROOT).returncode
    seconds = time.perf_counter() - began
    if returncode != 0:
        return Outcome("failed", seconds, [title(entry), "", f"*Failed: `{shlex.join(command)}` exited with status "
                                                     f"{returncode} (its output is in the run's log).*"],
                       shlex.join(command))
    lines = fragment.read_text().splitlines() if fragment.exists() else []
    if not lines or not lines[0].startswith(section.HEADING):
        return Outcome("failed", seconds, [title(entry), "", f"*Failed: `{shlex.join(command)}` wrote no section starting "
                                                     f"with a `{section.HEADING.strip()}` heading to "
                                                     f"`{display(fragment)}`.*"], shlex.join(command))
    return Outcome("ok", seconds, rebase_links(lines, fragment.parent, results.parent), shlex.join(command))


def include_accuracy(directory: Path, results: Path) -> Outcome:
    """The accuracy section of a run already made in ``directory``, copied into ``results/accuracy``."""
    target = results / "accuracy"
    target.mkdir(parents=True, exist_ok=True)
    for pattern in ACCURACY_FILES:
        for path in directory.glob(pattern):
            if path.resolve() != (target / path.name).resolve():
                shutil.copy2(path, target / path.name)
    lines = (target / "accuracy.md").read_text().splitlines()
    for extra in sorted(target.glob("accuracy-*.md")):      # further runs of the same script (other seeds)
        lines += ["", *extra.read_text().splitlines()[1:]]
    note = (f"*Not re-run by this command: taken from the run in `{display(directory)}` (its accuracy.md, "
            f"accuracy.json and plots, copied to `{display(target)}`), made by the command named below.*")
    fragment = [lines[0], "", note, *rebase_links(lines[1:], target, results)]
    section.write(str(results / "accuracy.md"), fragment)
    return Outcome("included", 0.0, rebase_links(fragment, results, results.parent))


def kept_section(entry: Section, results: Path) -> Optional[Outcome]:
    """A section not run this time: its fragment from an earlier run, if there is one, saying so."""
    fragment = results / f"{entry.name}.md"
    if not fragment.exists():
        return None
    lines = fragment.read_text().splitlines()
    written = time.strftime("%Y-%m-%d %H:%M", time.localtime(fragment.stat().st_mtime))
    note = f"*Not re-run by this command: the section as an earlier run wrote it (`{display(fragment)}`, {written}).*"
    return Outcome("kept", 0.0, [lines[0], "", note, *rebase_links(lines[1:], results, results.parent)])


LINK = re.compile(r"(\]\()([^)\s]+)(\))")


def rebase_links(lines: List[str], written_in: Path, page_in: Path) -> List[str]:
    """Relative markdown links of a fragment written in ``written_in``, made relative to ``page_in``."""
    def rebase(match: re.Match) -> str:
        target = match.group(2)
        if "://" in target or target.startswith(("#", "/")):
            return match.group(0)
        moved = os.path.relpath((written_in / target).resolve(), page_in.resolve())
        return f"{match.group(1)}{moved}{match.group(3)}"
    return [LINK.sub(rebase, line) for line in lines]


# --- the header ----------------------------------------------------------------------------------

def first_line(command: List[str]) -> str:
    """The first output line of a command, or "not installed"."""
    if shutil.which(command[0]) is None:
        return "not installed"
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    output = (result.stdout + result.stderr).strip().splitlines()
    return output[0] if output else "unknown"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2 ** 20
    return float("nan")


def machine() -> Dict[str, str]:
    import faiss
    import numpy
    import torch
    gpu = (", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
           if torch.cuda.is_available() else "none")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"CPU": f"{cpu_model()}, {os.cpu_count()} cores ({cores} available to this run)",
            "memory": f"{memory_gib():.1f} GiB", "GPU": gpu, "system": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "faiss": faiss.__version__,
            "numpy": numpy.__version__, "embrag_ext build": str(embrag_ext.build_info()),
            "beagle": first_line(["beagle"]), "minimac4": first_line(["minimac4", "--version"])}


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def header(command: str, quick: bool, facts: Dict[str, str], loads: Tuple[str, str], began: str,
           outcomes: Dict[str, Outcome], total: float) -> List[str]:
    lines = ["# embrag_ext: benchmark results", "",
             f"Written by `{command}` on {began}, in {total / 60:.1f} minutes"
             + (" (**--quick**: small sizes that check the scripts; the figures mean little)" if quick else "")
             + ". Every figure below comes from the scripts this command ran; do not edit this page, run the "
             "command again. Timings are CPU timings on this machine, which other jobs may share (the load "
             "averages below say how busy it was): compare the ratios measured side by side in one run.", "",
             *section.table(["", ""], [*facts.items(), ("load average (1 / 5 / 15 min) at start", loads[0]),
                                       ("load average at end", loads[1])]),
             "", "Where the time went:", ""]
    rows = [[name, outcome.status, f"{outcome.seconds / 60:.1f}", f"`{outcome.command}`" if outcome.command else "-"]
            for name, outcome in outcomes.items()]
    return lines + section.table(["section", "status", "minutes", "command"], rows) + [""]


# --- main ----------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None, sections: Sequence[Section] = SECTIONS,
         benchmarks: Path = BENCHMARKS) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, sections)
    page = Path(args.out).resolve()
    results = page.parent / "results"
    results.mkdir(parents=True, exist_ok=True)
    chosen = set(args.sections.split(",")) if args.sections else {entry.name for entry in sections}
    began, start_load, clock = time.strftime("%Y-%m-%d %H:%M %Z"), load(), time.perf_counter()
    outcomes: Dict[str, Outcome] = {}
    for entry in sections:
        if entry.name not in chosen:
            kept = None if args.quick else kept_section(entry, results)
            outcomes[entry.name] = kept or Outcome("not run", 0.0, [
                title(entry), "", "*Not run by this command (`--sections`), and no earlier full run's section.*"])
            continue
        if entry.name == "accuracy" and args.accuracy_dir:
            outcomes[entry.name] = include_accuracy(Path(args.accuracy_dir), results)
        else:
            outcomes[entry.name] = run_section(entry, args.quick, results, benchmarks)
    total = time.perf_counter() - clock
    command = shlex.join(["python", "benchmarks/run_all.py", *argv])
    lines = header(command, args.quick, machine(), (start_load, load()), began, outcomes, total)
    for outcome in outcomes.values():
        lines += ["", *outcome.lines]
    page.write_text("\n".join(lines).rstrip("\n") + "\n")
    print("\n=== where the time went")
    for name, outcome in outcomes.items():
        print(f"{outcome.seconds / 60:7.1f} min  {outcome.status:9} {name}")
    print(f"{total / 60:7.1f} min  total; wrote {display(page)}")
    return 1 if any(outcome.status == "failed" for outcome in outcomes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
