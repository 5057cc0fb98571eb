"""Typed configs and named presets."""
from simclr_tf2.configs.presets import RELEASED_SK_RATIO, get_preset, preset_names
from simclr_tf2.configs.schema import (DataConfig, ExperimentConfig, ExportConfig,
                                       MemoryConfig, ModelConfig, MonitorConfig,
                                       TrainConfig)
