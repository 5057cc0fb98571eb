"""One run: strategy, data, learner, checkpoints, the orbit loop, evaluation.

`run(config, run_config)` is what `python -m simclr_tf2.train` calls after it
has turned flags into configs; tests and notebooks call it directly.
"""
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import orbit
import tensorflow as tf
import tf_keras

from simclr_tf2.configs.schema import ExperimentConfig, check
from simclr_tf2.data import (build_from_config, distribute, feature_dataset,
                             labelled_subset, make_source)
from simclr_tf2.data.sources import DataError
from simclr_tf2.export.hub import export_hub_modules
from simclr_tf2.export.official import (OfficialImportError, import_official_variables,
                                        is_savedmodel_dir)
from simclr_tf2.monitors.knn_monitor import KnnMonitor, monitor_indices
from simclr_tf2.training.bn_stats import recompute_bn_statistics
from simclr_tf2.training.learner import Learner, schedule_steps
from simclr_tf2.training.teacher import load_teacher

log = logging.getLogger("simclr_tf2.train")
# orbit prints every loop's output dict as well as logging it; our progress
# line says the same in one line, so keep orbit's copy in the log only.
orbit.controller._log = lambda message: logging.getLogger("orbit").info(message)

RUN_MODES = ("pretrain", "finetune", "linear_eval", "eval", "train_then_eval", "distill")
TRAIN_MODES = ("pretrain", "finetune", "linear_eval", "distill")
STRATEGIES = ("auto", "tpu", "mirrored", "multi_worker_mirrored", "one_device")
CONFIG_FILE = "config.json"
RESULT_FILE = "result.json"
SUBSET_FILE = "labelled_ids.txt"
MONITOR_FILE = "monitor.json"


class RunError(RuntimeError):
    """A run cannot go on; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How and where to run (not part of the experiment's definition)."""
    mode: str = "pretrain"
    model_dir: str = ""
    # What train_then_eval trains, and what eval expects in model_dir.
    train_mode: str = "pretrain"
    # Initialise fine-tuning / linear eval from this checkpoint (file prefix or
    # directory): model weights only.
    checkpoint: Optional[str] = None
    strategy: str = "auto"
    tpu: Optional[str] = None
    tpu_zone: Optional[str] = None
    gcp_project: Optional[str] = None
    num_gpus: int = -1
    # Split the host CPU into this many logical devices (tests, demos).
    num_cpu_devices: int = 1
    deterministic: bool = False
    eval_split: Optional[str] = None
    # distill: the teacher (a run dir / checkpoint, a hub export, or an
    # official SimCLRv2 SavedModel).
    teacher: Optional[str] = None
    # finetune / linear_eval from random weights (supervised baselines)
    # instead of a pretrained checkpoint.
    from_scratch: bool = False

    def __post_init__(self):
        check(self.mode in RUN_MODES, f"mode must be one of {list(RUN_MODES)}. "
              f"Received: mode={self.mode!r}")
        check(self.train_mode in TRAIN_MODES, f"train_mode must be one of "
              f"{list(TRAIN_MODES)}. Received: train_mode={self.train_mode!r}")
        check(self.strategy in STRATEGIES, f"strategy must be one of "
              f"{list(STRATEGIES)}. Received: strategy={self.strategy!r}")
        check(bool(self.model_dir), "model_dir must be set (where checkpoints, "
              "summaries and results go)")
        check(self.num_cpu_devices >= 1, "num_cpu_devices must be >= 1")

    @property
    def training_mode(self) -> Optional[str]:
        if self.mode in TRAIN_MODES:
            return self.mode
        return self.train_mode if self.mode == "train_then_eval" else None


# ------------------------------------------------------------------ checks
def resolve_checkpoint(path: str) -> str:
    """A checkpoint prefix from a prefix or a directory; RunError if none."""
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise RunError(f"no checkpoint in directory {path!r}")
        return latest
    if not tf.io.gfile.exists(path + ".index"):
        raise RunError(f"checkpoint {path!r} not found (expected {path}.index or a "
                       "directory with a 'checkpoint' file)")
    return path


def validate(config: ExperimentConfig, run_config: RunConfig) -> None:
    """Rejects incompatible settings before anything is written."""
    training = run_config.training_mode
    if training == "pretrain":
        check(config.model.fine_tune_after_block == -1,
              "fine_tune_after_block freezes layers for fine-tuning; pretraining "
              f"trains the whole network. Received: fine_tune_after_block="
              f"{config.model.fine_tune_after_block} with mode pretrain")
    if training in ("finetune", "linear_eval", "distill") or run_config.mode == "eval":
        check(config.model.num_classes > 0, f"mode {run_config.mode!r} needs a "
              "supervised head: set num_classes")
    if training == "distill":
        check(run_config.teacher is not None, "distill needs --teacher=<a fine-tuned "
              "run dir or checkpoint, a hub export or an official SavedModel>")
        check(is_savedmodel_dir(run_config.teacher)
              or tf.io.gfile.exists(run_config.teacher + ".index")
              or tf.io.gfile.isdir(run_config.teacher),
              f"teacher {run_config.teacher!r} not found")
    if config.train.linear_eval_cache_features:
        check(training == "linear_eval", "linear_eval_cache_features applies to "
              f"linear_eval only (the run trains {training!r}): drop "
              "--linear_eval_cache_features")
        check(config.data.crop_area_min == 1.0 and not config.data.use_flip,
              "linear_eval_cache_features computes each image's features once, so "
              "the training view must not be random: set --crop_area_min=1.0 and "
              f"--nouse_flip (received crop_area_min={config.data.crop_area_min}, "
              f"use_flip={config.data.use_flip}), or drop --linear_eval_cache_features")
    check(not (config.train.bn_recompute and training == "pretrain"),
          "bn_recompute applies after supervised training (finetune, linear_eval, "
          "distill); pretraining keeps its moving averages: drop --bn_recompute")
    if training in ("finetune", "linear_eval"):
        has_own = tf.train.latest_checkpoint(run_config.model_dir) is not None
        check(not (run_config.from_scratch and run_config.checkpoint),
              "from_scratch starts from random weights; it cannot be combined with "
              f"--checkpoint={run_config.checkpoint}: drop one of them")
        check(run_config.checkpoint is not None or has_own or run_config.from_scratch,
              f"{training} starts from a pretrained model: pass --checkpoint=<a "
              "pretraining checkpoint or model dir> (model_dir has no checkpoint "
              "to resume), or --from_scratch for a supervised baseline")
    if run_config.mode == "eval":
        has_own = tf.train.latest_checkpoint(run_config.model_dir) is not None
        check(run_config.checkpoint is not None or has_own,
              "eval needs a trained model: model_dir has no checkpoint and "
              "--checkpoint is not set")
    if run_config.checkpoint is not None and not is_savedmodel_dir(run_config.checkpoint):
        resolve_checkpoint(run_config.checkpoint)
    if config.data.dataset == "folder" and not os.path.isdir(config.data.data_dir or ""):
        raise DataError(f"data_dir {config.data.data_dir!r} does not exist: point "
                        "data_dir at the image folder")
    if config.memory.queue_size > 0 and training not in (None, "pretrain"):
        log.warning("queue_size=%d is ignored outside pretraining",
                    config.memory.queue_size)
    if config.train.summary_interval % config.train.steps_per_loop:
        raise RunError(f"summary_interval ({config.train.summary_interval}) must be a "
                       f"multiple of steps_per_loop ({config.train.steps_per_loop})")
    _check_existing_run(config, run_config)


def _check_existing_run(config: ExperimentConfig, run_config: RunConfig) -> None:
    path = os.path.join(run_config.model_dir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as f:
        previous = json.load(f)
    before = previous.get("experiment", {}).get("model")
    if before is not None and before != dataclasses.asdict(config.model):
        changed = sorted(k for k in before
                         if before[k] != dataclasses.asdict(config.model).get(k))
        raise RunError(f"model_dir {run_config.model_dir!r} holds a run with a "
                       f"different model ({', '.join(changed)} differ): use a new "
                       "model_dir or the same settings")


# ---------------------------------------------------------------- strategy
def make_strategy(run_config: RunConfig) -> tf.distribute.Strategy:
    """The tf.distribute strategy `run_config.strategy` names."""
    from official.common import distribute_utils
    name = run_config.strategy
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        name = ("tpu" if run_config.tpu else "mirrored" if len(gpus) > 1
                or run_config.num_cpu_devices > 1 else "one_device")
    if run_config.num_cpu_devices > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()]
                * run_config.num_cpu_devices)
        except RuntimeError:
            pass  # already initialised (e.g. by a test): use what exists
    if name == "tpu":
        check(bool(run_config.tpu), "strategy tpu needs --tpu (name or grpc:// address)")
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=run_config.tpu, zone=run_config.tpu_zone, project=run_config.gcp_project)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "mirrored" and not gpus and run_config.num_cpu_devices > 1:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices[:run_config.num_cpu_devices])
    num_gpus = len(gpus) if run_config.num_gpus < 0 else run_config.num_gpus
    return distribute_utils.get_distribution_strategy(name, num_gpus=num_gpus)


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0
                                            and "chief" not in resolver.cluster_spec().as_dict())


# ------------------------------------------------------------- checkpoints
def _checkpoint_keys(root: tf.train.Checkpoint) -> Dict[str, tf.Variable]:
    """Checkpoint key -> variable for every variable reachable from `root`
    (breadth first, the first path wins, as tf.train.Checkpoint names them)."""
    view = tf.train.TrackableView(root)
    keys, seen, queue = {}, {id(root)}, [(root, [])]
    while queue:
        obj, path = queue.pop(0)
        for name, child in view.children(obj).items():
            if id(child) in seen:
                continue
            seen.add(id(child))
            child_path = path + [name.replace("/", "//").replace(".", ".S")]
            if isinstance(child, tf.Variable) or hasattr(child, "_distributed_container") \
                    or isinstance(child, tf.distribute.DistributedValues):
                keys["/".join(child_path) + "/.ATTRIBUTES/VARIABLE_VALUE"] = child
            queue.append((child, child_path))
    return keys


def init_from_checkpoint(model: tf_keras.Model, path: str) -> Dict[str, List[str]]:
    """Copies the model weights of checkpoint `path` into `model`.

    Returns {'restored', 'missing' (model variables not in the checkpoint,
    left as initialised), 'unused' (checkpoint model variables this model
    does not have, e.g. projection layers dropped for fine-tuning),
    'mismatched' (shape differs: not restored)}. Also logs the summary.
    """
    path = resolve_checkpoint(path)
    in_checkpoint = dict(tf.train.list_variables(path))
    wanted = _checkpoint_keys(tf.train.Checkpoint(model=model))
    report = {"restored": [], "missing": [], "unused": [], "mismatched": []}
    for key, variable in wanted.items():
        if key not in in_checkpoint:
            report["missing"].append(key)
        elif list(in_checkpoint[key]) != variable.shape.as_list():
            report["mismatched"].append(f"{key} {in_checkpoint[key]} vs {variable.shape}")
        else:
            report["restored"].append(key)
    report["unused"] = sorted(k for k in in_checkpoint if k.startswith("model/")
                              and k.endswith("VARIABLE_VALUE") and k not in wanted)
    check(report["restored"], f"checkpoint {path!r} has none of this model's "
          "variables: is it a simclr_tf2 checkpoint of the same architecture?")
    check(not report["mismatched"], "checkpoint variables with a different shape "
          f"(different architecture?): {report['mismatched'][:5]}")
    reader = tf.train.load_checkpoint(path)
    for key in report["restored"]:
        wanted[key].assign(reader.get_tensor(key))
    log.info("initialised from %s: %d variables restored, %d not in the checkpoint "
                "(kept as initialised)%s, %d checkpoint variables unused%s", path,
                len(report["restored"]), len(report["missing"]),
                f" e.g. {report['missing'][:3]}" if report["missing"] else "",
                len(report["unused"]),
                f" e.g. {report['unused'][:3]}" if report["unused"] else "")
    return report


def init_model(model: tf_keras.Model, path: str):
    """Initialises `model` from a simclr_tf2 checkpoint (prefix or directory)
    or from an official SimCLRv2 TF2 SavedModel directory."""
    if is_savedmodel_dir(path):
        try:
            return import_official_variables(model, path)
        except OfficialImportError as error:
            raise RunError(f"--checkpoint={path}: {error}") from None
    return init_from_checkpoint(model, resolve_checkpoint(path))


# ------------------------------------------------------------------ trainer
def _say(verbose: bool, message: str) -> None:
    """A normal event: a plain line on the console when verbose, and info
    in the log."""
    log.info(message)
    if verbose:
        print(message, flush=True)


def _format_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class NonFiniteLossError(RunError):
    pass


class SimCLRTrainer(orbit.StandardTrainer):
    """Runs `Learner.distributed_step` in orbit's loop; averages metrics per loop."""

    METRICS = ("loss", "contrast_loss", "contrast_acc", "contrast_entropy",
               "probe_loss", "probe_acc", "sup_loss", "sup_acc", "distill_loss",
               "teacher_agreement",
               "weight_decay_loss", "learning_rate", "erank_projection",
               "erank_backbone", "cos_positive", "cos_negative", "cos_queue",
               "queue_mean_norm", "online_momentum_cos", "queue_own_images")
    # Printed on a second line when the run has a memory.
    MEMORY_METRICS = ("erank_projection", "erank_backbone", "cos_positive", "cos_negative",
                      "cos_queue", "queue_mean_norm", "online_momentum_cos",
                      "queue_own_images")

    def __init__(self, learner: Learner, strategy, dataset, total_steps: int,
                 global_batch: int, verbose: bool = True):
        self.learner = learner
        self.strategy = strategy
        self.total_steps = total_steps
        self.global_batch = global_batch
        self.verbose = verbose
        # Host-side accumulators, updated with already-reduced values in
        # cross-replica context (so created outside the strategy scope).
        self.metrics = {name: tf_keras.metrics.Mean(name) for name in self.METRICS}
        self._loop_start = None
        self._loop_step = None
        self._run_start = time.time()
        self._run_start_step = int(learner.step.numpy())
        super().__init__(dataset, options=orbit.StandardTrainerOptions(
            use_tf_while_loop=False))

    def train_loop_begin(self):
        for metric in self.metrics.values():
            metric.reset_state()
        self._loop_start = time.time()
        self._loop_step = int(self.learner.step.numpy())

    def train_step(self, iterator):
        metrics = self.learner.distributed_step(self.strategy, next(iterator))
        for name, value in metrics.items():
            if name in self.metrics:
                self.metrics[name].update_state(value)

    def train_loop_end(self):
        step = int(self.learner.step.numpy())
        results = {name: float(m.result()) for name, m in self.metrics.items()
                   if int(m.count.numpy()) > 0}
        if not math.isfinite(results.get("loss", 0.0)):
            raise NonFiniteLossError(
                f"non-finite loss ({results.get('loss')}) in the steps up to {step}: "
                "training stopped and the last good checkpoint is kept; lower the "
                "learning rate or use float32")
        elapsed = max(time.time() - self._loop_start, 1e-9)
        steps = step - self._loop_step
        results["images_per_second"] = steps * self.global_batch / elapsed
        results["weight_decay"] = self.learner.config.train.weight_decay
        rate = (step - self._run_start_step) / max(time.time() - self._run_start, 1e-9)
        eta = (self.total_steps - step) / rate if rate > 0 else 0.0
        if self.verbose:
            # Pretraining: the contrastive objective first, then the probe.
            first = ("contrast_loss",) if "contrast_loss" in results else ("loss",)
            shown = " ".join(f"{k} {results[k]:.4g}" for k in
                             first + ("contrast_acc", "probe_loss", "probe_acc",
                                      "sup_loss", "sup_acc", "distill_loss",
                                      "teacher_agreement", "learning_rate")
                             if k in results)
            print(f"step {step}/{self.total_steps} {shown} | "
                  f"{results['images_per_second']:.1f} img/s | ETA "
                  f"{_format_time(eta)}", flush=True)
            if "cos_queue" in results:
                print("  memory: " + " ".join(f"{k} {results[k]:.3g}" for k in
                                             self.MEMORY_METRICS if k in results),
                      flush=True)
        return results


# --------------------------------------------------------------------- run
def _write_json(path: str, values) -> None:
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(values, indent=2, sort_keys=True, default=str))
    tf.io.gfile.rename(tmp, path, overwrite=True)


def prepare_data(config, run_config, mode, write: bool = True):
    """(source, indices) of the training examples of `mode`; for supervised
    modes the labelled subset, whose ids are written to model_dir when
    `write`."""
    labelled = mode not in ("pretrain", "distill") or config.train.distill_alpha > 0
    source = make_source(config.data, config.data.train_split, labelled=labelled)
    if mode == "pretrain":
        indices = np.arange(len(source))
    elif mode == "distill":
        # Every image; only the labelled subset keeps its label (the rest -1).
        indices = np.arange(len(source))
        if labelled:
            keep = labelled_subset(
                source, config.data.label_fraction, config.data.label_ids_file,
                seed=config.data.seed,
                write_to=os.path.join(run_config.model_dir, SUBSET_FILE) if write else None)
            labels = np.full(len(source), -1, np.int64)
            labels[keep] = np.asarray(source.labels)[keep]
            source = dataclasses.replace(source, labels=labels)
    else:
        indices = labelled_subset(
            source, config.data.label_fraction, config.data.label_ids_file,
            seed=config.data.seed,
            write_to=os.path.join(run_config.model_dir, SUBSET_FILE) if write else None)
    return source, indices


def _supervised_classes(config, source) -> ExperimentConfig:
    if source.num_classes and config.model.num_classes not in (0, source.num_classes):
        raise DataError(f"num_classes={config.model.num_classes} but the data has "
                        f"{source.num_classes} classes: set num_classes="
                        f"{source.num_classes}")
    return config


def train(config: ExperimentConfig, run_config: RunConfig, strategy,
          mode: str, verbose: bool = True, data=None) -> Learner:
    """Trains `mode` in model_dir until train_steps/epochs; resumes if a
    checkpoint is there. `data` = (source, indices) when already prepared."""
    source, indices = data or prepare_data(config, run_config, mode)
    config = _supervised_classes(config, source)
    steps = schedule_steps(config, len(indices))
    global_batch = config.train.train_batch_size
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        teacher = (load_teacher(run_config.teacher, config.data.image_size)
                   if mode == "distill" else None)
        extras = None
        if teacher is not None and config.train.distill_precompute:
            extras = {"teacher_logits": precompute_teacher_logits(
                teacher, config, source, indices, verbose)}
            teacher = None  # the batches carry the logits
        learner = Learner(config, mode, steps.total_steps, steps.warmup_steps,
                          teacher=teacher)
        checkpoint = tf.train.Checkpoint(**learner.checkpoint_items())
    chief = _is_chief(strategy)
    checkpoint_dir = run_config.model_dir if chief else os.path.join(
        run_config.model_dir, f".worker_{strategy.cluster_resolver.task_id}")
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_dir, max_to_keep=config.train.keep_checkpoint_max,
        step_counter=learner.step, checkpoint_interval=config.train.checkpoint_interval)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        _say(verbose, f"resuming from {manager.latest_checkpoint} at step "
                      f"{int(learner.step.numpy())}")
    elif run_config.checkpoint:
        report = init_model(learner.model, run_config.checkpoint)
        _say(verbose, f"initialised from {run_config.checkpoint}: "
                      + (report.summary() if hasattr(report, "summary") else
                         f"{len(report['restored'])} variables restored, "
                         f"{len(report['missing'])} not in the checkpoint, "
                         f"{len(report['unused'])} checkpoint variables unused"))
        if learner.momentum_encoder is not None:
            learner.momentum_encoder.copy_online()
        head = learner.model.supervised_head
        if config.train.zero_init_logits_layer and head is not None:
            # The checkpoint's linear head (trained while pretraining) was
            # just restored; zero_init_logits_layer means start from zero.
            for weight in head.trainable_weights:
                weight.assign(tf.zeros_like(weight))
            _say(verbose, "zero_init_logits_layer: the supervised head starts at zero")
    start = int(learner.step.numpy())
    pipeline_mode = "pretrain" if mode == "pretrain" else "finetune"
    if (mode == "linear_eval" and config.train.linear_eval_cache_features
            and start < steps.total_steps):
        features = frozen_features(learner, config, source, indices, verbose)
        dataset = distribute(strategy, lambda ctx: feature_dataset(
            features, source.labels, indices, global_batch, seed=config.data.seed,
            input_context=ctx, start_step=start))
    else:
        dataset = distribute(strategy, lambda ctx: build_from_config(
            config.data, source, pipeline_mode, global_batch, indices,
            input_context=ctx, start_step=start, extras=extras))
    trainer = SimCLRTrainer(learner, strategy, dataset, steps.total_steps,
                            global_batch, verbose=verbose)
    summary_dir = os.path.join(run_config.model_dir, "summaries", "train") if chief else None
    monitor = None
    if mode == "pretrain" and config.monitor.knn_interval > 0:
        monitor = knn_monitor(config, source, strategy, learner, verbose)
    controller = orbit.Controller(
        global_step=learner.step, trainer=trainer, strategy=strategy, evaluator=monitor,
        steps_per_loop=config.train.steps_per_loop, checkpoint_manager=manager,
        summary_interval=config.train.summary_interval if chief else None,
        summary_dir=summary_dir,
        eval_summary_dir=(os.path.join(run_config.model_dir, "summaries", "monitor")
                          if chief and monitor else None))
    if chief and start == 0:
        _image_summaries(summary_dir, config, source, indices, pipeline_mode)
    if verbose:
        print(f"{mode}: {len(indices)} examples, batch {global_batch} on {replicas} "
              f"replica(s), steps {start} -> {steps.total_steps}", flush=True)
    run_start = time.time()
    if start < steps.total_steps and monitor is not None:
        loop = config.train.steps_per_loop  # whole loops between reports
        controller.train_and_evaluate(
            train_steps=steps.total_steps, eval_steps=1,
            eval_interval=-(-config.monitor.knn_interval // loop) * loop)
        record = {"history": monitor.history, "monitor_seconds": monitor.seconds,
                  "run_seconds": time.time() - run_start}
        if verbose:
            print(f"monitor: {len(monitor.history)} reports took {monitor.seconds:.1f}s "
                  f"({100 * monitor.seconds / max(record['run_seconds'], 1e-9):.1f}% "
                  "of the run)", flush=True)
        if chief:
            _write_json(os.path.join(run_config.model_dir, MONITOR_FILE), record)
    elif start < steps.total_steps:
        controller.train(steps=steps.total_steps)
    if config.train.bn_recompute and mode != "pretrain":
        recompute_bn(config, strategy, learner, source, indices, verbose)
        # Overwrite the final checkpoint in place (manager.save skips a step
        # it has already saved).
        latest = manager.latest_checkpoint or manager.save(check_interval=False)
        checkpoint.write(latest)
    if not chief:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return learner


def knn_monitor(config: ExperimentConfig, source, strategy, learner: Learner,
                verbose: bool = True) -> KnnMonitor:
    """The kNN monitor of a pretraining run: its bank is (a seeded subset
    of) the labelled training split, its queries the eval split; without
    labels on either, the bank is the run's own images and only the
    effective rank is reported."""
    monitor = config.monitor
    try:
        bank = make_source(config.data, config.data.train_split, labelled=True)
        queries = make_source(config.data, config.data.eval_split, labelled=True)
        if (bank.labels < 0).any() or (queries.labels < 0).any():
            raise DataError("unlabeled")
    except DataError:
        bank, queries = source, None
        if verbose:
            print("kNN monitor: the data has no labels (or no eval split): it reports "
                  "the effective rank only", flush=True)
    return KnnMonitor(
        learner.model, config.data, bank, queries, config.train.eval_batch_size,
        monitor.knn_k, monitor.knn_temperature,
        bank_indices=monitor_indices(len(bank), monitor.knn_bank_size, config.data.seed),
        query_indices=(None if queries is None else monitor_indices(
            len(queries), monitor.knn_eval_size, config.data.seed)),
        strategy=strategy, step=learner.step, verbose=verbose)


def bn_recompute_order(config: ExperimentConfig, source, indices) -> np.ndarray:
    """The images `recompute_bn` reads, in its order: the run's training
    examples `indices` (every example of `source` when bn_recompute_images is
    "all") in a random order seeded by data.seed. Sources are often sorted by
    class; in index order each batch would hold one or two classes."""
    if config.train.bn_recompute_images == "all":
        indices = np.arange(len(source))
    return np.random.default_rng(config.data.seed).permutation(np.asarray(indices))


def recompute_bn(config: ExperimentConfig, strategy, learner: Learner, source, indices,
                 verbose: bool = True) -> Dict[str, int]:
    """`recompute_bn_statistics` over the eval view (no augmentation) of the
    images `bn_recompute_order` picks, in full batches of up to
    train_batch_size."""
    indices = bn_recompute_order(config, source, indices)
    replicas = strategy.num_replicas_in_sync
    batch = min(config.train.train_batch_size, len(indices)) // replicas * replicas
    steps = min(config.train.bn_recompute_batches, len(indices) // max(batch, 1))
    if steps == 0:
        raise RunError(f"bn_recompute needs at least {replicas} training examples "
                       f"(one per replica); the run has {len(indices)}")

    def make(ctx):
        local = batch // replicas
        ds = build_from_config(config.data, source, "eval", batch, indices,
                               input_context=ctx)
        # Eval batches are padded with index -1: keep real images, full batches.
        return ds.unbatch().filter(lambda e: e["index"] >= 0).batch(
            local, drop_remainder=True)

    start = time.time()
    iterator = iter(distribute(strategy, make))
    report = recompute_bn_statistics(learner.model, (next(iterator) for _ in range(steps)),
                                     strategy)
    if verbose:
        print(f"batch-norm statistics of {report['layers']} layers recomputed over "
              f"{steps * batch} training images (eval view, {steps} batches of {batch}) "
              f"in {time.time() - start:.0f}s", flush=True)
    return report


def precompute_teacher_logits(teacher, config: ExperimentConfig, source, indices,
                              verbose: bool = True) -> np.ndarray:
    """The teacher's logits on the eval view of every example in `indices`
    ([len(source), classes] float32; rows outside `indices` are zero)."""
    start = time.time()
    table = None
    batch = config.train.eval_batch_size
    for element in build_from_config(config.data, source, "eval", batch, indices):
        logits = tf.cast(teacher(element["image"]), tf.float32).numpy()
        index = element["index"].numpy()
        if table is None:
            table = np.zeros([len(source), logits.shape[-1]], np.float32)
        keep = index >= 0  # eval batches are padded with index -1
        table[index[keep]] = logits[keep]
    if verbose:
        print(f"teacher logits precomputed for {len(indices)} images in "
              f"{time.time() - start:.0f}s", flush=True)
    return table


# Features above this size would not fit in one graph constant (2 GB).
MAX_CACHED_FEATURE_BYTES = 2 ** 31 - 2 ** 20


def frozen_features(learner: Learner, config: ExperimentConfig, source, indices,
                    verbose: bool = True) -> np.ndarray:
    """The frozen network's `finetune_input` (what the linear head reads) for
    the training view of every example in `indices`, computed once:
    [len(source), dim] float32, rows outside `indices` zero. The training view
    must be deterministic (crop_area_min=1, no flip; `validate` checks)."""
    start = time.time()
    model = learner.model
    size = config.data.image_size
    dim = int(model(tf.zeros([1, size, size, 3]), training=False)["finetune_input"].shape[-1])
    table_bytes = len(source) * dim * 4
    if table_bytes > MAX_CACHED_FEATURE_BYTES:
        raise RunError(f"linear_eval_cache_features: {len(source)} examples x {dim} "
                       f"features take {table_bytes / 2 ** 30:.1f} GB, more than one "
                       "2 GB table: drop --linear_eval_cache_features")
    table = np.zeros([len(source), dim], np.float32)

    @tf.function(reduce_retracing=True)  # the last batch may be smaller
    def forward(images):
        # training=True as in the training step; every layer it reads is frozen.
        return model(images, training=True)["finetune_input"]

    for element in build_from_config(config.data, source, "finetune",
                                      config.train.eval_batch_size, indices,
                                      repeat=False, drop_remainder=False):
        table[element["index"].numpy()] = tf.cast(forward(element["image"]),
                                                  tf.float32).numpy()
    if verbose:
        print(f"linear eval: frozen features ({dim}) of {len(indices)} images "
              f"computed in {time.time() - start:.0f}s", flush=True)
    return table


def _image_summaries(summary_dir, config, source, indices, mode, count=4):
    batch = next(iter(build_from_config(config.data, source, mode, count,
                                        indices[: max(count, 1) * 4])))
    writer = tf.summary.create_file_writer(summary_dir)
    with writer.as_default():
        for key in ("view1", "view2", "image"):
            if key in batch:
                tf.summary.image(f"augmented/{key}", batch[key], step=0, max_outputs=count)
    writer.flush()


def evaluate(config: ExperimentConfig, run_config: RunConfig, strategy,
             learner: Optional[Learner] = None, verbose: bool = True) -> Dict:
    """Top-1 / top-5 of the supervised head on the eval split; writes result.json."""
    split = run_config.eval_split or config.data.eval_split
    source = make_source(config.data, split, labelled=True)
    config = _supervised_classes(config, source)
    batch = config.train.eval_batch_size
    replicas = strategy.num_replicas_in_sync
    batch = max(batch // replicas, 1) * replicas
    checkpoint_path = None
    if learner is None:
        with strategy.scope():
            learner = Learner(config, run_config.train_mode, total_steps=1)
        checkpoint_path = tf.train.latest_checkpoint(run_config.model_dir)
        if checkpoint_path:
            tf.train.Checkpoint(**learner.checkpoint_items()).restore(
                checkpoint_path).expect_partial()
        else:
            checkpoint_path = run_config.checkpoint
            init_model(learner.model, checkpoint_path)
    dataset = distribute(strategy, lambda ctx: build_from_config(
        config.data, source, "eval", batch, input_context=ctx))
    model = learner.model

    @tf.function
    def eval_step(batch_in):
        def step(b):
            logits = tf.cast(model(b["image"], training=False)["logits_sup"], tf.float32)
            labels = tf.cast(b["label"], tf.int32)
            valid = tf.cast(labels >= 0, tf.float32)
            top5 = tf.math.in_top_k(tf.maximum(labels, 0), logits,
                                    min(5, logits.shape[-1]))
            top1 = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels)
            return (tf.reduce_sum(tf.cast(top1, tf.float32) * valid),
                    tf.reduce_sum(tf.cast(top5, tf.float32) * valid),
                    tf.reduce_sum(valid))
        out = strategy.run(step, args=(batch_in,))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in out]

    top1 = top5 = count = 0.0
    for batch_in in dataset:
        a, b, c = eval_step(batch_in)
        top1, top5, count = top1 + float(a), top5 + float(b), count + float(c)
    result = {"split": split, "num_examples": int(count),
              "top1": top1 / max(count, 1), "top5": top5 / max(count, 1),
              "global_step": int(learner.step.numpy()),
              "checkpoint": checkpoint_path, "train_mode": learner.mode}
    if _is_chief(strategy):
        _write_json(os.path.join(run_config.model_dir, RESULT_FILE), result)
    if verbose:
        print(f"eval on {split}: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f} "
              f"({int(count)} examples, step {result['global_step']})", flush=True)
    return result


def export_at_end(config: ExperimentConfig, run_config: RunConfig, strategy,
                  learner: Learner, verbose: bool = True) -> Optional[str]:
    """Hub modules of the trained model in <model_dir>/<export_dir>/<step>.
    Every worker exports (saving may need all of them); only the chief's stays."""
    chief = _is_chief(strategy)
    export_dir = os.path.join(run_config.model_dir, config.export.export_dir)
    if not chief:
        export_dir = os.path.join(run_config.model_dir,
                                  f".worker_{strategy.cluster_resolver.task_id}_export")
    path = export_hub_modules(learner.model, export_dir, config=config,
                              step=int(learner.step.numpy()))
    if not chief:
        shutil.rmtree(export_dir, ignore_errors=True)
        return None
    if verbose:
        print(f"exported hub modules to {path}", flush=True)
    return path


def trained_mode(model_dir: str, default: str) -> str:
    """The training mode recorded in model_dir's config.json, else `default`."""
    path = os.path.join(model_dir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return default
    with tf.io.gfile.GFile(path) as f:
        recorded = json.load(f).get("run", {})
    mode = recorded.get("mode")
    return recorded.get("train_mode", default) if mode in ("eval", "train_then_eval") \
        else mode if mode in TRAIN_MODES else default


def run(config: ExperimentConfig, run_config: RunConfig, verbose: bool = True,
        strategy: Optional[tf.distribute.Strategy] = None) -> Dict:
    """Validates, then trains and/or evaluates. Returns {'learner', 'result'}."""
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
    data = None
    if mode is not None:  # every data error surfaces before anything is written
        data = prepare_data(config, run_config, mode, write=False)
        _supervised_classes(config, data[0])
        schedule_steps(config, len(data[1]))
        if (mode == "pretrain" and config.train.lineareval_while_pretraining
                and not (np.asarray(data[0].labels) >= 0).any()):
            config = config.override(**{"train.lineareval_while_pretraining": False})
            _say(verbose, "the training images have no labels: no online linear probe "
                          "(lineareval_while_pretraining off for this run)")
    if run_config.mode in ("eval", "train_then_eval"):  # before training, not after
        make_source(config.data, run_config.eval_split or config.data.eval_split,
                    labelled=True)
    tf_keras.mixed_precision.set_global_policy(config.train.precision)
    if run_config.mode == "eval":
        source_dir = run_config.model_dir
        if tf.train.latest_checkpoint(source_dir) is None and run_config.checkpoint:
            source_dir = (run_config.checkpoint if tf.io.gfile.isdir(run_config.checkpoint)
                          else os.path.dirname(run_config.checkpoint))
        run_config = dataclasses.replace(
            run_config, train_mode=trained_mode(source_dir, run_config.train_mode))
    try:
        tf.io.gfile.makedirs(run_config.model_dir)
        if _is_chief(strategy) and run_config.mode != "eval":
            _write_json(os.path.join(run_config.model_dir, CONFIG_FILE),
                        {"experiment": config.to_dict(),
                         "run": dataclasses.asdict(run_config),
                         "command": " ".join(sys.argv)})
        learner, result = None, None
        if mode is not None:
            if mode == "distill" and config.train.distill_alpha > 0:
                prepare_data(config, run_config, mode, write=True)  # writes the ids
            elif mode in ("finetune", "linear_eval"):  # the labelled subset's ids
                labelled_subset(data[0], config.data.label_fraction,
                                config.data.label_ids_file, seed=config.data.seed,
                                write_to=os.path.join(run_config.model_dir, SUBSET_FILE))
            learner = train(config, run_config, strategy, mode, verbose, data=data)
        if run_config.mode in ("eval", "train_then_eval"):
            result = evaluate(config, run_config, strategy, learner, verbose)
        export = None
        if learner is not None and config.export.export_at_end:
            export = export_at_end(config, run_config, strategy, learner, verbose)
        monitor = None
        monitor_path = os.path.join(run_config.model_dir, MONITOR_FILE)
        if mode == "pretrain" and tf.io.gfile.exists(monitor_path):
            with tf.io.gfile.GFile(monitor_path) as f:
                history = json.load(f)["history"]
            monitor = history[-1] if history else None
        return {"learner": learner, "result": result, "export": export,
                "monitor": monitor}
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
