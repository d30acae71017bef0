"""Errors caused by bad user input, and the wrapper that reports them in CLIs.

An :class:`InputError` means "the user gave us something we cannot use" (a
corrupt VCF, a bad argument): its message is one line that names the file and
the record, line or argument at fault. :func:`run_cli` turns it into
``error: <message>`` on stderr and exit status 2, with no traceback.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence


class InputError(ValueError):
    """Bad user input. The message is a single line naming the file and
    record (or the argument) at fault."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def run_cli(main_fn: Callable[[Optional[Sequence[str]]], object],
            argv: Optional[Sequence[str]] = None) -> object:
    """Call ``main_fn(argv)``; on :class:`InputError` print ``error: <message>``
    to stderr and exit with status 2 (no traceback)."""
    try:
        return main_fn(argv)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
