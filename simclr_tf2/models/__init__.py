"""Models assembled from backbone and heads."""
from simclr_tf2.models.simclr_model import SimCLRModel  # noqa: F401
