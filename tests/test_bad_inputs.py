"""Bad inputs, tabled: every bad input the four commands handle and the message
each gets. The README's table "Bad inputs and their messages" is this table
(test_readme_table_is_this_table keeps them the same); each row is one test,
which runs the command and checks exit status 2, the one-line message, and
that no file appeared in the working directory (no output, no partial output,
no temporary file).

Most rows run in this process (``run_cli``, as the console scripts do). Two
kinds run as a subprocess: ``unprivileged`` as a user who may not write the
output directory (mode 0555; root may write anywhere, so a root subprocess
first drops CAP_DAC_OVERRIDE from its bounding set and then obeys the mode as
any user), and ``size-limited`` under a file-size limit (RLIMIT_FSIZE; Python
ignores SIGXFSZ, so a write past it fails with EFBIG as on a full disk).
"""
import ctypes
import dataclasses
import gzip
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cyvcf2
import pytest
import torch

from conftest import HEADER
from helpers import TINY_TRAINING, record
from embrag_ext import evaluate, impute, simulate, train
from embrag_ext.errors import run_cli
from embrag_ext.panel_vcf import load_panel
from embrag_ext.vcf_writer import write_phased_vcf

README = Path(__file__).parent.parent / "README.md"
COMMANDS = {"train": train, "impute": impute, "evaluate": evaluate, "simulate": simulate}
LIBC = ctypes.CDLL(None, use_errno=True)
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE = 24, 1      # <linux/prctl.h>, <linux/capability.h>
SIZE_LIMIT = 16 * 1024      # bytes: every output of these runs is larger


@dataclasses.dataclass(frozen=True)
class Row:
    """One bad input. args and message name files as {name}: the good inputs
    (panel, targets, truth, checkpoint), {work} (the working directory) or a bad
    file that MAKERS[name] writes; so may cache. message is how the error line
    begins after ``error: ``; ``…`` stands for a part that varies (a count)."""
    command: str
    what: str
    args: str
    message: str
    how: str = "in-process"        # or "unprivileged", "size-limited"
    cache: str = ""                # $EMBRAG_CACHE_DIR for the run, if not the shared cache

    @property
    def id(self):
        return f"{self.command}: {self.what}"


TRAIN = "--panel {panel} --out {work}/run " + " ".join(TINY_TRAINING)
IMPUTE = "--checkpoint {checkpoint} --panel {panel} --targets {targets} --out {work}/imputed.vcf.gz --threads 1"
EVALUATE = "--truth {truth} --imputed {truth}"
SIMULATE = "--out {work}/cohort --n-panel 10 --n-target 2 --length 5000"
WEIGHTS = "its weights do not fit the model its config describes"
CANNOT_WRITE = "cannot write the output (File too large); nothing was written there"

ROWS = [
    # ---- the data layer: panels, targets and the other input files, through a command ----
    Row("train", "panel file missing", TRAIN.replace("{panel}", "{work}/absent.vcf.gz"),
        "{work}/absent.vcf.gz: no such file"),
    Row("train", "panel not a VCF/BCF", TRAIN.replace("{panel}", "{junk}"), "{junk}: not a VCF/BCF file"),
    Row("train", "panel bgzip file truncated", TRAIN.replace("{panel}", "{cut_panel}"),
        "{cut_panel}: truncated bgzip file (no BGZF end-of-file block)"),
    Row("train", "panel bgzip file corrupt inside", TRAIN.replace("{panel}", "{corrupt_panel}"),
        "{corrupt_panel}: cannot read past record …: file truncated or corrupt"),
    Row("train", "panel records not sorted", TRAIN.replace("{panel}", "{unsorted}"),
        "{unsorted}: record 1:100 comes after 1:200: positions are not sorted"),
    Row("train", "panel record repeated", TRAIN.replace("{panel}", "{repeated}"),
        "{repeated}: duplicate record 1:100 A>G"),
    Row("train", "panel sample name repeated", TRAIN.replace("{panel}", "{twins}"),
        "{twins}: duplicate sample name 's1' in the header"),
    Row("train", "panel on several contigs, no --region", TRAIN.replace("{panel}", "{two_contigs}"),
        "{two_contigs}: records on several contigs (1, 2, ...)"),
    Row("train", "panel missing a genotype", TRAIN.replace("{panel}", "{missing_call}"),
        "{missing_call}: record 1:200: missing genotype for sample s2"),
    Row("train", "panel genotype unphased", TRAIN.replace("{panel}", "{unphased_call}"),
        "{unphased_call}: record 1:200: unphased genotype for sample s2"),
    Row("train", "panel sample haploid at one site, diploid at another", TRAIN.replace("{panel}", "{ploidy}"),
        "{ploidy}: record 1:200: sample s1 has a haploid call here and diploid calls before"),
    Row("train", "panel with an empty line or a missing column", TRAIN.replace("{panel}", "{broken_line}"),
        "{broken_line}: a broken record after record 1:100 (an empty line, a missing column or a position that is "
        "not a number)"),
    Row("train", "panel record cut short before its genotypes", TRAIN.replace("{panel}", "{cut_record}"),
        "{cut_record}: record 1:200: cannot read its genotypes"),
    Row("train", "panel BCF record damaged", TRAIN.replace("{panel}", "{damaged_bcf}"),
        "{damaged_bcf}: BCF record 1 is damaged (its genotypes cannot be read)"),
    Row("train", "panel sample name not UTF-8", TRAIN.replace("{panel}", "{latin1_sample}"),
        "{latin1_sample}: sample name '\\udce9' in the header is not printable UTF-8 text"),
    Row("train", "panel without samples (sites only)", TRAIN.replace("{panel}", "{sites_only}"),
        "{sites_only}: the panel has no samples"),
    Row("train", "--region outside the panel", TRAIN + " --region 1:900000000-900000001",
        "{panel}: no usable sites in region 1:900000000-900000001"),
    Row("train", "--region not CHROM[:START-END]", TRAIN + " --region 1:x", "region '1:x': expected CHROM or CHROM:START-END"),
    Row("train", "--af-file without a panel site", TRAIN + " --af-file {af_file}",
        "{af_file}: no frequency for … sites, the first at"),
    Row("train", "--array file not 'CHROM POS'", TRAIN + " --array {junk}", "--array {junk}: line 1: expected 'CHROM POS'"),
    Row("train", "--map file missing", TRAIN + " --map {work}/absent.map", "--map {work}/absent.map: No such file or directory"),
    Row("train", "--config not JSON", TRAIN + " --config {junk}", "--config {junk}: Expecting value"),
    Row("train", "--config with an unknown option", TRAIN + " --config {unknown_option}",
        "--config {unknown_option}: unknown options neighbours"),
    Row("impute", "targets not a VCF/BCF", IMPUTE.replace("{targets}", "{junk}"), "{junk}: not a VCF/BCF file"),
    Row("impute", "targets with no record on the panel's contig", IMPUTE.replace("{targets}", "{other_contig}"),
        "{other_contig}: no records on 1 (the panel's contig is 1"),
    Row("impute", "targets with no record that passes QC", IMPUTE.replace("{targets}", "{off_panel}"),
        "{off_panel}: none of its 1 records on 1 passed the alignment QC"),
    Row("impute", "targets unphased with --phaser none", IMPUTE.replace("{targets}", "{unphased_targets}")
        + " --phaser none", "{unphased_targets}: record 1:… unphased genotype for sample target_"),
    Row("impute", "targets sample name repeated", IMPUTE.replace("{targets}", "{twins}"),
        "{twins}: duplicate sample name 's1' in the header"),
    Row("impute", "--strict and QC excluded records", IMPUTE + " --strict", "--strict: QC excluded … target records"),
    Row("impute", "--genetic-map file missing", IMPUTE + " --genetic-map {work}/absent.map",
        "--genetic-map {work}/absent.map: no such file"),
    Row("evaluate", "--truth not a VCF/BCF", EVALUATE.replace("--truth {truth}", "--truth {junk}"),
        "{junk}: not a VCF/BCF file"),
    Row("evaluate", "--truth bgzip file truncated", EVALUATE.replace("--truth {truth}", "--truth {cut_panel}"),
        "{cut_panel}: truncated bgzip file"),
    Row("evaluate", "--truth records not sorted", EVALUATE.replace("--truth {truth}", "--truth {unsorted}"),
        "{unsorted}: record 1:100 comes after 1:200"),
    Row("evaluate", "--imputed with no site of the truth", EVALUATE.replace("--imputed {truth}", "--imputed {one_site}"),
        "{truth}: no site in common with the imputed file"),
    # ---- checkpoints ----
    Row("impute", "checkpoint missing", IMPUTE.replace("{checkpoint}", "{work}/absent.pt"),
        "--checkpoint {work}/absent.pt: not a readable embrag_ext checkpoint"),
    Row("impute", "checkpoint truncated", IMPUTE.replace("{checkpoint}", "{cut_checkpoint}"),
        "--checkpoint {cut_checkpoint}: a truncated checkpoint (a zip archive without its end)"),
    Row("impute", "checkpoint corrupt (bytes changed in its weights)", IMPUTE.replace("{checkpoint}", "{flipped}"),
        "--checkpoint {flipped}: a corrupt checkpoint (record … fails its CRC-32 check)"),
    Row("impute", "checkpoint is a VCF", IMPUTE.replace("{checkpoint}", "{panel}"),
        "--checkpoint {panel}: not a readable embrag_ext checkpoint"),
    Row("impute", "checkpoint is another torch file", IMPUTE.replace("{checkpoint}", "{foreign}"),
        "--checkpoint {foreign}: not an embrag_ext checkpoint (missing model"),
    Row("impute", "checkpoint of a later config version", IMPUTE.replace("{checkpoint}", "{future}"),
        "--checkpoint {future}: config version 99 is not the 1 this embrag_ext reads"),
    Row("impute", "checkpoint of embrag_ext 0.1 with unreadable options", IMPUTE.replace("{checkpoint}", "{legacy}"),
        "--checkpoint {legacy}: a checkpoint of an older embrag_ext whose options cannot be read"),
    Row("impute", "checkpoint of another model size", IMPUTE.replace("{checkpoint}", "{other_size}"),
        f"--checkpoint {{other_size}}: {WEIGHTS} (… of another shape, e.g. embedding.tok_table [3, 16] instead of [3, 32])"),
    Row("impute", "checkpoint of another model version", IMPUTE.replace("{checkpoint}", "{other_version}"),
        f"--checkpoint {{other_version}}: {WEIGHTS} (1 missing, e.g. … 1 unknown, e.g. renamed.weight)"),
    Row("impute", "panel other than the checkpoint's (other sites)", IMPUTE.replace("--panel {panel}", "--panel {targets}"),
        "{targets}: its … sites differ from the 576 sites the model was trained on"),
    Row("impute", "panel region other than the checkpoint's", IMPUTE + " --region 1:1-100000",
        "{panel}: its … sites differ from the 576 sites the model was trained on"),
    Row("train", "--resume directory without a checkpoint", "--resume {work}", "--resume {work}: no checkpoint.pt there"),
    Row("train", "--resume checkpoint truncated", "--resume {cut_checkpoint}",
        "--resume {cut_checkpoint}: a truncated checkpoint (a zip archive without its end)"),
    Row("train", "--resume checkpoint of another model size", "--resume {other_size}",
        f"--resume {{other_size}}: {WEIGHTS}"),
    Row("train", "--resume run whose panel changed", "--resume {moved_panel_run}",
        "{targets}: its … sites differ from the 576 sites the model was trained on"),
    Row("train", "--resume with a setting of the run (e.g. --window)", "--resume {checkpoint} --window 64",
        "--window: a run continued with --resume keeps its stored settings"),
    # ---- flag values that cannot work ----
    Row("train", "--k 0", TRAIN + " --k 0", "--k 0: must be >= 1"),
    Row("train", "--k larger than the panel", TRAIN + " --k 200",
        "--k 200: more neighbours than the 158 reference haplotypes a training query may use"),
    Row("train", "--templates larger than the panel", TRAIN + " --templates 500",
        "--templates 500: more than the 158 reference haplotypes a training query may use"),
    Row("train", "--window longer than the panel", TRAIN + " --window 1000", "--window 1000: longer than the 576 sites of"),
    Row("train", "--window 0", TRAIN + " --window 0", "--window 0: must be >= 1"),
    Row("train", "--overlap >= --window", TRAIN + " --overlap 32", "--overlap 32: must be >= 0 and smaller than --window 32"),
    Row("train", "--lr <= 0", TRAIN + " --lr -0.1", "--lr -0.1: must be > 0"),
    Row("train", "--clip-grad < 0", TRAIN + " --clip-grad -1", "--clip-grad -1.0: must be >= 0 (0: no clipping)"),
    Row("train", "--epochs < 0", TRAIN + " --epochs -1", "--epochs -1: must be >= 0"),
    Row("train", "--batch-size 0", TRAIN + " --batch-size 0", "--batch-size 0: must be >= 1"),
    Row("train", "--steps-per-epoch < 0", TRAIN + " --steps-per-epoch -1", "--steps-per-epoch -1: must be >= 0"),
    Row("train", "--windows-per-step 0", TRAIN + " --windows-per-step 0", "--windows-per-step 0: must be >= 1"),
    Row("train", "--val-fraction outside (0, 1)", TRAIN + " --val-fraction 1", "--val-fraction 1.0: must be in (0, 1)"),
    Row("train", "--val-fraction leaving no training sample", TRAIN + " --val-fraction 0.999",
        "80 samples: too few to keep 80 for validation"),
    Row("train", "--dim not a multiple of --heads", TRAIN + " --dim 15", "--dim 15: must be a multiple of --heads 2"),
    Row("train", "--heads 0", TRAIN + " --heads 0", "--heads 0: must be >= 1"),
    Row("train", "--layers < 0", TRAIN + " --layers -1", "--layers -1: must be >= 0"),
    Row("train", "--half-width < 0", TRAIN + " --half-width -1", "--half-width -1: must be >= 0"),
    Row("train", "--templates < 0", TRAIN + " --templates -1", "--templates -1: must be >= 0"),
    Row("train", "--context-sites 0", TRAIN + " --context-sites 0", "--context-sites 0: must be >= 1"),
    Row("train", "--ne <= 0", TRAIN + " --ne 0", "--ne 0.0: must be > 0"),
    Row("train", "--mismatch outside (0, 0.5)", TRAIN + " --mismatch 0.5", "--mismatch 0.5: must be in (0, 0.5)"),
    Row("train", "--key-flank < 0", TRAIN + " --key-flank -1", "--key-flank -1: must be >= 0"),
    Row("train", "--key-decay < 0", TRAIN + " --key-decay -1", "--key-decay -1.0: must be >= 0"),
    Row("train", "--refresh not fixed, epoch or a step count", TRAIN + " --refresh often",
        "--refresh 'often': expected 'fixed', 'epoch' or a positive number of steps"),
    Row("train", "--mask-ratio not 0 < LOW <= HIGH <= 1", TRAIN + " --mask-ratio 0.5 0.2",
        "mask ratio range 0.5-0.2: need 0 < low <= high <= 1"),
    Row("train", "--sporadic-missing outside [0, 1)", TRAIN + " --sporadic-missing 1",
        "sporadic missing rate 1.0: must be in [0, 1)"),
    Row("train", "--workers < 0", TRAIN + " --workers -1", "--workers -1: must be >= 0"),
    Row("train", "--device cuda without a CUDA device", TRAIN + " --device cuda", "--device cuda: no CUDA device is available"),
    Row("train", "a value of the wrong type (argparse)", TRAIN + " --k many", "argument --k: invalid int value: 'many'",
        how="argparse"),
    Row("impute", "--batch-size 0", IMPUTE + " --batch-size 0", "--batch-size 0: must be >= 1"),
    Row("impute", "--threads 0", IMPUTE + " --threads 0", "--threads 0: must be >= 1"),
    Row("impute", "--min-dr2 outside [0, 1]", IMPUTE + " --min-dr2 1.5", "--min-dr2 1.5: must be in [0, 1]"),
    Row("impute", "--flank < 0", IMPUTE + " --flank -1", "--flank -1: must be >= 0"),
    Row("impute", "--max-af-diff outside [0, 1]", IMPUTE + " --max-af-diff 2", "--max-af-diff 2.0: must be in [0, 1]"),
    Row("impute", "--min-site-call-rate outside [0, 1]", IMPUTE + " --min-site-call-rate 2",
        "--min-site-call-rate 2.0: must be in [0, 1]"),
    Row("impute", "--min-sample-call-rate outside [0, 1]", IMPUTE + " --min-sample-call-rate -0.5",
        "--min-sample-call-rate -0.5: must be in [0, 1]"),
    Row("impute", "--device cuda without a CUDA device", IMPUTE + " --device cuda",
        "--device cuda: no CUDA device is available"),
    Row("simulate", "--n-panel 0", SIMULATE + " --n-panel 0", "--n-panel 0: out of range (--n-panel must be >= 1)"),
    Row("simulate", "--n-target 0", SIMULATE + " --n-target 0", "--n-target 0: out of range (--n-target must be >= 1)"),
    Row("simulate", "--length < 1000", SIMULATE + " --length 10", "--length 10: out of range (--length must be >= 1000)"),
    Row("simulate", "--array-every 0", SIMULATE + " --array-every 0", "--array-every 0: out of range"),
    Row("simulate", "--array-maf outside [0, 0.5)", SIMULATE + " --array-maf 0.5", "--array-maf 0.5: must be in [0, 0.5)"),
    Row("simulate", "--haploid-fraction outside [0, 1]", SIMULATE + " --haploid-fraction 2",
        "--haploid-fraction 2.0: must be in [0, 1]"),
    # ---- outputs ----
    Row("train", "--out already holds a run", TRAIN.replace("{work}/run", "{old_run}"),
        "--out {old_run}: already holds a run (checkpoint.pt); continue it with --resume"),
    Row("train", "--out is a file", TRAIN.replace("{work}/run", "{junk}/run"), "--out {junk}/run: {junk} is a file, not a directory"),
    Row("train", "--out in a directory the user may not write", TRAIN.replace("{work}/run", "{locked}/run"),
        "--out {locked}/run: output directory {locked} is not writable (Permission denied)", how="unprivileged"),
    Row("train", "disk full (file-size limit) at the first checkpoint", TRAIN,
        f"{{work}}/run/checkpoint.pt: {CANNOT_WRITE}", how="size-limited"),
    Row("impute", "--out not .vcf.gz, .vcf.bgz, .bcf or .vcf", IMPUTE.replace("imputed.vcf.gz", "imputed.txt"),
        "{work}/imputed.txt: output name must end in .vcf.gz, .vcf.bgz, .bcf, .vcf"),
    Row("impute", "--out in a missing directory", IMPUTE.replace("{work}/imputed", "{work}/absent/imputed"),
        "{work}/absent/imputed.vcf.gz: output directory {work}/absent does not exist"),
    Row("impute", "--out in a directory the user may not write", IMPUTE.replace("{work}/imputed", "{locked}/imputed"),
        "--out {locked}/imputed.vcf.gz: output directory {locked} is not writable (Permission denied)",
        how="unprivileged"),
    Row("impute", "disk full (file-size limit) while writing the outputs", IMPUTE, f"{{work}}/imputed…: {CANNOT_WRITE}",
        how="size-limited"),
    Row("impute", "no --checkpoint, and the model cache ($EMBRAG_CACHE_DIR) is a file",
        IMPUTE.replace("--checkpoint {checkpoint} ", ""),
        "no --checkpoint: model cache {junk}/models: {junk} is a file, not a directory", cache="{junk}"),
    Row("evaluate", "--out-json in a missing directory", EVALUATE + " --out-json {work}/absent/eval.json",
        "{work}/absent/eval.json: output directory {work}/absent does not exist"),
    Row("evaluate", "--plot in a missing directory", EVALUATE + " --plot {work}/absent/r2.png",
        "{work}/absent/r2.png: output directory {work}/absent does not exist"),
    Row("evaluate", "--out-json in a directory the user may not write", EVALUATE + " --out-json {locked}/eval.json",
        "--out-json {locked}/eval.json: output directory {locked} is not writable (Permission denied)",
        how="unprivileged"),
    Row("simulate", "--out is a file", SIMULATE.replace("{work}/cohort", "{junk}"),
        "--out {junk}: {junk} is a file, not a directory"),
]


# ---- the bad files ----------------------------------------------------------

COLUMNS = "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT"


def text_vcf(path, records, samples=("s1", "s2"), header=HEADER):
    columns = COLUMNS + "".join(f"\t{name}" for name in samples) if samples else COLUMNS[:-len("\tFORMAT")]
    Path(path).write_text(header + columns + "\n" + "".join(line + "\n" for line in records))
    return str(path)


def small_vcf(name, *records, samples=("s1", "s2")):
    return lambda work, good: text_vcf(work / name, list(records), samples)


def cut(name, source, keep=0.5):
    def make(work, good):
        data = Path(good[source]).read_bytes()
        (work / name).write_bytes(data[:int(len(data) * keep)])
        return str(work / name)
    return make


def corrupt_bgzip(work, good):
    """The panel with bytes changed inside a compressed block (the end-of-file block intact)."""
    data = bytearray(Path(good["panel"]).read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    (work / "corrupt.vcf.gz").write_bytes(bytes(data))
    return str(work / "corrupt.vcf.gz")


def damaged_bcf(work, good):
    """An uncompressed BCF whose first record's GT says zero values per sample (type byte 0x21 -> 0x01)."""
    compressed = work / "valid.bcf"
    writer = cyvcf2.Writer.from_string(str(compressed), HEADER + COLUMNS + "\ts1\ts2\n", mode="wb")
    writer.write_record(writer.variant_from_string(record(100, "A", "G", "0|1", "1|1")))
    writer.close()
    raw = gzip.open(compressed, "rb").read()
    gt_values = b"\x21\x02\x05\x04\x05"          # int8, 2 per sample: 0|1, 1|1
    assert raw.count(gt_values) == 1
    (work / "damaged.bcf").write_bytes(raw.replace(gt_values, b"\x01" + gt_values[1:]))
    os.remove(compressed)
    return str(work / "damaged.bcf")


def latin1_sample(work, good):
    text = HEADER + COLUMNS + "\ts1\t\u00e9\n" + record(100, "A", "G", "0|1", "1|1") + "\n"
    (work / "latin1.vcf").write_bytes(text.encode("latin-1"))
    return str(work / "latin1.vcf")


def flipped_checkpoint(work, good):
    """The checkpoint with bytes changed in the middle (in a weight record: torch.load alone reads it)."""
    data = bytearray(Path(good["checkpoint"]).read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(byte ^ 0x5A for byte in data[middle:middle + 16])
    (work / "flipped.pt").write_bytes(bytes(data))
    return str(work / "flipped.pt")


def edited_checkpoint(name, edit):
    """The good checkpoint's stored dict, edited by edit(stored), saved as work/name."""
    def make(work, good):
        stored = torch.load(good["checkpoint"], weights_only=False)
        edit(stored)
        torch.save(stored, work / name)
        return str(work / name)
    return make


def other_size(stored):
    stored["config"]["model"]["dim"] = 32             # the weights are of dim 16


def other_version(stored):
    weights = stored["model"]
    weights["renamed.weight"] = weights.pop(next(iter(weights)))


def legacy(stored):
    stored.update(config=None, args={"k": 3}, model_config={})


def moved_panel_run(work, good):
    """A run directory whose stored config points at another panel file (the targets)."""
    run = work / "moved"
    run.mkdir()
    edited_checkpoint("moved/checkpoint.pt", lambda stored: stored["config"]["data"].update(panel=good["targets"]))(
        work, good)
    return str(run)


def old_run(work, good):
    (work / "old_run").mkdir()
    shutil.copy(good["checkpoint"], work / "old_run" / "checkpoint.pt")
    return str(work / "old_run")


def unphased_targets(work, good):
    calls = load_panel(good["targets"], use_cache=False)
    path = str(work / "unphased.vcf.gz")
    write_phased_vcf(path, calls.chrom, calls.positions, calls.ref, calls.alt, calls.samples, calls.haplotypes,
                     unphased=True)
    return path


def af_file(work, good):
    panel = load_panel(good["panel"])
    (work / "af.txt").write_text(f"1\t{panel.positions[0]}\t{panel.ref[0]}\t{panel.alt[0]}\t0.5\n")
    return str(work / "af.txt")


def locked(work, good):
    (work / "locked").mkdir()
    os.chmod(work / "locked", 0o555)
    return str(work / "locked")


def written(name, text):
    def make(work, good):
        (work / name).write_text(text)
        return str(work / name)
    return make


MAKERS = {
    "junk": written("junk.txt", "not a vcf\n"),
    "unknown_option": written("options.json", '{"neighbours": 5}'),
    "cut_panel": cut("cut.vcf.gz", "panel"),
    "corrupt_panel": corrupt_bgzip,
    "unsorted": small_vcf("unsorted.vcf", record(200, "A", "G", "0|1", "1|1"), record(100, "A", "G", "0|1", "1|1")),
    "repeated": small_vcf("repeated.vcf", record(100, "A", "G", "0|1", "1|1"), record(100, "A", "G", "0|1", "1|0")),
    "twins": small_vcf("twins.vcf", record(100, "A", "G", "0|1", "1|1"), samples=("s1", "s1")),
    "two_contigs": small_vcf("contigs.vcf", record(100, "A", "G", "0|1", "1|1"),
                             record(100, "A", "G", "0|1", "1|1", chrom="2")),
    "missing_call": small_vcf("missing.vcf", record(100, "A", "G", "0|1", "1|1"), record(200, "C", "T", "0|1", ".|1")),
    "unphased_call": small_vcf("unphased.vcf", record(100, "A", "G", "0|1", "1|1"), record(200, "C", "T", "0|1", "0/1")),
    "ploidy": small_vcf("ploidy.vcf", record(100, "A", "G", "0|1", "1|1"), record(200, "C", "T", "1", "0|1")),
    "broken_line": small_vcf("broken.vcf", record(100, "A", "G", "0|1", "1|1"), ""),
    "cut_record": small_vcf("cut_record.vcf", record(100, "A", "G", "0|1", "1|1"), "1\t200\t.\tC\tT\t.\tPASS\t."),
    "damaged_bcf": damaged_bcf,
    "latin1_sample": latin1_sample,
    "sites_only": small_vcf("sites.vcf", "\t".join(["1", "100", ".", "A", "G", ".", "PASS", "."]), samples=()),
    "one_site": small_vcf("one_site.vcf", record(100, "A", "G", "0|1", "1|1")),
    "other_contig": small_vcf("contig2.vcf", record(100, "A", "G", "0|1", "1|1", chrom="2")),
    "off_panel": small_vcf("off_panel.vcf", record(3, "A", "G", "0|1", "1|1")),
    "af_file": af_file,
    "unphased_targets": unphased_targets,
    "cut_checkpoint": cut("cut.pt", "checkpoint"),
    "flipped": flipped_checkpoint,
    "foreign": lambda work, good: torch.save({"weights": torch.zeros(2)}, work / "foreign.pt") or str(work / "foreign.pt"),
    "future": edited_checkpoint("future.pt", lambda stored: stored["config"].update(version=99)),
    "legacy": edited_checkpoint("legacy.pt", legacy),
    "other_size": edited_checkpoint("other_size.pt", other_size),
    "other_version": edited_checkpoint("other_version.pt", other_version),
    "moved_panel_run": moved_panel_run,
    "old_run": old_run,
    "locked": locked,
}


class Files(dict):
    """{name: path} for str.format_map: the good inputs, {work}, and each bad file,
    made on first use."""

    def __init__(self, work, good):
        super().__init__(good, work=str(work))
        self.work, self.good = work, good

    def __missing__(self, name):
        self[name] = MAKERS[name](self.work, self.good)
        return self[name]


# ---- running a row ----------------------------------------------------------

def files_under(directory, skip):
    return sorted(str(path.relative_to(directory)) for path in Path(directory).rglob("*")
                  if path.is_file() and skip not in path.parents)


def obey_file_modes():
    """In the child, before exec: without CAP_DAC_OVERRIDE root obeys file modes as any user does."""
    if os.geteuid() == 0 and LIBC.prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE)")


def limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (SIZE_LIMIT, SIZE_LIMIT))


def run_subprocess(row, argv, work, cache):
    setup = obey_file_modes if row.how == "unprivileged" else limit_file_size
    env = dict(os.environ, EMBRAG_CACHE_DIR=str(cache), EMBRAG_PROGRESS="lines")
    result = subprocess.run([sys.executable, "-m", f"embrag_ext.{row.command}", *argv], capture_output=True,
                            text=True, cwd=work, env=env, preexec_fn=setup, timeout=300)
    return result.returncode, result.stderr


def run_in_process(row, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(COMMANDS[row.command].main, argv)
    return exit_info.value.code, capsys.readouterr().err


def expected_line(row, files):
    """A regex of how the error line the row expects begins."""
    prefix = "python -m embrag_ext.{}: error: ".format(row.command) if row.how == "argparse" else "error: "
    pieces = [re.escape(piece.format_map(files)) for piece in row.message.split("…")]
    return prefix + ".*".join(pieces)


@pytest.fixture(scope="module")
def scratch(trained, tmp_path_factory):
    """A directory every user may read, holding a copy of the good inputs and the panel cache."""
    root = Path(tempfile.mkdtemp(prefix="embrag-bad-inputs-"))
    os.chmod(root, 0o755)
    good = {}
    for name, path in trained.items():
        good[name] = str(root / "inputs" / os.path.basename(path))
        os.makedirs(root / "inputs", exist_ok=True)
        shutil.copy(path, good[name])
        if os.path.exists(path + ".tbi"):
            shutil.copy(path + ".tbi", good[name] + ".tbi")
    cache = root / "cache"
    cache.mkdir(mode=0o777)
    os.chmod(cache, 0o777)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBRAG_CACHE_DIR", str(cache))
        load_panel(good["panel"])           # the cached parse, so that a size-limited run need not write it
    for dirpath, dirnames, filenames in os.walk(cache):
        for name in dirnames + filenames:
            os.chmod(os.path.join(dirpath, name), 0o777)
    yield root, good
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_bad_input(row, scratch, capsys, monkeypatch):
    if row.what.startswith("--device cuda") and torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    root, good = scratch
    work = Path(tempfile.mkdtemp(dir=root, prefix="work-"))
    os.chmod(work, 0o777)
    files = Files(work, good)
    argv = [part.format_map(files) for part in row.args.split()]
    cache = Path(row.cache.format_map(files)) if row.cache else root / "cache"
    before = files_under(root, cache)
    if row.how in ("unprivileged", "size-limited"):
        status, stderr = run_subprocess(row, argv, work, cache)
    else:
        monkeypatch.chdir(work)
        monkeypatch.setenv("EMBRAG_CACHE_DIR", str(cache))
        status, stderr = run_in_process(row, argv, capsys)
    lines = stderr.strip().splitlines()
    assert status == 2 and "Traceback" not in stderr, stderr
    assert re.match(expected_line(row, files), lines[-1]), f"{lines[-1]!r} !~ {expected_line(row, files)!r}"
    assert sum(line.startswith("error:") for line in lines) <= 1, stderr
    assert files_under(root, cache) == before, "files left behind"


# ---- the README's table -----------------------------------------------------

def markdown_table():
    """The README's table: one line per row, files as <name>."""
    lines = ["| command | bad input | message (exit status 2, nothing written) |", "|---|---|---|"]
    for row in ROWS:
        message = re.sub(r"\{(\w+)\}", r"<\1>", row.message)
        prefix = "" if row.how == "argparse" else "error: "
        lines.append(f"| `{row.command}` | {row.what.replace('|', '/')} | `{prefix}{message}` |")
    return "\n".join(lines) + "\n"


def test_readme_table_is_this_table():
    assert markdown_table() in README.read_text(), "README's bad-input table is stale: python tests/test_bad_inputs.py"


def test_every_row_is_one_test_and_ids_are_unique():
    assert len({row.id for row in ROWS}) == len(ROWS)


if __name__ == "__main__":
    print(markdown_table(), end="")
