"""Distillation loss of SimCLRv2's third step (self-training).

Hand-written: tf_keras' KLDivergence takes probabilities, not logits with a
temperature, and differs from the paper's loss by the teacher's entropy.
"""
import tensorflow as tf

from simclr_tf2.errors import ConfigError

def distillation_loss(teacher_logits: tf.Tensor, student_logits: tf.Tensor,
                      temperature: float = 1.0) -> tf.Tensor:
    """Mean over rows of -sum_y P_T(y|x; tau) log P_S(y|x; tau).

    teacher_logits, student_logits: [batch, classes]. The teacher's
    probabilities carry no gradient. Computed in float32.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0. Received: temperature={temperature}")
    teacher = tf.stop_gradient(tf.cast(teacher_logits, tf.float32))
    student = tf.cast(student_logits, tf.float32)
    targets = tf.nn.softmax(teacher / temperature, axis=-1)
    log_probs = tf.nn.log_softmax(student / temperature, axis=-1)
    return -tf.reduce_mean(tf.reduce_sum(targets * log_probs, axis=-1))
