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
import dataclasses
import logging
import os
import posixpath
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from simclr_tf2.configs.schema import DataConfig
from simclr_tf2.data import listing, records
from simclr_tf2.data.builtin import BUILTIN_DATASETS, load_builtin
from simclr_tf2.data.decode import decode_image_data, decode_image_file
from simclr_tf2.data.index import IndexStore, index_name, read_index, unpack_labels
from simclr_tf2.data.skips import SkipLog
from simclr_tf2.errors import DataError

log = logging.getLogger("simclr_tf2.data")

IMAGE_EXTENSIONS = listing.IMAGE_EXTENSIONS


@dataclasses.dataclass
class Source:
    name: str
    split: str
    ids: np.ndarray        # [N] str: stable example ids (index, path, file name)
    labels: np.ndarray     # [N] int64, -1 = unlabeled
    num_classes: int
    class_names: List[str]
    _make: Callable[[np.ndarray], tf.data.Dataset]
    # Random access: example index (int64 tensor) -> image, for sources that
    # can read any example cheaply (built-in arrays, folders). Pipelines then
    # shuffle indices, not decoded images, and resume by skipping indices.
    load: Optional[Callable[[tf.Tensor], tf.Tensor]] = None
    # The encoded file (string scalar) of an example, for sources that store
    # files (folders): random crops then decode only what they use (decode.py).
    load_encoded: Optional[Callable[[tf.Tensor], tf.Tensor]] = None
    # Sequential sources that store encoded images (tfds, TFRecord shards):
    # (indices, shuffle_seed) -> like `_make`, with 'encoded' (string scalar)
    # in place of 'image'; shuffle_seed shuffles the files each epoch.
    _make_encoded: Optional[Callable[..., tf.data.Dataset]] = None
    # Examples are encoded images that may fail to decode: pipelines skip
    # those where they meet them and record them in `skip_log` (skips.py);
    # `describe(index)` says why one failed.
    robust: bool = False
    skip_log: Optional[SkipLog] = None
    describe: Optional[Callable[[int], str]] = None
    # (indices, pipeline, pipelines) -> this input pipeline's share, when the
    # source can do better than every pipelines-th example (shards: by file).
    shard: Optional[Callable[[np.ndarray, int, int], np.ndarray]] = None
    location: str = ""     # the folder or file pattern read, for messages
    # Sequential sources that can start a training stream anywhere without
    # reading what comes before (records.RecordReader.stream): (indices,
    # seed, window, skip, known, repeat) -> (counter, encoded element).
    _stream: Optional[Callable[..., tf.data.Dataset]] = None
    # indices -> about how many bytes their encoded images take.
    nbytes: Optional[Callable[[np.ndarray], int]] = None

    def __len__(self):
        return len(self.ids)

    def dataset(self, indices: Optional[np.ndarray] = None) -> tf.data.Dataset:
        """Examples at `indices` (all by default), in index order (sequential
        sources: in the order they are stored)."""
        if indices is None:
            indices = np.arange(len(self))
        return self._make(np.asarray(indices, np.int64))

    @property
    def has_encoded(self) -> bool:
        """Whether training can read the examples undecoded: `load_encoded`
        for sources with random access, `encoded_dataset` for the others."""
        if self.load is not None:
            return self.load_encoded is not None
        return self._make_encoded is not None

    def encoded_dataset(self, indices: Optional[np.ndarray] = None,
                        shuffle_seed: Optional[int] = None) -> tf.data.Dataset:
        """Like `dataset`, with the encoded image file under 'encoded'."""
        if self._make_encoded is None:
            raise ValueError(f"source {self.name!r} does not store encoded images")
        if indices is None:
            indices = np.arange(len(self))
        return self._make_encoded(np.asarray(indices, np.int64), shuffle_seed)

    def with_skip_log(self, directory: Optional[str],
                      report: Callable[[str], None] = log.warning) -> "Source":
        """This source with its skipped examples recorded in `directory`
        and told to `report`."""
        if not self.robust:
            return self
        describe = self.describe or (lambda i: "its image cannot be decoded")
        return dataclasses.replace(self, skip_log=SkipLog(
            directory, lambda i: (str(self.ids[i]), describe(i)), report))


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
    reader = records.RecordReader(
        files, header["counts"], header["positions"],
        lambda record: tf.io.parse_single_example(record, feature)[image_key],
        header["chunk_offsets"], header["sizes"], header["chunk"])
    return _records_backed("tfrecord", split, ids, labels, header["classes"], reader,
                           pattern, "its stored image cannot be decoded")


def _records_backed(name: str, split: str, ids, labels: np.ndarray, classes: List[str],
                    reader: "records.RecordReader", location: str, problem: str) -> Source:
    """A source read by a `records.RecordReader` (shards, tfds)."""
    label_tensor = tf.constant(labels)

    def make_encoded(indices, shuffle_seed=None):
        del shuffle_seed  # training reads `stream`
        return reader.encoded(indices, label_tensor)

    def make(indices):
        return make_encoded(indices).map(
            lambda x: {"image": decode_image_data(x["encoded"]), "label": x["label"],
                       "index": x["index"]},
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def stream(indices, seed, window, skip, known, repeat):
        return reader.stream(indices, label_tensor, seed, window, skip, known, repeat)

    return Source(name, split, np.asarray(ids), labels, len(classes), list(classes),
                  make, _make_encoded=make_encoded, _stream=stream, robust=True,
                  location=location, shard=reader.shard, nbytes=reader.nbytes,
                  describe=lambda i: problem)


# -------------------------------------------------------------------- tfds
def tfds_source(name: str, split: str, data_dir: Optional[str],
                download: bool = False, store: Optional[IndexStore] = None) -> Source:
    """A tensorflow-datasets split. Nothing is downloaded unless `download`.

    Datasets that tfds stores as TFRecord files of encoded images (most
    image datasets, imagenet2012 among them) are read like our shards: their
    ids and labels come from one pass that decodes no image, kept in
    `store` for restarts and later runs, and the records are read by chunks
    from byte offsets (records.RecordReader), so a subset reads only its
    chunks and a resumed run starts where it stopped without reading the
    passes before. Other datasets are read through tfds' own reader."""
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # noqa: BLE001 - tfds raises many types here
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise DataError(f"tfds dataset {name!r} is unknown ({first_line}): check the "
                        "name (tfds.list_builders()) and that its module is imported") from None
    if download:
        builder.download_and_prepare()
    elif not builder.is_prepared():
        raise DataError(
            f"tfds dataset {name!r} is not prepared in data_dir={data_dir!r}: prepare "
            "it there first (tfds build / manual download for imagenet2012), or "
            "set the data config's tfds_download=True to let tfds fetch it")
    info = builder.info
    try:
        instructions = info.splits[split].file_instructions
    except (ValueError, KeyError, AssertionError) as error:
        raise DataError(f"tfds dataset {name!r} cannot read split {split!r} "
                        f"(splits: {sorted(info.splits)}): {error}") from None
    features = info.features
    label_feature = features["label"] if "label" in features else None
    names = list(label_feature.names) if label_feature is not None else []
    image_feature = features["image"] if "image" in features else None
    encoded_images = (isinstance(image_feature, tfds.features.Image)
                      and image_feature.np_dtype == np.uint8)
    # Every image feature left encoded: metadata passes decode none.
    skip_images = {k: tfds.decode.SkipDecoding() for k, f in features.items()
                   if isinstance(f, tfds.features.Image)}
    id_key = next((k for k in ("file_name", "id", "image/filename") if k in features), None)
    if encoded_images and str(getattr(info.file_format, "value", info.file_format)) == "tfrecord":
        return _tfds_records(name, split, info, instructions, skip_images, id_key,
                             label_feature is not None, names, store)
    return _tfds_reader(name, split, builder, skip_images, id_key, label_feature, names,
                        encoded_images)


def _tfds_records(name, split, info, instructions, skip_images, id_key, labelled,
                  names, store: Optional[IndexStore]) -> Source:
    """A tfds split stored as TFRecord files, read by records.RecordReader."""
    files = [i.filename for i in instructions]
    plan = [[posixpath.basename(i.filename), int(i.skip), int(i.take)]
            for i in instructions]
    report = store.report if store is not None else log.info
    key = f"{name}/{info.version}/{split}@{os.path.dirname(files[0]) if files else ''}"

    def current(header, lines):
        ok = (header.get("kind") == "tfds" and header.get("version") == records.INDEX_VERSION
              and header.get("plan") == plan and header.get("chunk") == records.CHUNK_RECORDS
              and len(lines) == sum(take for *_, take in plan))
        return (header, lines) if ok else None

    index = index_name("tfds", key)
    entry = store.get(index, current) if store is not None else None
    if entry is None:
        entry = _scan_tfds(files, instructions, info.features, skip_images, id_key,
                           labelled, report)
        entry[0]["plan"] = plan
        if store is not None:
            store.put(index, *entry)
    else:
        report(f"tfds {name} {split}: {len(entry[1]):,} examples from the index "
               f"{store.file(index)}")
    header, lines = entry
    ids = [line.rsplit("\t", 1)[0] for line in lines]
    labels = np.asarray([int(line.rsplit("\t", 1)[1]) for line in lines], np.int64)
    features = info.features

    def parse(record):
        return features.deserialize_example(record, decoders=skip_images)["image"]

    reader = records.RecordReader(files, header["counts"], np.arange(len(ids)), parse,
                                  header["chunk_offsets"], header["sizes"], header["chunk"])
    return _records_backed(name, split, ids, labels, names, reader, name,
                           "its stored image cannot be decoded")


def _scan_tfds(files, instructions, features, skip_images, id_key, labelled,
               report) -> Tuple[Dict, List[str]]:
    """The index of a tfds split: one pass over its records that decodes no
    image (ids, labels, chunk offsets)."""
    start = time.time()
    counts, chunks, sizes, lines = [], [], [], []

    def meta(record):
        x = features.deserialize_example(record, decoders=skip_images)
        label = tf.cast(x["label"], tf.int64) if labelled else tf.constant(-1, tf.int64)
        example_id = x[id_key] if id_key else tf.constant("", tf.string)
        return tf.strings.length(record), label, example_id

    for f, instruction in zip(files, instructions):
        ds = tf.data.TFRecordDataset(f, buffer_size=8 << 20).take(
            instruction.skip + instruction.take).map(meta, num_parallel_calls=tf.data.AUTOTUNE)
        lengths, file_lines = [], []
        for k, (length, label, example_id) in enumerate(ds.as_numpy_iterator()):
            lengths.append(length)
            if k >= instruction.skip:
                shown = example_id.decode() if example_id else \
                    f"{posixpath.basename(f)}__{k}"  # tfds' own id of the example
                file_lines.append(f"{shown}\t{int(label)}")
        lengths = np.asarray(lengths, np.int64)
        skipped = int(np.sum(lengths[:instruction.skip] + records.RECORD_OVERHEAD))
        offsets, end = records.chunk_offsets(lengths[instruction.skip:], skipped)
        counts.append(len(file_lines))
        chunks.append(offsets)
        sizes.append(end)
        lines.extend(file_lines)
    report(f"indexed {len(files)} tfds files: {len(lines):,} examples in "
           f"{time.time() - start:.1f}s (no image decoded)")
    header = {"kind": "tfds", "version": records.INDEX_VERSION, "counts": counts,
              "chunk": records.CHUNK_RECORDS, "chunk_offsets": chunks, "sizes": sizes}
    return header, lines


def _tfds_reader(name, split, builder, skip_images, id_key, label_feature, names,
                 encoded_images) -> Source:
    """A tfds split read through tfds' reader (datasets not stored as
    TFRecord files of encoded images): a resumed run reads and drops the
    examples before its position."""
    import tensorflow_datasets as tfds
    read_config = tfds.ReadConfig(add_tfds_id=True)
    # One pass over ids and labels only (no image decoded).
    meta = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config,
                              decoders=skip_images or None).map(
        lambda x: (x[id_key] if id_key else x["tfds_id"],
                   x["label"] if label_feature is not None else tf.constant(-1, tf.int64)),
        num_parallel_calls=tf.data.AUTOTUNE)
    ids, labels = [], []
    for example_id, label in meta.as_numpy_iterator():
        ids.append(example_id.decode() if isinstance(example_id, bytes) else str(example_id))
        labels.append(int(label))
    raw = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)

    def numbered(indices, dataset):
        wanted = np.zeros(len(ids), bool)
        wanted[indices] = True
        keep = tf.constant(wanted)
        dataset = dataset.enumerate()
        if not wanted.all():
            dataset = dataset.filter(lambda i, x: tf.gather(keep, i))
        return dataset

    def label_of(x):
        return (tf.cast(x["label"], tf.int64) if label_feature is not None
                else tf.constant(-1, tf.int64))

    def make(indices):
        def convert(i, x):
            image = tf.image.convert_image_dtype(x["image"], tf.float32)
            if image.shape[-1] == 1:
                image = tf.image.grayscale_to_rgb(image)
            return {"image": image[..., :3], "label": label_of(x), "index": i}
        return numbered(indices, raw).map(convert, num_parallel_calls=tf.data.AUTOTUNE,
                                          deterministic=True)

    make_encoded = None
    if encoded_images:
        encoded = builder.as_dataset(split=split, shuffle_files=False,
                                     read_config=read_config, decoders=skip_images)

        def make_encoded(indices, shuffle_seed=None):
            del shuffle_seed  # read in the stored order (numbered by position)
            return numbered(indices, encoded).map(
                lambda i, x: {"encoded": x["image"], "label": label_of(x), "index": i},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return Source(name, split, np.asarray(ids), np.asarray(labels, np.int64),
                  len(names), names, make, _make_encoded=make_encoded,
                  robust=make_encoded is not None, location=name)


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
