"""Residual blocks, block groups and stems of the SimCLRv2 ResNets.

Post-activation ResNet v1 blocks as in the TPU ResNets SimCLR builds on. When
selective kernels are on, the ResNet-D stem and shortcut come with them.
"""
import tensorflow as tf
import tf_keras

from simclr_tf2.configs.schema import check
from simclr_tf2.layers.conv_bn import FixedPaddingConv2D, NormalizedLayer
from simclr_tf2.layers.selective_kernel import SelectiveKernelConv2D
from simclr_tf2.layers.squeeze_excite import SqueezeExcite

BLOCK_TYPES = ("basic", "bottleneck")
STEM_TYPES = ("imagenet", "resnet_d", "cifar")


class ProjectionShortcut(NormalizedLayer):
    """1x1 conv + BN (no ReLU) that matches the residual branch's shape.

    Plain: 1x1 conv with stride s. ResNet-D: 2x2 average pool with stride s
    (pad 0 before / 1 after when s > 1, 'same' when s == 1), then a stride-1
    1x1 conv.
    """

    def __init__(self, filters: int, strides: int, resnet_d: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.resnet_d = resnet_d
        if resnet_d:
            self.pool = tf_keras.layers.AveragePooling2D(
                2, strides, padding="valid" if strides > 1 else "same",
                name="avg_pool")
            self.conv = FixedPaddingConv2D(filters, 1, 1, name="conv")
        else:
            self.pool = None
            self.conv = FixedPaddingConv2D(filters, 1, strides, name="conv")
        self.bn = self.batch_norm_relu(relu=False, name="bn")

    def call(self, inputs, training=None):
        if self.pool is not None:
            if self.strides > 1:
                inputs = tf.pad(inputs, [[0, 0], [0, 1], [0, 1], [0, 0]])
            inputs = self.pool(inputs)
        return self.bn(self.conv(inputs), training=training)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, strides=self.strides,
                      resnet_d=self.resnet_d)
        return config


class ResidualBlock(NormalizedLayer):
    """A basic (two 3x3 convs) or bottleneck (1x1, 3x3 or SK, 1x1 x4) block.

    The last BN's gamma starts at zero; optional squeeze-excite sits after it,
    before the residual add.
    """

    def __init__(self, block_type: str, filters: int, strides: int = 1,
                 use_projection: bool = False, sk_ratio: float = 0.0,
                 se_ratio: float = 0.0, resnet_d: bool = False, **kwargs):
        super().__init__(**kwargs)
        check(block_type in BLOCK_TYPES,
              f"block_type must be one of {list(BLOCK_TYPES)}. Received: "
              f"block_type={block_type!r}")
        check(not (block_type == "basic" and sk_ratio > 0),
              "basic blocks never use selective kernels. Received: "
              f"sk_ratio={sk_ratio}")
        self.block_type = block_type
        self.filters = filters
        self.strides = strides
        self.use_projection = use_projection
        self.sk_ratio = sk_ratio
        self.se_ratio = se_ratio
        self.resnet_d = resnet_d
        out_filters = filters * (4 if block_type == "bottleneck" else 1)

        self.shortcut = (ProjectionShortcut(out_filters, strides, resnet_d,
                                            name="shortcut", norm=self.norm)
                         if use_projection else None)
        # The residual branch as a list of layers applied in order.
        branch = []
        if block_type == "basic":
            branch += [FixedPaddingConv2D(filters, 3, strides, name="conv1"),
                       self.batch_norm_relu(name="bn1"),
                       FixedPaddingConv2D(filters, 3, 1, name="conv2")]
        else:
            branch += [FixedPaddingConv2D(filters, 1, 1, name="conv1"),
                       self.batch_norm_relu(name="bn1")]
            if sk_ratio > 0:
                branch += [SelectiveKernelConv2D(filters, strides, sk_ratio,
                                                 name="sk_conv2", norm=self.norm)]
            else:
                branch += [FixedPaddingConv2D(filters, 3, strides, name="conv2"),
                           self.batch_norm_relu(name="bn2")]
            branch += [FixedPaddingConv2D(out_filters, 1, 1, name="conv3")]
        branch += [self.batch_norm_relu(relu=False, zero_init=True, name="bn_last")]
        if se_ratio > 0:
            branch += [SqueezeExcite(filters, se_ratio, name="se")]
        self.branch = branch

    def call(self, inputs, training=None):
        shortcut = inputs
        if self.shortcut is not None:
            shortcut = self.shortcut(inputs, training=training)
        x = inputs
        for layer in self.branch:
            x = layer(x, training=training)
        return tf.nn.relu(x + shortcut)

    def get_config(self):
        config = super().get_config()
        config.update(block_type=self.block_type, filters=self.filters,
                      strides=self.strides, use_projection=self.use_projection,
                      sk_ratio=self.sk_ratio, se_ratio=self.se_ratio,
                      resnet_d=self.resnet_d)
        return config


class BlockGroup(NormalizedLayer):
    """`num_blocks` residual blocks; the first strides and projects.

    As in the authors' ResNet, the first block of every group has a projection
    shortcut, even where the shapes already match (group 1 of ResNet-18/34).
    """

    def __init__(self, block_type: str, filters: int, num_blocks: int,
                 strides: int, sk_ratio: float = 0.0, se_ratio: float = 0.0,
                 resnet_d: bool = False, **kwargs):
        super().__init__(**kwargs)
        check(isinstance(num_blocks, int) and num_blocks > 0,
              f"num_blocks must be a positive int. Received: num_blocks={num_blocks!r}")
        self.block_type = block_type
        self.filters = filters
        self.num_blocks = num_blocks
        self.strides = strides
        self.sk_ratio = sk_ratio
        self.se_ratio = se_ratio
        self.resnet_d = resnet_d
        common = dict(sk_ratio=sk_ratio, se_ratio=se_ratio, resnet_d=resnet_d,
                      norm=self.norm)
        self.blocks = [
            ResidualBlock(block_type, filters, strides if i == 0 else 1,
                          use_projection=(i == 0), name=f"block{i + 1}", **common)
            for i in range(num_blocks)]

    def call(self, inputs, training=None):
        for block in self.blocks:
            inputs = block(inputs, training=training)
        return inputs

    def get_config(self):
        config = super().get_config()
        config.update(block_type=self.block_type, filters=self.filters,
                      num_blocks=self.num_blocks, strides=self.strides,
                      sk_ratio=self.sk_ratio, se_ratio=self.se_ratio,
                      resnet_d=self.resnet_d)
        return config


class ResNetStem(NormalizedLayer):
    """The ResNet stem; returns {'initial_conv', 'initial_max_pool'}.

    imagenet: 7x7/2 conv -> BN-ReLU -> 3x3/2 max-pool.
    resnet_d: 3x3/2 conv (filters/2) -> BN-ReLU -> 3x3 conv (filters/2) ->
              BN-ReLU -> 3x3 conv (filters) -> BN-ReLU -> 3x3/2 max-pool.
    cifar:    3x3/1 conv -> BN-ReLU, no pooling (initial_max_pool is the
              BN-ReLU output).
    `initial_conv` is the last convolution's output, before its BN.
    """

    def __init__(self, filters: int, stem_type: str = "imagenet", **kwargs):
        super().__init__(**kwargs)
        check(stem_type in STEM_TYPES,
              f"stem_type must be one of {list(STEM_TYPES)}. Received: "
              f"stem_type={stem_type!r}")
        check(isinstance(filters, int) and filters >= (2 if stem_type == "resnet_d" else 1),
              f"stem filters too small. Received: filters={filters!r}")
        self.filters = filters
        self.stem_type = stem_type
        self.pre_layers = []  # conv, BN-ReLU, ... before the last conv
        if stem_type == "resnet_d":
            self.pre_layers = [
                FixedPaddingConv2D(filters // 2, 3, 2, name="conv1"),
                self.batch_norm_relu(name="bn1"),
                FixedPaddingConv2D(filters // 2, 3, 1, name="conv2"),
                self.batch_norm_relu(name="bn2"),
            ]
            self.conv = FixedPaddingConv2D(filters, 3, 1, name="conv3")
        elif stem_type == "imagenet":
            self.conv = FixedPaddingConv2D(filters, 7, 2, name="conv1")
        else:
            self.conv = FixedPaddingConv2D(filters, 3, 1, name="conv1")
        self.bn_relu = self.batch_norm_relu(name="bn_relu")
        self.pool = (None if stem_type == "cifar" else
                     tf_keras.layers.MaxPooling2D(3, 2, padding="same",
                                                  name="max_pool"))

    def call(self, inputs, training=None):
        x = inputs
        for layer in self.pre_layers:
            x = layer(x, training=training)
        initial_conv = self.conv(x)
        x = self.bn_relu(initial_conv, training=training)
        if self.pool is not None:
            x = self.pool(x)
        return {"initial_conv": initial_conv, "initial_max_pool": x}

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, stem_type=self.stem_type)
        return config
