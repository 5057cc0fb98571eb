"""The `Source` type: one split of a dataset, as pipelines read it."""
import dataclasses
import logging
from typing import Callable, List, Optional

import numpy as np
import tensorflow as tf

from simclr_tf2.data.decode import decode_image_data
from simclr_tf2.data.record_reader import RecordReader
from simclr_tf2.data.skips import SkipLog

log = logging.getLogger("simclr_tf2.data")


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
    # indices -> like `_make` (in the stored order), with 'encoded' (string
    # scalar) in place of 'image'.
    _make_encoded: Optional[Callable[[np.ndarray], tf.data.Dataset]] = None
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
    # reading what comes before (record_reader.RecordReader.stream): (indices,
    # seed, window, skip, known, repeat) -> (counter, encoded element).
    _stream: Optional[Callable[..., tf.data.Dataset]] = None
    # indices -> about how many bytes their encoded images take.
    nbytes: Optional[Callable[[np.ndarray], int]] = None
    # (limit, seed) -> a random subset that is cheap to read (whole chunks
    # of TFRecord files), where one picked example by example is not.
    sample: Optional[Callable[[int, int], np.ndarray]] = None

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

    def encoded_dataset(self, indices: Optional[np.ndarray] = None) -> tf.data.Dataset:
        """Like `dataset`, with the encoded image file under 'encoded'."""
        if self._make_encoded is None:
            raise ValueError(f"source {self.name!r} does not store encoded images")
        if indices is None:
            indices = np.arange(len(self))
        return self._make_encoded(np.asarray(indices, np.int64))

    def with_skip_log(self, directory: Optional[str],
                      report: Callable[[str], None] = log.warning) -> "Source":
        """This source with its skipped examples recorded in `directory`
        and told to `report`."""
        if not self.robust:
            return self
        describe = self.describe or (lambda i: "its image cannot be decoded")
        return dataclasses.replace(self, skip_log=SkipLog(
            directory, lambda i: (str(self.ids[i]), describe(i)), report))


def records_backed(name: str, split: str, ids, labels: np.ndarray, classes: List[str],
                   reader: RecordReader, location: str, problem: str) -> Source:
    """A source read by a `RecordReader` (shards, tfds); training reads
    `reader.stream`."""
    label_tensor = tf.constant(labels)

    def make_encoded(indices):
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
                  sample=reader.sample,
                  describe=lambda i: problem)
