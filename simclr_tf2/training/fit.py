"""The training part of a run: the learner, its checkpoints, the input, the
orbit loop and what follows it, all read from the RunPlan."""
import contextlib
import dataclasses
import re
import shutil
import time
from typing import Dict, Optional

import orbit
import tensorflow as tf

from simclr_tf2.configs.schema import ExperimentConfig
from simclr_tf2.data import build_from_config, distribute, feature_dataset, skips
from simclr_tf2.errors import Preempted, WorkerLost
from simclr_tf2.monitors.knn_monitor import KnnMonitor, monitor_subset
from simclr_tf2.rundir import (MONITOR_FILE, MONITOR_SUMMARIES, TEACHER_LOGITS,
                               TRAIN_SUMMARIES, path, write_json)
from simclr_tf2.training.initialisation import init_model, summary
from simclr_tf2.training.learner import Learner
from simclr_tf2.training.plan import RunPlan
from simclr_tf2.training.preemption import preemption_checkpoints
from simclr_tf2.training.precompute import (frozen_features, precompute_teacher_logits,
                                            recompute_bn)
from simclr_tf2.training.teacher import load_teacher
from simclr_tf2.signals import sigterm_guard
from simclr_tf2.training.trainer import SimCLRTrainer, orbit_messages_logged_only, say


@dataclasses.dataclass
class Training:
    """The objects of one training: made once, used by the steps below."""
    learner: Learner
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    extras: Optional[Dict] = None  # per-example values the batches carry
    monitor: Optional[KnnMonitor] = None
    preemption: Optional[object] = None  # a PreemptionCheckpointHandler
    trainer: Optional[SimCLRTrainer] = None


def checkpoint_interval(config: ExperimentConfig, steps) -> int:
    """Steps between checkpoints: checkpoint_epochs epochs when set, else
    checkpoint_interval."""
    if config.train.checkpoint_epochs > 0:
        return max(1, round(config.train.checkpoint_epochs * steps.steps_per_epoch))
    return config.train.checkpoint_interval


def train(plan: RunPlan, verbose: bool = True) -> Learner:
    """Trains the plan's task in model_dir until its last step; resumes from
    the newest checkpoint there, else starts from run_config.checkpoint."""
    training = build_training(plan, verbose)
    learner = training.learner
    # SIGTERM from here to the loop's end: a checkpoint at the step reached
    # (preemption.py). The handler restores or initialises as it starts.
    with preemption_checkpoints(plan.strategy, training.manager, learner.step) as handler:
        training.preemption = handler
        start = restore_or_initialise(plan, training, verbose)
        dataset = training_dataset(plan, learner, start, training.extras, verbose)
        if plan.task.contrastive and plan.config.monitor.knn_interval > 0:
            training.monitor = knn_monitor(plan, learner, verbose)
        with orbit_messages_logged_only(), releasing_input(training):
            controller = make_controller(plan, training, dataset, verbose)
            announce(plan, start, verbose)
            run_start = time.time()
            with failures_named(plan):
                run_loop(plan, controller, training.monitor, start)
    finish(plan, training, time.time() - run_start, verbose)
    return learner


@contextlib.contextmanager
def releasing_input(training: Training):
    """Drops the training iterator when the loop ends, however it ends. The
    trainer sits in a reference cycle (its compiled step holds it), so its
    iterator would otherwise live until Python's next garbage collection;
    a multi-replica iterator's deletion joins its prefetch threads, and after
    a minute or more idle that has blocked 12-42 s (bench/RESULTS.md, Test
    suite), at whatever allocation started the collection."""
    try:
        yield
    finally:
        if training.trainer is not None:
            training.trainer.train_dataset = None  # orbit's setter: iterator dropped


def build_training(plan: RunPlan, verbose: bool) -> Training:
    """The learner (with the teacher, or the teacher's logits precomputed
    into the batches), its checkpoint and checkpoint manager."""
    config, run_config, source = plan.config, plan.run_config, plan.data.train
    with plan.strategy.scope():
        teacher = load_teacher(run_config.teacher) if plan.task.takes_teacher else None
        extras = None
        if teacher is not None and config.train.distill_precompute:
            extras = {"teacher_logits": precompute_teacher_logits(
                teacher, config, source, plan.data.indices, verbose,
                keep=path(plan.model_dir, TEACHER_LOGITS) if plan.chief else None,
                teacher_name=run_config.teacher)}
            teacher = None  # the batches carry the logits
        learner = Learner(config, plan.task, plan.steps.total_steps, plan.steps.warmup_steps,
                          teacher=teacher)
        checkpoint = tf.train.Checkpoint(**learner.checkpoint_items())
    manager = RestoreOnce(
        checkpoint, plan.worker_dir(), max_to_keep=config.train.keep_checkpoint_max,
        step_counter=learner.step, checkpoint_interval=checkpoint_interval(config, plan.steps),
        init_fn=_initialiser(plan, learner, verbose))
    return Training(learner, checkpoint, manager, extras)


class RestoreOnce(tf.train.CheckpointManager):
    """A CheckpointManager that reads its newest checkpoint (or initialises)
    once: the preemption handler, our start and orbit's Controller each ask
    for it as they start, and a restart would read the whole checkpoint (on
    a bucket, every variable's bytes) two or three times."""

    def restore_or_initialize(self):
        if getattr(self, "_restored", False):
            return self.latest_checkpoint
        self._restored = True
        return super().restore_or_initialize()


def _initialiser(plan: RunPlan, learner: Learner, verbose: bool):
    """The manager's init_fn: a new run starts from run_config.checkpoint's
    model weights (if set); it runs once, however often it is called."""
    source = plan.run_config.checkpoint
    if source is None:
        return None
    done = []

    def initialise():
        if done:
            return
        done.append(True)
        report = init_model(learner.model, source)
        say(verbose, f"initialised from {source}: {summary(report)}")
        if learner.momentum_encoder is not None:
            learner.momentum_encoder.copy_online()
        head = learner.model.supervised_head
        if plan.config.train.zero_init_logits_layer and head is not None:
            # The checkpoint's linear head (trained while pretraining) was
            # just restored; zero_init_logits_layer means start from zero.
            for weight in head.trainable_weights:
                weight.assign(tf.zeros_like(weight))
            say(verbose, "zero_init_logits_layer: the supervised head starts at zero")
    return initialise


def restore_or_initialise(plan: RunPlan, training: Training, verbose: bool) -> int:
    """Resumes from the newest checkpoint in model_dir, else initialises (the
    manager's init_fn); returns the step. RestoreOnce makes this a no-op
    when the preemption handler has already done it as it started."""
    latest = training.manager.latest_checkpoint
    training.manager.restore_or_initialize()
    if latest:
        say(verbose, f"resuming from {latest} at step {int(training.learner.step.numpy())}")
    return int(training.learner.step.numpy())


def training_dataset(plan: RunPlan, learner: Learner, start: int, extras,
                     verbose: bool = True):
    """The distributed training input from step `start` on: cached frozen
    features for linear eval with linear_eval_cache_features, else images."""
    config, source, indices = plan.config, plan.data.train, plan.data.indices
    batch = plan.global_batch
    if (plan.task.frozen_features and config.train.linear_eval_cache_features
            and start < plan.steps.total_steps):
        features, indices = frozen_features(learner, config, source, indices, verbose)
        return distribute(plan.strategy, lambda ctx: feature_dataset(
            features, source.labels, indices, batch, seed=config.data.seed,
            input_context=ctx, start_step=start))
    return distribute(plan.strategy, lambda ctx: build_from_config(
        config.data, source, plan.task.layout, batch, indices, input_context=ctx,
        start_step=start, extras=extras, augment_on=plan.augment_on))


def knn_monitor(plan: RunPlan, learner: Learner, verbose: bool = True) -> KnnMonitor:
    """The kNN monitor of a pretraining run: its bank is (a seeded subset
    of) the training split, its queries the eval split; without labels on
    either, only the bank's effective rank is reported."""
    config, monitor = plan.config, plan.config.monitor
    bank, queries = plan.data.train, plan.data.eval
    if (bank.labels < 0).any() or queries is None:
        queries = None
        say(verbose, "kNN monitor: effective rank only ("
            + (plan.data.eval_problem or "the training images have no labels") + ")")
    return KnnMonitor(
        learner.model, config.data, bank, queries, config.train.eval_batch_size,
        monitor.knn_k, monitor.knn_temperature,
        bank_indices=monitor_subset(bank, monitor.knn_bank_size, config.data.seed),
        query_indices=(None if queries is None else monitor_subset(
            queries, monitor.knn_eval_size, config.data.seed)),
        strategy=plan.strategy, step=learner.step, verbose=verbose,
        collapse_alarm=monitor.collapse_alarm, stop_on_collapse=monitor.stop_on_collapse)


def make_controller(plan: RunPlan, training: Training, dataset,
                    verbose: bool) -> orbit.Controller:
    """orbit's Controller over the learner's step, with summaries (the
    chief's) and the checkpoint manager."""
    learner, train = training.learner, plan.config.train
    trainer = training.trainer = SimCLRTrainer(
        learner, plan.strategy, dataset, plan.steps.total_steps, plan.global_batch,
        verbose=verbose, skip_log=plan.data.train.skip_log, preemption=training.preemption)
    summary_dir = path(plan.model_dir, TRAIN_SUMMARIES) if plan.chief else None
    if plan.chief and int(learner.step.numpy()) == 0:
        _image_summaries(summary_dir, plan)
    return orbit.Controller(
        global_step=learner.step, trainer=trainer, strategy=plan.strategy,
        evaluator=training.monitor, steps_per_loop=train.steps_per_loop,
        checkpoint_manager=training.manager,
        summary_interval=train.summary_interval if plan.chief else None,
        summary_dir=summary_dir,
        eval_summary_dir=(path(plan.model_dir, MONITOR_SUMMARIES)
                          if plan.chief and training.monitor else None))


def announce(plan: RunPlan, start: int, verbose: bool) -> None:
    """The run's first line: what trains, on what, from which step."""
    if verbose:
        print(f"{plan.task.mode}: {len(plan.data.indices)} examples, batch "
              f"{plan.global_batch} on {plan.replicas} replica(s), steps {start} -> "
              f"{plan.steps.total_steps}"
              + (", colour and blur on the device" if plan.task.contrastive
                 and plan.augment_on == "device" else "")
              + (f", input from the tf.data service at {plan.config.data.data_service}"
                 if plan.config.data.data_service else ""), flush=True)
    skip_log = plan.data.train.skip_log
    if skip_log is not None and len(skip_log.known):
        say(verbose, f"{len(skip_log.known)} image(s) that did not decode before "
                     "are left out (see skipped/ in the run directory)")


def run_loop(plan: RunPlan, controller: orbit.Controller, monitor, start: int) -> None:
    """Trains to the last step, with the kNN monitor's reports in between."""
    total = plan.steps.total_steps
    if start >= total:
        return
    if monitor is None:
        controller.train(steps=total)
        return
    loop = plan.config.train.steps_per_loop  # whole loops between reports
    controller.train_and_evaluate(
        train_steps=total, eval_steps=1,
        eval_interval=-(-plan.config.monitor.knn_interval // loop) * loop)


def finish(plan: RunPlan, training: Training, seconds: float, verbose: bool) -> None:
    """After the loop: the monitor's record, batch-norm statistics
    recomputed (supervised tasks, bn_recompute), a worker's copies removed."""
    monitor = training.monitor
    diagnostics = training.trainer.diagnostics if training.trainer is not None else []
    if (monitor is not None and monitor.history) or diagnostics:
        history = monitor.history if monitor is not None else []
        record = {"history": history, "monitor_seconds": monitor.seconds if monitor else 0.0,
                  "run_seconds": seconds, "skipped": plan.data.skipped(),
                  "memory_diagnostics": diagnostics}
        if verbose and history:
            print(f"monitor: {len(monitor.history)} reports took {monitor.seconds:.1f}s "
                  f"({100 * monitor.seconds / max(seconds, 1e-9):.1f}% of the run)",
                  flush=True)
        if plan.chief:
            write_json(path(plan.model_dir, MONITOR_FILE), record)
    if plan.config.train.bn_recompute and plan.task.supervised:
        recompute_and_save_bn(plan, training, verbose)
    if not plan.chief:
        shutil.rmtree(plan.worker_dir(), ignore_errors=True)


def recompute_and_save_bn(plan: RunPlan, training: Training, verbose: bool) -> None:
    """Batch-norm statistics recomputed and written over the final checkpoint
    (manager.save skips a step it has already saved). A SIGTERM during the
    recompute stops the run with the checkpoint as it was (a rerun, at the
    last step, recomputes); one during the write waits for its end. TF
    writes the files aside and renames them into place at the end."""
    step = int(training.learner.step.numpy())
    with sigterm_guard(lambda: Preempted(step)) as guard:
        recompute_bn(plan.config, plan.strategy, training.learner, plan.data.train,
                     plan.data.indices, verbose)
        guard.hold()
        manager = training.manager
        training.checkpoint.write(manager.latest_checkpoint
                                  or manager.save(check_interval=False))


@contextlib.contextmanager
def failures_named(plan: RunPlan):
    """The training loop's TensorFlow errors whose cause is known, raised as
    the library's error naming it and the fix: too many undecodable images
    in a row (skips.py), a lost worker."""
    try:
        yield
    except tf.errors.OpError as error:
        named = skips.stop_error(error, plan.data.train.skip_log) or worker_lost(plan, error)
        if named is None:
            raise
        raise named from None


# How TensorFlow's collectives and coordination service report a peer that
# stopped answering (killed, out of memory, its machine gone).
_PEER_LOST = re.compile(r"unhealthy|stopped sending heartbeats|socket closed|"
                        r"connection reset|collective ops is aborted", re.IGNORECASE)
_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


def worker_lost(plan: RunPlan, error: tf.errors.OpError) -> Optional[WorkerLost]:
    """A multi-worker run's collective failure on a lost peer as a WorkerLost
    naming the peer (where TensorFlow names it) and the checkpoint a restart
    of every worker resumes from; None for any other error."""
    resolver = getattr(plan.strategy, "cluster_resolver", None)
    if (not isinstance(plan.strategy, tf.distribute.MultiWorkerMirroredStrategy)
            or resolver is None or not _PEER_LOST.search(error.message)):
        return None
    own = (resolver.task_type, resolver.task_id)
    lost = sorted({f"{job} {task}" for job, task in _TASK.findall(error.message)
                   if (job, int(task)) != own})
    latest = tf.train.latest_checkpoint(plan.model_dir)
    said = next(line.strip() for line in error.message.splitlines()
                if _PEER_LOST.search(line))
    return WorkerLost(
        f"lost {' and '.join(lost) if lost else 'a peer worker'} (TensorFlow: {said}); "
        + (f"the last checkpoint is {latest}" if latest else "no checkpoint yet")
        + ": restart every worker with the same command to resume from it")


def _image_summaries(summary_dir: str, plan: RunPlan, count: int = 4) -> None:
    """A few training views at step 0, for TensorBoard's image tab."""
    indices = plan.data.indices
    count = min(count, len(indices))  # a labelled subset may hold fewer
    batch = next(iter(build_from_config(plan.config.data, plan.data.train,
                                        plan.task.layout, count, indices[: count * 4])))
    writer = tf.summary.create_file_writer(summary_dir)
    with writer.as_default():
        for key in ("view1", "view2", "image"):
            if key in batch:
                tf.summary.image(f"augmented/{key}", batch[key], step=0, max_outputs=count)
    writer.flush()



