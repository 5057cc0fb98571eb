"""tf.data pipelines: shard, shuffle, augment, batch, prefetch.

Elements: pretrain {'view1', 'view2', 'label', 'index'} (with augment_on
'device': 8-bit views and device_augment.PARAMS_KEY); finetune and eval
{'image', 'label', 'index'}. Training batches are static (drop_remainder, for
TPU); the last eval batch is padded to full size with label -1 and index -1
(every loss and metric here ignores label -1), so eval covers every example
with static shapes too.
"""
import functools
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf

from simclr_tf2.configs.schema import DataConfig
from simclr_tf2.data import augment, decode, device_augment, skips
from simclr_tf2.data.cache import cached_source
from simclr_tf2.data.index_stream import index_stream, service_parts
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


def is_real(index):
    """True where a batch row is an example, False where it is padding:
    index -1 fills the last eval batch, and stands in for an image that did
    not decode in a single pass (NumPy arrays or tensors)."""
    return index >= 0


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
                  indices: Optional[np.ndarray] = None, *,
                  color_strength: float = 1.0, blur: bool = True, seed: int = 0,
                  crop_area_min: float = augment.CROP_AREA_RANGE[0], flip: bool = True,
                  shuffle_buffer: int = 10000, cache: bool = False,
                  xla_augment: bool = True, service: Optional[str] = None,
                  **options) -> tf.data.Dataset:
    """`build_from_config` with the data settings given as keywords, for
    code that has no DataConfig (notebooks, tests): image_size and
    color_strength, blur, seed, crop_area_min, flip, shuffle_buffer, cache,
    xla_augment, service are DataConfig's image_size, color_jitter_strength,
    use_blur, seed, crop_area_min, use_flip, shuffle_buffer, cache,
    xla_augment, data_service. `options`: build_from_config's (input_context,
    repeat, start_step, extras, drop_remainder, augment_on)."""
    config = DataConfig(image_size=image_size, color_jitter_strength=color_strength,
                        use_blur=blur, seed=seed, crop_area_min=crop_area_min,
                        use_flip=flip, shuffle_buffer=shuffle_buffer, cache=cache,
                        xla_augment=xla_augment, data_service=service)
    return build_from_config(config, source, mode, batch_size, indices, **options)


def build_from_config(config: DataConfig, source: Source, mode: str, batch_size: int,
                      indices: Optional[np.ndarray] = None,
                      input_context: Optional[tf.distribute.InputContext] = None,
                      repeat: Optional[bool] = None, start_step: int = 0,
                      extras: Optional[Dict[str, np.ndarray]] = None,
                      drop_remainder: Optional[bool] = None,
                      augment_on: str = "host") -> tf.data.Dataset:
    """Batches of `batch_size` (per replica when `input_context` is given, in
    which case `batch_size` is the global batch) for `mode`.

    Deterministic for a given seed: shuffling is seeded and every augmentation
    draws from a stateless seed made of (seed, pipeline id, example counter).
    Training modes repeat forever unless repeat=False; eval runs one pass.
    `start_step` skips the batches of that many steps, so a resumed run reads
    exactly what an uninterrupted one would, without reading what it skips
    (random access and cache=True: seeded permutations of indices;
    TFRecord files and tfds: seeded chunk orders and windows,
    record_reader.py; other tfds datasets read and drop it).
    `config.cache` holds the encoded images in memory (cache.py).
    `extras` {name: array with one row per source example} adds that row to
    each element (e.g. precomputed teacher logits). Training batches are full
    (drop_remainder) unless drop_remainder=False.
    Training crops of sources that store image files (folders, tfds) decode
    only the region they use (decode.py; same pixels); `config.xla_augment`
    compiles the colour arithmetic of pretraining views of at least
    augment.XLA_MIN_SIZE px (same views to float32 round-off, less CPU).
    `augment_on='device'` leaves the colour distortion and blur of
    pretraining views to the replica step (device_augment.py): views are
    8-bit flipped crops plus their drawn parameters (resolve 'auto' with
    training.distribution.augment_on). `config.data_service` (grpc://host:port
    of a tf.data service dispatcher) runs a training pipeline on the
    service's workers (data_service.py).
    """
    image_size, seed, cache = config.image_size, config.seed, config.cache
    if augment_on not in ("host", "device"):
        raise DataError("augment_on must be 'host' or 'device' here (resolve 'auto' "
                        f"with training.distribution.augment_on). Received: {augment_on!r}")
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
    service = config.data_service if training else None
    if service and ((cache and source.has_encoded) or source.load is None):
        raise DataError("data_service reads image folders and built-in data from their "
                        "files and arrays; this source is read in sequence (TFRecord, "
                        "tfds) or held in this process's memory (cache=True): run "
                        "without data_service or without cache")
    if cache:
        # Encoded images held in memory (cache.py), read by index; sources
        # already in memory (built-in arrays) need none.
        if source.has_encoded:
            source = cached_source(source, indices)
        cache = source.load is None and source._make_encoded is None
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    base = tf.constant(seed * 1_000_003 + pipeline_id, tf.int64)
    # Files are read undecoded where the view can decode them: training
    # crops decode only their region; sequential sources always, so that a
    # failed decode happens inside the guarded map (skips.py).
    encoded = not cache and source.has_encoded and (training or source.load is None)
    xla = config.xla_augment and image_size >= augment.XLA_MIN_SIZE
    read_view, finish_view = _view_fns(mode, image_size, config.color_jitter_strength,
                                       config.use_blur, config.crop_area_min,
                                       config.use_flip, xla, encoded,
                                       device=augment_on == "device")
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
    known = skips.known_mask(source.skip_log, len(source)) if repeat else None
    random_access = source.load is not None and not cache
    # Sequential sources that can seek (TFRecord files): seeded chunk orders
    # and windows, started where `skip` ends without reading it.
    seekable = not random_access and training and encoded and source._stream is not None
    if random_access:
        # Permute and skip cheap indices; read and decode only what is used.
        parts = service_parts(len(indices)) if service else 1
        ds = index_stream(indices, seed, training, repeat, known, skip, parts)
        load = source.load_encoded if encoded else source.load

        def index_of(index):
            return index

        def read(index):
            return load(index)
    else:
        key = "encoded" if encoded else "image"
        if seekable:
            ds = source._stream(indices, seed, config.shuffle_buffer, skip, known, repeat)
        else:
            ds = source.encoded_dataset(indices) if encoded else source.dataset(indices)
            if cache:
                ds = ds.cache()
            if training:
                ds = ds.shuffle(min(config.shuffle_buffer, len(indices)) or 1, seed=seed,
                                reshuffle_each_iteration=True)

        def index_of(example):
            return example["index"]

        def read(example):
            return example[key]

    def finish(counter, index, decoded):
        out = finish_view(decoded, tf.stack([base, counter]))
        # Labels from source.labels, which may mask some (-1): distillation.
        out.update(label=tf.gather(labels, index), index=index)
        out.update({k: tf.gather(v, index) for k, v in extra_tensors.items()})
        return out

    if not random_access and not seekable:
        if repeat:
            ds = ds.repeat()
        ds = ds.enumerate()
        if known is not None:
            # Left out before the resume position is found: a resumed run then
            # reads what an uninterrupted one did, which dropped them when met.
            known_bad = tf.constant(known)
            ds = ds.filter(lambda counter, x: tf.logical_not(tf.gather(known_bad,
                                                                        index_of(x))))
        ds = ds.skip(skip)  # resuming reads and drops the examples read before
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def transform(counter, x):
        view_seed = tf.stack([base, counter])
        return finish(counter, index_of(x), read_view(read(x), view_seed))

    if not source.robust:
        ds = ds.map(transform, **parallel)
    else:  # images that fail to decode are skipped and recorded (skips.py)
        def decoded(counter, x):  # the part of the views that reads the image
            return {"counter": counter, "index": tf.cast(index_of(x), tf.int64),
                    "decoded": _stacked(read_view(read(x), tf.stack([base, counter])))}

        def finished(e, ok=None):
            out = finish(e["counter"], e["index"], _unstacked(e["decoded"], mode))
            if ok is None:
                return out
            return tf.cond(ok, lambda: out, lambda: _padding_like(out))
        # Dropping in place hides errors before the map too: only over a
        # stream of indices (not a cached stream of decoded images).
        in_place = repeat and random_access and not service  # service: splittable
        ds = skips.guarded_map(ds, decoded, index_of, source.skip_log,
                               keep_failed=not repeat,
                               out_zeros=_decoded_zeros(mode, image_size) if in_place else None)
        ds = ds.map(finished, **parallel)
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
    ds = ds.with_options(options)
    if service:
        # Dynamic sharding: workers take the stream's parts in turn.
        ds = ds.apply(tf.data.experimental.service.distribute(
            tf.data.experimental.service.ShardingPolicy.DYNAMIC, service))
    return ds.prefetch(tf.data.AUTOTUNE)


def _decoded_zeros(mode: str, image_size: int) -> Dict[str, tf.Tensor]:
    """Zeros shaped like the reading part of one element (`decoded`)."""
    shape = [image_size, image_size, 3]
    return {"counter": tf.constant(0, tf.int64), "index": tf.constant(0, tf.int64),
            "decoded": tf.zeros([2] + shape if mode == "pretrain" else shape)}


def _stacked(decoded):
    return tf.stack(decoded) if isinstance(decoded, list) else decoded


def _unstacked(decoded, mode):
    return tf.unstack(decoded) if mode == "pretrain" else decoded


def _view_fns(mode: str, image_size: int, color_strength: float, blur: bool,
              crop_area_min: float, flip: bool, xla: bool = False, encoded: bool = False,
              device: bool = False) -> Tuple[Callable, Callable]:
    """(read_view, finish_view): read_view(image or encoded file, seed) is
    the part of the views that reads the image (the crops, or the eval view),
    the part that fails on a bad file; finish_view(that, seed) -> the
    element's views {'view1', 'view2'} or {'image'}."""
    def crops(image, seed_list, window_fn):
        """The crop of each seed's window, resized to image_size."""
        if encoded:
            return tf.unstack(decode.decode_crops(image, lambda shape: tf.stack(
                [window_fn(shape, s, crop_area_min) for s in seed_list]), image_size))
        return [augment.crop_and_resize(image, window_fn(tf.shape(image), s, crop_area_min),
                                        image_size) for s in seed_list]

    if mode == "pretrain":
        def pair(image, seed):
            return crops(image, augment.split_seed(seed, 2), augment.pretrain_window)

        def views(pair_of_crops, seed):
            seeds = augment.split_seed(seed, 2)
            if device:
                return device_augment.crops_to_ship(list(pair_of_crops), seeds,
                                                    color_strength, blur, flip)
            pair_of_views = augment.pretrain_views_of_crops(
                list(pair_of_crops), seeds, image_size, color_strength, blur, flip, xla)
            return {"view1": pair_of_views[0], "view2": pair_of_views[1]}
        return pair, views
    if mode == "finetune":
        def crop(image, seed):
            return crops(image, [seed], augment.finetune_window)[0]

        def finetune(one_crop, seed):
            return {"image": augment.finetune_view_of_crop(one_crop, seed, image_size, flip)}
        return crop, finetune
    eval_crop = augment.use_eval_crop(image_size)

    def evaluation(image, seed):
        if encoded:
            image = decode.decode_image_data(image)
        return augment.eval_view(image, image_size, eval_crop)
    return evaluation, lambda image, seed: {"image": image}


def distribute(strategy: tf.distribute.Strategy,
               make: Callable[[tf.distribute.InputContext], tf.data.Dataset]):
    """Per-replica datasets through `distribute_datasets_from_function`.

    When every replica is a CPU the batches are already where they are used:
    they are not prefetched "to the device" (that iterator wraps the dataset
    in a generator that tf.data cannot optimise, and says so on every run)."""
    options = None
    if replicas_on_cpus(strategy):
        options = tf.distribute.InputOptions(experimental_fetch_to_device=False)
    return strategy.distribute_datasets_from_function(make, options=options)


def replicas_on_cpus(strategy: tf.distribute.Strategy) -> bool:
    """Whether every replica of `strategy` is a CPU device (the default
    strategy runs where TensorFlow places ops: on a CPU when no GPU or TPU
    is visible)."""
    if not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy():
        # The default strategy has no devices of its own (worker_devices raises).
        return not any(tf.config.list_logical_devices(kind) for kind in ("GPU", "TPU"))
    devices = strategy.extended.worker_devices
    return bool(devices) and all("CPU" in device.upper() for device in devices)
