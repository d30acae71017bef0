"""The CUDA block bodies, run on the CPU by the SIMT shim (tests/simt), under
ThreadSanitizer when the compiler has it: every tests/simt/test_*.cpp is built
and must print PASS with no sanitizer report."""
import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SIMT_DIR = Path(__file__).parent / "simt"
CXX = os.environ.get("CXX", "g++")


@functools.cache
def tsan_flags():
    """["-fsanitize=thread"] if this compiler can build and run with TSan."""
    probe = SIMT_DIR / "simt_shim.h"
    try:
        subprocess.run([CXX, "-std=c++20", "-fsanitize=thread", "-fsyntax-only", "-x", "c++",
                        str(probe)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return []
    return ["-fsanitize=thread"]


@pytest.mark.skipif(shutil.which(CXX) is None, reason=f"needs a C++ compiler ({CXX})")
@pytest.mark.parametrize("source", sorted(SIMT_DIR.glob("test_*.cpp")), ids=lambda p: p.stem)
def test_cuda_body_under_simt_shim(source, tmp_path):
    binary = tmp_path / source.stem
    subprocess.run([CXX, "-std=c++20", "-O1", "-g", "-pthread", *tsan_flags(), str(source),
                    "-o", str(binary)], check=True, capture_output=True, text=True)
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    result = subprocess.run([str(binary)], capture_output=True, text=True, env=env, timeout=600)
    report = result.stdout + result.stderr
    assert result.returncode == 0 and "ThreadSanitizer" not in report, report
    assert report.rstrip().endswith("PASS"), report
