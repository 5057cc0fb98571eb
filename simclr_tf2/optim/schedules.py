"""Learning-rate scaling and the warm-up + cosine schedule of SimCLR."""
import math

import tf_keras
from official.modeling.optimization import lr_schedule

from simclr_tf2.configs.schema import LR_SCALINGS, check



def scaled_learning_rate(base_learning_rate: float, batch_size: int,
                         scaling: str = "linear") -> float:
    """base * B / 256 ('linear') or base * sqrt(B) ('sqrt'), B = global batch."""
    check(scaling in LR_SCALINGS, f"learning_rate_scaling must be one of "
          f"{list(LR_SCALINGS)}. Received: {scaling!r}")
    check(batch_size >= 1, f"batch_size must be >= 1. Received: {batch_size!r}")
    if scaling == "linear":
        return base_learning_rate * batch_size / 256.0
    return base_learning_rate * math.sqrt(batch_size)


def warmup_cosine_schedule(peak_learning_rate: float, total_steps: int,
                           warmup_steps: int = 0
                           ) -> tf_keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up from 0 to the peak over `warmup_steps`, then cosine decay
    to 0 at `total_steps`. Built from tf-models-official's LinearWarmup and
    CosineDecayWithOffset."""
    check(total_steps >= 1, f"total_steps must be >= 1. Received: {total_steps!r}")
    check(0 <= warmup_steps <= total_steps, "warmup_steps must be in "
          f"[0, total_steps={total_steps}]. Received: {warmup_steps!r}")
    cosine = lr_schedule.CosineDecayWithOffset(
        offset=warmup_steps, initial_learning_rate=peak_learning_rate,
        decay_steps=max(total_steps - warmup_steps, 1), alpha=0.0)
    if warmup_steps == 0:
        return cosine
    return lr_schedule.LinearWarmup(cosine, warmup_steps=warmup_steps,
                                    warmup_learning_rate=0.0)


def warmup_steps_for(warmup_epochs: float, steps_per_epoch: int) -> int:
    """Warm-up length in steps, rounded like the authors' code (truncation)."""
    return int(round(warmup_epochs * steps_per_epoch))
