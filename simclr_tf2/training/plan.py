"""A run planned once, before anything is written.

`plan_run` makes every check of the settings and the data, lists the data
(once: the index files written later are these listings), picks the
labelled subset and the step schedule, and returns a frozen `RunPlan` that
everything after it reads: training, evaluation, export.
"""
import dataclasses
import os
import time
from typing import Optional, Tuple

import tensorflow as tf

from simclr_tf2.configs.schema import ExperimentConfig
from simclr_tf2.errors import ConfigError
from simclr_tf2.rundir import has_checkpoint, run_dir_of, trained_mode
from simclr_tf2.tasks import Task, evaluates
from simclr_tf2.training.distribution import augment_on, is_chief, make_strategy
from simclr_tf2.training.learner import ScheduleSteps, schedule_steps
from simclr_tf2.training.run_config import RunConfig
from simclr_tf2.training.run_data import RunData, index_store, prepare_data
from simclr_tf2.training.trainer import say
from simclr_tf2.training.validation import changed_settings, check_classes, validate


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What one run does, decided before it writes anything."""
    config: ExperimentConfig
    run_config: RunConfig    # for an eval, train_mode is what the evaluated run trained
    strategy: tf.distribute.Strategy
    task: Optional[Task]     # None: the run only evaluates
    data: RunData
    steps: Optional[ScheduleSteps]
    changes: Tuple[str, ...]  # changed settings a resumed run accepts
    chief: bool
    augment_on: str          # 'host' or 'device' (pretraining's colour and blur)

    @property
    def model_dir(self) -> str:
        return self.run_config.model_dir

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def global_batch(self) -> int:
        return self.config.train.train_batch_size

    @property
    def evaluates(self) -> bool:
        return evaluates(self.run_config.mode)

    def worker_dir(self, suffix: str = "") -> str:
        """Where this worker writes what only the chief keeps (a non-chief
        worker's copy of checkpoints and exports, deleted at the end)."""
        if self.chief:
            return self.model_dir
        task_id = self.strategy.cluster_resolver.task_id
        return os.path.join(self.model_dir, f".worker_{task_id}{suffix}")

    def recording_skips(self) -> "RunPlan":
        """The plan with images that fail to decode recorded in the run directory."""
        return dataclasses.replace(self, data=self.data.recording_skips(self.model_dir))


def plan_run(config: ExperimentConfig, run_config: RunConfig,
             strategy: Optional[tf.distribute.Strategy] = None,
             verbose: bool = True) -> RunPlan:
    """Checks everything and plans the run; writes nothing (the index files
    wait in the plan's store until the run flushes them)."""
    validate(config, run_config)
    strategy = strategy or make_strategy(run_config)
    task = run_config.task
    replicas = strategy.num_replicas_in_sync
    if task is not None and config.train.train_batch_size % replicas:
        raise ConfigError(f"train_batch_size {config.train.train_batch_size} is not "
                          f"divisible by the {replicas} replicas: use a multiple of "
                          f"{replicas}")
    chief = is_chief(strategy)
    started = time.time()
    store = index_store(config, run_config, chief, lambda m: say(verbose, m))
    data = prepare_data(config, run_config, store)
    steps = None
    if task is not None:
        steps = schedule_steps(config, len(data.indices))
        config = _fitted_to_data(config, task, data, verbose)
    if data.eval is not None and evaluates(run_config.mode):
        check_classes(config, data.eval)
    say(verbose, f"data ready in {time.time() - started:.1f}s")
    changes = tuple(changed_settings(config, run_config))
    if task is None:  # evaluates a run: the mode it trained decides its model
        source_dir = run_config.model_dir
        if not has_checkpoint(source_dir) and run_config.checkpoint:
            source_dir = run_dir_of(run_config.checkpoint)
        run_config = dataclasses.replace(
            run_config, train_mode=trained_mode(source_dir, run_config.train_mode))
    return RunPlan(config, run_config, strategy, task, data, steps, changes, chief,
                   augment_on(config.data.augment_on, strategy))


def _fitted_to_data(config: ExperimentConfig, task: Task, data: RunData,
                    verbose: bool) -> ExperimentConfig:
    """The config checked against the training data: a supervised task's
    classes must match; pretraining drops the online probe when the data
    cannot train it."""
    if task.supervised:
        check_classes(config, data.train)
        return config
    problem = probe_problem(config, data.train)
    if config.train.lineareval_while_pretraining and problem:
        say(verbose, f"{problem}: no online linear probe "
                     "(lineareval_while_pretraining off for this run)")
        return config.override(**{"train.lineareval_while_pretraining": False})
    return config


def probe_problem(config: ExperimentConfig, source) -> Optional[str]:
    """Why pretraining on `source` cannot train the online linear probe, if
    it cannot: no labels, or not num_classes classes."""
    if not (source.labels >= 0).any():
        return "the training images have no labels"
    if config.model.num_classes and source.num_classes not in (0, config.model.num_classes):
        return (f"the training images have {source.num_classes} classes, not "
                f"num_classes={config.model.num_classes}")
    return None
