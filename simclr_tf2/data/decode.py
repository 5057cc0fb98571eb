"""Decoding only the part of an image file that its random crops use.

A random resized crop keeps 8-100% of an image, yet a plain pipeline decodes
all of it. For JPEG files the crop windows are drawn from the size in the
file's header (`tf.io.extract_jpeg_shape`, the same draws as from the decoded
image, which has that size) and only a region covering them is decoded
(`tf.io.decode_and_crop_jpeg`). Other formats are decoded whole.

Exactness: libjpeg upsamples subsampled colour (4:2:0, 4:2:2) from
neighbouring samples, so a region decoded on its own differs from the same
pixels of the whole decode at its edges (by up to 29 of 255 in our tests).
The decoded region is therefore widened to multiples of 16 pixels (the
largest common MCU) plus 16 pixels on each side, clipped to the image; the
windows inside it then get exactly the pixels of a whole decode (tested for
4:4:4, 4:2:2, 4:2:0, greyscale and progressive files).

What it saves: libjpeg still entropy-decodes every row above the region's
bottom; it skips the inverse DCT, upsampling and colour conversion outside
the region, and the crops are resized from the uint8 region without a float
copy of the whole image. Measured (bench/input_pipeline.py, 2-core Zen 4,
two runs): 28% less CPU per fine-tuning view and 14-16% less per
pretraining image from 1000x750 photos, 8-9% less per fine-tuning view at
500x375; for the two pretraining views of photos of 500 px and less, whose
windows cover most of the image, within 10% of a whole decode either way.
"""
from typing import Callable, Tuple

import tensorflow as tf

from simclr_tf2.data import augment

# Alignment and context of the decoded region, in pixels.
REGION_MARGIN = 16


def decode_image_data(data: tf.Tensor) -> tf.Tensor:
    """Encoded image -> float32 RGB [H, W, 3] in [0, 1]: grey, RGBA, palette
    and 16-bit images are converted (alpha dropped); animated GIFs give their
    first frame."""
    image = tf.io.decode_image(data, channels=3, dtype=tf.float32,
                               expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def decode_image_file(path: tf.Tensor) -> tf.Tensor:
    """decode_image_data of the file at `path`."""
    return decode_image_data(tf.io.read_file(path))


def covering_region(windows: tf.Tensor, image_shape: tf.Tensor,
                    margin: int = REGION_MARGIN) -> tf.Tensor:
    """[top, left, height, width] of the smallest box holding every window of
    `windows` ([k, 4] rows [top, left, height, width]), widened to multiples
    of `margin` plus `margin` on each side and clipped to the image."""
    windows = tf.cast(windows, tf.int32)
    top = tf.reduce_min(windows[:, 0])
    left = tf.reduce_min(windows[:, 1])
    bottom = tf.reduce_max(windows[:, 0] + windows[:, 2])
    right = tf.reduce_max(windows[:, 1] + windows[:, 3])
    top = tf.maximum((top // margin - 1) * margin, 0)
    left = tf.maximum((left // margin - 1) * margin, 0)
    bottom = tf.minimum((-(-bottom // margin) + 1) * margin, image_shape[0])
    right = tf.minimum((-(-right // margin) + 1) * margin, image_shape[1])
    return tf.stack([top, left, bottom - top, right - left])


def decode_jpeg_region(data: tf.Tensor, windows: tf.Tensor
                       ) -> Tuple[tf.Tensor, tf.Tensor]:
    """(region, windows): the part of JPEG `data` that covers `windows` ([k,
    4] rows [top, left, height, width] in the whole image), decoded to uint8
    RGB, and the windows made relative to it. The region's pixels are the
    whole decode's (see the module note)."""
    windows = tf.cast(windows, tf.int32)
    region = covering_region(windows, tf.io.extract_jpeg_shape(data))
    image = tf.io.decode_and_crop_jpeg(data, region, channels=3)
    return image, windows - tf.stack([region[0], region[1], 0, 0])


def decode_crops(data: tf.Tensor, sample_windows: Callable[[tf.Tensor], tf.Tensor],
                 size: int) -> tf.Tensor:
    """[k, size, size, 3] float32 in [0, 1]: the windows that
    `sample_windows(shape)` ([height, width, channels] int32 -> [k, 4]
    windows, k static) draws for the encoded image `data`, cut and resized
    by augment.crop_and_resize, as from the whole decoded image
    (decode_image_data: grey, RGBA, palette, 16-bit). A JPEG
    is decoded only over the region the windows cover."""
    def crops(image, windows):
        return tf.stack([augment.crop_and_resize(image, windows[i], size)
                         for i in range(windows.shape[0])])

    def jpeg():
        windows = sample_windows(tf.io.extract_jpeg_shape(data))
        return crops(*decode_jpeg_region(data, windows))

    def other():
        image = decode_image_data(data)
        return crops(image, tf.cast(sample_windows(tf.shape(image)), tf.int32))

    return tf.cond(tf.io.is_jpeg(data), jpeg, other)
