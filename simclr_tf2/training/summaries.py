"""Reading back the scalar TensorBoard summaries a run wrote.

For plots in notebooks and benchmarks without a TensorBoard server:
`read_scalars(model_dir)["contrast_loss"]` -> [(step, value), ...].
"""
import glob
import os
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.util import event_pb2

from simclr_tf2.configs.fields import check_choice
from simclr_tf2.rundir import MONITOR_SUMMARIES, TRAIN_SUMMARIES

SUMMARY_DIRS = {"train": TRAIN_SUMMARIES, "monitor": MONITOR_SUMMARIES}

Scalars = Dict[str, List[Tuple[int, float]]]


def read_scalars(model_dir: str, split: str = "train") -> Scalars:
    """{tag: [(step, value), ...]} sorted by step, from the run's summaries of
    `split`: 'train' (the training loop) or 'monitor' (the kNN monitor).

    Every event file is read (a resumed run appends a new one); when a step
    was written twice (a run resumed from an older checkpoint), the later
    file wins. Raises FileNotFoundError when the run wrote no summaries.
    """
    check_choice("split", split, SUMMARY_DIRS)
    directory = os.path.join(model_dir, SUMMARY_DIRS[split])
    files = sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*")),
                   key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(
            f"no TensorBoard event files in {directory}: is {model_dir!r} a "
            f"training run's model_dir (summaries are written every "
            f"summary_interval steps)?")
    by_tag: Dict[str, Dict[int, float]] = {}
    for path in files:
        for record in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.HasField("tensor"):
                    array = tf.make_ndarray(value.tensor)
                    if array.ndim != 0 or not np.issubdtype(array.dtype, np.number):
                        continue  # images, text
                    number = float(array)
                elif value.HasField("simple_value"):
                    number = float(value.simple_value)
                else:
                    continue
                by_tag.setdefault(value.tag, {})[int(event.step)] = number
    return {tag: sorted(points.items()) for tag, points in by_tag.items()}
