"""Convolution with TPU-style fixed padding, and batch norm + ReLU.

Hand-written because tf_keras' Conv2D 'same' padding is asymmetric for strided
convolutions (pads more at the end), while SimCLR's released weights assume
the symmetric k-1 padding of the TPU ResNets.
"""
import contextlib
import dataclasses
import threading
from typing import Dict, Union

import tensorflow as tf
import tf_keras

from simclr_tf2.configs.schema import check

_SPLITS = threading.local()


@contextlib.contextmanager
def batch_norm_splits(splits: int):
    """Inside this context (on this thread, so on this replica), batch norm
    in training mode normalises each of `splits` equal consecutive groups of
    the batch with the group's own statistics ("ghost" batch norm), as if each
    group were on its own device without cross-replica BN; the moving
    statistics still follow the whole batch (this replica's: cross-replica
    BN is off inside the context). With a shuffled key batch this
    is the one-device form of MoCo's shuffling BN (He et al. 2020, section
    3.3). Hand-written: tf_keras' virtual_batch_size splits at inference too,
    which fixes every batch size the model may see."""
    previous = getattr(_SPLITS, "value", 1)
    _SPLITS.value = max(1, int(splits))
    try:
        yield
    finally:
        _SPLITS.value = previous


def conv_kernel_initializer():
    """Truncated-normal fan-in variance scaling, as the authors' ResNet uses."""
    return tf_keras.initializers.VarianceScaling()


class FixedPaddingConv2D(tf_keras.layers.Layer):
    """Conv2D without bias whose strided form pads k-1 symmetrically, then VALID.

    Stride 1 uses 'same' padding (symmetric for odd kernels).
    """

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        check(isinstance(filters, int) and filters > 0,
              f"filters must be a positive int. Received: filters={filters!r}")
        check(isinstance(kernel_size, int) and kernel_size > 0,
              f"kernel_size must be a positive int. Received: "
              f"kernel_size={kernel_size!r}")
        check(isinstance(strides, int) and strides > 0,
              f"strides must be a positive int. Received: strides={strides!r}")
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        pad_total = kernel_size - 1
        self._padding = [[0, 0], [pad_total // 2, pad_total - pad_total // 2],
                         [pad_total // 2, pad_total - pad_total // 2], [0, 0]]
        self._explicit_pad = strides > 1 and pad_total > 0
        self.conv = tf_keras.layers.Conv2D(
            filters, kernel_size, strides=strides,
            padding="valid" if strides > 1 else "same", use_bias=False,
            kernel_initializer=conv_kernel_initializer(), name="conv2d")

    def call(self, inputs):
        if self._explicit_pad:
            inputs = tf.pad(inputs, self._padding)
        return self.conv(inputs)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      strides=self.strides)
        return config


class BatchNormRelu(tf_keras.layers.Layer):
    """Batch norm (optionally cross-replica) followed by an optional ReLU.

    `zero_init=True` starts gamma at zero (the last BN of each residual block),
    so each block starts as the identity.
    """

    def __init__(self, relu: bool = True, zero_init: bool = False,
                 center: bool = True, momentum: float = 0.9,
                 epsilon: float = 1e-5, synchronized: bool = False, **kwargs):
        super().__init__(**kwargs)
        check(0.0 <= momentum <= 1.0,
              f"momentum must be in [0, 1]. Received: momentum={momentum!r}")
        check(epsilon > 0, f"epsilon must be > 0. Received: epsilon={epsilon!r}")
        self.relu = relu
        self.zero_init = zero_init
        self.center = center
        self.momentum = momentum
        self.epsilon = epsilon
        self.synchronized = synchronized
        self.bn = tf_keras.layers.BatchNormalization(
            momentum=momentum, epsilon=epsilon, center=center,
            gamma_initializer="zeros" if zero_init else "ones",
            synchronized=synchronized, name="batch_normalization")

    def call(self, inputs, training=None):
        splits = getattr(_SPLITS, "value", 1)
        # Per group, even with sync BN; a frozen BN (not trainable) keeps
        # tf_keras' behaviour: inference mode.
        if splits > 1 and training is True and self.bn.trainable:
            outputs = self._split_batch_norm(inputs, splits)
        else:
            outputs = self.bn(inputs, training=training)
        return tf.nn.relu(outputs) if self.relu else outputs

    def _split_batch_norm(self, inputs, splits):
        bn = self.bn
        if not bn.built:
            bn(inputs, training=False)  # creates the variables under bn's name
        batch = inputs.shape[0]
        check(batch is None or batch % splits == 0,
              f"batch-norm splits: a batch of {batch} images does not split into "
              f"{splits} equal groups; choose --memory_bn_splits dividing twice the "
              f"per-replica batch")
        x = tf.cast(inputs, tf.float32)
        shape = tf.shape(x)
        grouped = tf.reshape(x, tf.concat([[splits, shape[0] // splits], shape[1:]], 0))
        axes = list(range(1, len(inputs.shape)))  # all but the group and channel axes
        mean, variance = tf.nn.moments(grouped, axes, keepdims=True)
        outputs = tf.nn.batch_normalization(grouped, mean, variance,
                                            bn.beta if self.center else None, bn.gamma,
                                            self.epsilon)
        whole_mean, whole_variance = tf.nn.moments(x, list(range(len(inputs.shape) - 1)))
        for moving, value in ((bn.moving_mean, whole_mean),
                              (bn.moving_variance, whole_variance)):
            moving.assign_sub((moving - value) * (1.0 - self.momentum))
        return tf.cast(tf.reshape(outputs, shape), inputs.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(relu=self.relu, zero_init=self.zero_init,
                      center=self.center, momentum=self.momentum,
                      epsilon=self.epsilon, synchronized=self.synchronized)
        return config


@dataclasses.dataclass(frozen=True)
class NormSettings:
    """The batch-norm settings every BN layer of a network shares, passed
    down as one object (a dict of these fields in Keras configs)."""
    momentum: float = 0.9
    epsilon: float = 1e-5
    synchronized: bool = False  # cross-replica statistics

    @classmethod
    def of(cls, value: Union["NormSettings", Dict, None]) -> "NormSettings":
        return value if isinstance(value, cls) else cls(**(value or {}))


class NormalizedLayer(tf_keras.layers.Layer):
    """Base for layers that build BatchNormRelu layers with shared settings."""

    def __init__(self, norm: Union[NormSettings, Dict, None] = None, **kwargs):
        super().__init__(**kwargs)
        self.norm = NormSettings.of(norm)

    def batch_norm_relu(self, relu: bool = True, zero_init: bool = False,
                        center: bool = True, name: str = None) -> BatchNormRelu:
        return BatchNormRelu(relu=relu, zero_init=zero_init, center=center,
                             momentum=self.norm.momentum, epsilon=self.norm.epsilon,
                             synchronized=self.norm.synchronized, name=name)

    def get_config(self):
        config = super().get_config()
        config.update(norm=dataclasses.asdict(self.norm))
        return config
