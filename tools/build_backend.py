"""PEP 517 build backend for embrag_ext: setuptools', built against the torch
of the environment being installed into.

A plain ``pip install .`` builds in an isolated environment that hides the
installed torch, so setup.py could not import it ("PyTorch must be installed
first"); asking for ``torch`` in the build requirements instead would build
against a second copy (gigabytes to fetch and unpack, possibly another
version or ABI than the one the extension will run with).

This backend keeps one torch: pip runs the build hooks with the interpreter
of the target environment, whose site-packages (sysconfig's purelib and
platlib) hold the installed torch. When torch is not importable in the build
environment, that site-packages directory is appended to ``sys.path`` (after
the isolated build tools: setuptools, wheel and ninja still come from the
build environment), so setup.py compiles against exactly the torch that will
import the extension. Nothing is downloaded. With ``--no-build-isolation``
torch is importable already and nothing changes. With no torch installed,
setup.py stops with its one-line message.
"""
import importlib.util
import os
import sys
import sysconfig

from setuptools.build_meta import *  # noqa: F401,F403  (the PEP 517 hooks)


def environment_site_packages():
    """The target environment's site-packages directories that hold torch."""
    paths = dict.fromkeys(sysconfig.get_paths()[name] for name in ("purelib", "platlib"))
    return [path for path in paths if os.path.isdir(os.path.join(path, "torch"))]


def expose_installed_torch():
    """Append the environment's site-packages to sys.path when torch is not importable."""
    if importlib.util.find_spec("torch") is not None:
        return
    for path in environment_site_packages():
        if path not in sys.path:
            sys.path.append(path)


expose_installed_torch()
