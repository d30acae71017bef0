"""Accuracy metrics: hand-computed cases and plain NumPy on simulated data."""
import math

import numpy as np
import pytest

from embrag_ext.metrics import MAF_BINS, alt_f1, dosage_metrics, maf_bin_index, switch_error_rate


def test_maf_bins():
    assert maf_bin_index(np.array([0.0, 0.0049, 0.005, 0.0099, 0.01, 0.049, 0.05, 0.5])).tolist() == \
        [0, 0, 1, 1, 2, 2, 3, 3]


def test_dosage_metrics_by_hand():
    true_gt = np.array([[0, 1, 2], [0, 0, 1], [0, 0, 0]])
    dosage = np.array([[0.0, 1.0, 1.0], [0.0, 0.4, 1.0], [0.0, 0.0, 0.2]])
    af = np.array([0.3, 0.2, 0.001])   # bins 5-50%, 5-50%, 0-0.5%
    result = dosage_metrics(true_gt, dosage, af)
    common = result["bins"][3]
    assert common["bin"] == "5-50%" and (common["n_sites"], common["n_genotypes"]) == (2, 6)
    # pooled: sum x 4, x^2 6, y 3.4, y^2 3.16, xy 4, n 6 -> Sxy 1.7333, Sxx 3.3333, Syy 1.2333
    assert common["aggregate_r2"] == pytest.approx(0.730811, abs=1e-6)
    # site r2: 1 / (2 * 2/3) = 0.75 and 0.28444 / (0.66667 * 0.50667) = 0.842105
    assert common["mean_site_r2"] == pytest.approx((0.75 + 0.842105) / 2, abs=1e-6)
    assert common["n_sites_r2_undefined"] == 0
    assert common["concordance"] == pytest.approx(5 / 6)   # called 1 where the truth is 2
    assert common["nrd"] == pytest.approx(1 / 3)           # 1 mismatch in 3 non-ref pairs
    rare = result["bins"][0]
    assert (rare["n_sites"], rare["n_sites_r2_undefined"]) == (1, 1)
    assert math.isnan(rare["aggregate_r2"]) and math.isnan(rare["mean_site_r2"])
    assert rare["concordance"] == 1.0 and math.isnan(rare["nrd"])
    assert result["bins"][1]["n_sites"] == 0 and math.isnan(result["bins"][1]["concordance"])
    overall = result["all"]
    # 9 genotypes: Sxy 2.4, Sxx 4.2222, Syy 1.76
    assert overall["aggregate_r2"] == pytest.approx(0.775120, abs=1e-6)
    assert overall["concordance"] == pytest.approx(8 / 9) and overall["nrd"] == pytest.approx(1 / 3)
    assert overall["n_sites_r2_undefined"] == 1


def test_estimated_r2_is_averaged_over_the_sites_of_the_true_site_r2():
    """DR2 beside the true per-site r2 compares like with like: a site whose true
    r2 is undefined (the truth does not vary) counts in neither mean."""
    true_gt = np.array([[0, 1, 2], [0, 0, 1], [0, 0, 0]])
    dosage = np.array([[0.0, 1.0, 1.0], [0.0, 0.4, 1.0], [0.0, 0.0, 0.2]])
    overall = dosage_metrics(true_gt, dosage, np.array([0.3, 0.2, 0.1]),
                             estimated_r2=np.array([0.9, 0.7, 0.05]))["all"]
    assert overall["mean_estimated_r2"] == pytest.approx(0.8)    # the third site's 0.05 left out


def test_site_mask_and_called_genotypes():
    true_gt = np.array([[0, 1, 2], [2, 2, 2]])
    dosage = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    af = np.array([0.3, 0.3])
    assert dosage_metrics(true_gt, dosage, af, site_mask=np.array([True, False]))["all"]["concordance"] == 1.0
    called = np.array([[0, 2, 2], [2, 2, 2]])
    assert dosage_metrics(true_gt, dosage, af, called_gt=called)["all"]["concordance"] == pytest.approx(5 / 6)


def test_constant_prediction_scores_no_aggregate_r2():
    """Predicting each site's major allele must not score r2 from the sites' frequency differences."""
    true_gt = np.array([[0, 0, 1, 0], [2, 2, 1, 2]])
    af = np.array([0.125, 0.875])
    dosage = np.array([[0.0] * 4, [2.0] * 4])   # major allele everywhere
    result = dosage_metrics(true_gt, dosage, af)["all"]
    assert math.isnan(result["aggregate_r2"]) and math.isnan(result["mean_site_r2"])
    assert result["concordance"] == pytest.approx(6 / 8)


def test_dosage_metrics_match_plain_numpy():
    rng = np.random.default_rng(5)
    n_sites, n_samples = 300, 40
    af = rng.beta(0.3, 1.0, n_sites)
    haplotypes = rng.random((n_sites, 2 * n_samples)) < af[:, None]
    true_gt = haplotypes[:, 0::2].astype(int) + haplotypes[:, 1::2]
    dosage = np.clip(true_gt + rng.normal(0, 0.4, true_gt.shape), 0, 2)
    mask = rng.random(n_sites) < 0.8
    result = dosage_metrics(true_gt, dosage, af, site_mask=mask)
    maf = np.minimum(af, 1 - af)
    for (low, high), got in zip(MAF_BINS, result["bins"]):
        rows = mask & (maf >= low) & ((maf < high) if high < 0.5 else (maf <= high))
        flip = (af[rows] > 0.5)[:, None]
        truth = np.where(flip, 2 - true_gt[rows], true_gt[rows])
        dose = np.where(flip, 2 - dosage[rows], dosage[rows])
        assert got["n_sites"] == rows.sum()
        if rows.sum() > 1:
            assert got["aggregate_r2"] == pytest.approx(np.corrcoef(truth.ravel(), dose.ravel())[0, 1] ** 2)
        site_r2 = [np.corrcoef(t, d)[0, 1] ** 2 for t, d in zip(true_gt[rows], dosage[rows])
                   if t.std() > 0 and d.std() > 0]
        if site_r2:
            assert got["mean_site_r2"] == pytest.approx(np.mean(site_r2))
        called = np.rint(dosage[rows])
        assert got["concordance"] == pytest.approx((called == true_gt[rows]).mean())
        non_ref = (called != 0) | (true_gt[rows] != 0)
        if non_ref.any():
            assert got["nrd"] == pytest.approx((called != true_gt[rows])[non_ref].mean())


def test_alt_f1_by_hand():
    true_haps = np.array([[1, 0, 1, 0], [0, 0, 1, 1]])
    pred_haps = np.array([[1, 1, 0, 0], [0, 0, 1, 0]])
    maf = np.array([0.01, 0.2])[:, None]   # site 0 rare, site 1 common ([S, 2T] layout)
    result = alt_f1(true_haps, pred_haps, np.ones((2, 4), dtype=bool), maf)
    assert (result["rare"]["precision"], result["rare"]["recall"], result["rare"]["f1"]) == (0.5, 0.5, 0.5)
    assert (result["common"]["precision"], result["common"]["recall"]) == (1.0, 0.5)
    assert result["common"]["f1"] == pytest.approx(2 / 3)
    masked = np.array([[True] * 4, [True, True, True, False]])   # hides the missed ALT
    assert alt_f1(true_haps, pred_haps, masked, maf)["common"]["f1"] == 1.0


def test_alt_f1_window_layout_and_undefined():
    true_haps = np.array([[0, 1], [0, 1]])   # [N haplotypes, L sites]
    pred_haps = np.array([[0, 0], [0, 1]])
    result = alt_f1(true_haps, pred_haps, np.array([True, True]), np.array([0.2, 0.01]))
    assert result["rare"]["recall"] == 0.5 and result["rare"]["precision"] == 1.0
    assert math.isnan(result["common"]["precision"]) and math.isnan(result["common"]["f1"])
    none_right = alt_f1(np.array([[1]]), np.array([[0]]), np.array([[True]]), np.array([0.01]))
    assert none_right["rare"]["f1"] == 0.0


def test_switch_error_rate_by_hand():
    truth = np.array([[0, 1], [1, 0], [0, 0], [1, 0], [0, 1]])   # one sample: heterozygous at 0, 1, 3, 4
    same = truth.copy()
    assert switch_error_rate(truth, same) == 0.0
    flipped_all = truth[:, ::-1]
    assert switch_error_rate(truth, flipped_all) == 0.0            # phase relative to the start is free
    one_switch = truth.copy()
    one_switch[3:] = one_switch[3:, ::-1]                          # switch between het sites 1 and 3
    assert switch_error_rate(truth, one_switch) == 1 / 3
    assert np.isnan(switch_error_rate(truth[2:3], truth[2:3]))    # no heterozygous pair
