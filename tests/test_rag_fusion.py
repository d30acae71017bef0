"""rag_fusion: the fused op against the plain PyTorch reference."""
import pytest
import torch
from torch.library import opcheck

from embrag_ext import ops
from embrag_ext.reference import rag_fusion_reference

N_TOKENS = 3
# Positions of the differentiable inputs in the op's argument list.
GRAD_ARGS = {"q": 0, "tok_k": 3, "tok_v": 4, "site_k": 5, "site_v": 6, "dist": 7, "beta": 8,
             "alpha": 11}


def make_inputs(B, L, D, K, n_heads, half_width, n_haps=20, dtype=torch.float32, device="cpu",
                seed=0):
    """The op's arguments, random. ref_tokens is a window slice of a wider panel
    (row stride > L); query 0 has no neighbour at all and the others some -1."""
    gen = torch.Generator().manual_seed(seed)
    panel = torch.randint(0, N_TOKENS, (n_haps, L + 9), generator=gen, dtype=torch.uint8)
    topk = torch.randint(0, n_haps, (B, K), generator=gen)
    topk[torch.rand(B, K, generator=gen) < 0.2] = -1
    topk[0] = -1
    floats = [torch.randn(*shape, generator=gen, dtype=torch.float64)
              for shape in ((B, L, D), (N_TOKENS, D), (N_TOKENS, D), (L, D), (L, D), (B, K),
                            (n_heads,), (n_heads,))]
    q, tok_k, tok_v, site_k, site_v, dist, beta, alpha = [
        t.to(device=device, dtype=dtype).requires_grad_() for t in floats]
    q_tokens = torch.randint(0, N_TOKENS, (B, L), generator=gen)
    observed = torch.rand(B, L, generator=gen) < 0.6
    ref_tokens = panel.to(device)[:, 4:4 + L]
    return [q, topk.to(device), ref_tokens, tok_k, tok_v, site_k, site_v, dist, beta,
            q_tokens.to(device), observed.to(device), alpha, n_heads, half_width]


# (B, L, D, K, n_heads, half_width): K = 1 and 16 and 64, odd L and D, w = 0
# and w > L, one to four heads.
SIZES = [(2, 1, 3, 1, 1, 0), (3, 17, 37, 16, 1, 3), (4, 33, 12, 16, 3, 50), (3, 64, 128, 8, 4, 5),
         (2, 9, 6, 64, 2, 0), (3, 20, 8, 1, 2, 2)]


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_reference(size, dtype):
    inputs = make_inputs(*size, dtype=dtype)
    got = ops.rag_fusion(*inputs)
    assert got.shape == inputs[0].shape and got.dtype == dtype
    torch.testing.assert_close(got, rag_fusion_reference(*inputs))
    assert (got[0] == 0).all(), "a query with no neighbour must give 0"


@pytest.mark.parametrize("size", SIZES, ids=str)
def test_backward_matches_reference(size):
    inputs = make_inputs(*size, dtype=torch.float64, seed=1)
    wrt = [inputs[i] for i in GRAD_ARGS.values()]
    out = ops.rag_fusion(*inputs)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, wrt, grad_out)
    want = torch.autograd.grad(rag_fusion_reference(*inputs), wrt, grad_out)
    for name, g, w in zip(GRAD_ARGS, got, want):
        torch.testing.assert_close(g, w, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("size", [(3, 7, 6, 4, 2, 1), (2, 5, 3, 1, 1, 9)], ids=str)
def test_gradcheck_float64(size):
    inputs = make_inputs(*size, dtype=torch.float64, seed=2)
    assert torch.autograd.gradcheck(ops.rag_fusion, inputs)


@pytest.mark.parametrize("size", [(2, 1, 3, 1, 1, 0), (3, 10, 8, 4, 2, 2), (2, 33, 65, 16, 5, 40)],
                         ids=str)
def test_opcheck(size):
    opcheck(torch.ops.embrag.rag_fusion.default, make_inputs(*size, seed=3))


def test_neighbour_order_does_not_matter():
    """Swapping two neighbours (with their distances) leaves the output unchanged."""
    inputs = make_inputs(3, 12, 8, 5, 2, 2, seed=4)
    swapped = list(inputs)
    swapped[1] = inputs[1][:, [1, 0, 2, 3, 4]]
    swapped[7] = inputs[7][:, [1, 0, 2, 3, 4]]
    torch.testing.assert_close(ops.rag_fusion(*swapped), ops.rag_fusion(*inputs))


def _replace(index, make):
    def change(inputs):
        inputs[index] = make(inputs[index])
    return change


@pytest.mark.parametrize("change,message", [
    (_replace(0, lambda q: q[0]), "q must be 3-D"),
    (_replace(0, lambda q: q.half()), "q must be float32 or float64 on the CPU"),
    (_replace(0, lambda q: q.bfloat16()), "bfloat16 runs on CUDA only"),
    (_replace(1, lambda t: t.int()), "topk must be Long"),
    (_replace(1, lambda t: t + 100), r"topk values must lie in \[-1, 20\)"),
    (_replace(1, lambda t: t - 2), r"topk values must lie in \[-1, 20\)"),
    (_replace(1, lambda t: t.repeat(1, 22)[:, :65]), "topk must have 1 to 64 neighbours"),
    (_replace(2, lambda r: r.long()), "ref_tokens must be Byte"),
    (_replace(2, lambda r: r.t().contiguous().t()), "ref_tokens must have unit stride"),
    (_replace(2, lambda r: r + 3), r"ref_tokens \(at the rows topk selects\) values must lie in \[0, 3\)"),
    (_replace(2, lambda r: r[:, :-1]), "ref_tokens dimension 1 must be"),
    (_replace(3, lambda t: t.repeat(6, 1)), "tok_k must have 1 to 16 rows"),
    (_replace(4, lambda t: t[:-1]), "tok_v dimension 0 must be"),
    (_replace(5, lambda t: t.double()), "site_k must be Float"),
    (_replace(6, lambda t: t[:-1]), "site_v dimension 0 must be"),
    (_replace(7, lambda t: t[:, :-1]), "dist dimension 1 must be"),
    (_replace(8, lambda t: t[:-1]), "beta dimension 0 must be"),
    (_replace(9, lambda t: t[:, :-1]), "q_tokens dimension 1 must be"),
    (_replace(10, lambda t: t.int()), "observed must be Bool"),
    (_replace(12, lambda n: 3), "n_heads must divide D = 4"),
    (_replace(13, lambda w: -1), "half_width must be >= 0"),
])
def test_bad_inputs_raise_clear_errors(change, message):
    inputs = [t.detach() if isinstance(t, torch.Tensor) else t for t in make_inputs(2, 5, 4, 3, 2, 1)]
    change(inputs)
    with pytest.raises(RuntimeError, match=message):
        ops.rag_fusion(*inputs)


@pytest.mark.parametrize("size,message", [
    ((1, 4097, 2, 1, 1, 0), "q must have 1 to 4096 sites"),
    ((1, 2, 1025, 1, 1, 0), "q must have width 1 to 1024"),
])
def test_size_limits(size, message):
    with pytest.raises(RuntimeError, match=message):
        ops.rag_fusion(*make_inputs(*size))


# ---- CUDA (skipped without a GPU) -------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _max_err(x, y):
    return (x.double() - y.double()).abs().max().item()


@needs_cuda
@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_reference(size, dtype):
    """Flash-attention style: the kernel's error against a float64 reference is
    at most a few times the reference's own error in the kernel's dtype."""
    exact = make_inputs(*size, dtype=torch.float64, device="cuda", seed=5)
    low = [t.detach().to(dtype).requires_grad_() if t.is_floating_point() else t
           if isinstance(t, torch.Tensor) else t for t in exact]
    exact = [t.detach().to(dtype).double().requires_grad_() if t.is_floating_point() else t
             if isinstance(t, torch.Tensor) else t for t in exact]  # same values as `low`
    got, want, ref_low = (ops.rag_fusion(*low), rag_fusion_reference(*exact),
                          rag_fusion_reference(*low))
    assert _max_err(got, want) <= 3 * _max_err(ref_low, want) + 1e-5
    grad_out = torch.randn_like(want)
    wrt = lambda inputs: [inputs[i] for i in GRAD_ARGS.values()]  # noqa: E731
    grads_got = torch.autograd.grad(got, wrt(low), grad_out.to(dtype))
    grads_want = torch.autograd.grad(want, wrt(exact), grad_out)
    grads_ref = torch.autograd.grad(ref_low, wrt(low), grad_out.to(dtype))
    for name, g, w, r in zip(GRAD_ARGS, grads_got, grads_want, grads_ref):
        assert _max_err(g, w) <= 3 * _max_err(r, w) + 1e-4, f"grad of {name}"


@needs_cuda
def test_cuda_opcheck():
    opcheck(torch.ops.embrag.rag_fusion.default, make_inputs(3, 20, 24, 8, 2, 3, device="cuda"))
