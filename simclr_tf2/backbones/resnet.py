"""The SimCLRv2 ResNet family as a table: depth -> (block type, blocks per group)."""
import dataclasses
from typing import Dict, Union

import tensorflow as tf
import tf_keras

from simclr_tf2.backbones.blocks import BlockGroup, ResNetStem
from simclr_tf2.configs.schema import ModelConfig, check
from simclr_tf2.errors import ConfigError
from simclr_tf2.layers.conv_bn import NormSettings

RESNET_SPECS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
GROUP_FILTERS = (64, 128, 256, 512)
GROUP_STRIDES = (1, 2, 2, 2)
ENDPOINTS = ("initial_conv", "initial_max_pool", "block_group1", "block_group2",
             "block_group3", "block_group4", "final_avg_pool")


class ResNet(tf_keras.Model):
    """Maps float images [N, H, W, 3] in [0, 1] to a dict of named endpoints.

    Endpoints: initial_conv, initial_max_pool, block_group1..4 ([N, h, w, C]),
    final_avg_pool ([N, C]), with C = 512 * width (basic) or 2048 * width
    (bottleneck).

    `fine_tune_after_block` freezes a prefix of the network: -1 trains all,
    0 freezes the stem, k in 1..4 freezes the stem and block groups 1..k.
    Frozen stages have no trainable variables, run their batch norms in
    inference mode, and pass no gradient.
    """

    def __init__(self, depth: int = 50, width_multiplier: float = 1.0,
                 sk_ratio: float = 0.0, se_ratio: float = 0.0,
                 cifar_stem: bool = False, norm: Union[NormSettings, Dict, None] = None,
                 fine_tune_after_block: int = -1, **kwargs):
        kwargs.setdefault("name", "resnet")
        super().__init__(**kwargs)
        check(depth in RESNET_SPECS,
              f"depth must be one of {sorted(RESNET_SPECS)}. Received: depth={depth!r}")
        check(isinstance(width_multiplier, (int, float)) and width_multiplier > 0,
              f"width_multiplier must be > 0. Received: "
              f"width_multiplier={width_multiplier!r}")
        check(round(32 * width_multiplier) >= 1,
              f"width_multiplier is too small for a ResNet (the stem would have "
              f"no channels). Received: width_multiplier={width_multiplier!r}")
        check(sk_ratio >= 0, f"sk_ratio must be >= 0. Received: sk_ratio={sk_ratio!r}")
        check(se_ratio >= 0, f"se_ratio must be >= 0. Received: se_ratio={se_ratio!r}")
        block_type, blocks_per_group = RESNET_SPECS[depth]
        check(not (sk_ratio > 0 and block_type == "basic"),
              f"sk_ratio applies to bottleneck blocks (depth >= 50); depth "
              f"{depth} uses basic blocks. Received: sk_ratio={sk_ratio!r}")
        self.depth = depth
        self.width_multiplier = width_multiplier
        self.sk_ratio = sk_ratio
        self.se_ratio = se_ratio
        self.cifar_stem = cifar_stem
        self.norm = NormSettings.of(norm)
        resnet_d = sk_ratio > 0
        bn = dict(norm=self.norm)
        stem_type = "cifar" if cifar_stem else ("resnet_d" if resnet_d else "imagenet")
        self.stem = ResNetStem(self.scaled(64), stem_type, name="stem", **bn)
        self.block_groups = [
            BlockGroup(block_type, self.scaled(filters), num_blocks, strides,
                       sk_ratio=sk_ratio, se_ratio=se_ratio, resnet_d=resnet_d,
                       name=f"block_group{i + 1}", **bn)
            for i, (filters, num_blocks, strides) in enumerate(
                zip(GROUP_FILTERS, blocks_per_group, GROUP_STRIDES))]
        self.fine_tune_after_block = -1
        self.set_fine_tune_after_block(fine_tune_after_block)

    def scaled(self, filters: int) -> int:
        return max(1, int(round(filters * self.width_multiplier)))

    @property
    def stages(self):
        """[stem, block_group1, ..., block_group4]: the units of freezing."""
        return [self.stem] + list(self.block_groups)

    def set_fine_tune_after_block(self, fine_tune_after_block: int) -> None:
        """Freezes the stem and block groups 1..k (k = -1 freezes nothing)."""
        check(isinstance(fine_tune_after_block, int)
              and -1 <= fine_tune_after_block <= 4,
              "fine_tune_after_block must be an int in [-1, 4]. Received: "
              f"fine_tune_after_block={fine_tune_after_block!r}")
        self.fine_tune_after_block = fine_tune_after_block
        for index, stage in enumerate(self.stages):
            stage.trainable = index > fine_tune_after_block

    def call(self, images, training=None) -> Dict[str, tf.Tensor]:
        if images.shape.rank != 4 or images.shape[-1] != 3:
            raise ConfigError(
                "ResNet expects float images of shape [batch, height, width, 3] "
                f"in [0, 1]. Received shape: {images.shape}")
        endpoints = dict(self.stem(images, training=training))
        x = endpoints["initial_max_pool"]
        for index, group in enumerate(self.block_groups):
            if index == self.fine_tune_after_block:  # stages 0..index frozen
                x = tf.stop_gradient(x)
            x = group(x, training=training)
            endpoints[f"block_group{index + 1}"] = x
        if self.fine_tune_after_block == 4:
            x = tf.stop_gradient(x)
        endpoints["final_avg_pool"] = tf.reduce_mean(x, [1, 2])
        return endpoints

    def get_config(self):
        return dict(name=self.name, depth=self.depth,
                    width_multiplier=self.width_multiplier,
                    sk_ratio=self.sk_ratio, se_ratio=self.se_ratio,
                    cifar_stem=self.cifar_stem, norm=dataclasses.asdict(self.norm),
                    fine_tune_after_block=self.fine_tune_after_block)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)

    @property
    def output_dim(self) -> int:
        """Width of final_avg_pool."""
        block_type, _ = RESNET_SPECS[self.depth]
        return self.scaled(512) * (4 if block_type == "bottleneck" else 1)


def build_resnet(depth: int, width_multiplier: float = 1.0,
                 sk_ratio: float = 0.0, se_ratio: float = 0.0,
                 cifar_stem: bool = False, bn_momentum: float = 0.9,
                 bn_epsilon: float = 1e-5, sync_bn: bool = False,
                 fine_tune_after_block: int = -1, name: str = "resnet") -> ResNet:
    """Builds (and creates the variables of) a SimCLRv2 ResNet.

    The model maps float images [N, H, W, 3] in [0, 1] to a dict of endpoints
    (see ResNet). Any input size works; 224 (ImageNet stems) and 32 (CIFAR stem)
    are the usual ones.
    """
    model = ResNet(depth=depth, width_multiplier=width_multiplier,
                   sk_ratio=sk_ratio, se_ratio=se_ratio, cifar_stem=cifar_stem,
                   norm=NormSettings(bn_momentum, bn_epsilon, sync_bn),
                   fine_tune_after_block=fine_tune_after_block,
                   name=name)
    model.build((None, None, None, 3))
    return model


def norm_settings(config: ModelConfig) -> NormSettings:
    """The batch-norm settings of a ModelConfig, as the layers take them."""
    return NormSettings(config.bn_momentum, config.bn_epsilon, config.sync_bn)


def build_resnet_from_config(config: ModelConfig, **overrides) -> ResNet:
    """build_resnet from the backbone fields of a ModelConfig."""
    kwargs = dict(depth=config.depth, width_multiplier=config.width_multiplier,
                  sk_ratio=config.sk_ratio, se_ratio=config.se_ratio,
                  cifar_stem=config.cifar_stem, bn_momentum=config.bn_momentum,
                  bn_epsilon=config.bn_epsilon, sync_bn=config.sync_bn,
                  fine_tune_after_block=config.fine_tune_after_block)
    kwargs.update(overrides)
    return build_resnet(**kwargs)
