"""window_embed: the fused op against the plain PyTorch reference.

Every test that can run on CUDA runs the same code on the CPU (DEVICES); the
kernels take float32 on CUDA, float32 and float64 on the CPU.
"""
import pytest
import torch
from torch.library import opcheck

from embrag_ext import ops
from embrag_ext.reference import window_embed_naive, window_embed_reference
from helpers import DEVICES

N_TOKENS, N_TYPES = 3, 4
DEVICE_DTYPES = [("cpu", torch.float64)] + [(device, torch.float32) for device in DEVICES]


def make_inputs(B, L, D, n_features=8, n_pos=None, dtype=torch.float32, device="cpu", seed=0):
    """Random tokens, site ids/AF and tables (the tables require grad)."""
    gen = torch.Generator().manual_seed(seed)
    n_pos = n_pos or L + 5
    tokens = torch.randint(0, N_TOKENS, (B, L), generator=gen)
    pos_ids = torch.randint(0, n_pos, (L,), generator=gen)  # repeats allowed
    af = torch.rand(L, generator=gen, dtype=dtype)
    type_ids = torch.randint(0, N_TYPES, (L,), generator=gen)
    tables = [torch.randn(rows, D, generator=gen, dtype=dtype)
              for rows in (N_TOKENS, n_pos, n_features, N_TYPES)]
    ids = [t.to(device) for t in (tokens, pos_ids, af, type_ids)]
    return ids + [t.to(device).requires_grad_() for t in tables]


SIZES = [(1, 1, 3), (1, 513, 37), (4, 17, 130), (5, 64, 128), (2, 9, 1)]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES, ids=str)
@pytest.mark.parametrize("B,L,D", SIZES)
def test_forward_matches_reference(B, L, D, device, dtype):
    inputs = make_inputs(B, L, D, dtype=dtype, device=device)
    got = ops.window_embed(*inputs)
    want = window_embed_reference(*inputs)
    assert got.shape == (B, L, D) and got.dtype == dtype
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES, ids=str)
@pytest.mark.parametrize("B,L,D", SIZES)
@pytest.mark.parametrize("n_features", [2, 16])
def test_backward_matches_reference(B, L, D, n_features, device, dtype):
    inputs = make_inputs(B, L, D, n_features=n_features, dtype=dtype, device=device, seed=1)
    tables = inputs[4:]
    grad_out = torch.randn(B, L, D, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)
    got = torch.autograd.grad(ops.window_embed(*inputs), tables, grad_out)
    want = torch.autograd.grad(window_embed_reference(*inputs), tables, grad_out)
    tolerance = {} if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)  # sums over B * L
    for name, g, w in zip(("tok", "pos", "af_proj", "type"), got, want):
        torch.testing.assert_close(g, w, **tolerance, msg=lambda m: f"grad of {name}_table: {m}")


@pytest.mark.parametrize("B,L,D", SIZES)
def test_naive_baseline_matches_reference(B, L, D):
    """The benchmarks' naive composition (every lookup per haplotype): the same embedding and gradients."""
    inputs = make_inputs(B, L, D, dtype=torch.float64, seed=3)
    got, want = window_embed_naive(*inputs), window_embed_reference(*inputs)
    torch.testing.assert_close(got, want)
    for g, w in zip(torch.autograd.grad(got.sum(), inputs[4:]), torch.autograd.grad(want.sum(), inputs[4:])):
        torch.testing.assert_close(g, w)


def test_gradcheck_float64():
    inputs = make_inputs(3, 11, 6, n_features=4, dtype=torch.float64, seed=2)
    assert torch.autograd.gradcheck(ops.window_embed, inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,L,D", [(1, 1, 3), (3, 10, 8), (2, 33, 65)])
def test_opcheck(B, L, D, device):
    opcheck(torch.ops.embrag.window_embed.default, make_inputs(B, L, D, seed=B, device=device))


def test_token_row_and_site_row_are_separate():
    """A hand-checkable case: one site, zero AF projection, known tables."""
    tokens = torch.tensor([[0], [1]])
    pos_ids, type_ids = torch.tensor([1]), torch.tensor([0])
    af = torch.tensor([0.3])
    tok = torch.tensor([[1.0, 2.0], [10.0, 20.0]])
    pos = torch.tensor([[0.0, 0.0], [100.0, 200.0]])
    proj = torch.zeros(2, 2)
    typ = torch.tensor([[0.5, 0.25]])
    out = ops.window_embed(tokens, pos_ids, af, type_ids, tok, pos, proj, typ)
    torch.testing.assert_close(out, torch.tensor([[[101.5, 202.25]], [[110.5, 220.25]]]))


@pytest.mark.parametrize("change,message", [
    (lambda x: x.__setitem__(0, x[0].int()), "tokens must be Long"),
    (lambda x: x.__setitem__(0, x[0][0]), "tokens must be 2-D"),
    (lambda x: x.__setitem__(0, x[0] + 7), r"tokens values must lie in \[0, 3\)"),
    (lambda x: x.__setitem__(0, x[0] - 7), r"tokens values must lie in \[0, 3\)"),
    (lambda x: x.__setitem__(1, x[1][:-1]), "pos_ids dimension 0 must be"),
    (lambda x: x.__setitem__(1, x[1] + 1000), "pos_ids values must lie in"),
    (lambda x: x.__setitem__(3, x[3] + 1000), "type_ids values must lie in"),
    (lambda x: x.__setitem__(2, x[2].double()), "af must be Float"),
    (lambda x: x.__setitem__(5, x[5][:, :-1]), "pos_table dimension 1 must be"),
    (lambda x: x.__setitem__(6, x[6][:-1]), "af_proj must have an even number of rows"),
    (lambda x: x.__setitem__(4, x[4].half()), "tok_table must be float32 or float64"),
])
def test_bad_inputs_raise_clear_errors(change, message):
    inputs = [t.detach() for t in make_inputs(2, 5, 4)]
    change(inputs)
    with pytest.raises(RuntimeError, match=message):
        ops.window_embed(*inputs)
