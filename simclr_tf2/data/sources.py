"""Where images come from: built-in arrays, image folders, tfds datasets.

A `Source` is one split: per-example ids and labels as NumPy arrays (for
subsets and reports) and a `dataset(indices)` that yields
{'image': float32 [H, W, 3] in [0, 1], 'label': int64, 'index': int64} for
the chosen examples. Labels are -1 where there are none (unlabeled folders).
Image folders are read through `tf.io.gfile`, so any TensorFlow filesystem
works (local, gs://, ram://, ...).
"""
import dataclasses
import io
import logging
import os
import posixpath
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from simclr_tf2.configs.schema import DataConfig
from simclr_tf2.data.builtin import BUILTIN_DATASETS, load_builtin

log = logging.getLogger("simclr_tf2.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# File signatures of the formats tf.io.decode_image reads.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


class DataError(ValueError):
    """Bad input data; the message names the file or setting and the fix."""


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
    # Sequential sources that store encoded images (tfds): like `_make`, with
    # 'encoded' (string scalar) in place of 'image'.
    _make_encoded: Optional[Callable[[np.ndarray], tf.data.Dataset]] = None

    def __len__(self):
        return len(self.ids)

    def dataset(self, indices: Optional[np.ndarray] = None) -> tf.data.Dataset:
        """Examples at `indices` (all by default), in index order."""
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
def _problem(path: str, verify: bool) -> Optional[str]:
    """None if `path` is a readable image (fully decoded when `verify`),
    else the reason to skip it."""
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read() if verify else f.read(8)
    if not any(data.startswith(m) for m in _MAGIC):
        return "not an image (unknown file signature)"
    if not verify:
        return None
    from PIL import Image  # pillow ships with matplotlib, a tf-models dependency
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.size[0] < 1 or image.size[1] < 1:
                return "has no pixels"
    except Exception as error:  # noqa: BLE001 - any decoder failure means "corrupt"
        return f"cannot be decoded ({type(error).__name__}: {error})"
    return None


def _join(*parts: str) -> str:
    """Path join that keeps a filesystem scheme (gs://, ram://) intact."""
    return posixpath.join(*parts) if "://" in parts[0] else os.path.join(*parts)


def _visible(names) -> List[str]:
    """Listing entries without hidden ones; directory marks (gs: 'a/') dropped."""
    return sorted(n.rstrip("/") for n in names if not n.startswith("."))


def scan_image_folder(root: str, labelled: bool, verify: bool = True
                      ) -> Tuple[List[str], List[int], List[str], Dict[str, str]]:
    """Lists the images under `root` (any TensorFlow filesystem).

    labelled=True: one sub-folder per class (sorted names = class ids), images
    anywhere below it. labelled=False: every image in the tree, label -1.
    Non-image files and (with verify) files that do not decode are skipped and
    returned in `skipped` {relative path: reason}.
    Returns (relative paths, labels, class names, skipped).
    """
    if not tf.io.gfile.isdir(root):
        raise DataError(f"image folder {root!r} does not exist or is not a "
                        "directory: set data_dir to a folder of images")
    if labelled:
        classes = [d for d in _visible(tf.io.gfile.listdir(root))
                   if tf.io.gfile.isdir(_join(root, d))]
        if not classes:
            raise DataError(f"image folder {root!r} has no class sub-folders: put "
                            "each class's images in root/<class name>/ (or use it "
                            "unlabeled, for pretraining only)")
        groups = [(c, c, label) for label, c in enumerate(classes)]
    else:
        classes = []
        groups = [("", "", -1)]
    paths, labels, skipped = [], [], {}
    empty_classes = []
    for class_name, relative, label in groups:
        found = 0
        folder = _join(root, relative) if relative else root
        for directory, subdirs, files in tf.io.gfile.walk(folder):
            subdirs[:] = _visible(subdirs)
            below = directory[len(root):].strip("/")
            for file_name in _visible(files):
                rel = posixpath.join(below, file_name) if below else file_name
                if not file_name.lower().endswith(IMAGE_EXTENSIONS):
                    skipped[rel] = "not an image file name"
                    continue
                reason = _problem(_join(directory, file_name), verify)
                if reason:
                    skipped[rel] = reason
                    continue
                paths.append(rel)
                labels.append(label)
                found += 1
        if labelled and found == 0:
            empty_classes.append(class_name)
    if empty_classes:
        raise DataError(f"class folder(s) {empty_classes} under {root!r} contain no "
                        "readable images: add images or remove the folder(s)")
    if not paths:
        raise DataError(f"no readable images found under {root!r} (extensions "
                        f"{list(IMAGE_EXTENSIONS)}; {len(skipped)} file(s) skipped)")
    if skipped:
        reasons: Dict[str, int] = {}
        for reason in skipped.values():
            key = reason.split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
        examples = ", ".join(list(skipped)[:3])
        log.warning("image folder %s: skipped %d file(s): %s (e.g. %s)", root,
                    len(skipped), reasons, examples)
    return paths, labels, classes, skipped


def decode_image_data(data: tf.Tensor) -> tf.Tensor:
    """Encoded image -> float32 RGB [H, W, 3] in [0, 1]: grey, RGBA, palette
    and 16-bit images are converted (alpha dropped); animated GIFs give their
    first frame."""
    image = tf.io.decode_image(data, channels=3, dtype=tf.float32,
                               expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def decode_image_file(path: tf.Tensor) -> tf.Tensor:
    """decode_image_data of the file at `path`."""
    return decode_image_data(tf.io.read_file(path))


def folder_source(root: str, split: str, labelled: bool, verify: bool = True) -> Source:
    """Images under root/<split> when that folder exists, else under root."""
    folder = _join(root, split) if split and tf.io.gfile.isdir(_join(root, split)) else root
    paths, labels, classes, _ = scan_image_folder(folder, labelled, verify)
    full = tf.constant([_join(folder, p) for p in paths])
    label_array = np.asarray(labels, np.int64)
    label_tensor = tf.constant(label_array)

    def make(indices):
        return tf.data.Dataset.from_tensor_slices(indices).map(
            lambda i: {"image": decode_image_file(tf.gather(full, i)),
                       "label": tf.gather(label_tensor, i), "index": i},
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return Source("folder", split, np.asarray(paths), label_array, len(classes),
                  classes, make, load=lambda i: decode_image_file(tf.gather(full, i)),
                  load_encoded=lambda i: tf.io.read_file(tf.gather(full, i)))


# -------------------------------------------------------------------- tfds
def tfds_source(name: str, split: str, data_dir: Optional[str],
                download: bool = False) -> Source:
    """A tensorflow-datasets split. Nothing is downloaded unless `download`."""
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # noqa: BLE001 - tfds raises many types here
        raise DataError(f"tfds dataset {name!r} is unknown: {error}") from None
    if download:
        builder.download_and_prepare()
    elif not builder.is_prepared():
        raise DataError(
            f"tfds dataset {name!r} is not prepared in data_dir={data_dir!r}: prepare "
            "it there first (tfds build / manual download for imagenet2012), or "
            "set the data config's tfds_download=True to let tfds fetch it")
    info = builder.info
    label_feature = info.features["label"] if "label" in info.features else None
    num_classes = label_feature.num_classes if label_feature is not None else 0
    id_key = next((k for k in ("file_name", "id", "image/filename")
                   if k in info.features), None)
    try:
        raw = builder.as_dataset(split=split, shuffle_files=False,
                                 read_config=tfds.ReadConfig(add_tfds_id=True))
    except (ValueError, KeyError, AssertionError) as error:
        raise DataError(f"tfds dataset {name!r} cannot read split {split!r} "
                        f"(splits: {sorted(info.splits)}): {error}") from None
    # One pass over ids and labels only (images are not decoded).
    meta = raw.map(lambda x: (x[id_key] if id_key else x["tfds_id"],
                              x["label"] if label_feature is not None
                              else tf.constant(-1, tf.int64)),
                   num_parallel_calls=tf.data.AUTOTUNE)
    ids, labels = [], []
    for example_id, label in meta.as_numpy_iterator():
        ids.append(example_id.decode() if isinstance(example_id, bytes) else str(example_id))
        labels.append(int(label))

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
    image_feature = info.features["image"] if "image" in info.features else None
    if (isinstance(image_feature, tfds.features.Image)
            and image_feature.np_dtype == np.uint8):
        # tfds stores images as PNG or JPEG files: read them undecoded, so
        # training crops decode only what they use (decode.py).
        encoded = builder.as_dataset(
            split=split, shuffle_files=False,
            read_config=tfds.ReadConfig(add_tfds_id=True),
            decoders={"image": tfds.decode.SkipDecoding()})

        def make_encoded(indices):
            return numbered(indices, encoded).map(
                lambda i, x: {"encoded": x["image"], "label": label_of(x), "index": i},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    names = list(label_feature.names) if label_feature is not None else []
    return Source(name, split, np.asarray(ids), np.asarray(labels, np.int64),
                  num_classes, names, make, _make_encoded=make_encoded)


def make_source(config: DataConfig, split: str, labelled: bool = True) -> Source:
    """The source `config.dataset` names: a built-in name, 'folder' or tfds."""
    if config.dataset in BUILTIN_DATASETS:
        return builtin_source(config.dataset, split, config.image_size)
    if config.dataset == "folder":
        return folder_source(config.data_dir, split, labelled, config.verify_images)
    return tfds_source(config.dataset, split, config.data_dir, config.tfds_download)
