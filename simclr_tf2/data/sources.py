"""Where images come from: built-in arrays, image folders, TFRecord shards,
tfds datasets.

A `Source` is one split: per-example ids and labels as NumPy arrays (for
subsets and reports) and a `dataset(indices)` that yields
{'image': float32 [H, W, 3] in [0, 1], 'label': int64, 'index': int64} for
the chosen examples. Labels are -1 where there are none (unlabeled folders).
Folders and shards are read through `tf.io.gfile`, so any TensorFlow
filesystem works (local, gs://, ram://, ...), and are listed or indexed once
(listing.py, records.py, index.py).
"""
import logging
import posixpath
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from simclr_tf2.configs.schema import DataConfig
from simclr_tf2.data import listing, records
from simclr_tf2.data.builtin import BUILTIN_DATASETS, load_builtin
from simclr_tf2.data.decode import decode_image_file
from simclr_tf2.data.index import IndexStore, index_name, read_index, unpack_labels
from simclr_tf2.data.record_reader import RecordReader
from simclr_tf2.data.source_base import Source, records_backed
from simclr_tf2.data.tfds_source import tfds_source
from simclr_tf2.errors import DataError

log = logging.getLogger("simclr_tf2.data")

IMAGE_EXTENSIONS = listing.IMAGE_EXTENSIONS


# ---------------------------------------------------------------- built in
def builtin_source(name: str, split: str, image_size: int) -> Source:
    data = load_builtin(name, split, image_size)
    images = tf.constant(data.images)
    labels = data.labels.astype(np.int64)

    def make(indices):
        return tf.data.Dataset.from_tensor_slices(indices).map(
            lambda i: {"image": tf.gather(images, i),
                       "label": tf.gather(labels, i), "index": i})

    return Source(name, split, np.array([str(i) for i in range(len(labels))]),
                  labels, data.num_classes, [str(c) for c in range(data.num_classes)],
                  make, load=lambda i: tf.gather(images, i))


# ------------------------------------------------------------------ folder
# Sub-folder names that mark a folder as split into train / eval parts.
SPLIT_NAMES = ("train", "training", "val", "valid", "validation", "test", "eval", "dev")


def split_folder(root: str, split: str, allow_root: bool) -> str:
    """root/<split> when it exists; else `root` itself when `allow_root`
    (the training split of a folder that is not split into parts). A split
    that is missing is an error naming the parts that exist."""
    candidate = listing.join(root, split) if split else root
    if split and tf.io.gfile.isdir(candidate):
        return candidate
    if not tf.io.gfile.isdir(root):
        raise DataError(f"image folder {root!r} does not exist or is not a directory: "
                        "set data_dir to a folder of images")
    parts = [name.rstrip("/") for name in tf.io.gfile.listdir(root)
             if name.rstrip("/").lower() in SPLIT_NAMES
             and tf.io.gfile.isdir(listing.join(root, name.rstrip("/")))]
    if allow_root and not parts:
        return root
    if parts:
        raise DataError(f"image folder {root!r} has no {split!r} split; its splits are "
                        f"{sorted(parts)}: set --eval_split (or --train_split) to one "
                        "of them")
    raise DataError(f"image folder {root!r} has no {split!r} sub-folder and is not split "
                    "into parts (train/, val/, ...): evaluation needs images of its own; "
                    "set --eval_split to a sub-folder that holds them")


def _stored_listing(header, lines, folder: str) -> Optional[listing.Listing]:
    found = listing.unpack(header, lines)
    if found is None or found.root != folder or listing.folder_changed(found):
        return None
    return found


def folder_source(root: str, split: str, labelled: Optional[bool] = True,
                  verify: bool = False, store: Optional[IndexStore] = None,
                  allow_root: bool = True) -> Source:
    """Images under root/<split> (or root, see `split_folder`), as class
    folders (labelled=True), an unlabeled tree (False) or as the layout
    says (None). Listed once (listing.py) and, with `store`, kept in an
    index that later calls read instead; `verify` decodes every file once
    up front and leaves out those that fail (else they are skipped when
    met)."""
    folder = split_folder(root, split, allow_root)
    report = store.report if store is not None else log.info
    name = index_name("folder", folder)
    found = store.get(name, lambda h, lines: _stored_listing(h, lines, folder)) \
        if store is not None else None
    fresh = found is None
    if fresh:
        found = listing.list_folder(folder, report)
    else:
        report(f"image folder {folder}: {len(found.paths):,} images from the index "
               f"{store.file(name)}")
    if verify and not found.verified:
        found, fresh = listing.verify_files(found, report), True
    if store is not None and fresh:
        store.put(name, *listing.pack(found))
    paths, labels, classes, skipped = listing.labelled_view(found, labelled)
    if skipped:
        reasons: Dict[str, int] = {}
        for reason in skipped.values():
            key = reason.split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
        log.warning("image folder %s: left out %d file(s): %s (e.g. %s)", folder,
                    len(skipped), reasons, ", ".join(list(skipped)[:3]))
    full = tf.constant([listing.join(folder, p) for p in paths])
    label_array = np.asarray(labels, np.int64)
    label_tensor = tf.constant(label_array)

    def make(indices):
        return tf.data.Dataset.from_tensor_slices(indices).map(
            lambda i: {"image": decode_image_file(tf.gather(full, i)),
                       "label": tf.gather(label_tensor, i), "index": i},
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return Source("folder", split, np.asarray(paths), label_array, len(classes),
                  classes, make, load=lambda i: decode_image_file(tf.gather(full, i)),
                  load_encoded=lambda i: tf.io.read_file(tf.gather(full, i)),
                  robust=True, location=folder,
                  describe=lambda i: listing.file_problem(listing.join(folder, paths[i])))


# ---------------------------------------------------------------- tfrecord
def records_source(data_dir: str, split: str, store: Optional[IndexStore] = None
                   ) -> Source:
    """TFRecord shards of `split` (records.py: the TPU ImageNet layout or
    make_shards'); their index is read from beside the shards, else from
    `store`, else made by one pass over the records (and kept in `store`)."""
    files, pattern = records.shard_files(data_dir, split)
    names = [posixpath.basename(f) for f in files]
    report = store.report if store is not None else log.info

    def current(header, lines):
        ok = (header.get("kind") == "records" and header.get("version") == records.INDEX_VERSION
              and header.get("files") == names and len(lines) == sum(header["counts"])
              and header.get("chunk") == records.CHUNK_RECORDS)
        return (header, lines) if ok else None

    entry = read_index(records.index_beside(files, split))
    entry = entry and current(*entry)
    name = index_name("records", pattern)
    if entry is None and store is not None:
        entry = store.get(name, current)
    if entry is None:
        entry = records.index_records(files, report)
        if store is not None:
            store.put(name, *entry)
    else:
        report(f"TFRecord files {pattern}: {len(entry[1]):,} records in {len(files)} "
               "files, from their index")
    header, ids = entry
    labels = unpack_labels(header["label_runs"])
    image_key = records.LAYOUTS[header["layout"]]["image"]
    feature = {image_key: tf.io.FixedLenFeature([], tf.string)}
    reader = RecordReader(
        files, header["counts"], header["positions"],
        lambda record: tf.io.parse_single_example(record, feature)[image_key],
        header["chunk_offsets"], header["sizes"], header["chunk"])
    return records_backed("tfrecord", split, ids, labels, header["classes"], reader,
                           pattern, "its stored image cannot be decoded")


def make_source(config: DataConfig, split: str, labelled: Optional[bool] = True,
                store: Optional[IndexStore] = None) -> Source:
    """The source `config.dataset` names: a built-in name, 'folder',
    'tfrecord' or tfds. `labelled` (folders): class folders required
    (True), none (False) or as the layout says (None). `store` keeps and
    finds folder and shard indexes. A folder's training split may be the
    folder itself; any other split must exist."""
    if config.dataset in BUILTIN_DATASETS:
        return builtin_source(config.dataset, split, config.image_size)
    if config.dataset == "folder":
        return folder_source(config.data_dir, split, labelled, config.verify_images,
                             store, allow_root=split == config.train_split)
    if config.dataset == "tfrecord":
        return records_source(config.data_dir, split, store)
    return tfds_source(config.dataset, split, config.data_dir, config.tfds_download, store)
