"""absl flags of `python -m simclr_tf2.train`, and their conversion to configs.

Every config field has a flag, generated from the field's `setting(...)`
metadata in configs/schema.py (the same name; `data_seed`, `memory_momentum`
where names clash). `--preset` picks the base config; only flags given on the
command line or in a flagfile override it. Flags are read only here.
"""
import dataclasses
import typing
from typing import Dict, Tuple

from absl import flags

from simclr_tf2.configs.modes import RUN_MODES, TRAIN_MODES
from simclr_tf2.configs.presets import get_preset, preset_names
from simclr_tf2.configs.schema import _SECTION_TYPES, ExperimentConfig
from simclr_tf2.training.run_config import STRATEGIES, RunConfig


def _config_flags() -> Dict[str, Tuple[str, str]]:
    """section.field -> (flag name, help), from the config fields' metadata
    (`setting(...)` in configs/schema.py)."""
    table = {}
    for section, cls in _SECTION_TYPES.items():
        for field in dataclasses.fields(cls):
            table[f"{section}.{field.name}"] = (field.metadata.get("flag", field.name),
                                                field.metadata["help"])
    return table


CONFIG_FLAGS = _config_flags()


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
    flags.DEFINE_bool("accept_changed_settings", False, "Resume the run in --model_dir "
                      "although training settings changed since it started (without it "
                      "such a rerun is refused, naming the changes); the changes are "
                      "logged and recorded in config.json.", flag_values=flag_values)
    types = _field_types()
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
        from_scratch=flag_values.from_scratch,
        accept_changed_settings=flag_values.accept_changed_settings)
    return config, run_config
