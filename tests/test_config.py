"""Typed configs: built once from the command line, stored in the checkpoint, read back."""
import dataclasses
import os

import numpy as np
import pytest
import torch

from embrag_ext import train
from embrag_ext.checkpoint import Checkpoint, load_checkpoint, write_checkpoint
from embrag_ext.config import RetrievalConfig, RunConfig
from embrag_ext.errors import InputError

OLD_ARGS = {  # the argparse options a checkpoint of embrag_ext 0.1 stored as "args"
    "config": None, "panel": "panel.vcf.gz", "region": "1", "window": 64, "overlap": 16, "dim": 32, "layers": 1,
    "heads": 2, "mode": "embedding", "k": 5, "key_flank": 100, "key_decay": 50.0, "half_width": 8,
    "refresh": "3", "index": "Flat", "epochs": 2, "steps_per_epoch": 10, "batch_size": 4, "lr": 0.01,
    "seed": 3, "val_fraction": 0.2, "mask_ratio": [0.1, 0.3], "sporadic_missing": 0.01, "device": "cpu",
    "workers": 0, "out": "runs/x", "resume": None, "refresh_every": 3}
OLD_MODEL = {"mode": "embedding", "dim": 32, "layers": 1, "heads": 2, "max_window": 64, "af_features": 8,
             "half_width": 8, "alpha_init": 8.0, "beta_init": -2.0}


def test_the_command_line_becomes_one_typed_object_per_stage():
    config = train.run_config(train.parse_options(["--k", "12", "--refresh", "25", "--window", "96",
                                                   "--overlap", "8", "--mask-ratio", "0.02", "0.04"]))
    assert config.retrieval == RetrievalConfig(k=12, refresh="25")
    assert config.retrieval.refresh_every == 25 and not config.retrieval.detach_reference
    assert (config.data.window, config.data.overlap, config.model.max_window) == (96, 8, 96)
    assert config.train.mask.ratio_range == (0.02, 0.04)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.retrieval.k = 3


def test_config_round_trips_through_a_checkpoint(tmp_path):
    config = train.run_config(train.parse_options(["--k", "7", "--refresh", "fixed", "--window", "64"]))
    path = str(tmp_path / "checkpoint.pt")
    write_checkpoint(path, Checkpoint(config=config, model={"w": torch.zeros(1)}, windows=np.zeros((1, 2)),
                                      panel_positions=np.arange(3)))
    stored = torch.load(path, weights_only=False)
    assert stored["config"]["version"] == 1 and stored["config"]["retrieval"]["k"] == 7
    assert load_checkpoint(path, "cpu").config == config
    assert os.listdir(tmp_path) == ["checkpoint.pt"]                       # no temporary file left


def test_a_checkpoint_from_before_typed_configs_still_loads(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"args": OLD_ARGS, "model_config": OLD_MODEL, "model": {}, "optimizer": {}, "retriever": None,
                "epoch": 2, "step": 20, "history": [], "train_samples": ["a"], "val_samples": ["b"],
                "windows": np.zeros((1, 2), dtype=np.int64), "panel_positions": np.arange(5)}, path)
    checkpoint = load_checkpoint(str(path), "cpu")
    config = checkpoint.config
    assert (config.retrieval.k, config.retrieval.refresh_every, config.data.window) == (5, 3, 64)
    assert config.train.mask.ratio_range == (0.1, 0.3) and config.model.dim == 32
    assert (checkpoint.epoch, checkpoint.step) == (2, 20)


def test_an_unreadable_config_gives_one_line_that_says_why(tmp_path):
    path = tmp_path / "future.pt"
    stored = {"config": {**RunConfig().to_dict(), "version": 99}, "model": {}, "windows": np.zeros((1, 2)),
              "panel_positions": np.arange(2)}
    torch.save(stored, path)
    with pytest.raises(InputError, match=r"config version 99 is not the 1 this embrag_ext reads"):
        load_checkpoint(str(path), "cpu")
    torch.save({**stored, "config": None, "args": {"k": 3}, "model_config": OLD_MODEL}, path)
    with pytest.raises(InputError, match="older embrag_ext whose options cannot be read"):
        load_checkpoint(str(path), "cpu")


def test_panel_options_travel_from_the_command_line_to_load_panel():
    config = train.run_config(train.parse_options(["--multiallelic", "split", "--drop-bad-sites", "--af-from-info",
                                                   "--region", "1:1-500"]))
    assert config.data.panel_options() == dict(region="1:1-500", multiallelic="split", af_from_info=True,
                                                af_file=None, drop_bad_sites=True)
    stored = RunConfig.from_dict(config.to_dict())
    assert stored.data == config.data
    older = config.to_dict()
    for name in ("multiallelic", "af_from_info", "af_file", "drop_bad_sites"):   # a checkpoint from before the flags
        del older["data"][name]
    assert RunConfig.from_dict(older).data.panel_options()["multiallelic"] == "skip"
    with pytest.raises(SystemExit):
        train.parse_options(["--multiallelic", "merge"])
