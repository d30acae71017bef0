"""Imputation accuracy metrics (pure numpy).

Two families:
- :func:`dosage_metrics`: per MAF bin (0-0.5%, 0.5-1%, 1-5%, 5-50%), dosage r2
  (aggregate and mean per site), genotype concordance and non-reference
  discordance, computed on genotypes (allele counts 0/1/2) of the sites chosen
  by ``site_mask`` (usually the imputed, untyped sites);
- :func:`alt_f1`: the seed's per-haplotype ALT-allele precision / recall / F1
  on masked alleles, split rare / common at MAF 0.05.

Undefined values (no data, zero variance, no positives) are ``nan``.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

MAF_BINS = ((0.0, 0.005), (0.005, 0.01), (0.01, 0.05), (0.05, 0.5))
RARE_MAF = 0.05


def bin_label(low: float, high: float) -> str:
    """'0.5-1%' for (0.005, 0.01)."""
    return f"{low * 100:g}-{high * 100:g}%"


def maf_bin_index(maf: np.ndarray) -> np.ndarray:
    """Bin of each site, int64 [S]: bins are [low, high), the last one [0.05, 0.5]."""
    inner_edges = [high for _, high in MAF_BINS[:-1]]
    return np.digitize(np.asarray(maf, dtype=np.float64), inner_edges).astype(np.int64)


def squared_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Squared Pearson correlation of two flat arrays; nan if either is constant or empty."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size == 0:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    denominator = (x @ x) * (y @ y)
    return float((x @ y) ** 2 / denominator) if denominator > 0 else float("nan")


def per_site_r2(true_gt: np.ndarray, dosage: np.ndarray) -> np.ndarray:
    """Squared correlation per site (row) float64 [S]; nan where truth or
    dosage has zero variance across genotypes."""
    truth = np.asarray(true_gt, dtype=np.float64)
    dose = np.asarray(dosage, dtype=np.float64)
    truth = truth - truth.mean(axis=1, keepdims=True)
    dose = dose - dose.mean(axis=1, keepdims=True)
    denominator = (truth ** 2).sum(axis=1) * (dose ** 2).sum(axis=1)
    covariance = (truth * dose).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, covariance ** 2 / denominator, np.nan)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


def _group_metrics(true_gt: np.ndarray, dosage: np.ndarray, called_gt: np.ndarray,
                   alt_is_major: np.ndarray, estimated_r2: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Metrics over the genotypes of a group of sites (rows of [S, T] arrays)."""
    flip = alt_is_major[:, None]
    minor_truth = np.where(flip, 2 - true_gt, true_gt)
    minor_dosage = np.where(flip, 2 - dosage, dosage)
    site_r2 = per_site_r2(true_gt, dosage)
    defined = ~np.isnan(site_r2)
    matches = called_gt == true_gt
    non_ref = (true_gt != 0) | (called_gt != 0)
    return {
        "n_sites": int(true_gt.shape[0]),
        "n_genotypes": int(true_gt.size),
        "aggregate_r2": squared_correlation(minor_truth, minor_dosage),
        "mean_site_r2": float(site_r2[defined].mean()) if defined.any() else float("nan"),
        "n_sites_r2_undefined": int((~defined).sum()),
        "concordance": _ratio(matches.sum(), matches.size),
        "nrd": _ratio((~matches & non_ref).sum(), non_ref.sum()),
        "mean_estimated_r2": _mean(None if estimated_r2 is None else np.asarray(estimated_r2)[defined]),
    }


def _mean(values: Optional[np.ndarray]) -> float:
    """Mean of the defined values; nan when there are none."""
    if values is None:
        return float("nan")
    values = np.asarray(values, dtype=np.float64)
    defined = ~np.isnan(values)
    return float(values[defined].mean()) if defined.any() else float("nan")


def dosage_metrics(true_gt: np.ndarray, dosage: np.ndarray, af: np.ndarray,
                   site_mask: Optional[np.ndarray] = None,
                   called_gt: Optional[np.ndarray] = None,
                   estimated_r2: Optional[np.ndarray] = None) -> Dict[str, object]:
    """Dosage and genotype accuracy per MAF bin and over all selected sites.

    true_gt: int [S, T] true ALT allele counts (0, 1, 2).
    dosage: float [S, T] imputed ALT dosage (DS).
    af: float [S] ALT allele frequency (from the panel); MAF = min(af, 1 - af).
    site_mask: bool [S] sites to evaluate (e.g. the imputed sites); default all.
    called_gt: int [S, T] imputed hard genotypes (GT allele sum); default
        ``rint(dosage)``.
    estimated_r2: float [S] the imputation's own estimate of each site's
        dosage r2 (DR2 / R2); its mean per group, over the sites of
        ``mean_site_r2``, is ``mean_estimated_r2``, to set beside it (is the
        estimate honest?). nan without it.

    Per group of sites: ``aggregate_r2``, the squared correlation of dosage
    with the true count over all genotypes of the group, counting the panel's
    minor allele at each site (so that a prediction constant per site cannot
    score from the differences between sites' frequencies);
    ``mean_site_r2`` over sites whose truth and dosage both vary
    (``n_sites_r2_undefined`` counts the others); ``concordance`` = fraction of
    called genotypes equal to the truth; ``nrd`` (non-reference discordance) =
    mismatches / genotypes where truth or call is not hom-REF.

    Returns ``{"bins": [{"bin", "maf_low", "maf_high", metrics...}, ...], "all": {metrics...}}``.
    """
    true_gt = np.asarray(true_gt)
    dosage = np.asarray(dosage, dtype=np.float64)
    af = np.asarray(af, dtype=np.float64)
    called_gt = np.rint(dosage).astype(np.int64) if called_gt is None else np.asarray(called_gt)
    site_mask = np.ones(len(af), dtype=bool) if site_mask is None else np.asarray(site_mask, dtype=bool)
    if not (true_gt.shape == dosage.shape == called_gt.shape and true_gt.shape[0] == len(af) == len(site_mask)):
        raise ValueError(f"shapes differ: true_gt {true_gt.shape}, dosage {dosage.shape}, "
                         f"called_gt {called_gt.shape}, af {af.shape}, site_mask {site_mask.shape}")
    alt_is_major = af > 0.5
    bins = maf_bin_index(np.minimum(af, 1 - af))
    results = []
    for index, (low, high) in enumerate(MAF_BINS):
        rows = site_mask & (bins == index)
        results.append({"bin": bin_label(low, high), "maf_low": low, "maf_high": high,
                        **_group_metrics(true_gt[rows], dosage[rows], called_gt[rows], alt_is_major[rows],
                                         None if estimated_r2 is None else estimated_r2[rows])})
    overall = _group_metrics(true_gt[site_mask], dosage[site_mask], called_gt[site_mask],
                             alt_is_major[site_mask], None if estimated_r2 is None else estimated_r2[site_mask])
    return {"bins": results, "all": overall}


def _precision_recall_f1(truth: np.ndarray, predicted: np.ndarray) -> Dict[str, float]:
    """ALT = positive; truth and predicted are flat bool arrays."""
    true_positives = int((truth & predicted).sum())
    precision = _ratio(true_positives, predicted.sum())
    recall = _ratio(true_positives, truth.sum())
    if true_positives:
        f1 = 2 * precision * recall / (precision + recall)
    else:  # no ALT right: 0 if there were ALT alleles to find or predicted, else undefined
        f1 = 0.0 if truth.any() or predicted.any() else float("nan")
    return {"precision": precision, "recall": recall, "f1": f1,
            "n_alt_true": int(truth.sum()), "n_alt_predicted": int(predicted.sum()),
            "n_alleles": int(truth.size)}


def alt_f1(true_haps: np.ndarray, pred_haps: np.ndarray, masked: np.ndarray, maf: np.ndarray,
           rare_maf: float = RARE_MAF) -> Dict[str, Dict[str, float]]:
    """The seed's per-haplotype ALT-allele precision, recall and F1 on masked alleles.

    true_haps, pred_haps: 0/1 alleles of the same shape, e.g. [S, 2T] (sites x
        haplotypes) or [N, L] (haplotypes x window sites).
    masked: bool, broadcastable to that shape: the alleles that were hidden
        from the model (only these are scored).
    maf: float, broadcastable to that shape (numpy rules): for [N, L] pass
        ``maf`` of shape [L]; for [S, 2T] pass ``maf[:, None]``.
    Sites with MAF < ``rare_maf`` are "rare", the others "common".

    Returns ``{"rare": {...}, "common": {...}}``, each with precision, recall,
    f1 (nan when undefined; f1 = 0 when there are positives but none right),
    n_alt_true, n_alt_predicted, n_alleles.
    """
    true_haps = np.asarray(true_haps)
    pred_haps = np.asarray(pred_haps)
    if true_haps.shape != pred_haps.shape:
        raise ValueError(f"true_haps shape {true_haps.shape} != pred_haps shape {pred_haps.shape}")
    masked = np.broadcast_to(np.asarray(masked, dtype=bool), true_haps.shape)
    rare = np.broadcast_to(np.asarray(maf) < rare_maf, true_haps.shape)
    results = {}
    for name, group in (("rare", masked & rare), ("common", masked & ~rare)):
        results[name] = _precision_recall_f1(true_haps[group] == 1, pred_haps[group] == 1)
    return results


def switch_error_rate(true_haps: np.ndarray, phased_haps: np.ndarray) -> float:
    """Phase switch errors per consecutive pair of heterozygous sites.

    true_haps, phased_haps: 0/1 alleles [S, 2T] of the same T diploid samples
    at the same S sites (the phased genotypes equal the true ones). Over every
    sample, a switch is a change, from one heterozygous site to the next, of
    whether the phased first haplotype carries the true first haplotype's
    allele. Returns switches / pairs (nan without any pair)."""
    errors = pairs = 0
    for sample in range(true_haps.shape[1] // 2):
        truth = true_haps[:, 2 * sample:2 * sample + 2]
        heterozygous = truth[:, 0] != truth[:, 1]
        same = truth[heterozygous, 0] == phased_haps[heterozygous, 2 * sample]
        errors += int((same[1:] != same[:-1]).sum())
        pairs += max(int(heterozygous.sum()) - 1, 0)
    return _ratio(errors, pairs)


def hidden_site_scores(pieces: List[Dict[str, np.ndarray]]) -> Dict[str, object]:
    """ALT-F1 rare/common and aggregate dosage r2 (overall and by MAF bin) over
    the hidden sites of validation batches, pooled. Each piece: ``truth`` uint8
    [B, 2, n] and ``prob`` float [B, 2, n] (P(ALT)) at its n hidden sites,
    ``af`` [n]; pieces may differ in B and n. A haploid sample's absent second
    haplotype (truth 2, MASK) is left out of the ALT-F1, and its genotype
    counts as homozygous diploid in the dosage r2 (as evaluate.py scores
    haploid calls)."""
    pieces = [_haploid_as_homozygous(p) for p in pieces]
    true_gt = np.concatenate([p["truth"].sum(1).T.reshape(-1, 1) for p in pieces])     # [R, 1] genotypes
    dosage = np.concatenate([p["prob"].sum(1).T.reshape(-1, 1) for p in pieces])       # [R, 1]
    af = np.concatenate([np.repeat(p["af"], p["truth"].shape[0]) for p in pieces])    # [R]
    true_haps = np.concatenate([p["truth"].transpose(2, 0, 1).reshape(-1) for p in pieces])   # [2R]
    pred_haps = np.concatenate([(p["prob"] > 0.5).transpose(2, 0, 1).reshape(-1) for p in pieces])
    present = np.concatenate([~p["absent"].transpose(2, 0, 1).reshape(-1) for p in pieces])
    hap_af = np.repeat(af, 2)
    f1 = alt_f1(true_haps, pred_haps.astype(np.uint8), present, np.minimum(hap_af, 1 - hap_af))
    dosage_r2 = dosage_metrics(true_gt, dosage, af)
    return {"alt_f1_rare": f1["rare"]["f1"], "alt_f1_common": f1["common"]["f1"],
            "dosage_r2": dosage_r2["all"]["aggregate_r2"],
            "dosage_r2_by_maf": {b["bin"]: b["aggregate_r2"] for b in dosage_r2["bins"]}}


ABSENT_ALLELE = 2   # tokens.MASK: the truth of a haploid sample's absent second haplotype


def _haploid_as_homozygous(piece: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The piece with each absent second haplotype replaced by the first
    (truth and prob) and ``absent`` bool [B, 2, n] marking them."""
    truth, prob = piece["truth"], piece["prob"]
    absent = np.zeros(truth.shape, dtype=bool)
    absent[:, 1] = truth[:, 1] == ABSENT_ALLELE
    return {**piece, "absent": absent, "truth": np.where(absent, truth[:, :1], truth),
            "prob": np.where(absent, prob[:, :1], prob)}


def retrieval_utility(ids: np.ndarray, ref_alleles: np.ndarray, truth: np.ndarray,
                      maf: np.ndarray) -> Dict[str, float]:
    """How useful retrieved references are at the sites a query did not observe.

    ids int [Q, K]: retrieved panel rows per query (-1 = none); ref_alleles uint8
    [H, n]: every panel haplotype's alleles at the query's n masked sites; truth
    [Q, n]: the query's true alleles there (values > 1 = unknown, skipped); maf [n].

    - ``carried``: share of masked alleles carried by at least one of the K;
    - ``carried_alt``, ``carried_rare_alt``: the same for ALT alleles, and ALT
      alleles at sites of MAF < RARE_MAF (where a template is hard to find);
    - ``agreement``: mean share of masked alleles that a retrieved reference
      carries (over queries, references and sites).
    Also the counts they are taken over (``alleles``, ``alt_alleles``, ``rare_alt_alleles``).
    """
    ids = np.asarray(ids)
    truth = np.asarray(truth)
    known = truth <= 1                                                          # [Q, n]
    present = ids >= 0                                                          # [Q, K]
    retrieved = ref_alleles[np.maximum(ids, 0)]                                 # [Q, K, n]
    match = (retrieved == truth[:, None, :]) & present[:, :, None]             # [Q, K, n]
    carried = match.any(1) & known                                              # [Q, n]
    alt = known & (truth == 1)
    rare_alt = alt & (np.asarray(maf)[None, :] < RARE_MAF)
    n_present = present.sum(1)                                                  # [Q]
    agree = (match.sum(1) * known).sum(1) / np.maximum(n_present * known.sum(1), 1)   # [Q]
    share = lambda mask: float(carried[mask].mean()) if mask.any() else float("nan")
    return {"carried": share(known), "carried_alt": share(alt), "carried_rare_alt": share(rare_alt),
            "agreement": float(agree[(n_present > 0) & known.any(1)].mean()) if known.any() else float("nan"),
            "alleles": int(known.sum()), "alt_alleles": int(alt.sum()), "rare_alt_alleles": int(rare_alt.sum())}
