"""Typed, validated configuration for every stage of SimCLRv2.

Flags (the entry point) only fill these in; library code takes them as
arguments and never reads global state. Every config validates itself on
construction and names the bad value in its error.
"""
import dataclasses
import json
from typing import Any, Dict, Optional

RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)
PROJ_HEAD_MODES = ("none", "linear", "nonlinear")
MODES = ("pretrain", "finetune", "linear_eval", "eval", "train_then_eval",
         "distill")
OPTIMIZERS = ("lars", "momentum", "adam")
LR_SCALINGS = ("linear", "sqrt")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
BN_RECOMPUTE_IMAGES = ("labelled", "all")
CONTRAST_KEYS = ("online", "momentum", "both")


def check(condition: bool, message: str) -> None:
    """Raises ValueError(message) unless condition holds."""
    if not condition:
        raise ValueError(message)


def _check_choice(name: str, value: Any, choices) -> None:
    check(value in choices,
          f"{name} must be one of {list(choices)}. Received: {name}={value!r}")


def _check_range(name: str, value, low=None, high=None, low_inclusive=True):
    ok = True
    if low is not None:
        ok = value >= low if low_inclusive else value > low
    if high is not None:
        ok = ok and value <= high
    bounds = []
    if low is not None:
        bounds.append(f"{'>=' if low_inclusive else '>'} {low}")
    if high is not None:
        bounds.append(f"<= {high}")
    check(ok, f"{name} must be {' and '.join(bounds)}. Received: {name}={value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Backbone and heads."""
    depth: int = 50
    width_multiplier: float = 1.0
    sk_ratio: float = 0.0
    se_ratio: float = 0.0
    cifar_stem: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    # Cross-replica (global) batch norm, as in the paper. Identical to plain
    # batch norm with one replica.
    sync_bn: bool = True
    # -1 trains everything; k freezes the stem and block groups 1..k.
    fine_tune_after_block: int = -1
    proj_head_mode: str = "nonlinear"
    proj_out_dim: int = 128
    num_proj_layers: int = 3
    # Fine-tuning input: 0 = backbone output, k = projection layer k, -1 = last.
    ft_proj_selector: int = 0
    # Supervised head size; 0 means no supervised head.
    num_classes: int = 0

    def __post_init__(self):
        _check_choice("depth", self.depth, RESNET_DEPTHS)
        _check_range("width_multiplier", self.width_multiplier, 0,
                     low_inclusive=False)
        _check_range("sk_ratio", self.sk_ratio, 0)
        _check_range("se_ratio", self.se_ratio, 0)
        check(not (self.sk_ratio > 0 and self.depth < 50),
              f"sk_ratio applies to bottleneck blocks (depth >= 50); depth "
              f"{self.depth} uses basic blocks. Received: sk_ratio={self.sk_ratio}")
        _check_range("bn_momentum", self.bn_momentum, 0, 1)
        _check_range("bn_epsilon", self.bn_epsilon, 0, low_inclusive=False)
        _check_range("fine_tune_after_block", self.fine_tune_after_block, -1, 4)
        _check_choice("proj_head_mode", self.proj_head_mode, PROJ_HEAD_MODES)
        _check_range("proj_out_dim", self.proj_out_dim, 1)
        _check_range("num_proj_layers", self.num_proj_layers, 1)
        _check_range("num_classes", self.num_classes, 0)
        num_layers = {"none": 0, "linear": 1}.get(self.proj_head_mode,
                                                 self.num_proj_layers)
        check(-(num_layers + 1) <= self.ft_proj_selector <= num_layers,
              f"ft_proj_selector must be in [{-(num_layers + 1)}, {num_layers}] "
              f"for proj_head_mode={self.proj_head_mode!r} with {num_layers} "
              f"projection layer(s). Received: "
              f"ft_proj_selector={self.ft_proj_selector}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are augmented."""
    # 'digits' | 'mnist5k' (built in, offline) | 'folder' | any tfds name.
    dataset: str = "digits"
    data_dir: Optional[str] = None
    image_size: int = 32
    train_split: str = "train"
    eval_split: str = "test"
    # Fraction of labelled training examples to use (stratified, seeded).
    label_fraction: float = 1.0
    # Optional file of example ids that defines the labelled subset.
    label_ids_file: Optional[str] = None
    color_jitter_strength: float = 1.0
    use_blur: bool = True
    # Smallest crop area fraction of the random resized crop (paper: 0.08),
    # and the horizontal flip (paper: on), for pretraining and fine-tuning.
    crop_area_min: float = 0.08
    use_flip: bool = True
    cache: bool = False
    shuffle_buffer: int = 10000
    seed: int = 0
    # Let tfds download and prepare a dataset that is not in data_dir yet.
    tfds_download: bool = False
    # Fully decode every image of a folder once when it is scanned, so corrupt
    # files are skipped up front (turn off for very large folders).
    verify_images: bool = True

    def __post_init__(self):
        check(bool(self.dataset), "dataset must be set. Received: dataset=''")
        _check_range("image_size", self.image_size, 8)
        _check_range("label_fraction", self.label_fraction, 0, 1,
                     low_inclusive=False)
        _check_range("color_jitter_strength", self.color_jitter_strength, 0)
        _check_range("crop_area_min", self.crop_area_min, 0, 1, low_inclusive=False)
        _check_range("shuffle_buffer", self.shuffle_buffer, 0)
        check(self.dataset != "folder" or bool(self.data_dir),
              "dataset='folder' needs data_dir pointing at the image folder. "
              "Received: data_dir=None")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the training loop."""
    mode: str = "pretrain"
    train_batch_size: int = 512
    eval_batch_size: int = 256
    train_epochs: int = 100
    # When > 0, overrides train_epochs.
    train_steps: int = 0
    optimizer: str = "lars"
    learning_rate: float = 0.3
    learning_rate_scaling: str = "linear"
    warmup_epochs: float = 10.0
    weight_decay: float = 1e-6
    momentum: float = 0.9
    temperature: float = 0.1
    hidden_norm: bool = True
    lineareval_while_pretraining: bool = True
    zero_init_logits_layer: bool = False
    # Distillation: softmax temperature tau of teacher and student, and the
    # weight alpha of the supervised loss on labelled images (0 = none).
    distill_temperature: float = 1.0
    distill_alpha: float = 0.0
    # Compute the teacher's logits once per image (on the eval view) before
    # training instead of on every augmented view: for big teachers.
    distill_precompute: bool = False
    # After supervised training (finetune, linear_eval, distill), replace the
    # batch-norm moving averages by the mean batch statistics of the final
    # weights over the eval view of the run's own training images (at most
    # bn_recompute_batches full batches). For small labelled sets.
    bn_recompute: bool = False
    bn_recompute_batches: int = 100
    # Which training images: "labelled" (the images the run trained on) or
    # "all" (the whole training split, labels unused: with a label fraction,
    # the unlabeled rest too). Never evaluation images.
    bn_recompute_images: str = "labelled"
    # linear_eval: compute the frozen network's features of every training
    # image once, then train the linear head on them (same result, far less
    # compute). Only when the training view is deterministic: crop_area_min=1
    # (the whole image) and use_flip=False.
    linear_eval_cache_features: bool = False
    precision: str = "float32"
    steps_per_loop: int = 100
    summary_interval: int = 100
    checkpoint_interval: int = 1000
    keep_checkpoint_max: int = 5
    seed: int = 0

    def __post_init__(self):
        _check_choice("mode", self.mode, MODES)
        _check_range("train_batch_size", self.train_batch_size, 1)
        _check_range("eval_batch_size", self.eval_batch_size, 1)
        _check_range("train_epochs", self.train_epochs, 0)
        _check_range("train_steps", self.train_steps, 0)
        check(self.train_epochs > 0 or self.train_steps > 0,
              "one of train_epochs or train_steps must be > 0. Received: "
              f"train_epochs={self.train_epochs}, train_steps={self.train_steps}")
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_range("learning_rate", self.learning_rate, 0)
        _check_choice("learning_rate_scaling", self.learning_rate_scaling,
                      LR_SCALINGS)
        _check_range("warmup_epochs", self.warmup_epochs, 0)
        _check_range("weight_decay", self.weight_decay, 0)
        _check_range("momentum", self.momentum, 0, 1)
        _check_range("temperature", self.temperature, 0, low_inclusive=False)
        _check_range("distill_temperature", self.distill_temperature, 0,
                     low_inclusive=False)
        _check_range("distill_alpha", self.distill_alpha, 0)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("bn_recompute_images", self.bn_recompute_images, BN_RECOMPUTE_IMAGES)
        for name in ("steps_per_loop", "summary_interval", "checkpoint_interval",
                     "keep_checkpoint_max", "bn_recompute_batches"):
            _check_range(name, getattr(self, name), 1)


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    """MoCo-style memory: momentum encoder + FIFO queue of negatives."""
    # Number of queued keys; 0 means plain SimCLR (no memory).
    queue_size: int = 0
    momentum: float = 0.999
    # What each anchor (an online projection) is contrasted with:
    # "both" (default): the mean of SimCLR's loss among the online
    #   projections and a MoCo-style loss whose positive and in-batch
    #   negatives are the momentum encoder's keys, plus the queue;
    # "online": the online projections, plus the queue as extra negatives
    #   (SimCLRv2's description). Nothing ties the online network to the
    #   momentum encoder then, and on mnist5k it escapes the queued keys by
    #   collapsing its embedding (bench/RESULTS.md, "Memory");
    # "momentum": the momentum encoder's keys only, plus the queue (MoCo).
    contrast_keys: str = "both"
    # Temperature of the logits against queued keys; 0 = train.temperature.
    queue_temperature: float = 0.0
    # Each queued key counts as this many negatives in the softmax.
    queue_weight: float = 1.0
    # Subtract the mean of the valid queued keys from each of them (then
    # re-normalise with hidden_norm) before they are used as negatives.
    center_queue: bool = False
    # The queue is filled from the first step but used as negatives only
    # from this step on.
    warmup_steps: int = 0
    # Leave out queued keys that came from an image of the current batch
    # (an image seen again is not a negative of itself).
    exclude_own_images: bool = False
    # Batch norm in this many groups of each replica's 2 x batch images during
    # the pretraining step (the online network, and the momentum encoder with
    # its images shuffled first): the one-device form of MoCo's shuffling BN,
    # so a query and its key are not normalised with the same images. Applies
    # without memory too (ghost batch norm). 0 or 1 = off.
    bn_splits: int = 0

    def __post_init__(self):
        _check_range("queue_size", self.queue_size, 0)
        _check_range("bn_splits", self.bn_splits, 0)
        _check_range("momentum", self.momentum, 0, 1)
        _check_choice("contrast_keys", self.contrast_keys, CONTRAST_KEYS)
        _check_range("queue_temperature", self.queue_temperature, 0)
        _check_range("queue_weight", self.queue_weight, 0, low_inclusive=False)
        _check_range("warmup_steps", self.warmup_steps, 0)


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """What pretraining reports besides its loss: the online linear probe and
    the kNN monitor."""
    # The online linear probe (lineareval_while_pretraining) trains with its
    # own momentum-SGD optimizer at this fixed rate, independent of the
    # pretraining optimizer and learning rate. 0.01: at 0.1 the probe of the
    # digits demo diverged while LARS's learning rate peaked (probe loss 57
    # at step 60) as the features grew; 0.1 suits mnist5k's flagfile.
    probe_learning_rate: float = 0.01
    # Every knn_interval steps (rounded up to whole loops of steps_per_loop;
    # 0 = off) and at the end: weighted kNN top-1 of eval-split images against training
    # images, and the effective rank of the training images' features (the
    # backbone output, eval view, inference mode).
    knn_interval: int = 1000
    knn_k: int = 200
    knn_temperature: float = 0.1
    # At most this many training (bank) / eval (query) images, a seeded
    # random subset; 0 = all.
    knn_bank_size: int = 10000
    knn_eval_size: int = 10000

    def __post_init__(self):
        _check_range("probe_learning_rate", self.probe_learning_rate, 0)
        _check_range("knn_interval", self.knn_interval, 0)
        _check_range("knn_k", self.knn_k, 1)
        _check_range("knn_temperature", self.knn_temperature, 0, low_inclusive=False)
        _check_range("knn_bank_size", self.knn_bank_size, 0)
        _check_range("knn_eval_size", self.knn_eval_size, 0)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """TF Hub SavedModel export."""
    # Directory (inside the model dir when relative) for hub modules.
    export_dir: str = "hub"
    keep_hub_module_max: int = 1
    # Also write the authors' `module(images, trainable=...)` call convention.
    official_call_convention: bool = False
    # Write hub modules when a training run finishes.
    export_at_end: bool = True

    def __post_init__(self):
        check(bool(self.export_dir), "export_dir must be set. Received: ''")
        _check_range("keep_hub_module_max", self.keep_hub_module_max, 0)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything one run needs."""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    memory: MemoryConfig = dataclasses.field(default_factory=MemoryConfig)
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: Dict[str, Dict[str, Any]]) -> "ExperimentConfig":
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(values) - set(sections)
        check(not unknown, f"unknown config sections: {sorted(unknown)}")
        built = {}
        for name, section in values.items():
            section_cls = _SECTION_TYPES[name]
            known = {f.name for f in dataclasses.fields(section_cls)}
            bad = set(section) - known
            check(not bad, f"unknown {name} config fields: {sorted(bad)}")
            built[name] = section_cls(**section)
        return cls(**built)

    def override(self, **dotted: Any) -> "ExperimentConfig":
        """Returns a copy with fields replaced: override(**{'model.depth': 18})."""
        sections = {}
        for key, value in dotted.items():
            section, _, field = key.partition(".")
            check(section in _SECTION_TYPES and field,
                  f"override keys look like 'section.field' with section in "
                  f"{sorted(_SECTION_TYPES)}. Received: {key!r}")
            sections.setdefault(section, {})[field] = value
        values = self.to_dict()
        for section, fields in sections.items():
            known = {f.name for f in dataclasses.fields(_SECTION_TYPES[section])}
            bad = set(fields) - known
            check(not bad, f"unknown {section} config fields: {sorted(bad)}")
            values[section].update(fields)
        return ExperimentConfig.from_dict(values)


_SECTION_TYPES = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "memory": MemoryConfig,
    "monitor": MonitorConfig,
    "export": ExportConfig,
}
