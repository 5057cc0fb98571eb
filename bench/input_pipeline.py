"""Input pipeline: CPU time and throughput of two-view SimCLR augmentation.

    python bench/input_pipeline.py [--images 128] [--seconds 20]
                                   [--baseline REV --rounds 2]

Prints JSON. One image = both pretraining views. Cases: 224 px views from
JPEG files in an image folder, decode included: 500x375 (the typical size of
an ImageNet photo), 256x256 and 1000x750 (larger photos); the files are
crops of real photos (write_jpegs). And 32 px views from the built-in digits.

Each case runs the library's pipeline (`build_dataset`: parallel
deterministic map + prefetch) and a naive pipeline: the per-image
augmentation functions with their defaults in a plain one-image-at-a-time
`map` on whole decoded images, no parallelism or prefetch. Reported for each:
images/s, CPU ms per image (process CPU time, every thread, per image) and
cores busy (CPU time over wall time). CPU per image is what decides how many
host cores one accelerator needs. The library pipeline also reports
`first_batch_s`, the wall time from a new iterator to its first batch
(tracing, XLA compilation, first files): paid once per process. For the
JPEG cases this checkout's library pipeline is also measured decoding each
whole image before cropping (`pretrain_whole_decode_cpu_ms_per_image`) and
in fine-tuning mode (one view: crop and flip) both ways (`finetune_...`);
for the 500x375 case, without the XLA-compiled colour call as well
(`pretrain_no_xla_...`, `--xla_augment=false`).

Every case also measures `--augment_on=device` (`device_...`): the host's
part (decode, crop, resize, flip, 8-bit views and drawn parameters: the
pipeline the trainer then reads) and the batched colour and blur that the
replica step applies (`device_augment.finish_views` on batches of that
pipeline, compiled as in the step; on this machine the device is this CPU),
in rounds alternating with the host-augmented pipeline: medians, and the
medians of the per-round ratios `device_host_over_host` (host CPU freed)
and `device_total_over_host` (host part + batched ops over the host-only
augmentation: above 1 the batched ops cost this CPU more than the per-image
ones).

`--baseline REV` also measures the library pipeline of git revision REV
(checked out in a temporary worktree) in the same run: child processes
alternate, REV then this checkout, `--rounds` times, each measuring every
case, so a slow spell of the shared machine hits both. Reported per case: the
medians and `cpu_vs_baseline`, the median of the per-round ratios of CPU ms
per image (this checkout / REV; below 1 is less CPU).
"""
import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from revisions import code_roots  # noqa: E402
# (name, JPEG size (width, height) or None for the built-in digits, view side,
# colour strength, blur, batch)
CASES = [("224px_from_500x375_jpeg", (500, 375), 224, 1.0, True, 32),
         ("224px_from_256px_jpeg", (256, 256), 224, 1.0, True, 32),
         ("224px_from_1000x750_jpeg", (1000, 750), 224, 1.0, True, 32),
         ("32px_digits", None, 32, 0.5, False, 128)]


def write_jpegs(folder, count, size):
    """`count` JPEG files of `size` (width, height) under folder/class0: random
    crops (scaled 1-1.5x, some mirrored) of the two 640x427 photos shipped with
    scikit-learn, so that they compress and decode like photos; quality 90
    with PIL's default 4:2:0 chroma subsampling, as most photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images
    photos = [Image.fromarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(0)
    width, height = size
    os.makedirs(os.path.join(folder, "class0"), exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        scale = rng.uniform(1.0, 1.5) * max(1.0, width / photo.width, height / photo.height)
        image = photo.resize((round(photo.width * scale), round(photo.height * scale)),
                             Image.BICUBIC)
        left = rng.integers(0, image.width - width + 1)
        top = rng.integers(0, image.height - height + 1)
        image = image.crop((left, top, left + width, top + height))
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        image.save(os.path.join(folder, "class0", f"{i:05d}.jpg"), quality=90)


def _naive(tf, augment, source, folder, size, strength, blur, batch):
    """One image at a time, no parallel calls, no prefetch: whole decode."""
    def two_views(counter, image):
        first, second = augment.split_seed(tf.stack([tf.constant(0, tf.int64), counter]), 2)
        return {"view1": augment.pretrain_view(image, first, size, strength, blur),
                "view2": augment.pretrain_view(image, second, size, strength, blur)}
    if folder is None:
        ds = source.dataset().map(lambda example: example["image"])
    else:
        paths = tf.constant([os.path.join(folder, p) for p in source.ids])
        ds = tf.data.Dataset.from_tensor_slices(paths).map(
            lambda p: tf.io.decode_image(tf.io.read_file(p), channels=3,
                                         dtype=tf.float32, expand_animations=False))
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.map_parallelization = False
    return ds.repeat().enumerate().map(two_views).batch(batch).with_options(options)


def _rate(dataset, batch, seconds):
    """(images/s, CPU ms per image, cores busy, first batch s): process CPU
    time (every thread) over wall time while reading batches for `seconds`,
    after a warm-up of 2 batches; the last is the wall time from creating
    the iterator to the first batch (tracing, compiling, first files)."""
    start = time.perf_counter()
    iterator = iter(dataset)
    next(iterator)
    first = time.perf_counter() - start
    next(iterator)
    count, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += batch
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return count / wall, 1000 * cpu / count, cpu / wall, first


def measure(folders, seconds, naive, device_rounds=2):
    """Every case with the simclr_tf2 on sys.path: a list of dicts."""
    import simclr_tf2  # noqa: F401  (before TensorFlow: quiet start-up, oneDNN)
    import tensorflow as tf
    from simclr_tf2.data import augment, build_dataset, builtin_source, folder_source
    rows = []
    for name, jpeg_size, size, strength, blur, batch in CASES:
        folder = folders.get(name)
        if folder is None:
            source = builtin_source("digits", "train", size)
        else:
            source = folder_source(folder, "train", labelled=False, verify=False)
        library = build_dataset(source, "pretrain", batch, size, color_strength=strength,
                                blur=blur, shuffle_buffer=1000)
        rate, cpu, cores, first = _rate(library, batch, seconds)
        row = {"case": name, "batch": batch, "blur": blur,
               "library_images_per_s": round(rate, 1),
               "library_cpu_ms_per_image": round(cpu, 3),
               "library_cores_busy": round(cores, 2),
               "library_first_batch_s": round(first, 2)}
        if naive:
            rate, cpu, cores, _ = _rate(_naive(tf, augment, source, folder, size, strength,
                                               blur, batch), batch, seconds)
            row.update({"naive_images_per_s": round(rate, 1),
                        "naive_cpu_ms_per_image": round(cpu, 3),
                        "naive_cores_busy": round(cores, 2),
                        "speedup_vs_naive": round(row["library_images_per_s"] / rate, 2)})
            if folder is not None:
                row.update(_file_path_rows(build_dataset, source, size, strength, blur,
                                           batch, seconds))
            if name == CASES[0][0]:  # the headline case without the XLA call
                plain = build_dataset(source, "pretrain", batch, size,
                                      color_strength=strength, blur=blur,
                                      shuffle_buffer=1000, xla_augment=False)
                _, cpu, _, first = _rate(plain, batch, seconds)
                row.update({"pretrain_no_xla_cpu_ms_per_image": round(cpu, 3),
                            "pretrain_no_xla_first_batch_s": round(first, 2)})
            row.update(_device_rows(tf, build_dataset, source, size, strength, blur, batch,
                                    seconds, device_rounds))
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def _device_rows(tf, build_dataset, source, size, strength, blur, batch, seconds, rounds):
    """--augment_on=device against host augmentation (see the module note)."""
    from simclr_tf2.data import device_augment
    settings = dict(color_strength=strength, blur=blur, shuffle_buffer=1000)
    host = build_dataset(source, "pretrain", batch, size, **settings)
    shipped = build_dataset(source, "pretrain", batch, size, augment_on="device", **settings)
    batches = [b for _, b in zip(range(4), shipped)]

    @tf.function
    def finish(b):  # one pixel out: the views are made, not copied back
        views = device_augment.finish_views(b)
        return views["view1"][0, 0, 0, 0] + views["view2"][0, 0, 0, 0]
    start = time.perf_counter()
    finish(batches[0]).numpy()
    first = time.perf_counter() - start

    def ops_rate():
        count, start, cpu_start = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            finish(batches[count // batch % len(batches)]).numpy()
            count += batch
        return 1000 * (time.process_time() - cpu_start) / count
    measured = {"host": [], "device_host": [], "device_ops": []}
    for _ in range(rounds):
        measured["host"].append(_rate(host, batch, seconds)[1])
        measured["device_host"].append(_rate(shipped, batch, seconds)[1])
        measured["device_ops"].append(ops_rate())
    median = {k: statistics.median(v) for k, v in measured.items()}
    per_round = list(zip(measured["host"], measured["device_host"], measured["device_ops"]))
    return {"device_round_host_cpu_ms_per_image": round(median["host"], 3),
            "device_host_cpu_ms_per_image": round(median["device_host"], 3),
            "device_ops_cpu_ms_per_image": round(median["device_ops"], 3),
            "device_ops_first_call_s": round(first, 2),
            "device_host_over_host": round(statistics.median(
                d / h for h, d, _ in per_round), 3),
            "device_total_over_host": round(statistics.median(
                (d + o) / h for h, d, o in per_round), 3)}


def _file_path_rows(build_dataset, source, size, strength, blur, batch, seconds):
    """CPU ms per image of the library pipeline reading the files undecoded
    (crops decode their region) against decoding each whole image first,
    pretraining (two views) and fine-tuning (one view)."""
    whole = dataclasses.replace(source, load_encoded=None)
    row = {}
    for label, mode, src in (("pretrain_whole_decode", "pretrain", whole),
                             ("finetune", "finetune", source),
                             ("finetune_whole_decode", "finetune", whole)):
        dataset = build_dataset(src, mode, batch, size, color_strength=strength, blur=blur,
                                shuffle_buffer=1000)
        row[f"{label}_cpu_ms_per_image"] = round(_rate(dataset, batch, seconds)[1], 3)
    return row


def _child(code_root, folders, seconds, naive, device_rounds=None):
    """measure() in a fresh process that imports simclr_tf2 from code_root."""
    env = dict(os.environ, PYTHONPATH=code_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, os.path.abspath(__file__), "--_child", json.dumps(folders),
               "--seconds", str(seconds), "--cases", ",".join(c[0] for c in CASES)] + (
                   ["--_naive"] if naive else []) + (  # a baseline may not know it
                   ["--device_rounds", str(device_rounds)] if device_rounds else [])
    done = subprocess.run(command, env=env, cwd=code_root, stdout=subprocess.PIPE, check=True,
                          text=True)
    return json.loads(done.stdout)


def compare(baseline_rows, current_rows):
    """Per case: medians over rounds of both, and the median per-round ratio
    of CPU ms per image (current / baseline)."""
    report = []
    for i, (name, *_rest) in enumerate(CASES):
        before = [rows[i] for rows in baseline_rows]
        after = [rows[i] for rows in current_rows]
        ratios = [a["library_cpu_ms_per_image"] / b["library_cpu_ms_per_image"]
                  for a, b in zip(after, before)]
        row = {"case": name}
        for label, runs in (("baseline", before), ("library", after)):
            for key in ("images_per_s", "cpu_ms_per_image", "cores_busy", "first_batch_s"):
                row[f"{label}_{key}"] = round(statistics.median(
                    r[f"library_{key}"] for r in runs), 3)
        row["cpu_vs_baseline"] = round(statistics.median(ratios), 3)
        row["cpu_vs_baseline_per_round"] = [round(r, 3) for r in ratios]
        for key, value in after[0].items():  # measured once: naive, file path
            if key.startswith(("naive_", "speedup_", "pretrain_", "finetune", "device_")):
                row[key] = value
        report.append(row)
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=128, help="JPEG files per case")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument("--baseline", help="git revision to measure in the same run")
    parser.add_argument("--rounds", type=int, default=2,
                        help="with --baseline: measurements of each, alternating")
    parser.add_argument("--cases", default=",".join(c[0] for c in CASES),
                        help="which cases (comma-separated names)")
    parser.add_argument("--device_rounds", type=int, default=2,
                        help="rounds of the --augment_on=device comparison per case")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_naive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    CASES[:] = [case for case in CASES if case[0] in args.cases.split(",")]
    if args._child:
        print(json.dumps(measure(json.loads(args._child), args.seconds, args._naive,
                                 args.device_rounds)))
        return
    import tensorflow as tf
    results = {"machine": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "tensorflow": tf.__version__,
               "command": " ".join(["bench/input_pipeline.py"] + sys.argv[1:])}
    tmp = tempfile.mkdtemp()
    try:
        folders = {}
        for name, jpeg_size, *_rest in CASES:
            if jpeg_size is not None:
                folders[name] = os.path.join(tmp, name)
                write_jpegs(folders[name], args.images, jpeg_size)
        if args.baseline:
            results["baseline"] = subprocess.run(
                ["git", "-C", ROOT, "rev-parse", "--short", args.baseline], check=True,
                capture_output=True, text=True).stdout.strip()
            results["current"] = subprocess.run(
                ["git", "-C", ROOT, "describe", "--always", "--dirty"], check=True,
                capture_output=True, text=True).stdout.strip()
            before, after = [], []
            with code_roots(args.baseline) as roots:  # a worktree, removed after
                for round_ in range(args.rounds):
                    before.append(_child(roots["baseline"], folders, args.seconds, False))
                    after.append(_child(ROOT, folders, args.seconds, round_ == 0,
                                        args.device_rounds))
            results["cases"] = compare(before, after)
        else:
            results["cases"] = _child(ROOT, folders, args.seconds, True, args.device_rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
