"""Property-based fuzzing of the three fused ops (hypothesis), run as a script in
a subprocess by tests/test_fuzz.py (and, on an extension built with the
sanitizers, by CMake's ctest), so that a crash fails that test instead
of killing pytest:

    python tests/fuzz_ops.py OP EXAMPLES        # OP: window_embed, rag_fusion, copy_posterior

Each example draws sizes, a dtype and a seed, builds valid inputs, then applies
one change drawn from the op's list: a change that keeps the call valid (another
memory layout with the same values: a stepped, transposed or offset view; an
extreme but legal size) or one that makes it invalid (an index out of range where
the kernel reads it, a wrong dtype, rank or size, a forbidden stride, a size over
the op's limit). Properties: an invalid call raises a Python exception (no crash,
no silent result); a valid call matches the plain PyTorch reference (reference.py),
forward and, in float64, backward. Examples are derandomized: CI replays the same
ones. Prints ``OP: N examples, V valid (matched the reference), I invalid (raised)``.
"""
import math
import sys
from dataclasses import dataclass
from typing import Callable, Union

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embrag_ext import ops
from embrag_ext.reference import (copy_posterior_reference, random_copy_posterior_inputs,
                                  random_rag_fusion_inputs, rag_fusion_reference, window_embed_reference)

RAISES = (RuntimeError, ValueError, TypeError, IndexError)
FLOATS = (torch.float32, torch.float64)


@dataclass(frozen=True)
class Change:
    """A change to an op's inputs: ``apply(inputs, data)`` edits them in place; ``valid``:
    whether the call stays valid, or a function of the changed inputs that says so."""
    name: str
    apply: Callable
    valid: Union[bool, Callable]

    def keeps_valid(self, inputs) -> bool:
        return self.valid(inputs) if callable(self.valid) else self.valid


def stepped(t):
    """The same values with stride 2 along the last dimension."""
    out = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1])[..., ::2] if t.dim() else t.clone()
    return out.copy_(t) if t.dim() else out


def transposed(t):
    """The same values stored with the last two dimensions swapped (column-major)."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.dim() >= 2 else stepped(t)


def offset(t):
    """The same values at a storage offset, inside a larger tensor."""
    big = t.new_zeros(t.numel() + 3)
    return big[3:].view(t.shape).copy_(t) if t.numel() else t


LAYOUTS = {"stepped": stepped, "transposed": transposed, "offset": offset}


def relaid(name, layout, valid=True):
    def apply(inputs, data):
        inputs[name] = LAYOUTS[layout](inputs[name])
    return Change(f"{name} {layout}", apply, valid)


def retyped(name, dtype):
    def apply(inputs, data):
        inputs[name] = inputs[name].to(dtype)
    return Change(f"{name} as {dtype}", apply, False)


def reshaped(name, how, make):
    def apply(inputs, data):
        inputs[name] = make(inputs[name])
    return Change(f"{name} {how}", apply, False)


def bad_value(name, values, where=None):
    """An entry of ``name`` (at where(inputs, data) or at random) set to one of values(inputs)."""
    def apply(inputs, data):
        t = inputs[name] = inputs[name].clone()
        if t.numel() == 0:
            raise Unusable
        index = where(inputs, data) if where else tuple(data.draw(st.integers(0, n - 1)) for n in t.shape)
        t[index] = data.draw(st.sampled_from(values(inputs)))
    return Change(f"{name} value out of range", apply, False)


class Unusable(Exception):
    """The drawn inputs cannot take the drawn change (e.g. an empty tensor has no entry to spoil)."""


class Tally:
    def __init__(self):
        self.valid = self.invalid = 0

    def line(self, op):
        return (f"{op}: {self.valid + self.invalid} examples, {self.valid} valid (matched the reference), "
                f"{self.invalid} invalid (raised)")


def check_invalid(call, inputs, change):
    try:
        call(**inputs)
    except RAISES:
        return
    raise AssertionError(f"{change.name}: the call returned instead of raising")


def close(got, want, dtype):
    tolerance = dict(atol=1e-9, rtol=1e-7) if dtype == torch.float64 else dict(atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(got.double(), want.double(), **tolerance)


def with_grad(inputs, names):
    """The inputs with the named floating tensors (those given) as fresh leaves that require grad (layout kept)."""
    return {name: t.detach().requires_grad_() if name in names and t is not None else t
            for name, t in inputs.items()}


def check_backward(call, reference, inputs, names):
    """float64: the gradients of every differentiable input match the reference's."""
    inputs = with_grad(inputs, names)
    wanted = [name for name in names if inputs.get(name) is not None]
    out = call(**inputs)
    grad_out = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(out, [inputs[n] for n in wanted], grad_out, allow_unused=True)
    want = torch.autograd.grad(reference(**inputs), [inputs[n] for n in wanted], grad_out, allow_unused=True)
    for name, g, w in zip(wanted, got, want):
        if w is None:
            assert g is None or g.abs().max().item() == 0, name
        else:
            close(torch.zeros_like(w) if g is None else g, w, torch.float64)


def run(op, call, reference, build, changes, grad_names, n_examples, compare=close):
    """Fuzz one op: build(data) -> (inputs, dtype); apply one change; check the property."""
    tally = Tally()

    @settings(max_examples=n_examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def example(data):
        inputs, dtype = build(data)
        change = data.draw(st.sampled_from(changes), label="change")
        try:
            change.apply(inputs, data)
        except Unusable:
            return
        if not change.keeps_valid(inputs):
            check_invalid(call, inputs, change)
            tally.invalid += 1
            return
        out = call(**inputs)
        compare(out, reference(**inputs), dtype)
        if dtype == torch.float64 and out.numel():
            check_backward(call, reference, inputs, grad_names)
        tally.valid += 1

    example()
    print(tally.line(op), flush=True)


# ---- window_embed -----------------------------------------------------------

WINDOW_EMBED_TABLES = ("tok_table", "pos_table", "af_proj", "type_table")


def window_embed_inputs(data):
    B, L, D = (data.draw(st.integers(low, high)) for low, high in ((0, 4), (0, 9), (1, 9)))
    V, P, T = (data.draw(st.integers(1, high)) for high in (4, 12, 5))
    F = data.draw(st.sampled_from([2, 4, 8]))
    dtype = data.draw(st.sampled_from(FLOATS))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    inputs = dict(tokens=torch.randint(0, V, (B, L), generator=gen), pos_ids=torch.randint(0, P, (L,), generator=gen),
                  af=torch.rand(L, generator=gen, dtype=dtype), type_ids=torch.randint(0, T, (L,), generator=gen))
    for name, rows in zip(WINDOW_EMBED_TABLES, (V, P, F, T)):
        inputs[name] = torch.randn(rows, D, generator=gen, dtype=dtype)
    return inputs, dtype


def table_rows(name):
    return lambda inputs: [inputs[name].shape[0], inputs[name].shape[0] + 7, -1, -(2**40), 2**40]


WINDOW_EMBED_CHANGES = [
    Change("none", lambda inputs, data: None, True),
    *[relaid(name, layout) for name in ("tokens", "tok_table", "pos_table", "af_proj", "pos_ids", "af")
      for layout in LAYOUTS],
    bad_value("tokens", table_rows("tok_table")), bad_value("pos_ids", table_rows("pos_table")),
    bad_value("type_ids", table_rows("type_table")),
    retyped("tokens", torch.int32), retyped("pos_ids", torch.float32), retyped("tok_table", torch.float16),
    retyped("af", torch.bfloat16), retyped("type_table", torch.int64),
    reshaped("tokens", "1-D", lambda t: t.reshape(-1)), reshaped("tokens", "3-D", lambda t: t[None]),
    reshaped("pos_ids", "one site longer", lambda t: torch.cat([t, t.new_zeros(1)])),
    reshaped("af", "one site shorter", lambda t: t[1:] if len(t) else t.new_zeros(1)),
    reshaped("pos_table", "one column wider", lambda t: torch.cat([t, t[:, :1]], 1)),
    reshaped("af_proj", "odd rows", lambda t: t[:-1]), reshaped("af_proj", "34 rows", lambda t: t[:1].repeat(34, 1)),
    reshaped("type_table", "no rows", lambda t: t[:0]), reshaped("tok_table", "1-D", lambda t: t[0]),
]


def fuzz_window_embed(n):
    run("window_embed", ops.window_embed, window_embed_reference, window_embed_inputs, WINDOW_EMBED_CHANGES,
        WINDOW_EMBED_TABLES, n)


# ---- rag_fusion -------------------------------------------------------------

RAG_GRAD = ("q", "tok_k", "tok_v", "site_v", "dist", "beta", "alpha", "copy_bias", "gamma")


def rag_fusion_inputs(data):
    heads = data.draw(st.integers(1, 3))
    B, L, K = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 12)), data.draw(st.integers(1, 9))
    D = heads * data.draw(st.integers(1, 5))
    dtype = data.draw(st.sampled_from(FLOATS + (torch.bfloat16,)))
    inputs = random_rag_fusion_inputs(B, L, D, K, heads, data.draw(st.integers(0, 14)),
                                      copy_bias=data.draw(st.booleans()), n_haps=data.draw(st.integers(1, 12)),
                                      n_tokens=data.draw(st.integers(2, 4)), dtype=dtype,
                                      seed=data.draw(st.integers(0, 2**16)), requires_grad=False)
    return inputs, dtype


def selected_reference_token(inputs, data):
    """(row, site) of ref_tokens that some query's topk selects (one is made to select row 0 if none does)."""
    topk = inputs["topk"]
    if (topk < 0).all():
        topk[0, 0] = 0
    rows = topk[topk >= 0].unique().tolist()
    return data.draw(st.sampled_from(rows)), data.draw(st.integers(0, inputs["ref_tokens"].shape[1] - 1))


def set_input(name, value, valid=False):
    def apply(inputs, data):
        inputs[name] = value(inputs) if callable(value) else value
    return Change(f"{name} = {value if not callable(value) else 'changed'}", apply, valid)


RAG_FUSION_CHANGES = [
    Change("none", lambda inputs, data: None, True),
    *[relaid(name, layout) for name in ("q", "topk", "tok_k", "site_v", "dist", "q_tokens", "observed")
      for layout in LAYOUTS],
    relaid("ref_tokens", "offset"), relaid("ref_tokens", "stepped", valid=False),
    relaid("ref_tokens", "transposed", valid=lambda inputs: inputs["ref_tokens"].shape[0] <= 1),  # one row: unit stride kept
    set_input("half_width", lambda inputs: 5000, valid=True),
    bad_value("topk", lambda inputs: [inputs["ref_tokens"].shape[0], -2, 2**40, -(2**40)]),
    bad_value("ref_tokens", lambda inputs: [inputs["tok_k"].shape[0], 255], where=selected_reference_token),
    retyped("q", torch.float16), retyped("topk", torch.int32), retyped("ref_tokens", torch.int64),
    retyped("observed", torch.uint8), retyped("q_tokens", torch.int32), retyped("tok_v", torch.float16),
    reshaped("q", "2-D", lambda t: t[0]), reshaped("topk", "no neighbour column", lambda t: t[:, :0]),
    reshaped("topk", "4097 neighbours", lambda t: t[:, :1].repeat(1, 4097)),
    reshaped("q", "no site", lambda t: t[:, :0]), reshaped("q", "4097 sites", lambda t: t[:, :1].repeat(1, 4097, 1)),
    reshaped("ref_tokens", "one site short", lambda t: t[:, 1:]), reshaped("site_v", "one row short", lambda t: t[1:]),
    reshaped("dist", "one query short", lambda t: t[1:]), reshaped("beta", "2-D", lambda t: t[None]),
    reshaped("tok_k", "17 rows", lambda t: t[:1].repeat(17, 1)),
    set_input("n_heads", lambda inputs: inputs["q"].shape[2] + 1), set_input("n_heads", 0),
    set_input("half_width", -1),
    set_input("gamma", None, valid=lambda inputs: inputs.get("copy_bias") is None),   # gamma scales copy_bias
    set_input("copy_bias", lambda inputs: torch.zeros(1, dtype=inputs["q"].dtype)),
]


def fuzz_rag_fusion(n):
    def reference(**inputs):
        if inputs["q"].dtype != torch.bfloat16:
            return rag_fusion_reference(**inputs)
        exact = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
        return rag_fusion_reference(**exact), rag_fusion_reference(**inputs)

    def compare(got, want, dtype):
        if dtype != torch.bfloat16:
            return close(got, want, dtype)
        exact, same_math = want
        error = (got.double() - exact).abs().max().item()
        assert error <= 3 * (same_math.double() - exact).abs().max().item() + 2e-2, error

    run("rag_fusion", ops.rag_fusion, reference, rag_fusion_inputs, RAG_FUSION_CHANGES, RAG_GRAD, n, compare)


# ---- copy_posterior ---------------------------------------------------------

def copy_posterior_inputs(data):
    N, M, K, H = (data.draw(st.integers(low, high)) for low, high in ((0, 4), (0, 10), (0, 9), (1, 12)))
    dtype = data.draw(st.sampled_from(FLOATS))
    inputs = random_copy_posterior_inputs(N, M, K, H, mask=data.draw(st.sampled_from([0.0, 0.2, 1.0])),
                                          pad=data.draw(st.sampled_from([0.0, 0.3, 1.0])), dtype=dtype,
                                          seed=data.draw(st.integers(0, 2**16)), requires_grad=False)
    return inputs, dtype


def selected_site_column(inputs, data):
    """(site, column) of ref_sites that a template selects."""
    templates = inputs["templates"]
    if templates.numel() == 0 or inputs["ref_sites"].shape[0] == 0:
        raise Unusable
    if (templates < 0).all():
        templates[0, 0] = 0
    columns = templates[templates >= 0].unique().tolist()
    return data.draw(st.integers(0, inputs["ref_sites"].shape[0] - 1)), data.draw(st.sampled_from(columns))


def site_after_the_first(inputs, data):
    """(site,) of switch_cm past entry 0 (which is not used: no site before the first)."""
    M = inputs["switch_cm"].shape[0]
    if M < 2:
        raise Unusable
    return (data.draw(st.integers(1, M - 1)),)


def overlapping_rows(t):
    """A view of t's values whose consecutive rows overlap (row stride H - 1)."""
    return t.contiguous().as_strided(t.shape, (max(t.shape[1] - 1, 0), 1))


COPY_POSTERIOR_CHANGES = [
    Change("none", lambda inputs, data: None, True),
    *[relaid(name, layout) for name in ("query", "templates", "switch_cm") for layout in LAYOUTS],
    relaid("ref_sites", "offset"),
    # ref_sites needs unit stride along haplotypes and a row stride >= H; one row or column has no such stride
    relaid("ref_sites", "stepped", valid=lambda inputs: inputs["ref_sites"].shape[1] <= 1),
    relaid("ref_sites", "transposed", valid=lambda inputs: min(inputs["ref_sites"].shape) <= 1),
    Change("ref_sites rows overlapping", lambda inputs, data: inputs.update(ref_sites=overlapping_rows(inputs["ref_sites"])),
           valid=lambda inputs: inputs["ref_sites"].shape[0] <= 1 or inputs["ref_sites"].shape[1] == 0),
    bad_value("templates", lambda inputs: [inputs["ref_sites"].shape[1], -2, 2**40, -(2**40)]),
    bad_value("query", lambda inputs: [3, 255]),
    bad_value("ref_sites", lambda inputs: [2, 255], where=selected_site_column),
    bad_value("switch_cm", lambda inputs: [-0.5, math.nan, -math.inf], where=site_after_the_first),
    retyped("query", torch.int64), retyped("templates", torch.int32), retyped("ref_sites", torch.int64),
    retyped("switch_cm", torch.float16),
    *[retyped(name, torch.float16) for name in ("log_rho", "logit_theta")],
    *[reshaped(name, "1-D", lambda t: t.reshape(1)) for name in ("log_rho", "logit_theta")],
    reshaped("query", "1-D", lambda t: t.reshape(-1)), reshaped("templates", "one query more", lambda t: torch.cat([t, t.new_zeros(1, t.shape[1])])),
    reshaped("ref_sites", "one site more", lambda t: torch.cat([t, t.new_zeros(1, t.shape[1])])),
    reshaped("switch_cm", "one site more", lambda t: torch.cat([t, t.new_zeros(1)])),
]


def copy_posterior_reference_any(**inputs):
    """The reference, and all zeros for an empty output (which the reference's loops cannot make)."""
    shape = (inputs["query"].shape[0], inputs["query"].shape[1], inputs["templates"].shape[1])
    return copy_posterior_reference(**inputs) if math.prod(shape) else torch.zeros(shape, dtype=torch.float64)


def fuzz_copy_posterior(n):
    run("copy_posterior", ops.copy_posterior, copy_posterior_reference_any, copy_posterior_inputs,
        COPY_POSTERIOR_CHANGES, ("log_rho", "logit_theta"), n)


if __name__ == "__main__":
    op, examples = sys.argv[1], int(sys.argv[2])
    {"window_embed": fuzz_window_embed, "rag_fusion": fuzz_rag_fusion, "copy_posterior": fuzz_copy_posterior}[op](examples)
