"""Test set-up: 4 logical CPU devices (multi-replica tests), quiet TF logs."""
import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as importing simclr_tf2 does

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

NUM_LOGICAL_CPUS = 4

# Logical devices can only be configured before TensorFlow initialises them.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS)


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts with default dtype policy, seeds and layer names."""
    tf_keras.backend.clear_session()
    tf_keras.mixed_precision.set_global_policy("float32")
    tf.random.set_seed(0)
    np.random.seed(0)
    yield
    tf_keras.mixed_precision.set_global_policy("float32")
    tf_keras.backend.set_floatx("float32")


def logical_cpus(n):
    """Names of the first n logical CPU devices."""
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= n, f"need {n} logical CPUs, have {len(devices)}"
    return [d.name for d in devices[:n]]


_strategies_made = itertools.count(1)


def mirrored_strategy(n):
    """MirroredStrategy over n logical CPUs.

    Every new MirroredStrategy starts its collective group and instance keys
    at 1, and the runtime remembers keys for the whole process: a second
    strategy then joins the first one's group (wrong size) or instance (wrong
    shape). Each strategy made here gets its own key range, as TensorFlow's
    own tests do.
    """
    strategy_cls = type(f"MirroredStrategy{n}", (tf.distribute.MirroredStrategy,),
                        {"_collective_key_base": 100000 * next(_strategies_made)})
    return strategy_cls(logical_cpus(n))
