"""Reading TFRecord files by chunks: shards (records.py) and tfds' files.

Every `CHUNK_RECORDS`-th record's byte offset is in the index, so a chunk
of that many consecutive records is one read from its offset. A subset
reads only the chunks that hold it. Training reads each pass's chunks in an
order seeded by (seed, pass), then permutes each window of consecutive
examples, seeded by (seed, pass, window), in place of a shuffle buffer
(whose state after k examples could only be found again by reading them):
where a resumed run starts is arithmetic on the seeds, and it starts
reading at its window, whatever pass it is in.
"""
from typing import Callable, List, Optional

import numpy as np
import tensorflow as tf

from simclr_tf2.data import records
from simclr_tf2.errors import DataError

READ_PARALLELISM = records.READ_PARALLELISM
RECORD_SPEC = tf.TensorSpec([], tf.string)


class RecordReader:
    """Reads the examples of TFRecord files by chunks (see the module note),
    by canonical index. `files` are read from their chunk offsets (a file
    may be read from a record past its first, as tfds split slices are);
    `parse(record)` -> the encoded image of a serialised record."""

    def __init__(self, files: List[str], counts: List[int], positions: np.ndarray,
                 parse: Callable[[tf.Tensor], tf.Tensor], chunks: List[List[int]],
                 sizes: List[int], chunk: Optional[int] = None):
        self.files = files
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.positions = np.asarray(positions, np.int64)  # canonical index -> position
        self.index_of_position = np.empty_like(self.positions)
        self.index_of_position[self.positions] = np.arange(len(self.positions))
        self.parse = parse
        self.chunk = chunk = chunk or records.CHUNK_RECORDS
        table = []  # per chunk: file, first position, records, byte offset, bytes
        for f, (count, starts, size) in enumerate(zip(counts, chunks, sizes)):
            if len(starts) != -(-count // chunk):
                raise DataError(f"the index of {files[f]!r} does not match its records: "
                                "delete the index to make it again")
            ends = list(starts[1:]) + [size]
            for j, (begin, end) in enumerate(zip(starts, ends)):
                table.append((f, self.offsets[f] + j * chunk,
                               min(chunk, count - j * chunk), begin, end - begin))
        table = np.asarray(table, np.int64).reshape(-1, 5)
        self.chunk_file, self.chunk_first, self.chunk_count, self.chunk_byte, \
            self.chunk_bytes = table.T

    def file_of(self, indices: np.ndarray) -> np.ndarray:
        """The file of each example."""
        return np.searchsorted(self.offsets, self.positions[indices], side="right") - 1

    def shard(self, indices: np.ndarray, pipeline: int, pipelines: int) -> np.ndarray:
        """This input pipeline's share: by file when every pipeline gets a
        file (each reads only its own files), else every pipelines-th example."""
        if pipelines == 1:
            return indices
        if len(self.files) >= pipelines:
            return indices[self.file_of(indices) % pipelines == pipeline]
        return indices[pipeline::pipelines]

    def nbytes(self, indices: np.ndarray) -> int:
        """About how many bytes the records of `indices` take."""
        per_record = self.chunk_bytes.sum() / max(len(self.positions), 1)
        return int(per_record * len(indices))

    def sample(self, limit: int, seed: int) -> np.ndarray:
        """`limit` examples (sorted) in whole chunks, the chunks picked at
        random with `seed`: reading them reads about `limit` records, where
        `limit` examples picked one by one would each cost a chunk (a bank
        of 10,000 of ImageNet's 1.28 million: half the records). Shards
        from make_shards, the TPU ImageNet conversion and tfds are shuffled
        when written, so whole chunks are a random sample."""
        order = np.random.default_rng(seed).permutation(len(self.chunk_first))
        ends = np.cumsum(self.chunk_count[order])
        picked = order[:int(np.searchsorted(ends, limit)) + 1]
        positions = np.concatenate([np.arange(self.chunk_first[c],
                                              self.chunk_first[c] + self.chunk_count[c])
                                    for c in picked])[:limit]
        return np.sort(self.index_of_position[positions])

    # ------------------------------------------------------------ reading
    def _plan(self, indices: np.ndarray):
        """(wanted by position, chunks holding wanted records, wanted per chunk)."""
        wanted = np.zeros(len(self.positions), bool)
        wanted[self.positions[np.asarray(indices, np.int64)]] = True
        per_chunk = np.add.reduceat(wanted, self.chunk_first) if len(wanted) else \
            np.zeros(0, np.int64)
        chunks = np.flatnonzero(per_chunk)
        return wanted, chunks, per_chunk[chunks]

    def _records(self, chunks: tf.Tensor, skip: tf.Tensor) -> tf.data.Dataset:
        """(position, serialised record) of the records of `chunks` (chunk
        numbers) in that order, each chunk read whole from its byte offset,
        several at once; the first `skip` records of the first chunk are not
        returned."""
        paths = tf.constant(self.files)
        table = {k: tf.constant(v) for k, v in (
            ("file", self.chunk_file), ("first", self.chunk_first),
            ("count", self.chunk_count), ("byte", self.chunk_byte),
            ("bytes", self.chunk_bytes))}
        skips = tf.where(tf.range(tf.size(chunks, out_type=tf.int64)) == 0, skip,
                         tf.constant(0, tf.int64))

        def read(c, drop):
            records = tf.raw_ops.TFRecordDatasetV2(
                filenames=tf.gather(paths, tf.gather(table["file"], c)),
                compression_type="", buffer_size=tf.gather(table["bytes"], c),
                byte_offsets=tf.gather(table["byte"], c))
            records = tf.data.experimental.from_variant(records, RECORD_SPEC)
            return records.take(tf.gather(table["count"], c)).enumerate(
                tf.gather(table["first"], c)).skip(drop)

        return tf.data.Dataset.from_tensor_slices((chunks, skips)).interleave(
            read, cycle_length=READ_PARALLELISM, block_length=self.chunk,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def _wanted(self, chunks: tf.Tensor, skip: tf.Tensor, wanted: np.ndarray
                ) -> tf.data.Dataset:
        """`_records` without the records that are not `wanted`."""
        ds = self._records(chunks, skip)
        if not wanted.all():
            keep = tf.constant(wanted)
            ds = ds.filter(lambda position, record: tf.gather(keep, position))
        return ds

    def _element(self, labels: tf.Tensor):
        index_of = tf.constant(self.index_of_position)
        parse = self.parse

        def element(position, record):
            index = tf.gather(index_of, position)
            return {"encoded": parse(record), "label": tf.gather(labels, index),
                    "index": index}
        return element

    def encoded(self, indices: np.ndarray, labels: tf.Tensor) -> tf.data.Dataset:
        """{'encoded', 'label', 'index'} of the examples `indices` in file
        order, reading only the chunks that hold them."""
        wanted, chunks, _ = self._plan(indices)
        return self._wanted(tf.constant(chunks), tf.constant(0, tf.int64), wanted).map(
            self._element(labels), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def pass_order(self, chunks: np.ndarray, seed: int, p: int) -> np.ndarray:
        """The chunks of pass `p` in their reading order."""
        return tf.random.experimental.stateless_shuffle(
            tf.constant(chunks), seed=_pass_seed(seed, p)).numpy()

    def stream(self, indices: np.ndarray, labels: tf.Tensor, seed: int, window: int,
               skip: int = 0, known: Optional[np.ndarray] = None, repeat: bool = True
               ) -> tf.data.Dataset:
        """(counter, {'encoded', 'label', 'index'}) of the examples
        `indices` for training: pass p reads their chunks in an order seeded
        by (seed, p), then permutes each `window` consecutive examples (the
        last may be shorter), seeded by (seed, p, window number). The counter
        is the example's place in the stream of whole passes (the
        augmentation seed). Examples marked in `known` are left out before
        the first `skip` are; the stream then starts where those `skip` end,
        found by arithmetic on the seeds: reading starts at the window that
        holds that place (the cost of a restart is at most one window,
        however far the run got)."""
        wanted, chunks, per_chunk = self._plan(indices)
        size = int(per_chunk.sum())
        bad_position = None
        if known is not None and known.any():
            bad_position = np.zeros(len(self.positions), bool)
            bad_position[self.positions[np.flatnonzero(known)]] = True
            bad_position &= wanted
        kept = size - (int(bad_position.sum()) if bad_position is not None else 0)
        if kept == 0:
            raise DataError("every example this pipeline reads has failed to decode "
                            "before (the run's skipped/ folder): check the data")
        if not repeat and skip >= kept:  # one pass, all of it skipped
            return self.stream(indices, labels, seed, window, 0, known, False).take(0)
        first, offset = divmod(skip, kept) if repeat else (0, skip)
        window = max(1, min(window, size))
        start = offset
        if bad_position is not None:  # the offset-th example that is not left out
            order = self._pass_positions(chunks, per_chunk, wanted, seed, first, window)
            start = int(np.flatnonzero(~bad_position[order])[offset])
        first_window, drop = divmod(start, window)
        order = self.pass_order(chunks, seed, first)
        ends = np.cumsum(per_chunk[np.searchsorted(chunks, order)])
        at = first_window * window  # where the window starts among the wanted
        j = int(np.searchsorted(ends, at, side="right"))
        before = at - (int(ends[j - 1]) if j else 0)
        c = order[j]
        inside = np.flatnonzero(wanted[self.chunk_first[c]:self.chunk_first[c]
                                       + self.chunk_count[c]])
        record_skip = int(inside[before])  # records of that chunk before the window
        chunk_table = tf.constant(chunks)
        bad = tf.constant(bad_position) if bad_position is not None else None
        element = self._element(labels)
        records = self._wanted

        def one_pass(p):
            is_first = tf.equal(p, first)
            pass_chunks = tf.random.experimental.stateless_shuffle(
                chunk_table, seed=_pass_seed(seed, p))
            begin = tf.where(is_first, tf.constant(j, tf.int64), 0)
            ds = records(pass_chunks[begin:],
                         tf.where(is_first, tf.constant(record_skip, tf.int64), 0), wanted)
            ds = ds.batch(window).prefetch(1)
            ds = ds.enumerate(tf.where(is_first, tf.constant(first_window, tf.int64), 0))

            def permute(w, batch):
                positions, serialised = batch
                n = tf.shape(positions, out_type=tf.int64)[0]
                order = tf.random.experimental.stateless_shuffle(
                    tf.range(n), seed=_window_seed(seed, p, w))
                counters = p * size + w * window + tf.range(n)
                return tf.data.Dataset.from_tensor_slices(
                    (counters, tf.gather(positions, order), tf.gather(serialised, order)))
            ds = ds.flat_map(permute).skip(tf.where(is_first, tf.constant(drop, tf.int64), 0))
            if bad is not None:
                ds = ds.filter(lambda counter, position, record:
                               tf.logical_not(tf.gather(bad, position)))
            return ds

        passes = tf.data.Dataset.range(first, np.iinfo(np.int64).max if repeat else first + 1)
        return passes.flat_map(one_pass).map(
            lambda counter, position, record: (counter, element(position, record)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def _pass_positions(self, chunks, per_chunk, wanted, seed, p, window) -> np.ndarray:
        """The positions of pass `p` in `stream`'s order (before anything is
        left out), computed with the same seeded ops."""
        order = self.pass_order(chunks, seed, p)
        positions = np.concatenate([
            np.flatnonzero(wanted[self.chunk_first[c]:self.chunk_first[c]
                                  + self.chunk_count[c]]) + self.chunk_first[c]
            for c in order])
        out = []
        for w, begin in enumerate(range(0, len(positions), window)):
            part = positions[begin:begin + window]
            out.append(part[tf.random.experimental.stateless_shuffle(
                tf.range(len(part), dtype=tf.int64), seed=_window_seed(seed, p, w)).numpy()])
        return np.concatenate(out)


def _pass_seed(seed, p) -> tf.Tensor:
    """The seed of pass p's chunk order (p an int or an int64 tensor)."""
    return tf.stack([tf.constant(seed, tf.int64), tf.cast(p, tf.int64)])


def _window_seed(seed, p, w) -> tf.Tensor:
    """The seed of window w of pass p: (seed, p) mixed, w."""
    mixed = tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(p, tf.int64) + 7_919
    return tf.stack([mixed, tf.cast(w, tf.int64)])
