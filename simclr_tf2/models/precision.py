"""The Keras mixed-precision policy as a scoped value: set for a block,
then the caller's policy again (Keras keeps the policy process-wide)."""
import contextlib

import tf_keras


@contextlib.contextmanager
def precision_policy(name: str):
    """Builds inside the block use policy `name` ('float32',
    'mixed_bfloat16', 'mixed_float16'); the policy before it is restored
    after, also on error."""
    before = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy(before)
