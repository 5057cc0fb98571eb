"""Decoding only the region of a JPEG that the crops use: same pixels, same crops."""
import dataclasses
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_sample_images

from simclr_tf2.data import augment, build_dataset, decode, folder_source

# PIL's JPEG options: 4:4:4, 4:2:2 and 4:2:0 colour, progressive, greyscale.
KINDS = {"444": dict(subsampling=0), "422": dict(subsampling=1),
         "420": dict(subsampling=2), "progressive": dict(progressive=True),
         "grey": dict()}


def _photo(kind, height=203, width=291, seed=0):
    """A crop of a photo shipped with scikit-learn, in memory, as `kind`; odd
    sizes, so that regions end inside a colour block."""
    rng = np.random.default_rng(seed)
    photo = load_sample_images().images[seed % 2]
    top, left = rng.integers(0, 427 - height), rng.integers(0, 640 - width)
    image = Image.fromarray(photo[top:top + height, left:left + width])
    if kind == "grey":
        image = image.convert("L")
    buffer = io.BytesIO()
    if kind == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=90, **KINDS[kind])
    return buffer.getvalue()


def _windows(count, shape, seed):
    """`count` random [top, left, height, width] windows of an image of `shape`."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        height = rng.integers(1, shape[0] + 1)
        width = rng.integers(1, shape[1] + 1)
        rows.append([rng.integers(0, shape[0] - height + 1),
                     rng.integers(0, shape[1] - width + 1), height, width])
    return np.array(rows, np.int32)


def test_covering_region_holds_the_windows_on_the_block_grid():
    shape = tf.constant([203, 291, 3])
    for seed in range(50):
        windows = _windows(2, (203, 291), seed)
        top, left, height, width = decode.covering_region(tf.constant(windows), shape).numpy()
        assert 0 <= top and 0 <= left and top + height <= 203 and left + width <= 291
        assert top <= windows[:, 0].min() - 16 or top == 0
        assert left <= windows[:, 1].min() - 16 or left == 0
        assert top + height >= (windows[:, 0] + windows[:, 2]).max() + 16 or top + height == 203
        assert left + width >= (windows[:, 1] + windows[:, 3]).max() + 16 or left + width == 291
        # Edges on the 16-pixel grid unless clipped to the image.
        assert top % 16 == 0 and left % 16 == 0
        assert (top + height) % 16 == 0 or top + height == 203
        assert (left + width) % 16 == 0 or left + width == 291


@pytest.mark.parametrize("kind", list(KINDS))
def test_decoded_region_has_the_pixels_of_the_whole_decode(kind):
    data = _photo(kind, seed=len(kind))
    whole = tf.io.decode_jpeg(data, channels=3).numpy()
    for seed in range(30):
        windows = _windows(2, whole.shape, seed)
        region, relative = decode.decode_jpeg_region(tf.constant(data), tf.constant(windows))
        region, relative = region.numpy(), relative.numpy()
        assert region.dtype == np.uint8
        for (top, left, height, width), (rtop, rleft, _, _) in zip(windows, relative):
            np.testing.assert_array_equal(
                region[rtop:rtop + height, rleft:rleft + width],
                whole[top:top + height, left:left + width], err_msg=f"{kind} {seed}")


def test_a_region_decoded_without_the_margin_would_differ():
    """Why the region is widened: decoding exactly the window of a 4:2:0 file
    changes pixels at its edges (colour upsampled without its neighbours)."""
    data = _photo("420", seed=4)
    whole = tf.io.decode_jpeg(data, channels=3).numpy()
    differs = 0
    for top, left, height, width in _windows(60, whole.shape, 1):
        exact = tf.io.decode_and_crop_jpeg(data, [top, left, height, width], channels=3)
        differs += not np.array_equal(exact, whole[top:top + height, left:left + width])
    assert differs > 10


@pytest.mark.parametrize("kind", ["420", "grey", "png"])
@pytest.mark.parametrize("windows", ["pretrain", "small"])
def test_decode_crops_equals_cropping_the_whole_decoded_image(kind, windows):
    """Small fixed windows and random pretraining windows (whose region is
    often most of the image)."""
    data = tf.constant(_photo(kind, seed=3))
    whole = tf.io.decode_image(data, channels=3, dtype=tf.float32)
    seeds = augment.split_seed(tf.constant([4, 2], tf.int64), 3)

    def sample_windows(shape):
        if windows == "small":
            return tf.constant([[10, 20, 30, 40], [50, 60, 25, 20], [0, 0, 9, 9]])
        return tf.stack([augment.pretrain_window(shape, s) for s in seeds])

    crops = decode.decode_crops(data, sample_windows, 40).numpy()
    assert crops.shape == (3, 40, 40, 3) and crops.dtype == np.float32
    drawn = sample_windows(tf.shape(whole))
    for i in range(3):
        np.testing.assert_allclose(crops[i], augment.crop_and_resize(whole, drawn[i], 40),
                                   atol=1e-6)


@pytest.fixture
def photo_folder(tmp_path):
    """Photos of every kind, JPEG and PNG, in two classes."""
    root = tmp_path / "photos"
    for i, kind in enumerate(list(KINDS) + ["png"]):
        folder = root / ("ab"[i % 2])
        folder.mkdir(parents=True, exist_ok=True)
        suffix = "png" if kind == "png" else "jpg"
        (folder / f"{kind}.{suffix}").write_bytes(_photo(kind, 150 + 7 * i, 180 + 5 * i, i))
    return str(root)


@pytest.mark.parametrize("mode,size", [("pretrain", 48), ("pretrain", 128), ("finetune", 40)])
def test_pipeline_reading_files_gives_the_views_of_decoded_images(photo_folder, mode, size):
    source = folder_source(photo_folder, "train", labelled=True)
    decoded = dataclasses.replace(source, load_encoded=None)  # the whole-image path
    for xla in (False, True):
        a = next(iter(build_dataset(source, mode, 6, size, seed=3, xla_augment=xla)))
        b = next(iter(build_dataset(decoded, mode, 6, size, seed=3, xla_augment=xla)))
        for key in a:  # uint8 vs float resize: round-off, a little more after XLA
            if mode == "finetune" or key not in ("view1", "view2"):
                np.testing.assert_allclose(a[key], b[key], atol=3e-6, err_msg=key)
                continue
            # Pretraining crops are rounded to 8 bits: where the two crops
            # straddle a rounding point by round-off, a pixel moves by 1/255
            # (then up to 1.8 x 1.8 by contrast and saturation).
            off = np.abs(a[key] - b[key]) > 3e-6
            assert off.mean() < 0.005 and np.abs(a[key] - b[key]).max() < 4 / 255, key
