"""simclr_tf2: SimCLRv2 in TensorFlow 2 / tf_keras.

Public API:
  build_resnet(depth, width_multiplier, sk_ratio=0.0, se_ratio=0.0,
               cifar_stem=False, ...) -> tf_keras model, images -> endpoint dict
  get_preset(name) -> ExperimentConfig
  export_hub_modules(model or model_dir, export_dir) -> <export_dir>/<step>
  load_hub_module(path, trainable=False) -> hub.KerasLayer
  load_official_savedmodel(path) -> SimCLRModel with the released weights
"""
import os as _os

# oneDNN kernels make CPU training ~1.4x faster (bench/RESULTS.md); TensorFlow
# enables them by itself only on CPUs with AVX-512 VNNI/BF16 or AMX. Takes effect
# only when simclr_tf2 is imported before TensorFlow; set
# TF_ENABLE_ONEDNN_OPTS=0 to opt out.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# TensorFlow's C++ start-up notices (oneDNN, CPU features, CUDA stubs) are
# hidden unless the user set TF_CPP_MIN_LOG_LEVEL. On a machine without an
# NVIDIA driver, TensorFlow's CUDA build also logs a failed cuInit as an
# error on every start; only level 3 hides that, so there it is 3 (errors
# that matter still reach Python as exceptions). Takes effect only when
# simclr_tf2 is imported before TensorFlow, as every entry point here does.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL",
                       "2" if _os.path.exists("/proc/driver/nvidia") else "3")

from simclr_tf2.backbones import ENDPOINTS, ResNet, build_resnet, build_resnet_from_config
from simclr_tf2.configs import (DataConfig, ExperimentConfig, ExportConfig, MemoryConfig,
                                ModelConfig, TrainConfig, get_preset, preset_names)

from simclr_tf2.export import (export_hub_modules, load_hub_module,
                               load_official_savedmodel)

__version__ = "0.1.0"
