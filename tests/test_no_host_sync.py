"""No host synchronisation in the fused ops or in a training step (copying posterior, copy features, model).

torch.profiler records every aten op, called from Python or from inside a C++
op (a TorchDispatchMode would miss the latter). N calls after the first (which
may initialise lazily) must make no call of aten::_local_scalar_dense (what
.item(), int() and bool() of a tensor run) and no op whose output shape
depends on data (nonzero, masked_select): each of those waits for the device.
Runs on the devices present; on the CPU the same ops mean the same waits on CUDA.
"""
import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from embrag_ext import ops
from embrag_ext.config import CopyConfig, ModelConfig, RetrievalConfig, RunConfig
from embrag_ext.model import ImputationModel, Retrieved
from embrag_ext.retrieval import make_retriever
from embrag_ext.predict import PanelSites, Predictor, ReferencePanel, key_encoder
from embrag_ext.reference import random_copy_posterior_inputs, random_rag_fusion_inputs
from embrag_ext.tokens import MASK
from helpers import DEVICES

SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select"}


def sync_calls(step, n=3):
    """Names of the synchronising ops that n calls of step() make, after a first call."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    return [event.name for event in prof.events() if event.name in SYNC_OPS]


def forward_backward(op, inputs):
    def step():
        out = op(**inputs)
        out.backward(torch.ones_like(out))
    return step


def test_the_count_sees_syncs_inside_cpp_ops():
    """A control: repeat_interleave takes its output size from .item() in C++."""
    x, counts = torch.arange(5), torch.tensor([1, 2, 0, 1, 3])
    assert "aten::_local_scalar_dense" in sync_calls(lambda: torch.repeat_interleave(x, counts))


@pytest.mark.parametrize("device", DEVICES)
def test_rag_fusion_does_not_sync(device):
    inputs = random_rag_fusion_inputs(4, 40, 16, 40, 2, 4, device=device)
    assert sync_calls(forward_backward(ops.rag_fusion, inputs)) == []


@pytest.mark.parametrize("device", DEVICES)
def test_window_embed_does_not_sync(device):
    L, D = 30, 8
    tables = [torch.randn(rows, D, device=device, requires_grad=True) for rows in (3, L, 4, 4)]
    inputs = dict(tokens=torch.randint(0, 3, (5, L), device=device),
                  pos_ids=torch.arange(L, device=device), af=torch.rand(L, device=device),
                  type_ids=torch.randint(0, 4, (L,), device=device),
                  **dict(zip(("tok_table", "pos_table", "af_proj", "type_table"), tables)))
    assert sync_calls(forward_backward(ops.window_embed, inputs)) == []


@pytest.mark.parametrize("device", DEVICES)
def test_copy_posterior_does_not_sync(device):
    inputs = random_copy_posterior_inputs(3, 10, 8, 12, device=device, seed=15)
    assert sync_calls(forward_backward(ops.copy_posterior, inputs)) == []


def training_setup(device, copying, retriever_k=None):
    """(predictor, batch, model, tokens on the device, retrieved) of a small embedding-mode model;
    with retriever_k, the predictor searches FAISS neighbours (K = retriever_k) itself."""
    B, L, H, K, S = 3, 24, 10, 5, 60
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    panel = (rng.random((S, H)) < 0.3).astype(np.uint8)                        # [S, H]
    tokens = torch.randint(0, 2, (B, 2, L), generator=gen)
    tokens[:, :, 1::3] = MASK
    window_sites = PanelSites(np.linspace(0.01, 0.9, S, dtype=np.float32), np.arange(S) % 4, torch.device(device))
    model = ImputationModel(ModelConfig(mode="embedding", dim=16, layers=1, heads=2, max_window=L),
                            CopyConfig(enabled=copying)).to(device)
    reference = ReferencePanel(panel, np.arange(S) * 0.01, torch.device(device))
    observed = np.arange(0, S, 3)
    batch = {"span": 0, "start": 10, "tokens": tokens,
             "haplotypes": torch.randint(0, 2, (B, 2, L), generator=gen, dtype=torch.uint8),
             "context_sites": torch.from_numpy(observed),
             "context_tokens": torch.from_numpy(panel[observed].T[:2 * B].reshape(B, 2, -1).astype(np.int64)),
             "sample": torch.tensor([0, 1, -1])}
    windows = np.array([[10, 10 + L]])
    retriever = None
    if retriever_k is not None:
        retriever = make_retriever(RetrievalConfig(k=retriever_k, key_flank=8), panel.T, windows,
                                   device=torch.device(device))
        retriever.refresh(key_encoder(model, window_sites, windows, retriever.key_ranges))
    predictor = Predictor(model, RunConfig(retrieval=RetrievalConfig(k=K)), window_sites, reference,
                          windows, retriever=retriever)
    retrieved = Retrieved(torch.randint(-1, H, (2 * B, K), generator=gen).to(device),
                          torch.rand(2 * B, K, generator=gen).to(device), reference.haplotype_window(10, 10 + L))
    return predictor, batch, model, tokens.to(device), window_sites.window(10, 10 + L), retrieved


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("copying", [True, False], ids=["copying posterior", "FAISS neighbours"])
def test_training_step_does_not_sync(device, copying):
    """A training step of the embedding mode: with copying, the copying posterior, the window's copy
    features and the model; without, the model on given neighbours. Forward, loss and backward."""
    predictor, batch, model, tokens, sites, retrieved = training_setup(device, copying)

    def step():
        if copying:
            ((_, (hap_logits, gt_logits)),) = predictor.span_logits(batch, [0])
        else:
            hap_logits, gt_logits = model(tokens, sites, retrieved)
        loss = hap_logits.square().mean() + gt_logits.square().mean()
        loss.backward()

    assert sync_calls(step) == []


@pytest.mark.parametrize("device", DEVICES)
def test_faiss_search_does_not_sync(device):
    """The FAISS-neighbours step with the search in it: the query keys, an index built on the
    device's keys (rebuilt every step, as a new observed pattern makes it in training), the
    search through FAISS on torch tensors, the own-sample drop, then the model. FAISS's own
    work is not an aten op; on CUDA with faiss-gpu it runs on the device (retrieval.place_index)."""
    predictor, batch, *_ = training_setup(device, copying=False, retriever_k=4)

    def step():
        predictor.retriever._last = None
        ((_, (hap_logits, gt_logits)),) = predictor.span_logits(batch, [0])
        (hap_logits.square().mean() + gt_logits.square().mean()).backward()

    assert sync_calls(step) == []
