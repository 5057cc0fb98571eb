"""Training: the learner (model + optimizer + memory + steps) and the loop."""
from simclr_tf2.tasks import supervised_loss  # noqa: F401
from simclr_tf2.training.learner import Learner, ScheduleSteps, schedule_steps  # noqa: F401
