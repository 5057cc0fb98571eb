"""Index files: what listing a folder or scanning TFRecord shards found,
kept so that restarts, later runs and other workers read it instead of
doing it again.

An index is one text file: a JSON header line, then one line per example.
A run keeps its indexes in `<model_dir>/data_index/` unless `index_dir`
names a shared place (e.g. beside the data). In a multi-worker run the
chief writes them and the other workers wait for them (up to
`CHIEF_WAIT_SECONDS`, then they list by themselves).
"""
import hashlib
import json
import logging
import os
import posixpath
import re
import time
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

import numpy as np
import tensorflow as tf

log = logging.getLogger("simclr_tf2.data")

CHIEF_WAIT_SECONDS = 900.0
POLL_SECONDS = 1.0
T = TypeVar("T")


def index_name(kind: str, location: str) -> str:
    """A file name for the index of `location` (a folder or file pattern)."""
    digest = hashlib.sha1(location.encode()).hexdigest()[:12]
    base = re.sub(r"[^\w.-]", "", posixpath.basename(location.rstrip("/"))) or "root"
    return f"{kind}-{base}-{digest}.index"


def label_runs(labels: np.ndarray) -> List[List[int]]:
    """[[label, count], ...]: `labels` as runs of equal values (an index
    stores labels in the canonical order, sorted by label: one run each)."""
    labels = np.asarray(labels, np.int64)
    if not len(labels):
        return []
    starts = np.flatnonzero(np.diff(labels)) + 1
    bounds = np.concatenate([[0], starts, [len(labels)]])
    return [[int(labels[a]), int(b - a)] for a, b in zip(bounds[:-1], bounds[1:])]


def unpack_labels(runs: List[List[int]]) -> np.ndarray:
    """The labels that `label_runs` packed."""
    if not runs:
        return np.zeros(0, np.int64)
    values, counts = np.asarray(runs, np.int64).T
    return np.repeat(values, counts)


def write_index(path: str, header: Dict, lines: List[str]) -> None:
    """Writes an index file atomically (a temporary file, then a rename)."""
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    tmp = f"{path}.tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(header, sort_keys=True) + "\n")
        f.write("\n".join(lines))
    tf.io.gfile.rename(tmp, path, overwrite=True)


def read_index(path: str) -> Optional[Tuple[Dict, List[str]]]:
    """(header, lines) of an index file, or None when there is none or it
    cannot be parsed."""
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    head, _, body = text.partition("\n")
    try:
        header = json.loads(head)
    except ValueError:
        log.warning("index %s cannot be parsed: it is rebuilt", path)
        return None
    return header, (body.split("\n") if body else [])


class IndexStore:
    """The directory where a run finds and keeps its indexes. Writes wait
    for `flush()` (the runner flushes once model_dir exists, so a data error
    found later leaves nothing behind); only the chief writes."""

    def __init__(self, directory: str, chief: bool = True,
                 report: Callable[[str], None] = log.info,
                 wait_seconds: float = CHIEF_WAIT_SECONDS):
        self.directory = directory
        self.chief = chief
        self.report = report
        self.wait_seconds = wait_seconds
        self._pending: Dict[str, Tuple[Dict, List[str]]] = {}

    def file(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def get(self, name: str, accept: Callable[[Dict, List[str]], Optional[T]]) -> Optional[T]:
        """`accept(header, lines)` of the stored index `name` (None when
        there is none, or `accept` refuses it: e.g. the folder changed).
        Workers other than the chief wait for the chief's index."""
        deadline = time.time() + (0 if self.chief else self.wait_seconds)
        said = False
        while True:
            stored = read_index(self.file(name))
            value = accept(*stored) if stored is not None else None
            if value is not None or time.time() >= deadline:
                return value
            if not said:
                self.report(f"waiting for the chief's index {self.file(name)}")
                said = True
            time.sleep(POLL_SECONDS)

    def put(self, name: str, header: Dict, lines: List[str]) -> None:
        if self.chief:
            self._pending[name] = (header, lines)

    def flush(self) -> List[str]:
        """Writes the pending indexes; returns their paths."""
        written = []
        for name, (header, lines) in self._pending.items():
            write_index(self.file(name), header, lines)
            written.append(self.file(name))
        self._pending.clear()
        return written
