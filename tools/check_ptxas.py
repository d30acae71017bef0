"""Read nvcc's -Xptxas -v report from a build log; print registers and spills
per kernel and architecture; exit 1 if any kernel spills or none was compiled.

    python tools/check_ptxas.py build.log [--archs sm_80,sm_90]
"""
import argparse
import re
import shutil
import subprocess
import sys

ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")


def parse_report(lines):
    """[(arch, mangled kernel, registers, spill stores, spill loads)]."""
    kernels, current = [], None
    for line in lines:
        if match := ENTRY.search(line):
            current = {"name": match.group(1), "arch": match.group(2)}
        elif current and (match := SPILLS.search(line)):
            current["stores"], current["loads"] = int(match.group(2)), int(match.group(3))
        elif current and (match := REGISTERS.search(line)):
            kernels.append((current["arch"], current["name"], int(match.group(1)),
                            current.get("stores", 0), current.get("loads", 0)))
            current = None
    return kernels


def demangle(names):
    if not shutil.which("c++filt"):
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    return [re.sub(r"\(anonymous namespace\)::|embrag::", "", n)[:90] for n in out.stdout.splitlines()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="build log holding the -Xptxas -v report")
    parser.add_argument("--archs", default="sm_80,sm_90", help="architectures that must appear")
    args = parser.parse_args()
    with open(args.log) as log:
        kernels = parse_report(log)
    names = demangle([k[1] for k in kernels])
    print(f"{'arch':6} {'regs':>4} {'spill st':>8} {'spill ld':>8}  kernel")
    for (arch, _, regs, stores, loads), name in sorted(zip(kernels, names)):
        print(f"{arch:6} {regs:4d} {stores:8d} {loads:8d}  {name}")
    problems = [f"no kernel compiled for {arch}" for arch in args.archs.split(",")
                if not any(k[0] == arch for k in kernels)]
    problems += [f"{name} spills on {k[0]}" for k, name in zip(kernels, names) if k[3] or k[4]]
    for problem in problems:
        print(f"ptxas check FAILED: {problem}")
    if not problems:
        print(f"ptxas check passed: {len(kernels)} kernels, 0 spill stores, 0 spill loads")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
