"""rag_fusion: the fused op against the plain PyTorch reference.

Every test that can run on CUDA runs the same code on the CPU: DEVICES holds
the devices present, so a GPU run can only fail in the kernel itself.
"""
import math

import pytest
import torch
from torch.library import opcheck

from embrag_ext import _C, ops
from embrag_ext.errors import InputError
from embrag_ext.reference import (RAG_FUSION_GRAD_INPUTS, rag_fusion_algebra, rag_fusion_reference,
                                  random_rag_fusion_inputs)
from helpers import DEVICES


# (B, L, D, K, n_heads, half_width): K = 1, 16, 64 and several neighbour tiles
# (a partial last one), odd L and D, w = 0 and w > L, one to five heads, head
# widths 16 and 32 (compiled) and others (run time), a partial last site tile.
SIZES = [(2, 1, 3, 1, 1, 0), (3, 17, 37, 16, 1, 3), (4, 33, 12, 16, 3, 50), (3, 64, 128, 8, 4, 5),
         (2, 9, 6, 64, 2, 0), (3, 20, 8, 1, 2, 2), (2, 45, 64, 75, 4, 16), (2, 40, 10, 33, 5, 4)]


def grad_inputs(inputs):
    """(name, tensor) of the inputs rag_fusion differentiates."""
    return [(name, inputs[name]) for name in RAG_FUSION_GRAD_INPUTS if name in inputs]


def grads(out, inputs, grad_out):
    names, tensors = zip(*grad_inputs(inputs))
    return dict(zip(names, torch.autograd.grad(out, tensors, grad_out)))


def random_like(t, seed=0):
    """Normal values of t's shape, dtype and device, the same on every run."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device, t.dtype)


def max_err(x, y):
    return (x.double() - y.double()).abs().max().item()


def retyped(inputs, dtype):
    """The inputs with every floating tensor cast to dtype (a fresh leaf)."""
    return {name: t.detach().to(dtype).requires_grad_() if torch.is_tensor(t) and t.is_floating_point()
            else t for name, t in inputs.items()}


# ---- Every device: the kernel against a float64 reference --------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [size for size in SIZES if size[3] > 1], ids=str)
@pytest.mark.parametrize("copy_bias", [True, False], ids=["copy_bias", "no_copy_bias"])
def test_matches_float64_reference(size, dtype, device, copy_bias):
    """Flash-attention's test: the kernel's error against the float64
    reference, forward and every gradient, is at most a few times that of the
    same math (the reference) run in the kernel's dtype, plus one ulp of the
    gradient's scale in that dtype (its rounding) and float32 summation error
    over the B * L * K terms of a gradient (the kernel accumulates in float32,
    in another order than the reference's pairwise sums). (K = 1:
    test_single_neighbour.)"""
    low = random_rag_fusion_inputs(*size, dtype=dtype, device=device, seed=5, copy_bias=copy_bias)
    exact = retyped(low, torch.float64)  # the same values, in float64
    got, want, same_math = ops.rag_fusion(**low), rag_fusion_reference(**exact), rag_fusion_reference(**low)
    assert got.dtype == dtype and got.shape == want.shape
    assert max_err(got, want) <= 3 * max_err(same_math, want) + 1e-5
    grad_out = random_like(want)
    grads_got = grads(got, low, grad_out.to(dtype))
    grads_want = grads(want, exact, grad_out)
    grads_same_math = grads(same_math, low, grad_out.to(dtype))
    terms = size[0] * size[1] * size[3]
    for name, want_grad in grads_want.items():
        scale = 1 + want_grad.abs().max().item()
        rounding = (torch.finfo(dtype).eps + torch.finfo(torch.float32).eps * terms ** 0.5) * scale
        bound = 3 * max_err(grads_same_math[name], want_grad) + rounding
        assert max_err(grads_got[name], want_grad) <= bound, f"grad of {name}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_single_neighbour(device, dtype):
    """K = 1: out is the neighbour's value and every score gradient is 0 in
    exact math. The backward takes delta = grad_out . out from the output in
    its dtype and corrects the scale gradients for that rounding; in each
    per-neighbour cell (copy_bias, summed into dist) what is left is p_k times
    the rounding of delta, no more (1.0 of an ulp per head, at most)."""
    inputs = random_rag_fusion_inputs(3, 20, 8, 1, 2, 2, dtype=dtype, device=device)
    out = ops.rag_fusion(**inputs)
    torch.testing.assert_close(out, rag_fusion_reference(**inputs))
    grad_out = random_like(out)
    grad = grads(out, inputs, grad_out)
    eps = torch.finfo(dtype).eps
    heads = inputs["n_heads"]
    delta_rounding = eps * (grad_out * out).abs().unflatten(-1, (heads, -1)).sum(-1)  # [B, L, heads]
    cell_bounds = {"copy_bias": (delta_rounding * inputs["gamma"].abs()).sum(-1, keepdim=True),
                   "dist": (delta_rounding * inputs["beta"].abs()).sum((1, 2))[:, None]}
    for name, bound in cell_bounds.items():
        assert (grad[name].abs() <= 2 * bound.detach() + 16 * eps).all(), f"grad of {name}"
    for name in ("q", "tok_k", "beta", "alpha", "gamma"):
        assert grad[name].abs().max() <= 16 * eps, f"grad of {name}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(3, 10, 8, 4, 2, 2), (2, 33, 65, 16, 5, 40), (2, 7, 16, 40, 1, 3)],
                         ids=str)
def test_opcheck(size, device):
    inputs = random_rag_fusion_inputs(*size, device=device, seed=3)
    opcheck(torch.ops.embrag.rag_fusion.default, (), inputs)


@pytest.mark.parametrize("device", DEVICES)
def test_query_without_neighbours_gives_zero(device):
    inputs = random_rag_fusion_inputs(3, 12, 8, 5, 2, 2, device=device)
    out = ops.rag_fusion(**inputs)
    assert (out[0] == 0).all() and (out[1:] != 0).any()
    grad = grads(out, inputs, torch.ones_like(out))
    assert (grad["q"][0] == 0).all() and (grad["dist"][0] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_nothing_observed_means_no_agreement(device):
    """With no observed query site, agree = 0: alpha has no effect and no gradient."""
    inputs = random_rag_fusion_inputs(3, 12, 8, 5, 2, 3, device=device)
    inputs["observed"] = torch.zeros_like(inputs["observed"])
    out = ops.rag_fusion(**inputs)
    changed = ops.rag_fusion(**dict(inputs, alpha=inputs["alpha"].detach() + 5))
    torch.testing.assert_close(out, changed)
    assert (grads(out, inputs, random_like(out))["alpha"] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_neighbour_order_does_not_matter(device):
    """Swapping two neighbours (with their distances and copy biases) leaves the output unchanged."""
    inputs = random_rag_fusion_inputs(3, 12, 8, 5, 2, 2, device=device, seed=4)
    order = [1, 0, 2, 3, 4]
    swapped = dict(inputs, topk=inputs["topk"][:, order], dist=inputs["dist"][:, order],
                   copy_bias=inputs["copy_bias"][:, :, order])
    torch.testing.assert_close(ops.rag_fusion(**swapped), ops.rag_fusion(**inputs))


@pytest.mark.parametrize("device", DEVICES)
def test_minus_inf_copy_bias_excludes_the_template(device):
    """copy_bias = -inf (gamma > 0) takes that template out; its gradients stay finite."""
    inputs = random_rag_fusion_inputs(2, 9, 8, 6, 2, 2, device=device, dtype=torch.float32)
    excluded = inputs["copy_bias"].detach().clone()
    excluded[:, :, 2] = -math.inf
    got = ops.rag_fusion(**dict(inputs, copy_bias=excluded.requires_grad_()))
    dropped = dict(inputs, topk=inputs["topk"].clone())
    dropped["topk"][:, 2] = -1
    torch.testing.assert_close(got, ops.rag_fusion(**dropped))
    grad = grads(got, dict(inputs, copy_bias=excluded), random_like(got))
    assert all(g.isfinite().all() for g in grad.values())


@pytest.mark.parametrize("device", DEVICES)
def test_k_2048_is_linear_and_matches(device):
    """K = 2048 (64 neighbour tiles) at the accuracy work's width and heads."""
    inputs = random_rag_fusion_inputs(2, 20, 64, 2048, 4, 16, n_haps=3000, device=device, seed=6)
    out = ops.rag_fusion(**inputs)
    torch.testing.assert_close(out, rag_fusion_algebra(**inputs), atol=2e-5, rtol=1e-4)
    grad_out = random_like(out)
    want = grads(rag_fusion_algebra(**inputs), inputs, grad_out)
    for name, got in grads(out, inputs, grad_out).items():
        torch.testing.assert_close(got, want[name], atol=1e-4, rtol=1e-3, msg=f"grad of {name}")


@pytest.mark.parametrize("device", DEVICES)
def test_copy_bias_gradient_only_when_needed(device):
    inputs = random_rag_fusion_inputs(2, 9, 8, 6, 2, 2, device=device)
    inputs["copy_bias"] = inputs["copy_bias"].detach()
    out = ops.rag_fusion(**inputs)
    out.sum().backward()
    assert inputs["copy_bias"].grad is None and inputs["gamma"].grad is not None


# ---- CPU: float64, gradcheck, the algebra baseline, bad inputs --------------

@pytest.mark.parametrize("size", SIZES, ids=str)
def test_float64_matches_reference(size):
    inputs = random_rag_fusion_inputs(*size, dtype=torch.float64, seed=1)
    out = ops.rag_fusion(**inputs)
    torch.testing.assert_close(out, rag_fusion_reference(**inputs))
    grad_out = random_like(out)
    want = grads(rag_fusion_reference(**inputs), inputs, grad_out)
    for name, got in grads(out, inputs, grad_out).items():
        torch.testing.assert_close(got, want[name], msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("size", [(3, 7, 6, 4, 2, 1), (2, 5, 3, 1, 1, 9), (2, 40, 8, 35, 2, 3)], ids=str)
def test_gradcheck_float64(size):
    inputs = random_rag_fusion_inputs(*size, dtype=torch.float64, seed=2)
    inputs["copy_bias"] = inputs["copy_bias"].detach().clamp(min=-6).requires_grad_()  # finite differences
    names = [name for name, _ in grad_inputs(inputs)]

    def fused(*tensors):
        return ops.rag_fusion(**dict(inputs, **dict(zip(names, tensors))))

    assert torch.autograd.gradcheck(fused, [inputs[name] for name in names])


def test_both_ways_to_delta_are_tested():
    """On CUDA the backward takes delta from the output when that reads fewer
    bytes than a first pass over the neighbours: SIZES exercise both ways
    there. (The CPU always takes it from the output; tests/simt runs the block
    bodies both ways on the CPU.)"""
    ways = {_C.rag_fusion_traffic(B=B, L=L, K=K, D=D, V=3, n_heads=h, half_width=w, elem_bytes=8,
                                  copy_bias=True, copy_bias_grad=True)["delta_from_out"]
            for B, L, D, K, h, w in SIZES}
    assert ways == {True, False}


@pytest.mark.parametrize("size", SIZES[:4], ids=str)
def test_algebra_baseline_matches_reference(size):
    inputs = random_rag_fusion_inputs(*size, dtype=torch.float64, seed=7)
    torch.testing.assert_close(rag_fusion_algebra(**inputs), rag_fusion_reference(**inputs))


def replaced(name, make):
    def change(inputs):
        inputs[name] = make(inputs[name])
    return change


@pytest.mark.parametrize("change,message", [
    (replaced("q", lambda q: q[0]), "q must be 3-D"),
    (replaced("q", lambda q: q.half()), "q must be float32, float64 or bfloat16"),
    (replaced("topk", lambda t: t.int()), "topk must be Long"),
    (replaced("topk", lambda t: t + 100), r"topk values must lie in \[-1, 20\), found"),
    (replaced("topk", lambda t: t - 2), r"topk values must lie in \[-1, 20\), found"),
    (replaced("topk", lambda t: t.repeat(1, 1400)[:, :4097]), "topk must have 1 to 4096 neighbours"),
    (replaced("ref_tokens", lambda r: r.long()), "ref_tokens must be Byte"),
    (replaced("ref_tokens", lambda r: r.t().contiguous().t()), "ref_tokens must have unit stride"),
    (replaced("ref_tokens", lambda r: r + 3),
     r"ref_tokens \(at the rows topk selects\) values must lie in \[0, 3\), found"),
    (replaced("ref_tokens", lambda r: r[:, :-1]), "ref_tokens dimension 1 must be"),
    (replaced("tok_k", lambda t: t.repeat(6, 1)), "tok_k must have 1 to 16 rows"),
    (replaced("tok_v", lambda t: t[:-1]), "tok_v dimension 0 must be"),
    (replaced("site_v", lambda t: t.double()), "site_v must be Float"),
    (replaced("site_v", lambda t: t[:-1]), "site_v dimension 0 must be"),
    (replaced("dist", lambda t: t[:, :-1]), "dist dimension 1 must be"),
    (replaced("beta", lambda t: t[:-1]), "beta dimension 0 must be"),
    (replaced("q_tokens", lambda t: t[:, :-1]), "q_tokens dimension 1 must be"),
    (replaced("observed", lambda t: t.int()), "observed must be Bool"),
    (replaced("copy_bias", lambda t: t[:, :, :-1]), "copy_bias dimension 2 must be"),
    (replaced("gamma", lambda t: None), "copy_bias and gamma go together"),
    (replaced("n_heads", lambda n: 3), "n_heads must divide D = 4"),
    (replaced("half_width", lambda w: -1), "half_width must be >= 0"),
])
def test_bad_inputs_raise_clear_errors(change, message):
    inputs = random_rag_fusion_inputs(2, 5, 4, 3, 2, 1, requires_grad=False)
    change(inputs)
    with pytest.raises(RuntimeError, match=message):
        ops.rag_fusion(**inputs)


@pytest.mark.parametrize("size,message", [
    ((1, 4097, 2, 1, 1, 0), "q must have 1 to 4096 sites"),
    ((1, 2, 1025, 1, 1, 0), "q must have width 1 to 1024"),
])
def test_size_limits(size, message):
    with pytest.raises(RuntimeError, match=message):
        ops.rag_fusion(**random_rag_fusion_inputs(*size, requires_grad=False))


def test_check_reference_tokens_once():
    tokens = torch.randint(0, 3, (4, 9), dtype=torch.uint8)
    ops.check_reference_tokens(tokens, 3)
    tokens[2, 5] = 7
    with pytest.raises(InputError, match=r"ref_tokens values must lie in \[0, 3\), found 7"):
        ops.check_reference_tokens(tokens, 3)
