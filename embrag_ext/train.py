"""Train an imputation model: ``python -m embrag_ext.train``.

With no arguments it trains the ``embedding`` mode on the demo cohort
(demo.py) with small defaults that finish in a few minutes on two CPU cores.
Each epoch prints the train and validation loss, the seed's ALT-F1 (rare /
common, masked alleles) and the dosage r2 of the validation samples, and
writes ``checkpoint.pt`` and ``metrics.json`` to the output directory
(default ``runs/<mode>-<time>``; printed). What a run does is training.py;
this module turns the command line into a :class:`~embrag_ext.config.RunConfig`.

Options may also come from ``--config file.json`` (keys = option names with
underscores); command-line options win. ``--resume DIR`` continues the run in
DIR with its stored config (only --epochs, --device, --workers, --amp may be
given with it). On the CPU a run is deterministic given ``--seed``, and a run
killed at any point and resumed ends as the same run uninterrupted would.
``--out`` must not hold a run already; a bad input leaves no output directory behind.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import List, Optional, Sequence, Tuple

import torch

from . import distributed
from .atomic import check_output_directory, check_writable_directory
from .checkpoint import CHECKPOINT_NAME, Checkpoint, check_model_weights, load_checkpoint
from .config import (KEY_KINDS, MODES, CopyConfig, DataConfig, ModelConfig, RetrievalConfig,
                     RunConfig, TrainConfig, add_amp_argument, add_panel_arguments)
from .errors import InputError, run_cli
from .masking import MaskConfig
from .training import train

DEFAULTS = RunConfig()
RESUME_OPTIONS = ("resume", "epochs", "device", "workers")   # what --resume takes from the command line


def build_parser() -> argparse.ArgumentParser:
    data, copying, retrieval = DEFAULTS.data, DEFAULTS.copying, DEFAULTS.retrieval
    model, training = DEFAULTS.model, DEFAULTS.train
    p = argparse.ArgumentParser(prog="python -m embrag_ext.train", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="JSON file of options (keys: option names with underscores)")
    p.add_argument("--panel", help="phased reference panel VCF/BCF (default: the demo cohort)")
    p.add_argument("--region", help="CHROM[:START-END] of the panel to use")
    add_panel_arguments(p, data)
    p.add_argument("--window", type=int, default=data.window, help="window length in sites")
    p.add_argument("--overlap", type=int, default=data.overlap, help="overlap of consecutive windows in sites")
    p.add_argument("--val-fraction", type=float, default=data.val_fraction, help="fraction of samples held out")
    p.add_argument("--array", help="the targets' VCF (or a 'CHROM POS' sites file): train with its typed sites "
                                   "observed and every other site hidden (default: random array-like patterns)")
    p.add_argument("--map", dest="genetic_map", help="genetic map, PLINK format (default: 1 cM per Mb)")
    p.add_argument("--copying", choices=("on", "off"), default="on" if copying.enabled else "off",
                   help="the Li-Stephens copying posterior over reference templates (off: the seed's design)")
    p.add_argument("--templates", type=int, default=copying.templates,
                   help="reference haplotypes each query copies from (0: all of the panel)")
    p.add_argument("--context-sites", type=int, default=copying.context_sites,
                   help="observed sites on each side of a window that the copying model sees")
    p.add_argument("--ne", type=float, default=copying.ne, help="initial effective population size (switch rate)")
    p.add_argument("--mismatch", type=float, default=copying.mismatch, help="initial copying mismatch probability")
    p.add_argument("--fixed-rates", action="store_true", help="keep --ne and --mismatch fixed (default: learned)")
    p.add_argument("--mode", choices=MODES, default=model.mode)
    p.add_argument("--dim", type=int, default=model.dim)
    p.add_argument("--layers", type=int, default=model.layers)
    p.add_argument("--heads", type=int, default=model.heads)
    p.add_argument("--half-width", type=int, default=model.half_width, help="local-agreement half window (sites)")
    p.add_argument("--k", type=int, default=retrieval.k, help="neighbours fused per haplotype")
    p.add_argument("--key-flank", type=int, default=retrieval.key_flank,
                   help="retrieval compares the window plus this many sites on each side")
    p.add_argument("--key-decay", type=float, default=retrieval.key_decay,
                   help="a flank site at distance d from the window weighs exp(-d / decay) (0: all 1)")
    p.add_argument("--refresh", default=retrieval.refresh,
                   help="'fixed' (option A), 'epoch' or a number of steps (option B)")
    p.add_argument("--index", default=retrieval.index, help="FAISS index factory string (default exact 'Flat'; "
                                                            "e.g. IVF64,Flat or HNSW32: recall@K logged at each refresh)")
    p.add_argument("--keys", choices=KEY_KINDS, default=retrieval.keys,
                   help="retrieval keys: l2 (flattened embeddings of observed sites) or learned (a key encoder "
                        "trained with mined hard negatives), for FAISS neighbours and for --templates K")
    p.add_argument("--key-sites", type=int, default=retrieval.key_sites,
                   help="learned keys: observed sites on each side of the focus (keys of 2x this many dims)")
    p.add_argument("--key-negatives", type=int, default=retrieval.key_negatives,
                   help="learned keys: hard negatives mined from the index per query")
    p.add_argument("--key-weight", type=float, default=retrieval.key_weight,
                   help="learned keys: weight of their contrastive loss")
    p.add_argument("--epochs", type=int, default=training.epochs)
    p.add_argument("--steps-per-epoch", type=int, default=training.steps_per_epoch,
                   help="batches per epoch, drawn at random from all (window, samples) batches; 0 = all")
    p.add_argument("--batch-size", type=int, default=training.batch_size, help="samples per batch (2 haplotypes each)")
    p.add_argument("--windows-per-step", type=int, default=training.windows_per_step,
                   help="consecutive windows per batch (they share one copying posterior)")
    p.add_argument("--lr", type=float, default=training.lr)
    p.add_argument("--clip-grad", type=float, default=training.clip_grad, metavar="NORM",
                   help="clip the gradients to this total norm at every step (0: no clipping)")
    p.add_argument("--seed", type=int, default=training.seed)
    p.add_argument("--mask-ratio", type=float, nargs=2, default=training.mask.ratio_range, metavar=("LOW", "HIGH"),
                   help="range of the observed-site fraction of training patterns")
    p.add_argument("--sporadic-missing", type=float, default=training.mask.sporadic_missing,
                   help="probability that an observed site is missing for a sample")
    p.add_argument("--device", choices=("cpu", "cuda"), default=training.device)
    p.add_argument("--workers", type=int, default=training.workers, help="data-loader worker processes")
    add_amp_argument(p, training.amp)
    p.add_argument("--out", help="output directory (default runs/<mode>-<time>)")
    p.add_argument("--resume", help="output directory (or checkpoint.pt) of a run to continue")
    return p


def parse_options(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (and --config file) as options; command-line options win."""
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.config:
        parser.set_defaults(**read_config_file(options.config, parser))
        options = parser.parse_args(argv)
    return options


def read_config_file(path: str, parser: argparse.ArgumentParser) -> dict:
    try:
        with open(path) as handle:
            config = json.load(handle)
    except (OSError, ValueError) as error:
        raise InputError(f"--config {path}: {error}") from None
    if not isinstance(config, dict):
        raise InputError(f"--config {path}: expected a JSON object of options")
    unknown = sorted(set(config) - {action.dest for action in parser._actions})
    if unknown:
        raise InputError(f"--config {path}: unknown options {', '.join(unknown)}")
    return config


def run_config(options: argparse.Namespace) -> RunConfig:
    """The typed config of a run, built once from the options."""
    return RunConfig(
        data=DataConfig(panel=options.panel, region=options.region, window=options.window,
                        overlap=options.overlap, val_fraction=options.val_fraction, array=options.array,
                        genetic_map=options.genetic_map, multiallelic=options.multiallelic,
                        af_from_info=options.af_from_info, af_file=options.af_file,
                        drop_bad_sites=options.drop_bad_sites),
        copying=CopyConfig(enabled=options.copying == "on", templates=options.templates,
                           context_sites=options.context_sites, ne=options.ne, mismatch=options.mismatch,
                           learn_rates=not options.fixed_rates),
        model=ModelConfig(mode=options.mode, dim=options.dim, layers=options.layers, heads=options.heads,
                          max_window=options.window, half_width=options.half_width),
        retrieval=RetrievalConfig(k=options.k, key_flank=options.key_flank, key_decay=options.key_decay,
                                  index=options.index, refresh=options.refresh, keys=options.keys,
                                  key_sites=options.key_sites, key_negatives=options.key_negatives,
                                  key_weight=options.key_weight),
        train=TrainConfig(epochs=options.epochs, steps_per_epoch=options.steps_per_epoch,
                          batch_size=options.batch_size, windows_per_step=options.windows_per_step,
                          lr=options.lr, clip_grad=options.clip_grad, seed=options.seed,
                          mask=MaskConfig(ratio_range=tuple(options.mask_ratio),
                                          sporadic_missing=options.sporadic_missing),
                          device=options.device, workers=options.workers, amp=options.amp))


def check_out_directory(out_dir: str) -> None:
    """InputError unless a new run can go in ``out_dir``: an existing directory that holds
    no run yet, or one that can be made (its nearest existing parent is a writable directory)."""
    if os.path.isfile(os.path.join(out_dir, CHECKPOINT_NAME)):
        raise InputError(f"--out {out_dir}: already holds a run (checkpoint.pt); continue it with "
                         f"--resume {out_dir} or choose another --out")
    check_output_directory(out_dir, "--out")


def check_resume_options(options: argparse.Namespace) -> None:
    """InputError if an option other than RESUME_OPTIONS was given with --resume
    (a resumed run keeps its stored settings: the option would be ignored)."""
    defaults = vars(build_parser().parse_args([]))
    given = [name for name, value in vars(options).items() if name not in RESUME_OPTIONS and value != defaults[name]]
    if given:
        raise InputError(f"--{given[0].replace('_', '-')}: a run continued with --resume keeps its stored settings; "
                         "only --epochs, --device and --workers may be given with it")


def resumed_run(options: argparse.Namespace) -> Tuple[RunConfig, str, Checkpoint]:
    """(the stored config with the command line's epochs, device, workers and amp,
    the run's directory, its checkpoint)."""
    check_resume_options(options)
    path = options.resume
    path = os.path.join(path, CHECKPOINT_NAME) if os.path.isdir(path) else path
    if not os.path.isfile(path):
        raise InputError(f"--resume {options.resume}: no checkpoint.pt there")
    checkpoint = load_checkpoint(path, options.device, flag="--resume")
    check_model_weights(checkpoint, f"--resume {path}")
    check_writable_directory(os.path.dirname(os.path.abspath(path)), f"--resume {options.resume}")
    stored = checkpoint.config
    config = stored.replace(train=dataclasses.replace(stored.train, epochs=options.epochs,
                                                      device=options.device, workers=options.workers,
                                                      amp=options.amp))
    return config, os.path.dirname(os.path.abspath(path)), checkpoint


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    options = parse_options(argv)
    if options.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    if options.resume:
        config, out_dir, checkpoint = resumed_run(options)
    else:
        config, checkpoint = run_config(options), None
        out_dir = options.out or os.path.join("runs", f"{options.mode}-{time.strftime('%Y%m%d-%H%M%S')}")
        check_out_directory(out_dir)
    with distributed.session(config.train.device) as trainer_class:     # torchrun: DDP across processes
        history = train(config, out_dir, resume=checkpoint, trainer_class=trainer_class)
        print(f"checkpoint and metrics in {out_dir}")
    return history


def cli() -> None:
    """The console script ``embrag-train`` (the same as ``python -m embrag_ext.train``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
