"""Progress output: bars on a terminal, one line per stage when redirected."""
import pytest

from helpers import TINY_TRAINING, run_module
from embrag_ext import progress as progress_module
from embrag_ext.progress import note, progress

TINY = TINY_TRAINING


def test_redirected_progress_writes_one_line_per_kept_bar(monkeypatch, capsys):
    monkeypatch.setenv("EMBRAG_PROGRESS", "lines")
    assert list(progress(range(5), total=5, desc="imputing")) == [0, 1, 2, 3, 4]
    transient = progress(range(3), total=3, desc="epoch 1", leave=False)
    for _ in transient:
        transient.set_postfix(loss="0.1")
    note("epoch 1: done")
    captured = capsys.readouterr()
    assert captured.out == "epoch 1: done\n"
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith("imputing: 5/5 in ")


def test_terminal_gets_a_tqdm_bar(monkeypatch):
    monkeypatch.setenv("EMBRAG_PROGRESS", "bar")
    assert isinstance(progress(range(2), total=2), progress_module.tqdm)
    monkeypatch.delenv("EMBRAG_PROGRESS")
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: True, raising=False)
    assert progress_module.bars_enabled()


@pytest.mark.usefixtures("isolated_cache")
def test_train_log_has_no_redraws(cohort, tmp_path):
    """A training run with its output redirected: the run line, then one line per epoch (the default
    copying posterior has no index to refresh), then where the outputs went."""
    result = run_module("train", "--panel", cohort["panel"], "--out", tmp_path / "run", *TINY)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr and result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + 2 + 1, lines          # start, epoch x 2, "checkpoint and metrics in"
    assert [line.split(":")[0] for line in lines if line.startswith("epoch")] == ["epoch 1", "epoch 2"]
