"""The settings that travel: typed, frozen configs, built once from the
command line (or a JSON config file) and stored in the checkpoint.

A run is a :class:`RunConfig` of five parts, each read by the stage it names:

- :class:`DataConfig`: which panel, region, windows, genetic map, array, validation split;
- :class:`CopyConfig`: the copying posterior (templates, context, initial rates);
- :class:`RetrievalConfig`: neighbours fused per haplotype, FAISS keys, index, refresh policy;
- :class:`ModelConfig`: the network (mode, width, layers, ...);
- :class:`TrainConfig`: optimisation, masking, device.

``RunConfig.to_dict()`` is what a checkpoint stores (plain dicts with a
``version``); :func:`run_config_from_checkpoint` reads it back into the same
classes, including checkpoints written before configs were typed (they stored
the argparse options as ``args``). This module imports neither torch nor the
compiled extension.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from .errors import InputError
from .masking import MaskConfig

CONFIG_VERSION = 1
MODES = ("none", "token", "embedding")
AMP_CHOICES = ("auto", "bf16", "off")   # --amp: bf16 autocast where it is fast, always, never


MULTIALLELIC_MODES = ("skip", "split")
KEY_KINDS = ("l2", "learned")


@dataclass(frozen=True)
class DataConfig:
    """The panel, how it is read (panel_vcf.load_panel's options) and how it
    is cut: ``panel`` None means the demo cohort.

    array: a VCF (or a sites file, ``CHROM POS`` per line) of the sites the
    targets are typed at; training then hides every other site (array-aware
    training). None: random array-like patterns (TrainConfig.mask).
    genetic_map: a PLINK map; None means 1 cM per Mb.
    """
    panel: Optional[str] = None
    region: Optional[str] = None
    window: int = 128          # window length in sites
    overlap: int = 32          # overlap of consecutive windows in sites
    val_fraction: float = 0.1  # fraction of panel samples held out for validation
    array: Optional[str] = None
    genetic_map: Optional[str] = None
    multiallelic: str = "skip"   # multi-allelic records: "skip" (counted) or "split"
    af_from_info: bool = False   # ALT frequencies from INFO/AF instead of the haplotypes
    af_file: Optional[str] = None  # ... or from a CHROM POS REF ALT AF file
    drop_bad_sites: bool = False   # drop sites with a missing or unphased genotype instead of stopping

    def panel_options(self) -> Dict[str, Any]:
        """The keyword arguments of panel_vcf.load_panel."""
        return dict(region=self.region, multiallelic=self.multiallelic, af_from_info=self.af_from_info,
                    af_file=self.af_file, drop_bad_sites=self.drop_bad_sites)

    def __post_init__(self):
        _require(self.multiallelic in MULTIALLELIC_MODES,
                 f"--multiallelic {self.multiallelic!r}: expected one of {', '.join(MULTIALLELIC_MODES)}")
        _require(self.window >= 1, f"--window {self.window}: must be >= 1")
        _require(0 <= self.overlap < self.window,
                 f"--overlap {self.overlap}: must be >= 0 and smaller than --window {self.window}")
        _require(0 < self.val_fraction < 1, f"--val-fraction {self.val_fraction}: must be in (0, 1)")


@dataclass(frozen=True)
class CopyConfig:
    """The Li-Stephens copying posterior of each query haplotype over reference
    templates (copying.py), computed over the observed sites of a context.

    enabled: False gives the seed's design (FAISS neighbours only, no HMM).
    templates: reference haplotypes per query; 0 = every panel haplotype, else
        that many, chosen by FAISS retrieval over short sub-windows.
    context_sites: observed sites on each side of a window that the HMM sees.
    ne, mismatch: initial effective population size (switch rate
        0.04 * ne / templates per cM, as Beagle) and mismatch probability;
        both are learned when learn_rates is True.
    """
    enabled: bool = True
    templates: int = 0
    context_sites: int = 256
    ne: float = 100_000.0
    mismatch: float = 1e-3
    learn_rates: bool = True

    def __post_init__(self):
        _require(self.templates >= 0, f"--templates {self.templates}: must be >= 0 (0 = all)")
        _require(self.context_sites >= 1, f"--context-sites {self.context_sites}: must be >= 1")
        _require(self.ne > 0, f"--ne {self.ne}: must be > 0")
        _require(0 < self.mismatch < 0.5, f"--mismatch {self.mismatch}: must be in (0, 0.5)")


@dataclass(frozen=True)
class ModelConfig:
    """The network; ``max_window`` is the number of rows of the position table."""
    mode: str = "embedding"
    dim: int = 32             # small: the copying posterior carries most of the signal, the
    layers: int = 1           # transformer corrects it; imputation stays fast
    heads: int = 2
    max_window: int = 128
    af_features: int = 8      # Fourier features of the allele frequency
    half_width: int = 16      # local-agreement half window of the fusion, in sites
    alpha_init: float = 8.0   # initial weight of the local-agreement bias
    beta_init: float = -2.0   # initial weight of the retrieval distance (per mismatching site)
    calibration_hidden: int = 32   # width of the per-site calibration of the copying posterior

    def __post_init__(self):
        _require(self.mode in MODES, f"--mode {self.mode!r}: expected one of {', '.join(MODES)}")
        for name in ("dim", "heads", "max_window"):
            _require(getattr(self, name) >= 1, f"--{name} {getattr(self, name)}: must be >= 1")
        _require(self.layers >= 0, f"--layers {self.layers}: must be >= 0 (0: no transformer block)")
        _require(self.dim % self.heads == 0, f"--dim {self.dim}: must be a multiple of --heads {self.heads}")
        _require(self.af_features >= 2 and self.af_features % 2 == 0,
                 f"af_features {self.af_features}: must be even and >= 2")
        _require(self.half_width >= 0, f"--half-width {self.half_width}: must be >= 0")


@dataclass(frozen=True)
class RetrievalConfig:
    """Which reference haplotypes are fused into each query (model.py's fusion).

    k: neighbours fused per haplotype: the k templates of highest copying
    posterior over the window, or (copying disabled) the k nearest in
    embedding space. The FAISS keys (key_flank, key_decay, index, refresh)
    serve that search and the choice of templates (CopyConfig.templates).

    refresh: ``"fixed"`` (option A: keys encoded once, no gradient into the
    reference side), ``"epoch"`` or a number of steps (option B).

    keys: ``"l2"`` (the flattened embeddings of observed sites, retrieval.py)
    or ``"learned"`` (learned_keys.py: a key encoder of 2 * key_sites dims
    trained with a contrastive loss of weight key_weight against key_negatives
    hard negatives mined from the index), for the FAISS neighbours and for the
    choice of copying templates (CopyConfig.templates > 0).
    """
    k: int = 8                 # neighbours per haplotype
    key_flank: int = 768       # sites compared on each side of a window
    key_decay: float = 128.0   # flank site weight exp(-d / decay); 0: all weigh 1
    index: str = "Flat"        # FAISS index factory string
    refresh: str = "epoch"
    keys: str = "l2"           # "l2" or "learned"
    key_sites: int = 48        # learned keys: observed sites on each side of the focus (2x this many dims)
    key_negatives: int = 16    # learned keys: hard negatives mined per query
    key_weight: float = 1.0    # learned keys: weight of the contrastive loss

    def __post_init__(self):
        _require(self.k >= 1, f"--k {self.k}: must be >= 1")
        _require(self.keys in KEY_KINDS, f"--keys {self.keys!r}: expected one of {', '.join(KEY_KINDS)}")
        _require(self.key_sites >= 1, f"--key-sites {self.key_sites}: must be >= 1")
        _require(self.key_negatives >= 1, f"--key-negatives {self.key_negatives}: must be >= 1")
        _require(self.key_weight >= 0, f"--key-weight {self.key_weight}: must be >= 0")
        _require(self.key_flank >= 0, f"--key-flank {self.key_flank}: must be >= 0")
        _require(self.key_decay >= 0, f"--key-decay {self.key_decay}: must be >= 0")
        self.refresh_every  # validates the refresh policy

    @property
    def refresh_every(self) -> Optional[int]:
        """None for 'fixed', 0 for 'epoch', N for every N steps."""
        if self.refresh == "fixed":
            return None
        if self.refresh == "epoch":
            return 0
        if str(self.refresh).isdigit() and int(self.refresh) > 0:
            return int(self.refresh)
        raise InputError(f"--refresh {self.refresh!r}: expected 'fixed', 'epoch' or a positive number of steps")

    @property
    def detach_reference(self) -> bool:
        """Option A: fixed reference encodings get no gradient."""
        return self.refresh_every is None


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, masking and where it runs."""
    epochs: int = 3
    steps_per_epoch: int = 250   # batches per epoch drawn from all (window, samples) batches; 0 = all
    batch_size: int = 16         # samples per batch (2 haplotypes each)
    windows_per_step: int = 4    # consecutive windows per batch, sharing one copying posterior
    lr: float = 3e-3
    clip_grad: float = 0.0       # total gradient norm the step clips to; 0 = no clipping
    seed: int = 0
    mask: MaskConfig = field(default_factory=MaskConfig)
    device: str = "cpu"
    workers: int = 0             # data-loader worker processes
    amp: str = "auto"            # bf16 autocast of the model: auto (where bf16 is fast), bf16, off

    def __post_init__(self):
        _require(self.epochs >= 0, f"--epochs {self.epochs}: must be >= 0 (0: save the untrained model)")
        _require(self.batch_size >= 1, f"--batch-size {self.batch_size}: must be >= 1")
        _require(self.windows_per_step >= 1, f"--windows-per-step {self.windows_per_step}: must be >= 1")
        _require(self.steps_per_epoch >= 0, f"--steps-per-epoch {self.steps_per_epoch}: must be >= 0")
        _require(self.lr > 0, f"--lr {self.lr}: must be > 0")
        _require(self.clip_grad >= 0, f"--clip-grad {self.clip_grad}: must be >= 0 (0: no clipping)")
        _require(self.workers >= 0, f"--workers {self.workers}: must be >= 0")
        _require(self.device in ("cpu", "cuda"), f"--device {self.device!r}: expected cpu or cuda")
        _require(self.amp in AMP_CHOICES, f"--amp {self.amp!r}: expected one of {', '.join(AMP_CHOICES)}")


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run was given; what a checkpoint records."""
    data: DataConfig = field(default_factory=DataConfig)
    copying: CopyConfig = field(default_factory=CopyConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        _require(self.model.max_window >= self.data.window,
                 f"model position table of {self.model.max_window} rows is shorter than --window {self.data.window}")

    def to_dict(self) -> Dict[str, Any]:
        """Plain, JSON-able dicts with the format version."""
        return {"version": CONFIG_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, stored: Dict[str, Any], source: str = "checkpoint") -> "RunConfig":
        """The config :meth:`to_dict` wrote; InputError naming ``source`` if it cannot be read."""
        version = stored.get("version") if isinstance(stored, dict) else None
        if version != CONFIG_VERSION:
            raise InputError(f"{source}: config version {version!r} is not the {CONFIG_VERSION} this "
                             "embrag_ext reads (train the model again with this version)")
        try:
            train = dict(stored["train"])
            train["mask"] = MaskConfig(**{**train["mask"], "ratio_range": tuple(train["mask"]["ratio_range"])})
            return cls(data=DataConfig(**stored["data"]), copying=CopyConfig(**stored["copying"]),
                       retrieval=RetrievalConfig(**stored["retrieval"]), model=ModelConfig(**stored["model"]),
                       train=TrainConfig(**train))
        except (KeyError, TypeError) as error:
            raise InputError(f"{source}: unreadable config ({error})") from None

    def replace(self, **parts) -> "RunConfig":
        """A copy with some parts replaced, e.g. ``config.replace(train=...)``."""
        return dataclasses.replace(self, **parts)


def add_amp_argument(parser, default: str) -> None:
    """--amp, for train and impute (precision.use_autocast)."""
    parser.add_argument("--amp", choices=AMP_CHOICES, default=default,
                        help="bf16 autocast of the model: auto = where bf16 is fast (CUDA, CPUs with AMX/AVX512-BF16)")


def add_panel_arguments(parser, defaults: Optional[DataConfig] = None) -> None:
    """The options of how the panel is read (DataConfig.panel_options), for
    train and impute. With ``defaults`` None every default is None (impute:
    "as the checkpoint's run read it")."""
    keep = defaults is not None
    parser.add_argument("--multiallelic", choices=MULTIALLELIC_MODES, default=defaults.multiallelic if keep else None,
                        help="multi-allelic panel records: skip them (counted) or split them into biallelic sites")
    parser.add_argument("--af-from-info", action="store_true", default=defaults.af_from_info if keep else None,
                        help="take the panel's ALT frequencies from INFO/AF")
    parser.add_argument("--af-file", default=defaults.af_file if keep else None,
                        help="take them from a CHROM POS REF ALT AF file")
    parser.add_argument("--drop-bad-sites", action="store_true", default=defaults.drop_bad_sites if keep else None,
                        help="drop panel sites with a missing or unphased genotype instead of stopping")


def run_config_from_checkpoint(checkpoint: Dict[str, Any], source: str) -> RunConfig:
    """The run's config from a checkpoint: ``config`` (typed-config checkpoints)
    or, for checkpoints written before, ``args`` + ``model_config``."""
    if checkpoint.get("config") is not None:
        return RunConfig.from_dict(checkpoint["config"], source)
    if "args" in checkpoint and "model_config" in checkpoint:
        return _from_legacy(checkpoint["args"], checkpoint["model_config"], source)
    raise InputError(f"{source}: not an embrag_ext checkpoint (no config); "
                     "use the checkpoint.pt that python -m embrag_ext.train writes")


def _from_legacy(args: Dict[str, Any], model_config: Dict[str, Any], source: str) -> RunConfig:
    """A RunConfig from a checkpoint of embrag_ext 0.1 (argparse options as a dict;
    that version had no copying posterior)."""
    try:
        return RunConfig(
            data=DataConfig(panel=args["panel"], region=args["region"], window=args["window"],
                            overlap=args["overlap"], val_fraction=args["val_fraction"]),
            copying=CopyConfig(enabled=False),
            model=ModelConfig(**model_config),
            retrieval=RetrievalConfig(k=args["k"], key_flank=args["key_flank"], key_decay=args["key_decay"],
                                      index=args["index"], refresh=args["refresh"]),
            train=TrainConfig(epochs=args["epochs"], steps_per_epoch=args["steps_per_epoch"],
                              batch_size=args["batch_size"], lr=args["lr"], seed=args["seed"],
                              mask=MaskConfig(ratio_range=tuple(args["mask_ratio"]),
                                              sporadic_missing=args["sporadic_missing"]),
                              device=args["device"], workers=args["workers"]))
    except (KeyError, TypeError) as error:
        raise InputError(f"{source}: a checkpoint of an older embrag_ext whose options cannot be read "
                         f"({error}); train the model again") from None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)
