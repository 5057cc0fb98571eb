"""Training: the learner (model + optimizer + memory + steps) and the loop."""
from simclr_tf2.training.learner import (Learner, ScheduleSteps,
                                         schedule_steps, supervised_loss)
