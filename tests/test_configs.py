"""Typed configs and presets."""
import dataclasses
import json

import pytest

from simclr_tf2 import (DataConfig, ExperimentConfig, ExportConfig, MemoryConfig,
                        ModelConfig, TrainConfig, get_preset, preset_names)
from simclr_tf2.configs import RELEASED_SK_RATIO

PAPER_BACKBONES = ["r50_1x_sk0", "r50_1x_sk1", "r50_2x_sk0", "r50_2x_sk1",
                   "r101_1x_sk0", "r101_1x_sk1", "r101_2x_sk0", "r101_2x_sk1",
                   "r152_1x_sk0", "r152_1x_sk1", "r152_2x_sk0", "r152_2x_sk1",
                   "r152_3x_sk1"]


def test_presets_cover_the_paper_and_tests():
    names = set(preset_names())
    assert set(PAPER_BACKBONES) <= names
    assert {"cifar_r18", "cifar_r50", "tiny"} <= names


@pytest.mark.parametrize("name", PAPER_BACKBONES)
def test_imagenet_preset_encodes_its_name(name):
    depth, width, sk = name[1:].split("_")
    config = get_preset(name)
    assert config.model.depth == int(depth)
    assert config.model.width_multiplier == int(width[:-1])
    assert config.model.sk_ratio == (RELEASED_SK_RATIO if sk == "sk1" else 0.0)
    assert config.data.image_size == 224 and not config.model.cifar_stem
    # The README recipe: lr 0.075 sqrt-scaled, B=4096, wd 1e-4, temperature 0.1.
    assert (config.train.learning_rate, config.train.learning_rate_scaling) == (0.075, "sqrt")
    assert config.train.train_batch_size == 4096
    assert config.train.weight_decay == 1e-4 and config.train.temperature == 0.1
    assert config.model.sync_bn


def test_cifar_and_tiny_presets():
    cifar = get_preset("cifar_r18")
    assert cifar.model.cifar_stem and cifar.model.depth == 18
    assert cifar.train.temperature == 0.5 and cifar.data.color_jitter_strength == 0.5
    assert not cifar.data.use_blur and cifar.train.learning_rate == 1.0
    tiny = get_preset("tiny")
    assert tiny.model.width_multiplier == 0.25 and tiny.data.dataset == "digits"


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'r42_1x_sk0'.*r50_1x_sk0"):
        get_preset("r42_1x_sk0")


@pytest.mark.parametrize("cls,kwargs,message", [
    (ModelConfig, dict(depth=42), "depth=42"),
    (ModelConfig, dict(sk_ratio=-1), "sk_ratio=-1"),
    (ModelConfig, dict(width_multiplier=0), "width_multiplier=0"),
    (ModelConfig, dict(depth=18, sk_ratio=0.0625), "basic blocks"),
    (ModelConfig, dict(fine_tune_after_block=5), "fine_tune_after_block=5"),
    (ModelConfig, dict(proj_head_mode="deep"), "proj_head_mode='deep'"),
    (ModelConfig, dict(proj_head_mode="linear", ft_proj_selector=2), "ft_proj_selector=2"),
    (ModelConfig, dict(num_proj_layers=3, ft_proj_selector=-5), "ft_proj_selector=-5"),
    (DataConfig, dict(label_fraction=0), "label_fraction=0"),
    (DataConfig, dict(label_fraction=1.5), "label_fraction=1.5"),
    (DataConfig, dict(dataset="folder"), "needs data_dir"),
    (DataConfig, dict(image_size=2), "image_size=2"),
    (TrainConfig, dict(train_batch_size=0), "train_batch_size=0"),
    (TrainConfig, dict(temperature=0), "temperature=0"),
    (TrainConfig, dict(train_epochs=0, train_steps=0), "train_epochs or train_steps"),
    (TrainConfig, dict(precision="fp8"), "precision='fp8'"),
    (TrainConfig, dict(bn_recompute_images="test"), "bn_recompute_images='test'"),
    (MemoryConfig, dict(queue_size=-1), "queue_size=-1"),
    (MemoryConfig, dict(momentum=1.5), "momentum=1.5"),
    (ExportConfig, dict(keep_hub_module_max=-1), "keep_hub_module_max=-1"),
])
def test_bad_values_name_the_field_and_value(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize("mode,layers,edges", [
    ("nonlinear", 3, (-4, 3)), ("linear", 3, (-2, 1)), ("none", 3, (-1, 0))])
def test_selector_range_follows_head_mode(mode, layers, edges):
    """Layers 0..k of a k-layer head (negative: from the end) are accepted
    up to each edge, and one past it is refused."""
    low, high = edges
    for selector in (low, high):
        ModelConfig(proj_head_mode=mode, num_proj_layers=layers, ft_proj_selector=selector)
    for selector in (low - 1, high + 1):
        with pytest.raises(ValueError, match=f"ft_proj_selector={selector}"):
            ModelConfig(proj_head_mode=mode, num_proj_layers=layers,
                        ft_proj_selector=selector)


def test_json_round_trip_and_override():
    config = get_preset("r50_1x_sk1")
    again = ExperimentConfig.from_dict(json.loads(config.to_json()))
    assert again == config
    changed = config.override(**{"model.depth": 101, "train.temperature": 0.2})
    assert changed.model.depth == 101 and changed.train.temperature == 0.2
    assert changed.model.sk_ratio == config.model.sk_ratio
    assert config.model.depth == 50  # configs are immutable
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.depth = 18  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown model config fields"):
        config.override(**{"model.layers": 3})
    with pytest.raises(ValueError, match="section.field"):
        config.override(depth=3)
    with pytest.raises(ValueError, match="depth=7"):
        config.override(**{"model.depth": 7})
