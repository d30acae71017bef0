"""Retrieval: no leakage, observed sites only, h1/h2 separately, refresh."""
import numpy as np
import pytest
import torch

from embrag_ext.panel import haplotype_columns
from embrag_ext.config import RunConfig
from embrag_ext.predict import PanelSites, Predictor, ReferencePanel
from embrag_ext.retrieval import Retriever, site_scales
from embrag_ext.tokens import MASK

H, S, L, D = 40, 30, 30, 4       # 20 reference samples, one window of 30 sites


def random_encoder(seed=0):
    """encode(window) -> allele encodings [3, S, D] of the one key range, fixed random tables."""
    gen = torch.Generator().manual_seed(seed)
    tok, site = torch.randn(3, D, generator=gen), torch.randn(S, D, generator=gen)
    return lambda window: tok[:, None, :] + site[None, :, :]


@pytest.fixture
def panel_tokens():
    return (np.random.default_rng(1).random((H, S)) < 0.4).astype(np.uint8)   # [H, S]


def make_retriever(ref_tokens_T, k=5, factory="Flat"):
    retriever = Retriever(ref_tokens_T, np.array([[0, S]]), np.array([[0, S]]), k, factory=factory)
    retriever.refresh(random_encoder())
    return retriever


OBSERVED = np.zeros(L, dtype=bool)
OBSERVED[::3] = True


def test_own_sample_never_retrieved_but_a_planted_duplicate_is(panel_tokens):
    panel_tokens[30] = panel_tokens[6]           # sample 15 carries a copy of sample 3's h1
    retriever = make_retriever(panel_tokens)
    queries = panel_tokens[[6, 7]].astype(np.int64)
    # As a training query (sample 3 is in the panel): its own rows 6, 7 never come back.
    ids, dist = retriever.search(0, OBSERVED, queries, np.array([3, 3]))
    assert not np.isin(ids.numpy(), [6, 7]).any()
    assert ids[0, 0] == 30 and dist[0, 0] == 0
    # As a validation query (not in the panel) the exact copies are found first.
    ids, _ = retriever.search(0, OBSERVED, queries, np.array([-1, -1]))
    assert set(ids[0, :2].tolist()) == {6, 30} and ids[1, 0] == 7


def test_masked_reference_sites_do_not_change_the_neighbours(panel_tokens):
    query = panel_tokens[[4, 9]].astype(np.int64)
    before = make_retriever(panel_tokens).search(0, OBSERVED, query, np.array([2, 4]))
    changed = panel_tokens.copy()
    changed[:, ~OBSERVED] = 1 - changed[:, ~OBSERVED]
    after = make_retriever(changed).search(0, OBSERVED, query, np.array([2, 4]))
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_a_query_mask_counts_as_an_unobserved_site(panel_tokens):
    """A MASK in the query at an observed site adds the same distance to every
    reference: the distances equal those without that site, plus a constant."""
    retriever = make_retriever(panel_tokens, k=H)
    query = panel_tokens[[4]].astype(np.int64)
    without_site = OBSERVED.copy()
    without_site[3] = False
    ids, dist = retriever.search(0, without_site, query, np.array([-1]))
    query[0, 3] = MASK
    ids_masked, dist_masked = retriever.search(0, OBSERVED, query, np.array([-1]))
    before = dict(zip(ids[0].tolist(), dist[0].tolist()))
    after = dict(zip(ids_masked[0].tolist(), dist_masked[0].tolist()))
    shift = np.array([after[i] - before[i] for i in range(H)])
    assert np.allclose(shift, 0.25, atol=1e-4)        # a quarter of one mismatch, for everyone


def test_h1_and_h2_retrieve_separately(panel_tokens):
    retriever = make_retriever(panel_tokens)
    sample_tokens = torch.from_numpy(panel_tokens[[10, 25]].astype(np.int64))        # h1 = row 10, h2 = row 25
    tokens = torch.where(torch.from_numpy(OBSERVED), sample_tokens, MASK)[None]       # [1, 2, L]
    observed_sites = np.flatnonzero(OBSERVED)
    batch = {"span": 0, "start": 0, "tokens": tokens, "haplotypes": sample_tokens[None].to(torch.uint8),
             "observed": torch.from_numpy(OBSERVED), "context_sites": torch.from_numpy(observed_sites),
             "context_tokens": sample_tokens[:, observed_sites][None], "sample": torch.tensor([-1])}
    seen = {}

    class SpyModel:                              # what the predictor calls the model with
        copying = None

        def __call__(self, tokens, sites, retrieved, copy, detach_reference):
            seen["ids"] = retrieved.ids
            return torch.zeros(tokens.shape), torch.zeros(tokens.shape[0], tokens.shape[2], 3)

    cpu = torch.device("cpu")
    predictor = Predictor(SpyModel(), RunConfig(), PanelSites(np.zeros(S, np.float32), np.zeros(S, np.uint8), cpu),
                          ReferencePanel(panel_tokens.T, np.arange(S) * 1e-3, cpu), np.array([[0, S]]), retriever)
    list(predictor.span_logits(batch, [0]))
    assert seen["ids"][0, 0] == 10 and seen["ids"][1, 0] == 25
    assert set(seen["ids"][0].tolist()) != set(seen["ids"][1].tolist())


def test_approximate_index_reports_recall(panel_tokens):
    retriever = make_retriever(panel_tokens, factory="HNSW8")
    retriever.search(0, OBSERVED, panel_tokens[:6].astype(np.int64), np.arange(6) // 2)
    assert 0.5 <= retriever.recall() <= 1.0
    assert make_retriever(panel_tokens).recall() is None


def test_reference_keys_use_only_observed_sites(panel_tokens):
    retriever = make_retriever(panel_tokens)
    keys = retriever.reference_keys(0, np.flatnonzero(OBSERVED))
    assert keys.shape == (H, OBSERVED.sum() * D)


def test_training_panel_holds_no_validation_haplotype():
    from embrag_ext.dataset import split_samples
    train, val = split_samples(50, 0.2, seed=3)
    assert len(val) == 10 and not set(train) & set(val) and len(train) + len(val) == 50
    rows = haplotype_columns(train)
    assert not set(rows.tolist()) & set(haplotype_columns(val).tolist())


def test_flank_sites_weigh_less_with_distance_from_the_window():
    scales = site_scales(np.array([10, 20]), np.array([0, 30]), decay=5.0)      # sqrt of the weights
    assert np.all(scales[10:20] == 1) and scales[9] == scales[20] < 1
    assert np.all(np.diff(scales[:10]) > 0) and np.all(np.diff(scales[20:]) < 0)
    assert np.isclose(scales[0] ** 2, np.exp(-10 / 5.0))
    assert np.all(site_scales(np.array([10, 20]), np.array([0, 30]), decay=0) == 1)


def test_absent_haplotypes_are_never_retrieved(panel_tokens):
    """Haploid samples' second rows (all MASK) are left out of the index; ids stay panel rows."""
    present = np.ones(H, dtype=bool)
    present[1::4] = False                        # samples 0, 2, 4, ... are haploid
    panel_tokens[~present] = MASK
    retriever = Retriever(panel_tokens, np.array([[0, S]]), np.array([[0, S]]), 8, present=present)
    retriever.refresh(random_encoder())
    queries = np.full((2, S), MASK, dtype=np.int64)          # queries close to an all-MASK row
    queries[1] = panel_tokens[2]
    ids, _ = retriever.search(0, OBSERVED, queries, np.array([-1, 1]))
    assert not np.isin(ids.numpy(), np.flatnonzero(~present)).any()
    assert ids[1].tolist().count(2) == 0 and ids[1, 0] != -1   # own sample (rows 2, 3) excluded, by panel row
    full = make_retriever(panel_tokens, k=8).search(0, OBSERVED, queries, np.array([-1, 1]))[0]
    assert np.isin(full.numpy(), np.flatnonzero(~present)).any()   # without `present` they would come back


def test_a_panel_query_never_sees_its_own_alleles_in_the_allele_frequency(panel_tokens):
    """Training queries are panel samples: the AF the model sees leaves them out (targets are not in
    the panel, so theirs is the panel's); a query's own sample is never a template."""
    seen = {}

    class SpyModel:
        copying = None

        def __call__(self, tokens, sites, retrieved, copy, detach_reference):
            seen["af"] = sites.af
            return torch.zeros(tokens.shape), torch.zeros(tokens.shape[0], tokens.shape[2], 3)

    cpu = torch.device("cpu")
    panel = panel_tokens.T                                                   # [S, H]
    af = panel.mean(1).astype(np.float32)
    reference = ReferencePanel(panel, np.arange(S) * 1e-3, cpu)
    predictor = Predictor(SpyModel(), RunConfig(), PanelSites(af, np.zeros(S, np.uint8), cpu), reference,
                          np.array([[0, S]]), retriever=None)
    rows = torch.from_numpy(panel_tokens[[4, 5]])[None]                      # sample 2's two haplotypes
    batch = {"span": 0, "start": 0, "tokens": rows.long(), "haplotypes": rows, "sample": torch.tensor([2])}
    list(predictor.span_logits(batch, [0]))
    without = np.delete(panel, [4, 5], axis=1).mean(1)
    np.testing.assert_allclose(seen["af"].numpy(), without, atol=1e-6)
    list(predictor.span_logits({**batch, "sample": torch.tensor([-1])}, [0]))
    np.testing.assert_allclose(seen["af"].numpy(), af, atol=1e-6)
    templates = reference.templates(torch.tensor([2, 2, -1]))
    assert (templates[:2, 4:6] == -1).all() and (templates[2] == torch.arange(H)).all()
