"""`cache=True`: the encoded images a pipeline reads, held in host memory
after one read, so later passes read no file (each pass still decodes).

What is held is the files' bytes (JPEG/PNG as stored), not decoded float32
images: ImageNet's 1.28 million JPEGs are about 140 GB encoded and would be
about 2.5 TB decoded at their own sizes. The bytes sit in a hash table
(example index -> bytes), so the cached source reads any example at once
and behaves like an image folder: passes are seeded permutations of
indices and a resumed run starts at its place without reading the passes
before (pipeline.py). A cache that would not fit in the host's available
memory is refused before anything is read, with the size it would need.
"""
import dataclasses
import logging
import os
import weakref
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from simclr_tf2.data.decode import decode_image_data
from simclr_tf2.errors import DataError

log = logging.getLogger("simclr_tf2.data")

# Of the memory available when the pipeline is built, the share the cache
# may take (the rest is for the model, tf.data's buffers and the runtime).
MEMORY_SHARE = 0.5
FILES_SAMPLED = 64
FILL_BATCH = 256

# id(source) -> {indices: table}, dropped with the source.
_tables: Dict[int, Dict[bytes, tf.lookup.experimental.MutableHashTable]] = {}


def available_memory() -> int:
    """Bytes of host memory available now (Linux: MemAvailable; else free pages)."""
    if os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def estimated_bytes(source, indices: np.ndarray) -> int:
    """About how many bytes the encoded images of `indices` take: from the
    source's index where it knows (TFRecord files), else from the sizes of
    a seeded sample of FILES_SAMPLED of them."""
    if source.nbytes is not None:
        return source.nbytes(indices)
    if not len(indices):
        return 0
    sample = np.random.default_rng(0).choice(indices, min(len(indices), FILES_SAMPLED),
                                             replace=False)
    sizes = [int(tf.strings.length(source.load_encoded(tf.constant(int(i), tf.int64))))
             for i in sample]
    return int(np.mean(sizes) * len(indices))


def check_fits(source, indices: np.ndarray,
               available: Optional[Callable[[], int]] = None) -> int:
    """The cache's estimated size; a DataError naming it when it would take
    more than MEMORY_SHARE of the available memory."""
    need = estimated_bytes(source, indices)
    have = (available or available_memory)()
    if need > MEMORY_SHARE * have:
        raise DataError(
            f"cache=True would hold about {need / 2 ** 30:.1f} GB of encoded images "
            f"({len(indices):,} examples of {source.location or source.name}); this host "
            f"has {have / 2 ** 30:.1f} GB of memory available and the cache may take "
            f"{MEMORY_SHARE:.0%} of it: drop --cache (the files are then read each pass)")
    return need


def _encoded_in_order(source, indices: np.ndarray) -> tf.data.Dataset:
    """{'encoded', 'index'} of `indices`, read once (files at once, several
    in parallel; records by chunks)."""
    if source.load is not None:
        return tf.data.Dataset.from_tensor_slices(indices).map(
            lambda i: {"encoded": source.load_encoded(i), "index": i},
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return source.encoded_dataset(indices)


def cached_source(source, indices: np.ndarray,
                  available: Optional[Callable[[], int]] = None):
    """`source` reading the encoded images of `indices` from host memory:
    filled by one read the first time (kept for later pipelines over the
    same source and examples), refused when it would not fit."""
    indices = np.unique(np.asarray(indices, np.int64))
    key = indices.tobytes()
    if id(source) not in _tables:
        _tables[id(source)] = {}
        weakref.finalize(source, _tables.pop, id(source), None)
    tables = _tables[id(source)]
    table = tables.get(key)
    if table is None:
        need = check_fits(source, indices, available)
        table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.string, b"")
        for batch in _encoded_in_order(source, indices).batch(FILL_BATCH).prefetch(2):
            table.insert(batch["index"], batch["encoded"])
        log.info("cache: %d encoded images (about %.2f GB) held in memory",
                 len(indices), need / 2 ** 30)
        tables[key] = table

    def encoded(i):
        return table.lookup(tf.cast(i, tf.int64))
    return dataclasses.replace(source, load=lambda i: decode_image_data(encoded(i)),
                               load_encoded=encoded, _stream=None)
