"""A training run's settings against its panel, checked before any work.

config.py checks each value on its own (``--k 0``, ``--overlap`` >= ``--window``);
these are the values that pass there but cannot work on the panel at hand: a
window longer than the panel, or more neighbours (``--k``) or copying templates
(``--templates``) than the reference haplotypes a training query may use. A
training query never uses its own sample, so that is the panel's haplotypes
less one sample's. Each is a one-line :class:`InputError` with the largest
value that works.
"""
from __future__ import annotations

from .config import RunConfig
from .errors import InputError
from .panel import Panel


def usable_haplotypes(panel: Panel) -> int:
    """Reference haplotypes a training query may use: the panel's, less its own sample's."""
    return int(panel.present_haplotypes().sum()) - int(panel.ploidy.max())


def check_settings_fit_panel(config: RunConfig, panel: Panel) -> None:
    """InputError naming the flag if ``config`` asks more of ``panel`` than it has."""
    window, n_sites = config.data.window, panel.n_sites
    if window > n_sites:
        raise InputError(f"--window {window}: longer than the {n_sites} sites of {panel.source}; "
                         f"use --window {n_sites} or less")
    if config.model.mode == "none":
        return            # no reference haplotypes are used
    usable = usable_haplotypes(panel)
    k, templates = config.retrieval.k, config.copying.templates
    if k > usable:
        raise InputError(f"--k {k}: more neighbours than the {usable} reference haplotypes a training query "
                         f"may use ({panel.source}, less the query's own sample); use --k {usable} or less")
    if config.copying.enabled and templates > usable:
        raise InputError(f"--templates {templates}: more than the {usable} reference haplotypes a training "
                         f"query may use ({panel.source}, less the query's own sample); use --templates 0 "
                         "for all of them")
