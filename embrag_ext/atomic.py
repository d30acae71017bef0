"""Output files that appear whole or not at all.

:func:`atomic_output` is how every output of the package is written (imputed
VCFs and their reports, checkpoints, metrics, evaluation reports): to a
hidden temporary file in the output's directory, flushed to disk (fsync),
then renamed over the output name, and the directory entry synced. A run
that fails or is killed leaves either the previous file or the new one under
the output name, never a part of one; a failure removes the temporary file,
a kill leaves only the hidden ``.<name>.*.tmp``. A write that fails for lack
of space, a file-size limit or permission is one-line :class:`InputError`
naming the output.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator, Sequence

from .errors import InputError


def default_file_mode() -> int:
    """The mode a newly created file gets under the current umask (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def output_directory(out_path: str) -> str:
    """The existing directory ``out_path`` goes in; InputError if there is none."""
    directory = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(directory):
        raise InputError(f"{out_path}: output directory {directory} does not exist")
    return directory


def check_writable_directory(directory: str, flag: str) -> None:
    """InputError naming ``flag`` unless a file can be created in ``directory``
    (tried, not inferred from permission bits: root, read-only mounts and ACLs differ)."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise InputError(f"{flag}: output directory {directory} is not writable ({error.strerror})") from None


def check_output_directory(out_dir: str, flag: str) -> None:
    """InputError naming ``flag`` unless ``out_dir`` is a directory, or can be made
    as one, in which files can be created (its nearest existing parent is tried)."""
    existing = os.path.abspath(out_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"{flag} {out_dir}: {existing} is a file, not a directory")
    check_writable_directory(existing, f"{flag} {out_dir}")


def write_failed(out_path: str, error: OSError) -> InputError:
    """The one-line error of an output that could not be written (disk full, size limit, permission)."""
    reason = error.strerror or " ".join(str(error).split())
    return InputError(f"{out_path}: cannot write the output ({reason}); nothing was written there")


def sync(path: str, directory: bool = False) -> None:
    """fsync a file, or a directory's entries."""
    handle = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_output(out_path: str, companions: Sequence[str] = ()) -> Iterator[str]:
    """Yield a temporary path in ``out_path``'s directory; when the block
    completes without error it is synced to disk and becomes ``out_path``
    (and ``temp + suffix`` becomes ``out_path + suffix`` for each companion
    suffix, e.g. an index, renamed first: ``out_path`` appears last). On error
    nothing is left behind; an OSError in the block (disk full, file-size
    limit) becomes :func:`write_failed`'s InputError."""
    out_path = os.fspath(out_path)
    directory = output_directory(out_path)
    try:
        handle, temp_path = tempfile.mkstemp(prefix=f".{os.path.basename(out_path)}.", suffix=".tmp",
                                             dir=directory)
    except OSError as error:
        raise write_failed(out_path, error) from None
    os.close(handle)
    temps = [temp_path] + [temp_path + suffix for suffix in companions]
    try:
        try:
            yield temp_path
            for temp in temps:
                sync(temp)
        except OSError as error:
            raise write_failed(out_path, error) from None
        os.chmod(temp_path, default_file_mode())
        finals = [out_path] + [out_path + suffix for suffix in companions]
        for temp, final in reversed(list(zip(temps, finals))):
            os.replace(temp, final)
        sync(directory, directory=True)
    finally:
        for leftover in temps:
            if os.path.exists(leftover):
                os.remove(leftover)
