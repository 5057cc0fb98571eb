"""Image folders listed once: one listing call per directory, in parallel,
with progress, kept in an index file that restarts, later runs and other
workers read instead of listing again.

Why it is built this way: ImageNet's training split is 1.28 million files
in 1000 class folders. Listing it costs one call per directory (on a bucket,
one request per 1000 names); a stat, open or decode per file would cost
1.28 million calls, hours on a bucket. Files are told from folders without
a call per file: by the entry type the listing itself returns (local disks:
`os.scandir`; buckets mark folders with a trailing '/'), else by an image
file name; only other names cost an `isdir` call. Nothing is opened or
decoded here: a file that does not decode is skipped where training meets
it (skips.py), or up front by `verify_files`.
"""
import concurrent.futures
import dataclasses
import logging
import os
import posixpath
import re
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from simclr_tf2.data.index import label_runs, unpack_labels
from simclr_tf2.errors import DataError

log = logging.getLogger("simclr_tf2.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Directories listed at once: listing calls wait on the filesystem (on a
# bucket, tens of milliseconds each), not on the CPU.
LISTING_THREADS = 32
PROGRESS_SECONDS = 10.0


def is_local(path: str) -> bool:
    return "://" not in path


def join(*parts: str) -> str:
    """Path join that keeps a filesystem scheme (gs://, ram://) intact."""
    return posixpath.join(*parts) if not is_local(parts[0]) else os.path.join(*parts)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclasses.dataclass
class Listing:
    """The images of one folder. `paths` are relative ('/'-separated), in
    the canonical order: by label, then path. Images in a top-level
    sub-folder (a class; `classes` sorted by name) have its label, images
    beside those sub-folders -1 (they come first). `skipped` {path: reason}
    names files left out; `directories` {relative dir: modification time in
    ns} is the fingerprint of a local folder (None elsewhere: buckets have
    no directory times); `verified`: every file was decoded once."""
    root: str
    paths: List[str]
    labels: np.ndarray
    classes: List[str]
    skipped: Dict[str, str]
    directories: Optional[Dict[str, int]]
    verified: bool = False


def list_directory(directory: str) -> Tuple[List[str], List[str], List[str], Optional[int]]:
    """(sub-directories, image files, other files, modification time) of one
    directory from one listing call; hidden entries are left out."""
    subdirs, images, others = [], [], []
    if is_local(directory):
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    subdirs.append(entry.name)
                else:
                    (images if is_image_name(entry.name) else others).append(entry.name)
        return subdirs, images, others, os.stat(directory).st_mtime_ns
    for name in tf.io.gfile.listdir(directory):
        if name.startswith("."):
            continue
        if name.endswith("/"):
            subdirs.append(name.rstrip("/"))
        elif is_image_name(name):
            images.append(name)
        elif tf.io.gfile.isdir(join(directory, name)):
            subdirs.append(name)
        else:
            others.append(name)
    return subdirs, images, others, None


def _walk(root: str, report: Callable[[str], None]
          ) -> Dict[str, Tuple[List[str], List[str], Optional[int]]]:
    """{relative directory ('' = root): (image files, other files, mtime)}
    for every directory below `root`, listed in parallel."""
    tree = {}
    start = last = time.time()
    images = 0
    with concurrent.futures.ThreadPoolExecutor(LISTING_THREADS) as pool:
        pending = {pool.submit(list_directory, root): ""}
        while pending:
            done, _ = concurrent.futures.wait(
                pending, timeout=PROGRESS_SECONDS,
                return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                relative = pending.pop(future)
                try:
                    subdirs, files, others, mtime = future.result()
                except (OSError, tf.errors.OpError) as error:
                    raise DataError(f"cannot list {join(root, relative)!r} "
                                    f"({type(error).__name__}: {error})") from None
                tree[relative] = (files, others, mtime)
                images += len(files)
                for name in subdirs:
                    child = f"{relative}/{name}" if relative else name
                    pending[pool.submit(list_directory, join(root, child))] = child
            if time.time() - last >= PROGRESS_SECONDS:
                last = time.time()
                report(f"listing {root}: {len(tree)} folders, {images:,} images so far "
                       f"({last - start:.0f}s)")
    return tree


def list_folder(root: str, report: Callable[[str], None] = log.info) -> Listing:
    """Lists every image under `root` (any TensorFlow filesystem). Images
    in a top-level sub-folder get that folder's label (sub-folders sorted by
    name), images beside them label -1; `labelled_view` turns this into
    class folders or an unlabeled tree. Files without an image name are
    skipped and named in `skipped`."""
    if not tf.io.gfile.isdir(root):
        raise DataError(f"image folder {root!r} does not exist or is not a "
                        "directory: set data_dir to a folder of images")
    start = time.time()
    tree = _walk(root, report)
    classes = sorted(d for d in tree if d and "/" not in d)
    label_of = {c: label for label, c in enumerate(classes)}
    skipped = {}
    groups: Dict[int, List[str]] = {label: [] for label in range(-1, len(classes))}
    for relative, (files, others, _) in tree.items():
        label = label_of[relative.split("/", 1)[0]] if relative else -1
        for name in others:
            skipped[f"{relative}/{name}" if relative else name] = "not an image file name"
        for name in files:
            path = f"{relative}/{name}" if relative else name
            if "\n" in path:
                skipped[path] = "its name has a line break"
            else:
                groups[label].append(path)
    paths, labels = [], []
    for label, group in groups.items():
        paths.extend(sorted(group))
        labels.extend([label] * len(group))
    if not paths:
        raise DataError(f"no images found under {root!r} (extensions "
                        f"{list(IMAGE_EXTENSIONS)}; {len(skipped)} other file(s))")
    directories = None
    if is_local(root):
        directories = {relative: mtime for relative, (_, _, mtime) in tree.items()}
    report(f"listed {root}: {len(paths):,} images, {len(tree)} folders, in "
           f"{time.time() - start:.1f}s"
           + (f"; {len(skipped)} other file(s) left out" if skipped else ""))
    return Listing(root, paths, np.asarray(labels, np.int64), classes, skipped, directories)


def labelled_view(listing: Listing, labelled: Optional[bool]
                  ) -> Tuple[List[str], np.ndarray, List[str], Dict[str, str]]:
    """(paths, labels, classes, skipped) of a listing read as class folders
    (labelled=True: top-level sub-folders are the classes; images beside
    them are skipped), as an unlabeled tree (False: every image, label -1,
    sorted by path), or as the layout says (None: class folders when there
    are sub-folders and no image beside them)."""
    has_loose = bool(len(listing.labels)) and listing.labels[0] == -1
    if labelled is None:
        labelled = bool(listing.classes) and not has_loose
    skipped = dict(listing.skipped)
    if not labelled:
        order = sorted(range(len(listing.paths)), key=listing.paths.__getitem__)
        return ([listing.paths[i] for i in order],
                np.full(len(order), -1, np.int64), [], skipped)
    if not listing.classes:
        raise DataError(f"image folder {listing.root!r} has no class sub-folders: put "
                        "each class's images in root/<class name>/ (or use it "
                        "unlabeled, for pretraining only)")
    loose = int((listing.labels < 0).sum())
    for path in listing.paths[:loose]:
        skipped[path] = "outside the class folders"
    counts = np.bincount(listing.labels[loose:], minlength=len(listing.classes))
    empty = [c for c, n in zip(listing.classes, counts) if n == 0]
    if empty:
        raise DataError(f"class folder(s) {empty} under {listing.root!r} contain no "
                        "images: add images or remove the folder(s)")
    return listing.paths[loose:], listing.labels[loose:], list(listing.classes), skipped


def pack(listing: Listing) -> Tuple[Dict, List[str]]:
    """The index file's (header, lines) of a listing."""
    header = {"kind": "folder", "version": 1, "root": listing.root,
              "classes": listing.classes, "skipped": listing.skipped,
              "label_runs": label_runs(listing.labels),
              "directories": listing.directories, "verified": listing.verified}
    return header, listing.paths


def unpack(header: Dict, lines: List[str]) -> Optional[Listing]:
    """The listing in an index file (None if it is not a folder index)."""
    if header.get("kind") != "folder" or header.get("version") != 1:
        return None
    labels = unpack_labels(header["label_runs"])
    if len(labels) != len(lines):
        return None
    return Listing(header["root"], lines, labels, header["classes"], header["skipped"],
                   header["directories"], header["verified"])


def folder_changed(listing: Listing) -> bool:
    """Whether a local folder changed since `listing` (a directory added,
    removed or with entries added, removed or renamed: its modification time
    moves); one stat per directory. Folders elsewhere cannot tell (buckets
    have no directory times): their index is trusted."""
    if listing.directories is None:
        return False
    for relative, mtime in listing.directories.items():
        try:
            now = os.stat(join(listing.root, relative) if relative else listing.root)
        except OSError:
            return True
        if now.st_mtime_ns != mtime:
            return True
    return False


def image_problem(data: bytes) -> Optional[str]:
    """None if the encoded image decodes, else why not (TensorFlow's decoder,
    the one training uses)."""
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.OpError, ValueError) as error:
        message = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "",
                         getattr(error, "message", str(error))).strip().splitlines()
        return f"cannot be decoded ({message[0] if message else type(error).__name__})"
    return None


def file_problem(path: str) -> str:
    """Why the image file at `path` could not be used, for reports."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except (tf.errors.OpError, OSError) as error:
        return f"cannot be read ({type(error).__name__})"
    return image_problem(data) or ("decodes whole, but a crop of it did not (corrupt "
                                   "or truncated data)")


def verify_files(listing: Listing, report: Callable[[str], None] = log.info) -> Listing:
    """`listing` without the files that do not decode (whole, with the
    decoder training uses), which move to `skipped` with the reason. Every
    file is read and decoded once, in parallel, with a progress line."""
    full = tf.constant([join(listing.root, p) for p in listing.paths])

    def decodes(i):
        image = tf.io.decode_image(tf.io.read_file(full[i]), channels=3,
                                   expand_animations=False)
        return i, tf.shape(image)[0]

    ds = tf.data.Dataset.range(len(listing.paths)).map(
        decodes, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    good = np.zeros(len(listing.paths), bool)
    start = last = time.time()
    for indices, _ in ds.ignore_errors().batch(256).prefetch(2):
        good[indices.numpy()] = True
        if time.time() - last >= PROGRESS_SECONDS:
            last = time.time()
            done = int(good.sum())
            report(f"verifying {listing.root}: {done:,}/{len(good):,} images decoded "
                   f"({last - start:.0f}s)")
    skipped = dict(listing.skipped)
    for i in np.flatnonzero(~good):
        skipped[listing.paths[i]] = file_problem(join(listing.root, listing.paths[i]))
    paths = [p for p, ok in zip(listing.paths, good) if ok]
    labels = listing.labels[good]
    if not paths:
        raise DataError(f"no image under {listing.root!r} decodes: "
                        f"{dict(list(skipped.items())[:3])}")
    report(f"verified {listing.root}: {len(paths):,} images decode, "
           f"{int((~good).sum())} do not ({time.time() - start:.1f}s)")
    return dataclasses.replace(listing, paths=paths, labels=labels, skipped=skipped,
                               verified=True)
