"""Colour distortion and blur of a whole batch on the accelerator
(`--augment_on=device`).

The host draws every random choice of a pretraining view exactly as for a
host-augmented one (augment.pretrain_draws, same seeds), cuts, resizes and
flips the crop, and ships it as 8-bit pixels with its choices packed in a
row of `PARAMS`. The replica step then applies the colour jitter (in each
image's drawn order), the colour drop and the blur to the whole batch at
once: batched ops with per-image parameters, no per-image loop; the colour
compiled by XLA, the blur (see `distort`) through only the images drawn for
it, or under XLA (a TPU step) through all of them. The views equal the
host's to float32 round-off (tests/test_device_augment.py), so the choice
moves the cost, not the results. On a CPU the batched ops cost 10-25% more
than the host's per-image ones (bench/RESULTS.md, "Augmentation on the
device"): `--augment_on=auto` uses them on GPUs and TPUs only.

Hand-written: tf.image's adjust_* ops take one factor per call, not one per
image, and the blur's kernel differs per image.
"""
from typing import Dict

import tensorflow as tf

from simclr_tf2.data import augment

PARAMS = ("jitter", "order0", "order1", "order2", "order3", "brightness", "contrast",
          "saturation", "hue", "drop", "blur", "sigma")
PARAMS_KEY = "view_params"  # [batch, 2 views, len(PARAMS)] in a pretraining batch
_COLUMN = {name: i for i, name in enumerate(PARAMS)}


def pack(draws) -> tf.Tensor:
    """One view's augment.pretrain_draws after the flip as a float32 row of
    PARAMS (the order's integers 0-3 are exact in float32)."""
    _, (jitter, order, brightness, contrast, saturation, hue, drop), blur, sigma = draws
    values = [jitter, *tf.unstack(order), brightness, contrast, saturation, hue, drop,
              blur, sigma]
    return tf.stack([tf.cast(v, tf.float32) for v in values])


def crops_to_ship(crops, seeds, color_strength: float = 1.0, blur: bool = True,
                  flip: bool = True) -> Dict[str, tf.Tensor]:
    """The host's part of the pretraining views of `seeds` given their crops
    (as augment.pretrain_views_of_crops takes them): {'view1', 'view2'}
    8-bit, flipped where drawn, and PARAMS_KEY [2, len(PARAMS)]."""
    out, rows = {}, []
    for i, (crop, seed) in enumerate(zip(crops, seeds)):
        draws = augment.pretrain_draws(seed, color_strength, blur, flip)
        pixels = augment.to_uint8(crop)
        out[f"view{i + 1}"] = tf.cond(draws[0], lambda p=pixels: tf.reverse(p, [1]),
                                      lambda p=pixels: p)
        rows.append(pack(draws))
    out[PARAMS_KEY] = tf.stack(rows)
    return out


def _column(params: tf.Tensor, name: str) -> tf.Tensor:
    """One parameter of every image, shaped [n, 1, 1, 1] to scale images."""
    return tf.reshape(params[:, _COLUMN[name]], [-1, 1, 1, 1])


def _flag(params: tf.Tensor, name: str) -> tf.Tensor:
    return _column(params, name) > 0.5


def color_jitter(images: tf.Tensor, params: tf.Tensor) -> tf.Tensor:
    """augment.apply_color_jitter of every image with its own order and
    factors. At each of the four positions every image takes the op its
    order puts there: brightness and contrast are computed for the whole
    batch, saturation and hue share one HSV round trip (each image's hue
    shift or saturation factor applies only where its op is that one), and a
    select keeps each image's op; then the clip, as on the host. The
    positions are the steps of a while loop: its carried batch is stored
    between steps, where unrolled steps let XLA fuse (and recompute) each
    into the next (measured on a CPU: 10% less time than unrolled; a closed form of
    saturation and hue without HSV, unrolled, 8x more)."""
    orders = tf.cast(tf.round(params[:, _COLUMN["order0"]:_COLUMN["order3"] + 1]), tf.int32)
    value_shape = tf.shape(images)[:3]

    def position_step(position, images):
        op = tf.reshape(tf.gather(orders, position, axis=1), [-1, 1, 1, 1])
        bright = images * _column(params, "brightness")
        mean = tf.reduce_mean(images, [1, 2], keepdims=True)
        contrast = (images - mean) * _column(params, "contrast") + mean
        hue, saturation, value = tf.unstack(tf.image.rgb_to_hsv(images), axis=-1)
        op3 = tf.broadcast_to(op[..., 0], value_shape)
        shifted = hue + _column(params, "hue")[..., 0]
        hue = tf.where(tf.equal(op3, 3), shifted - tf.floor(shifted), hue)
        scaled = tf.clip_by_value(saturation * _column(params, "saturation")[..., 0], 0.0, 1.0)
        saturation = tf.where(tf.equal(op3, 2), scaled, saturation)
        hsv = tf.image.hsv_to_rgb(tf.stack([hue, saturation, value], axis=-1))
        out = tf.where(tf.equal(op, 0), bright, tf.where(tf.equal(op, 1), contrast, hsv))
        return position + 1, tf.ensure_shape(tf.clip_by_value(out, 0.0, 1.0), images.shape)

    return tf.while_loop(lambda position, _: position < 4, position_step,
                         (tf.constant(0), images))[1]


def color_drop(images: tf.Tensor) -> tf.Tensor:
    return tf.tile(tf.image.rgb_to_grayscale(images), [1, 1, 1, 3])


def blur_taps(sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """[n, kernel_size] normalised Gaussian taps, one row per sigma."""
    radius = kernel_size // 2
    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    taps = tf.exp(-tf.square(x)[None, :] / (2.0 * tf.square(sigma)[:, None]))
    return taps / tf.reduce_sum(taps, axis=1, keepdims=True)


def gaussian_blur_shifted(images: tf.Tensor, sigma: tf.Tensor,
                          kernel_size: int) -> tf.Tensor:
    """augment.gaussian_blur of image i with sigma[i] (zero padding) for XLA:
    each 1-D pass a sum of kernel_size shifted copies weighted by each
    image's taps, fused into one loop per pass (XLA's grouped convolution on
    a CPU is 25x slower)."""
    taps = blur_taps(sigma, kernel_size)
    radius = kernel_size // 2
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [radius, radius], [0, 0], [0, 0]])
    rows = tf.add_n([tf.reshape(taps[:, k], [-1, 1, 1, 1]) * padded[:, k:k + height]
                     for k in range(kernel_size)])
    padded = tf.pad(rows, [[0, 0], [0, 0], [radius, radius], [0, 0]])
    return tf.add_n([tf.reshape(taps[:, k], [-1, 1, 1, 1]) * padded[:, :, k:k + width]
                     for k in range(kernel_size)])


def gaussian_blur_depthwise(images: tf.Tensor, sigma: tf.Tensor,
                            kernel_size: int) -> tf.Tensor:
    """The same blur as TensorFlow ops: the batch as one image whose n x 3
    channels each have their image's taps, two depthwise convolutions (the
    filter, kernel_size x 3n floats, stays in cache)."""
    taps = blur_taps(sigma, kernel_size)
    shape = tf.shape(images)
    n, height, width = shape[0], shape[1], shape[2]
    column = tf.reshape(tf.repeat(tf.transpose(taps), 3, axis=1), [kernel_size, 1, -1, 1])
    x = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), tf.stack([1, height, width, n * 3]))
    x = tf.nn.depthwise_conv2d(x, column, [1, 1, 1, 1], "SAME")
    x = tf.nn.depthwise_conv2d(x, tf.reshape(column, [1, kernel_size, -1, 1]),
                               [1, 1, 1, 1], "SAME")
    return tf.transpose(tf.reshape(x, tf.stack([height, width, n, 3])), [2, 0, 1, 3])


def _colour(images: tf.Tensor, params: tf.Tensor) -> tf.Tensor:
    images = augment.from_uint8(images) if images.dtype == tf.uint8 else images
    images = tf.where(_flag(params, "jitter"), color_jitter(images, params), images)
    return tf.where(_flag(params, "drop"), color_drop(images), images)


# The colour arithmetic as one XLA computation in a step that is not
# compiled (CPU, GPU); a compiled step (TPU) takes `_colour` as it is. The
# selects and HSV round trips of a position fuse into a few loops.
_colour_compiled = tf.function(_colour, jit_compile=True)


def in_xla() -> bool:
    """Whether the ops being built are compiled by XLA (a TPU step or a
    jit_compile function): then shapes must be static."""
    from tensorflow.python.ops import control_flow_util  # no public equivalent
    return (not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()))


def distort(images: tf.Tensor, params: tf.Tensor) -> tf.Tensor:
    """The views of 8-bit flipped crops [n, size, size, 3] and their PARAMS
    rows [n, len(PARAMS)]: float32 in [0, 1], as augment.pretrain_views_of_crops
    makes them on the host. The blur goes through only the images drawn for
    it, except under XLA (static shapes), where every image is blurred and
    each keeps its own."""
    params = tf.cast(params, tf.float32)
    xla = in_xla()
    images = (_colour if xla else _colour_compiled)(images, params)
    kernel = augment.blur_kernel_size(int(images.shape[1]))
    sigma = params[:, _COLUMN["sigma"]]
    flags = params[:, _COLUMN["blur"]] > 0.5
    if xla:
        images = tf.where(flags[:, None, None, None],
                          gaussian_blur_shifted(images, sigma, kernel), images)
    else:
        chosen = tf.where(flags)[:, 0]

        def blur_chosen():
            blurred = gaussian_blur_depthwise(tf.gather(images, chosen),
                                              tf.gather(sigma, chosen), kernel)
            return tf.tensor_scatter_nd_update(images, chosen[:, None], blurred)
        # None chosen (use_blur off): an empty convolution is an error.
        images = tf.cond(tf.size(chosen) > 0, blur_chosen, lambda: images)
    return tf.clip_by_value(images, 0.0, 1.0)


def finish_views(batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """A pretraining batch with its views finished on this device when the
    host shipped them for it (PARAMS_KEY present); other batches as they are."""
    if PARAMS_KEY not in batch:
        return batch
    params = batch[PARAMS_KEY]
    out = {k: v for k, v in batch.items() if k != PARAMS_KEY}
    # View by view: no copy of the two into one batch and back.
    for i, key in enumerate(("view1", "view2")):
        out[key] = distort(batch[key], params[:, i])
    return out
