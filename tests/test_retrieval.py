"""Retrieval: no leakage, observed sites only, h1/h2 separately, refresh; the same
search on every device present (torch tensors through FAISS), against NumPy."""
import faiss
import numpy as np
import pytest
import torch

from helpers import DEVICES
from embrag_ext import retrieval

from embrag_ext.panel import haplotype_columns
from embrag_ext.config import RunConfig
from embrag_ext.predict import PanelSites, Predictor, ReferencePanel
from embrag_ext.retrieval import Retriever, build_faiss_index, on_gpu, place_index, site_scales
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


def make_retriever(ref_tokens_T, k=5, factory="Flat", device="cpu", decay=0.0):
    retriever = Retriever(ref_tokens_T, np.array([[0, S]]), np.array([[0, S]]), k, decay=decay, factory=factory,
                          device=torch.device(device))
    retriever.refresh(random_encoder())
    return retriever


OBSERVED = np.zeros(L, dtype=bool)
OBSERVED[::3] = True


@pytest.mark.parametrize("device", DEVICES)
def test_own_sample_never_retrieved_but_a_planted_duplicate_is(panel_tokens, device):
    panel_tokens[30] = panel_tokens[6]           # sample 15 carries a copy of sample 3's h1
    retriever = make_retriever(panel_tokens, device=device)
    queries = torch.from_numpy(panel_tokens[[6, 7]]).long().to(device)
    # As a training query (sample 3 is in the panel): its own rows 6, 7 never come back.
    ids, dist = retriever.search(0, OBSERVED, queries, torch.tensor([3, 3], device=device))
    assert ids.device.type == dist.device.type == device
    ids, dist = ids.cpu(), dist.cpu()
    assert not np.isin(ids.numpy(), [6, 7]).any()
    assert ids[0, 0] == 30 and dist[0, 0] == 0
    # As a validation query (not in the panel) the exact copies are found first.
    ids, _ = retriever.search(0, OBSERVED, queries, torch.tensor([-1, -1], device=device))
    assert set(ids[0, :2].tolist()) == {6, 30} and ids[1, 0] == 7


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k, decay", [(1, 0.0), (7, 4.0), (H, 2.0)])
def test_search_matches_numpy_brute_force(panel_tokens, device, k, decay):
    """Returned distances are the decay-weighted mismatch counts over the observed
    sites, computed here in NumPy, and they are the k smallest (own sample left out)."""
    retriever = make_retriever(panel_tokens, k=k, device=device, decay=decay)
    retriever.scales = [torch.from_numpy(site_scales(np.array([10, 20]), np.array([0, S]), decay)).to(device)]
    queries = (np.random.default_rng(5).random((6, S)) < 0.4).astype(np.int64)
    queries[:2] = panel_tokens[[8, 9]]
    query_sample = np.array([4, 4, -1, -1, 7, -1])
    ids, dist = retriever.search(0, OBSERVED, torch.from_numpy(queries).to(device),
                                 torch.from_numpy(query_sample).to(device))
    ids, dist = ids.cpu().numpy(), dist.cpu().numpy()
    weights = site_scales(np.array([10, 20]), np.array([0, S]), decay)[OBSERVED] ** 2                # [n]
    mismatch = (queries[:, None, OBSERVED] != panel_tokens[None, :, OBSERVED]) @ weights             # [Q, H]
    for q, sample in enumerate(query_sample):
        allowed = mismatch[q].copy()
        if sample >= 0:
            allowed[[2 * sample, 2 * sample + 1]] = np.inf
        expected = np.sort(allowed)[:k]
        found = ids[q][ids[q] >= 0]
        np.testing.assert_allclose(dist[q][:len(found)], mismatch[q, found], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.sort(dist[q][:len(found)]), expected[np.isfinite(expected)], rtol=1e-4, atol=1e-4)
        assert sample < 0 or not np.isin(found, [2 * sample, 2 * sample + 1]).any()
    assert (ids[:2] >= 0).sum(1).tolist() == [min(k, H - 2)] * 2     # a panel query: K of the other 38


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("factory", ["HNSW8", "IVF1,Flat"])
def test_approximate_index_reports_recall(panel_tokens, device, factory):
    retriever = make_retriever(panel_tokens, factory=factory, device=device)
    ids, _ = retriever.search(0, OBSERVED, torch.from_numpy(panel_tokens[:6]).to(device), torch.arange(6) // 2)
    assert ids.device.type == device and (ids >= 0).all()
    assert (1.0 if factory.startswith("IVF1") else 0.5) <= retriever.recall() <= 1.0   # one cell: exact
    assert make_retriever(panel_tokens, device=device).recall() is None


def test_a_cpu_run_keeps_the_index_on_the_cpu():
    index = faiss.IndexFlatL2(4)
    assert place_index(index, torch.device("cpu")) is index and not on_gpu(index)


def test_a_cuda_run_puts_the_index_on_its_gpu_or_says_why_not(monkeypatch, capsys):
    """The CUDA branch, on any machine: with faiss-gpu the index moves to the device's GPU;
    with faiss-cpu (here) it stays on the CPU and one warning names the install command."""
    monkeypatch.setattr(retrieval, "_warned", set())
    index = place_index(faiss.IndexFlatL2(4), torch.device("cuda"))
    assert on_gpu(index) == retrieval.faiss_has_gpus()
    if not retrieval.faiss_has_gpus():
        place_index(faiss.IndexFlatL2(4), torch.device("cuda:0"))
        warning = capsys.readouterr().err
        assert warning.count("warning:") == 1 and retrieval.FAISS_GPU_INSTALL in warning


def test_the_gpu_copy_is_made_on_the_device_ordinal_and_falls_back_for_cpu_only_types(monkeypatch, capsys):
    """What place_index asks of faiss-gpu (recorded by stand-ins): a copy on GPU 1 for
    cuda:1, with that GPU's resources; an index type with no GPU form stays on the CPU."""
    calls = []

    def index_cpu_to_gpu(resources, ordinal, index):
        calls.append((resources, ordinal))
        if isinstance(index, faiss.IndexHNSWFlat):
            raise RuntimeError("Error in faiss::gpu::GpuClonerOptions: could not clone HNSW")
        return "gpu index"

    monkeypatch.setattr(retrieval, "faiss_has_gpus", lambda: True)
    monkeypatch.setattr(retrieval, "_gpu_resources", {})
    monkeypatch.setattr(retrieval, "_warned", set())
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: "resources of a GPU", raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", index_cpu_to_gpu, raising=False)
    assert place_index(faiss.IndexFlatL2(4), torch.device("cuda:1"), "Flat") == "gpu index"
    hnsw = faiss.index_factory(4, "HNSW8")
    assert place_index(hnsw, torch.device("cuda:1"), "HNSW8") is hnsw
    assert calls == [("resources of a GPU", 1)] * 2
    assert "FAISS index 'HNSW8' searches on the CPU" in capsys.readouterr().err


@pytest.mark.parametrize("device", DEVICES)
def test_an_index_built_on_device_keys_searches_like_numpy(device):
    keys = torch.randn(50, 12, generator=torch.Generator().manual_seed(3))
    index = build_faiss_index("Flat", keys.to(device))
    dist, ids = retrieval.search_index(index, keys[:5].to(device), 3)
    assert dist.device.type == ids.device.type == device
    expected = ((keys[:5, None] - keys[None]) ** 2).sum(-1).topk(3, largest=False)
    torch.testing.assert_close(dist.cpu(), expected.values, rtol=1e-4, atol=1e-4)
    assert torch.equal(ids.cpu()[:, 0], torch.arange(5))


@pytest.mark.parametrize("device", DEVICES)
def test_stored_encodings_load_on_any_device_and_from_numpy(panel_tokens, device):
    """state_dict holds CPU tensors (a checkpoint loads anywhere); a 0.1 checkpoint's numpy arrays load too."""
    source = make_retriever(panel_tokens)
    state = source.state_dict()
    assert all(table.device.type == "cpu" for table in state["encodings"])
    for stored in (state, {"encodings": [table.numpy() for table in state["encodings"]]}):
        loaded = make_retriever(panel_tokens, device=device)
        loaded.load_state_dict(stored)
        assert loaded.encodings[0].device.type == device
        assert torch.equal(loaded.encodings[0].cpu(), source.encodings[0])


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


@pytest.mark.parametrize("device", DEVICES)
def test_absent_haplotypes_are_never_retrieved(panel_tokens, device):
    """Haploid samples' second rows (all MASK) are left out of the index; ids stay panel rows."""
    present = np.ones(H, dtype=bool)
    present[1::4] = False                        # samples 0, 2, 4, ... are haploid
    panel_tokens[~present] = MASK
    retriever = Retriever(panel_tokens, np.array([[0, S]]), np.array([[0, S]]), 8, present=present,
                          device=torch.device(device))
    retriever.refresh(random_encoder())
    queries = np.full((2, S), MASK, dtype=np.int64)          # queries close to an all-MASK row
    queries[1] = panel_tokens[2]
    ids, _ = retriever.search(0, OBSERVED, torch.from_numpy(queries).to(device), torch.tensor([-1, 1], device=device))
    ids = ids.cpu()
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
