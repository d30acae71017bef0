"""copy_posterior: the fused Li-Stephens copying posterior against the plain
PyTorch reference (log-space, float64), closed forms, properties, gradients.

Every test that can run on CUDA runs the same code on the CPU (DEVICES); the
kernels take float32 on CUDA, float32 and float64 on the CPU. The values of the
inputs (template ids, alleles, switch_cm) are checked as the kernels read them:
on the CPU with the op's error (tested here), on CUDA with a device-side assert
(tests/simt/test_copy_posterior_simt.cpp tests that the block bodies report them).
"""
import math

import pytest
import torch
from torch.library import opcheck

from embrag_ext import ops
from embrag_ext.reference import (COPY_POSTERIOR_GRAD_INPUTS, copy_posterior_reference, copy_posterior_scaled,
                                  random_copy_posterior_inputs)
from helpers import DEVICES

DEVICE_DTYPES = [("cpu", torch.float64)] + [(device, torch.float32) for device in DEVICES]


def grad_inputs(inputs):
    """log_rho and logit_theta, the inputs copy_posterior differentiates."""
    return [inputs[name] for name in COPY_POSTERIOR_GRAD_INPUTS]


def tolerances(dtype):
    return dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-9)


# (N, M, K, H): K = 1, 2, 37, 2048; M = 1, 2, odd; H below and above K.
SIZES = [(3, 7, 1, 4), (3, 6, 2, 5), (4, 13, 37, 50), (2, 5, 2048, 300), (3, 1, 6, 7),
         (3, 2, 5, 9), (2, 40, 16, 12)]


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES, ids=str)
def test_forward_matches_reference(size, device, dtype):
    inputs = random_copy_posterior_inputs(*size, dtype=dtype, device=device)
    post = ops.copy_posterior(**inputs)
    assert post.shape == (size[0], size[1], size[2]) and post.dtype == dtype
    torch.testing.assert_close(post.double(), copy_posterior_reference(**inputs), **tolerances(dtype))
    has = inputs["templates"] >= 0
    valid = has[:, None, :].expand_as(post)
    assert (post[~valid] == 0).all(), "invalid templates must get 0"
    assert (post[0] == 0).all(), "a query with no template must give all zeros"
    sums = post[has.any(1)].sum(-1)  # queries with a template
    torch.testing.assert_close(sums, torch.ones_like(sums), **tolerances(dtype))


@pytest.mark.parametrize("size", [(3, 7, 1, 4), (4, 13, 37, 50), (2, 5, 300, 40), (3, 2, 5, 9),
                                  (3, 1, 6, 7)], ids=str)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES, ids=str)
def test_gradients_match_reference(size, device, dtype):
    inputs = random_copy_posterior_inputs(*size, dtype=dtype, device=device, seed=1)
    grad_post = torch.randn(size[:3], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    wrt = grad_inputs(inputs)
    got = torch.autograd.grad(ops.copy_posterior(**inputs), wrt, grad_post.to(device, dtype))
    want = torch.autograd.grad(copy_posterior_reference(**inputs), wrt, grad_post.to(device),
                               materialize_grads=True)  # M = 1: log_rho is not used
    for name, g, w in zip(COPY_POSTERIOR_GRAD_INPUTS, got, want):
        assert g.dtype == dtype and g.dim() == 0
        scale = max(1.0, w.abs().item())
        tol = 2e-4 * scale if dtype == torch.float32 else 1e-9 * scale
        assert abs(g.item() - w.item()) <= tol, f"grad of {name}: {g.item()} vs {w.item()}"


@pytest.mark.parametrize("size", SIZES[:4] + SIZES[5:], ids=str)
def test_algebra_baseline_matches_reference(size):
    """The benchmarks' plain-PyTorch scaled forward-backward: the same posterior and gradients."""
    inputs = random_copy_posterior_inputs(*size, dtype=torch.float64, seed=3)
    got, want = copy_posterior_scaled(**inputs), copy_posterior_reference(**inputs)
    torch.testing.assert_close(got, want, **tolerances(torch.float64))
    wrt = grad_inputs(inputs)
    for g, w in zip(torch.autograd.grad(got.square().sum(), wrt), torch.autograd.grad(want.square().sum(), wrt)):
        torch.testing.assert_close(g, w, **tolerances(torch.float64))


@pytest.mark.parametrize("size", [(3, 6, 4, 7), (2, 1, 3, 4), (2, 2, 1, 3), (3, 11, 9, 6)], ids=str)
def test_gradcheck_float64(size):
    inputs = random_copy_posterior_inputs(*size, dtype=torch.float64, seed=3)

    def fused(log_rho, logit_theta):
        return ops.copy_posterior(**dict(inputs, log_rho=log_rho, logit_theta=logit_theta))

    assert torch.autograd.gradcheck(fused, grad_inputs(inputs))


@pytest.mark.parametrize("size", [(2, 1, 1, 2), (3, 10, 8, 12), (2, 33, 65, 40)], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(size, device):
    opcheck(torch.ops.embrag.copy_posterior.default, (),
            random_copy_posterior_inputs(*size, device=device, seed=4))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES, ids=str)
def test_all_mask_query_is_uniform(device, dtype):
    """No observed allele: the posterior is the prior's marginal, uniform over the
    valid templates at every site, whatever the switch rate."""
    inputs = random_copy_posterior_inputs(3, 9, 12, 20, dtype=dtype, device=device, seed=5,
                                          empty_query=False)
    post = ops.copy_posterior(**dict(inputs, query=torch.full_like(inputs["query"], 2)))
    valid = (inputs["templates"] >= 0).to(dtype)
    want = (valid / valid.sum(1, keepdim=True))[:, None, :].expand_as(post)
    torch.testing.assert_close(post, want, **tolerances(dtype))


def template_alleles(inputs):
    """[N, M, K]: the allele of each query's template k at each site."""
    templates = inputs["templates"]
    return inputs["ref_sites"][:, templates.clamp(min=0)].permute(1, 0, 2)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES, ids=str)
def test_exact_copy_concentrates_on_its_template(device, dtype):
    """theta -> 0 and rare switches (r ~ 1e-8): a query identical to one template at
    every site copies it (posterior ~1), the others (all differing somewhere) get ~0."""
    N, M, K, H = 2, 30, 8, 40
    inputs = random_copy_posterior_inputs(N, M, K, H, dtype=dtype, device=device, seed=6, mask=0.0,
                                          pad=0.0, empty_query=False, cm_scale=1e-8)
    templates = torch.randperm(H, generator=torch.Generator().manual_seed(7))[:N * K].view(N, K)
    inputs["templates"] = templates.to(device)
    source = [1, 5]  # the template each query copies
    alleles = template_alleles(inputs)                                   # [N, M, K]
    query = torch.stack([alleles[n, :, source[n]] for n in range(N)])
    assert ((alleles != query[:, :, None]).sum(1) > 0).sum() == N * (K - 1), "templates differ"
    post = ops.copy_posterior(**dict(inputs, query=query,
                                     log_rho=torch.tensor(0.0, dtype=dtype, device=device),
                                     logit_theta=torch.tensor(-30.0, dtype=dtype, device=device)))
    for n in range(N):
        assert (post[n, :, source[n]] > 1 - 1e-5).all()


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES, ids=str)
def test_no_switching_is_the_whole_sequence_likelihood(device, dtype):
    """rho = 0 (or switch_cm = 0): the template never changes, so at every site
    post(k) = L_k / sum_j L_j with L_k = (1 - theta)^matches theta^mismatches."""
    inputs = random_copy_posterior_inputs(3, 11, 7, 9, dtype=dtype, device=device, seed=8, theta=0.3)
    query, templates = inputs["query"], inputs["templates"]
    with torch.no_grad():
        post = ops.copy_posterior(**dict(inputs, switch_cm=torch.zeros_like(inputs["switch_cm"])))
        alleles = template_alleles(inputs)                                # [N, M, K]
        observed = (query != 2)[:, :, None]
        matches = ((alleles == query[:, :, None]) & observed).sum(1).double()
        mismatches = ((alleles != query[:, :, None]) & observed).sum(1).double()
        theta = 0.3
        log_lik = matches * math.log(1 - theta) + mismatches * math.log(theta)
        log_lik[templates < 0] = -math.inf
        want = torch.softmax(log_lik, -1).nan_to_num(0.0)[:, None, :].expand_as(post)
    torch.testing.assert_close(post.double(), want, **tolerances(dtype))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES, ids=str)
def test_free_switching_is_per_site(device, dtype):
    """r = 1 at every site (huge rho): sites are independent, post_m(k) ∝ e_m(k)."""
    inputs = random_copy_posterior_inputs(3, 8, 6, 10, dtype=dtype, device=device, seed=9)
    query, templates = inputs["query"], inputs["templates"]
    with torch.no_grad():
        post = ops.copy_posterior(**dict(inputs, switch_cm=torch.ones_like(inputs["switch_cm"]),
                                         log_rho=torch.tensor(50.0, dtype=dtype, device=device)))
        theta = torch.sigmoid(inputs["logit_theta"].double())
        alleles = template_alleles(inputs)
        e = torch.where(alleles == query[:, :, None], 1 - theta, theta)
        e = torch.where((query == 2)[:, :, None], 1.0, e) * (templates >= 0)[:, None, :]
        want = (e / e.sum(-1, keepdim=True)).nan_to_num(0.0)
    torch.testing.assert_close(post.double(), want, **tolerances(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_permuting_templates_permutes_the_output(device):
    inputs = random_copy_posterior_inputs(3, 12, 9, 15, device=device, seed=10, requires_grad=False)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(11)).to(device)
    permuted = dict(inputs, templates=inputs["templates"][:, perm])
    torch.testing.assert_close(ops.copy_posterior(**permuted), ops.copy_posterior(**inputs)[:, :, perm],
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    inputs = random_copy_posterior_inputs(4, 20, 33, 25, device=device, seed=12)
    grad_post = torch.randn(4, 20, 33, generator=torch.Generator().manual_seed(13)).to(device)
    runs = [torch.autograd.grad(ops.copy_posterior(**inputs), grad_inputs(inputs), grad_post)
            for _ in range(2)]
    assert all((a == b).all() for a, b in zip(*runs))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(0, 5, 3, 4), (2, 0, 3, 4), (2, 5, 0, 4)], ids=str)
def test_empty_sizes(size, device):
    inputs = random_copy_posterior_inputs(*size, device=device, seed=14)
    post = ops.copy_posterior(**inputs)
    assert post.shape == size[:3]
    grads = torch.autograd.grad(post.sum(), grad_inputs(inputs), allow_unused=True)
    assert all(g is None or g.item() == 0 for g in grads)


def replaced(name, make):
    def change(inputs):
        inputs[name] = make(inputs[name])
    return change


def set_value(name, where, value):
    def change(inputs):
        inputs[name] = inputs[name].clone()
        inputs[name][where] = value
    return change


@pytest.mark.parametrize("change,message", [
    (replaced("query", lambda q: q[0]), "query must be 2-D"),
    (replaced("query", lambda q: q.long()), "query must be Byte"),
    (replaced("templates", lambda t: t.int()), "templates must be Long"),
    (replaced("templates", lambda t: t[:-1]), "templates dimension 0 must be 3"),
    (replaced("ref_sites", lambda r: r.long()), "ref_sites must be Byte"),
    (replaced("ref_sites", lambda r: r[:-1]), "ref_sites dimension 0 must be 6"),
    (replaced("ref_sites", lambda r: r.t().contiguous().t()), "ref_sites must have unit stride"),
    (replaced("switch_cm", lambda c: c.half()), "switch_cm must be float32 or float64"),
    (replaced("switch_cm", lambda c: c[:-1]), "switch_cm dimension 0 must be 6"),
    (replaced("log_rho", lambda x: x.reshape(1)), "log_rho must be a 0-d tensor"),
    (replaced("logit_theta", lambda x: x.double()), "logit_theta must have switch_cm's dtype"),
    (set_value("templates", (1, 2), 40), r"templates values must lie in \[-1, 40\).*found 40 at \[1, 2\]"),
    (set_value("templates", (2, 0), -2), r"templates values must lie in \[-1, 40\).*found -2 at \[2, 0\]"),
    (set_value("query", (1, 3), 3),
     r"query values must be 0 \(REF\), 1 \(ALT\) or 2 \(MASK\), found 3 at \[1, 3\]"),
    (set_value("switch_cm", 2, -0.5), r"switch_cm values must be >= 0.*found -0.5 at \[2\]"),
    (set_value("switch_cm", 2, float("nan")), r"switch_cm values must be >= 0.*found nan at \[2\]"),
])
def test_bad_inputs_raise_clear_errors(change, message):
    inputs = random_copy_posterior_inputs(3, 6, 5, 40, seed=16, requires_grad=False)
    change(inputs)
    with pytest.raises(RuntimeError, match=message):
        ops.copy_posterior(**inputs)


def test_bad_ref_value_raises_at_the_selected_column():
    """ref_sites values are checked where the templates read them (no scan of the panel)."""
    inputs = random_copy_posterior_inputs(3, 6, 5, 40, seed=17, pad=0.0, empty_query=False,
                                          requires_grad=False)
    templates = inputs["templates"]
    panel = inputs["ref_sites"].clone()
    unused = sorted(set(range(40)) - set(templates.flatten().tolist()))[0]
    panel[4, unused] = 7  # a column no template selects: fine
    ops.copy_posterior(**dict(inputs, ref_sites=panel))
    column = templates[1, 3].item()
    panel[4, column] = 7
    with pytest.raises(RuntimeError, match=rf"ref_sites values must be 0 or 1.*found 7 at \[4, {column}\]"):
        ops.copy_posterior(**dict(inputs, ref_sites=panel))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_checks_grad_post(device):
    inputs = random_copy_posterior_inputs(3, 6, 5, 40, device=device, seed=18, requires_grad=False)
    with pytest.raises(RuntimeError, match=r"grad_post must have the output's shape"):
        torch.ops.embrag.copy_posterior_backward(torch.zeros(3, 6, 4, device=device), **inputs)
    with pytest.raises(RuntimeError, match="grad_post must be Float"):
        torch.ops.embrag.copy_posterior_backward(
            torch.zeros(3, 6, 5, dtype=torch.float64, device=device), **inputs)


# ---- CUDA only (skipped without a GPU) --------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_cuda_rejects_mixed_devices_and_float64():
    inputs = random_copy_posterior_inputs(3, 6, 5, 40, device="cuda", seed=19, requires_grad=False)
    with pytest.raises(RuntimeError, match="templates is on cpu but query is on cuda"):
        ops.copy_posterior(**dict(inputs, templates=inputs["templates"].cpu()))
    as_double = {name: t.double() if t.is_floating_point() else t for name, t in inputs.items()}
    with pytest.raises(RuntimeError, match="switch_cm must be float32 on CUDA"):
        ops.copy_posterior(**as_double)


@needs_cuda
def test_cuda_matches_cpu_at_production_size():
    inputs = random_copy_posterior_inputs(8, 64, 700, 900, seed=20)
    gpu = {name: t.detach().cuda().requires_grad_(t.requires_grad) for name, t in inputs.items()}
    grad_post = torch.randn(8, 64, 700, generator=torch.Generator().manual_seed(21))
    post = ops.copy_posterior(**inputs)
    post_gpu = ops.copy_posterior(**gpu)
    torch.testing.assert_close(post_gpu.cpu(), post, atol=2e-5, rtol=1e-4)
    got = torch.autograd.grad(post_gpu, grad_inputs(gpu), grad_post.cuda())
    want = torch.autograd.grad(post, grad_inputs(inputs), grad_post)
    for g, w in zip(got, want):
        assert abs(g.item() - w.item()) <= 1e-3 * max(1.0, abs(w.item()))
