"""Fuzzing, each run in a subprocess so that a crash (a segfault in a kernel, in
htslib or in cyvcf2) fails the test rather than killing pytest: the three fused
ops over shapes, dtypes, strides and indices (tests/fuzz_ops.py), and the VCF/BCF
readers over mutated records (tests/fuzz_vcf.py). The examples are derandomized:
every run replays the same ones. The long variants (marked ``long``, run by
.ci/run) replay ten times as many."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
OPS = ["window_embed", "rag_fusion", "copy_posterior"]
FORMATS = ["vcf", "vcf.gz", "bcf"]
OP_EXAMPLES, VCF_EXAMPLES, LONG = 200, 300, 10


def fuzz(script, target, examples):
    """Run the fuzz script; its summary line, e.g. ``rag_fusion: 200 examples, 110 valid ...``."""
    result = subprocess.run([sys.executable, "-X", "faulthandler", str(HERE / script), target, str(examples)],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"exit status {result.returncode}\n{result.stdout}\n{result.stderr[-6000:]}"
    line = result.stdout.strip().splitlines()[-1]
    print(line)
    return line


def check_ops_summary(line, op, examples):
    total, valid, invalid = map(int, re.fullmatch(rf"{op}: (\d+) examples, (\d+) valid \(matched the reference\), "
                                                  r"(\d+) invalid \(raised\)", line).groups())
    assert total == valid + invalid and total > 0.8 * examples and valid > 0.2 * total and invalid > 0.2 * total


def check_vcf_summary(line, fmt, examples):
    parsed, errors = map(int, re.fullmatch(rf"{re.escape(fmt)}: {examples} examples, (\d+) parsed by a reader, "
                                           r"(\d+) one-line errors \(3 readers each\)", line).groups())
    assert parsed + errors == 3 * examples and parsed > 0 and errors > 0


@pytest.mark.parametrize("op", OPS)
def test_fused_op_raises_or_matches_the_reference(op):
    check_ops_summary(fuzz("fuzz_ops.py", op, OP_EXAMPLES), op, OP_EXAMPLES)


@pytest.mark.parametrize("fmt", FORMATS)
def test_mutated_records_parse_or_give_one_line_errors(fmt):
    check_vcf_summary(fuzz("fuzz_vcf.py", fmt, VCF_EXAMPLES), fmt, VCF_EXAMPLES)


@pytest.mark.long
@pytest.mark.parametrize("op", OPS)
def test_fused_op_long_fuzz(op):
    check_ops_summary(fuzz("fuzz_ops.py", op, LONG * OP_EXAMPLES), op, LONG * OP_EXAMPLES)


@pytest.mark.long
@pytest.mark.parametrize("fmt", FORMATS)
def test_mutated_records_long_fuzz(fmt):
    check_vcf_summary(fuzz("fuzz_vcf.py", fmt, LONG * VCF_EXAMPLES), fmt, LONG * VCF_EXAMPLES)
