"""Training objectives."""
from simclr_tf2.objectives.nt_xent import NTXentResult, gather_from_replicas, nt_xent_loss
from simclr_tf2.objectives.distill import distillation_loss
