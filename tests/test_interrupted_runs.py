"""Interrupted runs: a training run killed with SIGKILL (at a random step of its
second epoch, or while its checkpoint is renamed into place) and resumed with
--resume ends with the metrics of the same run uninterrupted (CPU, fixed
seed); an imputation killed at any stage leaves no output that looks complete.
The kills come from tests/killed_run.py, in a subprocess."""
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINY_TRAINING
from embrag_ext import impute, train
from embrag_ext.checkpoint import load_checkpoint
from embrag_ext.vcf_io import BGZF_EOF, read_imputed

KILLED_RUN = Path(__file__).parent / "killed_run.py"
STEPS = int(TINY_TRAINING[TINY_TRAINING.index("--steps-per-epoch") + 1])


def run_killed(target, n, command, *args, cache):
    """Run the command in a subprocess that SIGKILLs itself at the n-th call of target."""
    env = dict(os.environ, EMBRAG_CACHE_DIR=str(cache), EMBRAG_PROGRESS="lines")
    result = subprocess.run([sys.executable, str(KILLED_RUN), target, str(n), command, *map(str, args)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == -signal.SIGKILL and f"killed at call {n} of {target}" in result.stderr, result.stderr
    return result


def without_timings(history):
    return json.dumps([{key: value for key, value in record.items() if "seconds" not in key}
                       for record in history], sort_keys=True)


@pytest.fixture(scope="module")
def uninterrupted(cohort_dir, tmp_path_factory):
    """The history of the 3-epoch tiny run, uninterrupted, and its arguments but --out."""
    args = ["--panel", os.path.join(cohort_dir, "panel.vcf.gz"), *TINY_TRAINING, "--epochs", "3"]
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBRAG_CACHE_DIR", str(out.parent / "cache"))
        history = train.main([*args, "--out", str(out)])
    return history, args


@pytest.mark.parametrize("target,call", [
    ("embrag_ext.training:Trainer.train_step", random.randrange(STEPS + 1, 2 * STEPS + 1)),  # a step of epoch 2
    ("embrag_ext.atomic:os.replace", 3),     # renaming epoch 2's checkpoint (epoch 1: checkpoint, metrics)
], ids=["at a random step of epoch 2", "while epoch 2's checkpoint is renamed"])
def test_killed_training_resumes_to_the_uninterrupted_metrics(uninterrupted, tmp_path, monkeypatch, target, call):
    history, args = uninterrupted
    out = tmp_path / "run"
    run_killed(target, call, "train", *args, "--out", out, cache=tmp_path / "cache")
    kept = load_checkpoint(str(out / "checkpoint.pt"), "cpu")
    assert (kept.epoch, kept.step) == (1, STEPS), f"killed at call {call}"
    monkeypatch.setenv("EMBRAG_CACHE_DIR", str(tmp_path / "cache"))
    resumed = train.main(["--resume", str(out), "--epochs", "3"])
    assert without_timings(resumed) == without_timings(history), f"killed at call {call} of {target}"


def complete_outputs(out):
    """{name: path} of the outputs of `impute --out out` that exist under their final names."""
    stem = str(out)[:-len(".vcf.gz")]
    names = {"vcf": str(out), "tbi": f"{out}.tbi", "info": f"{stem}.info.gz", "json": f"{stem}.qc.json",
             "tsv": f"{stem}.qc.tsv"}
    return {name: path for name, path in names.items() if os.path.exists(path)}


def check_complete(name, path, reference):
    """Each file under an output's final name is complete: as in the finished run, or whole and readable."""
    data = Path(path).read_bytes()
    if name == "vcf":
        assert read_imputed(path).positions.tolist() == read_imputed(reference).positions.tolist()
    elif name == "tbi":
        assert data.endswith(BGZF_EOF)
    elif name == "json":
        json.loads(data)
    else:
        assert data == Path(reference).read_bytes(), name


@pytest.mark.parametrize("target,call,left", [
    ("embrag_ext.predict:Predictor.span_logits", 1, []),              # imputing
    ("embrag_ext.vcf_writer:_RecordSink.write_lines", 1, []),         # the VCF's header written, no record
    ("embrag_ext.atomic:os.replace", 1, []),                          # everything written, nothing renamed
    ("embrag_ext.atomic:os.replace", 5, ["info", "json", "tbi", "tsv"]),   # all renamed but the VCF
], ids=["while imputing", "while writing the VCF", "before the renames", "before the VCF's rename"])
def test_killed_imputation_leaves_no_output_that_looks_complete(trained, tmp_path, monkeypatch, target, call, left):
    monkeypatch.setenv("EMBRAG_CACHE_DIR", str(tmp_path / "cache"))
    args = ["--checkpoint", trained["checkpoint"], "--panel", trained["panel"], "--targets", trained["targets"],
            "--threads", 1]
    finished = tmp_path / "finished" / "imputed.vcf.gz"
    finished.parent.mkdir()
    impute.main([*map(str, args), "--out", str(finished)])
    killed = tmp_path / "killed" / "imputed.vcf.gz"
    killed.parent.mkdir()
    run_killed(target, call, "impute", *args, "--out", killed, cache=tmp_path / "cache")
    present = complete_outputs(killed)
    assert sorted(present) == left
    reference = complete_outputs(finished)
    for name, path in present.items():
        check_complete(name, path, reference[name])
    hidden = [entry for entry in os.listdir(killed.parent) if entry not in map(os.path.basename, present.values())]
    assert all(entry.startswith(".") and entry.endswith((".tmp", ".tmp.tbi")) for entry in hidden), hidden
