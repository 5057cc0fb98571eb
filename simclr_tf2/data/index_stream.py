"""The reading order of random-access sources (folders, built-in data,
cache=True): cheap (counter, index) pairs, permuted per pass."""
from typing import Optional

import numpy as np
import tensorflow as tf

from simclr_tf2.errors import DataError

# With a tf.data service, each pass is cut into parts that its workers take
# in turn (at most this many per pass: each part recomputes its pass's
# permutation, O(N)), of at least PART_MIN examples.
MAX_PARTS = 64
PART_MIN = 256


def service_parts(size: int) -> int:
    """Parts per pass of `size` examples for a tf.data service."""
    return int(min(MAX_PARTS, max(1, size // PART_MIN)))


def index_stream(indices: np.ndarray, seed: int, shuffle: bool, repeat: bool,
                 known: Optional[np.ndarray], skip: int, parts: int = 1) -> tf.data.Dataset:
    """(counter, index) in reading order over `indices`: pass p is a
    permutation seeded by (seed, p) when `shuffle` (one op over all N, not a
    buffer of N filled element by element), counter its position in the
    stream of all passes (the augmentation seed: p * N + i). Examples marked
    in `known` are left out before the first `skip` are: a resumed run then
    reads what an uninterrupted one did, which dropped them when met. The
    skip starts at the right pass and offset without producing what it skips
    (a restart at epoch 90 costs one permutation, not 90 epochs of indices).

    The stream is a flat_map over a range of `parts` parts per pass (the
    same elements however many): a tf.data service with dynamic sharding
    hands these parts to its workers, so each example is read once per
    pass whichever worker reads it."""
    size = len(indices)
    kept = size if known is None else int(np.count_nonzero(~known[indices]))
    if kept == 0:
        raise DataError("every example this pipeline reads has failed to decode before "
                        "(the run's skipped/ folder): check the data")
    first, offset = divmod(skip, kept) if repeat else (0, skip)
    part = -(-kept // parts)  # examples per part (the last may hold fewer)
    first_part = first * parts + min(offset // part, parts)
    table = tf.constant(indices)
    bad = tf.constant(known) if known is not None else None

    def one_part(q):
        p, j = q // parts, q % parts
        order = table
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(
                table, seed=tf.stack([tf.constant(seed, tf.int64), p]))
        counters = p * size + tf.range(size, dtype=tf.int64)
        if bad is not None:
            good = tf.logical_not(tf.gather(bad, order))
            order, counters = tf.boolean_mask(order, good), tf.boolean_mask(counters, good)
        begin = j * part
        start = tf.where(tf.equal(q, first_part), tf.constant(offset, tf.int64), begin)
        end = tf.minimum(begin + part, kept)
        return tf.data.Dataset.from_tensor_slices((counters[start:end], order[start:end]))

    last = np.iinfo(np.int64).max if repeat else parts
    return tf.data.Dataset.range(first_part, last).flat_map(one_part)
