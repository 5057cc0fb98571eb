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
    entropy: mean entropy of the softmax over each row's candidates.
    positive_cosine, negative_cosine, queue_cosine: mean cosine similarity
    (after hidden_norm) of each anchor to its positive, to its in-batch
    negatives and to the valid queued keys (0 without a queue)."""
    loss: tf.Tensor
    accuracy: tf.Tensor
    entropy: tf.Tensor
    positive_cosine: tf.Tensor = None
    negative_cosine: tf.Tensor = None
    queue_cosine: tf.Tensor = None


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
                 queue_valid: Optional[tf.Tensor] = None,
                 queue_temperature: Optional[float] = None,
                 keys: Optional[tf.Tensor] = None,
                 queue_weight: float = 1.0) -> NTXentResult:
    """NT-Xent over the global batch, optionally with queued negatives.

    Args:
      hidden: [2 * local_batch, dim], the projections of view 1 (first half)
        then view 2 (second half) of this replica's examples.
      temperature: softmax temperature.
      hidden_norm: L2-normalise the projections (and keys) first.
      queue: optional [queue_size, dim] keys used as extra negatives for both
        views (no gradient flows into them). They are never positives.
      queue_valid: optional bool mask of the queue, [queue_size] (False: a
        slot not written yet) or [local_batch, queue_size] (per example, the
        same for both of its views: e.g. keys of the example's own image).
      queue_temperature: temperature of the logits against queued keys
        (default: `temperature`).
      queue_weight: each queued key counts as this many negatives in the
        softmax's denominator (log(queue_weight) is added to its logits).
      keys: optional [2 * local_batch, dim] projections of the same views by a
        key encoder (MoCo style). When given, every candidate of an anchor
        (its positive and the in-batch negatives) is a key: anchors come from
        `hidden`, keys receive no gradient, and an anchor's key of its own
        view is masked like the self-similarity.

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
    candidates = hidden
    if keys is not None:
        candidates = tf.stop_gradient(tf.cast(keys, hidden.dtype))
        if hidden_norm:
            candidates = tf.math.l2_normalize(candidates, axis=-1)
    h1, h2 = tf.split(hidden, 2, axis=0)  # [local_batch, dim] each
    # One gather for both views: one collective per step instead of two.
    both_all, offset = gather_from_replicas(candidates)  # [replicas * 2 * local, dim]
    dim = hidden.shape[-1] if hidden.shape[-1] is not None else tf.shape(hidden)[1]
    both_all = tf.reshape(both_all, [-1, 2, tf.shape(h1)[0], dim])
    c1_all = tf.reshape(both_all[:, 0], [-1, dim])  # [global_batch, dim]
    c2_all = tf.reshape(both_all[:, 1], [-1, dim])
    offset = offset // 2
    local_batch = tf.shape(h1)[0]
    global_batch = tf.shape(c1_all)[0]
    positive_index = offset + tf.range(local_batch)
    self_mask = tf.one_hot(positive_index, global_batch, dtype=hidden.dtype)  # [local, global]

    # Cosine similarities, [local_batch, global_batch] each.
    cos_ab = tf.matmul(h1, c2_all, transpose_b=True)
    cos_ba = tf.matmul(h2, c1_all, transpose_b=True)
    cos_aa = tf.matmul(h1, c1_all, transpose_b=True)
    cos_bb = tf.matmul(h2, c2_all, transpose_b=True)
    logits_a = [cos_ab / temperature, cos_aa / temperature - self_mask * LARGE_NUM]
    logits_b = [cos_ba / temperature, cos_bb / temperature - self_mask * LARGE_NUM]
    positive_cosine = tf.reduce_mean(tf.concat([tf.linalg.diag_part(
        tf.gather(cos_ab, positive_index, axis=1)), tf.linalg.diag_part(
        tf.gather(cos_ba, positive_index, axis=1))], axis=0))
    negatives = tf.cast(2 * (global_batch - 1), hidden.dtype)
    negative_sum = tf.reduce_sum((cos_ab + cos_aa + cos_ba + cos_bb) * (1.0 - self_mask))
    negative_cosine = tf.math.divide_no_nan(
        negative_sum, 2.0 * tf.cast(local_batch, hidden.dtype) * negatives)
    queue_cosine = tf.constant(0.0, hidden.dtype)
    if queue is not None:
        queue_keys = tf.stop_gradient(tf.cast(queue, hidden.dtype))  # [queue_size, dim]
        t_queue = temperature if queue_temperature is None else queue_temperature
        valid = tf.ones([local_batch, tf.shape(queue_keys)[0]], hidden.dtype)
        if queue_valid is not None:
            valid = valid * tf.cast(queue_valid, hidden.dtype)  # [local, queue]
        penalty = (1.0 - valid) * LARGE_NUM - tf.math.log(tf.cast(queue_weight,
                                                                   hidden.dtype))
        cos_aq = tf.matmul(h1, queue_keys, transpose_b=True)  # [local, queue]
        cos_bq = tf.matmul(h2, queue_keys, transpose_b=True)
        logits_a.append(cos_aq / t_queue - penalty)
        logits_b.append(cos_bq / t_queue - penalty)
        queue_cosine = tf.math.divide_no_nan(
            tf.reduce_sum((cos_aq + cos_bq) * valid), 2.0 * tf.reduce_sum(valid))
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
    return NTXentResult(loss=loss, accuracy=accuracy, entropy=entropy,
                        positive_cosine=positive_cosine, negative_cosine=negative_cosine,
                        queue_cosine=queue_cosine)
