"""One run: validate, then train and/or evaluate, then export.

`run(config, run_config)` is what `python -m simclr_tf2.train` calls after it
has turned flags into configs; tests and notebooks call it directly. The
pieces live beside it: run_config (RunConfig), validation, distribution
(strategy), initialisation (from another checkpoint), trainer (the orbit
loop), precompute (passes outside the training step), evaluator; the run
directory's layout is simclr_tf2.rundir.
"""
import contextlib
import dataclasses
import os
import shutil
import sys
import time
from typing import Dict, Optional

import orbit
import tensorflow as tf
import tf_keras

from simclr_tf2.configs.schema import ExperimentConfig
from simclr_tf2.data import build_from_config, distribute, feature_dataset, skips
from simclr_tf2.data.subsets import write_ids
from simclr_tf2.errors import NonFiniteLossError, RunError  # noqa: F401 (re-exported)
from simclr_tf2.export.hub import ExportError, export_hub_modules
from simclr_tf2.monitors.knn_monitor import KnnMonitor, monitor_subset
from simclr_tf2.rundir import (MONITOR_FILE, MONITOR_SUMMARIES, SUBSET_FILE, TEACHER_LOGITS,
                               TRAIN_SUMMARIES, has_checkpoint, path, read_json, run_dir_of,
                               trained_mode, write_json, write_record)
from simclr_tf2.training.distribution import augment_on, is_chief, make_strategy
from simclr_tf2.training.evaluator import evaluate
from simclr_tf2.training.initialisation import init_model, summary
from simclr_tf2.training.learner import Learner, schedule_steps
from simclr_tf2.training.precompute import (frozen_features, precompute_teacher_logits,
                                            recompute_bn)
from simclr_tf2.training.run_config import RunConfig
from simclr_tf2.training.run_data import RunData, index_store, prepare_data
from simclr_tf2.training.teacher import load_teacher
from simclr_tf2.training.trainer import SimCLRTrainer, say
from simclr_tf2.training.validation import changed_settings, supervised_classes, validate


def checkpoint_interval(config: ExperimentConfig, steps) -> int:
    """Steps between checkpoints: checkpoint_epochs epochs when set, else
    checkpoint_interval."""
    if config.train.checkpoint_epochs > 0:
        return max(1, round(config.train.checkpoint_epochs * steps.steps_per_epoch))
    return config.train.checkpoint_interval


def train(config: ExperimentConfig, run_config: RunConfig, strategy,
          mode: str, verbose: bool = True, data: Optional[RunData] = None) -> Learner:
    """Trains `mode` in model_dir until train_steps/epochs; resumes if a
    checkpoint is there. `data`: the run's data (prepared here if not given)."""
    if data is None:
        store = index_store(config, run_config, is_chief(strategy), lambda m: say(verbose, m))
        data = prepare_data(config, run_config, store).recording_skips(run_config.model_dir)
    source, indices = data.train, data.indices
    if mode != "pretrain":
        supervised_classes(config, source)
    steps = schedule_steps(config, len(indices))
    global_batch = config.train.train_batch_size
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        teacher = (load_teacher(run_config.teacher)
                   if mode == "distill" else None)
        extras = None
        if teacher is not None and config.train.distill_precompute:
            extras = {"teacher_logits": precompute_teacher_logits(
                teacher, config, source, indices, verbose,
                keep=path(run_config.model_dir, TEACHER_LOGITS) if is_chief(strategy)
                else None, teacher_name=run_config.teacher)}
            teacher = None  # the batches carry the logits
        learner = Learner(config, mode, steps.total_steps, steps.warmup_steps,
                          teacher=teacher)
        checkpoint = tf.train.Checkpoint(**learner.checkpoint_items())
    chief = is_chief(strategy)
    checkpoint_dir = run_config.model_dir if chief else os.path.join(
        run_config.model_dir, f".worker_{strategy.cluster_resolver.task_id}")
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_dir, max_to_keep=config.train.keep_checkpoint_max,
        step_counter=learner.step, checkpoint_interval=checkpoint_interval(config, steps))
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        say(verbose, f"resuming from {manager.latest_checkpoint} at step "
                      f"{int(learner.step.numpy())}")
    elif run_config.checkpoint:
        report = init_model(learner.model, run_config.checkpoint)
        say(verbose, f"initialised from {run_config.checkpoint}: {summary(report)}")
        if learner.momentum_encoder is not None:
            learner.momentum_encoder.copy_online()
        head = learner.model.supervised_head
        if config.train.zero_init_logits_layer and head is not None:
            # The checkpoint's linear head (trained while pretraining) was
            # just restored; zero_init_logits_layer means start from zero.
            for weight in head.trainable_weights:
                weight.assign(tf.zeros_like(weight))
            say(verbose, "zero_init_logits_layer: the supervised head starts at zero")
    start = int(learner.step.numpy())
    pipeline_mode = "pretrain" if mode == "pretrain" else "finetune"
    placed = augment_on(config.data.augment_on, strategy)
    if (mode == "linear_eval" and config.train.linear_eval_cache_features
            and start < steps.total_steps):
        features, indices = frozen_features(learner, config, source, indices, verbose)
        dataset = distribute(strategy, lambda ctx: feature_dataset(
            features, source.labels, indices, global_batch, seed=config.data.seed,
            input_context=ctx, start_step=start))
    else:
        dataset = distribute(strategy, lambda ctx: build_from_config(
            config.data, source, pipeline_mode, global_batch, indices,
            input_context=ctx, start_step=start, extras=extras, augment_on=placed))
    trainer = SimCLRTrainer(learner, strategy, dataset, steps.total_steps,
                            global_batch, verbose=verbose, skip_log=source.skip_log)
    summary_dir = path(run_config.model_dir, TRAIN_SUMMARIES) if chief else None
    monitor = None
    if mode == "pretrain" and config.monitor.knn_interval > 0:
        monitor = knn_monitor(config, data, strategy, learner, verbose)
    controller = orbit.Controller(
        global_step=learner.step, trainer=trainer, strategy=strategy, evaluator=monitor,
        steps_per_loop=config.train.steps_per_loop, checkpoint_manager=manager,
        summary_interval=config.train.summary_interval if chief else None,
        summary_dir=summary_dir,
        eval_summary_dir=(path(run_config.model_dir, MONITOR_SUMMARIES)
                          if chief and monitor else None))
    if chief and start == 0:
        _image_summaries(summary_dir, config, source, indices, pipeline_mode)
    if verbose:
        print(f"{mode}: {len(indices)} examples, batch {global_batch} on {replicas} "
              f"replica(s), steps {start} -> {steps.total_steps}"
              + (", colour and blur on the device" if mode == "pretrain"
                 and placed == "device" else "")
              + (f", input from the tf.data service at {config.data.data_service}"
                 if config.data.data_service else ""), flush=True)
    if source.skip_log is not None and len(source.skip_log.known):
        say(verbose, f"{len(source.skip_log.known)} image(s) that did not decode before "
                     "are left out (see skipped/ in the run directory)")
    run_start = time.time()
    with stopped_by_bad_images(source.skip_log):
        if start < steps.total_steps and monitor is not None:
            loop = config.train.steps_per_loop  # whole loops between reports
            controller.train_and_evaluate(
                train_steps=steps.total_steps, eval_steps=1,
                eval_interval=-(-config.monitor.knn_interval // loop) * loop)
        elif start < steps.total_steps:
            controller.train(steps=steps.total_steps)
    if monitor is not None and monitor.history:
        record = {"history": monitor.history, "monitor_seconds": monitor.seconds,
                  "run_seconds": time.time() - run_start, "skipped": data.skipped()}
        if verbose:
            print(f"monitor: {len(monitor.history)} reports took {monitor.seconds:.1f}s "
                  f"({100 * monitor.seconds / max(record['run_seconds'], 1e-9):.1f}% "
                  "of the run)", flush=True)
        if chief:
            write_json(path(run_config.model_dir, MONITOR_FILE), record)
    if config.train.bn_recompute and mode != "pretrain":
        recompute_bn(config, strategy, learner, source, indices, verbose)
        # Overwrite the final checkpoint in place (manager.save skips a step
        # it has already saved).
        latest = manager.latest_checkpoint or manager.save(check_interval=False)
        checkpoint.write(latest)
    if not chief:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return learner


def knn_monitor(config: ExperimentConfig, data: RunData, strategy, learner: Learner,
                verbose: bool = True) -> KnnMonitor:
    """The kNN monitor of a pretraining run: its bank is (a seeded subset
    of) the training split, its queries the eval split; without labels on
    either, only the bank's effective rank is reported."""
    monitor = config.monitor
    bank, queries = data.train, data.eval
    if (bank.labels < 0).any() or queries is None:
        queries = None
        say(verbose, "kNN monitor: effective rank only ("
            + (data.eval_problem or "the training images have no labels") + ")")
    return KnnMonitor(
        learner.model, config.data, bank, queries, config.train.eval_batch_size,
        monitor.knn_k, monitor.knn_temperature,
        bank_indices=monitor_subset(bank, monitor.knn_bank_size, config.data.seed),
        query_indices=(None if queries is None else monitor_subset(
            queries, monitor.knn_eval_size, config.data.seed)),
        strategy=strategy, step=learner.step, verbose=verbose)


def probe_problem(config: ExperimentConfig, source) -> Optional[str]:
    """Why pretraining on `source` cannot train the online linear probe, if
    it cannot: no labels, or not num_classes classes."""
    if not (source.labels >= 0).any():
        return "the training images have no labels"
    if config.model.num_classes and source.num_classes not in (0, config.model.num_classes):
        return (f"the training images have {source.num_classes} classes, not "
                f"num_classes={config.model.num_classes}")
    return None


@contextlib.contextmanager
def stopped_by_bad_images(skip_log):
    """Turns the input pipeline's stop on too many undecodable images in a
    row into a DataError naming them."""
    try:
        yield
    except tf.errors.OpError as error:
        stop = skips.stop_error(error, skip_log)
        if stop is None:
            raise
        raise stop from None


def _image_summaries(summary_dir, config, source, indices, mode, count=4):
    count = min(count, len(indices))  # a labelled subset may hold fewer
    batch = next(iter(build_from_config(config.data, source, mode, count,
                                        indices[: count * 4])))
    writer = tf.summary.create_file_writer(summary_dir)
    with writer.as_default():
        for key in ("view1", "view2", "image"):
            if key in batch:
                tf.summary.image(f"augmented/{key}", batch[key], step=0, max_outputs=count)
    writer.flush()


def export_at_end(config: ExperimentConfig, run_config: RunConfig, strategy,
                  learner: Learner, verbose: bool = True) -> Optional[str]:
    """Hub modules of the trained model in <model_dir>/<export_dir>/<step>.
    Every worker exports (saving may need all of them); only the chief's stays."""
    chief = is_chief(strategy)
    export_dir = os.path.join(run_config.model_dir, config.export.export_dir)
    if not chief:
        export_dir = os.path.join(run_config.model_dir,
                                  f".worker_{strategy.cluster_resolver.task_id}_export")
    try:
        exported = export_hub_modules(learner.model, export_dir, config=config,
                                      step=int(learner.step.numpy()), train_mode=learner.mode)
    except (ExportError, OSError, tf.errors.OpError) as error:
        message = getattr(error, "message", None) or str(error)
        raise RunError(f"training finished and its checkpoint is saved, but the hub "
                       f"export to {export_dir!r} failed: {message}. Export it later with "
                       f"`python export/export_hub.py --model_dir={run_config.model_dir} "
                       "--export_dir=<a writable directory>`") from None
    if not chief:
        shutil.rmtree(export_dir, ignore_errors=True)
        return None
    if verbose:
        print(f"exported hub modules to {exported}", flush=True)
    return exported


def run(config: ExperimentConfig, run_config: RunConfig, verbose: bool = True,
        strategy: Optional[tf.distribute.Strategy] = None) -> Dict:
    """Validates, then trains and/or evaluates, then exports. Returns
    {'learner', 'result', 'export', 'monitor'}."""
    validate(config, run_config)
    if run_config.deterministic:
        tf_keras.utils.set_random_seed(config.train.seed)
        tf.config.experimental.enable_op_determinism()
    else:
        tf.random.set_seed(config.train.seed)
    strategy = strategy or make_strategy(run_config)
    mode = run_config.training_mode
    replicas = strategy.num_replicas_in_sync
    if mode is not None and config.train.train_batch_size % replicas:
        raise RunError(f"train_batch_size {config.train.train_batch_size} is not "
                       f"divisible by the {replicas} replicas: use a multiple of "
                       f"{replicas}")
    chief = is_chief(strategy)
    started = time.time()
    store = index_store(config, run_config, chief, lambda m: say(verbose, m))
    data = prepare_data(config, run_config, store)  # data errors before any write
    if mode is not None:
        schedule_steps(config, len(data.indices))
        if mode != "pretrain":
            supervised_classes(config, data.train)
        elif config.train.lineareval_while_pretraining and probe_problem(config, data.train):
            config = config.override(**{"train.lineareval_while_pretraining": False})
            say(verbose, f"{probe_problem(config, data.train)}: no online linear probe "
                          "(lineareval_while_pretraining off for this run)")
    say(verbose, f"data ready in {time.time() - started:.1f}s")
    changes = changed_settings(config, run_config)
    tf_keras.mixed_precision.set_global_policy(config.train.precision)
    if run_config.mode == "eval":
        source_dir = run_config.model_dir
        if not has_checkpoint(source_dir) and run_config.checkpoint:
            source_dir = run_dir_of(run_config.checkpoint)
        run_config = dataclasses.replace(
            run_config, train_mode=trained_mode(source_dir, run_config.train_mode))
    try:
        tf.io.gfile.makedirs(run_config.model_dir)
        if chief and run_config.mode != "eval":
            write_record(run_config.model_dir, config, dataclasses.asdict(run_config),
                         " ".join(sys.argv), changes)
        if chief:
            store.flush()
            if data.labelled is not None:  # the labelled subset's ids
                write_ids(path(run_config.model_dir, SUBSET_FILE), data.train, data.labelled)
        data = data.recording_skips(run_config.model_dir)
        learner, result = None, None
        if mode is not None:
            learner = train(config, run_config, strategy, mode, verbose, data=data)
        if run_config.mode in ("eval", "train_then_eval"):
            result = evaluate(config, run_config, strategy, learner, verbose,
                              source=data.eval, skipped=data.skipped)
        export = None
        if learner is not None and config.export.export_at_end:
            export = export_at_end(config, run_config, strategy, learner, verbose)
        monitor = None
        record = read_json(path(run_config.model_dir, MONITOR_FILE))
        if mode == "pretrain" and record and record["history"]:
            monitor = record["history"][-1]
        return {"learner": learner, "result": result, "export": export,
                "monitor": monitor}
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
