"""Initialising a model from another run's checkpoint or an official SavedModel.

Fine-tuning starts from a pretraining checkpoint that holds more (the
projection layers past the selected one, the optimizer, the memory) and less
(a new supervised head) than the model being trained. Which checkpoint entry
belongs to which variable is TensorFlow's business: `tf.train.CheckpointView`
matches the checkpoint's object graph to the model's, the same matching
`tf.train.Checkpoint.read` restores with, so names with dots or slashes
need no escaping of our own.
"""
import logging
from typing import Dict, List

import tensorflow as tf
import tf_keras
from tensorflow.core.protobuf import trackable_object_graph_pb2

from simclr_tf2.configs.schema import check
from simclr_tf2.errors import RunError
from simclr_tf2.export.official import (OfficialImportError, import_official_variables,
                                        is_savedmodel_dir)
from simclr_tf2.rundir import resolve_checkpoint

log = logging.getLogger("simclr_tf2.train")


def _variable_keys(checkpoint: str, child: str) -> Dict[int, str]:
    """Node id -> checkpoint key of every variable below the root's `child`."""
    start = tf.train.CheckpointView(checkpoint).children(0).get(child)
    if start is None:
        return {}
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(checkpoint).get_tensor(
        "_CHECKPOINTABLE_OBJECT_GRAPH"))
    keys, queue, seen = {}, [start], {start}
    while queue:
        node = queue.pop()
        for attribute in graph.nodes[node].attributes:
            if attribute.name == "VARIABLE_VALUE":
                keys[node] = attribute.checkpoint_key
        for reference in graph.nodes[node].children:
            if reference.node_id not in seen:
                seen.add(reference.node_id)
                queue.append(reference.node_id)
    return keys


def init_from_checkpoint(model: tf_keras.Model, checkpoint: str) -> Dict[str, List[str]]:
    """Copies the model weights of `checkpoint` (prefix or run directory)
    into `model`, whose variables must exist (call it once first).

    Returns {'restored' (checkpoint keys), 'missing' (names of model variables
    not in the checkpoint, left as initialised), 'unused' (checkpoint model
    variables this model does not have, e.g. projection layers dropped for
    fine-tuning), 'mismatched' (always empty: a shape mismatch raises)}.
    """
    checkpoint = resolve_checkpoint(checkpoint)
    root = tf.train.Checkpoint(model=model)
    matched = tf.train.CheckpointView(checkpoint).match(root)
    keys = _variable_keys(checkpoint, "model")
    shapes = dict(tf.train.list_variables(checkpoint))
    report = {"restored": [], "missing": [], "unused": [], "mismatched": []}
    matched_ids = set()
    for node, key in sorted(keys.items(), key=lambda item: item[1]):
        variable = matched.get(node)
        if variable is None:
            report["unused"].append(key)
            continue
        matched_ids.add(id(variable))
        if list(shapes[key]) != variable.shape.as_list():
            report["mismatched"].append(f"{key} {shapes[key]} vs {variable.shape}")
        else:
            report["restored"].append(key)
    report["missing"] = [v.name for v in model.weights if id(v) not in matched_ids]
    check(report["restored"], f"checkpoint {checkpoint!r} has none of this model's "
          "variables: is it a simclr_tf2 checkpoint of the same architecture?")
    check(not report["mismatched"], "checkpoint variables with a different shape "
          f"(different architecture?): {report['mismatched'][:5]}")
    root.read(checkpoint).expect_partial()
    log.info("initialised from %s: %d variables restored, %d not in the checkpoint "
             "(kept as initialised)%s, %d checkpoint variables unused%s", checkpoint,
             len(report["restored"]), len(report["missing"]),
             f" e.g. {report['missing'][:3]}" if report["missing"] else "",
             len(report["unused"]),
             f" e.g. {report['unused'][:3]}" if report["unused"] else "")
    return report


def init_model(model: tf_keras.Model, source: str):
    """Initialises `model` from a simclr_tf2 checkpoint (prefix or directory)
    or from an official SimCLRv2 TF2 SavedModel directory."""
    if is_savedmodel_dir(source):
        try:
            return import_official_variables(model, source)
        except OfficialImportError as error:
            raise RunError(f"--checkpoint={source}: {error}") from None
    return init_from_checkpoint(model, source)


def summary(report) -> str:
    """One line on what an initialisation restored."""
    if hasattr(report, "summary"):  # the official importer's report
        return report.summary()
    return (f"{len(report['restored'])} variables restored, {len(report['missing'])} "
            f"not in the checkpoint, {len(report['unused'])} checkpoint variables unused")
