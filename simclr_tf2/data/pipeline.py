"""tf.data pipelines: shard, shuffle, augment, batch, prefetch.

Elements: pretrain {'view1', 'view2', 'label', 'index'}; finetune and eval
{'image', 'label', 'index'}. Training batches are static (drop_remainder, for
TPU); the last eval batch is padded to full size with label -1 and index -1
(every loss and metric here ignores label -1), so eval covers every example
with static shapes too.
"""
import functools
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from simclr_tf2.configs.schema import DataConfig
from simclr_tf2.data import augment, decode, skips
from simclr_tf2.data.sources import Source
from simclr_tf2.errors import DataError

PIPELINE_MODES = ("pretrain", "finetune", "eval")


def _share(indices: np.ndarray, source: Optional[Source], pipeline: int,
           pipelines: int) -> np.ndarray:
    if pipelines == 1:
        return indices
    if source is not None and source.shard is not None:
        return source.shard(indices, pipeline, pipelines)
    return indices[pipeline::pipelines]


def shard_indices(indices: np.ndarray, context: Optional[tf.distribute.InputContext],
                  source: Optional[Source] = None) -> np.ndarray:
    """This input pipeline's share: the source's own split when it has one
    (TFRecord shards: whole files), else every num_input_pipelines-th
    example."""
    if context is None:
        return indices
    return _share(indices, source, context.input_pipeline_id, context.num_input_pipelines)


def per_replica_batch_size(global_batch_size: int,
                           context: Optional[tf.distribute.InputContext]) -> int:
    if context is None:
        return global_batch_size
    replicas = context.num_replicas_in_sync
    if global_batch_size % replicas:
        raise DataError(f"batch size {global_batch_size} is not divisible by the "
                        f"{replicas} replicas: use a multiple of {replicas}")
    return global_batch_size // replicas


def _pad_batch(batch, batch_size):
    missing = batch_size - tf.shape(batch["label"])[0]

    def pad(value, fill):
        paddings = [[0, missing]] + [[0, 0]] * (len(value.shape) - 1)
        padded = tf.pad(value, paddings, constant_values=tf.cast(fill, value.dtype))
        return tf.ensure_shape(padded, [batch_size] + value.shape[1:].as_list())
    return {k: pad(v, -1 if k in ("label", "index") else 0) for k, v in batch.items()}


def _eval_filler_batches(largest: int, local: int, batch: int,
                         context: Optional[tf.distribute.InputContext]) -> int:
    """All-padding batches to append so that every replica of every pipeline
    gets the same number of eval batches (a replica without a batch would end
    the distributed loop early and drop examples); `largest` is the largest
    pipeline's share."""
    pipelines = context.num_input_pipelines if context else 1
    replicas = context.num_replicas_in_sync if context else 1
    per_pipeline = max(replicas // pipelines, 1)
    needed = -(-largest // batch)
    needed = -(-needed // per_pipeline) * per_pipeline
    return needed - (-(-local // batch))


def _padding_like(spec) -> Dict[str, tf.Tensor]:
    """A padding element: label and index -1, everything else 0."""
    return {k: tf.fill(s.shape, tf.cast(-1 if k in ("label", "index") else 0, s.dtype))
            for k, s in spec.items()}


def build_dataset(source: Source, mode: str, batch_size: int, image_size: int,
                  indices: Optional[np.ndarray] = None,
                  color_strength: float = 1.0, blur: bool = True, seed: int = 0,
                  crop_area_min: float = augment.CROP_AREA_RANGE[0], flip: bool = True,
                  shuffle_buffer: int = 10000, cache: bool = False,
                  repeat: Optional[bool] = None,
                  input_context: Optional[tf.distribute.InputContext] = None,
                  start_step: int = 0,
                  extras: Optional[Dict[str, np.ndarray]] = None,
                  drop_remainder: Optional[bool] = None,
                  xla_augment: bool = True) -> tf.data.Dataset:
    """Batches of `batch_size` (per replica when `input_context` is given, in
    which case `batch_size` is the global batch) for `mode`.

    Deterministic for a given seed: shuffling is seeded and every augmentation
    draws from a stateless seed made of (seed, pipeline id, example counter).
    Training modes repeat forever unless repeat=False; eval runs one pass.
    `start_step` skips the batches of that many steps, so a resumed run reads
    exactly what an uninterrupted one would (sources with random access skip
    indices only; others read and drop the skipped examples).
    `extras` {name: array with one row per source example} adds that row to
    each element (e.g. precomputed teacher logits). Training batches are full
    (drop_remainder) unless drop_remainder=False.
    Training crops of sources that store image files (folders, tfds) decode
    only the region they use (decode.py; same pixels); `xla_augment`
    compiles the colour arithmetic of pretraining views of at least
    augment.XLA_MIN_SIZE px (same views to float32 round-off, less CPU).
    """
    if mode not in PIPELINE_MODES:
        raise DataError(f"mode must be one of {list(PIPELINE_MODES)}. Received: {mode!r}")
    training = mode != "eval"
    repeat = training if repeat is None else repeat
    local_batch = per_replica_batch_size(batch_size, input_context)
    if indices is None:
        indices = np.arange(len(source))
    all_indices = np.asarray(indices, np.int64)
    indices = shard_indices(all_indices, input_context, source)
    drop_remainder = training if drop_remainder is None else drop_remainder
    if drop_remainder and len(indices) < local_batch:
        raise DataError(f"{len(indices)} examples cannot fill one batch of "
                        f"{local_batch}: lower the batch size")
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    base = tf.constant(seed * 1_000_003 + pipeline_id, tf.int64)
    # Files are read undecoded where the view can decode them: training
    # crops decode only their region; sequential sources always, so that a
    # failed decode happens inside the guarded map (skips.py).
    encoded = not cache and source.has_encoded and (training or source.load is None)
    xla = xla_augment and image_size >= augment.XLA_MIN_SIZE
    view = _view_fn(mode, image_size, color_strength, blur, crop_area_min, flip, xla,
                    encoded)
    replicas_here = 1
    if input_context is not None:
        replicas_here = max(input_context.num_replicas_in_sync
                            // input_context.num_input_pipelines, 1)
    skip = start_step * local_batch * replicas_here
    labels = tf.constant(source.labels)
    extra_tensors = {k: tf.constant(v) for k, v in (extras or {}).items()}
    for name, value in (extras or {}).items():
        if len(value) != len(source):
            raise DataError(f"extra {name!r} has {len(value)} rows for {len(source)} "
                            "examples")
    if source.load is not None and not cache:
        # Shuffle and skip cheap indices; read and decode only what is used.
        ds = tf.data.Dataset.from_tensor_slices(indices)
        if training:
            ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
        load = source.load_encoded if encoded else source.load

        def index_of(index):
            return index

        def transform(counter, index):
            out = view(load(index), tf.stack([base, counter]))
            out.update(label=tf.gather(labels, index), index=index)
            out.update({k: tf.gather(v, index) for k, v in extra_tensors.items()})
            return out
    else:
        ds = (source.encoded_dataset(indices, seed if training else None) if encoded
              else source.dataset(indices))
        key = "encoded" if encoded else "image"
        if cache:
            ds = ds.cache()
        if training:
            ds = ds.shuffle(min(shuffle_buffer, len(indices)) or 1, seed=seed,
                            reshuffle_each_iteration=True)

        def index_of(example):
            return example["index"]

        def transform(counter, example):
            out = view(example[key], tf.stack([base, counter]))
            # Labels from source.labels, which may mask some (-1): distillation.
            out.update(label=tf.gather(labels, example["index"]), index=example["index"])
            out.update({k: tf.gather(v, example["index"]) for k, v in extra_tensors.items()})
            return out
    if repeat:
        ds = ds.repeat()
    ds = ds.enumerate()
    known = skips.known_mask(source.skip_log, len(source)) if repeat else None
    if known is not None:
        # Left out before the resume position is found: a resumed run then
        # reads what an uninterrupted one did, which dropped them when met.
        known_bad = tf.constant(known)
        ds = ds.filter(lambda counter, x: tf.logical_not(tf.gather(known_bad, index_of(x))))
    # Resuming skips indices (random access) or reads and drops examples.
    ds = ds.skip(skip)
    if source.robust:  # images that fail to decode are skipped and recorded
        ds = skips.guarded_map(ds, transform, index_of, source.skip_log,
                               pad=None if repeat else _padding_like)
    else:
        ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=drop_remainder)
    if not training:
        ds = ds.map(functools.partial(_pad_batch, batch_size=local_batch))
        pipelines = input_context.num_input_pipelines if input_context else 1
        largest = max(len(_share(all_indices, source, j, pipelines))
                      for j in range(pipelines))
        extra = _eval_filler_batches(largest, len(indices), local_batch, input_context)
        if extra:
            filler = tf.data.Dataset.from_tensors(_padding_like(ds.element_spec))
            ds = ds.concatenate(filler.repeat(extra))
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _view_fn(mode: str, image_size: int, color_strength: float, blur: bool,
             crop_area_min: float, flip: bool, xla: bool = False, encoded: bool = False
             ) -> Callable[[tf.Tensor, tf.Tensor], dict]:
    """(image or encoded file, seed) -> the element's views."""
    def crops(image, seed_list, window_fn):
        """The crop of each seed's window, resized to image_size."""
        if encoded:
            return tf.unstack(decode.decode_crops(image, lambda shape: tf.stack(
                [window_fn(shape, s, crop_area_min) for s in seed_list]), image_size))
        return [augment.crop_and_resize(image, window_fn(tf.shape(image), s, crop_area_min),
                                        image_size) for s in seed_list]

    if mode == "pretrain":
        def views(image, seed):
            seeds = augment.split_seed(seed, 2)
            pair = augment.pretrain_views_of_crops(
                crops(image, seeds, augment.pretrain_window), seeds, image_size,
                color_strength, blur, flip, xla)
            return {"view1": pair[0], "view2": pair[1]}
        return views
    if mode == "finetune":
        def finetune(image, seed):
            crop = crops(image, [seed], augment.finetune_window)[0]
            return {"image": augment.finetune_view_of_crop(crop, seed, image_size, flip)}
        return finetune
    crop = augment.use_eval_crop(image_size)

    def evaluation(image, seed):
        if encoded:
            image = decode.decode_image_data(image)
        return {"image": augment.eval_view(image, image_size, crop)}
    return evaluation


def build_from_config(config: DataConfig, source: Source, mode: str, batch_size: int,
                      indices: Optional[np.ndarray] = None,
                      input_context: Optional[tf.distribute.InputContext] = None,
                      repeat: Optional[bool] = None, start_step: int = 0,
                      extras: Optional[Dict[str, np.ndarray]] = None,
                      drop_remainder: Optional[bool] = None) -> tf.data.Dataset:
    """`build_dataset` with the augmentation and input settings of `config`."""
    return build_dataset(source, mode, batch_size, config.image_size, indices,
                         color_strength=config.color_jitter_strength,
                         blur=config.use_blur, seed=config.seed,
                         crop_area_min=config.crop_area_min, flip=config.use_flip,
                         shuffle_buffer=config.shuffle_buffer, cache=config.cache,
                         repeat=repeat, input_context=input_context,
                         start_step=start_step, extras=extras,
                         drop_remainder=drop_remainder, xla_augment=config.xla_augment)


def feature_dataset(features: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                    batch_size: int, seed: int = 0,
                    input_context: Optional[tf.distribute.InputContext] = None,
                    start_step: int = 0) -> tf.data.Dataset:
    """Training batches {'features', 'label', 'index'} of precomputed
    features (one row per source example) for the examples `indices`: the
    sharding, seeded shuffle, repeat, resume skip and full batches of a
    finetune `build_dataset` over a random-access source, so both read the
    examples in the same order."""
    local_batch = per_replica_batch_size(batch_size, input_context)
    indices = shard_indices(np.asarray(indices, np.int64), input_context)
    if len(indices) < local_batch:
        raise DataError(f"{len(indices)} examples cannot fill one batch of "
                        f"{local_batch}: lower the batch size")
    replicas_here = 1
    if input_context is not None:
        replicas_here = max(input_context.num_replicas_in_sync
                            // input_context.num_input_pipelines, 1)
    table = tf.constant(np.asarray(features, np.float32))
    labels = tf.constant(np.asarray(labels))
    ds = tf.data.Dataset.from_tensor_slices(indices)
    ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.skip(start_step * local_batch * replicas_here).map(
        lambda index: {"features": tf.gather(table, index),
                       "label": tf.gather(labels, index), "index": index},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return ds.batch(local_batch, drop_remainder=True).with_options(options).prefetch(
        tf.data.AUTOTUNE)


def distribute(strategy: tf.distribute.Strategy,
               make: Callable[[tf.distribute.InputContext], tf.data.Dataset]):
    """Per-replica datasets through `distribute_datasets_from_function`.

    When every replica is a CPU the batches are already where they are used:
    they are not prefetched "to the device" (that iterator wraps the dataset
    in a generator that tf.data cannot optimise, and says so on every run)."""
    options = None
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: no device placement of its own
        devices = ()
    if devices and all("CPU" in device.upper() for device in devices):
        options = tf.distribute.InputOptions(experimental_fetch_to_device=False)
    return strategy.distribute_datasets_from_function(make, options=options)
