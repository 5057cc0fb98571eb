"""SimCLR augmentations (Chen et al. 2020, appendix A) as pure functions.

Every function takes one image [H, W, 3] float32 in [0, 1] and, when it is
random, an explicit stateless seed (int32 [2]): the same seed gives the same
output, so pipelines are deterministic however many threads run them.
Hand-written: tf.image has the primitives (crop box sampling, colour ops) but
not SimCLR's composition (random order, per-image blur, crop-then-resize).
"""
from typing import Sequence

import tensorflow as tf

CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
CROP_MIN_OBJECT_COVERED = 0.1
CROP_MAX_ATTEMPTS = 100
EVAL_CROP_PROPORTION = 0.875
COLOR_JITTER_PROB = 0.8
COLOR_DROP_PROB = 0.2
BLUR_PROB = 0.5
BLUR_SIGMA_RANGE = (0.1, 2.0)


def split_seed(seed: tf.Tensor, num: int) -> Sequence[tf.Tensor]:
    """`num` independent stateless seeds derived from `seed`."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _uniform(seed, low, high, shape=()):
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high)


# ---------------------------------------------------------------- geometry
def crop_window(image_shape: tf.Tensor, seed: tf.Tensor, area_range=CROP_AREA_RANGE,
                aspect_range=CROP_ASPECT_RANGE,
                min_object_covered: float = CROP_MIN_OBJECT_COVERED,
                max_attempts: int = CROP_MAX_ATTEMPTS) -> tf.Tensor:
    """[offset_y, offset_x, height, width] of a random crop (Inception-style:
    area fraction and pixel aspect ratio within the ranges; the whole image
    when no attempt fits)."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed, min_object_covered=min_object_covered,
        aspect_ratio_range=aspect_range, area_range=area_range,
        max_attempts=max_attempts, use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Bicubic resize to size x size, clipped back to [0, 1]."""
    image = tf.image.resize(image, [size, size], method="bicubic")
    return tf.clip_by_value(image, 0.0, 1.0)


def crop_and_resize(image: tf.Tensor, window: tf.Tensor, size: int) -> tf.Tensor:
    """The [offset_y, offset_x, height, width] window of image, bicubic-resized
    to size x size, float32 in [0, 1]. A uint8 image (a decoded file) is
    resized as it is and scaled after: the same view to float32 round-off,
    without converting the whole image first."""
    window = tf.cast(window, tf.int32)
    crop = tf.slice(image, tf.stack([window[0], window[1], 0]),
                    tf.stack([window[2], window[3], -1]))
    if image.dtype == tf.uint8:
        crop = tf.image.resize(crop, [size, size], method="bicubic") * (1.0 / 255.0)
        return tf.clip_by_value(crop, 0.0, 1.0)
    return resize(crop, size)


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, size: int,
                        area_min: float = CROP_AREA_RANGE[0]) -> tf.Tensor:
    """Random crop (area [area_min, 1], default 0.08; aspect [3/4, 4/3]) then
    bicubic resize."""
    window = crop_window(tf.shape(image), seed, area_range=(area_min, 1.0))
    return crop_and_resize(image, window, size)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Horizontal flip with p = 0.5."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def center_crop(image: tf.Tensor, size: int,
                crop_proportion: float = EVAL_CROP_PROPORTION) -> tf.Tensor:
    """Central crop of `crop_proportion` of the shorter side (aspect
    preserving for a square output), then bicubic resize."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    side = tf.cast(tf.round(crop_proportion * tf.cast(tf.minimum(height, width),
                                                      tf.float32)), tf.int32)
    side = tf.maximum(side, 1)
    top = (height - side + 1) // 2
    left = (width - side + 1) // 2
    return resize(tf.image.crop_to_bounding_box(image, top, left, side, side), size)


# ------------------------------------------------------------------ colour
def color_jitter_params(seed: tf.Tensor, strength: float):
    """(order [4] int32, brightness, contrast, saturation, hue) for one image:
    factors in [max(0, 1 - 0.8s), 1 + 0.8s], hue shift in
    [-0.2s, 0.2s], the order a uniform random permutation of the four ops."""
    amount = 0.8 * strength
    order_seed, b_seed, c_seed, s_seed, h_seed = split_seed(seed, 5)
    low = max(0.0, 1.0 - amount)
    order = tf.argsort(tf.random.stateless_uniform([4], order_seed))
    return (order, _uniform(b_seed, low, 1.0 + amount),
            _uniform(c_seed, low, 1.0 + amount),
            _uniform(s_seed, low, 1.0 + amount),
            _uniform(h_seed, -0.2 * strength, 0.2 * strength))


def apply_color_jitter(image: tf.Tensor, order: tf.Tensor, brightness, contrast,
                       saturation, hue, loop: bool = False) -> tf.Tensor:
    """Applies op order[0], then order[1], ... (0 brightness: x * b, 1
    contrast, 2 saturation, 3 hue), clipping to [0, 1] after each.

    `loop` makes the positions the steps of a while loop rather than four
    switch_cases in a row, for XLA: its translation analyses each
    switch_case's input back through the ones before it, which took 9 s of
    compilation at 224 px against 0.7 s for the loop, same run time. Without
    XLA the loop costs more per image (+30% at 32 px), so it is off there."""
    ops = [
        lambda x: x * brightness,
        lambda x: tf.image.adjust_contrast(x, contrast),
        lambda x: tf.image.adjust_saturation(x, saturation),
        lambda x: tf.image.adjust_hue(x, hue),
    ]
    shape = image.shape.merge_with([None, None, 3])
    if not loop:
        for position in range(len(ops)):
            branches = [lambda fn=fn, x=image: tf.clip_by_value(fn(x), 0.0, 1.0)
                        for fn in ops]
            image = tf.ensure_shape(tf.switch_case(order[position], branches), shape)
        return image

    def step(position, x):
        branches = [lambda fn=fn: tf.clip_by_value(fn(x), 0.0, 1.0) for fn in ops]
        return position + 1, tf.ensure_shape(tf.switch_case(order[position], branches),
                                              shape)

    return tf.while_loop(lambda position, _: position < len(ops), step,
                         (tf.constant(0), tf.ensure_shape(image, shape)))[1]


def color_drop(image: tf.Tensor) -> tf.Tensor:
    """Greyscale, kept as three channels."""
    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def color_distortion_params(seed: tf.Tensor, strength: float):
    """(jitter?, order, brightness, contrast, saturation, hue, drop?): every
    random choice of one image's colour distortion (jitter with p = 0.8, then
    drop with p = 0.2)."""
    apply_seed, jitter_seed, drop_seed = split_seed(seed, 3)
    return ((_uniform(apply_seed, 0.0, 1.0) < COLOR_JITTER_PROB,)
            + tuple(color_jitter_params(jitter_seed, strength))
            + (_uniform(drop_seed, 0.0, 1.0) < COLOR_DROP_PROB,))


def apply_color_distortion(image: tf.Tensor, jitter, order, brightness, contrast,
                           saturation, hue, drop, loop: bool = False) -> tf.Tensor:
    """The colour distortion that `color_distortion_params` chose (`loop`: see
    apply_color_jitter)."""
    image = tf.cond(jitter, lambda: apply_color_jitter(image, order, brightness, contrast,
                                                       saturation, hue, loop),
                    lambda: image)
    return tf.cond(drop, lambda: color_drop(image), lambda: image)


def random_color_distortion(image: tf.Tensor, seed: tf.Tensor,
                            strength: float) -> tf.Tensor:
    """Colour jitter with p = 0.8, then colour drop with p = 0.2."""
    return apply_color_distortion(image, *color_distortion_params(seed, strength))


# -------------------------------------------------------------------- blur
def blur_kernel_size(image_size: int) -> int:
    """Odd kernel of about 10% of the side: 23 taps at 224 px."""
    return 2 * (image_size // 20) + 1


def _convolve_rows(x: tf.Tensor, taps: tf.Tensor) -> tf.Tensor:
    """x [n, m] convolved along its first axis with `taps` (odd length), zero
    padding: one depthwise convolution whose m channels are the columns."""
    n, m = tf.shape(x)[0], tf.shape(x)[1]
    kernel = tf.tile(tf.reshape(taps, [-1, 1, 1, 1]), tf.stack([1, 1, m, 1]))
    out = tf.nn.depthwise_conv2d(tf.reshape(x, tf.stack([1, n, 1, m])), kernel,
                                 [1, 1, 1, 1], "SAME")
    return tf.reshape(out, tf.stack([n, m]))


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """Separable Gaussian blur, zero padding at the borders (as the authors').

    Each 1-D pass is a depthwise convolution over the image as [rows, width x
    channels], so hundreds of channels share the taps and the kernel
    vectorises: at 224 px and 23 taps 1.2x less CPU than blockwise matmuls
    and several times less than a banded [n, n] matmul or a depthwise
    convolution over the 3 colour channels; same result to round-off."""
    radius = kernel_size // 2
    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    taps = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
    taps /= tf.reduce_sum(taps)
    shape = tf.shape(image)
    height, width, channels = shape[0], shape[1], shape[2]
    vertical = _convolve_rows(tf.reshape(image, [height, width * channels]), taps)
    # The horizontal pass on the transposed image: [width, height * channels].
    turned = tf.transpose(tf.reshape(vertical, [height, width, channels]), [1, 0, 2])
    both = _convolve_rows(tf.reshape(turned, [width, height * channels]), taps)
    return tf.transpose(tf.reshape(both, [width, height, channels]), [1, 0, 2])


def blur_sigma(seed: tf.Tensor) -> tf.Tensor:
    """sigma ~ U[0.1, 2.0]."""
    return _uniform(seed, *BLUR_SIGMA_RANGE)


def blur_draws(seed: tf.Tensor, p: float = BLUR_PROB):
    """(whether random_blur(image, seed) blurs, its sigma)."""
    apply_seed, sigma_seed = split_seed(seed, 2)
    return _uniform(apply_seed, 0.0, 1.0) < p, blur_sigma(sigma_seed)


def apply_blur(image: tf.Tensor, apply: tf.Tensor, sigma: tf.Tensor,
               image_size: int) -> tf.Tensor:
    """The blur blur_draws chose (`apply`, `sigma`)."""
    return tf.cond(apply, lambda: gaussian_blur(image, sigma, blur_kernel_size(image_size)),
                   lambda: image)


def random_blur(image: tf.Tensor, seed: tf.Tensor, image_size: int,
                p: float = BLUR_PROB) -> tf.Tensor:
    """Per-image Gaussian blur with probability p, sigma ~ U[0.1, 2.0]."""
    return apply_blur(image, *blur_draws(seed, p), image_size)


# ----------------------------------------------------------------- recipes
def pretrain_window(image_shape: tf.Tensor, seed: tf.Tensor,
                    crop_area_min: float = CROP_AREA_RANGE[0]) -> tf.Tensor:
    """The crop window of the pretraining view of `seed` (see pretrain_view)."""
    return crop_window(image_shape, split_seed(seed, 4)[0],
                       area_range=(crop_area_min, 1.0))


def flip_draw(seed: tf.Tensor) -> tf.Tensor:
    """Whether random_flip(image, seed) flips (its own draw, p = 0.5)."""
    return _uniform(seed, 0.0, 1.0) < 0.5


def _flip_and_distort(images, flips, colour_params, loop=False):
    """Each image flipped if its flip says so, then colour-distorted with its
    parameters (see color_distortion_params)."""
    return tuple(apply_color_distortion(tf.cond(f, lambda x=x: tf.reverse(x, [1]),
                                                lambda x=x: x), *params, loop=loop)
                 for x, f, params in zip(images, flips, colour_params))


# The same pixel arithmetic compiled by XLA into a few fused loops, every view
# of an example in one call: 0.2-0.4 ms less CPU per 224 px view in the
# tf.data pipeline than the ops one by one (bench/input_pipeline.py), same
# views to float32 round-off (tested). Compiled once per process (see
# apply_color_jitter for why it takes under a second). The random choices
# are drawn outside: XLA's stateless random numbers differ from
# TensorFlow's, and a seed must give one view.
_flip_and_distort_xla = tf.function(lambda images, flips, colour_params: _flip_and_distort(
    images, flips, colour_params, loop=True), jit_compile=True)

# Smallest view side for which pipelines compile the colour arithmetic: below
# it the call costs what it saves (measured: +14% CPU per image at 32 px,
# within 3% either way at 64 and 96 px, -8% at 224 px).
XLA_MIN_SIZE = 128


def to_uint8(image: tf.Tensor) -> tf.Tensor:
    """An image in [0, 1] rounded to 8 bits."""
    return tf.cast(tf.round(image * 255.0), tf.uint8)


def from_uint8(image: tf.Tensor) -> tf.Tensor:
    """8-bit pixels as float32 in [0, 1]."""
    return tf.cast(image, tf.float32) * (1.0 / 255.0)


def pretrain_draws(seed: tf.Tensor, color_strength: float = 1.0, blur: bool = True,
                   flip: bool = True):
    """Every random choice of a pretraining view after its crop: (flip?,
    color_distortion_params, blur?, blur sigma)."""
    _, flip_seed, color_seed, blur_seed = split_seed(seed, 4)
    blurs, sigma = blur_draws(blur_seed)
    return (flip_draw(flip_seed) if flip else tf.constant(False),
            color_distortion_params(color_seed, color_strength),
            tf.logical_and(blurs, blur), sigma)


def pretrain_views_of_crops(crops, seeds, size: int, color_strength: float = 1.0,
                            blur: bool = True, flip: bool = True,
                            xla: bool = False) -> list:
    """pretrain_view for each seed, given its crop already cut and resized
    (crop_and_resize of the window pretrain_window drew from the same seed).
    Crops are rounded to 8 bits first (at most 1/510 per pixel), the form in
    which `--augment_on=device` ships them: both give the same views.
    `xla` compiles the colour arithmetic of all of them into one call."""
    draws = [pretrain_draws(seed, color_strength, blur, flip) for seed in seeds]
    crops = tuple(from_uint8(to_uint8(c)) for c in crops)
    distort = _flip_and_distort_xla if xla else _flip_and_distort
    views = distort(crops, tuple(d[0] for d in draws), tuple(d[1] for d in draws))
    # Crops, colour ops and colour drop keep [0, 1]; only the blur needs the
    # final clip (round-off).
    if blur:
        views = [tf.clip_by_value(apply_blur(v, d[2], d[3], size), 0.0, 1.0)
                 for v, d in zip(views, draws)]
    return [tf.ensure_shape(v, [size, size, 3]) for v in views]


def pretrain_view(image: tf.Tensor, seed: tf.Tensor, size: int,
                  color_strength: float = 1.0, blur: bool = True,
                  crop_area_min: float = CROP_AREA_RANGE[0],
                  flip: bool = True, xla: bool = False) -> tf.Tensor:
    """One SimCLR pretraining view: crop + flip, colour distortion, blur.
    `crop_area_min` and `flip=False` adapt the recipe to small or oriented
    images (e.g. digits); the defaults are the paper's. `xla` compiles the
    colour arithmetic (same view to float32 round-off, less CPU)."""
    crop = crop_and_resize(image, pretrain_window(tf.shape(image), seed, crop_area_min),
                           size)
    return pretrain_views_of_crops([crop], [seed], size, color_strength, blur, flip,
                                   xla)[0]


def finetune_window(image_shape: tf.Tensor, seed: tf.Tensor,
                    crop_area_min: float = CROP_AREA_RANGE[0]) -> tf.Tensor:
    """The crop window of the fine-tuning view of `seed`."""
    return crop_window(image_shape, split_seed(seed, 2)[0],
                       area_range=(crop_area_min, 1.0))


def finetune_view_of_crop(crop: tf.Tensor, seed: tf.Tensor, size: int,
                          flip: bool = True) -> tf.Tensor:
    """finetune_view given its crop already cut and resized (crop_and_resize
    of the window finetune_window drew from the same seed)."""
    if flip:
        crop = random_flip(crop, split_seed(seed, 2)[1])
    return tf.ensure_shape(crop, [size, size, 3])


def finetune_view(image: tf.Tensor, seed: tf.Tensor, size: int,
                  crop_area_min: float = CROP_AREA_RANGE[0],
                  flip: bool = True) -> tf.Tensor:
    """Fine-tuning: crop + flip only."""
    window = finetune_window(tf.shape(image), seed, crop_area_min)
    return finetune_view_of_crop(crop_and_resize(image, window, size), seed, size, flip)


def eval_view(image: tf.Tensor, size: int, crop: bool = True) -> tf.Tensor:
    """Evaluation: centre crop of 87.5% then resize; `crop=False` (small images,
    e.g. 32 px, as the authors do for CIFAR) only resizes."""
    image = center_crop(image, size) if crop else resize(image, size)
    return tf.ensure_shape(image, [size, size, 3])


def use_eval_crop(image_size: int) -> bool:
    """The authors skip the eval centre crop for images of 32 px or less."""
    return image_size > 32

