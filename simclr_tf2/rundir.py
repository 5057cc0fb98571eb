"""A run directory (`model_dir`): what a run writes there, and reading it back.

    <model_dir>/
      config.json              experiment + run configs, command, accepted changes
      checkpoint, ckpt-<step>.*  tf.train.CheckpointManager's checkpoints; the
                               suffix is the training step
      labelled_ids.txt         the labelled subset of a supervised run (one id per line)
      data_index/              indexes of the image folders and TFRecord shards read
                               (unless index_dir puts them elsewhere)
      skipped/<split>/<index>  one empty file per image that failed to decode
      result.json              the last evaluation (eval, train_then_eval)
      monitor.json             the kNN monitor's reports (pretraining)
      summaries/train, summaries/monitor   TensorBoard event files
      <export_dir>/<step>/head_<k>         hub exports (export_dir 'hub' by default)

Every path goes through tf.io.gfile, so a model_dir may be in a bucket
(gs://...). This is the only module that knows these names; the runner, the
export, the distillation teacher and evaluation read runs through it.
"""
import dataclasses
import json
import os
import re
from typing import Any, Dict, Optional

import tensorflow as tf

from simclr_tf2.configs.schema import ExperimentConfig
from simclr_tf2.errors import RunError
from simclr_tf2.models.simclr_model import SimCLRModel
from simclr_tf2.tasks import recorded_mode, task_for

CONFIG_FILE = "config.json"
RESULT_FILE = "result.json"
SUBSET_FILE = "labelled_ids.txt"
MONITOR_FILE = "monitor.json"
INDEX_DIR = "data_index"
SKIPPED_DIR = "skipped"
TEACHER_LOGITS = "teacher_logits.npy"  # --distill_precompute's table, kept for restarts
TRAIN_SUMMARIES = os.path.join("summaries", "train")
MONITOR_SUMMARIES = os.path.join("summaries", "monitor")


def path(model_dir: str, name: str) -> str:
    return os.path.join(model_dir, name)


def write_json(file_path: str, values: Any) -> None:
    """Writes `values` as JSON atomically (a temporary file, then a rename)."""
    tmp = file_path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(values, indent=2, sort_keys=True, default=str))
    tf.io.gfile.rename(tmp, file_path, overwrite=True)


def read_json(file_path: str) -> Optional[Any]:
    """The parsed JSON file, or None when it does not exist."""
    if not tf.io.gfile.exists(file_path):
        return None
    with tf.io.gfile.GFile(file_path) as f:
        return json.load(f)


def read_record(model_dir: str) -> Optional[Dict[str, Any]]:
    """The run's config.json ({'experiment', 'run', 'command', ...}) or None."""
    return read_json(path(model_dir, CONFIG_FILE))


def read_experiment(model_dir: str) -> ExperimentConfig:
    """The ExperimentConfig a run was trained with; RunError if there is none."""
    record = read_record(model_dir)
    if record is None:
        raise RunError(f"{path(model_dir, CONFIG_FILE)} not found: {model_dir!r} is not a "
                       "run directory written by simclr_tf2.train")
    return ExperimentConfig.from_dict(record["experiment"])


def write_record(model_dir: str, config: ExperimentConfig, run: Dict[str, Any],
                 command: str, changes=()) -> None:
    """Writes config.json; `changes` (accepted setting changes) are appended
    to the ones recorded before."""
    previous = read_record(model_dir) or {}
    write_json(path(model_dir, CONFIG_FILE),
               {"experiment": config.to_dict(), "run": run, "command": command,
                "accepted_changes": previous.get("accepted_changes", []) + list(changes)})


def resolve_checkpoint(checkpoint: str) -> str:
    """A checkpoint prefix from a prefix or a run directory; RunError if none."""
    if tf.io.gfile.isdir(checkpoint):
        latest = tf.train.latest_checkpoint(checkpoint)
        if latest is None:
            raise RunError(f"no checkpoint in directory {checkpoint!r}")
        return latest
    if not tf.io.gfile.exists(checkpoint + ".index"):
        raise RunError(f"checkpoint {checkpoint!r} not found (expected {checkpoint}.index "
                       "or a directory with a 'checkpoint' file)")
    return checkpoint


def has_checkpoint(model_dir: str) -> bool:
    return tf.train.latest_checkpoint(model_dir) is not None


def checkpoint_step(checkpoint: str) -> int:
    """The training step in a checkpoint prefix's name (ckpt-<step>), else 0."""
    match = re.search(r"-(\d+)$", checkpoint)
    return int(match.group(1)) if match else 0


def run_dir_of(checkpoint: str) -> str:
    """The run directory of a run directory or a checkpoint prefix."""
    is_prefix = tf.io.gfile.exists(checkpoint + ".index")
    return os.path.dirname(checkpoint) if is_prefix else checkpoint


def trained_mode(model_dir: str, default: str) -> str:
    """The training mode recorded in model_dir's config.json, else `default`."""
    record = read_record(model_dir)
    if record is None:
        return default
    return recorded_mode(record.get("run", {}), default)


@dataclasses.dataclass
class RestoredModel:
    model: SimCLRModel
    config: ExperimentConfig
    checkpoint: str
    mode: str  # the training mode that wrote the checkpoint
    step: int


def restore_model(run_or_checkpoint: str, default_mode: str = "pretrain",
                  config: Optional[ExperimentConfig] = None) -> RestoredModel:
    """The model of a training run, built as the run built it and restored
    from its checkpoint (the latest for a directory).

    The architecture and mode come from the run's config.json (`config`
    replaces its experiment); `default_mode` applies when config.json does
    not record a training mode. Every model variable must be in the
    checkpoint; optimizer and memory state are not read. Create it inside a
    strategy scope to place the variables there.
    """
    model_dir = run_dir_of(run_or_checkpoint)
    config = config or read_experiment(model_dir)
    checkpoint = resolve_checkpoint(run_or_checkpoint)
    mode = trained_mode(model_dir, default_mode)
    model = task_for(mode).build_model(config)
    # The run's optimizer and memory are in the checkpoint too, not wanted here.
    tf.train.Checkpoint(model=model).read(checkpoint).assert_existing_objects_matched() \
        .expect_partial()
    return RestoredModel(model, config, checkpoint, mode, checkpoint_step(checkpoint))
