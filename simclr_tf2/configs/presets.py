"""Named presets: the paper's runs as data, plus a tiny preset for tests.

ImageNet presets follow the SimCLRv2 README recipe (B=4096, LARS, lr 0.075
with sqrt scaling, weight decay 1e-4, temperature 0.1, 100 epochs, global BN).
CIFAR presets follow the SimCLR CIFAR-10 recipe (B=512, lr 1.0 sqrt,
temperature 0.5, colour strength 0.5, no blur, 3x3 stem).
"""
from typing import Dict, List

from simclr_tf2.configs.schema import (DataConfig, ExperimentConfig, ExportConfig,
                                       MemoryConfig, ModelConfig, MonitorConfig,
                                       TrainConfig)
from simclr_tf2.errors import ConfigError

# sk_ratio of every released selective-kernel model.
RELEASED_SK_RATIO = 0.0625

# (depth, width, selective kernels) of the paper's ImageNet backbones.
_IMAGENET_BACKBONES = [
    (50, 1, False), (50, 1, True), (50, 2, False), (50, 2, True),
    (101, 1, False), (101, 1, True), (101, 2, False), (101, 2, True),
    (152, 1, False), (152, 1, True), (152, 2, False), (152, 2, True),
    (152, 3, False), (152, 3, True),
]


def _imagenet_preset(depth: int, width: int, sk: bool) -> ExperimentConfig:
    return ExperimentConfig(
        model=ModelConfig(depth=depth, width_multiplier=width,
                          sk_ratio=RELEASED_SK_RATIO if sk else 0.0,
                          num_classes=1000),
        data=DataConfig(dataset="imagenet2012", image_size=224,
                        eval_split="validation"),
        train=TrainConfig(train_batch_size=4096, train_epochs=100,
                          learning_rate=0.075, learning_rate_scaling="sqrt",
                          weight_decay=1e-4, temperature=0.1,
                          precision="mixed_bfloat16"),
        memory=MemoryConfig(queue_size=0),
    )


def _cifar_preset(depth: int) -> ExperimentConfig:
    return ExperimentConfig(
        model=ModelConfig(depth=depth, cifar_stem=True, num_classes=10),
        data=DataConfig(dataset="cifar10", image_size=32,
                        color_jitter_strength=0.5, use_blur=False),
        train=TrainConfig(train_batch_size=512, train_epochs=800,
                          learning_rate=1.0, learning_rate_scaling="sqrt",
                          weight_decay=1e-4, temperature=0.5),
    )


def _authors_preset() -> ExperimentConfig:
    """The defaults of the authors' tf2/run.py (google-research/simclr): what
    their command lines mean where they leave a flag out. Float32, as their
    TF2 code trains; a checkpoint every epoch."""
    return ExperimentConfig(
        model=ModelConfig(depth=50, width_multiplier=1, sk_ratio=0.0, se_ratio=0.0,
                          cifar_stem=False, bn_momentum=0.9, sync_bn=True,
                          fine_tune_after_block=-1, proj_head_mode="nonlinear",
                          proj_out_dim=128, num_proj_layers=3, ft_proj_selector=0,
                          num_classes=1000),
        data=DataConfig(dataset="imagenet2012", image_size=224, train_split="train",
                        eval_split="validation", color_jitter_strength=1.0,
                        use_blur=True, cache=False),
        train=TrainConfig(train_batch_size=512, eval_batch_size=256, train_epochs=100,
                          train_steps=0, eval_steps=0, optimizer="lars",
                          learning_rate=0.3, learning_rate_scaling="linear",
                          warmup_epochs=10, weight_decay=1e-6, momentum=0.9,
                          temperature=0.1, hidden_norm=True,
                          lineareval_while_pretraining=True,
                          zero_init_logits_layer=False, keep_checkpoint_max=5,
                          checkpoint_epochs=1, precision="float32"),
        memory=MemoryConfig(queue_size=0),
        export=ExportConfig(keep_hub_module_max=1),
    )


def _tiny_preset() -> ExperimentConfig:
    """A ResNet-18 at quarter width on 32 px digits: seconds per step on a CPU.
    The kNN monitor is off (tests); the demo's flagfiles turn it on."""
    return ExperimentConfig(
        model=ModelConfig(depth=18, width_multiplier=0.25, cifar_stem=True,
                          proj_out_dim=32, num_classes=10),
        data=DataConfig(dataset="digits", image_size=32,
                        color_jitter_strength=0.5, use_blur=False),
        train=TrainConfig(train_batch_size=32, eval_batch_size=64,
                          train_epochs=1, learning_rate=1.0,
                          learning_rate_scaling="sqrt", warmup_epochs=0,
                          weight_decay=1e-4, temperature=0.5,
                          steps_per_loop=10, summary_interval=10,
                          checkpoint_interval=50),
        monitor=MonitorConfig(knn_interval=0),
    )


def _build_presets() -> Dict[str, ExperimentConfig]:
    presets = {}
    for depth, width, sk in _IMAGENET_BACKBONES:
        presets[f"r{depth}_{width}x_sk{int(sk)}"] = _imagenet_preset(depth, width, sk)
    presets["cifar_r18"] = _cifar_preset(18)
    presets["cifar_r50"] = _cifar_preset(50)
    presets["tiny"] = _tiny_preset()
    presets["authors"] = _authors_preset()
    return presets


_PRESETS = _build_presets()


def preset_names() -> List[str]:
    return sorted(_PRESETS)


def get_preset(name: str) -> ExperimentConfig:
    """Returns the named preset, e.g. 'r50_1x_sk0', 'r152_3x_sk1', 'tiny'."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available presets: "
                         f"{', '.join(preset_names())}")
    return _PRESETS[name]
