"""simclr_tf2.quickstart: the small runs behind the notebooks (executed in
full by tests/test_notebooks.py)."""
import os

import pytest

from simclr_tf2 import quickstart


def test_digits_config_follows_the_demo_recipe_and_takes_overrides():
    config = quickstart.digits_config("finetune", 40, **{"model.width_multiplier": 0.125})
    assert config.data.dataset == "digits" and config.train.train_steps == 40
    assert config.data.label_fraction == 0.1 and config.model.ft_proj_selector == 1
    assert config.model.width_multiplier == 0.125
    assert config.data.crop_area_min == 0.25 and not config.data.use_flip
    assert config.train.summary_interval % config.train.steps_per_loop == 0
    assert quickstart.digits_config("distill", 5).model.proj_head_mode == "none"
    with pytest.raises(ValueError, match="mode must be one of"):
        quickstart.digits_config("linear", 5)


def test_latest_module_is_none_without_an_export_and_picks_the_newest(tmp_path):
    assert quickstart.latest_module(str(tmp_path)) is None
    for step in (5, 40):
        os.makedirs(os.path.join(str(tmp_path), "hub", str(step), "head_0"))
    assert quickstart.latest_module(str(tmp_path), head=1) == os.path.join(
        str(tmp_path), "hub", "40", "head_1")
