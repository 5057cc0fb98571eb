"""tensorflow-datasets splits as sources (see `tfds_source`)."""
import logging
import os
import posixpath
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from simclr_tf2.data import records
from simclr_tf2.data.index import IndexStore, index_name
from simclr_tf2.data.record_reader import RecordReader
from simclr_tf2.data.source_base import Source, records_backed
from simclr_tf2.errors import DataError

log = logging.getLogger("simclr_tf2.data")


def tfds_source(name: str, split: str, data_dir: Optional[str],
                download: bool = False, store: Optional[IndexStore] = None) -> Source:
    """A tensorflow-datasets split. Nothing is downloaded unless `download`.

    Datasets that tfds stores as TFRecord files of encoded images (most
    image datasets, imagenet2012 among them) are read like our shards: their
    ids and labels come from one pass that decodes no image, kept in
    `store` for restarts and later runs, and the records are read by chunks
    from byte offsets (record_reader.RecordReader), so a subset reads only its
    chunks and a resumed run starts where it stopped without reading the
    passes before. Other datasets are read through tfds' own reader."""
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (ValueError, AssertionError) as error:  # unknown name, config or version
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
    """A tfds split stored as TFRecord files, read by record_reader.RecordReader."""
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

    reader = RecordReader(files, header["counts"], np.arange(len(ids)), parse,
                          header["chunk_offsets"], header["sizes"], header["chunk"])
    return records_backed(name, split, ids, labels, names, reader, name,
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

        def make_encoded(indices):  # in the stored order (numbered by position)
            return numbered(indices, encoded).map(
                lambda i, x: {"encoded": x["image"], "label": label_of(x), "index": i},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return Source(name, split, np.asarray(ids), np.asarray(labels, np.int64),
                  len(names), names, make, _make_encoded=make_encoded,
                  robust=make_encoded is not None, location=name)
