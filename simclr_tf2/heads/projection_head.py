"""SimCLRv2's deep projection head g(.), and its fine-tuning selector.

Hand-written: the Dense + BN layer pattern (centre only on middle layers, no
bias anywhere) and the selector over layer outputs are SimCLR-specific.
"""
from typing import List

import tensorflow as tf
import tf_keras

from simclr_tf2.configs.schema import PROJ_HEAD_MODES, check
from simclr_tf2.layers.conv_bn import NormalizedLayer


def head_kernel_initializer():
    return tf_keras.initializers.RandomNormal(stddev=0.01)


def num_projection_layers(mode: str, num_proj_layers: int) -> int:
    return {"none": 0, "linear": 1}.get(mode, num_proj_layers)


def resolve_selector(selector: int, num_layers: int) -> int:
    """Index into [input, layer 1, ..., layer N]; negative counts from the end."""
    check(-(num_layers + 1) <= selector <= num_layers,
          f"ft_proj_selector must be in [{-(num_layers + 1)}, {num_layers}] for a "
          f"head with {num_layers} projection layer(s). Received: "
          f"ft_proj_selector={selector}")
    return selector if selector >= 0 else num_layers + 1 + selector


class ProjectionHead(NormalizedLayer):
    """Projection head with modes 'none', 'linear' and 'nonlinear'.

    Each layer is Dense (no bias, N(0, 0.01) init) + BN. Middle layers keep the
    input width and use BN with beta (the bias) then ReLU; the last layer maps to
    `proj_out_dim` with BN without beta and no ReLU. 'linear' is that last layer
    alone; 'none' passes the input through.

    `keep_layers` builds only the first k layers (fine-tuning drops the layers
    after the selected one); None builds them all.

    call(features) returns the list [input, layer 1 output, ..., layer k output].
    """

    def __init__(self, mode: str = "nonlinear", num_proj_layers: int = 3,
                 proj_out_dim: int = 128, keep_layers: int = None, **kwargs):
        super().__init__(**kwargs)
        check(mode in PROJ_HEAD_MODES,
              f"proj_head_mode must be one of {list(PROJ_HEAD_MODES)}. Received: "
              f"proj_head_mode={mode!r}")
        check(isinstance(num_proj_layers, int) and num_proj_layers >= 1,
              f"num_proj_layers must be an int >= 1. Received: "
              f"num_proj_layers={num_proj_layers!r}")
        check(isinstance(proj_out_dim, int) and proj_out_dim >= 1,
              f"proj_out_dim must be an int >= 1. Received: proj_out_dim={proj_out_dim!r}")
        total = num_projection_layers(mode, num_proj_layers)
        if keep_layers is None:
            keep_layers = total
        check(0 <= keep_layers <= total,
              f"keep_layers must be in [0, {total}] for proj_head_mode={mode!r}. "
              f"Received: keep_layers={keep_layers}")
        self.mode = mode
        self.num_proj_layers = num_proj_layers
        self.proj_out_dim = proj_out_dim
        self.keep_layers = keep_layers
        self.total_layers = total
        self.dense_layers: List[tf_keras.layers.Dense] = []
        self.bn_layers = []

    def build(self, input_shape):
        in_dim = int(input_shape[-1])
        for index in range(self.keep_layers):
            last = index == self.total_layers - 1
            self.dense_layers.append(tf_keras.layers.Dense(
                self.proj_out_dim if last else in_dim, use_bias=False,
                kernel_initializer=head_kernel_initializer(),
                name=f"proj_dense{index + 1}"))
            # The output layer's BN has no beta and no ReLU.
            self.bn_layers.append(self.batch_norm_relu(
                relu=not last, center=not last, name=f"proj_bn{index + 1}"))
        super().build(input_shape)

    def call(self, features, training=None) -> List[tf.Tensor]:
        outputs = [features]
        x = features
        for dense, bn in zip(self.dense_layers, self.bn_layers):
            x = bn(dense(x), training=training)
            outputs.append(x)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, num_proj_layers=self.num_proj_layers,
                      proj_out_dim=self.proj_out_dim, keep_layers=self.keep_layers)
        return config


class SupervisedHead(tf_keras.layers.Layer):
    """One Dense with bias, no BN: the classifier. Its variables are named
    `head_supervised/...` so optimisers can single them out."""

    def __init__(self, num_classes: int, zero_init: bool = False, **kwargs):
        kwargs.setdefault("name", "head_supervised")
        super().__init__(**kwargs)
        check(isinstance(num_classes, int) and num_classes >= 1,
              f"num_classes must be an int >= 1. Received: num_classes={num_classes!r}")
        self.num_classes = num_classes
        self.zero_init = zero_init
        self.dense = tf_keras.layers.Dense(
            num_classes, use_bias=True,
            kernel_initializer="zeros" if zero_init else head_kernel_initializer(),
            bias_initializer="zeros", name="dense")

    def call(self, features):
        return self.dense(features)

    def zero_weights(self):
        """Zeroes kernel and bias (zero_init_logits_layer for an existing head)."""
        for var in self.dense.weights:
            var.assign(tf.zeros_like(var))

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, zero_init=self.zero_init)
        return config
