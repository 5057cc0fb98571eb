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
each file, so that the records are read by chunks (record_reader.py).
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
