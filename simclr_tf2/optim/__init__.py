"""Optimizers, weight decay and learning-rate schedules."""
from simclr_tf2.optim.optimizers import (LARS_EXCLUDED, OPTIMIZERS, build_optimizer,
                                         weight_decay_loss)
from simclr_tf2.optim.schedules import (scaled_learning_rate, warmup_cosine_schedule,
                                        warmup_steps_for)
