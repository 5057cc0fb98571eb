"""SimCLRModel: views in, named outputs, head modes, pretrain vs finetune."""
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2 import ENDPOINTS, get_preset
from simclr_tf2.models import SimCLRModel

TINY = get_preset("tiny").model


def _views(n=4, size=32):
    return [tf.random.uniform([n, size, size, 3]), tf.random.uniform([n, size, size, 3])]


def test_two_views_as_separate_inputs_give_named_outputs():
    model = SimCLRModel(TINY)
    outputs = model(_views(), training=True)
    expected = set(ENDPOINTS) | {"proj_head_input", "proj_head_layer1", "proj_head_layer2",
                                 "proj_head_layer3", "proj_head_output", "finetune_input",
                                 "logits_sup"}
    assert set(outputs) == expected
    assert outputs["proj_head_output"].shape == (8, TINY.proj_out_dim)
    assert outputs["proj_head_input"].shape == (8, 128)
    assert outputs["logits_sup"].shape == (8, 10)
    np.testing.assert_array_equal(outputs["proj_head_output"].numpy(),
                                  outputs["proj_head_layer3"].numpy())


def test_views_are_concatenated_view_one_first():
    model = SimCLRModel(TINY.__class__(**{**TINY.__dict__, "num_classes": 0}))
    a, b = _views(2)
    both = model([a, b], training=False)["final_avg_pool"].numpy()
    np.testing.assert_allclose(both[:2], model(a, training=False)["final_avg_pool"].numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(both[2:], model(b, training=False)["final_avg_pool"].numpy(),
                               rtol=1e-5)


@pytest.mark.parametrize("mode,selector,layers,expected_width", [
    ("nonlinear", 0, 3, 128), ("nonlinear", 1, 3, 128), ("nonlinear", -1, 3, 32),
    ("nonlinear", 2, 2, 32), ("linear", 0, 1, 128), ("linear", 1, 1, 32),
    ("linear", -1, 1, 32), ("none", 0, 1, 128), ("none", -1, 1, 128)])
def test_every_head_mode_and_selector(mode, selector, layers, expected_width):
    config = TINY.__class__(**{**TINY.__dict__, "proj_head_mode": mode,
                               "num_proj_layers": layers, "ft_proj_selector": selector})
    for model_mode in ("pretrain", "finetune"):
        model = SimCLRModel(config, mode=model_mode)
        outputs = model(_views(2), training=True)
        assert outputs["finetune_input"].shape == (4, expected_width)
        assert outputs["logits_sup"].shape == (4, 10)


def test_bad_head_settings_are_clear_errors():
    with pytest.raises(ValueError, match="ft_proj_selector=2"):
        TINY.__class__(**{**TINY.__dict__, "proj_head_mode": "linear", "ft_proj_selector": 2})
    with pytest.raises(ValueError, match="mode='train'"):
        SimCLRModel(TINY, mode="train")


def test_pretrain_supervised_head_does_not_shape_the_representation():
    model = SimCLRModel(TINY, mode="pretrain")
    views = _views(2)
    with tf.GradientTape() as tape:
        logits = model(views, training=True)["logits_sup"]
        loss = tf.reduce_sum(logits ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    for var, grad in zip(model.trainable_variables, grads):
        if "head_supervised/" in var.name:
            assert grad is not None
        else:
            assert grad is None, var.name


def test_finetune_from_layer_one_drops_later_layers_and_trains_through():
    config = TINY.__class__(**{**TINY.__dict__, "ft_proj_selector": 1})
    model = SimCLRModel(config, mode="finetune")
    with tf.GradientTape() as tape:
        outputs = model(_views(2)[0], training=True)
        loss = tf.reduce_sum(outputs["logits_sup"] ** 2)
    assert "proj_head_layer2" not in outputs and "proj_head_layer1" in outputs
    assert len(model.projection_head.dense_layers) == 1
    grads = tape.gradient(loss, model.trainable_variables)
    backbone_grads = [g for v, g in zip(model.trainable_variables, grads)
                      if "head_supervised/" not in v.name and "projection_head/" not in v.name]
    assert backbone_grads and all(g is not None for g in backbone_grads)


def test_zero_init_logits_layer_really_zeroes():
    model = SimCLRModel(TINY, mode="finetune", zero_init_logits_layer=True)
    logits = model(_views(2)[0], training=False)["logits_sup"]
    assert float(tf.reduce_max(tf.abs(logits))) == 0.0
