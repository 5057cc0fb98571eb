"""Momentum (EMA) copy of the encoder that produces the queued keys.

Hand-written: tf_keras' EMA lives inside its optimizer and swaps weights for
evaluation; here the EMA copy is a second network that runs every step.
"""
from typing import Callable, Sequence

import tensorflow as tf
import tf_keras

from simclr_tf2.configs.schema import check


def _first_replica_creator(next_creator, **kwargs):
    # EMA updates happen in replica context, where every replica computes the
    # same value; variables without an aggregation would refuse the write.
    if kwargs.get("aggregation") in (None, tf.VariableAggregation.NONE):
        kwargs["aggregation"] = tf.VariableAggregation.ONLY_FIRST_REPLICA
    return next_creator(**kwargs)


class MomentumEncoder(tf.Module):
    """target <- m * target + (1 - m) * online, for every trainable variable.

    `build_target` must build a network with the same architecture as the
    online one (same variable order and shapes). The target starts as an exact
    copy of the online weights; its batch norms run in training mode when it
    encodes keys (batch statistics, as in MoCo), and it is never optimised.
    """

    def __init__(self, online: tf_keras.Model, build_target: Callable[[], tf_keras.Model],
                 momentum: float = 0.999, name: str = "momentum_encoder"):
        super().__init__(name=name)
        check(0.0 <= momentum <= 1.0,
              f"momentum must be in [0, 1]. Received: momentum={momentum!r}")
        self.momentum = momentum
        self.online = online
        with tf.variable_creator_scope(_first_replica_creator):
            self.target = build_target()
        online_vars = self.online_variables
        target_vars = self.target_variables
        check(len(online_vars) == len(target_vars),
              f"momentum encoder: target has {len(target_vars)} trainable variables, "
              f"online has {len(online_vars)}")
        for o, t in zip(online_vars, target_vars):
            check(o.shape == t.shape, f"momentum encoder: shape mismatch {o.name} "
                  f"{o.shape} vs {t.name} {t.shape}")
        self.copy_online()

    def copy_online(self) -> None:
        """Makes the target an exact copy of the online network (e.g. after the
        online weights were restored from a checkpoint)."""
        for o, t in zip(self.online.weights, self.target.weights):
            t.assign(o)

    @property
    def online_variables(self) -> Sequence[tf.Variable]:
        return self.online.trainable_weights

    @property
    def target_variables(self) -> Sequence[tf.Variable]:
        return self.target.trainable_weights

    def update(self) -> None:
        """One EMA step toward the online weights."""
        for o, t in zip(self.online_variables, self.target_variables):
            m = tf.constant(self.momentum, t.dtype)
            t.assign(m * t + (1.0 - m) * tf.cast(o, t.dtype))
