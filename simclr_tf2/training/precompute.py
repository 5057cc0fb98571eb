"""Passes over the data outside the training step: batch-norm statistics
recomputed after supervised training, the teacher's logits before
distillation, and the frozen network's features before cached linear eval."""
import hashlib
import io
import time
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from simclr_tf2.configs.schema import ExperimentConfig
from simclr_tf2.data import build_from_config, distribute
from simclr_tf2.data.pipeline import is_real
from simclr_tf2.data.subsets import row_lookup
from simclr_tf2.errors import RunError
from simclr_tf2.rundir import read_json, write_json
from simclr_tf2.training.bn_stats import recompute_bn_statistics
from simclr_tf2.training.learner import Learner


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
        # Real images only, in full batches.
        return ds.unbatch().filter(lambda e: is_real(e["index"])).batch(
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
                              verbose: bool = True, keep: Optional[str] = None,
                              teacher_name: str = "") -> np.ndarray:
    """The teacher's logits on the eval view of every example in `indices`
    ([len(source), classes] float32; rows outside `indices` are zero), for
    --distill_precompute. The table is one graph constant, so it is refused
    above MAX_CACHED_FEATURE_BYTES (at ImageNet size, 1.28 million x 1000
    logits are 5.1 GB: there the teacher runs inside the step, the default,
    whose host memory does not grow with the data). With `keep` (a path in
    the run directory) it is computed once and read back on restarts."""
    indices = np.asarray(indices, np.int64)
    stamp = {"teacher": teacher_name, "examples": len(source),
             "indices": hashlib.sha1(indices.tobytes()).hexdigest()}
    if keep and tf.io.gfile.exists(keep) and read_json(keep + ".json") == stamp:
        with tf.io.gfile.GFile(keep, "rb") as f:
            table = np.load(io.BytesIO(f.read()))
        if verbose:
            print(f"teacher logits read from {keep}", flush=True)
        return table
    start = time.time()
    table = None
    batch = config.train.eval_batch_size
    for element in build_from_config(config.data, source, "eval", batch, indices):
        logits = tf.cast(teacher(element["image"]), tf.float32).numpy()
        index = element["index"].numpy()
        if table is None:
            need = len(source) * logits.shape[-1] * 4
            if need > MAX_CACHED_FEATURE_BYTES:
                raise RunError(
                    f"distill_precompute: {len(source):,} examples x {logits.shape[-1]} "
                    f"teacher logits take {need / 2 ** 30:.1f} GB, more than one 2 GB "
                    "table: drop --distill_precompute (the teacher then runs inside "
                    "each step, in memory that does not grow with the data)")
            table = np.zeros([len(source), logits.shape[-1]], np.float32)
        kept = is_real(index)
        table[index[kept]] = logits[kept]
    if verbose:
        print(f"teacher logits precomputed for {len(indices)} images in "
              f"{time.time() - start:.0f}s", flush=True)
    if keep:
        buffer = io.BytesIO()
        np.save(buffer, table)
        with tf.io.gfile.GFile(keep + ".tmp", "wb") as f:
            f.write(buffer.getvalue())
        tf.io.gfile.rename(keep + ".tmp", keep, overwrite=True)
        write_json(keep + ".json", stamp)
    return table


# Features above this size would not fit in one graph constant (2 GB).
MAX_CACHED_FEATURE_BYTES = 2 ** 31 - 2 ** 20


def frozen_features(learner: Learner, config: ExperimentConfig, source, indices,
                    verbose: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """The frozen network's `finetune_input` (what the linear head reads) for
    the training view of the examples `indices`, computed once: (features
    [n, dim] float32, the n examples of `indices` whose image decoded, in
    `indices` order), one row each. Sized by the labelled subset, not by the
    source: 1% of ImageNet with a ResNet-50 is 12,811 x 2048 floats, 0.1 GB.
    The training view must be deterministic (crop_area_min=1, no flip;
    `validate` checks)."""
    start = time.time()
    model = learner.model
    size = config.data.image_size
    indices = np.asarray(indices, np.int64)
    dim = int(model(tf.zeros([1, size, size, 3]), training=False)["finetune_input"].shape[-1])
    table_bytes = len(indices) * dim * 4
    if table_bytes > MAX_CACHED_FEATURE_BYTES:
        raise RunError(f"linear_eval_cache_features: {len(indices):,} examples x {dim} "
                       f"features take {table_bytes / 2 ** 30:.1f} GB, more than one "
                       "2 GB table: use a label fraction or drop "
                       "--linear_eval_cache_features")
    table = np.zeros([len(indices), dim], np.float32)
    row_of = row_lookup(indices)

    @tf.function(reduce_retracing=True)  # the last batch may be smaller
    def forward(images):
        # training=True as in the training step; every layer it reads is frozen.
        return model(images, training=True)["finetune_input"]

    filled = np.zeros(len(indices), bool)
    for element in build_from_config(config.data, source, "finetune",
                                      config.train.eval_batch_size, indices,
                                      repeat=False, drop_remainder=False):
        index = element["index"].numpy()
        keep = is_real(index)
        rows = row_of(index[keep])
        table[rows] = tf.cast(forward(element["image"]), tf.float32).numpy()[keep]
        filled[rows] = True
    if verbose:
        print(f"linear eval: frozen features ({dim}) of {int(filled.sum())} images "
              f"computed in {time.time() - start:.0f}s", flush=True)
    return table[filled], indices[filled]
