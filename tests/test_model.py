"""The model: shapes in every mode, the exact site/token split, gradients of the fusion, bf16 autocast."""
import numpy as np
import pytest
import torch

from embrag_ext import ops
from embrag_ext.config import CopyConfig, ModelConfig
from embrag_ext.copying import CopyFeatures, hmm_logit
from embrag_ext.model import EmbeddingFusion, ImputationModel, Retrieved, genotype_log_prior
from embrag_ext.predict import PanelSites, WindowInputs, stack_windows
from embrag_ext.tokens import MASK

B, L, H, K = 3, 20, 12, 4


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 2, (B, 2, L), generator=gen)
    tokens[:, :, 1::2] = MASK
    sites = PanelSites(np.linspace(0.01, 0.9, L, dtype=np.float32), np.arange(L) % 4,
                       torch.device("cpu")).window(0, L)
    ref_tokens = torch.randint(0, 2, (H, L), generator=gen, dtype=torch.uint8)
    ids = torch.randint(0, H, (2 * B, K), generator=gen)
    ids[0, -1] = -1
    retrieved = Retrieved(ids, torch.rand(2 * B, K, generator=gen), ref_tokens)
    return tokens, sites, retrieved


def tiny(mode):
    torch.manual_seed(0)
    return ImputationModel(ModelConfig(mode=mode, dim=16, layers=1, heads=2, max_window=L, half_width=3),
                           CopyConfig(enabled=False))


@pytest.mark.parametrize("mode", ["none", "token", "embedding"])
def test_forward_shapes_and_backward(mode):
    tokens, sites, retrieved = inputs()
    model = tiny(mode)
    hap_logits, gt_logits = model(tokens, sites, retrieved)
    assert hap_logits.shape == (B, 2, L) and gt_logits.shape == (B, L, 3)
    (hap_logits.sum() + gt_logits.sum()).backward()
    assert model.embedding.tok_table.grad.abs().sum() > 0


def test_embedding_is_token_row_plus_site_part():
    tokens, sites, _ = inputs()
    embedding = tiny("embedding").embedding
    flat = tokens.reshape(2 * B, L)
    want = embedding.tok_table[flat] + embedding.site_part(sites)
    torch.testing.assert_close(embedding(flat, sites), want)
    torch.testing.assert_close(embedding.allele_encodings(sites)[1], embedding.tok_table[1] + embedding.site_part(sites))


@pytest.mark.parametrize("detach_reference", [False, True])
def test_fusion_gradient_reaches_embedding_tables_only_in_option_b(detach_reference):
    tokens, sites, retrieved = inputs()
    model = tiny("embedding")
    h = torch.randn(2 * B, L, 16)                                     # the query side carries no table gradient
    fused = model.fusion(h, tokens.reshape(2 * B, L), retrieved, model.embedding, sites, detach_reference)
    fused.square().sum().backward()
    table_grads = [model.embedding.tok_table.grad, model.embedding.pos_table.grad]
    if detach_reference:
        assert all(grad is None for grad in table_grads)
    else:
        assert all(grad is not None and grad.abs().sum() > 0 for grad in table_grads)
    assert model.fusion.w_k.weight.grad.abs().sum() > 0 and model.fusion.alpha.grad.abs().sum() > 0


def test_fusion_uses_the_neighbours():
    """Changing a retrieved neighbour's alleles changes the fused output."""
    tokens, sites, retrieved = inputs()
    model = tiny("embedding")
    assert isinstance(model.fusion, EmbeddingFusion)
    flat, h = tokens.reshape(2 * B, L), torch.randn(2 * B, L, 16)
    before = model.fusion(h, flat, retrieved, model.embedding, sites, False)
    flipped = Retrieved(retrieved.ids, retrieved.dist, 1 - retrieved.ref_tokens)
    after = model.fusion(h, flat, flipped, model.embedding, sites, False)
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("mode", ["token", "embedding"])
def test_an_untrained_model_with_copying_is_the_hmm(mode):
    """The heads start at zero: before training the model predicts the HMM's own P(ALT)."""
    tokens, sites, retrieved = inputs()
    torch.manual_seed(0)
    model = ImputationModel(ModelConfig(mode=mode, dim=16, layers=1, heads=2, max_window=L, half_width=3),
                            CopyConfig())
    gen = torch.Generator().manual_seed(3)
    alt_prob = torch.rand(2 * B, L, generator=gen)
    copy = CopyFeatures(alt_prob, torch.rand(2 * B, L, 2, generator=gen), torch.rand(2 * B, L, 2, generator=gen),
                        retrieved.ids,
                        torch.full((2 * B, K), 1 / K), torch.log(torch.rand(2 * B, L, K, generator=gen)))
    retrieved = Retrieved(retrieved.ids, retrieved.dist, retrieved.ref_tokens, copy.bias)
    hap_logits, gt_logits = model(tokens, sites, retrieved, copy)
    torch.testing.assert_close(hap_logits, hmm_logit(alt_prob).view(B, 2, L))
    torch.testing.assert_close(gt_logits.softmax(-1), genotype_log_prior(alt_prob.view(B, 2, L)).exp())
    (hap_logits.sum() + gt_logits.sum()).backward()
    assert model.hap_head.weight.grad.abs().sum() > 0, "the correction is trainable"
def loss_and_grads(model, tokens, sites, retrieved):
    """Logits (float32) and the gradients of a training loss w.r.t. every parameter."""
    hap_logits, gt_logits = model(tokens, sites, retrieved)
    loss = (torch.nn.functional.binary_cross_entropy_with_logits(hap_logits.float(), (tokens == 1).float())
            + gt_logits.float().logsumexp(-1).mean())
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return hap_logits.float(), gt_logits.float(), grads


@pytest.mark.parametrize("mode", ["none", "token", "embedding"])
def test_bf16_autocast_matches_float32(mode, monkeypatch):
    """CPU bf16 autocast runs the code path of --device cuda (which autocasts to
    bf16): forward and backward pass, the fused op gets bf16 for every floating
    input, and the results stay within bf16 precision of float32 (2^-8
    relative per rounding, a few roundings deep): logits within 2% and every
    parameter's gradient within 5% of their largest magnitude."""
    fused_dtypes = []
    rag_fusion = ops.rag_fusion

    def recording_rag_fusion(*args, **kwargs):
        fused_dtypes.append({t.dtype for t in [*args, *kwargs.values()]
                             if torch.is_tensor(t) and t.is_floating_point()})
        return rag_fusion(*args, **kwargs)

    monkeypatch.setattr(ops, "rag_fusion", recording_rag_fusion)
    tokens, sites, retrieved = inputs()
    model = tiny(mode)
    hap32, gt32, grads32 = loss_and_grads(model, tokens, sites, retrieved)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hap16, gt16, grads16 = loss_and_grads(model, tokens, sites, retrieved)
    if mode == "embedding":
        assert fused_dtypes == [{torch.float32}, {torch.bfloat16}]
    for got, want, tolerance in [(hap16, hap32, 0.02), (gt16, gt32, 0.02)] + [
            (g16, g32, 0.05) for g16, g32 in zip(grads16, grads32) if g32 is not None]:
        assert got.dtype == want.dtype and (got - want).abs().max() <= tolerance * want.abs().max()


@pytest.mark.parametrize("mode", ["none", "token", "embedding"])
def test_stacked_windows_give_what_each_window_gives(mode):
    """Three windows through the model at once (rows window-major) = each window alone."""
    torch.manual_seed(0)
    model = ImputationModel(ModelConfig(mode=mode, dim=16, layers=1, heads=2, max_window=L, half_width=3),
                            CopyConfig(enabled=mode != "none"))
    for head in (model.hap_head, model.gt_head):
        torch.nn.init.normal_(head.weight)                   # not zero: the correction takes part
    windows = []
    for seed in range(3):
        tokens, _, retrieved = inputs(seed)
        gen = torch.Generator().manual_seed(10 + seed)
        sites = PanelSites(torch.rand(L, generator=gen).numpy(), np.arange(L) % 4, torch.device("cpu")).window(0, L)
        copy = None if mode == "none" else CopyFeatures(
            torch.rand(2 * B, L, generator=gen), torch.rand(2 * B, L, 2, generator=gen),
            torch.rand(2 * B, L, 2, generator=gen), retrieved.ids, torch.full((2 * B, K), 1 / K),
            torch.log(torch.rand(2 * B, L, K, generator=gen)))
        retrieved = Retrieved(retrieved.ids, retrieved.dist, retrieved.ref_tokens, None if copy is None else copy.bias)
        windows.append(WindowInputs(tokens, sites, None if mode == "none" else retrieved, copy))
    hap_all, gt_all = model(*stack_windows(windows))
    for w, window in enumerate(windows):
        hap, gt = model(*window)
        torch.testing.assert_close(hap_all[w * B:(w + 1) * B], hap)
        torch.testing.assert_close(gt_all[w * B:(w + 1) * B], gt)
