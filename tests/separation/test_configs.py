"""Every separation experiment composes and builds its model; the model YAMLs list every
config field at the dataclass's default (so `model.params.X=...` overrides work for all)."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from sonus.cli import compose
from sonus.separation.models import MODEL_NAMES, model_classes


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_yaml_lists_every_field_at_its_default(name):
    cfg = compose("train", [f"experiment=sep_{name}"])
    assert cfg.task == "separation" and cfg.model.name == name
    params = OmegaConf.to_container(cfg.model.params)
    cfg_cls, _ = model_classes(name)
    defaults = {f.name: f.default for f in dataclasses.fields(cfg_cls)}
    assert params == defaults


@pytest.mark.parametrize("data", ["librimix", "polsess"])
def test_data_configs_compose(data, monkeypatch):
    monkeypatch.setenv("POLSESS_DATA_ROOT", "/corpora/PolSESS")
    cfg = compose("train", ["experiment=sep_dprnn", f"data={data}"])
    assert cfg.data.kind == data
    if data == "polsess":  # the environment fills the default; the command line wins over it
        assert cfg.data.root == "/corpora/PolSESS"
        assert compose("train", ["experiment=sep_dprnn", "data=polsess", "data.root=/x"]).data.root == "/x"
