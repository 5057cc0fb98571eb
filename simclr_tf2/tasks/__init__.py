"""The one place that maps a run's mode to what it does.

Training modes (configs.modes.TRAIN_MODES) each have a Task; the run modes
`eval` (evaluate a trained run) and `train_then_eval` (train `train_mode`,
then evaluate) are read here too. Everywhere else asks the task
(`task.contrastive`, `task.supervised`, ...) instead of comparing names.
"""
from typing import Any, Dict, Optional

from simclr_tf2.configs.fields import check
from simclr_tf2.configs.modes import RUN_MODES, TRAIN_MODES
from simclr_tf2.tasks.base import Task, supervised_loss  # noqa: F401 (public)
from simclr_tf2.tasks.pretrain import PretrainTask
from simclr_tf2.tasks.supervised import DistillTask, FinetuneTask, LinearEvalTask

TASKS = {task.mode: task for task in (PretrainTask(), FinetuneTask(), LinearEvalTask(),
                                      DistillTask())}
assert tuple(TASKS) == TRAIN_MODES


def task_for(mode: str) -> Task:
    """The task of training mode `mode`."""
    check(mode in TASKS, f"mode must be one of {list(TRAIN_MODES)}. Received: {mode!r}")
    return TASKS[mode]


def training_mode(run_mode: str, train_mode: str) -> Optional[str]:
    """What a run of `run_mode` trains: itself for a training mode,
    `train_mode` for train_then_eval, nothing for eval."""
    if run_mode in TASKS:
        return run_mode
    return train_mode if run_mode == "train_then_eval" else None


def evaluates(run_mode: str) -> bool:
    """Whether a run of `run_mode` evaluates the supervised head at the end."""
    return run_mode in ("eval", "train_then_eval")


def writes_record(run_mode: str) -> bool:
    """Whether a run of `run_mode` records its settings in config.json (an
    eval reads a run; it does not become one)."""
    return run_mode != "eval"


def recorded_mode(run: Dict[str, Any], default: str) -> str:
    """The training mode of a run record (config.json's 'run'), else `default`."""
    mode = run.get("mode")
    if mode in RUN_MODES and mode not in TASKS:
        return run.get("train_mode", default)
    return mode if mode in TASKS else default
