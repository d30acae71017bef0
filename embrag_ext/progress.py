"""Progress reporting: a bar on a terminal, one line per stage in a log file.

``progress(iterable, total, desc)`` is a tqdm bar when stderr is a terminal.
Redirected (a log file, a pipe, a batch job), it draws nothing while the loop
runs and, for a bar that would stay on screen (``leave=True``), writes one
line when it ends: ``imputing: 41/41 in 4.2 s``. A transient bar
(``leave=False``, e.g. the steps of a training epoch, whose result the epoch
line reports) writes nothing. :func:`note` prints a message without breaking
a bar that is being drawn. ``EMBRAG_PROGRESS=bar`` or ``=lines`` overrides the
terminal test.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, Optional

from tqdm import tqdm


def bars_enabled() -> bool:
    """Draw bars? ``EMBRAG_PROGRESS`` (bar / lines) if set, else whether stderr is a terminal."""
    choice = os.environ.get("EMBRAG_PROGRESS", "").lower()
    if choice in ("bar", "lines"):
        return choice == "bar"
    return sys.stderr.isatty()


class _Lines:
    """The redirected stand-in for a tqdm bar: one summary line at the end (if ``leave``)."""

    def __init__(self, iterable: Iterable, total: Optional[int], desc: str, leave: bool):
        self.iterable, self.total, self.desc, self.leave = iterable, total, desc, leave
        self.count, self.began, self.closed = 0, time.perf_counter(), False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.count += 1
        self.close()

    def set_postfix(self, *args, **kwargs) -> None:
        """Bars show it; a log file gets the stage's result line instead."""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.leave:
            of = f"/{self.total}" if self.total is not None else ""
            print(f"{self.desc}: {self.count}{of} in {time.perf_counter() - self.began:.1f} s",
                  file=sys.stderr, flush=True)


def progress(iterable: Iterable, total: Optional[int] = None, desc: str = "", leave: bool = True):
    """A progress bar over ``iterable`` (see module doc); supports ``set_postfix`` and ``close``."""
    if bars_enabled():
        return tqdm(iterable, total=total, desc=desc, leave=leave)
    return _Lines(iterable, total, desc, leave)


def note(message: str) -> None:
    """Print ``message`` on stdout, above a bar that is being drawn."""
    if bars_enabled():
        tqdm.write(message)
    else:
        print(message, flush=True)
