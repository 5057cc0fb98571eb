"""Training batches of precomputed features (linear eval on cached frozen
features), in the order the image pipeline reads their examples."""
from typing import Optional

import numpy as np
import tensorflow as tf

from simclr_tf2.data.index_stream import index_stream
from simclr_tf2.data.pipeline import per_replica_batch_size, shard_indices
from simclr_tf2.errors import DataError


def feature_dataset(features: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                    batch_size: int, seed: int = 0,
                    input_context: Optional[tf.distribute.InputContext] = None,
                    start_step: int = 0) -> tf.data.Dataset:
    """Training batches {'features', 'label', 'index'} of precomputed
    features, one row per example of `indices` (in that order; `labels` one
    per source example): the sharding, seeded shuffle, repeat, resume skip
    and full batches of a finetune `build_dataset` over a random-access
    source, so both read the examples in the same order."""
    indices = np.asarray(indices, np.int64)
    if len(features) != len(indices):
        raise DataError(f"{len(features)} feature rows for {len(indices)} examples")
    local_batch = per_replica_batch_size(batch_size, input_context)
    rows = shard_indices(np.arange(len(indices), dtype=np.int64), input_context)
    if len(rows) < local_batch:
        raise DataError(f"{len(rows)} examples cannot fill one batch of "
                        f"{local_batch}: lower the batch size")
    replicas_here = 1
    if input_context is not None:
        replicas_here = max(input_context.num_replicas_in_sync
                            // input_context.num_input_pipelines, 1)
    table = tf.constant(np.asarray(features, np.float32))
    index_of = tf.constant(indices)
    label_of = tf.constant(np.asarray(labels)[indices])
    # A seeded permutation moves positions, whatever they hold: permuting
    # rows here permutes `indices` as build_dataset does.
    ds = index_stream(rows, seed, True, True, None, start_step * local_batch * replicas_here)
    ds = ds.map(lambda counter, row: {"features": tf.gather(table, row),
                                      "label": tf.gather(label_of, row),
                                      "index": tf.gather(index_of, row)},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return ds.batch(local_batch, drop_remainder=True).with_options(options).prefetch(
        tf.data.AUTOTUNE)
