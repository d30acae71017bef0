"""Learned retrieval keys (the seed's Phase 3): a similarity trained with hard
negatives, used wherever references are retrieved.

Why. Today's keys (retrieval.py, ``--keys l2``) are the flattened embeddings of
a haplotype's observed sites; the embedding is a sum, so the L2 distance of two
keys is a (distance-weighted) count of mismatching observed sites, and a
refresh only rescales it: refreshing never reorders neighbours. Here the
similarity itself is learned, so a refresh matters.

The key of a haplotype over a *focus* (a window, or a stretch of observed
sites when choosing copying templates) is a vector of ``2 * R`` numbers
(``R = sites_per_side``, default 48: 96 dims; at an array of 1 site in 20
that covers the L2 keys' flanks, 768 sites a side, where R = 24 left the
learned keys fewer sites than the L2 keys and measurably worse neighbours,
benchmarks/bench_keys.py): one slot per observed site
among the R nearest on each side of the focus's centre (slot by signed rank,
so the same slot means "the i-th observed site left of the centre" whatever
the array's density), holding a learned value of the allele there:

    value(site l, allele t) = s(t) * sqrt(w_l) / 2,   s(REF) = -1, s(ALT) = +1, s(MASK) = 0
    log w_l = -d_l / decay + mlp(features of site l)

with d_l the sites between l and the focus, and the features the site's allele
frequency and distance. So two keys start out as today's L2 keys over the 2R
nearest observed sites (``mlp`` starts at zero): a decay-weighted count of
mismatches, in ``2R`` dims instead of ``n_obs * D``. A residual MLP on the
slots (also starting at zero) makes the similarity non-linear in the
mismatches, and a learned scale per slot weighs sites by their rank from the
centre. A missing query allele (MASK) sits at the midpoint, equally far from
REF and ALT, as in retrieval.py. Nothing shifts every key alike (no bias on the
last layer): distances could not see it, so its gradient would be rounding
noise, which Adam would turn into steps of full size.

Training (:meth:`LearnedKeys.loss`, added to the training loss): for each query
haplotype of a batch and a focus, the *positives* are the references that agree
best with the query on the focus's masked sites (known in training), the *hard
negatives* the references that the current index ranks high but that disagree
more there (mined from the index: :func:`mine`). An InfoNCE loss (several
positives) over -squared distance pulls positives in and pushes the negatives out.

Index and refresh. The index is built on the keys of a *snapshot* of the
encoder. Option B (``--refresh epoch`` or N steps) copies the live encoder into
the snapshot at each refresh, so the index follows the learned similarity;
queries are keyed by the same snapshot (a live query encoder that drifted
since the last refresh no longer matches the index: measured, it lost a tenth
of the rare ALT alleles the neighbours carry), and the loss keys both sides
with the live encoder (gradient through both). Option A (``--refresh fixed``)
keeps the snapshot of the initial encoding for the references: only the query
side learns, against those fixed keys, and queries are keyed live.

Where it is used: FAISS neighbours (``--copying off``: the Retriever's keys,
:meth:`LearnedKeys.retriever_keys`) and the choice of copying templates for
large panels (``--templates K``: :meth:`LearnedKeys.select`, in place of
copying.select_templates, with the same stretches and votes).

The encoder reads the panel's allele frequencies and site distances, not the
imputation model's embedding: stretches of template selection cross windows,
whose position tables differ, and the keys must not move when the model does.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .config import RetrievalConfig
from .masking import rng_for
from .tokens import ALT, MASK, REF

N_SITE_FEATURES = 7
POSITIVES = 8                  # most positives per query (the best-agreeing references)
SELECTION_SITES = 32           # observed sites per stretch of template selection (as copying.py)
STRETCHES_PER_BATCH = 4        # foci per training batch when keys choose templates
INF = float("inf")


def site_distance(sites: np.ndarray, focus: Tuple[int, int]) -> np.ndarray:
    """int64 [n]: sites between each site and the focus [start, end) (0 inside)."""
    start, end = focus
    return np.maximum(np.maximum(start - sites, sites - (end - 1)), 0)


def slots(sites: np.ndarray, focus: Tuple[int, int], per_side: int) -> np.ndarray:
    """int64 [n]: the key slot of each (sorted) observed site: ``per_side - 1 - i`` for
    the i-th nearest left of the focus's centre, ``per_side + i`` for the i-th at or
    right of it; -1 for sites beyond the ``per_side`` nearest on their side."""
    sites = np.asarray(sites, dtype=np.int64)
    centre = (focus[0] + focus[1] - 1) / 2.0
    split = int(np.searchsorted(sites, centre, side="left"))     # sites[:split] < centre
    out = np.full(len(sites), -1, dtype=np.int64)
    left = np.arange(split)[::-1][:per_side]                     # nearest first
    out[left] = per_side - 1 - np.arange(len(left))
    right = np.arange(split, len(sites))[:per_side]
    out[right] = per_side + np.arange(len(right))
    return out


class KeyEncoder(nn.Module):
    """The learned key of a haplotype's observed alleles around a focus (see module doc)."""

    def __init__(self, sites_per_side: int = 48, decay: float = 128.0, hidden: int = 32):
        super().__init__()
        self.per_side = sites_per_side
        self.decay = decay
        self.site_mlp = nn.Sequential(nn.Linear(N_SITE_FEATURES, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                      nn.GELU(), nn.Linear(hidden, 1))
        self.post = nn.Sequential(nn.Linear(self.dim, hidden), nn.GELU(), nn.Linear(hidden, self.dim, bias=False))
        self.slot_scale = nn.Parameter(torch.zeros(self.dim))   # log-scale per slot (rank from the centre)
        nn.init.zeros_(self.site_mlp[-1].weight)                   # start as the decay-weighted L2 keys
        nn.init.zeros_(self.site_mlp[-1].bias)
        nn.init.zeros_(self.post[-1].weight)

    @property
    def dim(self) -> int:
        return 2 * self.per_side

    def site_values(self, af: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        """float32 [n, 3]: the value of REF, ALT and MASK at n sites (af, distance float [n])."""
        af = af.float().clamp(1e-4, 1 - 1e-4)
        d = distance.float()
        maf = torch.minimum(af, 1 - af)
        features = torch.stack([torch.logit(af) / 8, 4 * maf, torch.log1p(d) / 6, torch.exp(-d / 16),
                                torch.exp(-d / 128), torch.exp(-d / 512), (d == 0).float()], -1)
        log_w = self.site_mlp(features)[:, 0] - (d / self.decay if self.decay > 0 else 0 * d)
        half = 0.5 * torch.exp(0.5 * log_w)
        return torch.stack([-half, half, torch.zeros_like(half)], -1)

    def keys(self, values: torch.Tensor, slot: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """float32 [Q, 2R]: keys of Q haplotypes from the site values [n, 3], slots int64 [n]
        (-1: not in the key) and alleles int64 [Q, n] (REF, ALT or MASK)."""
        keep = slot >= 0
        values, slot, tokens = values[keep], slot[keep], tokens[:, keep].long().clamp(0, MASK)
        per_site = values.gather(1, tokens.t()).t()                           # [Q, n]
        slotted = per_site.new_zeros(len(tokens), self.dim)
        slotted[:, slot] = per_site
        slotted = slotted * torch.exp(self.slot_scale)
        return slotted + self.post(slotted)


class LearnedKeys:
    """A trained :class:`KeyEncoder` (live) and the snapshot the index is built on.

    af: float [S] the panel's ALT frequencies; windows: int64 [W, 2]; device: where keys are computed.
    """

    def __init__(self, config: RetrievalConfig, af: np.ndarray, windows: np.ndarray, device: torch.device):
        self.config = config
        self.af = torch.as_tensor(np.asarray(af, dtype=np.float32), device=device)
        self.windows = np.asarray(windows, dtype=np.int64)
        self.device = device
        self.encoder = KeyEncoder(config.key_sites, config.key_decay).to(device)
        self.snapshot = copy.deepcopy(self.encoder).requires_grad_(False)
        self.fixed = config.refresh_every is None           # option A: snapshot of the initial encoder
        self.refreshes = 0
        self.last_mined: Dict[str, float] = {}

    # ---- index side: refresh, retriever keys, state ----
    def refresh(self) -> float:
        """Copy the live encoder into the snapshot (option A: only the first time). Seconds taken."""
        began = time.perf_counter()
        if not (self.fixed and self.refreshes > 0):
            self.snapshot.load_state_dict(self.encoder.state_dict())
        self.refreshes += 1
        return time.perf_counter() - began

    def window_encoder(self, key_ranges: np.ndarray) -> Callable[[int], torch.Tensor]:
        """encode(window) -> the snapshot's values [3, Lk] of the window's key-range sites
        (what Retriever.refresh stores for learned keys)."""
        def encode(window: int) -> torch.Tensor:
            start, end = (int(x) for x in key_ranges[window])
            sites = np.arange(start, end)
            return self._values(self.snapshot, sites, tuple(self.windows[window])).t()
        return encode

    @property
    def query_encoder(self) -> KeyEncoder:
        """Option A: the live encoder (it learns against fixed reference keys); B: the snapshot."""
        return self.encoder if self.fixed else self.snapshot

    def retriever_keys(self, key_ranges: np.ndarray) -> "RetrieverKeys":
        return RetrieverKeys(self, key_ranges)

    def state_dict(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "snapshot": self.snapshot.state_dict(),
                "refreshes": self.refreshes}

    def load_state_dict(self, state: dict) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.snapshot.load_state_dict(state["snapshot"])
        self.refreshes = state["refreshes"]

    def parameters(self):
        return self.encoder.parameters()

    def _values(self, encoder: KeyEncoder, sites: np.ndarray, focus: Tuple[int, int]) -> torch.Tensor:
        distance = torch.from_numpy(site_distance(sites, focus)).to(self.device)
        return encoder.site_values(self.af[torch.from_numpy(np.asarray(sites)).to(self.device)], distance)

    def _slots(self, sites: np.ndarray, focus: Tuple[int, int]) -> torch.Tensor:
        return torch.from_numpy(slots(sites, focus, self.encoder.per_side)).to(self.device)

    # ---- template selection (copying, --templates K) ----
    @torch.no_grad()
    def select(self, query: torch.Tensor, ref_sites: torch.Tensor, candidates: torch.Tensor, n_templates: int,
               sites: np.ndarray) -> torch.Tensor:
        """int64 [N, n_templates]: copying.select_templates with learned keys. For each
        stretch of SELECTION_SITES observed sites (half overlapping) the references
        nearest in key space (the snapshot's reference keys, :attr:`query_encoder`'s
        query keys) get a vote; most votes win, ties by the summed distance.
        query uint8 [N, M]; ref_sites uint8 [M, H]; candidates int64 [N, H] (-1 not
        allowed); sites int64 [M] the context's observed panel sites."""
        N, M = query.shape
        H = ref_sites.shape[1]
        per_stretch = max(1, -(-2 * n_templates * SELECTION_SITES // max(M, 1)))
        votes = torch.zeros(N, H, device=query.device)
        total = torch.zeros(N, H, device=query.device)
        refs = ref_sites.t()                                                    # [H, M]
        for focus in stretch_foci(sites):
            distance = self._distances(sites, focus, query, refs)                     # [N, H]
            distance = distance.masked_fill(candidates < 0, INF)
            nearest = distance.topk(min(per_stretch, H), dim=-1, largest=False).indices
            votes.scatter_add_(1, nearest, torch.ones_like(nearest, dtype=votes.dtype))
            total += distance.nan_to_num(posinf=0.0)
        score = votes - total / (total.max() * H + 1.0)
        score = score.masked_fill(candidates < 0, -INF)
        chosen = score.topk(min(n_templates, H), dim=-1).indices
        return candidates.gather(1, chosen)

    def _distances(self, sites: np.ndarray, focus: Tuple[int, int], query: torch.Tensor,
                   refs: torch.Tensor) -> torch.Tensor:
        """float32 [N, H] squared distances of the index over ``focus``."""
        slot = self._slots(sites, focus)
        q = self.query_encoder.keys(self._values(self.query_encoder, sites, focus), slot, query)
        r = self.snapshot.keys(self._values(self.snapshot, sites, focus), slot, refs)
        return torch.cdist(q, r).square()

    # ---- training ----
    def loss(self, batch: Dict[str, torch.Tensor], windows: Sequence[int], reference,
             key_ranges: Optional[np.ndarray], n_queries: Optional[int] = None) -> torch.Tensor:
        """The contrastive loss of a batch: the sum over its query haplotypes and foci
        of :func:`info_nce`, divided by foci x ``n_queries`` (default the batch's query
        haplotypes; a rank's share of a batch divides by the whole batch's). Foci: the span's windows over their key ranges (FAISS
        neighbours: ``key_ranges`` given), else up to STRETCHES_PER_BATCH stretches of
        observed sites inside the span (template selection). ``reference``: the
        ReferencePanel (predict.py)."""
        sites = batch["context_sites"].numpy()
        start = int(batch["start"])
        span_end = start + batch["haplotypes"].shape[-1]
        N = batch["tokens"].shape[0] * 2
        query_sample = batch["sample"].repeat_interleave(2).to(self.device)
        allowed = reference.templates(query_sample) >= 0                        # [N, H]
        context = batch["context_tokens"].reshape(N, -1).to(self.device)        # [N, M]
        truth = batch["haplotypes"].reshape(N, -1).to(self.device)              # [N, Ls]
        observed = batch["observed"].to(self.device)                            # [Ls]
        if key_ranges is not None:
            foci = [(tuple(int(x) for x in self.windows[w]), tuple(int(x) for x in key_ranges[w])) for w in windows]
        else:          # stretches that overlap the span, scored on their masked sites inside it
            overlapping = [f for f in stretch_foci(sites) if f[0] < span_end and f[1] > start]
            rng = rng_for(start, len(sites), int(sites[len(sites) // 2]))
            picked = sorted(rng.choice(len(overlapping), min(STRETCHES_PER_BATCH, len(overlapping)), replace=False))
            foci = [(overlapping[i], (int(sites[0]), int(sites[-1]) + 1)) for i in picked]
        # every parameter in the graph, with or without a focus (backward and DDP need it)
        total = sum(0.0 * p.sum() for p in self.encoder.parameters())
        stats = []
        for focus, (low, high) in foci:
            keep = (sites >= low) & (sites < high)
            keep_t = torch.from_numpy(keep).to(self.device)
            first, last = max(focus[0], start), min(focus[1], span_end)            # the focus's sites in the span
            hidden = ~observed[first - start:last - start]                         # [h]
            if not bool(hidden.any()):
                continue
            q_truth = truth[:, first - start:last - start][:, hidden]              # [N, h]
            ref_hidden = reference.haplotype_window(first, last)[:, hidden]        # [H, h]
            ref_obs = reference.haplotype_sites(torch.from_numpy(sites[keep]).to(self.device))   # [H, n]
            loss, stat = self.focus_loss(sites[keep], focus, context[:, keep_t], q_truth, ref_obs, ref_hidden,
                                         allowed)
            total = total + loss
            stats.append(stat)
        if stats:
            self.last_mined = {key: float(np.mean([s[key] for s in stats])) for key in stats[0]}
        return total / ((n_queries if n_queries is not None else N) * max(len(foci), 1))

    def focus_loss(self, sites: np.ndarray, focus: Tuple[int, int], query: torch.Tensor, query_hidden: torch.Tensor,
                   ref_obs: torch.Tensor, ref_hidden: torch.Tensor, allowed: torch.Tensor
                   ) -> Tuple[torch.Tensor, Dict[str, float]]:
        """(summed InfoNCE over the N queries, stats) for one focus. query int [N, n] alleles at
        the observed sites ``sites``; query_hidden [N, h] true alleles at the focus's masked
        sites (MASK: unknown); ref_obs / ref_hidden uint8 [H, n] / [H, h]; allowed bool [N, H]."""
        slot = self._slots(sites, focus)
        live_values = self.encoder.site_values(self.af[torch.from_numpy(sites).to(self.device)],
                                               torch.from_numpy(site_distance(sites, focus)).to(self.device))
        q_keys = self.encoder.keys(live_values, slot, query)                               # [N, d]
        with torch.no_grad():                 # what the index retrieves now: the mined negatives come from it
            index_keys = self.snapshot.keys(self._values(self.snapshot, sites, focus), slot, ref_obs)   # [H, d]
            index_queries = q_keys if self.fixed else \
                self.snapshot.keys(self._values(self.snapshot, sites, focus), slot, query)
            index_distance = torch.cdist(index_queries.detach(), index_keys).square().masked_fill(~allowed, INF)
        positives, negatives = mine(index_distance, query_hidden, ref_hidden, allowed,
                                    self.config.key_negatives, POSITIVES)
        if self.fixed:                                                              # option A: fixed references
            ref_keys = index_keys
        else:
            ref_keys = self.encoder.keys(live_values, slot, ref_obs)                # [H, d], with gradient
        loss, valid = info_nce(q_keys, ref_keys, positives, negatives)
        stats = {"valid": float(valid.float().mean()), "negatives": float((negatives >= 0).sum(1).float().mean())}
        return loss, stats


def stretch_foci(sites: np.ndarray) -> List[Tuple[int, int]]:
    """The foci [start, end) of template selection: stretches of SELECTION_SITES observed sites,
    overlapping by half (copying.select_templates' stretches)."""
    M = len(sites)
    out = []
    for first in range(0, max(M - SELECTION_SITES // 2, 1), SELECTION_SITES // 2):
        last = min(M, first + SELECTION_SITES) - 1
        out.append((int(sites[first]), int(sites[last]) + 1))
    return out


@torch.no_grad()
def mine(index_distance: torch.Tensor, query_hidden: torch.Tensor, ref_hidden: torch.Tensor,
         allowed: torch.Tensor, n_negatives: int, n_positives: int = POSITIVES) -> Tuple[torch.Tensor, torch.Tensor]:
    """(positives int64 [N, P], hard negatives int64 [N, n_negatives]): rows of the panel, -1 = none.

    Positives: the allowed references with the fewest mismatches to the query's true
    alleles at the masked sites (all tied at that fewest; the index's nearest first).
    Hard negatives: among the index's 2 * n_negatives nearest allowed references, those
    that mismatch more than the fewest there (nearest first).
    index_distance float [N, H] (inf where not allowed); query_hidden [N, h] (MASK = unknown);
    ref_hidden [H, h]; allowed bool [N, H]."""
    known = (query_hidden != MASK).float()                                         # [N, h]
    q_alt = (query_hidden == ALT).float() * known
    q_ref = (query_hidden == REF).float() * known
    r_alt = (ref_hidden == ALT).float()
    mismatches = q_alt @ (1 - r_alt).t() + q_ref @ r_alt.t()                       # [N, H]
    mismatches = mismatches.masked_fill(~allowed, INF)
    best = mismatches.min(1, keepdim=True).values                                   # [N, 1]
    tie = (mismatches == best) & allowed & torch.isfinite(best)
    order = index_distance.masked_fill(~tie, INF)
    P = min(n_positives, index_distance.shape[1])
    pos_d, positives = order.topk(P, dim=1, largest=False)
    positives = torch.where(torch.isfinite(pos_d), positives, torch.full_like(positives, -1))
    searched = min(2 * n_negatives, index_distance.shape[1])
    near_d, near = index_distance.topk(searched, dim=1, largest=False)            # what the index retrieves
    worse = mismatches.gather(1, near) > best
    rank = torch.where(worse & torch.isfinite(near_d), torch.arange(searched, device=near.device)[None, :].float(),
                       torch.full_like(near_d, INF))
    take_d, take = rank.topk(min(n_negatives, searched), dim=1, largest=False)
    negatives = torch.where(torch.isfinite(take_d), near.gather(1, take), torch.full_like(take, -1))
    return positives, negatives


def info_nce(q_keys: torch.Tensor, ref_keys: torch.Tensor, positives: torch.Tensor,
             negatives: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sum over valid queries of -log sum_pos e^{-d} / sum_{pos+neg} e^{-d}, valid bool [N]);
    d = squared key distance; a query is valid with a positive and a negative."""
    candidates = torch.cat([positives, negatives], 1)                             # [N, P + G]
    present = candidates >= 0
    keys = ref_keys[candidates.clamp(min=0)]                                       # [N, C, d]
    logits = -(q_keys[:, None, :] - keys).square().sum(-1)                        # [N, C]
    is_pos = torch.zeros_like(present)
    is_pos[:, :positives.shape[1]] = True
    low = torch.finfo(logits.dtype).min
    pos = torch.logsumexp(logits.masked_fill(~(present & is_pos), low), 1)
    every = torch.logsumexp(logits.masked_fill(~present, low), 1)
    valid = (present & is_pos).any(1) & (present & ~is_pos).any(1)
    return torch.where(valid, every - pos, torch.zeros_like(pos)).sum(), valid


class RetrieverKeys:
    """What the Retriever asks of learned keys: reference keys from its stored tables
    (the snapshot's values [3, Lk] per window, retrieval.Retriever.encodings) and
    query keys from the live encoder."""

    def __init__(self, keys: LearnedKeys, key_ranges: np.ndarray):
        self.keys, self.key_ranges = keys, np.asarray(key_ranges, dtype=np.int64)

    def _focus_sites(self, window: int, sites: np.ndarray) -> Tuple[np.ndarray, Tuple[int, int]]:
        return self.key_ranges[window, 0] + np.asarray(sites, dtype=np.int64), tuple(self.keys.windows[window])

    @torch.no_grad()
    def reference(self, window: int, table: torch.Tensor, sites: np.ndarray, tokens: torch.Tensor) -> torch.Tensor:
        """float32 [R, 2R'] reference keys; table [3, Lk]; sites [n] key-range offsets; tokens [R, n]."""
        panel_sites, focus = self._focus_sites(window, sites)
        at = torch.from_numpy(np.asarray(sites, dtype=np.int64)).to(table.device)
        values = table.index_select(1, at).T.contiguous().to(self.keys.device)
        slot = self.keys._slots(panel_sites, focus)
        out = self.keys.snapshot.keys(values, slot, tokens.to(self.keys.device).long())
        return out.float().contiguous()

    @torch.no_grad()
    def query(self, window: int, sites: np.ndarray, tokens: torch.Tensor) -> torch.Tensor:
        """float32 [Q, 2R'] query keys (LearnedKeys.query_encoder); tokens int [Q, n] at key-range offsets."""
        panel_sites, focus = self._focus_sites(window, sites)
        encoder = self.keys.query_encoder
        values = self.keys._values(encoder, panel_sites, focus)
        slot = self.keys._slots(panel_sites, focus)
        out = encoder.keys(values, slot, tokens.to(self.keys.device).long())
        return out.float().contiguous()


def attach_learned_keys(config, af: np.ndarray, windows: np.ndarray, device: torch.device, predictor,
                        retriever=None, optimizer: Optional[torch.optim.Optimizer] = None) -> Optional[LearnedKeys]:
    """LearnedKeys for a RunConfig that asks for them (``--keys learned``) and
    retrieves (FAISS neighbours, or a choice of copying templates), wired into the
    predictor (template choice), the retriever (its keys) and the optimizer (a
    group of its own at the run's learning rate); None otherwise."""
    if config.retrieval.keys != "learned" or config.model.mode == "none":
        return None
    if config.copying.enabled and config.copying.templates == 0:
        return None          # every panel haplotype is a template: nothing to retrieve
    keys = LearnedKeys(config.retrieval, af, windows, device)
    if retriever is not None:
        retriever.keys = keys.retriever_keys(retriever.key_ranges)
    else:
        predictor.keys = keys
    if optimizer is not None:
        optimizer.add_param_group({"params": list(keys.parameters()), "base_lr": config.train.lr})
    return keys
