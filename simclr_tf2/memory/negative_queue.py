"""FIFO queue of past keys, used as extra NT-Xent negatives (SimCLRv2 memory).

Hand-written: the authors never released their memory code, and the queue must
gather keys across replicas and live in a checkpointable variable.
"""
import tensorflow as tf

from simclr_tf2.configs.schema import check
from simclr_tf2.objectives.nt_xent import gather_from_replicas


class NegativeQueue(tf.Module):
    """A ring buffer of `size` keys of width `dim`, stored in variables.

    `enqueue(keys)` gathers the keys of all replicas first, so every replica
    writes the same global keys and the queue is identical everywhere. The
    oldest keys are overwritten once the queue is full. `valid` marks the slots
    written so far. Create it inside the strategy scope.
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

    @property
    def valid(self) -> tf.Tensor:
        """[size] bool: which slots hold a real key."""
        return tf.range(self.size, dtype=tf.int64) < self.count

    def enqueue(self, keys: tf.Tensor) -> None:
        """Adds this step's keys ([local_batch, dim], from every replica)."""
        keys, _ = gather_from_replicas(tf.stop_gradient(tf.cast(keys, tf.float32)))
        num = tf.shape(keys, out_type=tf.int64)[0]
        # Only the newest `size` keys can survive one enqueue.
        keep = tf.minimum(num, self.size)
        keys = keys[num - keep:]
        positions = (self.count + (num - keep) + tf.range(keep, dtype=tf.int64)) % self.size
        self.keys.assign(tf.tensor_scatter_nd_update(
            self.keys, positions[:, None], keys))
        self.count.assign_add(num)
