"""SimCLRModel: backbone + projection head + optional supervised head."""
import dataclasses
from typing import Dict, Sequence, Union

import tensorflow as tf
import tf_keras

from simclr_tf2.backbones.resnet import build_resnet_from_config, norm_settings
from simclr_tf2.configs.schema import ModelConfig, check
from simclr_tf2.heads.projection_head import (ProjectionHead, SupervisedHead,
                                              num_projection_layers, resolve_selector)

# The head layouts (the task picks one: Task.layout).
MODEL_MODES = ("pretrain", "finetune")


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

