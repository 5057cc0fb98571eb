"""Models assembled from backbone and heads."""
from simclr_tf2.models.simclr_model import (SimCLRModel, build_model, model_config_for,
                                           model_mode)
