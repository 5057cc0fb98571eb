"""Selective-kernel convolution (Li et al. 2019), as SimCLRv2 uses it.

Hand-written: neither tf_keras nor tf-models-official has an SK layer. The
attention is its own layer so it can be tested and reused alone.
"""
import tensorflow as tf
import tf_keras

from simclr_tf2.configs.schema import check
from simclr_tf2.layers.conv_bn import (FixedPaddingConv2D, NormalizedLayer,
                                       conv_kernel_initializer)


class SelectiveKernelAttention(NormalizedLayer):
    """Per-channel softmax weights over K branches.

    sum of branches -> global average pool -> 1x1 conv (no bias) to
    max(int(filters * sk_ratio), min_dim) -> BN-ReLU -> 1x1 conv (no bias) to
    K * filters -> softmax across the K branches.

    Input: a list of K tensors [N, H, W, filters].
    Output: weights [N, 1, 1, K, filters] that sum to one over axis 3.
    """

    def __init__(self, filters: int, sk_ratio: float = 0.0625, min_dim: int = 32,
                 **kwargs):
        super().__init__(**kwargs)
        check(isinstance(filters, int) and filters > 0,
              f"filters must be a positive int. Received: filters={filters!r}")
        check(sk_ratio > 0, f"sk_ratio must be > 0. Received: sk_ratio={sk_ratio!r}")
        check(isinstance(min_dim, int) and min_dim > 0,
              f"min_dim must be a positive int. Received: min_dim={min_dim!r}")
        self.filters = filters
        self.sk_ratio = sk_ratio
        self.min_dim = min_dim
        self.mid_dim = max(int(filters * sk_ratio), min_dim)
        self.reduce = tf_keras.layers.Conv2D(
            self.mid_dim, 1, use_bias=False,
            kernel_initializer=conv_kernel_initializer(), name="reduce_conv")
        self.reduce_bn_relu = self.batch_norm_relu(name="reduce_bn_relu")
        self.expand = None

    def build(self, input_shape):
        check(isinstance(input_shape, (list, tuple)) and len(input_shape) >= 2,
              "SelectiveKernelAttention takes a list of at least 2 branches. "
              f"Received input shape: {input_shape}")
        for shape in input_shape:
            check(shape[-1] == self.filters,
                  f"every branch must have {self.filters} channels. "
                  f"Received branch shapes: {input_shape}")
        self.num_branches = len(input_shape)
        self.expand = tf_keras.layers.Conv2D(
            self.num_branches * self.filters, 1, use_bias=False,
            kernel_initializer=conv_kernel_initializer(), name="expand_conv")
        super().build(input_shape)

    def call(self, branches, training=None):
        pooled = tf.reduce_mean(tf.add_n(branches), [1, 2], keepdims=True)
        z = self.reduce_bn_relu(self.reduce(pooled), training=training)
        logits = self.expand(z)  # [N, 1, 1, K * filters], branch-major
        logits = tf.reshape(tf.cast(logits, tf.float32),
                            [-1, 1, 1, self.num_branches, self.filters])
        weights = tf.nn.softmax(logits, axis=3)  # softmax in float32
        return tf.cast(weights, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, sk_ratio=self.sk_ratio,
                      min_dim=self.min_dim)
        return config


class SelectiveKernelConv2D(NormalizedLayer):
    """3x3 conv to 2 * filters (stride s) -> BN-ReLU -> split into 2 branches
    -> attention-weighted sum of the branches. Output [N, H/s, W/s, filters]."""

    NUM_BRANCHES = 2

    def __init__(self, filters: int, strides: int = 1, sk_ratio: float = 0.0625,
                 min_dim: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.sk_ratio = sk_ratio
        self.min_dim = min_dim
        self.conv = FixedPaddingConv2D(self.NUM_BRANCHES * filters, 3, strides,
                                       name="branch_conv")
        self.bn_relu = self.batch_norm_relu(name="branch_bn_relu")
        self.attention = SelectiveKernelAttention(filters, sk_ratio, min_dim,
                                                  name="attention", norm=self.norm)

    def call(self, inputs, training=None):
        x = self.bn_relu(self.conv(inputs), training=training)
        branches = tf.split(x, self.NUM_BRANCHES, axis=-1)
        weights = self.attention(branches, training=training)  # [N,1,1,K,C]
        return tf.add_n([branch * weights[:, :, :, k, :]
                         for k, branch in enumerate(branches)])

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, strides=self.strides,
                      sk_ratio=self.sk_ratio, min_dim=self.min_dim)
        return config
