"""The model, its optimizer and memory, and the training step of any task.

`Learner` owns everything a training run updates and exposes the per-replica
step (`replica_step`, what a TPU core runs; it compiles with XLA) and the
distributed step (`distributed_step`) that the training loop calls; the
task (simclr_tf2.tasks) supplies the model and the losses.
"""
import dataclasses
import math
from typing import Callable, Dict, Optional, Union

import tensorflow as tf
import tf_keras

from simclr_tf2.configs.schema import ExperimentConfig, check
from simclr_tf2.data import device_augment
from simclr_tf2.layers.conv_bn import batch_norm_splits
from simclr_tf2.memory import MomentumEncoder, NegativeQueue
from simclr_tf2.models.precision import precision_policy
from simclr_tf2.models.simclr_model import SimCLRModel
from simclr_tf2.optim import (build_optimizer, scaled_learning_rate,
                              warmup_cosine_schedule, warmup_steps_for,
                              weight_decay_loss)
from simclr_tf2.tasks import Task, task_for


@dataclasses.dataclass(frozen=True)
class ScheduleSteps:
    total_steps: int
    warmup_steps: int
    steps_per_epoch: int


def schedule_steps(config: ExperimentConfig, num_train_examples: int) -> ScheduleSteps:
    """Training length from train_steps (if > 0) or train_epochs, and warm-up."""
    batch = config.train.train_batch_size
    check(num_train_examples >= batch,
          f"the training set has {num_train_examples} examples, fewer than one "
          f"batch (train_batch_size={batch}); lower train_batch_size")
    steps_per_epoch = num_train_examples // batch
    total = config.train.train_steps or int(
        math.ceil(config.train.train_epochs * num_train_examples / batch))
    warmup = min(warmup_steps_for(config.train.warmup_epochs, steps_per_epoch), total)
    return ScheduleSteps(total, warmup, steps_per_epoch)


def _num_replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


class Learner(tf.Module):
    """Model, optimizer, schedule and (pretraining) memory of one task.

    Create it inside `strategy.scope()`. `task`: a Task (simclr_tf2.tasks) or
    the name of a training mode; the task decides the model, the losses and
    what else trains (the online probe's optimizer, the memory). Batches are
    dicts whose keys the task names; labels < 0 mean "unlabeled".
    The model is built in the Keras dtype policy `precision` (default
    train.precision); the caller's global policy is left as it was.
    """

    def __init__(self, config: ExperimentConfig, task: Union[Task, str], total_steps: int,
                 warmup_steps: int = 0, name: str = "learner",
                 teacher: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
                 precision: Optional[str] = None):
        super().__init__(name=name)
        self.task = task_for(task) if isinstance(task, str) else task
        check(self.task.takes_teacher or teacher is None,
              f"only mode 'distill' takes a teacher. Received: mode={self.task.mode!r}")
        # Not tracked: the teacher is neither trained nor checkpointed with the run.
        self._teacher = [teacher]
        self.config = config
        train = config.train
        self.model_config = self.task.model_config(config)
        if self.model_config.sync_bn and _num_replicas() == 1:
            # On one replica cross-replica statistics are the local ones; the
            # plain layer runs the fused batch-norm kernel (bench/RESULTS.md,
            # "Pretraining step"). Same variables, checkpoints and exports.
            self.model_config = dataclasses.replace(self.model_config, sync_bn=False)
        self.peak_learning_rate = scaled_learning_rate(
            train.learning_rate, train.train_batch_size, train.learning_rate_scaling)
        self.learning_rate = warmup_cosine_schedule(
            self.peak_learning_rate, total_steps, warmup_steps)
        precision = precision or train.precision
        self.loss_scaling = precision == "mixed_float16"
        self.probe_optimizer = None
        self.momentum_encoder: Optional[MomentumEncoder] = None
        self.queue: Optional[NegativeQueue] = None
        with precision_policy(precision):
            self.model = self.build_model()
            self.optimizer = build_optimizer(train.optimizer, self.learning_rate,
                                             momentum=train.momentum,
                                             weight_decay=train.weight_decay)
            if self.loss_scaling:  # float16 gradients underflow without it
                self.optimizer = tf_keras.mixed_precision.LossScaleOptimizer(self.optimizer)
            self.task.prepare(self)
            self._create_optimizer_slots()

    @property
    def mode(self) -> str:
        """The training mode (the task's name)."""
        return self.task.mode

    @property
    def teacher(self) -> Optional[Callable[[tf.Tensor], tf.Tensor]]:
        return self._teacher[0]

    def build_model(self) -> SimCLRModel:
        """A new model of this learner's task and model config (the
        momentum encoder builds its copy with it)."""
        return self.task.build_model(self.config, self.model_config)

    @property
    def step(self) -> tf.Variable:
        return self.optimizer.iterations

    def checkpoint_items(self) -> Dict[str, tf.Module]:
        """What a checkpoint of this run holds."""
        items = {"model": self.model, "optimizer": self.optimizer}
        if self.probe_optimizer is not None:
            items["probe_optimizer"] = self.probe_optimizer
        if self.momentum_encoder is not None:
            items["momentum_encoder"] = self.momentum_encoder.target
            items["queue"] = self.queue
        return items

    def _trained_variables(self):
        """(variables of the training objective, variables of the online
        probe): the probe's are the supervised head's in pretraining."""
        variables = self.model.trainable_variables
        if self.probe_optimizer is None:
            return variables, []
        probe = {id(v) for v in self.model.supervised_head.trainable_variables}
        return ([v for v in variables if id(v) not in probe],
                [v for v in variables if id(v) in probe])

    def _create_optimizer_slots(self) -> None:
        """The optimizers' slots and hyperparameters, made now rather than by
        the first step: a tf.function whose first trace creates variables is
        traced a second time, so every start of a run paid for tracing its
        step twice. Keras 2's legacy optimizers have no public build(); this
        is what their apply_gradients calls first. The probe's slots exist
        even when no batch has labels (two zero tensors)."""
        variables, probe_variables = self._trained_variables()
        self.optimizer._create_all_weights(variables)
        if self.probe_optimizer is not None:
            self.probe_optimizer._create_all_weights(probe_variables)

    # ------------------------------------------------------------------ steps
    def _losses(self, batch: Dict[str, tf.Tensor],
                keys: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
        """The task's metrics, the weight decay and their sum, `loss`."""
        train = self.config.train
        loss, metrics = self.task.losses(self, batch, keys)
        decay = weight_decay_loss(train.optimizer, self._trained_variables()[0],
                                  train.weight_decay)
        metrics["weight_decay_loss"] = decay
        metrics["loss"] = loss + tf.cast(decay, loss.dtype)
        return metrics

    def momentum_keys(self, images: tf.Tensor,
                      order: Optional[tf.Tensor] = None) -> tf.Tensor:
        """The momentum encoder's projections of `images` (both views, view
        major), float32, L2-normalised with hidden_norm. With
        memory.bn_splits > 1 the images go through it in the order `order`
        (a permutation), normalised in bn_splits groups of that order, and
        come back in their own order."""
        target = self.momentum_encoder.target
        splits = self.config.memory.bn_splits
        if order is None or splits <= 1:
            keys = target(images, training=True)["proj_head_output"]
        else:
            with batch_norm_splits(splits):
                shuffled = target(tf.gather(images, order), training=True)
            keys = tf.gather(shuffled["proj_head_output"], tf.math.invert_permutation(order))
        keys = tf.cast(keys, tf.float32)
        if self.config.train.hidden_norm:
            keys = tf.math.l2_normalize(keys, axis=-1)
        return keys

    def replica_step(self, batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """One step on this replica's batch; returns its metrics (local means).

        Gradients of loss / num_replicas are summed across replicas by
        apply_gradients, which gives the gradient of the global-batch mean.
        With memory, the momentum encoder's projections of both views are
        computed before the update and enqueued after it, and the EMA update
        follows the optimizer step.
        """
        # Views the host shipped as 8-bit crops get their colour and blur here.
        batch = device_augment.finish_views(batch)
        keys = None
        splits = self.config.memory.bn_splits if self.task.contrastive else 1
        if self.momentum_encoder is not None:
            images = tf.concat([batch["view1"], batch["view2"]], axis=0)
            order = tf.random.shuffle(tf.range(tf.shape(images)[0])) if splits > 1 else None
            keys = self.momentum_keys(images, order)
        variables, probe_variables = self._trained_variables()
        with tf.GradientTape() as tape, batch_norm_splits(splits):
            metrics = self._losses(batch, keys)
            # The probe reads stop-gradient features: its loss reaches only
            # its own variables, the objective only the others.
            total = metrics["loss"] + metrics.get("probe_loss", 0.0)
            scaled = total / _num_replicas()
            if self.loss_scaling:
                scaled = self.optimizer.get_scaled_loss(scaled)
        grads = tape.gradient(scaled, variables + probe_variables)
        if self.loss_scaling:
            grads = self.optimizer.get_unscaled_gradients(grads)
        # Variables outside this step's loss (e.g. the probe on a pretraining
        # batch without labels) have no gradient.
        self.optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, variables) if g is not None])
        if probe_variables:
            self.probe_optimizer.apply_gradients(
                [(g, v) for g, v in zip(grads[len(variables):], probe_variables)
                 if g is not None])
        if self.momentum_encoder is not None:
            self.momentum_encoder.update()
            self.queue.enqueue(keys, num_views=2, ids=batch.get("index"))
        metrics["learning_rate"] = self.learning_rate(self.optimizer.iterations - 1)
        return metrics

    def distributed_step(self, strategy: tf.distribute.Strategy,
                         batch) -> Dict[str, tf.Tensor]:
        """Runs `replica_step` on every replica; metrics averaged over replicas."""
        per_replica = strategy.run(self.replica_step, args=(batch,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                for k, v in per_replica.items()}
