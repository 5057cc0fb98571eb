"""What a training mode trains: the common base of the four tasks.

A task owns the decisions that differ between pretraining, fine-tuning,
linear evaluation and distillation: which model it builds, which data it
reads, its losses and metrics, what it must be given. The Learner runs any
task; the run's mode picks one in simclr_tf2.tasks (the only place that
compares mode names). The idea is Model Garden's `Task`
(official/core/base_task.py); the code is ours, since that one owns its own
training loop and input pipeline where ours are the Learner and data/.
"""
from typing import Dict, Optional, Tuple

import tensorflow as tf

from simclr_tf2.configs.schema import ExperimentConfig, ModelConfig, check
from simclr_tf2.models.simclr_model import SimCLRModel

# Every task reports these; a task adds its own (Task.metric_names).
COMMON_METRICS = ("loss", "weight_decay_loss", "learning_rate")


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


class Task:
    """One training mode. Subclasses set the facts and write `losses`."""
    mode: str = ""
    contrastive = False        # two views per image and the contrastive objective
    supervised = True          # trains the supervised head: needs num_classes
    starts_pretrained = False  # from --checkpoint (or --from_scratch for a baseline)
    takes_teacher = False      # distils a teacher's logits
    reads_every_image = False  # else only the labelled subset
    frozen_features = False    # only the supervised head trains (features can be cached)
    metric_names: Tuple[str, ...] = ()

    @property
    def layout(self) -> str:
        """SimCLRModel's mode, which is also the input recipe (data.pipeline):
        'pretrain' keeps the whole projection head and reads two views."""
        return "pretrain" if self.contrastive else "finetune"

    def needs_labels(self, config: ExperimentConfig) -> Optional[bool]:
        """Whether the training split must have labels (None: where it has)."""
        return True

    def model_config(self, config: ExperimentConfig) -> ModelConfig:
        """The ModelConfig this task builds from the experiment's."""
        check(config.model.num_classes > 0, f"mode {self.mode!r} needs a supervised "
              "head: set model.num_classes to the number of classes")
        return config.model

    def build_model(self, config: ExperimentConfig,
                    model_config: Optional[ModelConfig] = None) -> SimCLRModel:
        """The model this task trains, its variables created (called on one
        blank image of the configured size)."""
        model = SimCLRModel(model_config or self.model_config(config), mode=self.layout,
                            zero_init_logits_layer=config.train.zero_init_logits_layer)
        size = config.data.image_size
        model(tf.zeros([1, size, size, 3]), training=False)
        return model

    def prepare(self, learner) -> None:
        """Adds what this task trains beyond the model and its optimizer."""

    def losses(self, learner, batch: Dict[str, tf.Tensor],
               keys: Optional[tf.Tensor]) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
        """(the objective, the task's metrics) of one replica's batch; `keys`:
        the momentum encoder's projections when the learner has a memory."""
        raise NotImplementedError

    def all_metric_names(self) -> Tuple[str, ...]:
        return COMMON_METRICS + self.metric_names
