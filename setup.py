"""Build embrag_ext and its fused-operator extension embrag_ext._C.

    pip install --no-build-isolation .          # against the torch already installed

CUDA kernels are built when the installed torch is a CUDA build and nvcc is
found (CUDA_HOME, or /usr/local/cuda, or nvcc on PATH); EMBRAG_SKIP_CUDA=1
builds the CPU kernels only. Architectures: TORCH_CUDA_ARCH_LIST, default
"8.0;9.0". Whether a GPU is present never matters.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent.resolve()
sys.path.insert(0, str(ROOT / "tools"))
from faiss_requirement import faiss_requirement  # noqa: E402  (faiss-cpu, or the GPU build installed)
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def fail(sentence):
    """Stop the build with one clear sentence instead of a long traceback."""
    sys.stderr.write(f"\nembrag_ext build error: {sentence}\n\n")
    raise SystemExit(1)


def read_list(name):
    """The non-comment lines of csrc/<name>, stripped."""
    lines = (line.split("#", 1)[0].strip() for line in (ROOT / "csrc" / name).read_text().splitlines())
    return [line for line in lines if line]


def read_sources():
    """Source paths by kind, from csrc/sources.txt (the one list)."""
    sources = {"common": [], "cuda_host": [], "cuda_kernel": []}
    for line in read_list("sources.txt"):
        kind, path = line.split()
        sources[kind].append(path)
    return sources


def find_nvcc():
    """Path of nvcc, or None."""
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = Path(cuda_home) / "bin" / "nvcc"
    return str(candidate) if candidate.exists() else shutil.which("nvcc")


def nvcc_version(nvcc):
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else "unknown"


def want_cuda(torch):
    """(build CUDA kernels?, nvcc path, reason printed to the user)."""
    if os.environ.get("EMBRAG_SKIP_CUDA", "0") not in ("", "0"):
        return False, None, "EMBRAG_SKIP_CUDA is set"
    if torch.version.cuda is None:
        return False, None, f"torch {torch.__version__} is a CPU-only build"
    nvcc = find_nvcc()
    if nvcc is None:
        return False, None, "nvcc not found (set CUDA_HOME to the CUDA toolkit to build CUDA kernels)"
    return True, nvcc, f"nvcc {nvcc_version(nvcc)} at {nvcc}"


def extensions():
    try:
        import torch
    except ImportError:
        fail("PyTorch must be installed first: pip install torch==2.14.1 (CUDA) or "
             "torch==2.13.0 (CPU), then pip install --no-build-isolation .")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        fail(f"no C++ compiler ('{cxx}' not found): install g++ (apt-get install g++) or set CXX.")
    build_cuda, nvcc, reason = want_cuda(torch)
    print(f"embrag_ext: CUDA kernels {'ON' if build_cuda else 'OFF'} ({reason})", flush=True)
    if build_cuda:
        # torch.utils.cpp_extension reads CUDA_HOME when it is first imported.
        os.environ["CUDA_HOME"] = str(Path(nvcc).resolve().parent.parent)
    from torch.utils import cpp_extension

    sources = read_sources()
    # Build facts for embrag_ext.build_info(), as bare tokens (stringified in
    # python/module.cpp): quotes would not survive the shell ninja runs
    # compilers in. Host compiler only: nvcc reads commas in -D as separators.
    info_flags = [f"-DEMBRAG_TORCH_VERSION={torch.__version__}"]
    # at::parallel_for is an inline template: without -fopenmp it compiles to a serial
    # call in the extension. torch ships libgomp.so.1, which the extension then shares.
    openmp = ["-fopenmp"]
    if not build_cuda:
        return [cpp_extension.CppExtension(
            "embrag_ext._C", sources["common"],
            extra_compile_args={"cxx": ["-O3", "-Wall"] + openmp + info_flags},
            extra_link_args=openmp)]

    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    info_flags += [f"-DEMBRAG_CUDA_ARCHS={archs.replace(';', ',')}",
                   f"-DEMBRAG_NVCC_VERSION={nvcc_version(nvcc)}"]
    return [cpp_extension.CUDAExtension(
        "embrag_ext._C",
        sources["common"] + sources["cuda_host"] + sources["cuda_kernel"],
        define_macros=[("EMBRAG_WITH_CUDA", None)],
        extra_compile_args={"cxx": ["-O3", "-Wall"] + openmp + info_flags,
                            "nvcc": read_list("nvcc_flags.txt")},
        extra_link_args=openmp)]


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension
    return BuildExtension.with_options(use_ninja=True)


setup(
    name="embrag_ext",
    version="0.1.0",
    description="Retrieval-augmented transformer genotype imputation with fused embedding retrieval kernels",
    packages=find_packages(include=["embrag_ext", "embrag_ext.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", faiss_requirement(), "cyvcf2", "tqdm", "matplotlib", "msprime"],
    extras_require={"test": ["pytest", "pytest-benchmark", "expecttest", "hypothesis"], "ooa": ["stdpopsim"]},
    entry_points={"console_scripts": [f"embrag-{command} = embrag_ext.{command}:cli"
                                      for command in ("train", "impute", "evaluate", "simulate")]},
    ext_modules=extensions(),
    cmdclass={"build_ext": build_ext_class()},
)
