"""Backbones: the SimCLRv2 ResNet family."""
from simclr_tf2.backbones.blocks import BlockGroup, ProjectionShortcut, ResidualBlock, ResNetStem
from simclr_tf2.backbones.resnet import (ENDPOINTS, RESNET_SPECS, ResNet, build_resnet,
                                         build_resnet_from_config)
