"""FIFO queue of past keys, used as extra NT-Xent negatives (SimCLRv2 memory).

Hand-written: the authors never released their memory code, and the queue must
gather keys across replicas and live in a checkpointable variable.
"""
from typing import Optional

import tensorflow as tf

from simclr_tf2.configs.schema import check
from simclr_tf2.objectives.nt_xent import gather_from_replicas


class NegativeQueue(tf.Module):
    """A ring buffer of `size` keys of width `dim`, stored in variables.

    `enqueue(keys)` gathers the keys of all replicas first, so every replica
    writes the same global keys and the queue is identical everywhere. The
    oldest keys are overwritten once the queue is full. `valid` marks the slots
    written so far; `ids` holds the id of the image each key came from (-1
    when unknown), so a step can tell which queued keys are of its own images.
    Create it inside the strategy scope.
    """

    def __init__(self, size: int, dim: int, name: str = "negative_queue"):
        super().__init__(name=name)
        check(isinstance(size, int) and size >= 1,
              f"queue size must be an int >= 1 (use no queue for plain SimCLR). "
              f"Received: size={size!r}")
        check(isinstance(dim, int) and dim >= 1,
              f"key dim must be an int >= 1. Received: dim={dim!r}")
        self.size = size
        self.dim = dim
        # Replicas write identical values; keep the first replica's.
        common = dict(trainable=False,
                      synchronization=tf.VariableSynchronization.ON_WRITE,
                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.keys = tf.Variable(tf.zeros([size, dim]), name="keys", **common)
        # Total number of keys ever enqueued; the write position is count % size.
        self.count = tf.Variable(tf.constant(0, tf.int64), name="count", **common)
        self.ids = tf.Variable(tf.fill([size], tf.constant(-1, tf.int64)), name="ids",
                               **common)

    @property
    def valid(self) -> tf.Tensor:
        """[size] bool: which slots hold a real key."""
        return tf.range(self.size, dtype=tf.int64) < self.count

    def enqueue(self, keys: tf.Tensor, num_views: int = 1,
                ids: Optional[tf.Tensor] = None) -> None:
        """Adds this step's keys ([local_batch, dim], from every replica).

        With `num_views` > 1 the local keys are num_views equal blocks (view
        1 first); the gathered keys are reordered view-major, so the queue
        holds the same rows in the same order whatever the replica count.
        `ids`: optional [local_batch / num_views] image ids, one per image
        (every view of an image shares it).
        """
        keys = tf.stop_gradient(tf.cast(keys, tf.float32))
        gathered, _ = gather_from_replicas(keys)
        if ids is None:
            ids = tf.fill([tf.shape(keys)[0] // num_views], tf.constant(-1, tf.int64))
        ids, _ = gather_from_replicas(tf.cast(ids, tf.int64))
        ids = tf.tile(ids, [num_views])  # the rows' order below: view-major
        if num_views > 1:
            gathered = tf.reshape(gathered, [-1, num_views, tf.shape(keys)[0] // num_views,
                                             self.dim])
            gathered = tf.reshape(tf.transpose(gathered, [1, 0, 2, 3]), [-1, self.dim])
            if keys.shape[0] is not None and gathered.shape[0] is None:
                replicas = tf.distribute.get_strategy().num_replicas_in_sync
                gathered = tf.ensure_shape(gathered, [keys.shape[0] * replicas, self.dim])
        keys = gathered
        if keys.shape[0] is not None:  # static shapes (XLA / TPU): plain ints
            num = keys.shape[0]
            keep = min(num, self.size)
        else:
            num = tf.shape(keys, out_type=tf.int64)[0]
            keep = tf.minimum(num, self.size)
        # Only the newest `size` keys can survive one enqueue.
        keys, ids = keys[num - keep:], ids[num - keep:]
        positions = (self.count + tf.cast(num - keep, tf.int64)
                     + tf.range(keep, dtype=tf.int64)) % self.size
        self.keys.assign(tf.tensor_scatter_nd_update(
            self.keys, positions[:, None], keys))
        self.ids.assign(tf.tensor_scatter_nd_update(self.ids, positions[:, None], ids))
        self.count.assign_add(tf.cast(num, tf.int64))
