"""Input pipeline throughput: two-view SimCLR augmentation, images/s.

    python bench/input_pipeline.py [--images 256] [--seconds 20]

Prints JSON. Cases: 224 px views from 256x256 JPEG files in an image folder
(decode included, as when training from a folder of ImageNet-like files), and
32 px views from the built-in digits arrays. Each case runs the library's
pipeline (`build_dataset`, parallel deterministic map + prefetch) and, in the
same run, a naive pipeline: the same per-image augmentation functions in a
plain one-image-at-a-time `map` with no parallelism or prefetch. Reported:
images/s (one image = both views), the ratio library / naive, and for each
pipeline the CPU time per image and the cores it kept busy (process CPU time
over wall time, every thread): speedup = (naive CPU per image / library CPU
per image) x (library cores busy / naive cores busy), so the JSON shows
whether a change saved work or only spread it over more cores.
"""
import argparse
import json
import os
import platform
import tempfile
import time


import numpy as np  # noqa: E402
import simclr_tf2  # noqa: E402,F401  (before TensorFlow: quiet start-up, oneDNN)
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from simclr_tf2.data import augment, build_dataset, builtin_source, folder_source  # noqa: E402


def _write_jpegs(folder, count, size=256):
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, "class0"), exist_ok=True)
    # Smooth random images compress like photos rather than like noise.
    for i in range(count):
        small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        image.save(os.path.join(folder, "class0", f"{i:05d}.jpg"), quality=90)


def _naive(source, size, strength, blur, batch):
    """One image at a time, no parallel calls, no prefetch."""
    def two_views(counter, example):
        first, second = augment.split_seed(tf.stack([tf.constant(0, tf.int64), counter]), 2)
        return {"view1": augment.pretrain_view(example["image"], first, size, strength, blur),
                "view2": augment.pretrain_view(example["image"], second, size, strength, blur)}
    ds = source.dataset()
    # The folder source decodes with a parallel map; the naive baseline decodes
    # serially as well.
    if source.name == "folder":
        paths = tf.constant([os.path.join(source.root, p) for p in source.ids])
        ds = tf.data.Dataset.from_tensor_slices(paths).map(
            lambda p: {"image": tf.io.decode_image(tf.io.read_file(p), channels=3,
                                                   dtype=tf.float32,
                                                   expand_animations=False)})
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.map_parallelization = False
    return ds.repeat().enumerate().map(two_views).batch(batch).with_options(options)


def _rate(dataset, batch, seconds):
    """(images/s, CPU ms per image, cores busy): process CPU time (every
    thread) over wall time while reading batches for `seconds`."""
    iterator = iter(dataset)
    next(iterator)  # warm-up: tracing, first files
    count, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += batch
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return count / wall, 1000 * cpu / count, cpu / wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256, help="JPEG files to write")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    args = parser.parse_args()
    results = {"machine": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "tensorflow": tf.__version__, "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        _write_jpegs(tmp, args.images)
        folder = folder_source(tmp, "train", labelled=False, verify=False)
        folder.root = tmp
        cases = [("224px_from_256px_jpeg", folder, 224, 1.0, True, 32),
                 ("32px_digits", builtin_source("digits", "train", 32), 32, 0.5, False, 128)]
        for name, source, size, strength, blur, batch in cases:
            library = build_dataset(source, "pretrain", batch, size, color_strength=strength,
                                    blur=blur, shuffle_buffer=1000)
            naive = _naive(source, size, strength, blur, batch)
            fast, fast_cpu, fast_cores = _rate(library, batch, args.seconds)
            slow, slow_cpu, slow_cores = _rate(naive, batch, args.seconds)
            results["cases"].append({
                "case": name, "batch": batch, "blur": blur,
                "library_images_per_s": round(fast, 1),
                "naive_images_per_s": round(slow, 1),
                "speedup_vs_naive": round(fast / slow, 2),
                "library_cpu_ms_per_image": round(fast_cpu, 3),
                "naive_cpu_ms_per_image": round(slow_cpu, 3),
                "library_cores_busy": round(fast_cores, 2),
                "naive_cores_busy": round(slow_cores, 2)})
            print(json.dumps(results["cases"][-1]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
