"""Contrastive pretraining (SimCLRv2, Chen et al. 2020, sec. 2): NT-Xent on
two views, with the optional memory (momentum encoder and queue of
negatives) and the online linear probe."""
import dataclasses
from typing import Dict, Optional

import tensorflow as tf
import tf_keras

from simclr_tf2.configs.schema import ExperimentConfig, ModelConfig
from simclr_tf2.memory import MomentumEncoder, NegativeQueue
from simclr_tf2.monitors.representation import effective_rank
from simclr_tf2.objectives.nt_xent import gather_from_replicas, nt_xent_loss
from simclr_tf2.tasks.base import Task, supervised_loss

# The memory's diagnostics (bench/RESULTS.md, "Memory").
MEMORY_METRICS = ("erank_projection", "erank_backbone", "cos_queue", "queue_mean_norm",
                  "online_momentum_cos", "queue_own_images")


class PretrainTask(Task):
    """NT-Xent on two views (with memory.queue_size > 0: contrasted as
    memory.contrast_keys says, against the momentum encoder's keys and the
    queue); with labels and num_classes > 0, the online linear probe: a
    linear head on stop_gradient features with its own optimizer, reported
    as probe_loss / probe_acc. Batches: {'view1', 'view2', optional
    'label', 'index'}."""
    mode = "pretrain"
    contrastive = True
    supervised = False
    reads_every_image = True
    metric_names = ("contrast_loss", "contrast_acc", "contrast_entropy", "cos_positive",
                    "cos_negative", "probe_loss", "probe_acc") + MEMORY_METRICS

    def needs_labels(self, config: ExperimentConfig) -> Optional[bool]:
        return None  # labels where the data has them: the probe, the kNN monitor

    def model_config(self, config: ExperimentConfig) -> ModelConfig:
        if not config.train.lineareval_while_pretraining:
            return dataclasses.replace(config.model, num_classes=0)
        return config.model

    def prepare(self, learner) -> None:
        config = learner.config
        # The online probe: its own momentum SGD at a fixed rate. It reads
        # stop-gradient features, and a head trained at the pretraining
        # optimizer's rate (LARS's rate without its trust ratio) diverges.
        if learner.model.supervised_head is not None:
            learner.probe_optimizer = tf_keras.optimizers.legacy.SGD(
                config.monitor.probe_learning_rate, momentum=0.9, name="probe_sgd")
        if config.memory.queue_size > 0:
            learner.momentum_encoder = MomentumEncoder(
                learner.model, learner.build_model, momentum=config.memory.momentum)
            size = config.data.image_size
            key_dim = int(learner.model(tf.zeros([1, size, size, 3]))
                          ["proj_head_output"].shape[-1])
            learner.queue = NegativeQueue(config.memory.queue_size, key_dim)

    def losses(self, learner, batch, keys):
        train, memory = learner.config.train, learner.config.memory
        outputs = learner.model([batch["view1"], batch["view2"]], training=True)
        queue = valid = None
        if learner.queue is not None:
            queue, valid = queue_negatives(learner, batch)
        contrast = nt_xent_loss(
            outputs["proj_head_output"], train.temperature, train.hidden_norm,
            queue=queue, queue_valid=valid,
            queue_temperature=memory.queue_temperature or None,
            keys=keys if memory.contrast_keys in ("momentum", "both") else None,
            queue_weight=memory.queue_weight)
        loss, shown = contrast.loss, contrast
        if learner.queue is not None and memory.contrast_keys == "both":
            # SimCLR's loss among the online projections, averaged with the
            # MoCo-style loss against the keys and the queue; accuracy and
            # entropy are SimCLR's (the online views finding each other).
            shown = nt_xent_loss(outputs["proj_head_output"], train.temperature,
                                 train.hidden_norm)
            loss = (loss + shown.loss) / 2
        metrics = {"contrast_loss": loss, "contrast_acc": shown.accuracy,
                   "contrast_entropy": shown.entropy,
                   "cos_positive": shown.positive_cosine,
                   "cos_negative": shown.negative_cosine}
        if learner.queue is not None:
            # The batch's effective ranks cost an eigendecomposition each, so
            # only runs with memory pay them; the kNN monitor reports
            # effective ranks for every run.
            metrics["erank_projection"] = effective_rank(outputs["proj_head_output"])
            metrics["erank_backbone"] = effective_rank(outputs["final_avg_pool"])
            metrics["cos_queue"] = contrast.queue_cosine
            metrics.update(memory_diagnostics(learner, batch, outputs, keys, queue))
        if "logits_sup" in outputs and "label" in batch:  # the online probe
            labels = tf.concat([batch["label"], batch["label"]], axis=0)
            metrics["probe_loss"], metrics["probe_acc"] = supervised_loss(
                labels, outputs["logits_sup"])
        return loss, metrics


def queue_negatives(learner, batch: Dict[str, tf.Tensor]):
    """(keys [queue_size, dim], valid [queue_size] or [local_batch,
    queue_size]) of the queue as this step uses it (memory settings)."""
    memory = learner.config.memory
    keys, valid = learner.queue.keys, learner.queue.valid
    if memory.center_queue:
        weight = tf.cast(valid, keys.dtype)[:, None]
        mean = tf.reduce_sum(keys * weight, 0) / tf.maximum(tf.reduce_sum(weight), 1.0)
        keys = keys - mean
        if learner.config.train.hidden_norm:
            keys = tf.math.l2_normalize(keys, axis=-1)
    if memory.warmup_steps:
        valid = tf.logical_and(valid, learner.step >= memory.warmup_steps)
    if memory.exclude_own_images and "index" in batch:
        own = tf.equal(tf.cast(batch["index"], tf.int64)[:, None],
                       learner.queue.ids[None, :])  # [local_batch, queue_size]
        valid = tf.logical_and(valid[None, :], tf.logical_not(own))
    return keys, valid


def memory_diagnostics(learner, batch, outputs, keys, queue) -> Dict[str, tf.Tensor]:
    """How the online projections relate to the memory's keys."""
    online = tf.math.l2_normalize(tf.cast(outputs["proj_head_output"], tf.float32), -1)
    valid = tf.cast(learner.queue.valid, tf.float32)
    queue_mean = tf.reduce_sum(queue * valid[:, None], 0) / tf.maximum(
        tf.reduce_sum(valid), 1.0)
    metrics = {
        "online_momentum_cos": tf.reduce_mean(tf.reduce_sum(
            online * tf.math.l2_normalize(keys, -1), -1)),
        "queue_mean_norm": tf.norm(queue_mean)}
    if "index" in batch:
        step_ids, _ = gather_from_replicas(tf.cast(batch["index"], tf.int64))
        own = tf.reduce_any(tf.equal(learner.queue.ids[:, None], step_ids[None, :]), 1)
        metrics["queue_own_images"] = tf.math.divide_no_nan(
            tf.reduce_sum(tf.cast(own, tf.float32) * valid), tf.reduce_sum(valid))
    return metrics
