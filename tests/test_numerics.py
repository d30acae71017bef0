"""Numerical safety of training: a NaN or Inf stops the run with one line and
keeps the last good checkpoint; --clip-grad clips the gradients' norm."""
import json
import math

import pytest
import torch

from helpers import TINY_TRAINING
from embrag_ext import train, training
from embrag_ext.checkpoint import load_checkpoint
from embrag_ext.errors import run_cli
from embrag_ext.numerics import loss_and_grad_norm

STEPS_PER_EPOCH = int(TINY_TRAINING[TINY_TRAINING.index("--steps-per-epoch") + 1])


def poison_at(monkeypatch, epoch, step, value):
    """Set the token table to ``value`` before the given step (0-based epoch and global step)."""
    original = training.Trainer.train_step

    def train_step(self, batch):
        if (self.epoch, self.step) == (epoch, step):
            with torch.no_grad():
                self.model.embedding.tok_table.fill_(value)
        return original(self, batch)
    monkeypatch.setattr(training.Trainer, "train_step", train_step)


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(cohort, tmp_path, capsys, monkeypatch,
                                                                              value):
    out = tmp_path / "run"
    poison_at(monkeypatch, epoch=1, step=STEPS_PER_EPOCH + 1, value=value)      # the 2nd step of epoch 2
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train.main, ["--panel", cohort["panel"], "--out", str(out), *TINY_TRAINING, "--epochs", "3"])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(error.splitlines()) == 1
    assert error.startswith(f"error: training stopped at epoch 2, step {STEPS_PER_EPOCH + 2}: the loss is nan; "
                            f"the last good checkpoint, {out / 'checkpoint.pt'}, is kept; train again with a lower "
                            "--lr (was 0.003) or with --clip-grad NORM"), error
    kept = load_checkpoint(str(out / "checkpoint.pt"), "cpu")
    assert (kept.epoch, kept.step, len(kept.history)) == (1, STEPS_PER_EPOCH, 1)
    assert all(torch.isfinite(weights).all() for weights in kept.model.values())
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 1
    assert sorted(path.name for path in out.iterdir()) == ["checkpoint.pt", "metrics.json"]   # no temporary file


def test_a_nan_in_the_first_epoch_says_no_checkpoint_was_written(cohort, tmp_path, capsys, monkeypatch):
    poison_at(monkeypatch, epoch=0, step=0, value=math.nan)
    with pytest.raises(SystemExit):
        run_cli(train.main, ["--panel", cohort["panel"], "--out", str(tmp_path / "run"), *TINY_TRAINING])
    assert "step 1: the loss is nan; no checkpoint had been written yet" in capsys.readouterr().err
    assert list((tmp_path / "run").iterdir()) == []


def test_a_non_finite_gradient_with_a_finite_loss_stops_too():
    weight = torch.ones(3, requires_grad=True)
    weight.register_hook(lambda grad: grad * math.inf)
    (weight * 2).sum().backward()
    loss, norm = loss_and_grad_norm(torch.tensor(6.0), [weight], clip_grad=0.0)
    assert loss == 6.0 and norm == math.inf


def test_clipping_scales_the_gradients_to_the_norm_and_reports_the_norm_before():
    weight = torch.zeros(4, requires_grad=True)
    (weight * torch.tensor([3.0, 4.0, 0.0, 0.0])).sum().backward()       # gradient norm 5
    loss, norm = loss_and_grad_norm(torch.tensor(1.0), [weight], clip_grad=0.5)
    assert norm == pytest.approx(5.0) and weight.grad.norm().item() == pytest.approx(0.5, rel=1e-5)
    weight.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    assert loss_and_grad_norm(torch.tensor(1.0), [weight], clip_grad=0.0)[1] == pytest.approx(5.0)
    assert weight.grad.norm().item() == pytest.approx(5.0)                     # 0: not clipped


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_clip_grad_bounds_every_step_of_a_run(cohort, tmp_path, clip):
    options = train.parse_options(["--panel", cohort["panel"], "--out", str(tmp_path), *TINY_TRAINING,
                                   "--clip-grad", str(clip)])
    trainer = training.Trainer(train.run_config(options), str(tmp_path))
    norms, step = [], trainer.optimizer.step

    def recording_step(*args, **kwargs):
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in trainer.model.parameters()
                                                    if p.grad is not None]).item())
        return step(*args, **kwargs)
    trainer.optimizer.step = recording_step
    trainer.train_epoch()
    assert len(norms) == STEPS_PER_EPOCH
    if clip:
        assert max(norms) <= clip * (1 + 1e-4)
    else:
        assert max(norms) > 1e-3                  # the bound above is not met by accident
