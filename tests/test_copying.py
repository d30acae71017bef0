"""The copying stage's geometry and read-outs, against hand-computed cases and brute force."""
import math

import numpy as np
import pytest
import torch

from embrag_ext.copying import Context, select_templates, window_features
from embrag_ext.tokens import MASK


def test_interpolation_between_observed_sites_is_linear_in_cm():
    cm = np.array([0.0, 1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 13])      # site 7..8 wider apart
    context = Context(np.array([2, 5, 9]), cm)
    assert context.switch_cm.tolist() == [0.0, 3.0, 6.0]
    interp = context.interpolation(0, 12)
    assert (interp.first, interp.last) == (0, 2)
    left, right, weight = interp.left.tolist(), interp.right.tolist(), interp.weight.tolist()
    assert left == [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2] and right == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2]
    # before the first observed site and at observed sites: weight 0; between: cM fraction
    np.testing.assert_allclose(weight, [0, 0, 0, 1 / 3, 2 / 3, 0, 1 / 6, 3 / 6, 5 / 6, 0, 0, 0])
    inner = context.interpolation(6, 8)
    assert (inner.first, inner.last) == (1, 2) and inner.left.tolist() == [0, 0]


def brute_force(post, templates, alleles, interp, k):
    """Per (n, l): the interpolated posterior over templates, written out."""
    N, _, K = post.shape
    L = alleles.shape[1]
    left, right, weight = (interp.left + interp.first).numpy(), (interp.right + interp.first).numpy(), interp.weight.numpy()
    alt, largest = np.zeros((N, L)), np.zeros((N, L))
    for n in range(N):
        for l in range(L):
            p = (1 - weight[l]) * post[n, left[l]] + weight[l] * post[n, right[l]]
            alt[n, l] = sum(p[j] * alleles[templates[n, j], l] for j in range(K) if templates[n, j] >= 0)
            largest[n, l] = (1 - weight[l]) * post[n, left[l]].max() + weight[l] * post[n, right[l]].max()
    mass = post[:, interp.first:interp.last + 1].sum(1)
    top = np.argsort(-mass, axis=1, kind="stable")[:, :k]
    return alt, largest, top


@pytest.mark.parametrize("K", [7, 9], ids=["selected templates", "every reference row"])
def test_window_features_match_brute_force(K):
    rng = np.random.default_rng(0)
    N, M, H, L = 3, 6, 9, 10
    post = rng.random((N, M, K))
    templates = (rng.permutation(H)[:K] if K < H else np.arange(H))[None].repeat(N, 0)
    templates[1, 2] = -1
    post[1, :, 2] = 0                                         # an invalid template has no posterior
    post /= post.sum(-1, keepdims=True)
    alleles = (rng.random((H, L)) < 0.4).astype(np.uint8)
    cm = np.cumsum(rng.random(20))
    context = Context(np.array([1, 4, 5, 9, 12, 15]), cm)
    interp = context.interpolation(3, 3 + L)
    features = window_features(torch.tensor(post), torch.tensor(templates), torch.tensor(alleles), interp, k=4)
    alt, largest, top = brute_force(post, templates, alleles, interp, 4)
    np.testing.assert_allclose(features.alt_prob.numpy(), alt, atol=1e-12)
    w = interp.weight.numpy()
    np.testing.assert_allclose((1 - w) * features.sides[..., 0].numpy() + w * features.sides[..., 1].numpy(), alt,
                               atol=1e-12)
    np.testing.assert_allclose(features.concentration[..., 0].numpy(), largest, atol=1e-12)
    assert features.ids.tolist() == np.take_along_axis(templates, top, 1).tolist()
    chosen = np.take_along_axis(templates, top, 1)
    n, l, j = 2, 4, 1
    left, right, w = int(interp.left[l] + interp.first), int(interp.right[l] + interp.first), float(interp.weight[l])
    expected = math.log((1 - w) * post[n, left, top[n, j]] + w * post[n, right, top[n, j]])
    assert features.bias[n, l, j].item() == pytest.approx(expected)
    assert (chosen >= 0).all() and torch.allclose(features.mass.sum(-1), torch.ones(N, dtype=torch.float64))


def test_template_selection_keeps_the_nearest_and_never_an_excluded_one():
    rng = np.random.default_rng(1)
    M, H = 96, 50
    ref = (rng.random((M, H)) < 0.5).astype(np.uint8)
    query = ref[:, [7, 20]].T.copy()                         # query 0 copies ref 7, query 1 copies ref 20
    query[1, :48] = ref[:48, 33]                              # ... except its first half, which copies 33
    query[0, ::5] = MASK
    candidates = torch.arange(H).repeat(2, 1)
    candidates[0, 7] = -1                                     # ref 7 is query 0's own sample: excluded
    chosen = select_templates(torch.tensor(query), torch.tensor(ref), candidates, 5)
    assert chosen.shape == (2, 5)
    assert 7 not in chosen[0].tolist()
    assert {20, 33} <= set(chosen[1].tolist())
