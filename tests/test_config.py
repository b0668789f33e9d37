"""Config: YAML + dotted overrides, type checks, clear errors, round trip."""

from pathlib import Path

import pytest

from vit.config import Config, config_from_dict, load_config, parse_override, to_dict, to_yaml
from vit.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.epochs=5", "model.name=vit_small_patch16_224",
                             "train.lr=3e-4", "train.clip_grad=none", "data.mean=[0.5,0.5,0.5]"])
    assert cfg.train.epochs == 5
    assert cfg.model.name == "vit_small_patch16_224"
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.clip_grad is None
    assert cfg.data.mean == [0.5, 0.5, 0.5]


def test_int_is_accepted_where_a_float_is_expected():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.epoch=5", r"unknown config key 'train.epoch'.*epochs"),
        ("trian.epochs=5", "SECTION one of model, data, train, loss"),
        ("epochs=5", "SECTION.KEY"),
        ("train.epochs=five", "train.epochs: expected an integer"),
        ("train.epochs=2.5", "train.epochs: expected an integer"),
        ("train.ema=maybe", "train.ema: expected true or false"),
        ("train.precision=fp8", "must be one of"),
        ("train.epochs", "must look like section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_bad_yaml_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="epochz"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_roundtrip_unchanged(tmp_path):
    cfg = load_config(None, ["train.epochs=3", "model.reg_tokens=4", "data.root=/x",
                             "loss.class_weights=balanced"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(path)
    assert again == cfg
    assert to_yaml(again) == to_yaml(cfg)


def test_config_from_dict_defaults():
    assert config_from_dict({}) == Config()
    assert parse_override("data.root=") == ("data.root", None)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_recipes_load_and_name_a_known_model(path):
    from vit.models.presets import list_models

    cfg = load_config(path)
    assert cfg.model.name in list_models()
    assert to_dict(cfg)
