"""Training across processes (distributed.py): a rank's share of a batch, and two
CPU processes under torchrun against one process."""
import json
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

from helpers import TINY_TRAINING
from embrag_ext import train
from embrag_ext.checkpoint import load_checkpoint
from embrag_ext.distributed import masked_loss_share, shard_batch
from embrag_ext.learned_keys import KeyEncoder, slots
from embrag_ext.panel_vcf import load_panel
from embrag_ext.training import masked_loss
from embrag_ext.tokens import MASK


def random_batch(B=5, L=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    haplotypes = (torch.rand(B, 2, L, generator=gen) < 0.4).to(torch.uint8)
    tokens = torch.where(torch.rand(B, 2, L, generator=gen) < 0.3, haplotypes.long(), torch.full((B, 2, L), MASK))
    return {"span": 0, "start": 0, "haplotypes": haplotypes, "tokens": tokens, "observed": torch.zeros(L, dtype=bool),
            "context_sites": torch.arange(3), "context_tokens": torch.zeros(B, 2, 3, dtype=torch.int64),
            "sample": torch.arange(B)}


@pytest.mark.parametrize("world", [2, 3, 7])
def test_the_shares_of_the_ranks_add_up_to_the_batch_loss(world):
    batch = random_batch()
    gen = torch.Generator().manual_seed(1)
    hap_logits, gt_logits = torch.randn(5, 2, 12, generator=gen), torch.randn(5, 12, 3, generator=gen)
    total = 0.0
    for rank in range(world):
        local, weight = shard_batch(batch, rank, world)
        rows = local["sample"]
        assert torch.equal(local["batch_haplotypes"], batch["haplotypes"])
        total = total + weight * masked_loss_share(hap_logits[rows], gt_logits[rows], local, batch)
    assert torch.allclose(total, masked_loss(hap_logits, gt_logits, batch), rtol=1e-6)


def run_torchrun(nproc, *args):
    with tempfile.TemporaryDirectory() as scratch:
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={nproc}", "-m", "embrag_ext.train", *map(str, args)],
                              capture_output=True, text=True, cwd=scratch, timeout=300)


def test_two_processes_give_the_keys_and_metrics_of_one(cohort, tmp_path):
    """2 CPU processes (gloo) vs 1: the same reference keys after refreshes (learned keys,
    sharded by window) and the same validation metrics after a short run."""
    # float32 (--amp off): bf16 rounds the two runs' differently ordered gradient sums apart
    args = ["--panel", cohort["panel"], *TINY_TRAINING, "--copying", "off", "--keys", "learned", "--refresh", "2",
            "--amp", "off"]
    one = train.main([*args, "--out", str(tmp_path / "one")])
    result = run_torchrun(2, *args, "--out", tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 2:") == 1                     # logs once (rank 0)
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())["history"]
    for a, b in zip(one, two):
        for key in ("train_loss", "val_loss", "dosage_r2", "alt_f1_common"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    one_ck, two_ck = (load_checkpoint(str(tmp_path / name / "checkpoint.pt"), "cpu") for name in ("one", "two"))
    assert len(one_ck.retriever["encodings"]) == len(two_ck.retriever["encodings"]) > 1
    for a, b in zip(one_ck.retriever["encodings"], two_ck.retriever["encodings"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # the keys of the last refresh's encoder (the snapshot) for every reference, over a window
    keys = []
    for ck in (one_ck, two_ck):
        encoder = KeyEncoder(ck.config.retrieval.key_sites, ck.config.retrieval.key_decay)
        encoder.load_state_dict(ck.keys["snapshot"])
        values = ck.retriever["encodings"][5].T.contiguous()                          # [Lk, 3]
        slot = torch.from_numpy(slots(np.arange(len(values)), (16, 48), encoder.per_side))
        panel = load_panel(cohort["panel"]).haplotypes[:len(values)].T.astype(np.int64)  # [H, Lk]
        keys.append(encoder.keys(values, slot, torch.from_numpy(panel)).detach())
    torch.testing.assert_close(keys[0], keys[1], rtol=1e-4, atol=1e-5)
    # (weights are not compared one by one: a weight whose true gradient is 0 or nearly
    # (the key part of an attention block's qkv bias shifts every score alike; a layer
    # before one that starts at zero) gets rounding noise, which Adam turns into steps
    # of full size; the outputs do not change)
