"""Projection and supervised heads."""
from simclr_tf2.heads.projection_head import (ProjectionHead, SupervisedHead,
                                              num_projection_layers, resolve_selector)
