"""The copying posterior: which reference haplotype each query copies, site by site.

A query haplotype is modelled, as in Li & Stephens (2003) and in Beagle and
Minimac, as a mosaic of reference haplotypes ("templates"): a hidden Markov
model over the observed sites of a context, whose state at site m is the
template copied there. ``ops.copy_posterior`` (a fused op, linear in sites and
templates) returns the posterior P(copy template k at observed site m)
[N, M, K]. Its two rates are learned with the rest of the model
(:class:`CopyingRates`): the switch rate per cM (Beagle's 0.04 * Ne / K) and
the mismatch probability.

From the posterior, for the L sites of one window (:func:`window_features`):
- the HMM's ALT probability at every site: the posterior interpolated linearly
  in cM between the flanking observed sites (as Beagle and Minimac do), times
  the templates' alleles there;
- how concentrated the posterior is (its largest value and its entropy);
- the ``k`` templates with the most posterior mass over the window and the log
  of their interpolated posterior at each site: the neighbours that
  ``rag_fusion`` fuses and the bias of its softmax.

Templates are every reference haplotype (the default, and the most accurate
for panels of a few thousand haplotypes) or, for larger panels, the ``K``
chosen by :func:`select_templates`: the union of each short stretch of
observed sites' nearest references, so that a template is right near some
site rather than on average over the context.

Context geometry (which observed sites, their cM gaps, the interpolation of a
window's sites between them) is numpy, built per batch by :class:`Context`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from . import ops
from .config import CopyConfig

SELECTION_SITES = 32           # observed sites per stretch of the template selection
SWITCH_RATE_PER_NE = 0.04      # Beagle: P(switch) = 1 - exp(-0.04 * Ne * cM / templates)
POSTERIOR_FLOOR = 1e-9         # the log-posterior bias never goes below log(1e-9)
LOGIT_CLAMP = 1e-6             # the HMM's probabilities are clamped to [1e-6, 1 - 1e-6] for logits


class WindowInterpolation(NamedTuple):
    """Where the L sites of a window fall between the context's observed sites.

    left, right: int64 [L] indices into the observed sites, relative to ``first``;
    weight: float32 [L] weight of ``right`` (0 at an observed site, before the
    first or after the last); first, last: the observed sites the window needs.
    """
    left: torch.Tensor
    right: torch.Tensor
    weight: torch.Tensor
    first: int
    last: int


class Context:
    """The observed sites of a context and the cM between them.

    sites: int64 [M] panel indices of the observed sites (sorted, M >= 1);
    cm: float64 [S] genetic position of every panel site.
    """

    def __init__(self, sites: np.ndarray, cm: np.ndarray):
        self.sites = np.asarray(sites, dtype=np.int64)
        self.cm = cm
        gaps = np.diff(cm[self.sites], prepend=cm[self.sites[0]])                   # [M]
        self.switch_cm = torch.from_numpy(np.maximum(gaps, 0).astype(np.float32))

    def interpolation(self, start: int, end: int) -> WindowInterpolation:
        """The interpolation of window sites [start, end) between observed sites."""
        window_sites = np.arange(start, end)
        left = np.searchsorted(self.sites, window_sites, side="right") - 1         # [L], -1 before the first
        right = np.minimum(left + 1, len(self.sites) - 1)
        left = np.maximum(left, 0)
        span = self.cm[self.sites[right]] - self.cm[self.sites[left]]
        between = (span > 0) & (window_sites > self.sites[left])
        weight = np.where(between, (self.cm[window_sites] - self.cm[self.sites[left]]) / np.where(between, span, 1), 0)
        first, last = int(left.min()), int(right.max())
        return WindowInterpolation(torch.from_numpy(left - first), torch.from_numpy(right - first),
                                   torch.from_numpy(weight.astype(np.float32)), first, last)


class CopyFeatures(NamedTuple):
    """What the copying posterior tells the model about one window of N query haplotypes.

    alt_prob float [N, L]: the HMM's P(ALT); sides float [N, L, 2]: P(ALT) from
    the posterior at the observed site on the left and on the right alone
    (they differ where the copied template likely switches between them);
    concentration float [N, L, 2]: the largest posterior and the entropy /
    log(templates), interpolated; ids int64 [N, k]: the
    fused templates (rows of the reference panel, -1 none); mass float [N, k]:
    their share of the posterior over the window; bias float [N, L, k]: the log
    of their interpolated posterior at each site.
    """
    alt_prob: torch.Tensor
    sides: torch.Tensor
    concentration: torch.Tensor
    ids: torch.Tensor
    mass: torch.Tensor
    bias: torch.Tensor


class CopyingRates(nn.Module):
    """The HMM's two learned rates, and the op that uses them."""

    def __init__(self, config: CopyConfig):
        super().__init__()
        self.log_ne = nn.Parameter(torch.tensor(math.log(config.ne)), requires_grad=config.learn_rates)
        self.logit_mismatch = nn.Parameter(torch.tensor(math.log(config.mismatch / (1 - config.mismatch))),
                                           requires_grad=config.learn_rates)

    def forward(self, query: torch.Tensor, templates: torch.Tensor, ref_sites: torch.Tensor,
                switch_cm: torch.Tensor) -> torch.Tensor:
        """Posterior float32 [N, M, K] of query uint8 [N, M] copying templates int64 [N, K]
        (rows of ref_sites' haplotype axis, -1 none); ref_sites uint8 [M, H]; switch_cm float32 [M]."""
        log_rho = math.log(SWITCH_RATE_PER_NE) + self.log_ne - math.log(max(templates.shape[1], 1))
        return ops.copy_posterior(query, templates, ref_sites, switch_cm.to(query.device), log_rho.float(),
                                  self.logit_mismatch.float())

    def describe(self) -> str:
        return (f"Ne {math.exp(self.log_ne.item()):,.0f}, "
                f"mismatch {torch.sigmoid(self.logit_mismatch.detach()).item():.2e}")


def window_features(post: torch.Tensor, templates: torch.Tensor, window_alleles: torch.Tensor,
                    interp: WindowInterpolation, k: int) -> CopyFeatures:
    """The copy features of one window (see :class:`CopyFeatures`).

    post float [N, M, K] (copy_posterior over the context); templates int64
    [N, K]: rows of the reference panel, -1 none; with K = H they must be the
    rows in order (-1 where excluded), as ReferencePanel.templates gives;
    window_alleles uint8 [H, L]: every reference haplotype's alleles at the
    window's sites; k: templates to fuse.
    """
    N, _, K = post.shape
    L = window_alleles.shape[1]
    post = post[:, interp.first:interp.last + 1]                               # [N, Mw, K]
    left, right, weight = (t.to(post.device) for t in interp[:3])
    alt_at = _alt_given_copy(post, templates, window_alleles)                  # [N, Mw, L]
    sites = torch.arange(L, device=post.device)
    sides = torch.stack([alt_at[:, left, sites], alt_at[:, right, sites]], -1)        # [N, L, 2]
    alt_prob = (1 - weight) * sides[..., 0] + weight * sides[..., 1]                   # [N, L]
    largest = post.max(-1).values                                              # [N, Mw]
    entropy = -(post * torch.log(post.clamp_min(POSTERIOR_FLOOR))).sum(-1) / math.log(max(K, 2))
    concentration = torch.stack([_lerp(largest, left, right, weight), _lerp(entropy, left, right, weight)], -1)
    mass, top = post.sum(1).topk(min(k, K), dim=-1)                           # [N, k]
    top_post = post.gather(2, top[:, None, :].expand(-1, post.shape[1], -1))  # [N, Mw, k]
    bias = torch.log(((1 - weight)[:, None] * top_post[:, left] + weight[:, None] * top_post[:, right])
                     .clamp_min(POSTERIOR_FLOOR))                              # [N, L, k]
    mass = mass / mass.sum(-1, keepdim=True).clamp_min(POSTERIOR_FLOOR)
    return CopyFeatures(alt_prob.clamp(0, 1), sides.clamp(0, 1), concentration, templates.gather(1, top), mass, bias)


def _alt_given_copy(post: torch.Tensor, templates: torch.Tensor, window_alleles: torch.Tensor) -> torch.Tensor:
    """[N, Mw, L]: P(ALT at window site l | the posterior at observed site m).
    When the templates are the reference rows in order (-1 where excluded, with
    posterior 0) one matmul with the shared alleles does; else a gather per query."""
    H = window_alleles.shape[0]
    if templates.shape[1] == H:
        return post @ window_alleles.to(post.dtype)                            # [N, Mw, H] @ [H, L]
    return torch.bmm(post, window_alleles[templates.clamp(min=0)].to(post.dtype))   # [N, K, L] per query


def select_templates(query: torch.Tensor, ref_sites: torch.Tensor, candidates: torch.Tensor,
                     n_templates: int) -> torch.Tensor:
    """int64 [N, n_templates]: for each query, the references that are nearest
    (fewest mismatching observed alleles) over the most stretches of
    SELECTION_SITES observed sites (stretches overlap by half; ties broken by the
    total mismatches). query uint8 [N, M] (MASK = missing); ref_sites uint8
    [M, H]; candidates int64 [N, H] (-1: not allowed, e.g. the query's own sample)."""
    N, M = query.shape
    H = ref_sites.shape[1]
    ref_alt = ref_sites.float()                                                # [M, H]
    query_alt, query_ref = (query == 1).float(), (query == 0).float()          # [N, M]
    per_stretch = max(1, -(-2 * n_templates * SELECTION_SITES // max(M, 1)))  # nearest kept per stretch
    votes = torch.zeros(N, H, device=query.device)
    total = torch.zeros(N, H, device=query.device)
    for first in range(0, max(M - SELECTION_SITES // 2, 1), SELECTION_SITES // 2):
        rows = slice(first, min(M, first + SELECTION_SITES))
        mismatches = query_alt[:, rows] @ (1 - ref_alt[rows]) + query_ref[:, rows] @ ref_alt[rows]   # [N, H]
        mismatches = mismatches.masked_fill(candidates < 0, float("inf"))
        nearest = mismatches.topk(min(per_stretch, H), dim=-1, largest=False).indices
        votes.scatter_add_(1, nearest, torch.ones_like(nearest, dtype=votes.dtype))
        total += mismatches.nan_to_num(posinf=M)
    score = votes - total / (M * H + 1.0)                                      # votes first, then fewer mismatches
    score = score.masked_fill(candidates < 0, -float("inf"))
    chosen = score.topk(min(n_templates, H), dim=-1).indices                   # [N, K]
    return candidates.gather(1, chosen)


def _lerp(values: torch.Tensor, left: torch.Tensor, right: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[N, Mw] values at observed sites -> [N, L] at the window's sites."""
    return (1 - weight) * values[:, left] + weight * values[:, right]


def hmm_logit(alt_prob: torch.Tensor) -> torch.Tensor:
    """The logit of the HMM's P(ALT), clamped away from 0 and 1."""
    return torch.logit(alt_prob.clamp(LOGIT_CLAMP, 1 - LOGIT_CLAMP))
