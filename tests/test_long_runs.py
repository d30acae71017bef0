"""Long runs keep their memory flat: 20 epochs of a small training run, with the
FAISS keys refreshed every epoch (--copying off: 20 refreshes) and with the
default copying posterior (no index to refresh), each in a fresh process
(benchmarks/bench_long_run.py). The resident set after the last epoch is within
5% of the one after the first. Marked long: `pytest -m long`, run by .ci/run."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "benchmarks" / "bench_long_run.py"
EPOCHS, MAX_GROWTH_PERCENT = 20, 5.0


@pytest.mark.long
@pytest.mark.parametrize("copying,refreshes", [("off", EPOCHS), ("on", 0)], ids=["FAISS keys refreshed", "copying"])
def test_rss_stays_flat_over_20_epochs(copying, refreshes, tmp_path):
    result = subprocess.run([sys.executable, str(BENCH), "--copying", copying, "--epochs", str(EPOCHS),
                             "--work", str(tmp_path)], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    line = result.stdout.strip().splitlines()[-1]
    print(line)
    match = re.search(rf"after epoch {EPOCHS} \(growth ([-+]\d+\.\d+)%\), peak .* MiB, (\d+) refreshes", line)
    assert match and int(match[2]) == refreshes, line
    assert float(match[1]) < MAX_GROWTH_PERCENT, line
