"""TFRecord shards of encoded images: the TPU ImageNet layout and ours.

Layouts, told apart by the features of the first record:
- "tpu", written by the TPU ImageNet conversion (tensorflow/tpu,
  tools/datasets/imagenet_to_gcs.py): `image/encoded` (JPEG bytes),
  `image/class/label` numbered from 1 (shifted here to 0..C-1),
  `image/filename` (the example id, e.g. n01440764_10026.JPEG, the names the
  authors' 1% and 10% subset files list) and `image/class/synset` (class
  names);
- "simclr_tf2", written by `python -m simclr_tf2.make_shards`:
  `image/encoded` (the file's bytes as they were), `label` (0-based, -1 =
  unlabeled) and `id` (the path relative to the image folder).

Ids and labels of every example are needed before training (subsets,
epochs, reports). They come from an index: the one make_shards writes
beside its shards (`<split>.index`), else one pass over every record that
parses only the label and id (the bytes still cross the wire once), kept in
the run's index store for restarts and later runs. Examples are numbered in
the canonical order (label, then id), as image folders are, so the same
images give the same examples, labels, ids and subsets either way.

The index also holds the byte offset of every `CHUNK_RECORDS`-th record of
each file. Reading is by chunks of that many consecutive records, each from
its own offset: a subset reads only the chunks that hold it, and training
reads each pass's chunks in a seeded order, then permutes windows of
consecutive examples (in place of a shuffle buffer, whose state cannot be
found again). Where a pass starts after a restart is computed from the seed,
so a resumed run starts reading at its window without reading what it skips
(`RecordReader.stream`).
"""
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from simclr_tf2.data.index import label_runs
from simclr_tf2.errors import DataError

LAYOUTS = {
    "tpu": {"image": "image/encoded", "label": "image/class/label",
            "id": "image/filename", "class": "image/class/synset", "label_offset": 1},
    "simclr_tf2": {"image": "image/encoded", "label": "label", "id": "id",
                   "class": None, "label_offset": 0},
}
INDEX_SUFFIX = ".index"
INDEX_VERSION = 2
# Records per chunk: one read of a few MB (ImageNet JPEGs average 110 KB).
CHUNK_RECORDS = 64
# TFRecord framing around each record's data: length, its CRC, data CRC.
RECORD_OVERHEAD = 16
RECORD_SPEC = tf.TensorSpec([], tf.string)
# Shard files read at once: enough to keep a bucket's requests overlapping.
READ_PARALLELISM = 16
PROGRESS_SECONDS = 10.0


def shard_files(data_dir: str, split: str) -> Tuple[List[str], str]:
    """(sorted shard files, the pattern) of `split`: data_dir is a file
    pattern with {split}, a directory holding <split>-* files, or a plain
    pattern (its files are every split's)."""
    if "{split}" in data_dir:
        pattern = data_dir.replace("{split}", split)
    elif tf.io.gfile.isdir(data_dir):
        pattern = os.path.join(data_dir, f"{split}-*")
    else:
        pattern = data_dir
    files = sorted(f for f in tf.io.gfile.glob(pattern)
                   if not f.endswith((INDEX_SUFFIX, ".tmp")))
    if not files:
        folder = os.path.dirname(pattern)
        found = sorted({os.path.basename(f).split("-")[0]
                        for f in tf.io.gfile.glob(os.path.join(folder, "*-of-*"))})
        raise DataError(f"no TFRecord files match {pattern!r} (split {split!r})"
                        + (f"; the splits there are {found}" if found else "")
                        + ": set data_dir to a directory of <split>-* shards or a file "
                        "pattern such as gs://bucket/imagenet/{split}-*, and the split "
                        "flags to one of its splits")
    return files, pattern


def detect_layout(first_file: str) -> str:
    """The layout of the shards, from the features of the first record."""
    try:
        record = next(iter(tf.data.TFRecordDataset(first_file).take(1)), None)
    except tf.errors.OpError as error:
        raise DataError(f"{first_file!r} is not a readable TFRecord file: "
                        f"{error.message}") from None
    if record is None:
        raise DataError(f"{first_file!r} holds no records")
    keys = set(tf.train.Example.FromString(record.numpy()).features.feature)
    for name, layout in LAYOUTS.items():
        if {layout["image"], layout["label"]} <= keys:
            return name
    raise DataError(f"{first_file!r} has features {sorted(keys)}; supported layouts: "
                    f"TPU ImageNet (image/encoded, image/class/label, image/filename) "
                    f"and simclr_tf2.make_shards' (image/encoded, label, id)")


def chunk_offsets(lengths: np.ndarray, start: int = 0,
                  chunk: Optional[int] = None) -> Tuple[List[int], int]:
    """(byte offsets of every chunk-th record (CHUNK_RECORDS), the offset
    after the last) of records with data `lengths`, the first at byte `start`."""
    chunk = chunk or CHUNK_RECORDS
    ends = start + np.cumsum(np.asarray(lengths, np.int64) + RECORD_OVERHEAD)
    starts = np.concatenate([[start], ends[:-1]]).astype(np.int64)
    return [int(x) for x in starts[::chunk]], int(ends[-1]) if len(ends) else start


def file_chunks(files: List[str]) -> Tuple[List[List[int]], List[int]]:
    """(chunk offsets, size) of each file, from one pass over its records."""
    def lengths(path):
        return tf.data.TFRecordDataset(path, buffer_size=8 << 20).map(tf.strings.length)
    out = [chunk_offsets(np.fromiter(lengths(f).as_numpy_iterator(), np.int64))
           for f in files]
    return [c for c, _ in out], [end for _, end in out]


def scan_records(files: List[str], layout: str, report: Callable[[str], None]
                 ) -> Tuple[List[int], np.ndarray, List[str], Dict[int, str],
                            List[List[int]], List[int]]:
    """One pass over every record, parsing only the label and id:
    (records per file, labels (0-based) and ids in file order, class names
    by label, each file's chunk offsets and size)."""
    spec = LAYOUTS[layout]
    features = {spec["label"]: tf.io.FixedLenFeature([], tf.int64, -1 - spec["label_offset"]),
                spec["id"]: tf.io.FixedLenFeature([], tf.string, "")}
    if spec["class"]:
        features[spec["class"]] = tf.io.FixedLenFeature([], tf.string, "")

    def read(i, path):
        records = tf.data.TFRecordDataset(path, buffer_size=8 << 20).batch(1024)
        return records.map(lambda r: (i, tf.io.parse_example(r, features),
                                      tf.strings.length(r)))

    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(files), dtype=tf.int64), files))
    ds = ds.interleave(read, cycle_length=min(len(files), READ_PARALLELISM),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    labels = [[] for _ in files]
    ids = [[] for _ in files]
    lengths = [[] for _ in files]
    names: Dict[int, str] = {}
    start = last = time.time()
    seen = 0
    for i, parsed, length in ds.prefetch(4):
        i = int(i)
        lengths[i].append(length.numpy())
        batch_labels = parsed[spec["label"]].numpy() - spec["label_offset"]
        labels[i].append(batch_labels)
        ids[i].extend(x.decode() for x in parsed[spec["id"]].numpy())
        if spec["class"]:
            for label, name in zip(batch_labels, parsed[spec["class"]].numpy()):
                names.setdefault(int(label), name.decode())
        seen += len(batch_labels)
        if time.time() - last >= PROGRESS_SECONDS:
            last = time.time()
            report(f"indexing {len(files)} TFRecord files: {seen:,} records "
                   f"({last - start:.0f}s)")
    counts = [sum(len(b) for b in file_labels) for file_labels in labels]
    flat_labels = np.concatenate([np.concatenate(b) if b else np.zeros(0, np.int64)
                                  for b in labels]).astype(np.int64)
    flat_ids = [x for file_ids in ids for x in file_ids]
    for f, (file_ids, count) in enumerate(zip(ids, counts)):
        for j in range(count):  # records without an id get one from their place
            if not file_ids[j]:
                flat_ids[sum(counts[:f]) + j] = f"{os.path.basename(files[f])}:{j}"
    report(f"indexed {len(files)} TFRecord files: {seen:,} records in "
           f"{time.time() - start:.1f}s")
    chunks = [chunk_offsets(np.concatenate(b) if b else np.zeros(0, np.int64))
              for b in lengths]
    return (counts, flat_labels, flat_ids, names, [c for c, _ in chunks],
            [end for _, end in chunks])


def canonical_order(labels: np.ndarray, ids: List[str]) -> np.ndarray:
    """Positions in file order of the examples sorted by (label, id)."""
    return np.asarray(sorted(range(len(ids)), key=lambda p: (labels[p], ids[p])),
                      np.int64)


def index_records(files: List[str], report: Callable[[str], None]) -> Tuple[Dict, List[str]]:
    """The index (header, lines) of shards that have none, from one pass
    over their records."""
    layout = detect_layout(files[0])
    counts, labels, ids, names, chunks, sizes = scan_records(files, layout, report)
    order = canonical_order(labels, ids)
    classes = [names.get(c, str(c)) for c in range(int(labels.max(initial=-1)) + 1)]
    return pack(layout, [os.path.basename(f) for f in files], counts, labels[order],
                [ids[p] for p in order], order, classes, chunks, sizes)


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
        self.chunk = chunk = chunk or CHUNK_RECORDS
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
        self.sizes = [int(x) for x in sizes]

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
        per_record = sum(self.sizes) / max(len(self.positions), 1)
        return int(per_record * len(indices))

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
                chunk_table, seed=_pass_seed_tensor(seed, p))
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


def _pass_seed(seed: int, p: int) -> tf.Tensor:
    return tf.constant([seed, p], tf.int64)


def _pass_seed_tensor(seed: int, p: tf.Tensor) -> tf.Tensor:
    return tf.stack([tf.constant(seed, tf.int64), p])


def _window_seed(seed, p, w) -> tf.Tensor:
    """The seed of window w of pass p: (seed, p) mixed, w."""
    mixed = tf.cast(seed, tf.int64) * 1_000_003 + tf.cast(p, tf.int64) + 7_919
    return tf.stack([mixed, tf.cast(w, tf.int64)])


def pack(layout: str, names: List[str], counts: List[int], labels: np.ndarray,
         ids: List[str], positions: np.ndarray, classes: List[str],
         chunks: List[List[int]], sizes: List[int]) -> Tuple[Dict, List[str]]:
    """Header and lines of a TFRecord index: ids and their labels (as runs)
    in the canonical order, where each sits in the files, the files' names,
    record counts, chunk offsets and sizes."""
    header = {"kind": "records", "version": INDEX_VERSION, "layout": layout,
              "files": list(names), "counts": [int(c) for c in counts],
              "classes": list(classes), "label_runs": label_runs(labels),
              "positions": [int(p) for p in positions], "chunk": CHUNK_RECORDS,
              "chunk_offsets": [[int(x) for x in c] for c in chunks],
              "sizes": [int(x) for x in sizes]}
    return header, list(ids)


def index_beside(files: List[str], split: str) -> str:
    """Where make_shards keeps the index of a split: beside its shards."""
    return os.path.join(os.path.dirname(files[0]), split + INDEX_SUFFIX)
