"""Colour and blur on the device (--augment_on=device): the batched ops give
the host's views to float32 round-off, op by op and end to end, on one and
two replicas and under XLA."""
import itertools

import numpy as np
import pytest
import tensorflow as tf

from conftest import mirrored_strategy
from simclr_tf2 import get_preset
from simclr_tf2.data import augment, build_dataset, builtin_source
from simclr_tf2.data import device_augment as da
from simclr_tf2.training import Learner
from simclr_tf2.training.distribution import augment_on

COLUMN = {name: i for i, name in enumerate(da.PARAMS)}


def _images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(0.02, 0.98, (n, size, size, 3)).astype(np.float32))


def _rows(n, seed=0, **fixed):
    """Parameter rows with random factors, every order, and `fixed` columns."""
    rng = np.random.default_rng(seed)
    orders = list(itertools.permutations(range(4)))
    rows = np.zeros((n, len(da.PARAMS)), np.float32)
    rows[:, COLUMN["jitter"]] = 1
    rows[:, COLUMN["order0"]:COLUMN["order3"] + 1] = [orders[i % 24] for i in range(n)]
    rows[:, COLUMN["brightness"]] = rng.uniform(0.2, 1.8, n)
    rows[:, COLUMN["contrast"]] = rng.uniform(0.2, 1.8, n)
    rows[:, COLUMN["saturation"]] = rng.uniform(0.2, 1.8, n)
    rows[:, COLUMN["hue"]] = rng.uniform(-0.2, 0.2, n)
    rows[:, COLUMN["sigma"]] = rng.uniform(0.1, 2.0, n)
    for name, value in fixed.items():
        rows[:, COLUMN[name]] = value
    return tf.constant(rows)


def _host_view(image, row):
    """One image through the host's single-image ops with the row's choices."""
    row = row.numpy()
    order = tf.constant(row[COLUMN["order0"]:COLUMN["order3"] + 1].astype(np.int32))
    if row[COLUMN["jitter"]]:
        image = augment.apply_color_jitter(image, order, *row[COLUMN["brightness"]:
                                                               COLUMN["hue"] + 1])
    if row[COLUMN["drop"]]:
        image = augment.color_drop(image)
    if row[COLUMN["blur"]]:
        image = augment.gaussian_blur(image, row[COLUMN["sigma"]],
                                      augment.blur_kernel_size(image.shape[0]))
    return tf.clip_by_value(image, 0.0, 1.0)


_jitter_xla = tf.function(da.color_jitter, jit_compile=True)
_distort_graph = tf.function(da.distort)
_distort_xla = tf.function(da.distort, jit_compile=True)


def test_batched_jitter_applies_each_images_own_order_and_factors():
    """All 24 orders in one batch, each image with its own factors, against
    the host's ops one image at a time; in a graph and under XLA."""
    images, rows = _images(24, 12), _rows(24)
    expected = np.stack([_host_view(images[i], rows[i]) for i in range(24)])
    for fn in (tf.function(da.color_jitter), _jitter_xla):
        np.testing.assert_allclose(fn(images, rows), expected, atol=5e-6)


@pytest.mark.parametrize("size", [16, 40])
def test_distort_mixes_jitter_drop_and_blur_per_image_like_the_host(size):
    """Jitter, drop and blur on and off in one batch (every combination), in a
    graph (blur through the chosen images only) and under XLA (all images
    blurred, each keeps its own): the host's views to round-off."""
    combos = list(itertools.product([0, 1], repeat=3))
    flags = np.array([combos[i % 8] for i in range(24)], np.float32)
    rows = _rows(24, seed=size, jitter=0)
    rows = tf.concat([flags[:, :1], rows[:, 1:COLUMN["drop"]], flags[:, 1:],
                      rows[:, COLUMN["sigma"]:]], 1)
    images = _images(24, size, seed=1)
    pixels = augment.to_uint8(images)
    expected = np.stack([_host_view(augment.from_uint8(pixels[i]), rows[i])
                         for i in range(24)])
    for fn in (_distort_graph, _distort_xla):
        out = fn(pixels, rows)
        assert out.dtype == tf.float32
        np.testing.assert_allclose(out, expected, atol=5e-6)
    # Blurring nothing and blurring everything both work.
    for blur in (0.0, 1.0):
        none = tf.concat([rows[:, :COLUMN["blur"]], tf.fill([24, 1], blur),
                          rows[:, COLUMN["sigma"]:]], 1)
        np.testing.assert_allclose(_distort_graph(pixels, none), _distort_xla(pixels, none),
                                   atol=5e-6)


def test_both_batched_blurs_equal_the_host_blur_with_each_sigma():
    images = _images(5, 30, seed=2)
    sigma = tf.constant([0.1, 0.6, 1.0, 1.5, 2.0])
    expected = np.stack([augment.gaussian_blur(images[i], sigma[i], 7) for i in range(5)])
    np.testing.assert_allclose(da.gaussian_blur_depthwise(images, sigma, 7), expected,
                               atol=1e-6)
    shifted = tf.function(da.gaussian_blur_shifted, jit_compile=True)
    np.testing.assert_allclose(shifted(images, sigma, 7), expected, atol=1e-6)


def _pair(mode_size=24, batch=12, seed=4, blur=True):
    source = builtin_source("digits", "train", mode_size)
    kwargs = dict(seed=seed, blur=blur, crop_area_min=0.3, repeat=False)
    host = build_dataset(source, "pretrain", batch, mode_size, augment_on="host", **kwargs)
    device = build_dataset(source, "pretrain", batch, mode_size, augment_on="device",
                           **kwargs)
    return host, device


def test_pipeline_ships_8_bit_crops_and_draws_that_finish_into_the_host_views():
    host, device = _pair()
    checked = 0
    for a, b in itertools.islice(zip(host, device), 3):
        assert b["view1"].dtype == tf.uint8 and b[da.PARAMS_KEY].shape == (12, 2, 12)
        np.testing.assert_array_equal(a["index"], b["index"])
        finished = da.finish_views(b)
        assert da.PARAMS_KEY not in finished
        for key in ("view1", "view2"):
            np.testing.assert_allclose(finished[key], a[key], atol=5e-6)
        checked += 1
    assert checked == 3
    rows = np.concatenate([b[da.PARAMS_KEY].numpy().reshape(-1, 12)
                           for b in itertools.islice(device, 4)])
    for name in ("jitter", "drop", "blur"):  # the batches mixed both choices
        assert 0 < rows[:, COLUMN[name]].mean() < 1, name


def test_augment_on_auto_is_host_on_cpus_and_explicit_values_stay():
    strategy = mirrored_strategy(2)
    assert augment_on("auto", strategy) == "host"
    assert augment_on("auto", tf.distribute.get_strategy()) == "host"
    assert augment_on("device", strategy) == "device"
    with pytest.raises(Exception, match="augment_on"):
        get_preset("tiny").override(**{"data.augment_on": "gpu"})
    with pytest.raises(Exception, match="augment_on"):
        build_dataset(builtin_source("digits", "train", 16), "pretrain", 8, 16,
                      augment_on="auto")


def test_two_replicas_finish_their_own_halves_into_the_host_views():
    """Under a two-replica strategy each replica finishes its half of the
    shipped batch into the host's views; a learner's losses on them are the
    host views' losses."""
    host, device = _pair(batch=8)
    strategy = mirrored_strategy(2)
    host_batch, shipped = next(iter(host)), next(iter(device))
    distributed = strategy.experimental_distribute_values_from_function(
        lambda ctx: {k: tf.split(v, 2)[ctx.replica_id_in_sync_group]
                     for k, v in shipped.items()})
    finished = strategy.run(tf.function(da.finish_views), (distributed,))
    for key in ("view1", "view2"):
        halves = strategy.experimental_local_results(finished[key])
        assert [h.shape[0] for h in halves] == [4, 4]
        np.testing.assert_allclose(tf.concat(halves, 0), host_batch[key], atol=5e-6)
    learner = Learner(get_preset("tiny").override(**{"train.train_batch_size": 8,
                                                     "data.image_size": 24}),
                      "pretrain", total_steps=1)
    ours = learner._losses(da.finish_views(shipped))
    theirs = learner._losses(host_batch)
    for key in ("contrast_loss", "contrast_acc", "loss"):
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5)
