"""Reading a run's scalar summaries back (notebooks, benchmarks)."""
import os
import time

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.training.summaries import read_scalars


def _write(directory, points, image=False):
    writer = tf.summary.create_file_writer(directory)
    with writer.as_default():
        for step, values in points:
            for tag, value in values.items():
                tf.summary.scalar(tag, value, step=step)
            if image:
                tf.summary.image("augmented/view1", tf.zeros([1, 4, 4, 3]), step=step)
    writer.close()


def test_scalars_come_back_per_tag_sorted_and_a_resumed_run_overrides(tmp_path):
    directory = os.path.join(str(tmp_path), "summaries", "train")
    _write(directory, [(10, {"loss": 3.0, "acc": 0.1}), (20, {"loss": 2.0, "acc": 0.2})],
           image=True)
    time.sleep(1.1)  # event files are named by second
    _write(directory, [(20, {"loss": 1.5}), (30, {"loss": 1.0})])
    scalars = read_scalars(str(tmp_path))
    assert set(scalars) == {"loss", "acc"}  # the image summary is not a scalar
    steps, values = zip(*scalars["loss"])
    assert steps == (10, 20, 30)
    np.testing.assert_allclose(values, [3.0, 1.5, 1.0])
    assert scalars["acc"] == [(10, pytest.approx(0.1)), (20, pytest.approx(0.2))]


def test_a_directory_without_summaries_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_scalars(str(tmp_path))
