"""Property-based fuzzing of the VCF/BCF readers (hypothesis), run as a script in
a subprocess by tests/test_fuzz.py, so that a crash in htslib or in our code
fails that test instead of killing pytest:

    python tests/fuzz_vcf.py FORMAT EXAMPLES        # FORMAT: vcf, vcf.gz, bcf

Each example takes a valid phased VCF (4 samples, 8 records), mutates it, writes
it as FORMAT and reads it with the package's three readers: the panel reader
(load_panel), the target reader against a good panel (load_targets) and the
imputed-calls reader (read_imputed). The text mutations: a line cut short (and
the file ending there), a column dropped or added, a GT replaced by a bad
string, a huge, negative or non-numeric position, non-ASCII text in a field or
a sample name, and random bytes changed. A BCF example mutates the bytes of the
binary records (uncompressed BCF) instead. Property: each reader returns, or
raises InputError with a one-line message; any other exception, or a crash,
fails. Prints ``FORMAT: N examples, P parsed by every reader, E one-line errors``.
"""
import gzip
import os
import sys
import tempfile
import warnings

import cyvcf2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embrag_ext.errors import InputError
from embrag_ext.panel_vcf import load_panel
from embrag_ext.targets import load_targets
from embrag_ext.vcf_io import BgzfWriter, read_imputed

HEADER = ("##fileformat=VCFv4.2\n##contig=<ID=1>\n"
          '##INFO=<ID=AF,Number=A,Type=Float,Description="ALT frequency">\n'
          '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n')
SAMPLES = ["s1", "s2", "s3", "s4"]
COLUMNS = "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(SAMPLES) + "\n"
GENOTYPES = ["0|1", "1|0", "0|0", "1|1"]
RECORDS = [f"1\t{100 * (i + 1)}\t.\t{'ACGT'[i % 4]}\t{'GTAC'[i % 4]}\t.\tPASS\tAF=0.5\tGT\t"
           + "\t".join(GENOTYPES[(i + j) % 4] for j in range(len(SAMPLES))) for i in range(8)]
BAD_GT = ["0/1", ".", "./.", "2|0", "a|b", "0||1", "", "0|1|1", "-1|0", "99999999999|0", "|", "0|", "1", ".|1",
          "0|\u00e9", "\x00|1", "0|1:5"]
BAD_POS = ["0", "-5", "2147483648", "9223372036854775808", "1" + "0" * 30, "1e5", "abc", "", "99.5"]
NON_ASCII = ["\u00e9", "\u4e2d\u6587", "\U0001F9EC", "\ufffd", "caf\u00e9", "\u00a0"]


def mutated_text(data) -> str:
    """A valid VCF's text with one drawn mutation."""
    records = list(RECORDS)
    header, columns = HEADER, COLUMNS
    kind = data.draw(st.sampled_from(["cut", "drop column", "add column", "bad GT", "position", "non-ASCII",
                                      "non-ASCII sample", "bytes"]), label="mutation")
    row = data.draw(st.integers(0, len(records) - 1))
    fields = records[row].split("\t")
    if kind == "cut":
        records = records[:row] + [records[row][:data.draw(st.integers(0, len(records[row]) - 1))]]
    elif kind == "drop column":
        del fields[data.draw(st.integers(0, len(fields) - 1))]
    elif kind == "add column":
        fields.insert(data.draw(st.integers(0, len(fields))), data.draw(st.sampled_from(["0|1", ".", "x"])))
    elif kind == "bad GT":
        fields[data.draw(st.integers(9, len(fields) - 1))] = data.draw(st.sampled_from(BAD_GT))
    elif kind == "position":
        fields[1] = data.draw(st.sampled_from(BAD_POS))
    elif kind == "non-ASCII":
        fields[data.draw(st.sampled_from([0, 2, 3, 4, 7]))] = data.draw(st.sampled_from(NON_ASCII))
    elif kind == "non-ASCII sample":
        columns = columns.replace("s2", data.draw(st.sampled_from(NON_ASCII)))
    if kind in ("drop column", "add column", "bad GT", "position", "non-ASCII"):
        records[row] = "\t".join(fields)
    text = header + columns + "".join(line + "\n" for line in records)
    if kind == "bytes":
        raw = bytearray(text.encode())
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(len(header), len(raw) - 1))] = data.draw(st.integers(0, 255))
        text = raw.decode("latin-1")
    return text


def write(fmt, text, directory, data) -> str:
    path = os.path.join(directory, f"fuzz.{fmt}")
    if fmt == "vcf":
        with open(path, "w", encoding="latin-1", errors="replace") as handle:
            handle.write(text)
    elif fmt == "vcf.gz":
        writer = BgzfWriter(path)
        writer.write(text)
        writer.close()
    else:
        write_mutated_bcf(path, directory, data)
    return path


def write_mutated_bcf(path, directory, data):
    """The valid records as an uncompressed BCF with bytes of the records changed."""
    compressed = os.path.join(directory, "valid.bcf")
    writer = cyvcf2.Writer.from_string(compressed, HEADER + COLUMNS, mode="wb")
    for line in RECORDS:
        writer.write_record(writer.variant_from_string(line))
    writer.close()
    raw = bytearray(gzip.open(compressed, "rb").read())
    header_end = 9 + int.from_bytes(raw[5:9], "little")
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(header_end, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(header_end, len(raw))))
    with open(path, "wb") as handle:
        handle.write(bytes(raw[:cut]))


def read_or_one_line_error(read) -> bool:
    """True if read() returned, False if it raised a one-line InputError; anything else propagates."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read()
    except InputError as error:
        assert "\n" not in str(error) and str(error), repr(str(error))
        return False
    return True


def fuzz(fmt: str, examples: int) -> None:
    counts = {"parsed": 0, "errors": 0}
    directory = tempfile.mkdtemp(prefix="fuzz-vcf-")
    good = os.path.join(directory, "good.vcf")
    with open(good, "w") as handle:
        handle.write(HEADER + COLUMNS + "".join(line + "\n" for line in RECORDS))
    panel = load_panel(good, use_cache=False)

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def example(data):
        path = write(fmt, mutated_text(data) if fmt != "bcf" else "", directory, data)
        readers = (lambda: load_panel(path, use_cache=False), lambda: load_targets(path, panel),
                   lambda: read_imputed(path))
        for read in readers:
            counts["parsed" if read_or_one_line_error(read) else "errors"] += 1

    example()
    print(f"{fmt}: {examples} examples, {counts['parsed']} parsed by a reader, {counts['errors']} one-line errors "
          f"(3 readers each)", flush=True)


if __name__ == "__main__":
    fuzz(sys.argv[1], int(sys.argv[2]))
