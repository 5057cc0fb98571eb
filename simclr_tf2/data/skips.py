"""Images that fail to decode: skipped where the pipeline meets them,
counted exactly and named, and the run goes on.

Checking 1.28 million files before training costs a full decode of each
(about 1 ms, 20+ minutes per start), so files are not checked up front by
default. Instead the part of the pipeline that reads and decodes an image
runs so that its failure drops that example only, in one of two ways:

- training over shuffled indices (image folders): a parallel map followed
  by `ignore_errors`. Each element carries its position in the
  stream and the indices of the `MAX_CONSECUTIVE` examples before it, so a
  scan after the drop sees which examples are missing. `ignore_errors` would
  hide an error of anything before the map too, so this is used only where
  that is a stream of indices, which cannot fail.
- everything else (TFRecord shards and tfds, whose reading comes before;
  evaluation passes): each example is decoded in a one-element dataset of
  its own whose `ignore_errors` covers that decode only, then a stand-in
  flagged as failed; the first of the two is kept, so every input gives one
  output in order (a corrupt TFRecord file still stops the run). This costs
  about a fifth more CPU for 224 px pretraining views, 1 ms per image; the
  first way about a tenth (bench/RESULTS.md, "Data at scale").

A failed example is dropped (a training batch fills from the next examples)
or, in an evaluation pass, replaced by a padding example with label -1
(every replica still gets the same number of batches), and one empty
marker file is written for it, `<directory>/<index>`: shared by every
worker, kept across restarts, one per bad file however often it is met. The
host reads the markers (one listing per report) and names each file with
its reason. Examples marked before a run starts are left out of its stream
before the resume position is found, so a resumed run reads the same
examples as an uninterrupted one (which met them and dropped them). More
than `MAX_CONSECUTIVE` failures in a row stop the run: then the data or the
data settings are wrong, not a few files.
"""
import logging
import sys
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from simclr_tf2.errors import DataError

log = logging.getLogger("simclr_tf2.data")

MAX_CONSECUTIVE = 32
STOP_MESSAGE = "simclr_tf2: too many images in a row failed to decode"


class SkipLog:
    """The record of one source's skipped examples in `directory` (None:
    not recorded; each skip is printed on stderr instead). `describe(index)`
    gives (id, reason); `report` tells of each new one."""

    def __init__(self, directory: Optional[str],
                 describe: Callable[[int], Tuple[str, str]],
                 report: Callable[[str], None] = log.warning):
        self.directory = directory
        self.describe = describe
        self.report = report
        self.named: Dict[int, Tuple[str, str]] = {}
        self.known = np.asarray(self.marked(), np.int64)

    def marked(self) -> List[int]:
        """Indices with a marker (one listing call)."""
        if self.directory is None or not tf.io.gfile.isdir(self.directory):
            return []
        return sorted(int(name) for name in tf.io.gfile.listdir(self.directory)
                      if name.isdigit())

    def update(self) -> List[Tuple[str, str]]:
        """(id, reason) of the examples marked since this run started and
        not told of yet; each is reported once."""
        new = []
        known = set(self.known.tolist())
        for index in self.marked():
            if index not in self.named and index not in known:
                self.named[index] = self.describe(index)
                new.append(self.named[index])
                self.report("skipped %s: %s" % self.named[index])
        return new

    @property
    def count(self) -> int:
        """Examples skipped in this run and the runs it resumes."""
        return len(set(self.named) | set(self.known.tolist()))

    def as_dict(self) -> Dict[str, str]:
        """{id: reason} of every skipped example (those marked before this
        run started are described now: a read of each)."""
        self.update()
        for index in self.known.tolist():
            if index not in self.named:
                self.named[index] = self.describe(index)
        return {example_id: reason for example_id, reason in sorted(self.named.values())}


def known_mask(skip_log: Optional[SkipLog], size: int) -> Optional[np.ndarray]:
    """[size] bool, True for examples marked before this run; None if none are."""
    if skip_log is None or not len(skip_log.known):
        return None
    mask = np.zeros(size, bool)
    mask[skip_log.known[skip_log.known < size]] = True
    return mask


def _record(directory: Optional[str], index: tf.Tensor) -> None:
    """Writes the marker of a skipped example (prints it when there is no
    directory)."""
    if directory is None:
        tf.print("simclr_tf2: skipped example", index, "(its image does not decode)",
                 output_stream=sys.stderr)
    else:
        tf.io.write_file(tf.strings.join([directory, "/", tf.strings.as_string(index)]), "")


def _zeros(spec):
    shape = [d if d is not None else 0 for d in spec.shape.as_list()] \
        if spec.shape.rank is not None else []
    if spec.dtype == tf.string:
        return tf.fill(shape, "")
    return tf.zeros(shape, spec.dtype)


def _stopped_after(run: tf.Tensor) -> tf.Tensor:
    """`run` (failures in a row so far), asserted to be at most MAX_CONSECUTIVE."""
    check = tf.debugging.assert_less_equal(
        run, tf.constant(MAX_CONSECUTIVE, tf.int64),
        message=f"{STOP_MESSAGE} (more than {MAX_CONSECUTIVE})")
    with tf.control_dependencies([check]):
        return tf.identity(run)


def _record_all(directory: Optional[str], indices: tf.Tensor) -> tf.Tensor:
    """Writes the markers of `indices` (a loop that runs only for a gap)."""
    def body(i):
        _record(directory, indices[i])
        return i + 1
    return tf.while_loop(lambda i: i < tf.shape(indices)[0], body, [tf.constant(0)])[0]


def _dropped_in_place(ds, transform, index_of, directory, out_zeros):
    """A parallel map, then `ignore_errors`; the dropped examples are found
    from the gaps in the positions each element carries, with the indices of
    the MAX_CONSECUTIVE examples before it. Every MAX_CONSECUTIVE + 1
    examples come with a heartbeat (counter -1: no transform, `out_zeros` in
    its place), so a gap shows even when every example fails. Only for
    streams whose upstream cannot fail itself (shuffled indices):
    `ignore_errors` would hide its errors too. The checks run only where
    there is a gap (an assertion on every element costs about 30 us)."""
    counter_spec, example_spec = ds.element_spec
    beat = tf.data.Dataset.from_tensors(
        (tf.constant(-1, counter_spec.dtype), tf.nest.map_structure(_zeros, example_spec)))
    pattern = tf.constant([0] * (MAX_CONSECUTIVE + 1) + [1], tf.int64)
    ds = tf.data.Dataset.choose_from_datasets(
        [ds, beat.repeat()], tf.data.Dataset.from_tensor_slices(pattern).repeat(),
        stop_on_empty_dataset=True)

    def remember(state, element):
        position, recent = state
        counter, x = element
        index = tf.where(counter < 0, tf.constant(-1, tf.int64),
                         tf.cast(index_of(x), tf.int64))
        return ((position + 1, tf.concat([[index], recent[:-1]], 0)),
                (position, recent, counter, x))

    def attempt(position, recent, counter, x):
        beating = counter < 0
        return position, recent, beating, tf.cond(
            beating, lambda: out_zeros, lambda: transform(counter, x))

    def gaps(last, element):
        position, recent, beating, out = element
        gap = position - last - 1

        def missing():
            written = _record_all(directory, recent[:tf.minimum(gap, MAX_CONSECUTIVE)])
            with tf.control_dependencies([written]):
                return _stopped_after(gap)
        checked = tf.cond(gap > 0, missing, lambda: gap)
        with tf.control_dependencies([checked]):
            return tf.identity(position), (beating, out)

    def real(beating, out):
        return tf.logical_not(beating)

    def output(beating, out):
        return out

    start = (tf.constant(0, tf.int64), tf.fill([MAX_CONSECUTIVE], tf.constant(-1, tf.int64)))
    ds = ds.scan(start, remember).map(attempt, num_parallel_calls=tf.data.AUTOTUNE,
                                      deterministic=True)
    ds = ds.ignore_errors().scan(tf.constant(-1, tf.int64), gaps)
    return ds.filter(real).map(output)


def _replaced_in_turn(ds, transform, index_of, directory):
    """Each example transformed in a one-element dataset of its own (its
    `ignore_errors` covers that transform only), then a stand-in flagged as
    failed; the first is kept: (out, ok) in order, one per input."""
    def attempt(counter, x):
        index = tf.cast(index_of(x), tf.int64)
        done = tf.data.Dataset.from_tensors((counter, x)).map(
            lambda c, y: (index, transform(c, y), True))
        failed = tf.nest.map_structure(_zeros, done.element_spec[1])  # traced once
        return done.ignore_errors().concatenate(
            tf.data.Dataset.from_tensors((index, failed, False))).take(1)

    def guard(run, element):
        index, out, ok = element
        run = tf.where(ok, tf.constant(0, tf.int64), run + 1)

        def record():
            _record(directory, index)
            return tf.constant(False)
        recorded = tf.cond(ok, lambda: tf.constant(True), record)
        with tf.control_dependencies([recorded]):
            run = _stopped_after(run)
        return run, (out, tf.identity(ok))

    ds = ds.interleave(attempt, block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)
    return ds.scan(tf.constant(0, tf.int64), guard)


def guarded_map(ds: tf.data.Dataset, transform: Callable, index_of: Callable,
                skip_log: Optional[SkipLog], keep_failed: bool = False,
                out_zeros=None) -> tf.data.Dataset:
    """`ds.map(transform)` over elements (counter, x), in parallel and in
    order, where an element whose transform fails is recorded in `skip_log`
    (`index_of(x)`: its source index) and dropped; with `keep_failed`
    (finite streams: evaluation) the result is (out, ok) and a failed
    element stays, with ok False and zeros. With `out_zeros` (zeros of the
    transform's output; for training streams of shuffled indices only) the
    cheaper way of the module note is used."""
    directory = skip_log.directory if skip_log is not None else None
    if directory is not None:
        tf.io.gfile.makedirs(directory)
    if out_zeros is not None and not keep_failed:
        return _dropped_in_place(ds, transform, index_of, directory, out_zeros)
    ds = _replaced_in_turn(ds, transform, index_of, directory)
    if keep_failed:
        return ds

    def output(out, ok):
        return out

    def succeeded(out, ok):
        return ok
    return ds.filter(succeeded).map(output)


def stop_error(error: tf.errors.OpError, skip_log: Optional[SkipLog]) -> Optional[DataError]:
    """The DataError for the pipeline's stop on too many failures in a row,
    naming the files; None for any other error."""
    if STOP_MESSAGE not in (getattr(error, "message", "") or str(error)):
        return None
    named = skip_log.update() if skip_log is not None else []
    examples = "; ".join(f"{i}: {r}" for i, r in named[:3])
    return DataError(f"more than {MAX_CONSECUTIVE} images in a row failed to decode "
                     f"({examples or 'see the log'}): the data or the data settings are "
                     "wrong (an image folder of something else, a TFRecord schema that "
                     "does not match?)")
