"""simclr_tf2: SimCLRv2 in TensorFlow 2 / tf_keras.

Public API:
  build_resnet(depth, width_multiplier, sk_ratio=0.0, se_ratio=0.0,
               cifar_stem=False, ...) -> tf_keras model, images -> endpoint dict
  get_preset(name) -> ExperimentConfig
"""
from simclr_tf2.backbones import ENDPOINTS, ResNet, build_resnet, build_resnet_from_config
from simclr_tf2.configs import (DataConfig, ExperimentConfig, ExportConfig, MemoryConfig,
                                ModelConfig, TrainConfig, get_preset, preset_names)

__version__ = "0.1.0"
