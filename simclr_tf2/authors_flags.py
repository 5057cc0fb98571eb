"""The flag names of the authors' code (google-research/simclr, tf2/run.py),
accepted with the authors' meanings.

Their run.py defines 48 flags (`AUTHORS_FLAGS`). 39 have the same name and
meaning here. The others are aliases (`ALIASES`) that set our flag, and
their `--mode=train` means "train what --train_mode says". Two flags of
their TF1 code that their README commands still pass (`TF1_LEFTOVERS`) are
accepted with a one-line notice of what they do here. A command that uses
their names without `--preset` starts from their run.py defaults (the
`authors` preset), since their commands assume those defaults; there the
stem follows their rule (the 3x3 CIFAR stem when image_size <= 32) and the
number of classes their code reads from the dataset.
"""
import dataclasses
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

from absl import flags

from simclr_tf2.errors import ConfigError
from simclr_tf2.tasks import task_for

# tf2/run.py's flags, in its order.
AUTHORS_FLAGS = (
    "learning_rate", "learning_rate_scaling", "warmup_epochs", "weight_decay",
    "batch_norm_decay", "train_batch_size", "train_split", "train_epochs", "train_steps",
    "eval_steps", "eval_batch_size", "checkpoint_epochs", "checkpoint_steps",
    "eval_split", "dataset", "cache_dataset", "mode", "train_mode",
    "lineareval_while_pretraining", "checkpoint", "zero_init_logits_layer",
    "fine_tune_after_block", "master", "model_dir", "data_dir", "use_tpu", "tpu_name",
    "tpu_zone", "gcp_project", "optimizer", "momentum", "eval_name",
    "keep_checkpoint_max", "keep_hub_module_max", "temperature", "hidden_norm",
    "proj_head_mode", "proj_out_dim", "num_proj_layers", "ft_proj_selector", "global_bn",
    "width_multiplier", "resnet_depth", "sk_ratio", "se_ratio", "image_size",
    "color_jitter_strength", "use_blur")

HEADING = "simclr_tf2: google-research/simclr flag names (aliases)"
PRESET = "authors"  # the base config of a command that uses their names
# Their spellings of our flags' values, and what the help says of them.
EXTRA_CHOICES = {"mode": ("train",)}
EXTRA_HELP = {"mode": " train = train what --train_mode says (the authors' spelling).",
              "train_mode": " Without --mode, what to train (as in the authors' code)."}
SKIP = object()  # an alias value that leaves our flag as it is


@dataclasses.dataclass(frozen=True)
class Alias:
    kind: type
    target: Optional[str]  # our flag; None: nothing to set
    help: str
    convert: Callable[[Any], Any] = lambda value: value  # theirs -> ours, or SKIP
    # Other settings it implies: config key -> (value, why).
    implies: Dict[str, Tuple[Any, str]] = dataclasses.field(default_factory=dict)


ALIASES: Dict[str, Alias] = {
    "resnet_depth": Alias(int, "depth", "ResNet depth."),
    "global_bn": Alias(bool, "sync_bn", "Aggregate batch-norm statistics across "
                       "replicas."),
    "batch_norm_decay": Alias(float, "bn_momentum", "Decay of the batch-norm moving "
                              "averages."),
    "cache_dataset": Alias(bool, "cache", "Cache the whole dataset in memory."),
    "checkpoint_steps": Alias(int, "checkpoint_interval", "Steps between checkpoints; "
                              "overrides --checkpoint_epochs (0 = use it).",
                              lambda steps: steps if steps > 0 else SKIP,
                              {"train.checkpoint_epochs": (0.0, "steps override epochs")}),
    "tpu_name": Alias(str, "tpu", "Cloud TPU name or grpc:// address.",
                      lambda name: name or SKIP),
    "master": Alias(str, "tpu", "TPU address, used when --tpu_name is not given.",
                    lambda name: name or SKIP),
    "use_tpu": Alias(bool, "strategy", "Run on a TPU: True = --strategy=tpu; False = "
                     "--strategy=auto (several GPUs mirrored, else one device).",
                     lambda use: "tpu" if use else SKIP),
    "eval_name": Alias(str, None, "Name for eval: defined but never read by the authors' "
                       "TF2 code; ignored here too."),
}
# Flags of their TF1 code that their README commands still pass.
TF1_LEFTOVERS = {
    "variable_schema": (str, "TF1: regular expression of the checkpoint variables to "
                        "restore; ignored (a notice says what --checkpoint restores)."),
    "train_summary_steps": (int, "TF1: steps between training summaries; ignored "
                            "(summaries every --summary_interval steps)."),
}

# Classes of the datasets the authors' commands use (their code reads it from
# tfds), for the `authors` preset.
KNOWN_CLASSES = {"imagenet2012": 1000, "imagenet2012_subset": 1000, "cifar10": 10,
                 "cifar100": 100, "stl10": 10, "digits": 10, "mnist5k": 10, "mnist": 10}


def define_alias_flags(flag_values) -> None:
    """Defines the aliases and TF1 leftovers, listed in --helpfull under HEADING."""
    definers = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
                float: flags.DEFINE_float, str: flags.DEFINE_string}
    for name, alias in ALIASES.items():
        where = f"alias of --{alias.target}" if alias.target else "no effect"
        definers[alias.kind](name, None, f"[{where}] {alias.help}",
                             flag_values=flag_values, module_name=HEADING)
    for name, (kind, help_text) in TF1_LEFTOVERS.items():
        definers[kind](name, None, f"[no effect] {help_text}", flag_values=flag_values,
                       module_name=HEADING)


def used_names(flag_values) -> List[str]:
    """The authors-only spellings given (aliases, TF1 leftovers, --mode=train)."""
    names = [f"--{n}" for n in (*ALIASES, *TF1_LEFTOVERS) if flag_values[n].present]
    if flag_values["mode"].value == "train":
        names.append("--mode=train")
    return names


def alias_values(flag_values) -> Dict[str, tuple]:
    """Our flag -> (value, their flag) for every alias given, after their
    precedences (--tpu_name over --master, as in their run.py). Raises
    ValueError when an alias and our spelling of the same flag disagree."""
    chosen = {}
    for name, alias in ALIASES.items():
        if not flag_values[name].present or alias.target is None:
            continue
        value = alias.convert(flag_values[name].value)
        if value is SKIP or (name == "master" and "tpu" in chosen):
            continue
        chosen[alias.target] = (value, name)
    use_tpu = flag_values["use_tpu"]
    if use_tpu.present and not use_tpu.value and flag_values["strategy"].value == "tpu":
        raise ConfigError("--use_tpu=False and --strategy=tpu disagree: give one")
    for target, (value, name) in chosen.items():
        ours = flag_values[target]
        if ours.present and ours.value != value:
            raise ConfigError(f"--{name}={flag_values[name].value} and --{target}="
                             f"{ours.value} disagree (--{name} is the authors' name for "
                             f"--{target}): give one")
    return chosen


def authors_derived(config, config_keys_given) -> Dict[str, tuple]:
    """Config key -> (value, why) that their code derives from other
    settings of the resolved `config`, for the `authors` preset: the stem
    from image_size, the number of classes from the dataset."""
    derived = {}
    size = config.data.image_size
    if "model.cifar_stem" not in config_keys_given:
        derived["model.cifar_stem"] = (size <= 32, f"image_size={size} (their rule: the "
                                       "3x3 stem when image_size <= 32)")
    dataset = config.data.dataset.split("/")[0]
    if "model.num_classes" not in config_keys_given and dataset in KNOWN_CLASSES:
        derived["model.num_classes"] = (KNOWN_CLASSES[dataset], f"dataset={dataset} (their"
                                        " code reads the classes from the dataset)")
    return derived


# What --checkpoint restores here, in the variable names of their TF1
# checkpoints that --variable_schema was written against.
_TF1_NAMES = {"the step": "global_step",
              "the optimizer slots": "base_model/conv2d/kernel/Momentum",
              "the backbone": "base_model/conv2d/kernel",
              "the projection head": "head_contrastive/nl_0/dense/kernel",
              "the supervised head": "head_supervised/linear_layer/dense/kernel"}


def base_preset(flag_values) -> Tuple[str, Optional[str]]:
    """The preset a command starts from, and a notice when it is theirs
    because the command uses their flag names without --preset."""
    names = used_names(flag_values)
    if flag_values["preset"].present or not names:
        return flag_values.preset, None
    return PRESET, (f"base config: preset {PRESET!r} (the defaults of google-research/"
                    "simclr tf2/run.py), since the command uses their flag names ("
                    f"{', '.join(names)}); pass --preset to choose another")


def notices(flag_values, mode: str, ft_proj_selector: int,
            zero_init_logits_layer: bool) -> List[str]:
    """One line for each of their flags that does nothing here."""
    notices = []
    if flag_values["eval_name"].present:
        notices.append("--eval_name is never read by the authors' TF2 code; ignored here "
                       "too (results go to result.json in --model_dir)")
    if flag_values["train_summary_steps"].present:
        notices.append("--train_summary_steps is a flag of the authors' TF1 code, ignored: "
                       "summaries are written every --summary_interval steps")
    if flag_values["variable_schema"].present:
        notices.append(_variable_schema_notice(flag_values["variable_schema"].value, mode,
                                               ft_proj_selector, zero_init_logits_layer))
    return notices


def _variable_schema_notice(pattern: str, mode: str, ft_proj_selector: int,
                            zero_init: bool) -> str:
    head = "--variable_schema is a flag of the authors' TF1 code, ignored"
    if not task_for(mode).supervised:
        return f"{head}: {mode} does not start from a --checkpoint's weights"
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ConfigError(f"--variable_schema={pattern!r} is not a regular expression "
                         f"({error})") from None
    ours = {"the step": False, "the optimizer slots": False, "the backbone": True,
            "the projection head": ft_proj_selector != 0,
            "the supervised head": not zero_init}
    theirs = {part: regex.match(name) is not None for part, name in _TF1_NAMES.items()}
    kept = [part for part, keep in ours.items() if keep]
    differ = [f"it {'restores' if theirs[p] else 'skips'} {p}" for p in ours
              if ours[p] != theirs[p]]
    said = (f"{head}: --checkpoint restores {', '.join(kept)} (never the step or the "
            "optimizer slots; the projection head only up to --ft_proj_selector, the "
            "supervised head unless --zero_init_logits_layer zeroes it)")
    if differ:
        return f"{said}; your pattern differs: {'; '.join(differ)}"
    return f"{said}; your pattern agrees"


def resolved_mode(flag_values) -> Tuple[str, Optional[str]]:
    """The run mode, and why when the authors' spelling decided it: their
    --mode=train, and their default mode (train) when only --train_mode is
    given, both train what --train_mode says."""
    mode, train_mode = flag_values["mode"], flag_values.train_mode
    if mode.value == "train":
        return train_mode, f"--mode=train with --train_mode={train_mode}"
    if not mode.present and flag_values["train_mode"].present:
        return train_mode, ("--train_mode, as no --mode was given (the authors' default "
                            "--mode=train)")
    return mode.value, None
