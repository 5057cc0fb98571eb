"""Projection head modes, selector, supervised head."""
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.heads import ProjectionHead, SupervisedHead, resolve_selector
from simclr_tf2.layers import NormSettings


def _param_count(layer):
    return sum(int(np.prod(v.shape)) for v in layer.weights)


@pytest.mark.parametrize("width,total,first", [(2048, 8.67, 4.20), (4096, 34.11, 16.79)])
def test_three_layer_head_parameter_counts_match_published(width, total, first):
    head = ProjectionHead("nonlinear", num_proj_layers=3, proj_out_dim=128)
    head(tf.zeros([2, width]), training=False)
    assert abs(_param_count(head) / 1e6 - total) < 0.01
    layer1 = _param_count(head.dense_layers[0]) + _param_count(head.bn_layers[0])
    assert abs(layer1 / 1e6 - first) < 0.01


def test_nonlinear_layers_structure():
    head = ProjectionHead("nonlinear", num_proj_layers=3, proj_out_dim=16)
    x = tf.random.normal([8, 32])
    outputs = head(x, training=True)
    assert [tuple(o.shape) for o in outputs] == [(8, 32), (8, 32), (8, 32), (8, 16)]
    assert all(not d.use_bias for d in head.dense_layers)
    assert [bn.relu for bn in head.bn_layers] == [True, True, False]
    assert [bn.center for bn in head.bn_layers] == [True, True, False]
    assert (outputs[1].numpy() >= 0).all() and (outputs[3].numpy() < 0).any()
    np.testing.assert_allclose(np.std(head.dense_layers[0].kernel.numpy()), 0.01, rtol=0.1)


def test_linear_and_none_modes():
    x = tf.random.normal([4, 12])
    linear = ProjectionHead("linear", proj_out_dim=6)
    outputs = linear(x, training=True)
    assert [tuple(o.shape) for o in outputs] == [(4, 12), (4, 6)]
    assert not linear.bn_layers[0].center and not linear.bn_layers[0].relu
    none = ProjectionHead("none")
    outputs = none(x)
    assert len(outputs) == 1 and outputs[0] is x
    assert none.weights == []


def test_keep_layers_truncates_for_fine_tuning():
    head = ProjectionHead("nonlinear", num_proj_layers=3, proj_out_dim=8, keep_layers=1)
    outputs = head(tf.random.normal([4, 10]), training=False)
    assert len(outputs) == 2 and outputs[1].shape == (4, 10)
    with pytest.raises(ValueError, match="keep_layers=4"):
        ProjectionHead("nonlinear", num_proj_layers=3, keep_layers=4)
    with pytest.raises(ValueError, match="keep_layers=2"):
        ProjectionHead("linear", keep_layers=2)


@pytest.mark.parametrize("selector,layers,expected", [
    (0, 3, 0), (1, 3, 1), (3, 3, 3), (-1, 3, 3), (-4, 3, 0), (1, 1, 1), (0, 0, 0), (-1, 0, 0)])
def test_selector_resolution(selector, layers, expected):
    assert resolve_selector(selector, layers) == expected


@pytest.mark.parametrize("selector,layers", [(4, 3), (-5, 3), (2, 1), (1, 0)])
def test_selector_out_of_range_is_a_clear_error(selector, layers):
    with pytest.raises(ValueError, match=f"ft_proj_selector={selector}"):
        resolve_selector(selector, layers)


def test_head_errors_name_the_value():
    with pytest.raises(ValueError, match="proj_head_mode='mlp'"):
        ProjectionHead("mlp")
    with pytest.raises(ValueError, match="num_proj_layers=0"):
        ProjectionHead("nonlinear", num_proj_layers=0)
    with pytest.raises(ValueError, match="num_classes=0"):
        SupervisedHead(0)


def test_supervised_head_and_zero_init():
    head = SupervisedHead(5)
    logits = head(tf.random.normal([3, 400]))
    assert logits.shape == (3, 5)
    assert all(v.name.startswith("head_supervised/") for v in head.weights)
    assert head.dense.use_bias
    # The authors' initialiser, N(0, 0.01^2): 2000 draws give the std to ~2%.
    kernel = head.dense.kernel.numpy()
    assert abs(kernel.mean()) < 0.001 and 0.009 < kernel.std() < 0.011
    head.zero_weights()
    assert float(tf.reduce_max(tf.abs(head(tf.random.normal([3, 400]))))) == 0.0
    zeroed = SupervisedHead(5, zero_init=True)
    assert float(tf.reduce_max(tf.abs(zeroed(tf.random.normal([3, 7]))))) == 0.0


def test_head_get_config_round_trips():
    """Clones from get_config() have the constructor's arguments (none of
    them a default) and, built, the same layers and norm settings."""
    head = ProjectionHead("linear", num_proj_layers=2, proj_out_dim=8, keep_layers=0,
                          norm=NormSettings(momentum=0.8, epsilon=1e-3))
    clone = ProjectionHead.from_config(head.get_config())
    assert (clone.mode, clone.num_proj_layers, clone.proj_out_dim, clone.keep_layers) == (
        "linear", 2, 8, 0)
    head = ProjectionHead("nonlinear", num_proj_layers=2, proj_out_dim=8, keep_layers=1,
                          norm=NormSettings(momentum=0.8, epsilon=1e-3))
    clone = ProjectionHead.from_config(head.get_config())
    assert (clone.mode, clone.num_proj_layers, clone.proj_out_dim, clone.keep_layers) == (
        "nonlinear", 2, 8, 1)
    clone(tf.zeros([2, 16]), training=False)
    assert [d.units for d in clone.dense_layers] == [16]  # the kept layer only
    assert [(b.momentum, b.epsilon) for b in clone.bn_layers] == [(0.8, 1e-3)]
    sup = SupervisedHead(3, zero_init=True)
    clone = SupervisedHead.from_config(sup.get_config())
    assert (clone.num_classes, clone.zero_init) == (3, True)
    clone(tf.ones([2, 5]))
    assert not np.any(clone.dense.kernel.numpy())  # zero-initialised, as asked
