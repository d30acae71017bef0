"""The imputation model: embedding -> retrieval fusion -> transformer -> heads.

Per haplotype of a window (L sites, width D):
    h = window_embed(tokens, sites) + copy_proj(copy features)       [N, L, D]
    h = h + gate * out(fusion(h, retrieved neighbours))               (modes token, embedding)
    h = transformer blocks(h)                                         (run once)
    ALT logit = logit(HMM P(ALT)) + calibration(copy features, AF) + hap_head(h)
    genotype = log HMM prior + gt_head([h1, h2])

With the copying posterior (copying.py; on by default in the retrieval
modes), the neighbours are the templates the query copies most over the
window, their log-posterior biases the fusion's softmax, and two terms
correct the HMM's own prediction: a per-site calibration of the HMM from its
copy features and the site's allele frequency (where the HMM is over- or
under-confident), and the transformer's head (what the HMM cannot see). Both
start at zero, so an untrained model is the HMM. Without it (``copying.enabled = False``: the seed's design) the
neighbours come from FAISS and the heads predict on their own.

Three modes (seed names in brackets):
- ``none`` [V13]: no retrieval;
- ``token`` [V17]: the K retrieved reference haplotypes are re-encoded through
  the embedding and the transformer blocks every batch, then fused by a
  per-site cross-attention over the K (plain PyTorch);
- ``embedding`` (the new design): ``ops.rag_fusion`` rebuilds the neighbours'
  keys from the token table projected by W_k and their values from the token
  and site tables projected by W_v (the embedding is a sum, so this is exact;
  a key's site part would shift every score alike and cancel in the softmax)
  and attends per site over the K with a distance bias and a local-agreement
  bias. ``detach_reference`` (option A, ``--refresh fixed``) stops the
  gradient into the reference side.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .config import CopyConfig, ModelConfig
from .copying import CopyFeatures, CopyingRates, hmm_logit
from .tokens import MASK, VOCAB_SIZE

N_VARIANT_TYPES = 4
N_COPY_FEATURES = 6   # logit(p) / 8, p, p from the left / right observed site, largest posterior, entropy
N_CALIBRATION_INPUTS = N_COPY_FEATURES + 2   # and the site's logit(AF) / 8 and MAF


class Sites(NamedTuple):
    """Per-site inputs of one window: pos_ids int64 [L], af float32 [L], type_ids int64 [L];
    or of W windows of L sites stacked: af and type_ids [W, L] (pos_ids [L], the same
    offsets in every window). A model batch of W stacked windows holds its rows
    window-major: rows w * N .. (w + 1) * N - 1 are window w's N haplotypes."""
    pos_ids: torch.Tensor
    af: torch.Tensor
    type_ids: torch.Tensor

    @property
    def n_windows(self) -> int:
        return 1 if self.af.dim() == 1 else self.af.shape[0]

    def of_window(self, window: int) -> "Sites":
        return self if self.af.dim() == 1 else Sites(self.pos_ids, self.af[window], self.type_ids[window])

    @staticmethod
    def stack(windows: "list[Sites]") -> "Sites":
        return Sites(windows[0].pos_ids, torch.stack([w.af for w in windows]),
                     torch.stack([w.type_ids for w in windows]))


class Retrieved(NamedTuple):
    """Neighbours of N query haplotypes: ids int64 [N, K] rows of ref_tokens
    (-1 none), dist float32 [N, K], ref_tokens uint8 [H, L] (a window slice;
    [W, H, L] for W stacked windows, ids then rows of each window's slice),
    bias float32 [N, L, K] the copying posterior's log (None without copying)."""
    ids: torch.Tensor
    dist: torch.Tensor
    ref_tokens: torch.Tensor
    bias: Optional[torch.Tensor] = None


class Embedding(nn.Module):
    """token + position + AF Fourier features + variant type, through ops.window_embed."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        D = config.dim
        self.tok_table = nn.Parameter(torch.randn(VOCAB_SIZE, D) * 0.5)
        self.pos_table = nn.Parameter(torch.randn(config.max_window, D) * 0.02)
        self.af_proj = nn.Parameter(torch.randn(config.af_features, D) * 0.02)
        self.type_table = nn.Parameter(torch.randn(N_VARIANT_TYPES, D) * 0.02)

    def forward(self, tokens: torch.Tensor, sites: Sites) -> torch.Tensor:
        """tokens int64 [N, L] -> [N, L, D]. For W stacked windows (rows window-major) one
        window_embed call embeds every window: each haplotype's W windows laid end to end."""
        W = sites.n_windows
        if W == 1:
            return ops.window_embed(tokens, sites.pos_ids, sites.af, sites.type_ids, self.tok_table,
                                    self.pos_table, self.af_proj, self.type_table)
        L = tokens.shape[1]
        end_to_end = tokens.view(W, -1, L).transpose(0, 1).reshape(-1, W * L)          # [N / W, W * L]
        h = ops.window_embed(end_to_end, sites.pos_ids.repeat(W), sites.af.reshape(-1),
                             sites.type_ids.reshape(-1), self.tok_table, self.pos_table, self.af_proj,
                             self.type_table)                                          # [N / W, W * L, D]
        return h.view(-1, W, L, h.shape[-1]).transpose(0, 1).reshape(tokens.shape[0], L, -1)

    def site_part(self, sites: Sites) -> torch.Tensor:
        """[L, D]: the embedding without its token row (the same for every haplotype of a window)."""
        zeros = torch.zeros((1, len(sites.pos_ids)), dtype=torch.int64, device=sites.pos_ids.device)
        return self(zeros, sites)[0] - self.tok_table[0]

    def allele_encodings(self, sites: Sites) -> torch.Tensor:
        """[V, L, D]: the embedding of every allele token at every site (retrieval keys)."""
        L = len(sites.pos_ids)
        tokens = torch.arange(VOCAB_SIZE, device=sites.pos_ids.device)[:, None].expand(VOCAB_SIZE, L)
        return self(tokens.contiguous(), sites)


class Block(nn.Module):
    """Pre-norm transformer block: self-attention (SDPA) and an MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        N, L, D = h.shape
        qkv = self.qkv(self.norm1(h)).view(N, L, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                                 # [N, heads, L, dh] each
        attended = F.scaled_dot_product_attention(q, k, v)                    # [N, heads, L, dh]
        h = h + self.proj(attended.transpose(1, 2).reshape(N, L, D))
        return h + self.mlp(self.norm2(h))


class Fusion(nn.Module):
    """What both retrieval fusions share: projections, distance weight, gated residual."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        D, H = config.dim, config.heads
        self.heads = H
        self.w_q, self.w_k, self.w_v = (nn.Linear(D, D, bias=False) for _ in range(3))
        self.out = nn.Linear(D, D)
        self.gate = nn.Parameter(torch.zeros(D))
        self.beta = nn.Parameter(torch.full((H,), config.beta_init))
        self.gamma = nn.Parameter(torch.ones(H))   # weight of the copying posterior's log

    def residual(self, h: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        return h + torch.sigmoid(self.gate) * self.out(fused.to(h.dtype))


class EmbeddingFusion(Fusion):
    """ops.rag_fusion over neighbours rebuilt from the embedding tables."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.alpha = nn.Parameter(torch.full((config.heads,), config.alpha_init))
        self.half_width = config.half_width

    def forward(self, h: torch.Tensor, tokens: torch.Tensor, retrieved: Retrieved, embedding: Embedding,
                sites: Sites, detach_reference: bool) -> torch.Tensor:
        """h [N, L, D], tokens int64 [N, L] -> [N, L, D] (one op call per stacked window).
        The op gets all its floating inputs in one dtype: the autocast dtype under
        autocast (bf16, accumulated in float32 inside the op), else float32."""
        tok = embedding.tok_table.detach() if detach_reference else embedding.tok_table      # [V, D]
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
        w_k, w_v = self.w_k.weight.t(), self.w_v.weight.t()
        tok_k, tok_v = (tok @ w_k).to(dtype), (tok @ w_v).to(dtype)
        q = self.w_q(h).to(dtype)
        W = sites.n_windows
        fused = []
        for window, rows in enumerate(torch.arange(h.shape[0], device=h.device).chunk(W)):
            site = embedding.site_part(sites.of_window(window))                            # [L, D]
            site = site.detach() if detach_reference else site
            bias = None if retrieved.bias is None else retrieved.bias[rows].to(dtype)
            fused.append(ops.rag_fusion(
                q[rows], retrieved.ids[rows], retrieved.ref_tokens if W == 1 else retrieved.ref_tokens[window],
                tok_k, tok_v, (site @ w_v).to(dtype), retrieved.dist[rows].to(dtype), self.beta.to(dtype),
                tokens[rows], tokens[rows] != MASK, self.alpha.to(dtype), self.heads, self.half_width,
                copy_bias=bias, gamma=None if bias is None else self.gamma.to(dtype)))
        return self.residual(h, fused[0] if W == 1 else torch.cat(fused))


class TokenFusion(Fusion):
    """Cross-attention over K neighbours already encoded by the transformer [V17]."""

    def forward(self, h: torch.Tensor, encoded: torch.Tensor, retrieved: Retrieved) -> torch.Tensor:
        """h [N, L, D], encoded neighbours [N, K, L, D] -> [N, L, D]."""
        N, K, L, D = encoded.shape
        dh = D // self.heads
        q = self.w_q(h).view(N, L, self.heads, dh)
        k = self.w_k(encoded).view(N, K, L, self.heads, dh)
        v = self.w_v(encoded).view(N, K, L, self.heads, dh)
        scores = torch.einsum("nlhd,nklhd->nlhk", q, k) / math.sqrt(dh)
        scores = scores + self.beta[:, None] * retrieved.dist[:, None, None, :].to(scores.dtype)
        if retrieved.bias is not None:
            scores = scores + self.gamma[:, None] * retrieved.bias[:, :, None, :].to(scores.dtype)
        valid = (retrieved.ids >= 0)[:, None, None, :]                         # [N, 1, 1, K]
        p = torch.softmax(scores.masked_fill(~valid, torch.finfo(scores.dtype).min), -1) * valid
        return self.residual(h, torch.einsum("nlhk,nklhd->nlhd", p, v).reshape(N, L, D))


class ImputationModel(nn.Module):
    def __init__(self, config: ModelConfig, copying: CopyConfig):
        super().__init__()
        self.config = config
        self.embedding = Embedding(config)
        self.blocks = nn.ModuleList(Block(config.dim, config.heads) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        fusions = {"none": None, "token": TokenFusion, "embedding": EmbeddingFusion}
        self.fusion = fusions[config.mode](config) if fusions[config.mode] else None
        self.hap_head = nn.Linear(config.dim, 1)
        self.gt_head = nn.Linear(2 * config.dim, 3)
        self.copying = CopyingRates(copying) if copying.enabled and config.mode != "none" else None
        if self.copying is not None:
            self.copy_proj = nn.Linear(N_COPY_FEATURES, config.dim)
            hidden = config.calibration_hidden
            self.calibration = nn.Sequential(nn.Linear(N_CALIBRATION_INPUTS, hidden), nn.GELU(),
                                             nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
            for head in (self.hap_head, self.gt_head, self.calibration[-1]):   # start as the HMM
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def forward(self, tokens: torch.Tensor, sites: Sites, retrieved: Optional[Retrieved] = None,
                copy: Optional[CopyFeatures] = None,
                detach_reference: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """tokens int64 [B, 2, L] (h1, h2 of B samples); retrieved and copy for
        the 2B haplotypes (rows b*2 + j). Returns ALT logits [B, 2, L] and
        genotype logits [B, L, 3] (0, 1, 2 ALT alleles)."""
        B, _, L = tokens.shape
        flat = tokens.reshape(2 * B, L)
        h = self.embedding(flat, sites)                                        # [2B, L, D]
        if copy is not None:
            h = h + self.copy_proj(copy_inputs(copy).to(h.dtype))
        if self.config.mode == "embedding":
            h = self.fusion(h, flat, retrieved, self.embedding, sites, detach_reference)
        elif self.config.mode == "token":
            h = self.fusion(h, self._encode_neighbours(retrieved, sites), retrieved)
        h = self.encode(h).view(B, 2, L, -1)                                   # [B, 2, L, D]
        hap_logits = self.hap_head(h).squeeze(-1)                              # [B, 2, L]
        gt_logits = self.gt_head(torch.cat([h[:, 0], h[:, 1]], dim=-1))        # [B, L, 3]
        if copy is not None:
            alt_prob = copy.alt_prob.view(B, 2, L)
            calibration = self.calibration(calibration_inputs(copy, sites.af)).view(B, 2, L)
            hap_logits = hap_logits + hmm_logit(alt_prob) + calibration.to(hap_logits.dtype)
            gt_logits = gt_logits + genotype_log_prior(alt_prob)
        return hap_logits, gt_logits

    def _encode_neighbours(self, retrieved: Retrieved, sites: Sites) -> torch.Tensor:
        """[N, K, L, D]: the neighbours' tokens through embedding and blocks."""
        N, K = retrieved.ids.shape
        ids = retrieved.ids.clamp(min=0)
        if sites.n_windows == 1:
            neighbours = retrieved.ref_tokens[ids.reshape(-1)]                            # [N*K, L]
        else:                                            # each window's rows read its own slice
            W, H = retrieved.ref_tokens.shape[:2]
            window = torch.arange(W, device=ids.device).repeat_interleave(N // W)[:, None]  # [N, 1]
            neighbours = retrieved.ref_tokens.reshape(W * H, -1)[(ids + window * H).reshape(-1)]
        encoded = self.encode(self.embedding(neighbours.long(), sites))        # [N*K, L, D]
        return encoded.view(N, K, *encoded.shape[1:])


def copy_inputs(copy: CopyFeatures) -> torch.Tensor:
    """[N, L, N_COPY_FEATURES] model inputs from the copy features."""
    return torch.cat([hmm_logit(copy.alt_prob)[..., None] / 8, copy.alt_prob[..., None], copy.sides,
                      copy.concentration], -1)


def calibration_inputs(copy: CopyFeatures, af: torch.Tensor) -> torch.Tensor:
    """[N, L, N_CALIBRATION_INPUTS]: the copy features and the site's AF features (af [L],
    or [W, L] for W stacked windows, rows window-major)."""
    af = af.float().clamp(1e-5, 1 - 1e-5)
    site = torch.stack([torch.logit(af) / 8, torch.minimum(af, 1 - af)], -1)          # [(W,) L, 2]
    inputs = copy_inputs(copy)                                                        # [N, L, F]
    if site.dim() == 3:
        site = site.repeat_interleave(inputs.shape[0] // site.shape[0], dim=0)          # [N, L, 2]
    return torch.cat([inputs, site.expand(*inputs.shape[:-1], 2)], -1)


def genotype_log_prior(alt_prob: torch.Tensor) -> torch.Tensor:
    """[B, L, 3] log P(0, 1, 2 ALT alleles) from the two haplotypes' P(ALT) [B, 2, L]."""
    p = alt_prob.clamp(1e-6, 1 - 1e-6)
    p1, p2 = p[:, 0], p[:, 1]
    return torch.log(torch.stack([(1 - p1) * (1 - p2), p1 * (1 - p2) + (1 - p1) * p2, p1 * p2], -1))
