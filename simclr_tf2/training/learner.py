"""The model, its optimizer and memory, and one training step per mode.

`Learner` owns everything a training run updates and exposes the per-replica
step (`replica_step`, what a TPU core runs; it compiles with XLA) and the
distributed step (`distributed_step`) that the training loop calls.
"""
import dataclasses
import math
from typing import Callable, Dict, Optional

import tensorflow as tf
import tf_keras

from simclr_tf2.configs.modes import TRAIN_MODES
from simclr_tf2.configs.schema import ExperimentConfig, check
from simclr_tf2.data import device_augment
from simclr_tf2.layers.conv_bn import batch_norm_splits
from simclr_tf2.memory import MomentumEncoder, NegativeQueue
from simclr_tf2.models.simclr_model import SimCLRModel, model_config_for, model_mode
from simclr_tf2.objectives.distill import distillation_loss
from simclr_tf2.monitors.representation import effective_rank
from simclr_tf2.objectives.nt_xent import gather_from_replicas, nt_xent_loss
from simclr_tf2.optim import (build_optimizer, scaled_learning_rate,
                              warmup_cosine_schedule, warmup_steps_for,
                              weight_decay_loss)


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


def supervised_loss(labels: tf.Tensor, logits: tf.Tensor):
    """Mean cross-entropy and accuracy over rows with a label >= 0 (the rest
    are unlabeled); returns zeros when no row has a label."""
    if logits.dtype in (tf.float16, tf.bfloat16):  # mixed precision
        logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    mask = tf.cast(labels >= 0, logits.dtype)
    safe = tf.maximum(labels, 0)
    per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(safe, logits)
    count = tf.maximum(tf.reduce_sum(mask), 1.0)
    loss = tf.reduce_sum(per_row * mask) / count
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), safe),
                      logits.dtype)
    return loss, tf.reduce_sum(correct * mask) / count


class Learner(tf.Module):
    """Model, optimizer, schedule and (pretraining) memory for one mode.

    Create it inside `strategy.scope()`. Modes:
      pretrain: NT-Xent on two views (with memory, memory.queue_size > 0:
        contrasted as memory.contrast_keys says, against the momentum
        encoder's keys and the queue) and, with labels and num_classes > 0, the
        online linear probe: a linear head on stop_gradient features with its
        own optimizer (`probe_optimizer`), reported as probe_loss/probe_acc.
      finetune: cross-entropy on one view through the head chosen by
        ft_proj_selector; model.fine_tune_after_block freezes a prefix.
      linear_eval: like finetune, but only the supervised head trains.
    Batches are dicts: pretrain {'view1', 'view2', optional 'label'},
    otherwise {'image', 'label'}, or for linear_eval {'features', 'label'}
    with the frozen network's precomputed `finetune_input`; labels < 0 mean
    "unlabeled".
    """

    def __init__(self, config: ExperimentConfig, mode: str, total_steps: int,
                 warmup_steps: int = 0, name: str = "learner",
                 teacher: Optional[Callable[[tf.Tensor], tf.Tensor]] = None):
        super().__init__(name=name)
        check(mode in TRAIN_MODES,
              f"mode must be one of {list(TRAIN_MODES)}. Received: {mode!r}")
        check(mode == "distill" or teacher is None,
              f"only mode 'distill' takes a teacher. Received: mode={mode!r}")
        # Not tracked: the teacher is neither trained nor checkpointed with the run.
        self._teacher = [teacher]
        self.config = config
        self.mode = mode
        train = config.train
        self.model_config = model_config_for(config, mode)
        if self.model_config.sync_bn and _num_replicas() == 1:
            # On one replica cross-replica statistics are the local ones; the
            # plain layer runs the fused batch-norm kernel (bench/RESULTS.md,
            # "Pretraining step"). Same variables, checkpoints and exports.
            self.model_config = dataclasses.replace(self.model_config, sync_bn=False)
        image_size = config.data.image_size
        self._dummy = tf.zeros([1, image_size, image_size, 3])
        self.model = self._build_model()
        if mode == "linear_eval":
            self.model.projection_head.trainable = False
        self.peak_learning_rate = scaled_learning_rate(
            train.learning_rate, train.train_batch_size, train.learning_rate_scaling)
        self.learning_rate = warmup_cosine_schedule(
            self.peak_learning_rate, total_steps, warmup_steps)
        self.optimizer = build_optimizer(train.optimizer, self.learning_rate,
                                         momentum=train.momentum,
                                         weight_decay=train.weight_decay)
        self.loss_scaling = (tf_keras.mixed_precision.global_policy().compute_dtype
                             == "float16")
        if self.loss_scaling:  # float16 gradients underflow without it
            self.optimizer = tf_keras.mixed_precision.LossScaleOptimizer(self.optimizer)
        # The online linear probe (pretraining with a supervised head): its
        # own momentum SGD at a fixed rate. It reads stop-gradient features,
        # and a head trained at the pretraining optimizer's rate (LARS's
        # learning rate without its trust ratio) diverges.
        self.probe_optimizer = None
        if mode == "pretrain" and self.model.supervised_head is not None:
            self.probe_optimizer = tf_keras.optimizers.legacy.SGD(
                config.monitor.probe_learning_rate, momentum=0.9, name="probe_sgd")
        self.momentum_encoder: Optional[MomentumEncoder] = None
        self.queue: Optional[NegativeQueue] = None
        if mode == "pretrain" and config.memory.queue_size > 0:
            self.momentum_encoder = MomentumEncoder(
                self.model, self._build_model, momentum=config.memory.momentum)
            key_dim = int(self.model(self._dummy)["proj_head_output"].shape[-1])
            self.queue = NegativeQueue(config.memory.queue_size, key_dim)

    def _build_model(self) -> SimCLRModel:
        model = SimCLRModel(
            self.model_config,
            mode=model_mode(self.mode),
            zero_init_logits_layer=self.config.train.zero_init_logits_layer)
        model(self._dummy, training=False)
        return model

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

    # ------------------------------------------------------------------ steps
    def _queue_negatives(self, batch: Dict[str, tf.Tensor]):
        """(keys [queue_size, dim], valid [queue_size] or [local_batch,
        queue_size]) of the queue as this step uses it (memory settings)."""
        memory = self.config.memory
        keys, valid = self.queue.keys, self.queue.valid
        if memory.center_queue:
            weight = tf.cast(valid, keys.dtype)[:, None]
            mean = tf.reduce_sum(keys * weight, 0) / tf.maximum(tf.reduce_sum(weight), 1.0)
            keys = keys - mean
            if self.config.train.hidden_norm:
                keys = tf.math.l2_normalize(keys, axis=-1)
        if memory.warmup_steps:
            valid = tf.logical_and(valid, self.step >= memory.warmup_steps)
        if memory.exclude_own_images and "index" in batch:
            own = tf.equal(tf.cast(batch["index"], tf.int64)[:, None],
                           self.queue.ids[None, :])  # [local_batch, queue_size]
            valid = tf.logical_and(valid[None, :], tf.logical_not(own))
        return keys, valid

    def _memory_diagnostics(self, batch, outputs, keys, queue) -> Dict[str, tf.Tensor]:
        """How the online projections relate to the memory's keys."""
        online = tf.math.l2_normalize(tf.cast(outputs["proj_head_output"], tf.float32), -1)
        valid = tf.cast(self.queue.valid, tf.float32)
        queue_mean = tf.reduce_sum(queue * valid[:, None], 0) / tf.maximum(
            tf.reduce_sum(valid), 1.0)
        metrics = {
            "online_momentum_cos": tf.reduce_mean(tf.reduce_sum(
                online * tf.math.l2_normalize(keys, -1), -1)),
            "queue_mean_norm": tf.norm(queue_mean)}
        if "index" in batch:
            step_ids, _ = gather_from_replicas(tf.cast(batch["index"], tf.int64))
            own = tf.reduce_any(tf.equal(self.queue.ids[:, None], step_ids[None, :]), 1)
            metrics["queue_own_images"] = tf.math.divide_no_nan(
                tf.reduce_sum(tf.cast(own, tf.float32) * valid), tf.reduce_sum(valid))
        return metrics

    def _losses(self, batch: Dict[str, tf.Tensor],
                keys: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
        train = self.config.train
        metrics = {}
        if self.mode == "pretrain":
            views = [batch["view1"], batch["view2"]]
            outputs = self.model(views, training=True)
            memory = self.config.memory
            queue = valid = None
            if self.queue is not None:
                queue, valid = self._queue_negatives(batch)
            contrast = nt_xent_loss(
                outputs["proj_head_output"], train.temperature, train.hidden_norm,
                queue=queue, queue_valid=valid,
                queue_temperature=memory.queue_temperature or None,
                keys=keys if memory.contrast_keys in ("momentum", "both") else None,
                queue_weight=memory.queue_weight)
            loss, shown = contrast.loss, contrast
            if self.queue is not None and memory.contrast_keys == "both":
                # SimCLR's loss among the online projections, averaged with the
                # MoCo-style loss against the keys and the queue; accuracy and
                # entropy are SimCLR's (the online views finding each other).
                shown = nt_xent_loss(outputs["proj_head_output"], train.temperature,
                                     train.hidden_norm)
                loss = (loss + shown.loss) / 2
            metrics.update(contrast_loss=loss,
                           contrast_acc=shown.accuracy,
                           contrast_entropy=shown.entropy,
                           cos_positive=shown.positive_cosine,
                           cos_negative=shown.negative_cosine)
            if self.queue is not None:
                # The memory's diagnostics (bench/RESULTS.md, "Memory"): the
                # batch's effective ranks cost an eigendecomposition each, so
                # only runs with memory pay them; the kNN monitor reports
                # effective ranks for every run.
                metrics["erank_projection"] = effective_rank(outputs["proj_head_output"])
                metrics["erank_backbone"] = effective_rank(outputs["final_avg_pool"])
                metrics["cos_queue"] = contrast.queue_cosine
                metrics.update(self._memory_diagnostics(batch, outputs, keys, queue))
            if "logits_sup" in outputs and "label" in batch:  # the online probe
                labels = tf.concat([batch["label"], batch["label"]], axis=0)
                probe, acc = supervised_loss(labels, outputs["logits_sup"])
                metrics.update(probe_loss=probe, probe_acc=acc)
        elif self.mode == "distill":
            outputs = self.model(batch["image"], training=True)
            logits = outputs["logits_sup"]
            if self._teacher[0] is not None:
                teacher = self._teacher[0](batch["image"])
            else:
                check("teacher_logits" in batch, "distill without a teacher function "
                      "needs batches with precomputed 'teacher_logits'")
                teacher = batch["teacher_logits"]
            teacher = tf.stop_gradient(tf.cast(teacher, tf.float32))
            loss = distillation_loss(teacher, logits, train.distill_temperature)
            agree = tf.equal(tf.argmax(teacher, -1), tf.argmax(logits, -1))
            metrics.update(distill_loss=loss,
                           teacher_agreement=tf.reduce_mean(tf.cast(agree, tf.float32)))
            if train.distill_alpha > 0 and "label" in batch:
                sup, acc = supervised_loss(batch["label"], logits)
                loss += train.distill_alpha * sup
                metrics.update(sup_loss=sup, sup_acc=acc)
        else:
            if "features" in batch:  # linear eval on cached frozen features
                check(self.mode == "linear_eval", "precomputed 'features' batches "
                      f"are for linear_eval only. Received: mode={self.mode!r}")
                logits = self.model.supervised_head(batch["features"])
            else:
                logits = self.model(batch["image"], training=True)["logits_sup"]
            sup, acc = supervised_loss(batch["label"], logits)
            loss = sup
            metrics.update(sup_loss=sup, sup_acc=acc)
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
        splits = self.config.memory.bn_splits if self.mode == "pretrain" else 1
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
