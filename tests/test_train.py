"""Training and imputation end to end on a tiny simulated cohort."""
import json
import math
import os

import numpy as np
import pytest
import torch

from helpers import TINY_TRAINING
from embrag_ext import evaluate, impute, precision, train, training
from embrag_ext.checkpoint import load_checkpoint
from embrag_ext.dataset import SpanBatches
from embrag_ext.errors import InputError
from embrag_ext.imputation import impute_haplotypes
from embrag_ext.masking import MaskConfig
from embrag_ext.panel_vcf import load_panel
from embrag_ext.targets import load_targets
from embrag_ext.tokens import MASK
from embrag_ext.vcf_io import read_imputed

TINY = TINY_TRAINING


def test_batches_are_deterministic_and_mask_like_an_array():
    haplotypes_T = (np.random.default_rng(0).random((20, 3000)) < 0.3).astype(np.uint8)    # 10 samples
    windows = np.array([[0, 100], [80, 180], [1500, 1600], [2900, 3000]])
    make = lambda: SpanBatches(haplotypes_T, windows, 20, 4, MaskConfig(ratio_range=(0.1, 0.1)), 5,
                               panel_sample=np.arange(10))
    first, second = make(), make()
    second.set_epoch(1)
    second.set_epoch(0)
    for index in range(len(first)):
        a, b = first[index], second[index]
        assert all(torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key] for key in a)
    for index in range(len(first)):
        batch = first[index]
        start, end = windows[int(batch["span"])]
        sites = batch["context_sites"].numpy()
        inside = (sites >= start) & (sites < end)
        assert (sites[sites < start].size == 20 or start < 400) and (sites[sites >= end].size == 20 or end > 2600)
        assert np.array_equal(np.flatnonzero(batch["observed"].numpy()) + start, sites[inside])
        assert (batch["tokens"][..., ~batch["observed"]] == MASK).all()
        assert torch.equal(batch["tokens"][..., sites[inside] - start], batch["context_tokens"][..., inside])
        seen = batch["context_tokens"]
        truth = torch.from_numpy(haplotypes_T[:, sites].reshape(10, 2, -1)[first.plan[index][1]].astype(np.int64))
        assert (seen == truth)[seen != MASK].all() and (seen == MASK).float().mean() < 0.1
        assert 0.07 < len(sites) / (sites[-1] - sites[0] + 1) < 0.14


def test_array_aware_batches_observe_exactly_the_array():
    haplotypes_T = (np.random.default_rng(1).random((8, 500)) < 0.3).astype(np.uint8)
    array = np.zeros(500, dtype=bool)
    array[::7] = True
    batches = SpanBatches(haplotypes_T, np.array([[200, 300]]), 5, 4, MaskConfig(), 0,
                          panel_sample=np.arange(4), observed_sites=array)
    batch = batches[0]
    before, inside, after = [168, 175, 182, 189, 196], list(range(203, 300, 7)), [301, 308, 315, 322, 329]
    assert batch["context_sites"].tolist() == before + inside + after     # 5 observed sites per side
    assert batch["observed"].numpy().sum() == array[200:300].sum()


def tiny_args(cohort, out, *extra):
    return ["--panel", cohort["panel"], "--out", str(out), *TINY, *extra]


def without_timings(history):
    """The history as JSON text without the timings (NaN metrics compare equal as text)."""
    return json.dumps([{key: value for key, value in record.items() if "seconds" not in key}
                       for record in history], sort_keys=True)


@pytest.mark.parametrize("mode,options", [
    ("none", []), ("token", []), ("embedding", []), ("embedding", ["--templates", "20"]),
    ("embedding", ["--array", "targets"]), ("token", ["--copying", "off", "--refresh", "fixed"]),
    ("embedding", ["--copying", "off", "--refresh", "fixed"]), ("embedding", ["--copying", "off", "--refresh", "2"]),
], ids=lambda value: " ".join(value) if isinstance(value, list) else value)
def test_each_mode_trains_and_reports(cohort, tmp_path, mode, options):
    options = [cohort["targets"] if option == "targets" else option for option in options]
    history = train.main(tiny_args(cohort, tmp_path, "--mode", mode, *options))
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
        config = train.run_config(train.parse_options(tiny_args(cohort, tmp_path, "--refresh", refresh,
                                                                "--copying", "off")))
        trainer = training.Trainer(config, str(tmp_path))
        trainer.refresh("initial encoder")
        before = [e.clone() for e in trainer.retriever.encodings]
        trainer.train_epoch()                                   # 3 steps; option B refreshes after each
        changed = any(not torch.equal(a, b) for a, b in zip(before, trainer.retriever.encodings))
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


def record_output_dtypes(module: torch.nn.Module) -> list:
    """The dtypes of ``module``'s outputs from now on."""
    seen = []
    module.register_forward_hook(lambda _module, _inputs, output: seen.append(output.dtype))
    return seen


def test_training_step_and_imputation_under_cpu_bf16_autocast(cohort, tmp_path):
    """--amp bf16 on the CPU runs the code path of --device cuda (autocast): the
    training steps stay finite with the model's layers in bf16, and imputing
    under bf16 gives the float32 probabilities within bf16 rounding."""
    config = train.run_config(train.parse_options(tiny_args(cohort, tmp_path, "--amp", "bf16", "--epochs", "1")))
    trainer = training.Trainer(config, str(tmp_path))
    layer_dtypes = record_output_dtypes(trainer.model.hap_head)
    assert math.isfinite(trainer.train_epoch())
    assert layer_dtypes and set(layer_dtypes) == {torch.bfloat16}
    trainer.save()
    checkpoint = load_checkpoint(str(tmp_path / "checkpoint.pt"), "cpu")
    panel = load_panel(cohort["panel"])
    targets = load_targets(cohort["targets"], panel)
    probabilities = {amp: impute_haplotypes(checkpoint, panel, targets.haplotypes, targets.typed, 4,
                                            torch.device("cpu"), amp) for amp in ("off", "bf16")}
    difference = np.abs(probabilities["bf16"] - probabilities["off"])
    assert 0 < difference.max() < 0.05 and difference.mean() < 2e-3


@pytest.mark.parametrize("amp,device,fast_cpu,expected", [
    ("auto", "cuda", False, True), ("auto", "cpu", True, True), ("auto", "cpu", False, False),
    ("bf16", "cpu", False, True), ("off", "cuda", True, False)])
def test_amp_setting_decides_autocast(monkeypatch, amp, device, fast_cpu, expected):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast_cpu)
    assert precision.use_autocast(amp, torch.device(device)) == expected


@pytest.mark.parametrize("flags,expected", [("fpu avx512f amx_bf16 amx_tile", True), ("fpu avx512_bf16", True),
                                            ("fpu avx2 avx512f", False)])
def test_fast_bf16_is_read_from_the_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert precision.read_fast_bf16(str(cpuinfo)) == expected


def test_validation_scores_a_fixed_sample_of_the_validation_samples(cohort, tmp_path, monkeypatch):
    """At most VALIDATION_SAMPLES of them, evenly spaced in panel order (first and last kept),
    the same at every call: validation cost follows the budget, not the panel's size."""
    monkeypatch.setattr(training, "VALIDATION_SAMPLES", 3)
    config = train.run_config(train.parse_options(["--panel", cohort["panel"], "--out", str(tmp_path),
                                                   *TINY_TRAINING]))
    trainer = training.Trainer(config, str(tmp_path))
    trainer.refresh("initial encoder")
    val = trainer.data.val
    assert len(val) > 3
    seen = []
    span_logits = trainer.predictor.span_logits

    def spy(batch, windows):
        seen.append(batch["sample"].tolist())
        return span_logits(batch, windows)
    monkeypatch.setattr(trainer.predictor, "span_logits", spy)
    trainer.validate()
    scored = {sample for batch in seen for sample in batch}
    middle = int(val[round((len(val) - 1) / 2)])
    assert scored == {int(val[0]), middle, int(val[-1])}


def test_the_reference_panel_shares_the_training_tokens_on_the_cpu(cohort, tmp_path):
    """One copy of the panel's [H, S] alleles serves the reference panel and the retriever."""
    config = train.run_config(train.parse_options(["--panel", cohort["panel"], "--out", str(tmp_path),
                                                   *TINY_TRAINING, "--copying", "off"]))
    trainer = training.Trainer(config, str(tmp_path))
    data = trainer.data
    trainer_tokens = data.ref_tokens_T                                              # [H, S]
    assert np.shares_memory(data.reference.by_haplotype.numpy(), trainer_tokens)
    assert np.shares_memory(trainer.retriever.ref_tokens.numpy(), trainer_tokens)
    np.testing.assert_array_equal(data.reference.by_haplotype.numpy(), data.panel.haplotypes.T)
