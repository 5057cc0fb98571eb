"""SimCLRModel: backbone + projection head + optional supervised head."""
import dataclasses
from typing import Dict, Sequence, Union

import tensorflow as tf
import tf_keras

from simclr_tf2.backbones.resnet import build_resnet_from_config, norm_settings
from simclr_tf2.configs.modes import TRAIN_MODES
from simclr_tf2.configs.schema import ExperimentConfig, ModelConfig, check
from simclr_tf2.heads.projection_head import (ProjectionHead, SupervisedHead,
                                              num_projection_layers, resolve_selector)

MODEL_MODES = ("pretrain", "finetune")


def model_mode(train_mode: str) -> str:
    """The SimCLRModel mode a training mode builds: only pretraining keeps
    the whole projection head."""
    check(train_mode in TRAIN_MODES, f"mode must be one of {list(TRAIN_MODES)}. "
          f"Received: mode={train_mode!r}")
    return "pretrain" if train_mode == "pretrain" else "finetune"


def model_config_for(config: ExperimentConfig, mode: str) -> ModelConfig:
    """The ModelConfig a run of training mode `mode` builds: linear_eval
    freezes the backbone; pretraining without linear eval has no supervised
    head."""
    model_cfg = config.model
    if mode != "pretrain":
        check(model_cfg.num_classes > 0, f"mode {mode!r} needs a supervised "
              "head: set model.num_classes to the number of classes")
    if mode == "linear_eval":
        model_cfg = dataclasses.replace(model_cfg, fine_tune_after_block=4)
    if mode == "pretrain" and not config.train.lineareval_while_pretraining:
        model_cfg = dataclasses.replace(model_cfg, num_classes=0)
    return model_cfg


class SimCLRModel(tf_keras.Model):
    """Maps one or more image views to a dict of named outputs.

    Inputs: a tensor [N, H, W, 3] or a list/tuple of views (e.g. the two
    augmented views of pretraining), each [N, H, W, 3] float in [0, 1]. Views
    are concatenated along the batch axis, so every output has
    num_views * N rows, view 1 first.

    Outputs: every backbone endpoint, `proj_head_input`, `proj_head_layer{k}`
    for each projection layer built, `proj_head_output` (the last layer
    built), `finetune_input` (selected by `ft_proj_selector`) and
    `logits_sup` when there is a supervised head (num_classes > 0).

    mode='pretrain': the full projection head; the supervised head, if any,
      reads stop_gradient(finetune_input) (linear eval while pretraining), so
      labels never shape the representation.
    mode='finetune': the projection layers after the selected one are not
      built; the supervised head reads finetune_input with gradients.
    """

    def __init__(self, config: ModelConfig, mode: str = "pretrain",
                 zero_init_logits_layer: bool = False, **kwargs):
        kwargs.setdefault("name", "simclr")
        super().__init__(**kwargs)
        check(mode in MODEL_MODES,
              f"mode must be one of {list(MODEL_MODES)}. Received: mode={mode!r}")
        self.config = config
        self.mode = mode
        self.zero_init_logits_layer = zero_init_logits_layer
        total = num_projection_layers(config.proj_head_mode, config.num_proj_layers)
        self.selector_index = resolve_selector(config.ft_proj_selector, total)
        self.backbone = build_resnet_from_config(config)
        self.projection_head = ProjectionHead(
            config.proj_head_mode, config.num_proj_layers, config.proj_out_dim,
            keep_layers=total if mode == "pretrain" else self.selector_index,
            name="projection_head", norm=norm_settings(config))
        self.supervised_head = (
            SupervisedHead(config.num_classes, zero_init=zero_init_logits_layer)
            if config.num_classes > 0 else None)

    def call(self, views: Union[tf.Tensor, Sequence[tf.Tensor]],
             training=None) -> Dict[str, tf.Tensor]:
        if isinstance(views, (list, tuple)):
            check(len(views) >= 1, "SimCLRModel needs at least one view")
            images = tf.concat(list(views), axis=0) if len(views) > 1 else views[0]
        else:
            images = views
        outputs = dict(self.backbone(images, training=training))
        hiddens = self.projection_head(outputs["final_avg_pool"], training=training)
        outputs["proj_head_input"] = hiddens[0]
        for k, hidden in enumerate(hiddens[1:], start=1):
            outputs[f"proj_head_layer{k}"] = hidden
        outputs["proj_head_output"] = hiddens[-1]
        finetune_input = hiddens[min(self.selector_index, len(hiddens) - 1)]
        outputs["finetune_input"] = finetune_input
        if self.supervised_head is not None:
            head_input = (tf.stop_gradient(finetune_input) if self.mode == "pretrain"
                          else finetune_input)
            outputs["logits_sup"] = self.supervised_head(head_input)
        return outputs

    def get_config(self):
        return {"name": self.name, "mode": self.mode,
                "zero_init_logits_layer": self.zero_init_logits_layer,
                "config": dataclasses.asdict(self.config)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        return cls(ModelConfig(**config.pop("config")), **config)


def build_model(config: ExperimentConfig, train_mode: str) -> SimCLRModel:
    """The SimCLRModel a run of `train_mode` trains, with its variables
    created (called once on a blank image of the configured size)."""
    model = SimCLRModel(model_config_for(config, train_mode), mode=model_mode(train_mode))
    size = config.data.image_size
    model(tf.zeros([1, size, size, 3]), training=False)
    return model
