"""Layers alone: fixed padding, BN-ReLU, selective kernels, squeeze-excite."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from numpy_reference import batch_norm_inference, conv2d, softmax
from simclr_tf2.backbones.blocks import ProjectionShortcut, ResidualBlock, ResNetStem
from simclr_tf2.layers import (BatchNormRelu, FixedPaddingConv2D, NormSettings,
                               SelectiveKernelAttention, SelectiveKernelConv2D,
                               SqueezeExcite)


@pytest.mark.parametrize("kernel_size,strides", [(1, 1), (3, 1), (3, 2), (7, 2), (1, 2), (4, 2)])
def test_fixed_padding_conv_matches_numpy(kernel_size, strides):
    x = np.random.rand(2, 9, 9, 3).astype(np.float32)
    layer = FixedPaddingConv2D(4, kernel_size, strides)
    out = layer(x).numpy()
    kernel = layer.conv.kernel.numpy()
    total = kernel_size - 1
    if strides > 1:  # symmetric k-1 padding, then VALID
        pad = (total // 2, total - total // 2)
    else:  # 'same' with stride 1
        pad = (total // 2, total - total // 2)
    expected = conv2d(x, kernel, strides, pad)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert not layer.conv.use_bias


def test_fixed_padding_differs_from_keras_same_for_strided_even_input():
    # Keras 'same' pads (0, 1) for a 3x3/2 conv on an even input; we pad (1, 1).
    x = np.random.rand(1, 8, 8, 1).astype(np.float32)
    layer = FixedPaddingConv2D(1, 3, 2)
    ours = layer(x).numpy()
    keras_same = tf.nn.conv2d(x, layer.conv.kernel, 2, "SAME").numpy()
    assert ours.shape == keras_same.shape == (1, 4, 4, 1)
    assert not np.allclose(ours, keras_same)


def test_batch_norm_relu_zero_init_and_settings():
    layer = BatchNormRelu(relu=False, zero_init=True, momentum=0.9, epsilon=1e-5)
    x = np.random.randn(4, 3, 3, 8).astype(np.float32)
    out = layer(x, training=True).numpy()
    np.testing.assert_allclose(out, 0.0, atol=1e-6)  # gamma starts at zero
    assert layer.bn.momentum == 0.9 and layer.bn.epsilon == 1e-5
    relu = BatchNormRelu()
    assert (relu(x, training=True).numpy() >= 0).all()
    no_relu = BatchNormRelu(relu=False)
    assert (no_relu(x, training=True).numpy() < 0).any()


def test_batch_norm_momentum_updates_moving_mean():
    layer = BatchNormRelu(momentum=0.9)
    x = np.random.randn(16, 2, 2, 3).astype(np.float32) + 5.0
    layer(x, training=True)
    batch_mean = x.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(layer.bn.moving_mean.numpy(), 0.1 * batch_mean,
                               rtol=1e-5)


def _attention_reference(layer, branches):
    """NumPy transcription of the SK attention in inference mode."""
    pooled = sum(branches).mean(axis=(1, 2), keepdims=True)
    z = conv2d(pooled, layer.reduce.kernel.numpy())
    bn = layer.reduce_bn_relu.bn
    z = batch_norm_inference(z, bn.gamma.numpy(), bn.beta.numpy(),
                             bn.moving_mean.numpy(), bn.moving_variance.numpy(),
                             bn.epsilon)
    z = np.maximum(z, 0)
    logits = conv2d(z, layer.expand.kernel.numpy())
    k = len(branches)
    logits = logits.reshape(logits.shape[0], 1, 1, k, -1)
    return softmax(logits, axis=3)


def test_selective_kernel_attention_alone():
    filters = 40
    layer = SelectiveKernelAttention(filters, sk_ratio=0.0625, min_dim=32)
    assert layer.mid_dim == 32  # max(int(40 * 0.0625), 32)
    assert SelectiveKernelAttention(1024, sk_ratio=0.0625).mid_dim == 64
    branches = [np.random.randn(3, 5, 5, filters).astype(np.float32) for _ in range(2)]
    # Give the BN non-trivial statistics so the reference really checks them.
    weights = layer(branches, training=False).numpy()
    bn = layer.reduce_bn_relu.bn
    bn.moving_mean.assign(np.random.randn(32).astype(np.float32) * 0.1)
    bn.moving_variance.assign(np.random.rand(32).astype(np.float32) + 0.5)
    bn.beta.assign(np.random.randn(32).astype(np.float32))
    weights = layer(branches, training=False).numpy()
    assert weights.shape == (3, 1, 1, 2, filters)
    np.testing.assert_allclose(weights.sum(axis=3), 1.0, rtol=1e-6)
    assert (weights > 0).all()
    np.testing.assert_allclose(weights, _attention_reference(layer, branches),
                               rtol=1e-4, atol=1e-6)
    assert layer.reduce.kernel.shape == (1, 1, filters, 32)
    assert layer.expand.kernel.shape == (1, 1, 32, 2 * filters)


def test_selective_kernel_attention_rejects_bad_input():
    with pytest.raises(ValueError, match="sk_ratio=-0.5"):
        SelectiveKernelAttention(8, sk_ratio=-0.5)
    with pytest.raises(ValueError, match="list of at least 2 branches"):
        SelectiveKernelAttention(8)([np.zeros((1, 2, 2, 8), np.float32)])
    with pytest.raises(ValueError, match="8 channels"):
        SelectiveKernelAttention(8)([np.zeros((1, 2, 2, 8), np.float32),
                                     np.zeros((1, 2, 2, 4), np.float32)])


@pytest.mark.parametrize("strides", [1, 2])
def test_selective_kernel_conv_is_weighted_sum_of_branches(strides):
    filters = 8
    layer = SelectiveKernelConv2D(filters, strides=strides, sk_ratio=0.0625)
    x = np.random.rand(2, 8, 8, 6).astype(np.float32)
    out = layer(x, training=False).numpy()
    assert out.shape == (2, 8 // strides, 8 // strides, filters)
    assert layer.conv.conv.kernel.shape == (3, 3, 6, 2 * filters)
    # Reference: branch conv + BN-ReLU via the layer's parts, split, then NumPy.
    bn = layer.bn_relu.bn
    total = 2
    conv = conv2d(x, layer.conv.conv.kernel.numpy(), strides,
                  (total // 2, total - total // 2))
    feats = np.maximum(batch_norm_inference(
        conv, bn.gamma.numpy(), bn.beta.numpy(), bn.moving_mean.numpy(),
        bn.moving_variance.numpy(), bn.epsilon), 0)
    branches = [feats[..., :filters], feats[..., filters:]]
    w = _attention_reference(layer.attention, branches)
    expected = branches[0] * w[:, :, :, 0, :] + branches[1] * w[:, :, :, 1, :]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_squeeze_excite_matches_numpy():
    layer = SqueezeExcite(filters=16, se_ratio=0.25)
    x = np.random.randn(2, 4, 4, 64).astype(np.float32)
    out = layer(x).numpy()
    assert layer.reduce.kernel.shape == (1, 1, 64, 4)  # int(16 * 0.25) = 4
    assert layer.expand.kernel.shape == (1, 1, 4, 64)
    s = x.mean(axis=(1, 2), keepdims=True)
    s = np.maximum(conv2d(s, layer.reduce.kernel.numpy()) + layer.reduce.bias.numpy(), 0)
    s = conv2d(s, layer.expand.kernel.numpy()) + layer.expand.bias.numpy()
    np.testing.assert_allclose(out, x / (1 + np.exp(-s)), rtol=1e-4, atol=1e-6)
    assert SqueezeExcite(filters=2, se_ratio=0.1).reduce.filters == 1


def test_resnet_d_shortcut_pads_after_and_average_pools():
    layer = ProjectionShortcut(4, strides=2, resnet_d=True)
    x = np.random.rand(1, 5, 5, 3).astype(np.float32)
    out = layer(x, training=False).numpy()
    # pad (0, 1) -> 6x6, 2x2/2 average pool -> 3x3, 1x1 conv, BN (identity at init)
    padded = np.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
    pooled = padded.reshape(1, 3, 2, 3, 2, 3).mean(axis=(2, 4))
    expected = conv2d(pooled, layer.conv.conv.kernel.numpy()) / np.sqrt(1 + 1e-5)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)


# (layer class, constructor arguments): every argument differs from its
# default, so a field that get_config leaves out comes back as the default.
LAYERS = [
    (FixedPaddingConv2D, dict(filters=8, kernel_size=3, strides=2, name="c")),
    (BatchNormRelu, dict(relu=False, zero_init=True, momentum=0.8, epsilon=1e-3)),
    (SelectiveKernelAttention, dict(filters=8, sk_ratio=0.5, min_dim=4,
                                    norm=NormSettings(momentum=0.8))),
    (SelectiveKernelConv2D, dict(filters=8, strides=2, sk_ratio=0.25, min_dim=4,
                                 norm=NormSettings(epsilon=1e-3))),
    (SqueezeExcite, dict(filters=8, se_ratio=0.5)),
    (ProjectionShortcut, dict(filters=8, strides=2, resnet_d=True,
                              norm=NormSettings(epsilon=1e-3))),
    (ResidualBlock, dict(block_type="bottleneck", filters=4, strides=2, use_projection=True,
                         sk_ratio=0.5, se_ratio=0.25, resnet_d=True,
                         norm=NormSettings(momentum=0.7, synchronized=True))),
    (ResidualBlock, dict(block_type="basic", filters=4, strides=1, use_projection=True)),
    (ResNetStem, dict(filters=8, stem_type="resnet_d", norm=NormSettings(synchronized=True))),
]


def _norms(layer):
    return [(n.momentum, n.epsilon, n.synchronized) for n in layer._flatten_layers()
            if isinstance(n, BatchNormRelu)]


@pytest.mark.parametrize("cls,kwargs", LAYERS)
def test_layer_get_config_round_trips(cls, kwargs):
    """The clone made from get_config() has every constructor argument (and
    its batch norms the norm settings), and computes the same function."""
    layer = cls(**kwargs)
    clone = cls.from_config(layer.get_config())
    cloned = clone.get_config()
    for key, value in kwargs.items():
        if key == "norm":  # the settings reach every batch norm inside the clone
            assert _norms(clone) and set(_norms(clone)) == {
                (value.momentum, value.epsilon, value.synchronized)}
        else:
            assert cloned[key] == value, key
    if cls is SelectiveKernelAttention:
        x = [np.random.rand(2, 4, 4, 8).astype(np.float32)] * 2
    else:
        x = np.random.rand(2, 8, 8, 8).astype(np.float32)
    out = layer(x, training=False)
    clone(x, training=False)
    clone.set_weights(layer.get_weights())
    tf.nest.map_structure(
        lambda a, b: np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6),
        out, clone(x, training=False))


def test_layer_argument_errors_name_the_value():
    with pytest.raises(ValueError, match="filters=0"):
        FixedPaddingConv2D(0, 3)
    with pytest.raises(ValueError, match="momentum=1.5"):
        BatchNormRelu(momentum=1.5)
    with pytest.raises(ValueError, match="se_ratio=0"):
        SqueezeExcite(8, 0)
    with pytest.raises(ValueError, match="block_type='wide'"):
        ResidualBlock("wide", 8)
    with pytest.raises(ValueError, match="basic blocks never use selective kernels"):
        ResidualBlock("basic", 8, sk_ratio=0.0625)
    with pytest.raises(ValueError, match="stem_type='big'"):
        ResNetStem(8, "big")
    assert issubclass(ResNetStem, tf_keras.layers.Layer)


def test_split_batch_norm_normalises_each_group_and_tracks_the_whole_batch():
    from simclr_tf2.layers.conv_bn import batch_norm_splits
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, [8, 3, 3, 4]).astype(np.float32)
    x[4:] *= 5.0  # the second group's statistics differ from the first's
    layer = BatchNormRelu(relu=False, momentum=0.9, epsilon=1e-3)
    whole = layer(x, training=True).numpy()  # also builds; whole-batch statistics
    gamma, beta = rng.normal(size=4), rng.normal(size=4)
    layer.bn.gamma.assign(gamma)
    layer.bn.beta.assign(beta)
    layer.bn.moving_mean.assign(np.zeros(4))
    layer.bn.moving_variance.assign(np.ones(4))
    with batch_norm_splits(2):
        split = layer(x, training=True).numpy()
        inference = layer(x, training=False).numpy()  # moving statistics, not split
    for group in (slice(0, 4), slice(4, 8)):
        g = x[group].astype(np.float64)
        mean, var = g.mean((0, 1, 2)), g.var((0, 1, 2))
        np.testing.assert_allclose(split[group], (g - mean) / np.sqrt(var + 1e-3) * gamma
                                   + beta, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.bn.moving_mean.numpy(), 0.1 * x.mean((0, 1, 2)),
                               rtol=1e-5)
    np.testing.assert_allclose(layer.bn.moving_variance.numpy(),
                               0.9 + 0.1 * x.var((0, 1, 2)), rtol=1e-4)
    all64 = x.astype(np.float64)
    pooled = (all64 - all64.mean((0, 1, 2))) / np.sqrt(all64.var((0, 1, 2)) + 1e-3)
    np.testing.assert_allclose(whole, pooled, rtol=1e-3, atol=1e-3)  # outside the context
    assert np.abs(split - (pooled * gamma + beta)).max() > 0.5  # not whole-batch statistics
    np.testing.assert_allclose(inference, layer.bn(x, training=False).numpy())
    with batch_norm_splits(3), pytest.raises(ValueError, match="memory_bn_splits"):
        layer(x, training=True)
    layer.trainable = False  # frozen: moving statistics, as tf_keras does
    with batch_norm_splits(2):
        np.testing.assert_allclose(layer(x, training=True).numpy(), inference, rtol=1e-5,
                                   atol=1e-5)
