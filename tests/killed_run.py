"""Run a command and SIGKILL it at a chosen point (tests/test_interrupted_runs.py).

    python tests/killed_run.py MODULE:ATTRIBUTE N COMMAND [ARGS...]

replaces the function ``MODULE.ATTRIBUTE`` (e.g. ``embrag_ext.training:Trainer.train_step``)
by one that, at its N-th call (1-based), prints ``killed at call N`` on stderr and
sends this process SIGKILL before the call runs; then runs ``python -m
embrag_ext.COMMAND ARGS`` as the console script does. A SIGKILL gives the
process no chance to clean up: what it leaves is what a crash, an OOM kill or a
pulled plug would leave.
"""
import functools
import importlib
import os
import signal
import sys

from embrag_ext.errors import run_cli


def kill_at_call(target: str, n: int) -> None:
    module_name, attribute = target.split(":")
    owner = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original, calls = getattr(owner, name), [0]

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            print(f"killed at call {n} of {target}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    setattr(owner, name, wrapper)


if __name__ == "__main__":
    target, n, command, *argv = sys.argv[1:]
    kill_at_call(target, int(n))
    run_cli(importlib.import_module(f"embrag_ext.{command}").main, argv)
