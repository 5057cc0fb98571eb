"""absl flags of `python -m simclr_tf2.train`, and their conversion to configs.

Every config field has a flag, generated from the field's `setting(...)`
metadata in configs/schema.py (the same name; `data_seed`, `memory_momentum`
where names clash). `--preset` picks the base config; only flags given on the
command line or in a flagfile override it. The authors' flag names are
accepted too (authors_flags.py). Flags are read only here.
"""
import dataclasses
import os
import sys
import typing
from typing import Dict, List, Optional, Sequence, Tuple

from absl import flags

from simclr_tf2 import authors_flags
from simclr_tf2.configs.presets import get_preset, preset_names
from simclr_tf2.configs.schema import _SECTION_TYPES, ExperimentConfig
from simclr_tf2.errors import ConfigError
from simclr_tf2.training.run_config import RunConfig


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


def _run_flag_fields() -> List[dataclasses.Field]:
    """RunConfig's fields that are flags (of the same name)."""
    return [f for f in dataclasses.fields(RunConfig) if f.metadata.get("flag") != ""]


def _define_from_fields(cls, fields, flag_values) -> None:
    """A flag per field of dataclass `cls`, from its `setting(...)`: the
    field's type, default, help and choices (with the authors' extra
    spellings, authors_flags.EXTRA_CHOICES)."""
    hints = typing.get_type_hints(cls)
    for field in fields:
        name = field.metadata.get("flag", field.name)
        kind, default = hints[field.name], field.default
        help_text = field.metadata["help"] + authors_flags.EXTRA_HELP.get(name, "")
        if "choices" in field.metadata:
            choices = [*field.metadata["choices"], *authors_flags.EXTRA_CHOICES.get(name, ())]
            flags.DEFINE_enum(name, default, choices, help_text, flag_values=flag_values)
        elif kind is bool:
            flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, default or None, help_text, flag_values=flag_values)


def define_flags(flag_values=flags.FLAGS) -> None:
    """Defines every flag on `flag_values` (once)."""
    if "preset" in flag_values:
        return
    flags.DEFINE_string("preset", "tiny", f"Base configuration: one of {preset_names()} "
                        f"(default: tiny; {authors_flags.PRESET!r} when the command uses "
                        "flag names of google-research/simclr).", flag_values=flag_values)
    _define_from_fields(RunConfig, _run_flag_fields(), flag_values)
    flags.DEFINE_bool("dry_run", False, "Print the resolved config, where each value came "
                      "from (preset, flagfile, flag, alias), and exit without running or "
                      "writing anything.", flag_values=flag_values)
    for section, cls in _SECTION_TYPES.items():
        _define_from_fields(cls, [f for f in dataclasses.fields(cls)], flag_values)
    authors_flags.define_alias_flags(flag_values)


@dataclasses.dataclass
class Resolution:
    """What a command line resolves to: the configs, where each value came
    from, and notices about flags that have no effect here."""
    config: ExperimentConfig
    run_config: RunConfig
    preset: str
    sources: Dict[str, str]  # config key or run field -> where its value came from
    notices: List[str]


def flag_origins(argv: Sequence[str]) -> Dict[str, str]:
    """Flag name -> 'command line' or 'flagfile <path>' (the last to set it),
    reading --flagfile files (nested too) as absl does."""
    origins = {}

    def scan(tokens, origin, depth=0):
        for token in tokens:
            if not token.startswith("--"):
                continue
            name, _, value = token[2:].partition("=")
            if name == "flagfile" and depth < 10:
                try:
                    with open(value) as f:
                        lines = [line.strip() for line in f]
                except OSError:
                    continue  # absl reports it
                scan([line for line in lines if line and not line.startswith(("#", "//"))],
                     f"flagfile {value}", depth + 1)
            else:
                origins[name] = origin
                if name.startswith("no"):
                    origins[name[2:]] = origin

    scan(argv, "command line")
    return origins


def resolve_flags(flag_values=flags.FLAGS, argv: Optional[Sequence[str]] = None,
                  require_model_dir: bool = True) -> Resolution:
    """The preset with every given flag (ours, or the authors' alias) applied,
    the run config, and each value's origin. `argv`: the command line, for
    telling flagfile values from command-line ones (default sys.argv)."""
    origins = flag_origins(sys.argv[1:] if argv is None else argv)

    def origin(name):
        return origins.get(name, "command line")

    preset, preset_notice = authors_flags.base_preset(flag_values)
    config = get_preset(preset)
    sources = {}
    overrides = {}
    for key, (name, _) in CONFIG_FLAGS.items():
        if flag_values[name].present:
            overrides[key] = flag_values[name].value
            sources[key] = f"--{name} ({origin(name)})"
    by_flag = {name: key for key, (name, _) in CONFIG_FLAGS.items()}
    run_values = {}
    for target, (value, alias) in authors_flags.alias_values(flag_values).items():
        where = f"--{alias} ({origin(alias)}; the authors' name for --{target})"
        if target in by_flag:
            overrides[by_flag[target]] = value
            sources[by_flag[target]] = where
        else:
            run_values[target] = (value, where)
        for key, (implied, why) in authors_flags.ALIASES[alias].implies.items():
            overrides[key] = implied
            sources[key] = f"{where}: {why}"
    if overrides:
        config = config.override(**overrides)
    if preset == authors_flags.PRESET:
        derived = authors_flags.authors_derived(config, overrides)
        if derived:
            config = config.override(**{key: value for key, (value, _) in derived.items()})
        sources.update({key: f"derived from {why}" for key, (_, why) in derived.items()})
    for key in _config_keys(config):
        sources.setdefault(key, f"preset {preset}")
    if require_model_dir and not flag_values.model_dir:
        raise ConfigError("--model_dir is required (where checkpoints and results go)")
    mode, why = authors_flags.resolved_mode(flag_values)
    run_flags = [field.name for field in _run_flag_fields()]
    run = {name: flag_values[name].value for name in run_flags}
    run.update(mode=mode, model_dir=flag_values.model_dir or "(not set)")
    for name in run_flags:
        if flag_values[name].present:
            sources[f"run.{name}"] = f"--{name} ({origin(name)})"
    if why:
        sources["run.mode"] = why
    for name, (value, where) in run_values.items():
        run[name] = value
        sources[f"run.{name}"] = where
    run_config = RunConfig(**run)
    for name in run_flags:
        sources.setdefault(f"run.{name}", "default")
    notices = [preset_notice] if preset_notice else []
    notices += authors_flags.notices(
        flag_values, run_config.training_mode or run_config.train_mode,
        config.model.ft_proj_selector, config.train.zero_init_logits_layer)
    return Resolution(config, run_config, preset, sources, notices)


def _config_keys(config: ExperimentConfig) -> List[str]:
    return [f"{section}.{field.name}" for section in _SECTION_TYPES
            for field in dataclasses.fields(getattr(config, section))]


def configs_from_flags(flag_values=flags.FLAGS,
                       argv: Optional[Sequence[str]] = None) -> Tuple[ExperimentConfig,
                                                                      RunConfig]:
    """The preset with every explicitly given flag applied, and the run config."""
    resolution = resolve_flags(flag_values, argv)
    return resolution.config, resolution.run_config


def format_resolution(resolution: Resolution) -> str:
    """The dry run's report: every run setting and config value with its origin."""
    lines = [f"dry run: nothing was run or written. Base config: preset "
             f"{resolution.preset!r}."]
    rows = [(f"run.{k}", v) for k, v in dataclasses.asdict(resolution.run_config).items()
            if f"run.{k}" in resolution.sources]
    rows += [(key, getattr(getattr(resolution.config, key.split(".")[0]),
                           key.split(".")[1])) for key in _config_keys(resolution.config)]
    width = max(len(f"{k} = {v!r}") for k, v in rows)
    for key, value in rows:
        lines.append(f"  {f'{key} = {value!r}':<{width}}  <- {resolution.sources[key]}")
    lines += [f"notice: {notice}" for notice in resolution.notices]
    return os.linesep.join(lines)
