"""Typed, validated configuration for every stage of SimCLRv2.

Flags (the entry point) only fill these in; library code takes them as
arguments and never reads global state. Every config validates itself on
construction and names the bad value in its error.
"""
import dataclasses
import json
from typing import Any, Dict, Optional

from simclr_tf2.configs.fields import check, check_choice, check_range, setting

RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)
PROJ_HEAD_MODES = ("none", "linear", "nonlinear")
OPTIMIZERS = ("lars", "momentum", "adam")
LR_SCALINGS = ("linear", "sqrt")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
BN_RECOMPUTE_IMAGES = ("labelled", "all")
CONTRAST_KEYS = ("online", "momentum", "both")
AUGMENT_ON = ("auto", "host", "device")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Backbone and heads."""
    depth: int = setting(50, "ResNet depth: 18, 34, 50, 101, 152 or 200.")
    width_multiplier: float = setting(1.0,
        "ResNet width multiplier (1, 2, 3; fractions for small models).")
    sk_ratio: float = setting(0.0,
        "Selective-kernel ratio; 0 = off, 0.0625 as in the released SK models (bottleneck"
        " ResNets only).")
    se_ratio: float = setting(0.0, "Squeeze-excite ratio; 0 = off.")
    cifar_stem: bool = setting(False, "3x3 stride-1 stem without max-pool (32 px images).")
    bn_momentum: float = setting(0.9, "Batch-norm moving-average decay.")
    bn_epsilon: float = setting(1e-5, "Batch-norm epsilon.")
    sync_bn: bool = setting(True, "Cross-replica (global) batch norm, as in the paper; the "
                                  "same as plain batch norm on one replica.")
    fine_tune_after_block: int = setting(-1,
        "Fine-tuning only: freeze the stem and block groups 1..k (-1 trains all, 4 = "
        "linear eval).")
    proj_head_mode: str = setting("nonlinear", "Projection head: none, linear or nonlinear.")
    proj_out_dim: int = setting(128, "Width of the projection output.")
    num_proj_layers: int = setting(3, "Projection layers (nonlinear mode; 3 in SimCLRv2).")
    ft_proj_selector: int = setting(0,
        "Fine-tune from this head layer: 0 = backbone output, 1 = first projection layer "
        "(SimCLRv2), -1 = last.")
    num_classes: int = setting(0, "Supervised head classes; 0 = none. Must match the data.")

    def __post_init__(self):
        check_choice("depth", self.depth, RESNET_DEPTHS)
        check_range("width_multiplier", self.width_multiplier, 0,
                     low_inclusive=False)
        check_range("sk_ratio", self.sk_ratio, 0)
        check_range("se_ratio", self.se_ratio, 0)
        check(not (self.sk_ratio > 0 and self.depth < 50),
              f"sk_ratio applies to bottleneck blocks (depth >= 50); depth "
              f"{self.depth} uses basic blocks. Received: sk_ratio={self.sk_ratio}")
        check_range("bn_momentum", self.bn_momentum, 0, 1)
        check_range("bn_epsilon", self.bn_epsilon, 0, low_inclusive=False)
        check_range("fine_tune_after_block", self.fine_tune_after_block, -1, 4)
        check_choice("proj_head_mode", self.proj_head_mode, PROJ_HEAD_MODES)
        check_range("proj_out_dim", self.proj_out_dim, 1)
        check_range("num_proj_layers", self.num_proj_layers, 1)
        check_range("num_classes", self.num_classes, 0)
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
    dataset: str = setting("digits",
        "digits or mnist5k (built in, offline), folder (image folders), tfrecord (TFRecord "
        "shards), or a tensorflow-datasets name such as imagenet2012, cifar10.")
    data_dir: Optional[str] = setting(None,
        "dataset=folder: the image folder (split sub-folders such as train/ and val/, "
        "class sub-folders in each). dataset=tfrecord: a directory of <split>-* shards "
        "or a file pattern with {split} (gs://bucket/imagenet/{split}-*). tfds: its "
        "data_dir.")
    index_dir: Optional[str] = setting(None,
        "Where the listings of image folders and the indexes of TFRecord shards are "
        "kept (default: <model_dir>/data_index); a directory shared by several runs, "
        "such as one beside the data, lists each folder once for all of them.")
    image_size: int = setting(32, "Side of the (square) training images in pixels.")
    train_split: str = setting("train",
        "Training split: a tfds split, an image folder's sub-folder (the folder itself "
        "when it has no split sub-folders) or the {split} of TFRecord shards.")
    eval_split: str = setting("test", "Evaluation split (must exist; never the training "
                                      "folder itself).")
    label_fraction: float = setting(1.0,
        "Fine-tuning: stratified fraction of the training labels to use (0.01, 0.1, ...).")
    label_ids_file: Optional[str] = setting(None,
        "Fine-tuning: file of example ids (one per line) that defines the labelled "
        "subset.")
    color_jitter_strength: float = setting(1.0,
        "Colour jitter strength s (1.0 ImageNet, 0.5 CIFAR).")
    use_blur: bool = setting(True, "Gaussian blur in pretraining views.")
    crop_area_min: float = setting(0.08,
        "Smallest area fraction of the random resized crop (paper 0.08; larger for small "
        "images such as digits).")
    use_flip: bool = setting(True,
        "Random horizontal flip in pretraining and fine-tuning views (off for "
        "orientation-sensitive images such as digits).")
    cache: bool = setting(False,
        "Hold the encoded images (as stored, not decoded) in host memory after the first"
        " read, so later passes read no file; refused, with the size it needs, when it"
        " would take more than half the available memory.")
    xla_augment: bool = setting(True, "XLA-compile the colour distortion of pretraining "
        "views >= 128 px (same views to round-off, 8-14% less CPU at 224 px; compiled once "
        "per process, in under a second).")
    augment_on: str = setting("auto",
        "Where pretraining views get their colour distortion and blur: host (in the"
        " tf.data pipeline) or device (the host ships 8-bit crops and each view's drawn"
        " parameters; the replica step applies them to the whole batch: same views to"
        " round-off, host CPU freed for decoding); auto: device when the replicas are"
        " GPUs or TPUs, host on a CPU-only run.")
    data_service: Optional[str] = setting(None,
        "grpc://host:port of a tf.data service dispatcher (python -m"
        " simclr_tf2.data_service) that runs the training input pipeline on its workers;"
        " each example still comes once per pass, with the same views as locally.")
    shuffle_buffer: int = setting(10000,
        "TFRecord shards and tfds: each pass reads chunks of 64 records in a seeded order"
        " and permutes every this many consecutive examples (about three such windows of"
        " encoded images are held in memory); folders, built-in data and cache=True"
        " permute every pass fully.")
    seed: int = setting(0,
        "Seed of shuffling, augmentation and label subsets.", flag="data_seed")
    tfds_download: bool = setting(False,
        "Let tfds download a dataset missing from data_dir (off: never download).")
    verify_images: bool = setting(False,
        "Decode every image of a folder once before training (in parallel, with "
        "progress; kept in the index) and leave out those that fail. Off: an image "
        "that fails to decode is skipped, counted and named when training meets it.")

    def __post_init__(self):
        check(bool(self.dataset), "dataset must be set. Received: dataset=''")
        check_range("image_size", self.image_size, 8)
        check_range("label_fraction", self.label_fraction, 0, 1,
                     low_inclusive=False)
        check_range("color_jitter_strength", self.color_jitter_strength, 0)
        check_range("crop_area_min", self.crop_area_min, 0, 1, low_inclusive=False)
        check_range("shuffle_buffer", self.shuffle_buffer, 0)
        check_choice("augment_on", self.augment_on, AUGMENT_ON)
        check(not self.data_service or self.data_service.startswith("grpc://"),
              "data_service must be the dispatcher's address, grpc://host:port. "
              f"Received: {self.data_service!r}")
        check(self.dataset not in ("folder", "tfrecord") or bool(self.data_dir),
              f"dataset={self.dataset!r} needs data_dir pointing at the "
              f"{'image folder' if self.dataset == 'folder' else 'TFRecord shards'}. "
              "Received: data_dir=None")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the training loop (what a run trains is the run's
    mode, RunConfig.mode, not part of the experiment)."""
    train_batch_size: int = setting(512, "Global training batch size.")
    eval_batch_size: int = setting(256, "Global evaluation batch size.")
    train_epochs: int = setting(100, "Training length in epochs.")
    train_steps: int = setting(0, "Training length in steps; overrides train_epochs when > 0.")
    optimizer: str = setting("lars", "lars, momentum or adam.")
    learning_rate: float = setting(0.3, "Base learning rate (scaled by learning_rate_scaling).")
    learning_rate_scaling: str = setting("linear",
        "linear (lr x B/256) or sqrt (lr x sqrt(B)).")
    warmup_epochs: float = setting(10.0, "Linear warm-up epochs before cosine decay.")
    weight_decay: float = setting(1e-6, "Weight decay.")
    momentum: float = setting(0.9, "Optimizer momentum.")
    temperature: float = setting(0.1, "NT-Xent temperature.")
    hidden_norm: bool = setting(True, "L2-normalise projections in NT-Xent.")
    lineareval_while_pretraining: bool = setting(True,
        "Train a linear head on stop-gradient features while pretraining (needs labels).")
    zero_init_logits_layer: bool = setting(False,
        "Start the supervised head at zero when fine-tuning.")
    distill_temperature: float = setting(1.0,
        "Distillation: softmax temperature of teacher and student.")
    distill_alpha: float = setting(0.0,
        "Distillation: weight of the supervised loss on the labelled subset (0 = "
        "unlabeled only).")
    distill_precompute: bool = setting(False,
        "Distillation: teacher logits once per image (eval view) before training, kept in"
        " the run directory for restarts, for small datasets with big teachers (an images"
        " x classes table, refused above 2 GB); default: the teacher inside each step on"
        " every augmented view, in memory that does not grow with the data.")
    bn_recompute: bool = setting(False,
        "After supervised training, recompute the batch-norm statistics over the eval "
        "view of the run's own training images (final weights; never eval data): for "
        "small labelled sets.")
    bn_recompute_batches: int = setting(100, "bn_recompute: at most this many full batches.")
    bn_recompute_images: str = setting("labelled",
        "bn_recompute over which training images: labelled (those the run trained on) or "
        "all (the whole training split, labels unused; with a label fraction, the "
        "unlabeled rest too).")
    linear_eval_cache_features: bool = setting(False,
        "Linear eval: compute the frozen features of each training image once and train "
        "the linear head on them (needs crop_area_min=1 and nouse_flip: a deterministic "
        "training view).")
    precision: str = setting("float32",
        "float32, mixed_bfloat16 (TPU) or mixed_float16 (GPU, with loss scaling).")
    steps_per_loop: int = setting(100, "Steps per host loop (progress line).")
    summary_interval: int = setting(100,
        "Steps between TensorBoard summaries (a multiple of steps_per_loop).")
    checkpoint_interval: int = setting(1000, "Steps between checkpoints.")
    checkpoint_epochs: float = setting(0.0,
        "Checkpoint every this many epochs instead of every checkpoint_interval steps "
        "(0 = use checkpoint_interval).")
    eval_steps: int = setting(0, "Evaluate on this many eval batches (0 = the whole "
                              "eval split).")
    keep_checkpoint_max: int = setting(5, "Checkpoints to keep.")
    seed: int = setting(0, "Seed of model initialisation.")

    def __post_init__(self):
        check_range("train_batch_size", self.train_batch_size, 1)
        check_range("eval_batch_size", self.eval_batch_size, 1)
        check_range("train_epochs", self.train_epochs, 0)
        check_range("train_steps", self.train_steps, 0)
        check(self.train_epochs > 0 or self.train_steps > 0,
              "one of train_epochs or train_steps must be > 0. Received: "
              f"train_epochs={self.train_epochs}, train_steps={self.train_steps}")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_range("learning_rate", self.learning_rate, 0)
        check_choice("learning_rate_scaling", self.learning_rate_scaling,
                      LR_SCALINGS)
        check_range("warmup_epochs", self.warmup_epochs, 0)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("momentum", self.momentum, 0, 1)
        check_range("temperature", self.temperature, 0, low_inclusive=False)
        check_range("distill_temperature", self.distill_temperature, 0,
                     low_inclusive=False)
        check_range("distill_alpha", self.distill_alpha, 0)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("bn_recompute_images", self.bn_recompute_images, BN_RECOMPUTE_IMAGES)
        check_range("checkpoint_epochs", self.checkpoint_epochs, 0)
        check_range("eval_steps", self.eval_steps, 0)
        for name in ("steps_per_loop", "summary_interval", "checkpoint_interval",
                     "keep_checkpoint_max", "bn_recompute_batches"):
            check_range(name, getattr(self, name), 1)


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    """MoCo-style memory: momentum encoder + FIFO queue of negatives."""
    queue_size: int = setting(0, "Memory queue of negatives (0 = plain SimCLR).")
    momentum: float = setting(0.999, "Momentum-encoder EMA decay.", flag="memory_momentum")
    contrast_keys: str = setting("both",
        "With memory: both (default: SimCLR's loss among the online projections averaged "
        "with a MoCo-style loss against the momentum encoder's keys and the queue), "
        "online (the online projections plus the queue as extra negatives: the paper's "
        "description, which collapses on mnist5k) or momentum (MoCo: keys only).",
        flag="memory_contrast_keys")
    queue_temperature: float = setting(0.0,
        "With memory: temperature of the logits against queued keys (0 = --temperature).")
    queue_weight: float = setting(1.0,
        "With memory: each queued key counts as this many negatives in the softmax (1 = "
        "plain).")
    center_queue: bool = setting(False,
        "With memory: subtract the queue's mean key from the queued keys.")
    warmup_steps: int = setting(0,
        "With memory: use the queue as negatives only from this step on.",
        flag="memory_warmup_steps")
    exclude_own_images: bool = setting(False,
        "With memory: leave out queued keys of the current batch's own images.")
    bn_splits: int = setting(0,
        "Pretraining: batch norm in this many groups of each replica's 2 x batch images, "
        "the momentum encoder's shuffled first (one-device shuffling BN, as in MoCo; "
        "without memory, ghost BN); 0 = whole batch.", flag="memory_bn_splits")

    def __post_init__(self):
        check_range("queue_size", self.queue_size, 0)
        check_range("bn_splits", self.bn_splits, 0)
        check_range("momentum", self.momentum, 0, 1)
        check_choice("contrast_keys", self.contrast_keys, CONTRAST_KEYS)
        check_range("queue_temperature", self.queue_temperature, 0)
        check_range("queue_weight", self.queue_weight, 0, low_inclusive=False)
        check_range("warmup_steps", self.warmup_steps, 0)


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """What pretraining reports besides its loss: the online linear probe and
    the kNN monitor."""
    # 0.01: at 0.1 the digits demo's probe diverged while LARS's rate peaked.
    probe_learning_rate: float = setting(0.01,
        "Pretraining: learning rate of the online linear probe's own momentum-SGD "
        "optimizer (fixed; independent of --learning_rate). If probe_loss climbs, lower "
        "it.")
    knn_interval: int = setting(1000,
        "Pretraining: every this many steps (rounded up to whole loops of steps_per_loop)"
        " and at the end, report kNN top-1 and effective rank of the backbone (0 = off).")
    knn_k: int = setting(200, "kNN monitor: neighbours that vote.")
    knn_temperature: float = setting(0.1, "kNN monitor: votes weigh exp(cosine / temperature).")
    knn_bank_size: int = setting(10000,
        "kNN monitor: at most this many training images in the bank, a seeded random "
        "subset (0 = all).")
    knn_eval_size: int = setting(10000,
        "kNN monitor: at most this many eval-split images as queries (0 = all).")
    collapse_alarm: float = setting(0.25,
        "Pretraining: warn once when the projections' effective rank (runs with the "
        "memory, per loop) or the backbone's over the kNN monitor's bank (each report) "
        "falls below this fraction of its peak, the collapse of bench/RESULTS.md's "
        "'Memory' (0 = off).")
    stop_on_collapse: bool = setting(False,
        "End the run when the collapse alarm fires (the last checkpoint is kept).")
    console_diagnostics: bool = setting(False,
        "Also print the memory's per-step diagnostics (effective ranks, cosines, queue) on"
        " the console; they are always in TensorBoard.")

    def __post_init__(self):
        check_range("probe_learning_rate", self.probe_learning_rate, 0)
        check_range("knn_interval", self.knn_interval, 0)
        check_range("knn_k", self.knn_k, 1)
        check_range("knn_temperature", self.knn_temperature, 0, low_inclusive=False)
        check_range("knn_bank_size", self.knn_bank_size, 0)
        check_range("knn_eval_size", self.knn_eval_size, 0)
        check_range("collapse_alarm", self.collapse_alarm, 0, 1)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """TF Hub SavedModel export."""
    export_dir: str = setting("hub", "Hub module directory (relative to model_dir).")
    keep_hub_module_max: int = setting(1, "Hub module exports to keep.")
    official_call_convention: bool = setting(True,
        "Exports accept the authors' module(images, trainable=...) call as well as "
        "training=; --noofficial_call_convention leaves it out (a smaller SavedModel).")
    export_at_end: bool = setting(True,
        "Export hub modules (one per projection-head layer) when training finishes.")

    def __post_init__(self):
        check(bool(self.export_dir), "export_dir must be set. Received: ''")
        check_range("keep_hub_module_max", self.keep_hub_module_max, 0)


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
            if name == "train":
                # Runs and exports written before 0.1.0 recorded an unused
                # train.mode (always "pretrain"); the mode is the run's.
                section = {k: v for k, v in section.items() if k != "mode"}
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
