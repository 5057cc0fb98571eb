"""Optimizers (LARS, SGD with momentum, Adam) and SimCLR's weight-decay rules.

LARS comes from tf-models-official. With LARS, batch-norm parameters, biases
and the supervised head are excluded from both weight decay and the trust
ratio; the supervised head gets ordinary L2 weight decay in the loss instead
(`weight_decay_loss`). With SGD-momentum and Adam, weight decay is an L2 term
in the loss on every weight except batch-norm parameters and biases.
"""
import re
from typing import Iterable, Union

import tensorflow as tf
import tf_keras
from official.modeling.optimization import lars

from simclr_tf2.configs.schema import OPTIMIZERS, check

# Regular expressions searched in variable names.
LARS_EXCLUDED = ("batch_normalization", "bias", "head_supervised")
L2_EXCLUDED = ("batch_normalization", "bias")
LARS_EETA = 0.001

LearningRate = Union[float, tf_keras.optimizers.schedules.LearningRateSchedule]


def build_optimizer(name: str, learning_rate: LearningRate, momentum: float = 0.9,
                    weight_decay: float = 0.0) -> tf_keras.optimizers.Optimizer:
    """The optimizer `name` ('lars', 'momentum' or 'adam').

    `weight_decay` is applied inside LARS (decoupled from the loss); for the
    other optimizers it must be added to the loss with `weight_decay_loss`.
    Create it inside the strategy scope.
    """
    check(name in OPTIMIZERS,
          f"optimizer must be one of {list(OPTIMIZERS)}. Received: {name!r}")
    if name == "lars":
        return lars.LARS(learning_rate=learning_rate, momentum=momentum,
                         weight_decay_rate=weight_decay, eeta=LARS_EETA,
                         nesterov=False, classic_momentum=True,
                         exclude_from_weight_decay=list(LARS_EXCLUDED),
                         exclude_from_layer_adaptation=list(LARS_EXCLUDED))
    if name == "momentum":
        return tf_keras.optimizers.legacy.SGD(learning_rate, momentum=momentum,
                                              nesterov=True)
    return tf_keras.optimizers.legacy.Adam(learning_rate)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(re.search(p, name) for p in patterns)


def weight_decay_loss(optimizer_name: str, variables: Iterable[tf.Variable],
                      weight_decay: float) -> tf.Tensor:
    """The L2 term that belongs in the loss: weight_decay * sum(w^2) / 2.

    LARS: only the supervised head's kernel (LARS decays everything else).
    Other optimizers: every variable except batch norm and biases.
    """
    check(optimizer_name in OPTIMIZERS, f"optimizer must be one of "
          f"{list(OPTIMIZERS)}. Received: {optimizer_name!r}")
    if optimizer_name == "lars":
        chosen = [v for v in variables if re.search("head_supervised", v.name)
                  and not _matches(v.name, L2_EXCLUDED)]
    else:
        chosen = [v for v in variables if not _matches(v.name, L2_EXCLUDED)]
    if not chosen or weight_decay == 0:
        return tf.constant(0.0)
    return weight_decay * tf.add_n([tf.cast(tf.nn.l2_loss(v), tf.float32)
                                    for v in chosen])
