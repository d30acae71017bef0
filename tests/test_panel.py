"""Reference panel loading, its cache, and bad panel input."""
import gzip
import os
import warnings

import numpy as np
import pytest

from helpers import record
from embrag_ext import panel_cache
from embrag_ext.errors import InputError
from embrag_ext.panel import DELETION, INSERTION, OTHER, SNP
from embrag_ext.panel_vcf import load_panel
from embrag_ext.tokens import MASK
from embrag_ext.vcf_writer import write_phased_vcf

pytestmark = pytest.mark.usefixtures("isolated_cache")


def test_hand_written_panel_fields(make_vcf):
    path = make_vcf("p.vcf", [record(100, "A", "G", "0|1", "1|1"),
                              record(200, "C", "CTT", "1|0", "0|0"),
                              record(300, "GA", "G", "0|0", "0|1"),
                              record(400, "AC", "GT", "1|1", "1|0"),
                              record(500, "A", "<DEL>", "0|0", "0|1")])
    panel = load_panel(path)
    assert panel.chrom == "1" and panel.samples == ["s1", "s2"] and panel.source == path
    assert panel.positions.dtype == np.int64 and panel.positions.tolist() == [100, 200, 300, 400, 500]
    assert panel.ref.tolist() == ["A", "C", "GA", "AC", "A"]
    assert panel.alt.tolist() == ["G", "CTT", "G", "GT", "<DEL>"]
    # columns: s1-hap1, s1-hap2, s2-hap1, s2-hap2
    assert panel.haplotypes.dtype == np.uint8
    assert panel.haplotypes.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 0], [0, 0, 0, 1]]
    assert panel.af.dtype == np.float32
    np.testing.assert_allclose(panel.af, [0.75, 0.25, 0.25, 0.75, 0.25])
    np.testing.assert_allclose(panel.maf, [0.25, 0.25, 0.25, 0.25, 0.25])
    assert panel.variant_type.tolist() == [SNP, INSERTION, DELETION, OTHER, OTHER]
    assert (panel.n_sites, panel.n_haplotypes) == (5, 4)


@pytest.mark.parametrize("suffix", [".vcf.gz", ".bcf", ".vcf"])
def test_formats_round_trip(tmp_path, random_panel, suffix):
    _, haplotypes = random_panel
    path = str(tmp_path / f"copy{suffix}")
    write_phased_vcf(path, "1", np.arange(1, 41) * 100, ["A"] * 40, ["C"] * 40,
                     [f"p{i}" for i in range(6)], haplotypes)
    np.testing.assert_array_equal(load_panel(path, use_cache=False).haplotypes, haplotypes)


def test_region_with_and_without_index(tmp_path, random_panel):
    indexed, haplotypes = random_panel
    plain = str(tmp_path / "plain.vcf")
    write_phased_vcf(plain, "1", np.arange(1, 41) * 100, ["A"] * 40, ["C"] * 40,
                     [f"p{i}" for i in range(6)], haplotypes)
    for path in (indexed, plain):
        panel = load_panel(path, region="1:250-600")
        assert panel.positions.tolist() == [300, 400, 500, 600]
        np.testing.assert_array_equal(panel.haplotypes, haplotypes[2:6])


def test_multiallelic_skip_warns_and_split(make_vcf):
    path = make_vcf("m.vcf", [record(100, "A", "G,T", "0|1", "2|1"), record(200, "C", "T", "0|1", "1|1")])
    with pytest.warns(UserWarning, match=r"skipped 1 multi-allelic .*multiallelic='split'"):
        skipped = load_panel(path)
    assert skipped.positions.tolist() == [200]
    split = load_panel(path, multiallelic="split")
    assert split.positions.tolist() == [100, 100, 200]
    assert split.alt.tolist() == ["G", "T", "T"]
    # the other ALT allele counts as REF at each split site
    assert split.haplotypes.tolist() == [[0, 1, 0, 1], [0, 0, 1, 0], [0, 1, 1, 1]]


@pytest.mark.parametrize("genotype, problem", [("0/1", "unphased"), (".|1", "missing"), ("./.", "missing"),
                                               ("0/.", "unphased half-missing"), (".", "missing")])
def test_bad_genotype_names_record_and_sample(make_vcf, genotype, problem):
    path = make_vcf("bad.vcf", [record(100, "A", "G", "0|1", "1|1"), record(200, "C", "T", "0|1", genotype)])
    with pytest.raises(InputError, match=rf"bad\.vcf: record 1:200: {problem} genotype for sample s2") as caught:
        load_panel(path)
    assert "\n" not in str(caught.value)
    with pytest.warns(UserWarning, match="dropped 1 sites"):
        panel = load_panel(path, drop_bad_sites=True)
    assert panel.positions.tolist() == [100]


def test_phase_free_homozygotes_are_accepted(make_vcf):
    path = make_vcf("hom.vcf", [record(100, "A", "G", "0/0", "1|0"), record(200, "C", "T", "1/1", "0/0")])
    assert load_panel(path).haplotypes.tolist() == [[0, 0, 1, 0], [1, 1, 0, 0]]


def test_haploid_and_mixed_ploidy_panel(make_vcf):
    path = make_vcf("x.vcf", [record(100, "A", "G", "1", "0|1", "0"), record(200, "C", "T", "0", "1|1", "1")],
                    samples=("m1", "f1", "m2"))
    panel = load_panel(path)
    assert panel.ploidy.tolist() == [1, 2, 1]
    M = MASK
    assert panel.haplotypes.tolist() == [[1, M, 0, 1, 0, M], [0, M, 1, 1, 1, M]]
    assert panel.present_haplotypes().tolist() == [True, False, True, True, True, False]
    np.testing.assert_allclose(panel.af, [0.5, 0.75])        # over the 4 present alleles
    cached = load_panel(path)
    assert cached.ploidy.tolist() == [1, 2, 1] and isinstance(cached.haplotypes, np.memmap)
    subset = panel.subset_samples([2, 1])
    assert subset.ploidy.tolist() == [1, 2] and subset.haplotypes.tolist() == [[0, M, 0, 1], [1, M, 1, 1]]
    np.testing.assert_allclose(subset.af, [1 / 3, 1.0])
    split = make_vcf("xm.vcf", [record(100, "A", "G,T", "2", "0|1")], samples=("m1", "f1"))
    assert load_panel(split, multiallelic="split").haplotypes.tolist() == [[0, M, 0, 1], [1, M, 0, 0]]


def test_ploidy_must_not_change_along_a_sample(make_vcf):
    path = make_vcf("par.vcf", [record(100, "A", "G", "1|0", "0|1"), record(200, "C", "T", "0", "1|1")])
    with pytest.raises(InputError, match=r"par\.vcf: record 1:200: sample s1 has a haploid call here and diploid "
                                         r"calls before: .*--region"):
        load_panel(path)


def test_several_contigs_need_a_region(make_vcf):
    path = make_vcf("two.vcf", [record(100, "A", "G", "0|1", "1|1"), record(50, "A", "G", "0|1", "1|1", chrom="2")])
    with pytest.raises(InputError, match=r"contigs \(1, 2.*--region"):
        load_panel(path)
    assert load_panel(path, region="2").positions.tolist() == [50]


def test_af_from_file_and_info(make_vcf, tmp_path):
    path = make_vcf("p.vcf", [record(100, "A", "G", "0|1", "1|1", info="AF=0.1"),
                              record(200, "C", "T", "0|0", "1|1", info="AF=0.2")])
    af_file = tmp_path / "af.txt"
    af_file.write_text("#CHROM POS REF ALT AF\n1\t100\tA\tG\t0.3\n1\t200\tC\tT\t0.4\n")
    np.testing.assert_allclose(load_panel(path, af_file=str(af_file)).af, [0.3, 0.4])
    from_info = load_panel(path, af_from_info=True)
    np.testing.assert_allclose(from_info.af, [0.1, 0.2])
    # subset keeps an AF that was not computed from the panel, recomputes one that was
    np.testing.assert_allclose(from_info.subset_samples([1]).af, [0.1, 0.2])
    np.testing.assert_allclose(load_panel(path).subset_samples([1]).af, [1.0, 1.0])
    af_file.write_text("1\t100\tA\tG\t0.3\n")
    with pytest.raises(InputError, match=r"af\.txt: no frequency for 1 sites, the first at 200 C>T"):
        load_panel(path, af_file=str(af_file))


def test_subset_samples_takes_both_haplotype_columns(random_panel):
    path, haplotypes = random_panel
    subset = load_panel(path).subset_samples([4, 1])
    assert subset.samples == ["p4", "p1"]
    np.testing.assert_array_equal(subset.haplotypes, haplotypes[:, [8, 9, 2, 3]])
    np.testing.assert_allclose(subset.af, haplotypes[:, [8, 9, 2, 3]].mean(axis=1))


def test_cache_reload_is_memory_mapped_and_equal(random_panel, isolated_cache):
    path, haplotypes = random_panel
    first = load_panel(path)
    second = load_panel(path)
    assert isinstance(second.haplotypes, np.memmap) and not isinstance(first.haplotypes, np.memmap)
    for name in ("positions", "ref", "alt", "haplotypes", "af", "variant_type"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert (second.chrom, second.samples, second.source) == (first.chrom, first.samples, first.source)
    entries = os.listdir(isolated_cache / "panels")
    assert len(entries) == 1 and not entries[0].startswith(".tmp")


def test_cache_is_never_stale(tmp_path, random_panel):
    """A rewritten VCF of the same size (plain text, alleles swapped) is parsed again."""
    _, haplotypes = random_panel
    path = str(tmp_path / "same_size.vcf")
    for content in (haplotypes, 1 - haplotypes):
        previous = os.stat(path) if os.path.exists(path) else None
        write_phased_vcf(path, "1", np.arange(1, 41) * 100, ["A"] * 40, ["C"] * 40,
                         [f"p{i}" for i in range(6)], content)
        if previous is not None:
            assert os.stat(path).st_size == previous.st_size
            os.utime(path, ns=(previous.st_atime_ns, previous.st_mtime_ns + 1))  # within one clock tick
        np.testing.assert_array_equal(load_panel(path).haplotypes, content)


def test_cache_key_depends_on_options(make_vcf):
    path = make_vcf("m.vcf", [record(100, "A", "G,T", "0|1", "2|1"), record(200, "C", "T", "0|1", "1|1")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_panel(path)
    assert load_panel(path, multiallelic="split").n_sites == 3
    with pytest.warns(UserWarning, match="skipped 1 multi-allelic"):  # the warning survives caching
        assert load_panel(path).n_sites == 1


def test_cache_entry_written_atomically(tmp_path):
    entry = tmp_path / "entry"
    panel_cache.write_entry(entry, {"x": np.arange(3)}, {"note": 1})
    arrays, meta = panel_cache.read_entry(entry)
    assert arrays["x"].tolist() == [0, 1, 2] and meta["note"] == 1
    assert sorted(os.listdir(tmp_path)) == ["entry"]
    assert panel_cache.read_entry(tmp_path / "absent") is None


# --- bad input: one-line InputError naming the file (and record) ---

def test_not_a_vcf(tmp_path):
    path = tmp_path / "notes.vcf"
    path.write_text("hello\n")
    with pytest.raises(InputError, match=r"notes\.vcf: not a VCF/BCF file"):
        load_panel(str(path))


def test_not_a_vcf_gzipped(tmp_path):
    path = tmp_path / "notes.vcf.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("hello\n")
    with pytest.raises(InputError, match=r"notes\.vcf\.gz: not a VCF/BCF file"):
        load_panel(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"absent\.vcf: no such file"):
        load_panel(str(tmp_path / "absent.vcf"))


@pytest.mark.parametrize("keep_fraction", [0.5, 0.97])
def test_truncated_bgzip(random_panel, tmp_path, keep_fraction):
    path, _ = random_panel
    data = open(path, "rb").read()
    truncated = tmp_path / "cut.vcf.gz"
    truncated.write_bytes(data[: int(len(data) * keep_fraction)])
    with pytest.raises(InputError, match=r"cut\.vcf\.gz: truncated"):
        load_panel(str(truncated))


def test_corrupt_block_after_header(random_panel, tmp_path):
    """A complete bgzip stream whose records are damaged is reported, not read as shorter."""
    path, _ = random_panel
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2: len(data) // 2 + 40] = b"\0" * 40
    corrupt = tmp_path / "corrupt.vcf.gz"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"corrupt\.vcf\.gz: (cannot read|truncated)"):
        load_panel(str(corrupt))


def test_unsorted_positions(make_vcf):
    path = make_vcf("u.vcf", [record(200, "A", "G", "0|1", "1|1"), record(100, "C", "T", "0|1", "1|1")])
    with pytest.raises(InputError, match=r"u\.vcf: record 1:100 comes after 1:200: positions are not sorted"):
        load_panel(path)


def test_duplicate_records(make_vcf):
    path = make_vcf("d.vcf", [record(100, "A", "G", "0|1", "1|1"), record(100, "A", "G", "0|0", "1|1")])
    with pytest.raises(InputError, match=r"d\.vcf: duplicate record 1:100 A>G"):
        load_panel(path)


def test_duplicate_sample_names(make_vcf):
    path = make_vcf("s.vcf", [record(100, "A", "G", "0|1", "1|1")], samples=("x", "x"))
    with pytest.raises(InputError, match=r"s\.vcf: duplicate sample name 'x'"):
        load_panel(path)


def test_region_with_no_records(random_panel, make_vcf):
    path, _ = random_panel
    with pytest.raises(InputError, match=r"panel\.vcf\.gz: no usable sites in region 1:9000-9999"):
        load_panel(path, region="1:9000-9999")
    with pytest.raises(InputError, match=r"no usable sites in region 7"):
        load_panel(path, region="7")
    with pytest.raises(InputError, match=r"region 'chr1:x': expected CHROM or CHROM:START-END"):
        load_panel(path, region="chr1:x")


def test_empty_after_filtering(make_vcf):
    path = make_vcf("e.vcf", [record(100, "A", "G,T", "0|1", "2|1")])
    with pytest.raises(InputError, match=r"e\.vcf: no usable sites \(1 multi-allelic, 0 with missing"):
        load_panel(path)
