"""Each SimCLR augmentation alone: ranges, shapes, probabilities, NumPy checks."""
import itertools

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.data import augment

DRAWS = 400


def _seed(i):
    return tf.constant([7, i], tf.int64)


def _colourful(height=24, width=24, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(0.05, 0.95, (height, width, 3)).astype(np.float32))


def _rate(flags, expected, draws=DRAWS):
    # 4.5 standard deviations of a binomial proportion: fails by chance ~1e-5.
    tolerance = 4.5 * np.sqrt(expected * (1 - expected) / draws)
    assert abs(np.mean(flags) - expected) < tolerance, (np.mean(flags), expected)


def test_crop_window_area_and_aspect_bounds():
    shape = tf.constant([256, 256, 3])
    areas, aspects = [], []
    for i in range(DRAWS):
        top, left, height, width = augment.crop_window(shape, _seed(i)).numpy()
        assert 0 <= top and top + height <= 256 and 0 <= left and left + width <= 256
        areas.append(height * width / 256 ** 2)
        aspects.append(width / height)
    areas, aspects = np.array(areas), np.array(aspects)
    # Integer pixel sizes: allow a pixel of rounding on each side.
    assert areas.min() >= 0.08 - 2 / 256 and areas.max() <= 1.0
    assert aspects.min() >= 0.75 * (1 - 2 / 16) and aspects.max() <= 4 / 3 * (1 + 2 / 16)
    # The whole range is used, not a corner of it.
    assert areas.min() < 0.15 and areas.max() > 0.9
    assert aspects.min() < 0.8 and aspects.max() > 1.25


def test_crop_area_min_raises_the_smallest_crop():
    shape = tf.constant([28, 28, 3])
    areas = []
    for i in range(DRAWS):
        _, _, height, width = augment.crop_window(shape, _seed(i), area_range=(0.5, 1.0)).numpy()
        areas.append(height * width / 28 ** 2)
    assert min(areas) >= 0.5 - 2 / 28 and max(areas) <= 1.0
    assert min(areas) < 0.6
    image = _colourful(28, 28)
    # The same seed draws the same window whatever the other settings.
    np.testing.assert_array_equal(
        augment.random_resized_crop(image, _seed(3), 28, 0.08),
        augment.random_resized_crop(image, _seed(3), 28))


def test_views_without_flip_never_flip():
    image = _colourful(28, 28)
    for i in range(20):
        seed = _seed(i)
        crop_seed, _ = augment.split_seed(seed, 2)
        expected = augment.random_resized_crop(image, crop_seed, 28, 0.5)
        np.testing.assert_array_equal(
            augment.finetune_view(image, seed, 28, crop_area_min=0.5, flip=False), expected)
    flipped = sum(not np.array_equal(augment.finetune_view(image, _seed(i), 28, 0.5),
                                     augment.random_resized_crop(
                                         image, augment.split_seed(_seed(i), 2)[0], 28, 0.5))
                  for i in range(20))
    assert 4 <= flipped <= 16  # with flip on, about half differ


def test_random_resized_crop_shape_range_and_determinism():
    image = _colourful(50, 70)
    out = augment.random_resized_crop(image, _seed(1), 32)
    assert out.shape == (32, 32, 3)
    assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 1
    np.testing.assert_array_equal(out, augment.random_resized_crop(image, _seed(1), 32))
    assert not np.array_equal(out, augment.random_resized_crop(image, _seed(2), 32))


def test_flip_probability_and_content():
    image = _colourful()
    flipped = [not np.array_equal(augment.random_flip(image, _seed(i)), image)
               for i in range(DRAWS)]
    _rate(flipped, 0.5)
    i = flipped.index(True)
    np.testing.assert_array_equal(augment.random_flip(image, _seed(i)),
                                  image.numpy()[:, ::-1])


def test_center_crop_matches_numpy_slice():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (64, 80, 3)).astype(np.float32)
    # 87.5% of the short side (64) is 56; with output 56 no resize happens.
    out = augment.center_crop(tf.constant(image), 56).numpy()
    np.testing.assert_allclose(out, image[4:60, 12:68], atol=1e-6)
    assert augment.eval_view(tf.constant(image), 32).shape == (32, 32, 3)
    assert augment.use_eval_crop(224) and not augment.use_eval_crop(32)


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_color_jitter_parameter_ranges_and_order(strength):
    amount = 0.8 * strength
    params = [augment.color_jitter_params(_seed(i), strength) for i in range(DRAWS)]
    orders = [tuple(p[0].numpy()) for p in params]
    factors = np.array([[float(v) for v in p[1:]] for p in params])
    for column in range(3):
        values = factors[:, column]
        assert values.min() >= 1 - amount and values.max() <= 1 + amount
        assert values.min() < 1 - 0.9 * amount and values.max() > 1 + 0.9 * amount
    hue = factors[:, 3]
    assert np.abs(hue).max() <= 0.2 * strength and np.abs(hue).max() > 0.18 * strength
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    # Random order: every one of the 24 permutations occurs, none dominates.
    counts = {p: orders.count(p) for p in itertools.permutations(range(4))}
    assert min(counts.values()) >= 3 and max(counts.values()) <= 40


def _np_contrast(x, factor):
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * factor + mean


def test_apply_color_jitter_follows_the_order_and_clips_after_each_op():
    image = _colourful()
    x = image.numpy()
    # Brightness 1.5 then contrast 0.5, saturation / hue neutral.
    out = augment.apply_color_jitter(image, tf.constant([0, 1, 2, 3]), 1.5, 0.5, 1.0, 0.0)
    expected = np.clip(_np_contrast(np.clip(x * 1.5, 0, 1), 0.5), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # Contrast first gives a different image.
    out = augment.apply_color_jitter(image, tf.constant([1, 0, 2, 3]), 1.5, 0.5, 1.0, 0.0)
    expected = np.clip(np.clip(_np_contrast(x, 0.5), 0, 1) * 1.5, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_apply_color_jitter_applies_all_four_ops_in_every_order():
    """Every permutation, eagerly, in a graph, as a loop and XLA-compiled (as a
    loop), against the
    four tf.image ops composed in that order by hand."""
    image = _colourful(9, 11)
    factors = (1.3, 0.6, 1.7, 0.15)  # brightness, contrast, saturation, hue
    single = [lambda x: x * factors[0],
              lambda x: tf.image.adjust_contrast(x, factors[1]),
              lambda x: tf.image.adjust_saturation(x, factors[2]),
              lambda x: tf.image.adjust_hue(x, factors[3])]
    graph = tf.function(lambda x, o: augment.apply_color_jitter(x, o, *factors))
    looped = tf.function(lambda x, o: augment.apply_color_jitter(x, o, *factors, loop=True))
    compiled = tf.function(lambda x, o: augment.apply_color_jitter(x, o, *factors,
                                                                   loop=True),
                           jit_compile=True)
    outputs = set()
    for order in itertools.permutations(range(4)):
        expected = image
        for op in order:
            expected = tf.clip_by_value(single[op](expected), 0.0, 1.0)
        o = tf.constant(order)
        for fn, tolerance in ((augment.apply_color_jitter, 1e-6), (graph, 1e-6),
                              (looped, 1e-6), (compiled, 5e-6)):
            out = fn(image, o) if fn is not augment.apply_color_jitter else fn(
                image, o, *factors)
            np.testing.assert_allclose(out, expected, atol=tolerance, err_msg=str(order))
        outputs.add(np.round(expected.numpy(), 4).tobytes())
    assert len(outputs) > 12  # the order matters: most permutations differ


def test_color_drop_is_luma_on_three_channels():
    image = _colourful()
    out = augment.color_drop(image).numpy()
    luma = image.numpy() @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    for c in range(3):
        np.testing.assert_allclose(out[..., c], luma, atol=1e-3)


def test_color_distortion_probabilities():
    image = _colourful()
    outputs = [augment.random_color_distortion(image, _seed(i), 1.0).numpy()
               for i in range(DRAWS)]
    grey = [np.allclose(o[..., 0], o[..., 1]) and np.allclose(o[..., 1], o[..., 2])
            for o in outputs]
    unchanged = [np.array_equal(o, image.numpy()) for o in outputs]
    _rate(grey, 0.2)
    _rate(unchanged, 0.2 * 0.8)  # no jitter (0.2) and no drop (0.8)
    for o in outputs:
        assert o.min() >= 0 and o.max() <= 1


def test_blur_sigma_range_and_probability():
    sigmas = np.array([float(augment.blur_sigma(_seed(i))) for i in range(DRAWS)])
    assert sigmas.min() >= 0.1 and sigmas.max() <= 2.0
    assert sigmas.min() < 0.2 and sigmas.max() > 1.9
    image = _colourful(32, 32)
    blurred = [not np.array_equal(augment.random_blur(image, _seed(i), 32), image)
               for i in range(DRAWS)]
    _rate(blurred, 0.5)


def test_blur_kernel_size():
    assert augment.blur_kernel_size(224) == 23
    assert augment.blur_kernel_size(32) == 3
    assert augment.blur_kernel_size(96) == 9


@pytest.mark.parametrize("height,width,size,sigma",
                         [(20, 24, 7, 1.3), (37, 50, 23, 2.0), (9, 5, 3, 0.1), (12, 11, 1, 1.0),
                          (30, 30, 23, 0.7)])
def test_gaussian_blur_matches_numpy_separable_convolution(height, width, size, sigma):
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 1, (height, width, 3)).astype(np.float32)
    radius = size // 2
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    taps /= taps.sum()
    padded = np.pad(image.astype(np.float64), [(radius, radius), (radius, radius), (0, 0)])
    rows = sum(taps[k] * padded[:, k:k + width] for k in range(size))
    expected = sum(taps[k] * rows[k:k + height] for k in range(size))
    out = augment.gaussian_blur(tf.constant(image), tf.constant(sigma), size)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_gaussian_blur_keeps_a_constant_image_away_from_the_border():
    flat = augment.gaussian_blur(tf.fill([20, 20, 3], 0.5), tf.constant(2.0), 7).numpy()
    np.testing.assert_allclose(flat[5:-5, 5:-5], 0.5, atol=1e-6)


def test_crop_and_resize_cuts_the_window_and_resizes_uint8_like_float():
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (41, 57, 3), dtype=np.uint8)
    as_float = pixels.astype(np.float32) / 255.0
    for top, left, height, width in [(0, 0, 41, 57), (3, 5, 20, 31), (40, 56, 1, 1)]:
        window = tf.constant([top, left, height, width])
        expected = augment.resize(tf.constant(as_float[top:top + height, left:left + width]),
                                  24)
        np.testing.assert_array_equal(
            augment.crop_and_resize(tf.constant(as_float), window, 24), expected)
        from_uint8 = augment.crop_and_resize(tf.constant(pixels), window, 24)
        assert from_uint8.dtype == tf.float32
        np.testing.assert_allclose(from_uint8, expected, atol=1e-6)


def _recipe_view(image, seed, size, strength, blur, flip):
    """The pretraining view composed from the single augmentations, one after
    another, with the sub-seeds the recipe documents; the crop rounded to
    8 bits (as --augment_on=device ships it)."""
    crop_seed, flip_seed, color_seed, blur_seed = augment.split_seed(seed, 4)
    view = augment.random_resized_crop(image, crop_seed, size)
    view = tf.cast(tf.round(view * 255), tf.uint8)
    assert np.abs(view.numpy() / 255 - augment.random_resized_crop(
        image, crop_seed, size).numpy()).max() <= 0.5 / 255 + 1e-6
    view = tf.cast(view, tf.float32) / 255
    if flip:
        view = augment.random_flip(view, flip_seed)
    view = augment.random_color_distortion(view, color_seed, strength)
    if blur:
        view = augment.random_blur(view, blur_seed, size)
    return tf.clip_by_value(view, 0.0, 1.0)


@pytest.mark.parametrize("xla", [False, True])
def test_pretrain_view_is_the_recipe_of_single_augmentations(xla):
    image = _colourful(70, 90)
    for i in range(12):
        for size, strength, blur, flip in [(48, 1.0, True, True), (32, 0.5, False, False)]:
            expected = _recipe_view(image, _seed(i), size, strength, blur, flip)
            view = augment.pretrain_view(image, _seed(i), size, strength, blur, flip=flip,
                                         xla=xla)
            # XLA fuses the colour arithmetic: float32 round-off, not other draws.
            np.testing.assert_allclose(view, expected, atol=5e-6 if xla else 1e-6)


def test_views_of_crops_compiled_and_plain_agree_on_every_draw():
    rng = np.random.default_rng(3)
    crops = [tf.constant(rng.uniform(0, 1, (64, 64, 3)).astype(np.float32)) for _ in range(2)]
    flipped = []
    for i in range(40):
        seeds = augment.split_seed(_seed(i), 2)
        plain = augment.pretrain_views_of_crops(crops, seeds, 64, xla=False)
        compiled = augment.pretrain_views_of_crops(crops, seeds, 64, xla=True)
        for a, b in zip(plain, compiled):
            np.testing.assert_allclose(a, b, atol=5e-6)
        flipped.append(augment.flip_draw(augment.split_seed(seeds[0], 4)[1]).numpy())
    assert 0 < np.mean(flipped) < 1  # both branches were exercised


def test_views_shapes_ranges_and_determinism():
    image = _colourful(40, 30)
    a = augment.pretrain_view(image, _seed(3), 32, 0.5, blur=True)
    b = augment.pretrain_view(image, _seed(3), 32, 0.5, blur=True)
    c = augment.pretrain_view(image, _seed(4), 32, 0.5, blur=True)
    assert a.shape == (32, 32, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert float(tf.reduce_min(a)) >= 0 and float(tf.reduce_max(a)) <= 1
    fine = augment.finetune_view(image, _seed(3), 24)
    assert fine.shape == (24, 24, 3)
    # Fine-tuning views keep colours: a crop+flip of a grey image stays grey.
    grey = augment.finetune_view(tf.fill([40, 30, 3], 0.25), _seed(5), 24)
    np.testing.assert_allclose(grey, 0.25, atol=1e-5)
