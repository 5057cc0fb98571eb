"""SimCLR augmentations (SIMCLRV2_FACTS.md section 6) as pure functions.

Every function takes one image [H, W, 3] float32 in [0, 1] and, when it is
random, an explicit stateless seed (int32 [2]): the same seed gives the same
output, so pipelines are deterministic however many threads run them.
Hand-written: tf.image has the primitives (crop box sampling, colour ops) but
not SimCLR's composition (random order, per-image blur, crop-then-resize).
"""
from typing import Callable, Dict, Sequence

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


def random_apply(fn: Callable[[tf.Tensor], tf.Tensor], p: float,
                 image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """fn(image) with probability p, else image."""
    return tf.cond(_uniform(seed, 0.0, 1.0) < p, lambda: fn(image), lambda: image)


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


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, size: int,
                        area_min: float = CROP_AREA_RANGE[0]) -> tf.Tensor:
    """Random crop (area [area_min, 1], default 0.08; aspect [3/4, 4/3]) then
    bicubic resize."""
    window = crop_window(tf.shape(image), seed, area_range=(area_min, 1.0))
    crop = tf.image.crop_to_bounding_box(image, window[0], window[1],
                                         window[2], window[3])
    return resize(crop, size)


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
                       saturation, hue) -> tf.Tensor:
    """Applies op order[0], then order[1], ... (0 brightness: x * b, 1
    contrast, 2 saturation, 3 hue), clipping to [0, 1] after each."""
    ops = [
        lambda x: x * brightness,
        lambda x: tf.image.adjust_contrast(x, contrast),
        lambda x: tf.image.adjust_saturation(x, saturation),
        lambda x: tf.image.adjust_hue(x, hue),
    ]
    for position in range(len(ops)):
        branches = [lambda fn=fn, x=image: tf.clip_by_value(fn(x), 0.0, 1.0)
                    for fn in ops]
        image = tf.ensure_shape(tf.switch_case(order[position], branches),
                                [None, None, 3])
    return image


def color_jitter(image: tf.Tensor, seed: tf.Tensor, strength: float) -> tf.Tensor:
    """Brightness, contrast, saturation and hue jitter of strength s in a random
    order (see color_jitter_params), clipping to [0, 1] after each."""
    return apply_color_jitter(image, *color_jitter_params(seed, strength))


def color_drop(image: tf.Tensor) -> tf.Tensor:
    """Greyscale, kept as three channels."""
    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def color_distortion_params(seed: tf.Tensor, strength: float) -> Dict[str, tf.Tensor]:
    """The random draws of `random_color_distortion` for one image: whether
    to jitter (p = 0.8) and the jitter parameters (color_jitter_params),
    whether to drop colour (p = 0.2)."""
    apply_seed, jitter_seed, drop_seed = split_seed(seed, 3)
    order, brightness, contrast, saturation, hue = color_jitter_params(jitter_seed, strength)
    return {"jitter": _uniform(apply_seed, 0.0, 1.0) < COLOR_JITTER_PROB, "order": order,
            "brightness": brightness, "contrast": contrast, "saturation": saturation,
            "hue": hue, "drop": _uniform(drop_seed, 0.0, 1.0) < COLOR_DROP_PROB}


def random_color_distortion(image: tf.Tensor, seed: tf.Tensor,
                            strength: float) -> tf.Tensor:
    """Colour jitter with p = 0.8, then colour drop with p = 0.2."""
    params = color_distortion_params(seed, strength)
    image = tf.cond(params["jitter"], lambda: apply_color_jitter(
        image, params["order"], params["brightness"], params["contrast"],
        params["saturation"], params["hue"]), lambda: image)
    return tf.cond(params["drop"], lambda: color_drop(image), lambda: image)


# -------------------------------------------------------------------- blur
def blur_kernel_size(image_size: int) -> int:
    """Odd kernel of about 10% of the side: 23 taps at 224 px."""
    return 2 * (image_size // 20) + 1


def _band_matrix(n: tf.Tensor, taps: tf.Tensor, radius: int) -> tf.Tensor:
    """[n, n] matrix M with M[i, j] = taps[j - i + radius] within the band, so
    x @ M convolves the rows of x with `taps` (zero padding at the borders)."""
    i = tf.range(n)[:, None]
    j = tf.range(n)[None, :]
    offset = j - i + radius
    inside = (offset >= 0) & (offset <= 2 * radius)
    return tf.where(inside, tf.gather(taps, tf.clip_by_value(offset, 0, 2 * radius)),
                    tf.zeros([], taps.dtype))


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """Separable Gaussian blur, zero padding at the borders (as the authors').

    Each 1-D pass is a matmul with a banded matrix: 5-7x faster on CPU than
    tf.nn.depthwise_conv2d for a 23-tap kernel at 224 px, same result."""
    radius = kernel_size // 2
    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    taps = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
    taps /= tf.reduce_sum(taps)
    shape = tf.shape(image)
    rows = tf.einsum("hwc,wv->hvc", image, _band_matrix(shape[1], taps, radius))
    return tf.einsum("gh,hvc->gvc", _band_matrix(shape[0], taps, radius), rows)


def blur_sigma(seed: tf.Tensor) -> tf.Tensor:
    """sigma ~ U[0.1, 2.0]."""
    return _uniform(seed, *BLUR_SIGMA_RANGE)


def blur_params(seed: tf.Tensor, p: float = BLUR_PROB) -> Dict[str, tf.Tensor]:
    """The random draws of `random_blur`: whether to blur, and sigma."""
    apply_seed, sigma_seed = split_seed(seed, 2)
    return {"blur": _uniform(apply_seed, 0.0, 1.0) < p, "sigma": blur_sigma(sigma_seed)}


def random_blur(image: tf.Tensor, seed: tf.Tensor, image_size: int,
                p: float = BLUR_PROB) -> tf.Tensor:
    """Per-image Gaussian blur with probability p, sigma ~ U[0.1, 2.0]."""
    params = blur_params(seed, p)
    return tf.cond(params["blur"], lambda: gaussian_blur(
        image, params["sigma"], blur_kernel_size(image_size)), lambda: image)


# ------------------------------------------------- batched colour and blur
# The colour distortion and blur of a batch of views [B, S, S, 3] at once,
# from per-image parameters drawn by color_distortion_params / blur_params
# (stacked): the same recipe and draws as the per-image functions, for small
# images, where per-op overhead rather than pixels dominates the cost.
# Hand-written formulas: tf.image's fused hue and saturation kernels take one
# factor per call, and vectorized_map cannot give them one per image.
JITTER_KEYS = ("brightness", "contrast", "saturation", "hue")


def _per_image(value: tf.Tensor) -> tf.Tensor:
    return tf.reshape(value, [-1, 1, 1, 1])


def batch_adjust_contrast(images: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """tf.image.adjust_contrast with one factor per image: (x - mean) * f + mean,
    the mean per image and channel."""
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return (images - mean) * _per_image(factor) + mean


def batch_adjust_saturation(images: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """tf.image.adjust_saturation with one factor per image, in RGB: HSV
    saturation S -> clip(S * f, 0, 1) keeps hue and value V, which moves every
    channel c to V - (V - c) * S' / S."""
    value = tf.reduce_max(images, axis=-1, keepdims=True)
    saturation = tf.math.divide_no_nan(value - tf.reduce_min(images, axis=-1, keepdims=True),
                                       value)
    scaled = tf.clip_by_value(saturation * _per_image(factor), 0.0, 1.0)
    return value - (value - images) * tf.math.divide_no_nan(scaled, saturation)


def batch_adjust_hue(images: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """tf.image.adjust_hue with one shift per image (hue in [0, 1), wrapped)."""
    hsv = tf.image.rgb_to_hsv(images)
    hue = tf.math.floormod(hsv[..., 0] + tf.reshape(delta, [-1, 1, 1]), 1.0)
    return tf.image.hsv_to_rgb(tf.stack([hue, hsv[..., 1], hsv[..., 2]], axis=-1))


def _partitioned(images: tf.Tensor, group: tf.Tensor, groups: int, apply) -> tf.Tensor:
    """apply(images of group g, their batch positions, g) for every group g,
    stitched back in batch order: each image pays only for its own op."""
    positions = tf.dynamic_partition(tf.range(tf.shape(images)[0]), group, groups)
    parts = tf.dynamic_partition(images, group, groups)
    outputs = [apply(part, where, g) for g, (part, where) in enumerate(zip(parts, positions))]
    return tf.ensure_shape(tf.dynamic_stitch(positions, outputs), images.shape)


def batch_color_distortion(images: tf.Tensor, params: Dict[str, tf.Tensor]) -> tf.Tensor:
    """random_color_distortion of every image in `images` [B, H, W, 3] with its
    own stacked params (color_distortion_params): jitter ops in each image's
    order, clipping after each, then colour drop."""
    ops = [lambda x, f: x * _per_image(f), batch_adjust_contrast,
           batch_adjust_saturation, batch_adjust_hue]

    def apply(part, where, op):
        if op == len(ops):  # not jittered: unchanged
            return part
        factor = tf.gather(params[JITTER_KEYS[op]], where)
        return tf.clip_by_value(ops[op](part, factor), 0.0, 1.0)

    for position in range(len(ops)):
        group = tf.where(params["jitter"], tf.cast(params["order"][:, position], tf.int32),
                         len(ops))
        images = _partitioned(images, group, len(ops) + 1, apply)
    grey = tf.tile(tf.image.rgb_to_grayscale(images), [1, 1, 1, 3])
    return tf.where(_per_image(params["drop"]), grey, images)


def _band_matrices(n: tf.Tensor, taps: tf.Tensor, radius: int) -> tf.Tensor:
    """_band_matrix for a batch of taps [B, 2r + 1]: [B, n, n]."""
    offset = tf.range(n)[None, :] - tf.range(n)[:, None] + radius
    inside = (offset >= 0) & (offset <= 2 * radius)
    bands = tf.gather(taps, tf.clip_by_value(offset, 0, 2 * radius), axis=1)
    return tf.where(inside[None], bands, tf.zeros([], taps.dtype))


def batch_gaussian_blur(images: tf.Tensor, sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """gaussian_blur of every image in `images` [B, H, W, 3] with its own sigma [B]."""
    radius = kernel_size // 2
    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    taps = tf.exp(-tf.square(x)[None] / (2.0 * tf.square(tf.cast(sigma, tf.float32)))[:, None])
    taps /= tf.reduce_sum(taps, axis=1, keepdims=True)
    shape = tf.shape(images)
    rows = tf.einsum("bhwc,bwv->bhvc", images, _band_matrices(shape[2], taps, radius))
    return tf.einsum("bgh,bhvc->bgvc", _band_matrices(shape[1], taps, radius), rows)


def batch_random_blur(images: tf.Tensor, params: Dict[str, tf.Tensor],
                      image_size: int) -> tf.Tensor:
    """random_blur of every image with its own stacked params (blur_params)."""
    def apply(part, where, blurred):
        if not blurred:
            return part
        return batch_gaussian_blur(part, tf.gather(params["sigma"], where),
                                   blur_kernel_size(image_size))
    return _partitioned(images, tf.cast(params["blur"], tf.int32), 2, apply)


# ----------------------------------------------------------------- recipes
def pretrain_view_params(seed: tf.Tensor, color_strength: float = 1.0,
                         blur: bool = True) -> Dict[str, Dict[str, tf.Tensor]]:
    """The colour and blur draws `pretrain_view` makes with `seed`."""
    _, _, color_seed, blur_seed = split_seed(seed, 4)
    params = {"color": color_distortion_params(color_seed, color_strength)}
    if blur:
        params["blur"] = blur_params(blur_seed)
    return params


def pretrain_geometry(image: tf.Tensor, seed: tf.Tensor, size: int,
                      crop_area_min: float = CROP_AREA_RANGE[0],
                      flip: bool = True) -> tf.Tensor:
    """The crop and flip of `pretrain_view` with `seed`: [size, size, 3]."""
    crop_seed, flip_seed, _, _ = split_seed(seed, 4)
    image = random_resized_crop(image, crop_seed, size, crop_area_min)
    if flip:
        image = random_flip(image, flip_seed)
    return tf.ensure_shape(image, [size, size, 3])


def batch_pretrain_finish(images: tf.Tensor, params: Dict[str, Dict[str, tf.Tensor]],
                          size: int) -> tf.Tensor:
    """The rest of `pretrain_view` for a batch of pretrain_geometry outputs
    with their stacked pretrain_view_params: colour distortion, blur, clip."""
    images = batch_color_distortion(images, params["color"])
    if "blur" in params:
        images = batch_random_blur(images, params["blur"], size)
    return tf.clip_by_value(images, 0.0, 1.0)


def pretrain_view(image: tf.Tensor, seed: tf.Tensor, size: int,
                  color_strength: float = 1.0, blur: bool = True,
                  crop_area_min: float = CROP_AREA_RANGE[0],
                  flip: bool = True) -> tf.Tensor:
    """One SimCLR pretraining view: crop + flip, colour distortion, blur.
    `crop_area_min` and `flip=False` adapt the recipe to small or oriented
    images (e.g. digits); the defaults are the paper's."""
    _, _, color_seed, blur_seed = split_seed(seed, 4)
    image = pretrain_geometry(image, seed, size, crop_area_min, flip)
    image = random_color_distortion(image, color_seed, color_strength)
    if blur:
        image = random_blur(image, blur_seed, size)
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), [size, size, 3])


def finetune_view(image: tf.Tensor, seed: tf.Tensor, size: int,
                  crop_area_min: float = CROP_AREA_RANGE[0],
                  flip: bool = True) -> tf.Tensor:
    """Fine-tuning: crop + flip only."""
    crop_seed, flip_seed = split_seed(seed, 2)
    image = random_resized_crop(image, crop_seed, size, crop_area_min)
    if flip:
        image = random_flip(image, flip_seed)
    return tf.ensure_shape(image, [size, size, 3])


def eval_view(image: tf.Tensor, size: int, crop: bool = True) -> tf.Tensor:
    """Evaluation: centre crop of 87.5% then resize; `crop=False` (small images,
    e.g. 32 px, as the authors do for CIFAR) only resizes."""
    image = center_crop(image, size) if crop else resize(image, size)
    return tf.ensure_shape(image, [size, size, 3])


def use_eval_crop(image_size: int) -> bool:
    """The authors skip the eval centre crop for images of 32 px or less."""
    return image_size > 32

