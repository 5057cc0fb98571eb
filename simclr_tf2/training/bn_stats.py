"""Recomputing batch-norm statistics over the training data after training.

A network trained on a few dozen images keeps moving averages that follow the
last steps' augmented batches while the weights were still changing; in
inference mode it can then score far below its training-mode accuracy (near
chance for a from-scratch network on 40 images). `recompute_bn_statistics`
replaces every moving mean and variance by the average of the batch
statistics over the given images, computed with the final weights ("precise
BN"). The runner feeds it the eval view of the run's own labelled training
images, never evaluation data.

Hand-written because neither tf_keras nor tf-models-official has it.
"""
import logging
from typing import Dict, Iterable, List

import numpy as np
import tensorflow as tf
import tf_keras

log = logging.getLogger("simclr_tf2.train")


def batch_norm_layers(model: tf.Module) -> List[tf_keras.layers.BatchNormalization]:
    """Every tf_keras BatchNormalization layer inside `model` (`submodules`
    lists each module once)."""
    return [module for module in model.submodules
            if isinstance(module, tf_keras.layers.BatchNormalization)]


def recompute_bn_statistics(model: tf_keras.Model, batches: Iterable,
                            strategy: tf.distribute.Strategy = None,
                            image_key: str = "image") -> Dict[str, int]:
    """Sets every BN layer's moving mean/variance to the mean over `batches`
    of its batch statistics (training-mode forward passes, weights unchanged).

    `batches` yields dicts with `image_key` (distributed batches when
    `strategy` is given; every batch should be full, padding would count as
    data). A layer that the forward pass does not update in training mode
    (frozen, trainable=False) keeps its statistics. Returns {'batches',
    'layers'}.
    """
    strategy = strategy or tf.distribute.get_strategy()
    layers = batch_norm_layers(model)
    momenta = [layer.momentum for layer in layers]
    sums = [[np.zeros(layer.moving_mean.shape, np.float64),
             np.zeros(layer.moving_variance.shape, np.float64)] for layer in layers]
    count = 0
    try:
        for layer in layers:
            layer.momentum = 0.0  # each forward pass leaves exactly its batch's statistics

        @tf.function
        def forward(batch):
            strategy.run(lambda b: model(b[image_key], training=True), args=(batch,))

        for batch in batches:
            forward(batch)
            count += 1
            for layer, (mean, var) in zip(layers, sums):
                mean += layer.moving_mean.numpy()  # cross-replica read: replica mean
                var += layer.moving_variance.numpy()
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if count == 0:
        raise ValueError("recompute_bn_statistics got no batches: it needs at least "
                         "one full batch of training images")
    for layer, (mean, var) in zip(layers, sums):
        layer.moving_mean.assign((mean / count).astype(np.float32))
        layer.moving_variance.assign((var / count).astype(np.float32))
    return {"batches": count, "layers": len(layers)}
