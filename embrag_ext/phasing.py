"""Pre-phasing unphased targets against the panel with an installed phaser.

Phasers (:data:`PHASERS`, the order ``--phaser auto`` tries them in):

- ``eagle``: Eagle2 (Debian ``bio-eagle``: ``bio-eagle`` or
  ``/usr/lib/debian-med/bin/eagle``). It needs a genetic map; without
  ``--genetic-map`` a uniform 1 cM/Mb map of the region is written for it
  (Eagle has no map-free mode). Its chromosome must be a number (1-22) or X.
- ``shapeit4``: SHAPEIT4 (Debian ``shapeit4``); without a map it assumes
  1 cM/Mb itself.
- ``beagle``: Beagle 5 with ``impute=false`` (Debian ``beagle``); without a
  map, 1 cM/Mb.

:func:`prephase` sends the samples that have an unphased heterozygous
genotype (others are used as they are: phased, haploid, or homozygous only)
at the typed sites that survived QC, with the panel's alleles, to the phaser
(a half-missing genotype of such a sample is sent, and kept, wholly missing),
with the panel restricted to those sites as its reference, all in a temporary
directory. It reads the phased haplotypes back and checks that the phaser
kept every called genotype (only the phase may change); genotypes that were
missing stay missing (the model imputes them). Each phaser runs with
``threads`` threads and a fixed seed, so a rerun gives the same phase.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import InputError
from .panel import haplotype_columns
from .tokens import MASK
from .vcf_io import allele_tokens, genotype_alleles, iter_records, open_vcf
from .vcf_writer import write_phased_vcf

PHASERS = ("eagle", "shapeit4", "beagle")
PHASER_CHOICES = ("auto", *PHASERS, "none")
INSTALL = {"eagle": "apt-get install bio-eagle", "shapeit4": "apt-get install shapeit4",
           "beagle": "apt-get install beagle"}
_EXECUTABLES = {"eagle": ("bio-eagle", "eagle", "/usr/lib/debian-med/bin/eagle"),
                "shapeit4": ("shapeit4",), "beagle": ("beagle",)}
_VERSION_PATTERNS = {"eagle": r"Eagle v([\d.]+)", "shapeit4": r"Version\s*:\s*([\d.]+)",
                     "beagle": r"\(version ([\d.]+)\)"}
SEED = 20240611


@dataclass(frozen=True)
class Phaser:
    """An installed phaser."""
    name: str
    executable: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.executable})"


def _executable(name: str) -> Optional[str]:
    for candidate in _EXECUTABLES[name]:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _version(name: str, executable: str) -> str:
    """The version the phaser prints about itself when run without arguments."""
    try:
        result = subprocess.run([executable], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise InputError(f"--phaser {name}: {executable} does not run ({error})") from None
    match = re.search(_VERSION_PATTERNS[name], result.stdout + result.stderr)
    return match.group(1) if match else "version unknown"


def find_phaser(choice: str = "auto") -> Optional[Phaser]:
    """The phaser ``choice`` names (``auto``: the first of :data:`PHASERS`
    installed; ``none``: None). InputError naming the install command when it
    is not installed."""
    if choice == "none":
        return None
    if choice not in PHASER_CHOICES:
        raise InputError(f"--phaser {choice}: expected one of {', '.join(PHASER_CHOICES)}")
    names = PHASERS if choice == "auto" else (choice,)
    for name in names:
        executable = _executable(name)
        if executable:
            return Phaser(name, executable, _version(name, executable))
    if choice == "auto":
        raise InputError("the targets are unphased and no phaser is installed: install one "
                         f"({'; '.join(INSTALL.values())}) or phase them beforehand")
    raise InputError(f"--phaser {choice}: {' / '.join(_EXECUTABLES[choice])} not found; install it with "
                     f"{INSTALL[choice]}")


@dataclass
class PhasingSummary:
    """What pre-phasing did (a section of the QC report)."""
    phaser: str
    version: str
    samples_phased: int
    sites: int
    seconds: float
    unphased_heterozygotes: int     # genotypes whose phase the phaser set
    dropped_by_phaser: int          # sites missing from the phaser's output: their heterozygotes set missing

    def to_dict(self) -> Dict[str, object]:
        return dict(vars(self))


def prephase(targets, panel, phaser: Phaser, threads: int = 1, genetic_map: Optional[str] = None) -> Optional[PhasingSummary]:
    """Phase the targets' unphased samples (module doc) in place: their
    haplotypes at the typed sites are replaced by the phaser's and
    ``phase_unknown`` is cleared. Returns None when nothing needs phasing."""
    samples = targets.unphased_samples()
    if len(samples) == 0:
        return None
    sites = np.flatnonzero(targets.typed)
    columns = haplotype_columns(samples)
    given = _whole_genotypes(targets.haplotypes[np.ix_(sites, columns)])         # [n, 2m]
    n_unphased = int(targets.phase_unknown[sites][:, samples].sum())
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="embrag-phasing-") as workdir:
        names = [targets.samples[i] for i in samples]
        inputs = _write_inputs(workdir, panel, sites, names, given)
        output = _run(phaser, workdir, inputs, panel, sites, threads, genetic_map)
        phased, found = _read_phased(output, panel, sites, names)
    dropped = _merge(given, phased, found, names, panel.positions[sites], phaser)
    targets.haplotypes[np.ix_(sites, columns)] = phased
    targets.phase_unknown[:] = False
    return PhasingSummary(phaser=phaser.name, version=phaser.version, samples_phased=len(samples),
                          sites=len(sites), seconds=time.perf_counter() - began,
                          unphased_heterozygotes=n_unphased, dropped_by_phaser=dropped)


def _whole_genotypes(haplotypes: np.ndarray) -> np.ndarray:
    """uint8 [n, 2m] with half-missing diploid genotypes set wholly missing
    (their one allele cannot be placed on a haplotype without the other)."""
    half = (haplotypes[:, 0::2] == MASK) != (haplotypes[:, 1::2] == MASK)        # [n, m]
    whole = haplotypes.copy()
    whole[:, 0::2][half] = MASK
    whole[:, 1::2][half] = MASK
    return whole


def _write_inputs(workdir: str, panel, sites: np.ndarray, names: List[str], given: np.ndarray) -> Dict[str, str]:
    """The unphased targets and the panel at ``sites``, as indexed .vcf.gz files."""
    paths = {"targets": os.path.join(workdir, "targets.vcf.gz"), "reference": os.path.join(workdir, "reference.vcf.gz")}
    positions, ref, alt = panel.positions[sites], panel.ref[sites], panel.alt[sites]
    write_phased_vcf(paths["targets"], panel.chrom, positions, ref, alt, names, given, unphased=True)
    write_phased_vcf(paths["reference"], panel.chrom, positions, ref, alt, panel.samples,
                     np.asarray(panel.haplotypes[sites]), ploidy=panel.ploidy)
    return paths


def _eagle_map(workdir: str, chrom: str, positions: np.ndarray) -> str:
    """A uniform 1 cM/Mb genetic map over ``positions`` in Eagle's format."""
    name = chrom[3:] if chrom.lower().startswith("chr") else chrom
    number = {"X": "23"}.get(name.upper(), name)
    if not number.isdigit():
        raise InputError(f"--phaser eagle: Eagle phases chromosomes 1-22 and X, not {chrom}; "
                         "use --phaser shapeit4 or beagle")
    path = os.path.join(workdir, "uniform_map.txt")
    first, last = max(int(positions[0]) - 1, 1), int(positions[-1]) + 1
    with open(path, "w") as handle:
        handle.write("chr position COMBINED_rate(cM/Mb) Genetic_Map(cM)\n")
        handle.write(f"{number} {first} 1.0 {first / 1e6:.6f}\n{number} {last} 1.0 {last / 1e6:.6f}\n")
    return path


def _command(phaser: Phaser, workdir: str, inputs: Dict[str, str], panel, sites: np.ndarray, threads: int,
             genetic_map: Optional[str]) -> List[str]:
    """The phaser's command line; its output goes to ``workdir/phased.vcf.gz``."""
    out = os.path.join(workdir, "phased")
    if phaser.name == "eagle":
        map_file = genetic_map or _eagle_map(workdir, panel.chrom, panel.positions[sites])
        return [phaser.executable, "--vcfRef", inputs["reference"], "--vcfTarget", inputs["targets"],
                "--geneticMapFile", map_file, "--outPrefix", out, "--numThreads", str(threads),
                "--vcfOutFormat", "z"]
    if phaser.name == "shapeit4":
        return [phaser.executable, "--input", inputs["targets"], "--reference", inputs["reference"],
                "--region", panel.chrom, "--output", out + ".vcf.gz", "--thread", str(threads),
                "--seed", str(SEED), *(["--map", genetic_map] if genetic_map else [])]
    return [phaser.executable, f"gt={inputs['targets']}", f"ref={inputs['reference']}", f"out={out}",
            "impute=false", f"nthreads={threads}", f"seed={SEED}", *([f"map={genetic_map}"] if genetic_map else [])]


def _run(phaser: Phaser, workdir: str, inputs: Dict[str, str], panel, sites: np.ndarray, threads: int,
         genetic_map: Optional[str]) -> str:
    """Run the phaser; InputError with the end of its log when it fails."""
    command = _command(phaser, workdir, inputs, panel, sites, threads, genetic_map)
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    output = os.path.join(workdir, "phased.vcf.gz")
    if result.returncode != 0 or not os.path.isfile(output):
        log = " | ".join(line.strip() for line in (result.stdout + result.stderr).splitlines()[-4:] if line.strip())
        raise InputError(f"--phaser {phaser.name}: {os.path.basename(phaser.executable)} failed "
                         f"(exit status {result.returncode}): {log or 'no output'}")
    return output


def _read_phased(path: str, panel, sites: np.ndarray, names: List[str]):
    """(tokens uint8 [n, 2m] at ``sites``, found bool [n]) from the phaser's output VCF."""
    vcf = open_vcf(path)
    order = {name: i for i, name in enumerate(vcf.samples)}
    missing = [name for name in names if name not in order]
    if missing:
        raise InputError(f"{path}: the phaser's output lacks sample {missing[0]}")
    take = np.array([order[name] for name in names])
    row_of = {(int(panel.positions[s]), panel.ref[s], panel.alt[s]): row for row, s in enumerate(sites)}
    phased = np.full((len(sites), 2 * len(names)), MASK, dtype=np.uint8)
    found = np.zeros(len(sites), dtype=bool)
    for record in iter_records(vcf, path):
        row = row_of.get((record.POS, record.REF, record.ALT[0] if len(record.ALT) == 1 else None))
        if row is not None:
            phased[row] = allele_tokens(genotype_alleles(record, path).alleles[take]).reshape(-1)
            found[row] = True
    return phased, found


def _merge(given: np.ndarray, phased: np.ndarray, found: np.ndarray, names: Sequence[str],
           positions: np.ndarray, phaser: Phaser) -> int:
    """Check the phaser kept every called genotype, restore missing alleles as
    MASK, and set heterozygotes at sites it dropped missing (in ``phased``, in
    place). Returns the number of dropped sites."""
    complete = (given[:, 0::2] != MASK) & (given[:, 1::2] != MASK)                # [n, m]
    dose_given = given[:, 0::2].astype(int) + given[:, 1::2]
    dose_phased = phased[:, 0::2].astype(int) + phased[:, 1::2]
    changed = found[:, None] & complete & (dose_given != dose_phased)
    if changed.any():
        row, sample = np.argwhere(changed)[0]
        raise InputError(f"--phaser {phaser.name}: changed the genotype of sample {names[sample]} at position "
                         f"{positions[row]} ({dose_given[row, sample]} -> {dose_phased[row, sample]} ALT alleles); "
                         "only phase may change")
    keep_given = ~found[:, None] | (given == MASK)                                  # [n, 2m]
    phased[:] = np.where(keep_given, given, phased)
    heterozygous_unresolved = ~found[:, None] & complete & (given[:, 0::2] != given[:, 1::2])   # [n, m]
    phased[:, 0::2][heterozygous_unresolved] = MASK
    phased[:, 1::2][heterozygous_unresolved] = MASK
    return int((~found).sum())
