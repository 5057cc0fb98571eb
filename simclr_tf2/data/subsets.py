"""Labelled subsets: deterministic, stratified label fractions or ID lists.

The examples outside the subset stay in the source: pretraining and
distillation read every training image, fine-tuning reads only the subset.
"""
import os
import posixpath
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from simclr_tf2.data.sources import Source
from simclr_tf2.errors import DataError


def stratified_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of round(fraction * n_c) seeded examples of every class c.

    Raises DataError when a class would get no example (the fraction is too
    small for that class) or when there are no labels.
    """
    labels = np.asarray(labels)
    if not 0 < fraction <= 1:
        raise DataError(f"label_fraction must be in (0, 1]. Received: {fraction!r}")
    classes = np.unique(labels[labels >= 0])
    if len(classes) == 0:
        raise DataError("a label fraction needs labelled data; this source has none")
    rng = np.random.RandomState(seed)
    chosen = []
    # Each class's examples in increasing order, from one stable sort: O(N log N)
    # rather than a pass over all N per class (1000 classes at ImageNet size).
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.append(classes, classes[-1] + 1))
    for label, low, high in zip(classes, bounds[:-1], bounds[1:]):
        members = order[low:high]
        take = int(round(fraction * len(members)))
        if take == 0:
            raise DataError(
                f"label_fraction={fraction} leaves class {label} ({len(members)} "
                f"examples) without a labelled example: use a fraction of at least "
                f"{0.5 / len(members):.4g} or an ID list file")
        chosen.append(members[rng.permutation(len(members))[:take]])
    return np.sort(np.concatenate(chosen))


def subset_from_ids(source: Source, ids_file: str) -> np.ndarray:
    """Sorted indices of the examples whose ids are listed in `ids_file` (one per
    line). An id that is not an example's id matches the example whose file
    name it is (the authors' ImageNet subsets list n01440764_10026.JPEG; a
    folder's ids are n01440764/n01440764_10026.JPEG), unless two examples
    have that file name."""
    if not tf.io.gfile.exists(ids_file) or tf.io.gfile.isdir(ids_file):
        raise DataError(f"label_ids_file {ids_file!r} does not exist")
    with tf.io.gfile.GFile(ids_file) as f:
        wanted = [line.strip() for line in f if line.strip()]
    position = {example_id: i for i, example_id in enumerate(source.ids)}
    missing = [w for w in wanted if w not in position]
    if missing:
        by_name: Dict[str, List[int]] = {}
        for i, example_id in enumerate(source.ids):
            by_name.setdefault(posixpath.basename(example_id), []).append(i)
        twice = [w for w in missing if len(by_name.get(w, ())) > 1]
        if twice:
            raise DataError(
                f"label_ids_file {ids_file!r} names {twice[0]!r}, a file name that "
                f"{len(by_name[twice[0]])} examples share "
                f"({', '.join(source.ids[i] for i in by_name[twice[0]][:2])}): list "
                "their full ids (paths relative to the folder) instead")
        for w in missing:
            if w in by_name:
                position[w] = by_name[w][0]
        missing = [w for w in missing if w not in position]
    if missing:
        raise DataError(f"{len(missing)} id(s) in {ids_file!r} are not in the "
                        f"{source.name} {source.split} split, e.g. {missing[:3]}")
    return np.unique(np.asarray([position[w] for w in wanted], np.int64))


def labelled_subset(source: Source, fraction: float = 1.0,
                    ids_file: Optional[str] = None, seed: int = 0,
                    write_to: Optional[str] = None) -> np.ndarray:
    """Indices of the labelled subset: from `ids_file`, else a stratified
    `fraction` (all labelled examples when 1). With `write_to`, the chosen ids
    are written there, one per line, so the run can be reproduced with
    label_ids_file."""
    if ids_file:
        indices = subset_from_ids(source, ids_file)
    elif fraction >= 1.0:
        indices = np.flatnonzero(source.labels >= 0)
        if len(indices) == 0:
            raise DataError(f"{source.name} {source.split} has no labels; supervised "
                            "modes need class folders or a labelled dataset")
    else:
        indices = stratified_subset(source.labels, fraction, seed)
    if write_to:
        write_ids(write_to, source, indices)
    return indices


def row_lookup(indices: np.ndarray):
    """A function: examples (each one of `indices`) -> their rows in
    `indices`, for tables with one row per example of a subset."""
    indices = np.asarray(indices)
    order = np.argsort(indices, kind="stable")
    ordered = indices[order]
    return lambda examples: order[np.searchsorted(ordered, examples)]


def write_ids(path: str, source: Source, indices: np.ndarray) -> None:
    """The ids of the examples `indices`, one per line, written atomically
    to `path` on any TensorFlow filesystem (label_ids_file reads them)."""
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write("".join(f"{source.ids[i]}\n" for i in indices))
    tf.io.gfile.rename(tmp, path, overwrite=True)
