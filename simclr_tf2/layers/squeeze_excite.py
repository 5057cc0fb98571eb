"""Squeeze-and-excite (Hu et al. 2018) in the form SimCLR's ResNet uses.

Hand-written because its reduced width is computed from the block's base
`filters` (max(1, int(filters * se_ratio))), not from the input channels as in
tf-models-official's SqueezeExcitation.
"""
import tensorflow as tf
import tf_keras

from simclr_tf2.configs.schema import check
from simclr_tf2.layers.conv_bn import conv_kernel_initializer


class SqueezeExcite(tf_keras.layers.Layer):
    """GAP -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) back -> sigmoid -> scale."""

    def __init__(self, filters: int, se_ratio: float, **kwargs):
        super().__init__(**kwargs)
        check(isinstance(filters, int) and filters > 0,
              f"filters must be a positive int. Received: filters={filters!r}")
        check(se_ratio > 0, f"se_ratio must be > 0. Received: se_ratio={se_ratio!r}")
        self.filters = filters
        self.se_ratio = se_ratio
        self.reduce = tf_keras.layers.Conv2D(
            max(1, int(filters * se_ratio)), 1, use_bias=True,
            kernel_initializer=conv_kernel_initializer(), name="se_reduce")
        self.expand = None

    def build(self, input_shape):
        self.expand = tf_keras.layers.Conv2D(
            int(input_shape[-1]), 1, use_bias=True,
            kernel_initializer=conv_kernel_initializer(), name="se_expand")
        super().build(input_shape)

    def call(self, inputs):
        squeezed = tf.reduce_mean(inputs, [1, 2], keepdims=True)
        excited = self.expand(tf.nn.relu(self.reduce(squeezed)))
        return inputs * tf.sigmoid(excited)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, se_ratio=self.se_ratio)
        return config
