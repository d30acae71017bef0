"""copy_posterior: the fused Li-Stephens copying posterior against the plain
PyTorch reference (log-space, float64), closed forms, properties, gradients.

The same tests run on every device present; CUDA computes in float32 only, and
checks the values of its inputs (template ids, alleles, switch_cm) with
device-side asserts rather than errors (see csrc/cuda/copy_posterior_cuda.cpp).
"""
import math

import pytest
import torch
from torch.library import opcheck

from embrag_ext import ops
from embrag_ext.reference import copy_posterior_reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (device, dtype): float64 on the CPU only.
DEVICE_DTYPES = [(d, torch.float32) for d in DEVICES] + [("cpu", torch.float64)]


def make_inputs(N, M, K, H, dtype=torch.float32, device="cpu", seed=0, mask=0.2, pad=0.2,
                empty_query=True, rho=2.0, theta=0.05, cm_scale=0.3):
    """The op's arguments, random. ref_sites is a row and column slice of a wider
    site-major panel (row stride > H); a share `mask` of the query alleles is MASK,
    `pad` of the template ids are -1, query 0 has no template (empty_query), one
    inter-site distance is 0. log_rho and logit_theta require grad."""
    gen = torch.Generator().manual_seed(seed)
    panel = torch.randint(0, 2, (M + 5, H + 11), generator=gen, dtype=torch.uint8)
    ref_sites = panel[3:3 + M, 7:7 + H]
    query = torch.randint(0, 2, (N, M), generator=gen, dtype=torch.uint8)
    query[torch.rand(N, M, generator=gen) < mask] = 2
    templates = torch.randint(0, H, (N, K), generator=gen)
    templates[torch.rand(N, K, generator=gen) < pad] = -1
    if empty_query and N > 1:
        templates[0] = -1
    switch_cm = torch.rand(M, generator=gen, dtype=torch.float64) * cm_scale
    switch_cm[M // 2] = 0.0
    log_rho = torch.tensor(math.log(rho), dtype=dtype, device=device, requires_grad=True)
    logit_theta = torch.tensor(math.log(theta / (1 - theta)), dtype=dtype, device=device,
                               requires_grad=True)
    return [query.to(device), templates.to(device), ref_sites.to(device),
            switch_cm.to(device=device, dtype=dtype), log_rho, logit_theta]


def detached(inputs):
    return [t.detach() for t in inputs]


def tolerances(dtype):
    return dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-9)


# (N, M, K, H): K = 1, 2, 37, 2048; M = 1, 2, odd; H below and above K.
SIZES = [(3, 7, 1, 4), (3, 6, 2, 5), (4, 13, 37, 50), (2, 5, 2048, 300), (3, 1, 6, 7),
         (3, 2, 5, 9), (2, 40, 16, 12)]


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES, ids=str)
def test_forward_matches_reference(size, device, dtype):
    inputs = make_inputs(*size, dtype=dtype, device=device)
    post = ops.copy_posterior(*inputs)
    assert post.shape == (size[0], size[1], size[2]) and post.dtype == dtype
    torch.testing.assert_close(post.double(), copy_posterior_reference(*inputs), **tolerances(dtype))
    valid = (inputs[1] >= 0)[:, None, :].expand_as(post)
    assert (post[~valid] == 0).all(), "invalid templates must get 0"
    assert (post[0] == 0).all(), "a query with no template must give all zeros"
    sums = post[(inputs[1] >= 0).any(1)].sum(-1)  # queries with a template
    torch.testing.assert_close(sums, torch.ones_like(sums), **tolerances(dtype))


@pytest.mark.parametrize("size", [(3, 7, 1, 4), (4, 13, 37, 50), (2, 5, 300, 40), (3, 2, 5, 9),
                                  (3, 1, 6, 7)], ids=str)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES, ids=str)
def test_gradients_match_reference(size, device, dtype):
    inputs = make_inputs(*size, dtype=dtype, device=device, seed=1)
    grad_post = torch.randn(size[:3], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    wrt = inputs[4:]
    got = torch.autograd.grad(ops.copy_posterior(*inputs), wrt, grad_post.to(device, dtype))
    want = torch.autograd.grad(copy_posterior_reference(*inputs), wrt, grad_post.to(device),
                               materialize_grads=True)  # M = 1: log_rho is not used
    for name, g, w in zip(("log_rho", "logit_theta"), got, want):
        assert g.dtype == dtype and g.dim() == 0
        scale = max(1.0, w.abs().item())
        tol = 2e-4 * scale if dtype == torch.float32 else 1e-9 * scale
        assert abs(g.item() - w.item()) <= tol, f"grad of {name}: {g.item()} vs {w.item()}"


@pytest.mark.parametrize("size", [(3, 6, 4, 7), (2, 1, 3, 4), (2, 2, 1, 3), (3, 11, 9, 6)], ids=str)
def test_gradcheck_float64(size):
    query, templates, ref_sites, switch_cm, log_rho, logit_theta = make_inputs(
        *size, dtype=torch.float64, seed=3)
    assert torch.autograd.gradcheck(
        lambda lr, lt: ops.copy_posterior(query, templates, ref_sites, switch_cm, lr, lt),
        (log_rho, logit_theta))


@pytest.mark.parametrize("size", [(2, 1, 1, 2), (3, 10, 8, 12), (2, 33, 65, 40)], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(size, device):
    opcheck(torch.ops.embrag.copy_posterior.default, make_inputs(*size, device=device, seed=4))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES, ids=str)
def test_all_mask_query_is_uniform(device, dtype):
    """No observed allele: the posterior is the prior's marginal, uniform over the
    valid templates at every site, whatever the switch rate."""
    query, templates, ref_sites, switch_cm, log_rho, logit_theta = make_inputs(
        3, 9, 12, 20, dtype=dtype, device=device, seed=5, empty_query=False)
    post = ops.copy_posterior(torch.full_like(query, 2), templates, ref_sites, switch_cm, log_rho,
                              logit_theta)
    valid = (templates >= 0).to(dtype)
    want = (valid / valid.sum(1, keepdim=True))[:, None, :].expand_as(post)
    torch.testing.assert_close(post, want, **tolerances(dtype))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES, ids=str)
def test_exact_copy_concentrates_on_its_template(device, dtype):
    """theta -> 0 and rare switches (r ~ 1e-8): a query identical to one template at
    every site copies it (posterior ~1), the others (all differing somewhere) get ~0."""
    N, M, K, H = 2, 30, 8, 40
    query, templates, ref_sites, switch_cm, _, _ = make_inputs(
        N, M, K, H, dtype=dtype, device=device, seed=6, mask=0.0, pad=0.0, empty_query=False,
        cm_scale=1e-8)
    templates = torch.randperm(H, generator=torch.Generator().manual_seed(7))[:N * K].view(N, K)
    templates = templates.to(device)
    source = [1, 5]  # the template each query copies
    alleles = ref_sites[:, templates.clamp(min=0)].permute(1, 0, 2)     # [N, M, K]
    query = torch.stack([alleles[n, :, source[n]] for n in range(N)])
    assert ((alleles != query[:, :, None]).sum(1) > 0).sum() == N * (K - 1), "templates differ"
    log_rho = torch.tensor(0.0, dtype=dtype, device=device)
    logit_theta = torch.tensor(-30.0, dtype=dtype, device=device)
    post = ops.copy_posterior(query, templates, ref_sites, switch_cm, log_rho, logit_theta)
    for n in range(N):
        assert (post[n, :, source[n]] > 1 - 1e-5).all()


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES, ids=str)
def test_no_switching_is_the_whole_sequence_likelihood(device, dtype):
    """rho = 0 (or switch_cm = 0): the template never changes, so at every site
    post(k) = L_k / sum_j L_j with L_k = (1 - theta)^matches theta^mismatches."""
    query, templates, ref_sites, switch_cm, log_rho, logit_theta = make_inputs(
        3, 11, 7, 9, dtype=dtype, device=device, seed=8, theta=0.3)
    with torch.no_grad():
        post = ops.copy_posterior(query, templates, ref_sites, torch.zeros_like(switch_cm), log_rho,
                                  logit_theta)
        alleles = ref_sites[:, templates.clamp(min=0)].permute(1, 0, 2)  # [N, M, K]
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
    query, templates, ref_sites, switch_cm, _, logit_theta = make_inputs(
        3, 8, 6, 10, dtype=dtype, device=device, seed=9)
    switch_cm = torch.ones_like(switch_cm)
    log_rho = torch.tensor(50.0, dtype=dtype, device=device)
    with torch.no_grad():
        post = ops.copy_posterior(query, templates, ref_sites, switch_cm, log_rho, logit_theta)
        theta = torch.sigmoid(logit_theta.double())
        alleles = ref_sites[:, templates.clamp(min=0)].permute(1, 0, 2)
        e = torch.where(alleles == query[:, :, None], 1 - theta, theta)
        e = torch.where((query == 2)[:, :, None], 1.0, e) * (templates >= 0)[:, None, :]
        want = (e / e.sum(-1, keepdim=True)).nan_to_num(0.0)
    torch.testing.assert_close(post.double(), want, **tolerances(dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_permuting_templates_permutes_the_output(device):
    inputs = detached(make_inputs(3, 12, 9, 15, device=device, seed=10))
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(11)).to(device)
    permuted = list(inputs)
    permuted[1] = inputs[1][:, perm]
    torch.testing.assert_close(ops.copy_posterior(*permuted), ops.copy_posterior(*inputs)[:, :, perm],
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    inputs = make_inputs(4, 20, 33, 25, device=device, seed=12)
    grad_post = torch.randn(4, 20, 33, generator=torch.Generator().manual_seed(13)).to(device)
    runs = [torch.autograd.grad(ops.copy_posterior(*inputs), inputs[4:], grad_post) for _ in range(2)]
    assert all((a == b).all() for a, b in zip(*runs))


def test_empty_sizes():
    for size in [(0, 5, 3, 4), (2, 0, 3, 4), (2, 5, 0, 4)]:
        inputs = make_inputs(*size, seed=14) if size[1] else None
        if inputs is None:  # M = 0
            inputs = [torch.zeros(2, 0, dtype=torch.uint8), torch.zeros(2, 3, dtype=torch.long),
                      torch.zeros(0, 4, dtype=torch.uint8), torch.zeros(0),
                      torch.tensor(0.0, requires_grad=True), torch.tensor(0.0, requires_grad=True)]
        post = ops.copy_posterior(*inputs)
        assert post.shape == size[:3]
        grads = torch.autograd.grad(post.sum(), inputs[4:], allow_unused=True)
        assert all(g is None or g.item() == 0 for g in grads)


def test_no_host_sync():
    """The op and its backward never read a value back to the host."""
    inputs = make_inputs(3, 10, 8, 12, seed=15)
    with torch.profiler.profile() as prof:
        ops.copy_posterior(*inputs).sum().backward()
    assert not [e for e in prof.events() if e.name == "aten::_local_scalar_dense"]


def _replace(index, make):
    def change(inputs):
        inputs[index] = make(inputs[index])
    return change


def _set(index, where, value):
    def change(inputs):
        inputs[index] = inputs[index].clone()
        inputs[index][where] = value
    return change


@pytest.mark.parametrize("change,message", [
    (_replace(0, lambda q: q[0]), "query must be 2-D"),
    (_replace(0, lambda q: q.long()), "query must be Byte"),
    (_replace(1, lambda t: t.int()), "templates must be Long"),
    (_replace(1, lambda t: t[:-1]), "templates dimension 0 must be 3"),
    (_replace(2, lambda r: r.long()), "ref_sites must be Byte"),
    (_replace(2, lambda r: r[:-1]), "ref_sites dimension 0 must be 6"),
    (_replace(2, lambda r: r.t().contiguous().t()), "ref_sites must have unit stride"),
    (_replace(3, lambda c: c.half()), "switch_cm must be float32 or float64"),
    (_replace(3, lambda c: c[:-1]), "switch_cm dimension 0 must be 6"),
    (_replace(4, lambda x: x.reshape(1)), "log_rho must be a 0-d tensor"),
    (_replace(5, lambda x: x.double()), "logit_theta must have switch_cm's dtype"),
    (_set(1, (1, 2), 40), r"templates values must lie in \[-1, 40\).*found 40 at \[1, 2\]"),
    (_set(1, (2, 0), -2), r"templates values must lie in \[-1, 40\).*found -2 at \[2, 0\]"),
    (_set(0, (1, 3), 3), r"query values must be 0 \(REF\), 1 \(ALT\) or 2 \(MASK\), found 3 at \[1, 3\]"),
    (_set(3, 2, -0.5), r"switch_cm values must be >= 0.*found -0.5 at \[2\]"),
    (_set(3, 2, float("nan")), r"switch_cm values must be >= 0.*found nan at \[2\]"),
])
def test_bad_inputs_raise_clear_errors(change, message):
    inputs = detached(make_inputs(3, 6, 5, 40, seed=16))
    change(inputs)
    with pytest.raises(RuntimeError, match=message):
        ops.copy_posterior(*inputs)


def test_bad_ref_value_raises_at_the_selected_column():
    """ref_sites values are checked where the templates read them (no scan of the panel)."""
    query, templates, ref_sites, switch_cm, log_rho, logit_theta = detached(
        make_inputs(3, 6, 5, 40, seed=17, pad=0.0, empty_query=False))
    panel = ref_sites.clone()
    unused = sorted(set(range(40)) - set(templates.flatten().tolist()))[0]
    panel[4, unused] = 7  # a column no template selects: fine
    ops.copy_posterior(query, templates, panel, switch_cm, log_rho, logit_theta)
    column = templates[1, 3].item()
    panel[4, column] = 7
    with pytest.raises(RuntimeError, match=rf"ref_sites values must be 0 or 1.*found 7 at \[4, {column}\]"):
        ops.copy_posterior(query, templates, panel, switch_cm, log_rho, logit_theta)


def test_backward_checks_grad_post():
    inputs = detached(make_inputs(3, 6, 5, 40, seed=18))
    with pytest.raises(RuntimeError, match=r"grad_post must have the output's shape"):
        torch.ops.embrag.copy_posterior_backward(torch.zeros(3, 6, 4), *inputs)
    with pytest.raises(RuntimeError, match="grad_post must be Float"):
        torch.ops.embrag.copy_posterior_backward(torch.zeros(3, 6, 5, dtype=torch.float64), *inputs)


# ---- CUDA only (skipped without a GPU) --------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_cuda_rejects_mixed_devices_and_float64():
    inputs = detached(make_inputs(3, 6, 5, 40, device="cuda", seed=19))
    mixed = list(inputs)
    mixed[1] = inputs[1].cpu()
    with pytest.raises(RuntimeError, match="templates is on cpu but query is on cuda"):
        ops.copy_posterior(*mixed)
    as_double = inputs[:3] + [t.double() for t in inputs[3:]]
    with pytest.raises(RuntimeError, match="switch_cm must be float32 on CUDA"):
        ops.copy_posterior(*as_double)


@needs_cuda
def test_cuda_matches_cpu_at_production_size():
    inputs = make_inputs(8, 64, 700, 900, seed=20)
    gpu = [t.detach().cuda().requires_grad_(t.requires_grad) for t in inputs]
    grad_post = torch.randn(8, 64, 700, generator=torch.Generator().manual_seed(21))
    post = ops.copy_posterior(*inputs)
    post_gpu = ops.copy_posterior(*gpu)
    torch.testing.assert_close(post_gpu.cpu(), post, atol=2e-5, rtol=1e-4)
    got = torch.autograd.grad(post_gpu, gpu[4:], grad_post.cuda())
    want = torch.autograd.grad(post, inputs[4:], grad_post)
    for g, w in zip(got, want):
        assert abs(g.item() - w.item()) <= 1e-3 * max(1.0, abs(w.item()))
