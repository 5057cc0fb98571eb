"""absl flags of `python -m simclr_tf2.train`, and their conversion to configs.

Every config field has a flag (same name; `data_seed`, `memory_momentum` where
names clash). `--preset` picks the base config; only flags given on the
command line or in a flagfile override it. Flags are read only here.
"""
import dataclasses
import typing
from typing import Dict, Tuple

from absl import flags

from simclr_tf2.configs.presets import get_preset, preset_names
from simclr_tf2.configs.schema import _SECTION_TYPES, ExperimentConfig
from simclr_tf2.training.runner import RUN_MODES, STRATEGIES, TRAIN_MODES, RunConfig

# section.field -> (flag name, help). Every field must be listed.
CONFIG_FLAGS: Dict[str, Tuple[str, str]] = {
    # model
    "model.depth": ("depth", "ResNet depth: 18, 34, 50, 101, 152 or 200."),
    "model.width_multiplier": ("width_multiplier", "ResNet width multiplier (1, 2, 3; "
                               "fractions for small models)."),
    "model.sk_ratio": ("sk_ratio", "Selective-kernel ratio; 0 = off, 0.0625 as in the "
                       "released SK models (bottleneck ResNets only)."),
    "model.se_ratio": ("se_ratio", "Squeeze-excite ratio; 0 = off."),
    "model.cifar_stem": ("cifar_stem", "3x3 stride-1 stem without max-pool (32 px images)."),
    "model.bn_momentum": ("bn_momentum", "Batch-norm moving-average decay."),
    "model.bn_epsilon": ("bn_epsilon", "Batch-norm epsilon."),
    "model.sync_bn": ("sync_bn", "Cross-replica (global) batch norm."),
    "model.fine_tune_after_block": ("fine_tune_after_block", "Fine-tuning only: freeze "
                                    "the stem and block groups 1..k (-1 trains all, 4 "
                                    "= linear eval)."),
    "model.proj_head_mode": ("proj_head_mode", "Projection head: none, linear or nonlinear."),
    "model.proj_out_dim": ("proj_out_dim", "Width of the projection output."),
    "model.num_proj_layers": ("num_proj_layers", "Projection layers (nonlinear mode; "
                              "3 in SimCLRv2)."),
    "model.ft_proj_selector": ("ft_proj_selector", "Fine-tune from this head layer: 0 = "
                               "backbone output, 1 = first projection layer (SimCLRv2), "
                               "-1 = last."),
    "model.num_classes": ("num_classes", "Supervised head classes; 0 = none. Must match "
                          "the data."),
    # data
    "data.dataset": ("dataset", "digits or mnist5k (built in, offline), folder (set "
                     "data_dir), or a tensorflow-datasets name such as imagenet2012, "
                     "cifar10."),
    "data.data_dir": ("data_dir", "Image folder (dataset=folder) or tfds data_dir."),
    "data.image_size": ("image_size", "Side of the (square) training images in pixels."),
    "data.train_split": ("train_split", "Training split (tfds split; sub-folder of an "
                         "image folder when it exists)."),
    "data.eval_split": ("eval_split", "Evaluation split."),
    "data.label_fraction": ("label_fraction", "Fine-tuning: stratified fraction of the "
                            "training labels to use (0.01, 0.1, ...)."),
    "data.label_ids_file": ("label_ids_file", "Fine-tuning: file of example ids (one per "
                            "line) that defines the labelled subset."),
    "data.color_jitter_strength": ("color_jitter_strength", "Colour jitter strength s "
                                   "(1.0 ImageNet, 0.5 CIFAR)."),
    "data.use_blur": ("use_blur", "Gaussian blur in pretraining views."),
    "data.crop_area_min": ("crop_area_min", "Smallest area fraction of the random "
                           "resized crop (paper 0.08; larger for small images such "
                           "as digits)."),
    "data.use_flip": ("use_flip", "Random horizontal flip in pretraining and "
                      "fine-tuning views (off for orientation-sensitive images "
                      "such as digits)."),
    "data.cache": ("cache", "Cache decoded images in memory."),
    "data.shuffle_buffer": ("shuffle_buffer", "Shuffle buffer for sequential sources "
                            "(tfds); folders and built-in data shuffle fully."),
    "data.seed": ("data_seed", "Seed of shuffling, augmentation and label subsets."),
    "data.tfds_download": ("tfds_download", "Let tfds download a dataset missing from "
                           "data_dir (off: never download)."),
    "data.verify_images": ("verify_images", "Decode every folder image once up front and "
                           "skip corrupt files."),
    # train
    "train.train_batch_size": ("train_batch_size", "Global training batch size."),
    "train.eval_batch_size": ("eval_batch_size", "Global evaluation batch size."),
    "train.train_epochs": ("train_epochs", "Training length in epochs."),
    "train.train_steps": ("train_steps", "Training length in steps; overrides "
                          "train_epochs when > 0."),
    "train.optimizer": ("optimizer", "lars, momentum or adam."),
    "train.learning_rate": ("learning_rate", "Base learning rate (scaled by "
                            "learning_rate_scaling)."),
    "train.learning_rate_scaling": ("learning_rate_scaling", "linear (lr x B/256) or "
                                    "sqrt (lr x sqrt(B))."),
    "train.warmup_epochs": ("warmup_epochs", "Linear warm-up epochs before cosine decay."),
    "train.weight_decay": ("weight_decay", "Weight decay."),
    "train.momentum": ("momentum", "Optimizer momentum."),
    "train.temperature": ("temperature", "NT-Xent temperature."),
    "train.hidden_norm": ("hidden_norm", "L2-normalise projections in NT-Xent."),
    "train.lineareval_while_pretraining": ("lineareval_while_pretraining", "Train a "
                                           "linear head on stop-gradient features while "
                                           "pretraining (needs labels)."),
    "train.zero_init_logits_layer": ("zero_init_logits_layer", "Start the supervised "
                                     "head at zero when fine-tuning."),
    "train.distill_temperature": ("distill_temperature", "Distillation: softmax "
                                  "temperature of teacher and student."),
    "train.distill_alpha": ("distill_alpha", "Distillation: weight of the supervised "
                            "loss on the labelled subset (0 = unlabeled only)."),
    "train.distill_precompute": ("distill_precompute", "Distillation: teacher logits "
                                 "once per image (eval view) before training, for big "
                                 "teachers; default: on every augmented view."),
    "train.bn_recompute": ("bn_recompute", "After supervised training, recompute the "
                           "batch-norm statistics over the eval view of the run's own "
                           "training images (final weights; never eval data): for "
                           "small labelled sets."),
    "train.bn_recompute_batches": ("bn_recompute_batches", "bn_recompute: at most "
                                   "this many full batches."),
    "train.bn_recompute_images": ("bn_recompute_images", "bn_recompute over which "
                                  "training images: labelled (those the run trained "
                                  "on) or all (the whole training split, labels "
                                  "unused; with a label fraction, the unlabeled rest "
                                  "too)."),
    "train.linear_eval_cache_features": ("linear_eval_cache_features", "Linear eval: "
                                         "compute the frozen features of each training "
                                         "image once and train the linear head on them "
                                         "(needs crop_area_min=1 and nouse_flip: a "
                                         "deterministic training view)."),
    "train.precision": ("precision", "float32, mixed_bfloat16 (TPU) or mixed_float16 "
                        "(GPU, with loss scaling)."),
    "train.steps_per_loop": ("steps_per_loop", "Steps per host loop (progress line)."),
    "train.summary_interval": ("summary_interval", "Steps between TensorBoard summaries "
                               "(a multiple of steps_per_loop)."),
    "train.checkpoint_interval": ("checkpoint_interval", "Steps between checkpoints."),
    "train.keep_checkpoint_max": ("keep_checkpoint_max", "Checkpoints to keep."),
    "train.seed": ("seed", "Seed of model initialisation."),
    # memory
    "memory.queue_size": ("queue_size", "Memory queue of negatives (0 = plain SimCLR)."),
    "memory.momentum": ("memory_momentum", "Momentum-encoder EMA decay."),
    "memory.contrast_keys": ("memory_contrast_keys", "With memory: both (default: "
                             "SimCLR's loss among the online projections averaged with "
                             "a MoCo-style loss against the momentum encoder's keys and "
                             "the queue), online (the online projections plus the queue "
                             "as extra negatives: the paper's description, which "
                             "collapses on mnist5k) or momentum (MoCo: keys only)."),
    "memory.queue_temperature": ("queue_temperature", "With memory: temperature of the "
                                 "logits against queued keys (0 = --temperature)."),
    "memory.queue_weight": ("queue_weight", "With memory: each queued key counts as "
                            "this many negatives in the softmax (1 = plain)."),
    "memory.center_queue": ("center_queue", "With memory: subtract the queue's mean key "
                            "from the queued keys."),
    "memory.warmup_steps": ("memory_warmup_steps", "With memory: use the queue as "
                            "negatives only from this step on."),
    "memory.exclude_own_images": ("exclude_own_images", "With memory: leave out queued "
                                  "keys of the current batch's own images."),
    "memory.bn_splits": ("memory_bn_splits", "Pretraining: batch norm in this many "
                         "groups of each replica's 2 x batch images, the momentum "
                         "encoder's shuffled first (one-device shuffling BN, as in "
                         "MoCo; without memory, ghost BN); 0 = whole batch."),
    # monitor
    "monitor.probe_learning_rate": ("probe_learning_rate", "Pretraining: learning rate "
                                    "of the online linear probe's own momentum-SGD "
                                    "optimizer (fixed; independent of --learning_rate). If "
                                    "probe_loss climbs, lower it."),
    "monitor.knn_interval": ("knn_interval", "Pretraining: every this many steps "
                             "(rounded up to whole loops of steps_per_loop) and at the "
                             "end, report kNN top-1 and effective rank of the backbone "
                             "(0 = off)."),
    "monitor.knn_k": ("knn_k", "kNN monitor: neighbours that vote."),
    "monitor.knn_temperature": ("knn_temperature", "kNN monitor: votes weigh "
                                "exp(cosine / temperature)."),
    "monitor.knn_bank_size": ("knn_bank_size", "kNN monitor: at most this many "
                              "training images in the bank, a seeded random subset "
                              "(0 = all)."),
    "monitor.knn_eval_size": ("knn_eval_size", "kNN monitor: at most this many "
                              "eval-split images as queries (0 = all)."),
    # export
    "export.export_dir": ("export_dir", "Hub module directory (relative to model_dir)."),
    "export.keep_hub_module_max": ("keep_hub_module_max", "Hub module exports to keep."),
    "export.official_call_convention": ("official_call_convention", "Also export the "
                                        "authors' module(images, trainable=...) call."),
    "export.export_at_end": ("export_at_end", "Export hub modules (one per projection-head "
                             "layer) when training finishes."),
}
# The run mode is a run setting, not part of the experiment.
SKIPPED_FIELDS = {"train.mode"}


def _field_types():
    types = {}
    for section, cls in _SECTION_TYPES.items():
        hints = typing.get_type_hints(cls)
        defaults = cls()
        for field in dataclasses.fields(cls):
            key = f"{section}.{field.name}"
            types[key] = (hints[field.name], getattr(defaults, field.name))
    return types


def define_flags(flag_values=flags.FLAGS) -> None:
    """Defines every flag on `flag_values` (once)."""
    if "preset" in flag_values:
        return
    flags.DEFINE_string("preset", "tiny", f"Base configuration: one of {preset_names()}.",
                        flag_values=flag_values)
    flags.DEFINE_enum("mode", "pretrain", list(RUN_MODES), "What to run.",
                      flag_values=flag_values)
    flags.DEFINE_enum("train_mode", "pretrain", list(TRAIN_MODES), "What train_then_eval "
                      "trains; what eval expects when model_dir has no config.json.",
                      flag_values=flag_values)
    flags.DEFINE_string("model_dir", None, "Run directory: checkpoints, summaries, "
                        "config.json, result.json.", flag_values=flag_values)
    flags.DEFINE_string("checkpoint", None, "Fine-tune / linear-eval / eval from this "
                        "checkpoint (prefix or directory; model weights only) or "
                        "from an official SimCLRv2 TF2 SavedModel directory.",
                        flag_values=flag_values)
    flags.DEFINE_bool("from_scratch", False, "finetune / linear_eval: start from random "
                      "weights instead of --checkpoint (supervised baselines).",
                      flag_values=flag_values)
    flags.DEFINE_string("teacher", None, "distill: the teacher, a fine-tuned run dir or "
                        "checkpoint, a hub export (head_k) or an official SimCLRv2 "
                        "SavedModel.", flag_values=flag_values)
    flags.DEFINE_enum("strategy", "auto", list(STRATEGIES), "tf.distribute strategy; "
                      "auto = tpu if --tpu, mirrored with >1 GPU, else one_device.",
                      flag_values=flag_values)
    flags.DEFINE_string("tpu", None, "TPU name or grpc:// address.", flag_values=flag_values)
    flags.DEFINE_string("tpu_zone", None, "TPU zone.", flag_values=flag_values)
    flags.DEFINE_string("gcp_project", None, "GCP project of the TPU.",
                        flag_values=flag_values)
    flags.DEFINE_integer("num_gpus", -1, "GPUs to use (-1 = all).", flag_values=flag_values)
    flags.DEFINE_integer("num_cpu_devices", 1, "Split the CPU into this many logical "
                         "devices (multi-replica runs on a CPU).", flag_values=flag_values)
    flags.DEFINE_bool("deterministic", False, "Op determinism and fixed seeds "
                      "(reproducible, slower).", flag_values=flag_values)
    types = _field_types()
    missing = set(types) - set(CONFIG_FLAGS) - SKIPPED_FIELDS
    assert not missing, f"config fields without a flag: {sorted(missing)}"
    for key, (name, help_text) in CONFIG_FLAGS.items():
        kind, default = types[key]
        if kind is bool:
            flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)


def configs_from_flags(flag_values=flags.FLAGS) -> Tuple[ExperimentConfig, RunConfig]:
    """The preset with every explicitly given flag applied, and the run config."""
    config = get_preset(flag_values.preset)
    overrides = {key: flag_values[name].value for key, (name, _) in CONFIG_FLAGS.items()
                 if flag_values[name].present}
    if overrides:
        config = config.override(**overrides)
    if flag_values.model_dir is None:
        raise ValueError("--model_dir is required (where checkpoints and results go)")
    run_config = RunConfig(
        mode=flag_values.mode, model_dir=flag_values.model_dir,
        train_mode=flag_values.train_mode, checkpoint=flag_values.checkpoint,
        strategy=flag_values.strategy, tpu=flag_values.tpu, tpu_zone=flag_values.tpu_zone,
        gcp_project=flag_values.gcp_project, num_gpus=flag_values.num_gpus,
        num_cpu_devices=flag_values.num_cpu_devices,
        deterministic=flag_values.deterministic, teacher=flag_values.teacher,
        from_scratch=flag_values.from_scratch)
    return config, run_config
