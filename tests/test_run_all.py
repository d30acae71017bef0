"""benchmarks/run_all.py: its section list and the protocol every section follows,
checked with fake sections (no benchmark runs here; timings are never asserted)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name):
    """A module of benchmarks/ (which is not a package), with benchmarks/ importable as its scripts expect."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module   # dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


run_all = load("run_all")

FAKE_SECTION = '''
import argparse, sys
from pathlib import Path
p = argparse.ArgumentParser()
p.add_argument("--quick", action="store_true")
p.add_argument("--markdown")
p.add_argument("--flag")
args = p.parse_args()
out = Path(args.markdown)
(out.parent / "fake_plot.png").write_bytes(b"png")
out.write_text("## A fake section\\n\\nquick=%s flag=%s ![plot](fake_plot.png) [web](https://example.org)\\n"
               % (args.quick, args.flag))
'''


@pytest.fixture
def fakes(tmp_path):
    """A benchmarks folder with a good section, one that breaks the protocol and one that fails."""
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "bench_fake.py").write_text(FAKE_SECTION)
    (folder / "bench_headless.py").write_text(FAKE_SECTION.replace("## A fake", "A fake"))
    (folder / "bench_broken.py").write_text("raise SystemExit(3)\n")
    return folder


def test_sections_run_in_order_with_notes_for_missing_and_failed(fakes, tmp_path):
    sections = (run_all.Section("fake", "bench_fake.py", "a fake", full=("--flag", "{results}/x"), quick=("--quick",)),
                run_all.Section("missing", "bench_missing.py", "a section not in this checkout"),
                run_all.Section("headless", "bench_headless.py", "no heading"),
                run_all.Section("broken", "bench_broken.py", "a failing section"))
    page = tmp_path / "out" / "RESULTS.md"
    status = run_all.main(["--out", str(page)], sections=sections, benchmarks=fakes)
    text = page.read_text()
    assert status == 1                                           # a section failed
    assert text.startswith("# embrag_ext: benchmark results")
    for fact in ("CPU", "memory", "GPU", "torch", "faiss", "embrag_ext build", "beagle", "minimac4"):
        assert f"| {fact} |" in text
    assert "python benchmarks/run_all.py --out" in text
    assert f"flag={tmp_path / 'out' / 'results'}/x" in text     # the full arguments, {results} filled in
    assert "quick=False" in text
    assert "![plot](results/fake_plot.png)" in text             # relative to the page now
    assert "(https://example.org)" in text                      # absolute links untouched
    assert "*Skipped: `" in text and "bench_missing.py` (a section not in this checkout)" in text
    assert "wrote no section starting with a `##` heading" in text
    assert "exited with status 3" in text
    order = [text.index(marker) for marker in ("## A fake section", "## A section not", "## No heading",
                                               "## A failing section")]
    assert order == sorted(order)
    assert "| fake | ok |" in text and "| missing | skipped |" in text and "| broken | failed |" in text


def test_quick_and_selected_sections(fakes, tmp_path):
    sections = (run_all.Section("fake", "bench_fake.py", "a fake"),
                run_all.Section("broken", "bench_broken.py", "a failing section"))
    page = tmp_path / "RESULTS.md"
    assert run_all.main(["--quick", "--sections", "fake", "--out", str(page)], sections=sections,
                        benchmarks=fakes) == 0
    text = page.read_text()
    assert "quick=True" in text and "**--quick**" in text
    assert "| broken | not run |" in text and "exited with status" not in text


def test_sections_not_selected_keep_their_earlier_fragment(fakes, tmp_path):
    sections = (run_all.Section("fake", "bench_fake.py", "a fake"),
                run_all.Section("other", "bench_fake.py", "another fake"))
    page = tmp_path / "RESULTS.md"
    assert run_all.main(["--sections", "fake", "--out", str(page)], sections=sections, benchmarks=fakes) == 0
    assert run_all.main(["--sections", "other", "--out", str(page)], sections=sections, benchmarks=fakes) == 0
    text = page.read_text()
    assert "*Not re-run by this command: the section as an earlier run wrote it" in text
    assert "| fake | kept |" in text and "| other | ok |" in text
    assert text.count("![plot](results/fake_plot.png)") == 2


def test_accuracy_included_from_an_earlier_run(tmp_path):
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "accuracy.md").write_text("## Imputation accuracy\n\n`python benchmarks/bench_accuracy.py`\n\n"
                                         "![r2 by MAF](r2_by_maf_constant-1.png)\n")
    (earlier / "r2_by_maf_constant-1.png").write_bytes(b"png")
    page = tmp_path / "page" / "RESULTS.md"
    assert run_all.main(["--sections", "accuracy", "--accuracy-dir", str(earlier), "--out", str(page)]) == 0
    text = page.read_text()
    assert "*Not re-run by this command: taken from the run in" in text
    assert "![r2 by MAF](results/accuracy/r2_by_maf_constant-1.png)" in text
    assert (tmp_path / "page" / "results" / "accuracy" / "r2_by_maf_constant-1.png").exists()
    assert "| accuracy | included |" in text


@pytest.mark.parametrize("entry", [s for s in run_all.SECTIONS if (BENCHMARKS / s.script).exists()],
                         ids=lambda s: s.name)
def test_every_section_script_takes_the_protocol_arguments(entry):
    """Each script of the list accepts --quick and --markdown (its --help, not a run)."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / entry.script), "--help"], capture_output=True,
                            text=True, cwd=BENCHMARKS)
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.stdout and "--markdown" in result.stdout


def test_section_helper_refuses_a_fragment_without_heading(tmp_path):
    section = load("section")
    with pytest.raises(ValueError):
        section.write(str(tmp_path / "x.md"), ["no heading"])
    section.write(str(tmp_path / "x.md"), ["## Heading", "text"])
    assert (tmp_path / "x.md").read_text() == "## Heading\ntext\n"


def test_kernel_summary_tables_from_records():
    """bench_kernels' ratios from pytest-benchmark records (as its JSON holds them)."""
    kernels = load("bench_kernels")

    def rec(kind, impl, seconds, which="forward", case="case", **info):
        return {"stats": {"median": seconds}, "extra_info": dict(kind=kind, op="op", case=case, which=which,
                                                                  impl=impl, **info)}
    records = [rec("compare", "fused", 0.001, must_bytes=2e6, moved_bytes=3e6, peak_bytes=2 ** 20),
               rec("compare", "naive", 0.010, peak_bytes=10 * 2 ** 20), rec("compare", "algebra", 0.002),
               *[rec("curve", "fused", 1e-3 * size, case="over K, N=1", axis="K", size=size, elements=1e6 * size)
                 for size in (8, 32, 128)]]
    text = "\n".join(kernels.summary_tables(records))
    assert "| `op` | case | forward | 1.0 | 10.0 | 10.0x | 2.0 | 2.0x | 1.0 | 10.0x | - | 2.00 | 1.50x |" in text
    assert "| forward | 1.00 | 1.00 | 1.00 | 1.00x |" in text     # every size of the curve, flat
