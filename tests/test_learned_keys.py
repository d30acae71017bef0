"""Learned retrieval keys: slots, hard-negative mining, ranking, refresh (options A and B);
recall@K of an approximate index; retrieval utility."""

import numpy as np
import pytest
import torch

from helpers import TINY_TRAINING
from embrag_ext import train, training
from embrag_ext.copying import select_templates
from embrag_ext.learned_keys import KeyEncoder, LearnedKeys, info_nce, mine, slots
from embrag_ext.metrics import retrieval_utility
from embrag_ext.retrieval import Retriever, overlap_recall, site_scales, tied_recall
from embrag_ext.tokens import ALT, MASK, REF


def test_slots_are_signed_ranks_from_the_focus_centre():
    sites = np.array([3, 10, 20, 49, 50, 60, 99, 130])
    # focus [40, 60): centre 49.5; left of it 49, 20, 10, 3 (nearest first), right 50, 60, 99, 130
    assert slots(sites, (40, 60), 2).tolist() == [-1, -1, 0, 1, 2, 3, -1, -1]
    assert slots(sites, (40, 60), 4).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert slots(np.array([100, 101]), (0, 10), 3).tolist() == [3, 4]     # all right of the centre


def test_untrained_keys_are_decay_weighted_mismatch_counts():
    encoder = KeyEncoder(sites_per_side=4, decay=10.0)
    distance = torch.tensor([0.0, 0.0, 5.0, 20.0])
    values = encoder.site_values(torch.full((4,), 0.3), distance)
    slot = torch.arange(4)
    a = encoder.keys(values, slot, torch.tensor([[REF, ALT, REF, ALT]]))
    b = encoder.keys(values, slot, torch.tensor([[REF, REF, ALT, ALT]]))
    expected = float(np.exp(-0.0) + np.exp(-0.5))              # sites 1 and 2 mismatch: w = exp(-d / decay)
    assert torch.allclose((a - b).square().sum(), torch.tensor(expected), rtol=1e-5)
    masked = encoder.keys(values, slot, torch.tensor([[MASK, ALT, REF, ALT]]))
    # a missing allele sits halfway: equally far from REF and ALT
    ref_key = encoder.keys(values, slot, torch.tensor([[REF, ALT, REF, ALT]]))
    alt_key = encoder.keys(values, slot, torch.tensor([[ALT, ALT, REF, ALT]]))
    assert torch.allclose((masked - ref_key).square().sum(), (masked - alt_key).square().sum())


def test_mined_negatives_are_retrieved_and_disagree_on_masked_sites():
    rng = np.random.default_rng(0)
    N, H, h, n_neg = 6, 40, 25, 5
    ref_hidden = torch.from_numpy((rng.random((H, h)) < 0.3).astype(np.uint8))
    query_hidden = ref_hidden[rng.choice(H, N)].clone()
    query_hidden[:, :3] = 1 - query_hidden[:, :3]                          # no reference agrees everywhere
    query_hidden[0, 5] = MASK                                              # an unknown allele is not counted
    allowed = torch.ones(N, H, dtype=torch.bool)
    allowed[:, :2] = False                                                 # e.g. the query's own sample
    index_distance = torch.from_numpy(rng.random((N, H)).astype(np.float32)).masked_fill(~allowed, float("inf"))
    positives, negatives = mine(index_distance, query_hidden, ref_hidden, allowed, n_neg, n_positives=4)
    known = query_hidden != MASK
    mismatches = ((ref_hidden[None].long() != query_hidden[:, None].long()) & known[:, None]).sum(-1)   # [N, H]
    mismatches = mismatches.masked_fill(~allowed, 10**6)
    for q in range(N):
        retrieved = set(index_distance[q].topk(2 * n_neg, largest=False).indices.tolist())
        best = int(mismatches[q].min())
        negs = [r for r in negatives[q].tolist() if r >= 0]
        assert negs and set(negs) <= retrieved
        assert all(int(mismatches[q, r]) > best and allowed[q, r] for r in negs)
        # every retrieved reference that disagrees more is mined (up to n_neg), nearest first
        worse = [r for r in index_distance[q].argsort().tolist()[:2 * n_neg] if int(mismatches[q, r]) > best]
        assert negs == worse[:n_neg]
        poss = [r for r in positives[q].tolist() if r >= 0]
        assert poss and all(int(mismatches[q, r]) == best and allowed[q, r] for r in poss)


def test_info_nce_pulls_positives_in():
    q = torch.zeros(1, 2)
    refs = torch.tensor([[0.1, 0.0], [3.0, 0.0], [0.0, 0.2]])
    loss, valid = info_nce(q, refs, torch.tensor([[0]]), torch.tensor([[1, 2]]))
    expected = -np.log(np.exp(-0.01) / (np.exp(-0.01) + np.exp(-9.0) + np.exp(-0.04)))
    assert valid.tolist() == [True] and loss.item() == pytest.approx(expected, rel=1e-5)
    loss, valid = info_nce(q, refs, torch.tensor([[0]]), torch.tensor([[-1, -1]]))   # no negative: no loss
    assert valid.tolist() == [False] and loss.item() == 0.0


def test_overlap_recall_hand_checked():
    found = np.array([[1, 2, 3], [4, 5, -1], [7, 8, 9]])
    exact = np.array([[1, 2, 9], [4, 6, 7], [-1, -1, -1]])
    # query 0: 1, 2 of 3; query 1: 4 of 3; query 2: nothing to find
    assert overlap_recall(found, exact) == (3, 6)


def test_tied_recall_hand_checked():
    inf = np.inf
    exact = np.array([[0.0, 1.0, 1.0], [2.0, 3.0, inf]])      # query 1: only 2 neighbours exist
    found = np.array([[1.0, 1.0, 4.0], [3.0, 2.0, 5.0]])      # a tie with the K-th is as good as it
    assert tied_recall(found, exact) == (2 + 2, 3 + 2)


def test_single_cell_ivf_has_full_recall_and_hnsw_reports_it():
    ref = (np.random.default_rng(2).random((60, 40)) < 0.4).astype(np.uint8)
    encode = lambda window: torch.randn(3, 40, 4, generator=torch.Generator().manual_seed(1))
    for factory, low in (("IVF1,Flat", 1.0), ("HNSW8", 0.5)):
        retriever = Retriever(ref, np.array([[0, 40]]), np.array([[0, 40]]), 5, factory=factory)
        retriever.refresh(encode)                             # recall is measured at each refresh
        assert low <= retriever.recall() <= 1.0
    flat = Retriever(ref, np.array([[0, 40]]), np.array([[0, 40]]), 5)
    flat.refresh(encode)
    assert flat.recall() is None


def test_retrieval_utility_counts_carried_alleles():
    ref = np.array([[0, 1, 1], [0, 0, 1], [1, 1, 1]], dtype=np.uint8)     # 3 references x 3 masked sites
    truth = np.array([[1, 1, 0], [0, 2, 1]])                                # second query: site 1 unknown
    ids = np.array([[0, 1], [1, -1]])
    out = retrieval_utility(ids, ref, truth, maf=np.array([0.01, 0.2, 0.3]))
    # query 0: site 0 ALT carried by neither, site 1 ALT by ref 0, site 2 REF by neither; query 1: both carried
    assert out["carried"] == pytest.approx(3 / 5)
    assert out["carried_alt"] == pytest.approx(2 / 3) and out["carried_rare_alt"] == 0.0
    # agreement: query 0: ref 0 matches 1 of 3, ref 1 none; query 1: ref 1 matches 2 of 2
    assert out["agreement"] == pytest.approx((1 / 6 + 1.0) / 2)


def tiny_trainer(cohort, tmp_path, *extra):
    """A Trainer with learned keys for FAISS neighbours; K = 24 (the tiny cohort has
    few distinct haplotypes: the first few neighbours are often tied copies)."""
    options = train.parse_options(["--panel", cohort["panel"], "--out", str(tmp_path), *TINY_TRAINING,
                                   "--copying", "off", "--keys", "learned", "--k", "24", *extra])
    return training.Trainer(train.run_config(options), str(tmp_path))


def neighbours(trainer, window=3, samples=(0, 1, 2, 3)):
    """ids [8, K] of 4 validation samples in one window, under a fixed pattern of every 3rd site."""
    retriever = trainer.retriever
    start, end = retriever.key_ranges[window]
    observed = np.zeros(end - start, dtype=bool)
    observed[::3] = True
    tokens = trainer.data.val_haplotypes_T[:2 * len(samples), start:end].astype(np.int64)
    ids, _ = retriever.search(window, observed, tokens, np.repeat(trainer.data.val[list(samples)], 2))
    return ids.numpy()


def perturb(keys: LearnedKeys, seed=0):
    """A learned encoder that weighs sites differently from the decay (as training does)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        keys.encoder.slot_scale.copy_(torch.randn(keys.encoder.dim, generator=gen) * 2)


def test_learned_keys_change_the_ranking(cohort, tmp_path):
    trainer = tiny_trainer(cohort, tmp_path, "--refresh", "1")
    trainer.refresh("initial encoder")
    learned_at_start = neighbours(trainer)
    perturb(trainer.keys)
    trainer.refresh("learned")
    learned = neighbours(trainer)
    trainer.retriever.keys, trainer.keys = None, None
    trainer.refresh("L2 keys")
    l2 = neighbours(trainer)
    assert not np.array_equal(learned, l2)
    # the untrained encoder ranks as the L2 keys over its slots: mostly the same neighbours
    assert np.mean([len(set(a) & set(b)) for a, b in zip(learned_at_start, l2)]) >= 0.5 * l2.shape[1]


def test_training_learns_the_keys_and_a_refresh_changes_neighbours(cohort, tmp_path):
    trainer = tiny_trainer(cohort, tmp_path / "b", "--refresh", "100")   # option B, refreshed by hand here
    trainer.refresh("initial encoder")
    before = neighbours(trainer)
    weights = [p.detach().clone() for p in trainer.keys.encoder.parameters()]
    batches = trainer.train_batches()
    for index in range(3):
        trainer.train_step(batches[index])                                 # with the contrastive loss
    assert any(not torch.equal(a, b) for a, b in zip(weights, trainer.keys.encoder.parameters()))
    perturb(trainer.keys)                                                  # a few steps move little: make it visible
    assert np.array_equal(neighbours(trainer), before)                     # the index and queries: the snapshot
    trainer.refresh("step 3")
    assert not np.array_equal(neighbours(trainer), before)


def test_fixed_keys_keep_the_initial_reference_encoding(cohort, tmp_path):
    trainer = tiny_trainer(cohort, tmp_path, "--refresh", "fixed")       # option A
    trainer.refresh("initial encoder")
    tables = [t.clone() for t in trainer.retriever.encodings]
    before = neighbours(trainer)
    perturb(trainer.keys)
    trainer.refresh("fixed")
    assert all(torch.equal(a, b) for a, b in zip(tables, trainer.retriever.encodings))
    assert not np.array_equal(neighbours(trainer), before)                # queries are keyed live


def test_learned_keys_choose_templates_and_survive_the_checkpoint(cohort, tmp_path):
    history = train.main(["--panel", cohort["panel"], "--out", str(tmp_path), *TINY_TRAINING, "--templates", "20",
                          "--keys", "learned"])
    assert len(history) == 2 and np.isfinite(history[-1]["dosage_r2"])
    options = train.parse_options(["--resume", str(tmp_path), "--epochs", "2"])
    config, _, checkpoint = train.resumed_run(options)
    assert config.retrieval.keys == "learned" and checkpoint.keys is not None
    trainer = training.Trainer(config, str(tmp_path))
    trainer.load(checkpoint)
    assert trainer.predictor.keys is trainer.keys
    assert all(torch.equal(a, b) for a, b in zip(trainer.keys.snapshot.state_dict().values(),
                                                 checkpoint.keys["snapshot"].values()))


@pytest.mark.parametrize("place", ["faiss", "templates"])
def test_predictor_references_are_what_the_model_draws_on(cohort, tmp_path, place):
    """Predictor.references (what bench_keys.py scores): the FAISS neighbours under the
    batch's pattern over the key range, or the copying templates chosen over its context;
    never the query's own sample."""
    extra = ["--copying", "off"] if place == "faiss" else ["--templates", "12"]
    options = train.parse_options(["--panel", cohort["panel"], "--out", str(tmp_path), *TINY_TRAINING, *extra])
    trainer = training.Trainer(train.run_config(options), str(tmp_path))
    trainer.refresh("initial encoder")
    batch = trainer.train_batches()[0]
    window = int(trainer.spans[batch["span"]][0])
    ids = trainer.predictor.references(batch, window).numpy()                   # [2B, K]
    query_sample = batch["sample"].repeat_interleave(2).numpy()
    B = batch["tokens"].shape[0]
    if place == "faiss":   # L2 keys rank by decay-weighted mismatches at the observed sites of the key range
        key_start, key_end = trainer.retriever.key_ranges[window]
        sites = batch["context_sites"].numpy()
        inside = (sites >= key_start) & (sites < key_end)
        query = batch["context_tokens"].reshape(2 * B, -1).numpy()[:, inside]                 # [2B, n]
        scales = site_scales(trainer.data.windows[window], (key_start, key_end), trainer.config.retrieval.key_decay)
        weight = scales[sites[inside] - key_start] ** 2
        panel = trainer.data.ref_tokens_T[:, sites[inside]]                                   # [H, n]
        mismatches = ((panel[None] != query[:, None]) & (query[:, None] != MASK)) @ weight    # [2B, H]
        mismatches[np.arange(2 * B)[:, None], 2 * query_sample[:, None] + np.arange(2)] = np.inf   # own sample
        found = np.take_along_axis(mismatches, ids, 1)
        np.testing.assert_allclose(found, np.sort(mismatches, 1)[:, :4], rtol=1e-4)
    else:
        reference = trainer.data.reference
        query = batch["context_tokens"].reshape(2 * B, -1).to(torch.uint8)
        expected = select_templates(query, reference.site_alleles(batch["context_sites"]),
                                    reference.templates(torch.from_numpy(query_sample)), 12)
        np.testing.assert_array_equal(ids, expected.numpy())
        assert not (ids // 2 == query_sample[:, None]).any()
