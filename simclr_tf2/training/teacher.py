"""Teachers for distillation: images -> logits, frozen.

A teacher is one of our training runs (a model dir or checkpoint prefix, with
the run's config.json), one of our hub exports (a head_k SavedModel), or an
official SimCLRv2 TF2 SavedModel. Its batch norms run in inference mode and
none of its variables is trained or saved with the student's run.
"""
import json
import os
from typing import Callable

import tensorflow as tf

from simclr_tf2.configs.schema import ExperimentConfig, check
from simclr_tf2.export.hub import METADATA_FILE
from simclr_tf2.export.official import is_savedmodel_dir
from simclr_tf2.models import SimCLRModel


def load_teacher(path: str, image_size: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """A function images [N, H, W, 3] in [0, 1] -> teacher logits [N, classes].

    Call it inside the strategy scope the student trains in, so the teacher's
    variables are placed like the student's.
    """
    from simclr_tf2.training.learner import model_config_for
    from simclr_tf2.training.runner import CONFIG_FILE, RunError, resolve_checkpoint, \
        trained_mode
    if is_savedmodel_dir(path):
        loaded = tf.saved_model.load(path)
        ours = tf.io.gfile.exists(os.path.join(path, METADATA_FILE))

        def saved_model_teacher(images):
            outputs = (loaded(images, training=False) if ours
                       else loaded(images, trainable=False))  # the authors' convention
            check("logits_sup" in outputs, f"teacher {path} has no supervised head "
                  "(no logits_sup output): distil from a fine-tuned model")
            return outputs["logits_sup"]
        saved_model_teacher.variables = loaded  # keeps the SavedModel alive
        return saved_model_teacher
    checkpoint = resolve_checkpoint(path)
    model_dir = path if tf.io.gfile.isdir(path) else os.path.dirname(path)
    config_path = os.path.join(model_dir, CONFIG_FILE)
    if not tf.io.gfile.exists(config_path):
        raise RunError(f"teacher {path}: {config_path} not found (a teacher checkpoint "
                       "must come from a simclr_tf2 run directory; or pass a hub export "
                       "or an official SavedModel)")
    with tf.io.gfile.GFile(config_path) as f:
        config = ExperimentConfig.from_dict(json.load(f)["experiment"])
    mode = trained_mode(model_dir, "finetune")
    check(mode != "pretrain" or config.train.lineareval_while_pretraining,
          f"teacher {path} was pretrained without a supervised head: distil from a "
          "fine-tuned run")
    model = SimCLRModel(model_config_for(config, mode),
                        mode="pretrain" if mode == "pretrain" else "finetune")
    model(tf.zeros([1, image_size, image_size, 3]), training=False)
    model.trainable = False
    # The run's optimizer slots are not the teacher's: expect_partial keeps them
    # from being listed as unrestored when the load status is collected.
    tf.train.Checkpoint(model=model).read(checkpoint).assert_existing_objects_matched() \
        .expect_partial()

    def checkpoint_teacher(images):
        return model(images, training=False)["logits_sup"]
    checkpoint_teacher.model = model
    return checkpoint_teacher
