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


def scan_records(files: List[str], layout: str, report: Callable[[str], None]
                 ) -> Tuple[List[int], np.ndarray, List[str], Dict[int, str]]:
    """One pass over every record, parsing only the label and id:
    (records per file, labels (0-based) and ids in file order, class names
    by label)."""
    spec = LAYOUTS[layout]
    features = {spec["label"]: tf.io.FixedLenFeature([], tf.int64, -1 - spec["label_offset"]),
                spec["id"]: tf.io.FixedLenFeature([], tf.string, "")}
    if spec["class"]:
        features[spec["class"]] = tf.io.FixedLenFeature([], tf.string, "")

    def read(i, path):
        records = tf.data.TFRecordDataset(path, buffer_size=8 << 20).batch(1024)
        return records.map(lambda r: (i, tf.io.parse_example(r, features)))

    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(files), dtype=tf.int64), files))
    ds = ds.interleave(read, cycle_length=min(len(files), READ_PARALLELISM),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    labels = [[] for _ in files]
    ids = [[] for _ in files]
    names: Dict[int, str] = {}
    start = last = time.time()
    seen = 0
    for i, parsed in ds.prefetch(4):
        i = int(i)
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
    return counts, flat_labels, flat_ids, names


def canonical_order(labels: np.ndarray, ids: List[str]) -> np.ndarray:
    """Positions in file order of the examples sorted by (label, id)."""
    return np.asarray(sorted(range(len(ids)), key=lambda p: (labels[p], ids[p])),
                      np.int64)


def index_records(files: List[str], report: Callable[[str], None]) -> Tuple[Dict, List[str]]:
    """The index (header, lines) of shards that have none, from one pass
    over their records."""
    layout = detect_layout(files[0])
    counts, labels, ids, names = scan_records(files, layout, report)
    order = canonical_order(labels, ids)
    classes = [names.get(c, str(c)) for c in range(int(labels.max(initial=-1)) + 1)]
    return pack(layout, [os.path.basename(f) for f in files], counts, labels[order],
                [ids[p] for p in order], order, classes)


class RecordReader:
    """Reads the examples of shards in file order, by canonical index."""

    def __init__(self, files: List[str], counts: List[int], positions: np.ndarray,
                 layout: str):
        self.files = files
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.positions = np.asarray(positions, np.int64)  # canonical index -> position
        self.index_of_position = np.empty_like(self.positions)
        self.index_of_position[self.positions] = np.arange(len(self.positions))
        self.image_key = LAYOUTS[layout]["image"]

    def file_of(self, indices: np.ndarray) -> np.ndarray:
        """The shard file of each example."""
        return np.searchsorted(self.offsets, self.positions[indices], side="right") - 1

    def shard(self, indices: np.ndarray, pipeline: int, pipelines: int) -> np.ndarray:
        """This input pipeline's share: by file when every pipeline gets a
        file (each reads only its own files), else every pipelines-th example."""
        if pipelines == 1:
            return indices
        if len(self.files) >= pipelines:
            return indices[self.file_of(indices) % pipelines == pipeline]
        return indices[pipeline::pipelines]

    def encoded(self, indices: np.ndarray, labels: tf.Tensor,
                shuffle_seed: Optional[int] = None) -> tf.data.Dataset:
        """{'encoded', 'label', 'index'} of the examples `indices`, reading
        only the files that hold them (in a seeded order reshuffled each
        epoch when shuffle_seed is set, else in file order), several at once."""
        wanted = np.zeros(len(self.positions), bool)
        wanted[indices] = True
        by_position = wanted[self.index_of_position]
        files = np.flatnonzero([by_position[a:b].any() for a, b in
                                zip(self.offsets[:-1], self.offsets[1:])])
        keep = tf.constant(by_position)
        index_of = tf.constant(self.index_of_position)
        ds = tf.data.Dataset.from_tensor_slices(
            (tf.constant([self.files[f] for f in files]), self.offsets[files]))
        if shuffle_seed is not None:
            ds = ds.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)
        ds = ds.interleave(
            lambda path, offset: tf.data.TFRecordDataset(path, buffer_size=8 << 20)
            .enumerate(offset),
            cycle_length=min(len(files), READ_PARALLELISM), block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if not by_position.all():
            ds = ds.filter(lambda position, record: tf.gather(keep, position))
        image_key = self.image_key
        feature = {image_key: tf.io.FixedLenFeature([], tf.string)}

        def parse(position, record):
            index = tf.gather(index_of, position)
            return {"encoded": tf.io.parse_single_example(record, feature)[image_key],
                    "label": tf.gather(labels, index), "index": index}
        return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def pack(layout: str, names: List[str], counts: List[int], labels: np.ndarray,
         ids: List[str], positions: np.ndarray, classes: List[str]) -> Tuple[Dict, List[str]]:
    """Header and lines of a TFRecord index: ids and their labels (as runs)
    in the canonical order, where each sits in the files, the files' names
    and record counts."""
    header = {"kind": "records", "version": 1, "layout": layout, "files": list(names),
              "counts": [int(c) for c in counts], "classes": list(classes),
              "label_runs": label_runs(labels),
              "positions": [int(p) for p in positions]}
    return header, list(ids)


def index_beside(files: List[str], split: str) -> str:
    """Where make_shards keeps the index of a split: beside its shards."""
    return os.path.join(os.path.dirname(files[0]), split + INDEX_SUFFIX)
