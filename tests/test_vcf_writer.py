"""Imputed VCF output: content, round trip, bcftools, atomic writes."""
import os
import shutil
import subprocess

import numpy as np
import pytest

from embrag_ext import vcf_writer
from embrag_ext.errors import InputError
from embrag_ext.panel_vcf import load_panel
from embrag_ext.tokens import MASK
from embrag_ext.vcf_io import read_imputed
from embrag_ext.vcf_writer import estimated_dosage_r2, write_imputed_vcf

pytestmark = pytest.mark.usefixtures("isolated_cache")

SAMPLES = ["t1", "t2", "t3"]


@pytest.fixture
def panel(random_panel):
    return load_panel(random_panel[0])


@pytest.fixture
def out_dir(tmp_path):
    """An empty directory for outputs (tmp_path also holds the panel and cache)."""
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


@pytest.fixture
def alt_prob(panel):
    """float32 [40, 6] P(ALT) per haplotype, 3 decimals (exact after writing)."""
    rng = np.random.default_rng(1)
    return np.round(rng.random((panel.n_sites, 2 * len(SAMPLES))), 3).astype(np.float32)


def test_estimated_dosage_r2_by_hand():
    # one site, two genotypes: GP (0.5, 0.5, 0) and (0, 0, 1): doses 0.5 and 2, E[X^2] 0.5 and 4.
    # sum d = 2.5, sum d^2 = 4.25, sum E[X^2] = 4.5; (4.25 - 3.125) / (4.5 - 3.125) = 1.125 / 1.375
    gp = np.array([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])
    np.testing.assert_allclose(estimated_dosage_r2(gp), [1.125 / 1.375], rtol=1e-6)
    hard = np.array([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]])
    np.testing.assert_allclose(estimated_dosage_r2(hard), [1.0])
    monomorphic = np.array([[[1.0, 0, 0], [1.0, 0, 0]]])
    np.testing.assert_allclose(estimated_dosage_r2(monomorphic), [0.0])


@pytest.mark.parametrize("suffix, index", [(".vcf.gz", ".tbi"), (".bcf", ".csi"), (".vcf", None)])
def test_round_trip(out_dir, panel, alt_prob, suffix, index):
    out = str(out_dir / f"imputed{suffix}")
    typed = np.arange(panel.n_sites) % 4 == 0
    write_imputed_vcf(out, panel, SAMPLES, alt_prob, typed=typed)
    assert index is None or os.path.exists(out + index)
    calls = read_imputed(out)
    assert calls.positions.tolist() == panel.positions.tolist() and calls.samples == SAMPLES
    np.testing.assert_allclose(calls.dosage, alt_prob[:, 0::2] + alt_prob[:, 1::2], atol=1.5e-3)
    np.testing.assert_array_equal(calls.haplotypes, (alt_prob > 0.5).astype(np.uint8))
    assert calls.phased and calls.imputed.tolist() == (~typed).tolist()
    assert calls.ref.tolist() == panel.ref.tolist() and calls.alt.tolist() == panel.alt.tolist()
    assert sorted(os.listdir(out_dir)) == sorted(["imputed" + suffix] + ([f"imputed{suffix}{index}"] if index else []))


def test_typed_alleles_are_kept(out_dir, panel, alt_prob):
    typed = np.zeros(panel.n_sites, dtype=bool)
    typed[[0, 5]] = True
    given = np.full(alt_prob.shape, MASK, dtype=np.uint8)
    given[0] = [1, 0, 0, 0, 1, 1]
    given[5] = [0, 1, MASK, MASK, 1, 0]   # sample t2 missing at site 5: imputed value stays
    given[7] = [1, 1, 1, 1, 1, 1]          # not a typed site: ignored
    out = str(out_dir / "typed.vcf.gz")
    write_imputed_vcf(out, panel, SAMPLES, alt_prob, typed=typed, typed_haplotypes=given)
    calls = read_imputed(out)
    dosage, haplotypes = calls.dosage, calls.haplotypes
    assert haplotypes[0].tolist() == [1, 0, 0, 0, 1, 1] and dosage[0].tolist() == [1, 0, 2]
    assert haplotypes[5, [0, 1, 4, 5]].tolist() == [0, 1, 1, 0]
    np.testing.assert_allclose(dosage[5, 1], alt_prob[5, 2] + alt_prob[5, 3], atol=1.5e-3)
    np.testing.assert_array_equal(haplotypes[7], alt_prob[7] > 0.5)


@pytest.mark.skipif(shutil.which("bcftools") is None, reason="bcftools is not installed (CI installs it)")
def test_bcftools_reads_it(out_dir, panel, alt_prob):
    out = str(out_dir / "imputed.vcf.gz")
    typed = np.arange(panel.n_sites) % 4 == 0
    write_imputed_vcf(out, panel, SAMPLES, alt_prob, typed=typed)
    subprocess.run(["bcftools", "view", "-h", out], check=True, capture_output=True)
    query = subprocess.run(["bcftools", "query", "-r", "1:100-4000",
                            "-f", r"%POS\t%INFO/AF\t%INFO/DR2\t%INFO/IMP[\t%GT\t%DS\t%GP]\n", out],
                           check=True, capture_output=True, text=True).stdout.splitlines()
    assert len(query) == panel.n_sites
    p1, p2 = alt_prob[:, 0::2].astype(np.float64), alt_prob[:, 1::2].astype(np.float64)
    gp = np.stack([(1 - p1) * (1 - p2), p1 * (1 - p2) + (1 - p1) * p2, p1 * p2], axis=-1)
    for site, line in enumerate(query):
        fields = line.split("\t")
        assert int(fields[0]) == panel.positions[site]
        assert float(fields[1]) == pytest.approx((p1[site] + p2[site]).mean() / 2, abs=2e-3)
        assert fields[3] == ("." if typed[site] else "1")
        for sample in range(len(SAMPLES)):
            gt, ds, gp_text = fields[4 + 3 * sample: 7 + 3 * sample]
            assert gt == f"{int(p1[site, sample] > 0.5)}|{int(p2[site, sample] > 0.5)}"
            assert float(ds) == pytest.approx(p1[site, sample] + p2[site, sample], abs=1.5e-3)
            np.testing.assert_allclose([float(v) for v in gp_text.split(",")], gp[site, sample], atol=1.5e-3)
    dr2 = np.array([float(line.split("\t")[2]) for line in query])
    np.testing.assert_allclose(dr2, estimated_dosage_r2(np.round(gp, 3)), atol=6e-3)


def test_header_lines(out_dir, panel, alt_prob):
    out = str(out_dir / "imputed.vcf")
    write_imputed_vcf(out, panel, SAMPLES, alt_prob)
    header = [line for line in open(out) if line.startswith("##")]
    assert "##source=embrag_ext\n" in header
    for tag in ("INFO=<ID=AF,", "INFO=<ID=DR2,", "INFO=<ID=IMP,Number=0,Type=Flag", "FORMAT=<ID=GT,",
                "FORMAT=<ID=DS,Number=A,Type=Float", "FORMAT=<ID=GP,Number=G,Type=Float"):
        assert any(line.startswith("##" + tag) for line in header), tag


def test_failed_write_leaves_nothing(out_dir, panel, alt_prob, monkeypatch):
    out = str(out_dir / "imputed.vcf.gz")
    monkeypatch.setattr(vcf_writer, "_sample_columns", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_imputed_vcf(out, panel, SAMPLES, alt_prob)
    assert os.listdir(out_dir) == []


def test_bad_arguments(out_dir, panel, alt_prob):
    with pytest.raises(InputError, match=r"imputed\.txt: output name must end in \.vcf\.gz"):
        write_imputed_vcf(str(out_dir / "imputed.txt"), panel, SAMPLES, alt_prob)
    with pytest.raises(InputError, match="output directory .* does not exist"):
        write_imputed_vcf(str(out_dir / "no" / "imputed.vcf.gz"), panel, SAMPLES, alt_prob)
    with pytest.raises(ValueError, match=r"alt_prob shape \(40, 6\) != \(panel sites 40, 2 \* samples 4\)"):
        write_imputed_vcf(str(out_dir / "imputed.vcf.gz"), panel, SAMPLES[:2], alt_prob)
    with pytest.raises(InputError, match="duplicates"):
        write_imputed_vcf(str(out_dir / "imputed.vcf.gz"), panel, ["a", "a", "b"], alt_prob)
    assert os.listdir(out_dir) == []


def test_typed_and_imputed_flags(out_dir, panel, alt_prob):
    out = str(out_dir / "flags.vcf")
    typed = np.arange(panel.n_sites) % 4 == 0
    write_imputed_vcf(out, panel, SAMPLES, alt_prob, typed=typed)
    infos = [line.split("\t")[7] for line in open(out) if not line.startswith("#")]
    assert [info.endswith(";TYPED") for info in infos] == typed.tolist()
    assert [info.endswith(";IMP") for info in infos] == (~typed).tolist()
    assert any(line.startswith("##INFO=<ID=TYPED,Number=0,Type=Flag") for line in open(out))


def test_mixed_ploidy_is_written_haploid_and_diploid(out_dir, panel, alt_prob):
    """Sample t2 is haploid: GT 0/1, DS = p, two GP values, from its first column only."""
    ploidy = np.array([2, 1, 2], dtype=np.uint8)
    out = str(out_dir / "x.vcf.gz")
    written = write_imputed_vcf(out, panel, SAMPLES, alt_prob, ploidy=ploidy)
    quality = written.quality
    assert (written.status == "PASS").all()
    calls = read_imputed(out)
    assert calls.haploid[:, 1].all() and not calls.haploid[:, [0, 2]].any()
    np.testing.assert_array_equal(calls.haplotypes[:, 2], alt_prob[:, 2] > 0.5)
    assert (calls.haplotypes[:, 3] == MASK).all()
    np.testing.assert_allclose(calls.dosage[:, 1], alt_prob[:, 2], atol=1e-6)
    first = [line.rstrip("\n").split("\t") for line in __import__("gzip").open(out, "rt") if not line.startswith("#")][0]
    p = alt_prob[0, 2]
    assert first[10] == f"{int(p > 0.5)}:{vcf_writer._number(p)}:{vcf_writer._number(1 - p)},{vcf_writer._number(p)}"
    present = alt_prob[:, [0, 1, 2, 4, 5]].astype(np.float64)
    np.testing.assert_allclose(quality.alt_freq, present.mean(axis=1), atol=1e-6)
    # DR2 with a haploid genotype: dose p, E[X^2] p
    dose = np.stack([alt_prob[:, 0] + alt_prob[:, 1], alt_prob[:, 2], alt_prob[:, 4] + alt_prob[:, 5]], axis=1)
    square = dose + np.stack([2 * alt_prob[:, 0] * alt_prob[:, 1], 0 * dose[:, 1], 2 * alt_prob[:, 4] * alt_prob[:, 5]], 1)
    mean_term = dose.sum(1) ** 2 / 3
    expected = np.maximum((dose ** 2).sum(1) - mean_term, 0) / (square.sum(1) - mean_term)
    np.testing.assert_allclose(quality.dr2, expected, atol=1e-5)
    if shutil.which("bcftools"):
        gp = subprocess.run(["bcftools", "query", "-f", "[%GP\t]\n", out], capture_output=True, text=True,
                            check=True).stdout.splitlines()[0].split("\t")
        assert len(gp[0].split(",")) == 3 and len(gp[1].split(",")) == 2


def test_site_filter_and_info_file(out_dir, panel, alt_prob):
    typed = np.zeros(panel.n_sites, dtype=bool)
    typed[10:20] = True
    positions = panel.positions                                   # 100, 200, ..., 4000
    quality = vcf_writer.site_quality(alt_prob, np.full(3, 2))
    status = vcf_writer.site_filter(typed, quality.dr2, positions, min_dr2=0.5,
                                    impute_span=(int(positions[10]) - 500, int(positions[19]) + 500))
    outside = (positions < positions[10] - 500) | (positions > positions[19] + 500)
    assert (status[outside] == vcf_writer.OUTSIDE_SPAN).all() and not typed[outside].any()
    assert (status[typed] == "PASS").all()
    low = ~typed & ~outside & (quality.dr2 < 0.5)
    assert (status[low] == "DR2<0.5").all() and ((status == "PASS") == (typed | (~outside & ~low))).all()
    out = str(out_dir / "filtered.vcf.gz")
    written = write_imputed_vcf(out, panel, SAMPLES, alt_prob, typed=typed, min_dr2=0.5,
                                impute_span=(int(positions[10]) - 500, int(positions[19]) + 500))
    assert written.status.tolist() == status.tolist()
    assert read_imputed(out).positions.tolist() == positions[status == "PASS"].tolist()
    rows = [line.split("\t") for line in vcf_writer.info_file_text(panel, written).splitlines()]
    assert rows[0] == ["SNP", "REF(0)", "ALT(1)", "ALT_Frq", "MAF", "AvgCall", "Rsq", "Genotyped", "DR2", "Filter"]
    assert len(rows) == panel.n_sites + 1
    site = 12
    p = alt_prob[site].astype(np.float64)
    freq = p.mean()
    assert rows[1 + site][:3] == [f"1:{positions[site]}:A:C", "A", "C"]
    assert [float(v) for v in rows[1 + site][3:7]] == pytest.approx(
        [freq, min(freq, 1 - freq), np.maximum(p, 1 - p).mean(), p.var() / (freq * (1 - freq))], abs=6e-6)
    assert rows[1 + site][7:] == ["Genotyped", f"{quality.dr2[site]:.2f}", "PASS"]
    first_outside = int(np.flatnonzero(outside)[0])
    assert rows[1 + first_outside][3:] == ["-", "-", "-", "-", "Imputed", "-", vcf_writer.OUTSIDE_SPAN]


def test_phased_writer_haploid_and_unphased(out_dir):
    out = str(out_dir / "gt.vcf")
    haplotypes = np.array([[0, 1, 1, MASK], [1, 1, 0, MASK]], dtype=np.uint8)
    vcf_writer.write_phased_vcf(out, "X", np.array([5, 9]), ["A", "C"], ["G", "T"], ["f", "m"], haplotypes,
                                ploidy=np.array([2, 1]), unphased=True)
    body = [line.rstrip("\n").split("\t")[9:] for line in open(out) if not line.startswith("#")]
    assert body == [["0/1", "1"], ["1/1", "0"]]
    calls = read_imputed(out)
    assert not calls.phased                                       # 0/1 unphased: phase unknown
    assert calls.haploid.tolist() == [[False, True], [False, True]]
