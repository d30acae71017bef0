"""One batch through copying, retrieval and the model (shared by training,
validation and imputation).

A batch covers one span of sites (dataset.py): a window in training, a chunk
of windows at inference. Per batch the copying posterior is computed once
over the span's context; then, per window of the span, the copy features and
fused neighbours are read off it (copying.py) and the model predicts. With
copying disabled, the neighbours come from FAISS instead (retrieval.py).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from .config import RunConfig
from .copying import Context, CopyFeatures, select_templates, window_features
from .model import ImputationModel, Retrieved, Sites
from .retrieval import Retriever
from .tokens import MASK

Logits = Tuple[torch.Tensor, torch.Tensor]   # ALT logits [B, 2, L], genotype logits [B, L, 3]
MAX_ROWS_PER_CALL = 4096   # haplotype rows (windows x 2B) per model call


class WindowInputs(NamedTuple):
    """The model's inputs for one window: tokens [B, 2, L], sites, retrieved (or None), copy (or None)."""
    tokens: torch.Tensor
    sites: Sites
    retrieved: Optional[Retrieved]
    copy: Optional[CopyFeatures]


def stack_windows(inputs: List[WindowInputs]) -> WindowInputs:
    """W windows' inputs as one model batch, rows window-major (model.Sites)."""
    if len(inputs) == 1:
        return inputs[0]
    first = inputs[0]
    cat = lambda tensors: torch.cat(list(tensors))
    retrieved = None if first.retrieved is None else Retrieved(
        cat(r.retrieved.ids for r in inputs), cat(r.retrieved.dist for r in inputs),
        torch.stack([r.retrieved.ref_tokens for r in inputs]),
        None if first.retrieved.bias is None else cat(r.retrieved.bias for r in inputs))
    copy = None if first.copy is None else CopyFeatures(*(cat(fields) for fields in zip(*(r.copy for r in inputs))))
    return WindowInputs(cat(r.tokens for r in inputs), Sites.stack([r.sites for r in inputs]), retrieved, copy)


class PanelSites:
    """The panel's per-site model inputs, sliced per window.

    af: float32 [S] ALT frequency; variant_type: uint8 [S].
    Positions are offsets from the window's first site (rows of the position
    table); sites of a key range outside the window take the nearest edge row.
    """

    def __init__(self, af: np.ndarray, variant_type: np.ndarray, device: torch.device):
        self.af = torch.as_tensor(np.asarray(af, dtype=np.float32), device=device)
        self.type_ids = torch.as_tensor(np.asarray(variant_type, dtype=np.int64), device=device)
        self.device = device

    def window(self, start: int, end: int, origin: Optional[int] = None,
               length: Optional[int] = None) -> Sites:
        """Sites [start, end) of a window that begins at ``origin`` (default
        start) and has ``length`` sites (default end - start)."""
        origin = start if origin is None else origin
        length = end - start if length is None else length
        pos_ids = (torch.arange(start, end, device=self.device) - origin).clamp(0, length - 1)
        return Sites(pos_ids, self.af[start:end], self.type_ids[start:end])


class ReferencePanel:
    """The retrieval panel's haplotypes on the model's device, stored once,
    haplotype-major (one byte per allele): a window's [H, L] alleles are a view
    of it, and the [M, H] site-major alleles the copying posterior reads are
    gathered from it once per batch; and the genetic position of every site.

    haplotypes: uint8 [S, H] (rows 2s, 2s + 1 of the haplotype axis are sample s);
    cm: float64 [S]; present: bool [H] the rows that hold a haplotype (a haploid
    sample's second row does not: Panel.present_haplotypes); default all.
    """

    def __init__(self, haplotypes: np.ndarray, cm: np.ndarray, device: torch.device,
                 present: Optional[np.ndarray] = None):
        # [H, S]; shares memory with ``haplotypes`` on the CPU when it is a transposed [H, S] array
        self.by_haplotype = torch.from_numpy(np.ascontiguousarray(haplotypes.T)).to(device)
        self.cm = np.asarray(cm, dtype=np.float64)
        self.n_haplotypes = int(haplotypes.shape[1])
        present = np.ones(self.n_haplotypes, dtype=bool) if present is None else np.asarray(present, dtype=bool)
        self.present = torch.from_numpy(present).to(device)                                 # [H]
        self.n_present = int(present.sum())

    def haplotype_window(self, start: int, end: int) -> torch.Tensor:
        """uint8 [H, L]: every haplotype's alleles at sites start..end-1 (a view)."""
        return self.by_haplotype[:, start:end]

    def haplotype_sites(self, sites: torch.Tensor) -> torch.Tensor:
        """uint8 [H, n]: every haplotype's alleles at the sites int64 [n]."""
        return self.by_haplotype.index_select(1, sites)

    def site_alleles(self, sites: torch.Tensor) -> torch.Tensor:
        """uint8 [n, H] (contiguous): the alleles of every haplotype at each of the sites int64 [n]."""
        return self.haplotype_sites(sites).T.contiguous()

    def templates(self, query_sample: torch.Tensor) -> torch.Tensor:
        """int64 [N, H]: every reference haplotype (rows in order), -1 for a
        query's own sample's two (query_sample int64 [N], -1 = not in the panel)
        and for absent rows."""
        rows = torch.arange(self.n_haplotypes, device=self.by_haplotype.device)
        excluded = ((rows[None, :] // 2) == query_sample.to(rows.device)[:, None]) | ~self.present[None, :]
        return torch.where(excluded, torch.full_like(rows, -1), rows[None, :].expand_as(excluded))


def key_encoder(model: ImputationModel, sites: PanelSites, windows: np.ndarray,
                key_ranges: np.ndarray) -> Callable[[int], torch.Tensor]:
    """encode(window) -> the model's allele encodings [V, Lk, D] over the window's key range."""
    def encode(window: int) -> torch.Tensor:
        (start, end), (key_start, key_end) = windows[window], key_ranges[window]
        return model.embedding.allele_encodings(sites.window(int(key_start), int(key_end), int(start),
                                                             int(end - start)))
    return encode


class Predictor:
    """The model with what it reads besides a batch: panel sites, reference
    panel, windows, the FAISS retriever (None when copying chooses the neighbours);
    ``autocast``: the model runs under bf16 autocast (precision.use_autocast)."""

    def __init__(self, model: ImputationModel, config: RunConfig, sites: PanelSites,
                 reference: ReferencePanel, windows: np.ndarray, retriever: Optional[Retriever],
                 autocast: bool = False):
        self.model, self.config, self.sites, self.autocast = model, config, sites, autocast
        self.reference, self.windows, self.retriever = reference, np.asarray(windows), retriever
        self.keys = None     # learned keys (learned_keys.LearnedKeys): they choose the templates when set

    @property
    def device(self) -> torch.device:
        return self.sites.device

    def span_logits(self, batch: Dict[str, torch.Tensor], windows: Sequence[int],
                    detach_reference: bool = False) -> Iterator[Tuple[int, Logits]]:
        """(window, logits) for each of ``windows`` (inside the batch's span). Windows of
        equal length go through the model stacked, up to MAX_ROWS_PER_CALL haplotypes a call."""
        B = batch["tokens"].shape[0]
        query_sample = batch["sample"].repeat_interleave(2).to(self.device)         # [2B]
        copying = None if self.model.copying is None else self._posterior(batch, query_sample)
        for group in self._groups(windows, max(1, MAX_ROWS_PER_CALL // (2 * B))):
            inputs = [self._window_inputs(batch, window, copying, query_sample) for window in group]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                hap_logits, gt_logits = self.model(*stack_windows(inputs), detach_reference=detach_reference)
            for i, window in enumerate(group):
                yield window, (hap_logits[i * B:(i + 1) * B], gt_logits[i * B:(i + 1) * B])

    def _groups(self, windows: Sequence[int], per_call: int) -> Iterator[List[int]]:
        """Consecutive runs of at most ``per_call`` windows of one length."""
        group: List[int] = []
        for window in windows:
            length = int(self.windows[window, 1] - self.windows[window, 0])
            if group and (len(group) == per_call or length != int(self.windows[group[0], 1] - self.windows[group[0], 0])):
                yield group
                group = []
            group.append(window)
        if group:
            yield group

    def _window_inputs(self, batch: Dict[str, torch.Tensor], window: int, copying,
                       query_sample: torch.Tensor) -> "WindowInputs":
        """The model's inputs for one window of the batch."""
        start, end = (int(x) for x in self.windows[window])
        tokens = batch["tokens"][..., start - batch["start"]:end - batch["start"]].to(self.device)  # [B, 2, L]
        copy, retrieved = None, None
        if copying is not None:
            copy = self._copy_features(copying, start, end)
            retrieved = Retrieved(copy.ids, -torch.log(copy.mass.clamp_min(1e-9)),
                                  self.reference.haplotype_window(start, end), copy.bias)
        elif self.retriever is not None:
            retrieved = self._search(batch, window, query_sample, tokens.shape[0])
        return WindowInputs(tokens, self._sites(batch, start, end), retrieved, copy)

    def _sites(self, batch: Dict[str, torch.Tensor], start: int, end: int) -> Sites:
        """The window's site inputs, with each site's allele frequency taken without the
        batch's own samples when they are panel samples (as targets are not)."""
        sites = self.sites.window(start, end)
        offset = batch["start"]
        # a rank's share of a batch (distributed.py) leaves the whole batch out
        truth = batch.get("batch_haplotypes", batch["haplotypes"])[..., start - offset:end - offset].to(self.device)
        in_panel = (batch.get("batch_sample", batch["sample"]) >= 0).to(self.device)[:, None, None]   # [B, 1, 1]
        own_alt = ((truth == 1) & in_panel).sum((0, 1)).float()                           # [L]
        own_alleles = ((truth != MASK) & in_panel).sum((0, 1)).float()
        n = float(self.reference.n_present)
        af = (sites.af * n - own_alt) / (n - own_alleles).clamp_min(1)
        return sites._replace(af=af.clamp(0, 1))

    @torch.no_grad()
    def references(self, batch: Dict[str, torch.Tensor], window: int) -> torch.Tensor:
        """int64 [2B, K]: the panel haplotypes that a window's 2B query haplotypes draw
        on (-1 = none): the FAISS neighbours (copying off), else the copying templates
        (every allowed panel haplotype, or the ``--templates K`` chosen). For scoring
        retrieval (benchmarks/bench_keys.py)."""
        query_sample = batch["sample"].repeat_interleave(2).to(self.device)
        if self.model.copying is None:
            return self._search(batch, window, query_sample, batch["tokens"].shape[0]).ids
        return self._templates(batch, query_sample)[2]

    def _templates(self, batch: Dict[str, torch.Tensor], query_sample: torch.Tensor):
        """(query [N, M], reference alleles [M, H] at the context's sites, templates [N, K])."""
        sites = batch["context_sites"].to(self.device)
        query = batch["context_tokens"].reshape(len(query_sample), -1).to(self.device, torch.uint8)  # [N, M]
        templates = self.reference.templates(query_sample)                            # [N, H]
        ref_sites = self.reference.site_alleles(sites)                                  # [M, H]
        wanted = self.config.copying.templates
        if 0 < wanted < self.reference.n_haplotypes:
            if self.keys is not None:
                templates = self.keys.select(query, ref_sites, templates, wanted, batch["context_sites"].numpy())
            else:
                templates = select_templates(query, ref_sites, templates, wanted)       # [N, K]
        return query, ref_sites, templates

    def _posterior(self, batch: Dict[str, torch.Tensor], query_sample: torch.Tensor):
        """(context, templates [N, K], posterior [N, M, K]) of the batch's 2B query haplotypes."""
        context = Context(batch["context_sites"].numpy(), self.reference.cm)
        query, ref_sites, templates = self._templates(batch, query_sample)
        return context, templates, self.model.copying(query, templates, ref_sites, context.switch_cm)

    def _copy_features(self, copying, start: int, end: int) -> CopyFeatures:
        context, templates, posterior = copying
        return window_features(posterior, templates, self.reference.haplotype_window(start, end),
                               context.interpolation(start, end), self.config.retrieval.k)

    def _search(self, batch: Dict[str, torch.Tensor], window: int, query_sample: torch.Tensor,
                B: int) -> Retrieved:
        """FAISS neighbours of the 2B query haplotypes over the window's key range."""
        key_start, key_end = (int(x) for x in self.retriever.key_ranges[window])
        sites = batch["context_sites"].numpy()                                           # host-side pattern
        inside = np.flatnonzero((sites >= key_start) & (sites < key_end))
        observed = np.zeros(key_end - key_start, dtype=bool)
        observed[sites[inside] - key_start] = True
        columns = torch.from_numpy(sites[inside] - key_start).to(self.device)
        context = batch["context_tokens"].reshape(2 * B, -1).to(self.device)              # [2B, M]
        key_tokens = torch.full((2 * B, key_end - key_start), MASK, dtype=torch.int64, device=self.device)
        key_tokens.index_copy_(1, columns, context.index_select(1, torch.from_numpy(inside).to(self.device)).long())
        ids, dist = self.retriever.search(window, observed, key_tokens, query_sample)     # on the device
        start, end = (int(x) for x in self.windows[window])
        return Retrieved(ids, dist, self.reference.haplotype_window(start, end))
