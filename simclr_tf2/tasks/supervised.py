"""The tasks that train the supervised head: fine-tuning from a middle layer
of the projection head, linear evaluation, and distillation into a student
(SimCLRv2, Chen et al. 2020, sec. 2)."""
import dataclasses
from typing import Optional

import tensorflow as tf

from simclr_tf2.configs.schema import ExperimentConfig, ModelConfig, check
from simclr_tf2.objectives.distill import distillation_loss
from simclr_tf2.tasks.base import Task, supervised_loss


class FinetuneTask(Task):
    """Cross-entropy on one view through the head chosen by
    ft_proj_selector; model.fine_tune_after_block freezes a prefix.
    Batches: {'image', 'label'} of the labelled subset."""
    mode = "finetune"
    starts_pretrained = True
    metric_names = ("sup_loss", "sup_acc")

    def losses(self, learner, batch, keys):
        check("features" not in batch, "precomputed 'features' batches are for "
              f"linear_eval only. Received: mode={self.mode!r}")
        logits = learner.model(batch["image"], training=True)["logits_sup"]
        sup, acc = supervised_loss(batch["label"], logits)
        return sup, {"sup_loss": sup, "sup_acc": acc}


class LinearEvalTask(FinetuneTask):
    """Like fine-tuning, but only the supervised head trains (the backbone
    and projection head are frozen). Batches may carry the frozen network's
    precomputed `finetune_input` as {'features', 'label'}."""
    mode = "linear_eval"
    frozen_features = True

    def model_config(self, config: ExperimentConfig) -> ModelConfig:
        super().model_config(config)
        return dataclasses.replace(config.model, fine_tune_after_block=4)

    def prepare(self, learner) -> None:
        learner.model.projection_head.trainable = False

    def losses(self, learner, batch, keys):
        if "features" not in batch:
            return super().losses(learner, batch, keys)
        logits = learner.model.supervised_head(batch["features"])
        sup, acc = supervised_loss(batch["label"], logits)
        return sup, {"sup_loss": sup, "sup_acc": acc}


class DistillTask(Task):
    """The student learns the teacher's softened probabilities on every
    training image (distill_temperature), plus distill_alpha times the
    cross-entropy on the labelled ones. Batches: {'image', optional 'label',
    optional 'teacher_logits' (precomputed) }; without precomputed logits
    the learner's teacher function runs in the step."""
    mode = "distill"
    takes_teacher = True
    reads_every_image = True
    metric_names = ("distill_loss", "teacher_agreement", "sup_loss", "sup_acc")

    def needs_labels(self, config: ExperimentConfig) -> Optional[bool]:
        return True if config.train.distill_alpha > 0 else None

    def losses(self, learner, batch, keys):
        train = learner.config.train
        logits = learner.model(batch["image"], training=True)["logits_sup"]
        if learner.teacher is not None:
            teacher = learner.teacher(batch["image"])
        else:
            check("teacher_logits" in batch, "distill without a teacher function "
                  "needs batches with precomputed 'teacher_logits'")
            teacher = batch["teacher_logits"]
        teacher = tf.stop_gradient(tf.cast(teacher, tf.float32))
        loss = distillation_loss(teacher, logits, train.distill_temperature)
        agree = tf.equal(tf.argmax(teacher, -1), tf.argmax(logits, -1))
        metrics = {"distill_loss": loss,
                   "teacher_agreement": tf.reduce_mean(tf.cast(agree, tf.float32))}
        if train.distill_alpha > 0 and "label" in batch:
            sup, acc = supervised_loss(batch["label"], logits)
            loss += train.distill_alpha * sup
            metrics.update(sup_loss=sup, sup_acc=acc)
        return loss, metrics
