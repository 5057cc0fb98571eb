"""NT-Xent, the normalised-temperature cross-entropy of SimCLR, across replicas.

Hand-written: no maintained TF library provides NT-Xent with cross-replica
negatives and extra negatives from a memory queue.
"""
import dataclasses
from typing import Optional

import tensorflow as tf

# Subtracted from self-similarity logits so they never win the softmax.
LARGE_NUM = 1e9


@dataclasses.dataclass
class NTXentResult:
    """loss: mean over local examples of CE(view 1) + CE(view 2).
    accuracy: fraction of rows whose positive has the largest logit.
    entropy: mean entropy of the softmax over each row's candidates."""
    loss: tf.Tensor
    accuracy: tf.Tensor
    entropy: tf.Tensor


def gather_from_replicas(tensor: tf.Tensor):
    """Concatenates `tensor` from all replicas along axis 0 (differentiable).

    Returns (gathered, offset): `offset` is where this replica's rows start.
    Outside tf.distribute, or with one replica, returns (tensor, 0).
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensor, 0
    gathered = context.all_gather(tensor, axis=0)
    replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32)
    return gathered, replica_id * tf.shape(tensor)[0]


def nt_xent_loss(hidden: tf.Tensor, temperature: float = 0.1,
                 hidden_norm: bool = True, queue: Optional[tf.Tensor] = None,
                 queue_valid: Optional[tf.Tensor] = None) -> NTXentResult:
    """NT-Xent over the global batch, optionally with queued negatives.

    Args:
      hidden: [2 * local_batch, dim], the projections of view 1 (first half)
        then view 2 (second half) of this replica's examples.
      temperature: softmax temperature.
      hidden_norm: L2-normalise the projections first.
      queue: optional [queue_size, dim] keys used as extra negatives for both
        views (no gradient flows into them). They are never positives.
      queue_valid: optional [queue_size] bool; False entries are ignored
        (a queue that is not full yet).

    For example i of view 1 the positive is example i of view 2; the
    negatives are every other example of both views across all replicas, plus
    the queue. Called inside a replica context it gathers the projections of
    all replicas, so the loss of each replica is the mean over its own
    examples of the loss on the global batch: averaging it over replicas
    gives the one-replica loss of the same global batch.
    """
    if hidden.dtype in (tf.float16, tf.bfloat16):  # mixed precision
        hidden = tf.cast(hidden, tf.float32)
    if hidden_norm:
        hidden = tf.math.l2_normalize(hidden, axis=-1)
    h1, h2 = tf.split(hidden, 2, axis=0)  # [local_batch, dim] each
    # One gather for both views: one collective per step instead of two.
    both_all, offset = gather_from_replicas(hidden)  # [replicas * 2 * local, dim]
    dim = hidden.shape[-1] if hidden.shape[-1] is not None else tf.shape(hidden)[1]
    both_all = tf.reshape(both_all, [-1, 2, tf.shape(h1)[0], dim])
    h1_all = tf.reshape(both_all[:, 0], [-1, dim])  # [global_batch, dim]
    h2_all = tf.reshape(both_all[:, 1], [-1, dim])
    offset = offset // 2
    local_batch = tf.shape(h1)[0]
    global_batch = tf.shape(h1_all)[0]
    positive_index = offset + tf.range(local_batch)
    self_mask = tf.one_hot(positive_index, global_batch, dtype=hidden.dtype)  # [local, global]

    def similarities(a, b):
        return tf.matmul(a, b, transpose_b=True) / temperature

    logits_ab = similarities(h1, h2_all)  # [local_batch, global_batch]
    logits_ba = similarities(h2, h1_all)
    logits_aa = similarities(h1, h1_all) - self_mask * LARGE_NUM
    logits_bb = similarities(h2, h2_all) - self_mask * LARGE_NUM
    logits_a = [logits_ab, logits_aa]
    logits_b = [logits_ba, logits_bb]
    if queue is not None:
        keys = tf.stop_gradient(tf.cast(queue, hidden.dtype))  # [queue_size, dim]
        penalty = 0.0
        if queue_valid is not None:
            penalty = (1.0 - tf.cast(queue_valid, hidden.dtype))[None, :] * LARGE_NUM
        logits_a.append(similarities(h1, keys) - penalty)
        logits_b.append(similarities(h2, keys) - penalty)
    logits_a = tf.concat(logits_a, axis=1)  # [local, 2 * global (+ queue)]
    logits_b = tf.concat(logits_b, axis=1)
    labels = tf.one_hot(positive_index, tf.shape(logits_a)[1], dtype=logits_a.dtype)
    loss_a = tf.nn.softmax_cross_entropy_with_logits(labels, logits_a)
    loss_b = tf.nn.softmax_cross_entropy_with_logits(labels, logits_b)
    loss = tf.reduce_mean(loss_a + loss_b)

    both = tf.concat([logits_a, logits_b], axis=0)
    both_positive = tf.concat([positive_index, positive_index], axis=0)
    accuracy = tf.reduce_mean(tf.cast(
        tf.equal(tf.argmax(both, axis=1, output_type=tf.int32), both_positive),
        tf.float32))
    probs = tf.nn.softmax(both, axis=1)
    entropy = -tf.reduce_mean(tf.reduce_sum(
        probs * tf.math.log(probs + 1e-8), axis=1))
    return NTXentResult(loss=loss, accuracy=accuracy, entropy=entropy)
