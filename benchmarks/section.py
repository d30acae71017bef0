"""The protocol of a results section: what every script that ``run_all.py`` runs follows.

    python benchmarks/bench_X.py [--quick] --markdown PATH

writes to PATH a markdown fragment that starts with a ``## `` heading, says
what is measured and the exact command that measured it, and holds its tables;
a plot is written beside PATH and linked relative to PATH's folder
(:func:`plot_path`). ``--quick`` runs small sizes that check the script in
seconds to minutes (its figures mean little). ``run_all.py`` puts the
fragments together into ``benchmarks/RESULTS.md``.

The helpers here are what the section scripts share: the two arguments, the
command line as run, markdown tables, writing the fragment.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

HEADING = "## "


def add_arguments(parser: argparse.ArgumentParser, quick_help: str) -> None:
    """``--quick`` (with what it shrinks, ``quick_help``) and ``--markdown PATH``."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--markdown", help="write this results section (markdown) here, its plots beside it")


def command(argv: Optional[Sequence[str]] = None) -> str:
    """The command line that ran this script, as a user would type it from the checkout's root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.join(["python", str(script), *(sys.argv[1:] if argv is None else argv)])


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> List[str]:
    """A markdown table (cells converted with str)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def plot_path(markdown: str, name: str) -> Path:
    """Where a section written to ``markdown`` puts its plot ``name``: beside it,
    prefixed with the section's file stem (link it as ``path.name``)."""
    path = Path(markdown)
    return path.parent / f"{path.stem}_{name}"


def write(markdown: str, lines: Sequence[str]) -> None:
    """Write the fragment; it must start with the ``## `` heading."""
    if not lines or not lines[0].startswith(HEADING):
        raise ValueError(f"a results section starts with a '{HEADING}' heading, not {lines[:1]!r}")
    path = Path(markdown)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip("\n") + "\n")
    print(f"wrote {os.path.relpath(path)}", flush=True)


def fmt(value: Optional[float], digits: int = 1) -> str:
    """A number for a table, ``-`` for None."""
    return "-" if value is None else f"{value:,.{digits}f}"


def ms(seconds: Optional[float]) -> str:
    """Seconds as milliseconds for a table, ``-`` for None."""
    return fmt(None if seconds is None else seconds * 1e3, 1)


def mib(n_bytes: Optional[float]) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 2 ** 20:,.0f}"


def ratio(numerator: Optional[float], denominator: Optional[float], digits: int = 2) -> str:
    """``a/b`` as ``1.23x``; ``-`` when either is missing or b is 0."""
    if numerator is None or not denominator:
        return "-"
    return f"{numerator / denominator:.{digits}f}x"
