"""Training and imputation end to end on a tiny simulated cohort."""
import json
import math
import os

import numpy as np
import pytest
import torch

from helpers import TINY_TRAINING
from embrag_ext import evaluate, impute, train, training
from embrag_ext.dataset import WindowBatches
from embrag_ext.errors import InputError, run_cli
from embrag_ext.masking import MaskConfig
from embrag_ext.panel_vcf import load_panel
from embrag_ext.targets import load_targets
from embrag_ext.tokens import MASK
from embrag_ext.vcf_io import read_imputed

TINY = TINY_TRAINING


def test_batches_are_deterministic_and_mask_like_an_array():
    haplotypes_T = (np.random.default_rng(0).random((20, 300)) < 0.3).astype(np.uint8)    # 10 samples
    windows = np.array([[0, 100], [80, 180], [160, 260], [200, 300]])
    make = lambda: WindowBatches(haplotypes_T, windows, 50, 4, MaskConfig(ratio_range=(0.1, 0.1)), 5,
                                 panel_sample=np.arange(10))
    first, second = make(), make()
    second.set_epoch(1)
    second.set_epoch(0)
    for index in range(len(first)):
        a, b = first[index], second[index]
        assert all(torch.equal(a[key], b[key]) for key in a)
    batch = first[2]
    start, key_start = int(batch["start"]), first.key_ranges[int(batch["window"]), 0]
    inside = slice(start - key_start, start - key_start + 100)
    assert torch.equal(batch["tokens"], batch["key_tokens"][..., inside])
    assert (batch["tokens"][..., ~batch["observed"]] == MASK).all()
    seen = batch["tokens"][..., batch["observed"]]
    assert (seen == batch["haplotypes"][..., batch["observed"]].long())[seen != MASK].all()
    assert 0.05 < batch["key_observed"].float().mean() < 0.15


def tiny_args(cohort, out, *extra):
    return ["--panel", cohort["panel"], "--out", str(out), *TINY, *extra]


def without_timings(history):
    """The history as JSON text without the timings (NaN metrics compare equal as text)."""
    return json.dumps([{key: value for key, value in record.items() if "seconds" not in key}
                       for record in history], sort_keys=True)


@pytest.mark.parametrize("mode,refresh", [("none", "epoch"), ("token", "fixed"), ("embedding", "fixed"),
                                          ("embedding", "2")])
def test_each_mode_trains_and_reports(cohort, tmp_path, mode, refresh):
    history = train.main(tiny_args(cohort, tmp_path, "--mode", mode, "--refresh", refresh))
    assert len(history) == 2
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    record = metrics["history"][-1]
    for key in ("train_loss", "val_loss", "alt_f1_common", "dosage_r2"):
        assert math.isfinite(record[key]), key
    assert (tmp_path / "checkpoint.pt").is_file()


def test_resume_equals_an_uninterrupted_run(cohort, tmp_path):
    straight = train.main(tiny_args(cohort, tmp_path / "straight", "--epochs", "2"))
    train.main(tiny_args(cohort, tmp_path / "resumed", "--epochs", "1"))
    resumed = train.main(["--resume", str(tmp_path / "resumed"), "--epochs", "2"])
    assert without_timings(resumed) == without_timings(straight)


def test_refresh_changes_keys_and_fixed_does_not(cohort, tmp_path):
    for refresh, should_change in (("1", True), ("fixed", False)):
        config = train.run_config(train.parse_options(tiny_args(cohort, tmp_path, "--refresh", refresh)))
        trainer = training.Trainer(config, str(tmp_path))
        trainer.refresh("initial encoder")
        before = [e.copy() for e in trainer.retriever.encodings]
        trainer.train_epoch()                                   # 3 steps; option B refreshes after each
        changed = any(not np.array_equal(a, b) for a, b in zip(before, trainer.retriever.encodings))
        assert changed == should_change, refresh
        assert config.retrieval.detach_reference == (not should_change)


def test_config_file_sets_options_and_the_command_line_wins(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"k": 5, "epochs": 7, "refresh": "fixed"}))
    run = train.run_config(train.parse_options(["--config", str(config), "--epochs", "3"]))
    assert (run.retrieval.k, run.train.epochs, run.retrieval.refresh_every) == (5, 3, None)
    config.write_text(json.dumps({"neighbours": 5}))
    with pytest.raises(InputError, match="unknown options neighbours"):
        train.parse_options(["--config", str(config)])


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train.main, ["--refresh", "sometimes"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: --refresh 'sometimes'")


@pytest.mark.parametrize("content,message", [
    (None, "not a readable embrag_ext checkpoint"),               # missing file
    (b"##fileformat=VCFv4.2\n", "not a readable embrag_ext checkpoint"),
    ("torch", "not an embrag_ext checkpoint (missing model"),     # a torch file of something else
])
def test_impute_rejects_a_bad_checkpoint_in_one_line(cohort, tmp_path, capsys, content, message):
    checkpoint, out = tmp_path / "checkpoint.pt", tmp_path / "imputed.vcf.gz"
    if content == "torch":
        torch.save({"weights": torch.zeros(2)}, checkpoint)
    elif content is not None:
        checkpoint.write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(impute.main, ["--checkpoint", str(checkpoint), "--panel", cohort["panel"],
                              "--targets", cohort["targets"], "--out", str(out)])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.startswith("error: --checkpoint") and message in error
    assert len(error.strip().splitlines()) == 1 and not out.exists()


def test_impute_writes_a_vcf_that_evaluate_scores(cohort, tmp_path):
    train.main(tiny_args(cohort, tmp_path, "--epochs", "1"))
    out = str(tmp_path / "imputed.vcf.gz")
    impute.main(["--checkpoint", str(tmp_path / "checkpoint.pt"), "--panel", cohort["panel"],
                 "--targets", cohort["targets"], "--out", out])
    calls = read_imputed(out)
    truth = read_imputed(cohort["truth"])
    typed = read_imputed(cohort["targets"])
    assert calls.haplotypes.shape == truth.haplotypes.shape
    kept = load_targets(cohort["targets"], load_panel(cohort["panel"])).typed       # typed sites QC kept
    assert kept.sum() < len(typed.positions)                                       # QC excluded some
    typed_rows = np.isin(calls.positions, typed.positions) & kept
    assert np.array_equal(calls.haplotypes[typed_rows], typed.haplotypes[np.isin(typed.positions, calls.positions[kept])])
    assert not calls.imputed[kept].any() and calls.imputed[~kept].all()
    report = evaluate.main(["--truth", cohort["truth"], "--imputed", out, "--typed", cohort["targets"],
                            "--out-json", str(tmp_path / "eval.json")])
    assert os.path.isfile(tmp_path / "eval.json") and report is not None
