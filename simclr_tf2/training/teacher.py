"""Teachers for distillation: images -> logits, frozen.

A teacher is one of our training runs (a model dir or checkpoint prefix, with
the run's config.json), one of our hub exports (a head_k SavedModel), or an
official SimCLRv2 TF2 SavedModel. Its batch norms run in inference mode and
none of its variables is trained or saved with the student's run.
"""
import os
from typing import Callable

import tensorflow as tf

from simclr_tf2.configs.schema import check
from simclr_tf2.errors import RunError
from simclr_tf2.export.hub import METADATA_FILE
from simclr_tf2.export.official import is_savedmodel_dir
from simclr_tf2.rundir import restore_model


def load_teacher(path: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """A function images [N, H, W, 3] in [0, 1] -> teacher logits [N, classes].

    Call it inside the strategy scope the student trains in, so the teacher's
    variables are placed like the student's.
    """
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
    try:
        restored = restore_model(path, default_mode="finetune")
    except RunError as error:
        raise RunError(f"teacher {path}: {error} (a teacher is a simclr_tf2 run "
                       "directory or checkpoint, a hub export or an official "
                       "SavedModel)") from None
    check(restored.model.supervised_head is not None,
          f"teacher {path} was pretrained without a supervised head: distil from a "
          "fine-tuned run")
    model = restored.model
    model.trainable = False

    def checkpoint_teacher(images):
        return model(images, training=False)["logits_sup"]
    checkpoint_teacher.model = model
    return checkpoint_teacher
