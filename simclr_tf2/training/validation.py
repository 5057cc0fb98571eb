"""Checks of a run's settings, made before anything is written.

Each failure names the setting, the value received and the fix. A model_dir
that already holds a run must be resumed with the settings it started with:
a changed model is refused, changed training settings too unless
--accept_changed_settings says they are meant (then they are logged and
recorded with the run).
"""
import logging
from typing import Dict, List, Optional

import tensorflow as tf

from simclr_tf2.configs.schema import ExperimentConfig, check
from simclr_tf2.data.builtin import BUILTIN_DATASETS
from simclr_tf2.errors import ConfigError, DataError, RunError
from simclr_tf2.export.official import is_savedmodel_dir
from simclr_tf2.rundir import has_checkpoint, read_record, resolve_checkpoint, trained_mode
from simclr_tf2.tasks import Task, evaluates
from simclr_tf2.training.run_config import RunConfig

log = logging.getLogger("simclr_tf2.train")

# Settings that change how a run is watched, stored or exported, not what it
# trains: a resumed run may change them freely.
HOUSEKEEPING = {
    "train": {"steps_per_loop", "summary_interval", "checkpoint_interval",
              "checkpoint_epochs", "keep_checkpoint_max", "eval_batch_size", "eval_steps"},
    "data": {"data_dir", "index_dir", "eval_split", "cache", "tfds_download",
             "verify_images", "augment_on", "data_service"},
    "monitor": "*", "export": "*",
}


def validate(config: ExperimentConfig, run_config: RunConfig) -> None:
    """Rejects incompatible settings before anything is written."""
    task = run_config.task
    _check_data_settings(config)
    if task is not None and task.contrastive:
        check(config.model.fine_tune_after_block == -1,
              "fine_tune_after_block freezes layers for fine-tuning; pretraining "
              f"trains the whole network. Received: fine_tune_after_block="
              f"{config.model.fine_tune_after_block} with mode {task.mode}")
    if (task is not None and task.supervised) or evaluates(run_config.mode):
        check(config.model.num_classes > 0, f"mode {run_config.mode!r} needs a "
              "supervised head: set num_classes")
    if task is not None and task.takes_teacher:
        check(run_config.teacher is not None, f"{task.mode} needs --teacher=<a fine-tuned "
              "run dir or checkpoint, a hub export or an official SavedModel>")
        check(is_savedmodel_dir(run_config.teacher)
              or tf.io.gfile.exists(run_config.teacher + ".index")
              or tf.io.gfile.isdir(run_config.teacher),
              f"teacher {run_config.teacher!r} not found")
    _check_training_settings(config, task)
    _check_starting_point(run_config, task)
    if config.memory.queue_size > 0 and task is not None and not task.contrastive:
        log.warning("queue_size=%d is ignored outside pretraining",
                    config.memory.queue_size)
    if config.train.summary_interval % config.train.steps_per_loop:
        raise ConfigError(f"summary_interval ({config.train.summary_interval}) must be a "
                          f"multiple of steps_per_loop ({config.train.steps_per_loop})")


def _check_data_settings(config: ExperimentConfig) -> None:
    data = config.data
    check(not data.data_service or (not data.cache and (data.dataset == "folder"
                                                        or data.dataset in BUILTIN_DATASETS)),
          "data_service reads image folders and built-in data; TFRecord shards and tfds "
          "datasets are read in sequence and cache=True holds images in this process: "
          "drop data_service, or use a folder without cache. Received: "
          f"dataset={data.dataset!r}, cache={data.cache}")
    if data.dataset == "folder" and not tf.io.gfile.isdir(data.data_dir or ""):
        raise DataError(f"data_dir {data.data_dir!r} does not exist: point "
                        "data_dir at the image folder")


def _check_training_settings(config: ExperimentConfig, task: Optional[Task]) -> None:
    trains = task.mode if task is not None else None
    if config.train.linear_eval_cache_features:
        check(task is not None and task.frozen_features, "linear_eval_cache_features "
              f"applies to linear_eval only (the run trains {trains!r}): drop "
              "--linear_eval_cache_features")
        check(config.data.crop_area_min == 1.0 and not config.data.use_flip,
              "linear_eval_cache_features computes each image's features once, so "
              "the training view must not be random: set --crop_area_min=1.0 and "
              f"--nouse_flip (received crop_area_min={config.data.crop_area_min}, "
              f"use_flip={config.data.use_flip}), or drop --linear_eval_cache_features")
    check(not (config.train.bn_recompute and task is not None and task.contrastive),
          "bn_recompute applies after supervised training (finetune, linear_eval, "
          "distill); pretraining keeps its moving averages: drop --bn_recompute")


def _check_starting_point(run_config: RunConfig, task: Optional[Task]) -> None:
    has_own = has_checkpoint(run_config.model_dir)
    if task is not None and task.starts_pretrained:
        check(not (run_config.from_scratch and run_config.checkpoint),
              "from_scratch starts from random weights; it cannot be combined with "
              f"--checkpoint={run_config.checkpoint}: drop one of them")
        check(run_config.checkpoint is not None or has_own or run_config.from_scratch,
              f"{task.mode} starts from a pretrained model: pass --checkpoint=<a "
              "pretraining checkpoint or model dir> (model_dir has no checkpoint "
              "to resume), or --from_scratch for a supervised baseline")
    if task is None:  # evaluation only
        check(run_config.checkpoint is not None or has_own,
              "eval needs a trained model: model_dir has no checkpoint and "
              "--checkpoint is not set")
    if run_config.checkpoint is not None and not is_savedmodel_dir(run_config.checkpoint):
        resolve_checkpoint(run_config.checkpoint)


def _differences(before: Dict, after: Dict) -> List[str]:
    """'section.field: old -> new' for every training setting that differs."""
    changes = []
    for section, fields in after.items():
        free = HOUSEKEEPING.get(section, set())
        if free == "*":
            continue
        old = before[section]
        for name, value in fields.items():
            if name not in free and old[name] != value:
                changes.append(f"{section}.{name}: {old[name]!r} -> {value!r}")
    return changes


def changed_settings(config: ExperimentConfig, run_config: RunConfig) -> List[str]:
    """The training settings that differ from the run already in model_dir
    (empty when there is none, or it trained nothing yet). Refuses a changed
    model always, other changes unless run_config.accept_changed_settings."""
    record = read_record(run_config.model_dir)
    if record is None or run_config.task is None or not has_checkpoint(run_config.model_dir):
        return []
    # Through the schema: old records load as they always do (defaults for
    # fields added since, the retired train.mode dropped).
    before = ExperimentConfig.from_dict(record["experiment"]).to_dict()
    after = config.to_dict()
    model = _differences({"model": before["model"]}, {"model": after["model"]})
    if model:
        raise RunError(f"model_dir {run_config.model_dir!r} holds a run with a different "
                       f"model ({'; '.join(model)}): use a new model_dir or the same "
                       "settings")
    changes = _differences(before, after)
    previous_mode = trained_mode(run_config.model_dir, None)
    mode = run_config.training_mode
    if None not in (previous_mode, mode) and previous_mode != mode:
        changes.append(f"training mode: {previous_mode!r} -> {mode!r}")
    if changes and not run_config.accept_changed_settings:
        raise RunError(f"model_dir {run_config.model_dir!r} holds a run started with other "
                       f"settings ({'; '.join(changes)}): rerun with the same settings to "
                       "resume it, use a new model_dir, or pass --accept_changed_settings "
                       "to resume it with the new ones")
    for change in changes:
        log.warning("resuming %s with a changed setting: %s", run_config.model_dir, change)
    return changes


def check_classes(config: ExperimentConfig, source) -> None:
    """The data's classes are the supervised head's (num_classes)."""
    if source.num_classes and config.model.num_classes not in (0, source.num_classes):
        raise DataError(f"num_classes={config.model.num_classes} but the data has "
                        f"{source.num_classes} classes: set num_classes="
                        f"{source.num_classes}")
