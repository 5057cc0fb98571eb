"""Recomputing batch-norm statistics over the training data after training.

A network trained on a few dozen images keeps moving averages that follow the
last steps' augmented batches while the weights were still changing; in
inference mode it can then score far below its training-mode accuracy (near
chance for a from-scratch network on 40 images). `recompute_bn_statistics`
replaces every moving mean and variance by the statistics of all the given
images, computed with the final weights from training-mode batch statistics
("precise BN"): the mean of the batch means, and the pooled variance (mean of
the batch variances plus the variance of the batch means, so batches that are
not random samples, e.g. one class each, still give the variance of the whole
set). The runner feeds it the eval view of the run's training images in a
seeded random order, never evaluation data.

Hand-written because neither tf_keras nor tf-models-official has it.
"""
import logging
from typing import Dict, Iterable, List

import numpy as np
import tensorflow as tf
import tf_keras

from simclr_tf2.errors import DataError

log = logging.getLogger("simclr_tf2.train")


def batch_norm_layers(model: tf.Module) -> List[tf_keras.layers.BatchNormalization]:
    """Every tf_keras BatchNormalization layer inside `model` (`submodules`
    lists each module once)."""
    return [module for module in model.submodules
            if isinstance(module, tf_keras.layers.BatchNormalization)]


def recompute_bn_statistics(model: tf_keras.Model, batches: Iterable,
                            strategy: tf.distribute.Strategy = None,
                            image_key: str = "image") -> Dict[str, int]:
    """Sets every BN layer's moving mean to the mean of its batch means over
    `batches` and its moving variance to the pooled variance (mean batch
    variance + variance of the batch means: the variance of the union of
    equal-sized batches), from training-mode forward passes; weights unchanged.

    `batches` yields dicts with `image_key` (distributed batches when
    `strategy` is given; every batch should be full, padding would count as
    data). A layer that the forward pass does not update in training mode
    (frozen, trainable=False) keeps its statistics. Returns {'batches',
    'layers'}.
    """
    strategy = strategy or tf.distribute.get_strategy()
    layers = batch_norm_layers(model)
    momenta = [layer.momentum for layer in layers]
    # The fused kernel (plain BN on 4-D inputs) updates the moving variance
    # with the unbiased batch variance (x n/(n-1)); the statistics pooled
    # here are those the layer normalises with in training mode, the biased
    # ones, which its non-fused path leaves.
    fused = [getattr(layer, "fused", None) for layer in layers]
    # Per layer: running sums of batch mean, batch mean squared, batch variance.
    sums = [[np.zeros(layer.moving_mean.shape, np.float64) for _ in range(3)]
            for layer in layers]
    count = 0
    try:
        for layer in layers:
            layer.momentum = 0.0  # each forward pass leaves exactly its batch's statistics
            layer.fused = False

        @tf.function
        def forward(batch):
            strategy.run(lambda b: model(b[image_key], training=True), args=(batch,))

        for batch in batches:
            forward(batch)
            count += 1
            for layer, (mean, square, var) in zip(layers, sums):
                batch_mean = layer.moving_mean.numpy().astype(np.float64)  # replica mean
                mean += batch_mean
                square += batch_mean ** 2
                var += layer.moving_variance.numpy()
    finally:
        for layer, momentum, was_fused in zip(layers, momenta, fused):
            layer.momentum = momentum
            layer.fused = was_fused
    if count == 0:
        raise DataError("recompute_bn_statistics got no batches: it needs at least "
                         "one full batch of training images")
    for layer, (mean, square, var) in zip(layers, sums):
        mean, between = mean / count, np.maximum(square / count - (mean / count) ** 2, 0)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign((var / count + between).astype(np.float32))
    return {"batches": count, "layers": len(layers)}
