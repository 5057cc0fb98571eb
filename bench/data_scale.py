"""Data at ImageNet scale: what a run costs before its first step, and input
images/s, from image folders and from TFRecord shards, at two sizes.

    python bench/data_scale.py [--sizes 10000 50000] [--baseline REV]
                               [--workdir DIR] [--seconds 15] [--repeats 3]

Prints JSON. For each size N it generates an ImageNet-like folder (N JPEGs of
500x375, quality 90, in 100 class folders under train/, and 1000 under val/;
hard links to 256 crops of real photos, so the listing and the files are
real but the disk holds few distinct bytes), converts it to shards
(`simclr_tf2.make_shards`, timed), and runs the training command (the tiny
ResNet-18 at 64 px, batch 16, the kNN monitor on as in the presets, one
step) in a child process per condition:

- folder_first: no index yet; folder_restart: the same command again after
  it finished (the run's index and checkpoint are there);
- shards_first / shards_restart: the converted shards (their index beside
  them); shards_scan_first: the same shards without that index (found by one
  pass over the records, as for shards of the TPU ImageNet conversion);
- with --baseline REV, REV's code on the folder (baseline_first, _restart).

Each child reports `data_s`, the seconds of the data path before the first
step: every source built (listing a folder or reading its index, indexing
shards), the labelled subset chosen, indexes written (`sources_s`), and the
first batch of a new training pipeline over the training source (timed after
the run: shuffling the N indices, reading and decoding one batch);
`startup_s`, from the process start to the end of the first training step
less the model build (Learner construction) and the Python tracing of the
training step (imports, strategy, the data path, the step's first
execution); `calls`, the filesystem calls made before the first step (every
tf.io.gfile request, os.scandir and os.stat, what a bucket would turn into
requests; tf.data's own reads of image files are not counted) and
`data_calls`, those on paths under the data directory. For every condition a
least-squares line a + b N over the sizes gives the per-image cost b
(`us_per_image`) and `at_1.28M_s`; each condition runs `--repeats` times (a
first run and its restart each time) and reports the medians (the baseline
runs once).
At the largest size the input pipeline's images/s (two 224 px views per
image, batch 32) is measured from the folder and from the shards, each with
and without the guard that skips bad images (its CPU cost as a ratio).
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLASSES = 100
VAL_IMAGES = 1000
POOL = 256
IMAGENET = 1_281_167
COMMON = ["--preset=tiny", "--nocifar_stem", "--image_size=64", "--train_batch_size=16",
          "--eval_batch_size=64", "--num_classes=100", "--steps_per_loop=1",
          "--summary_interval=1", "--knn_interval=1000", "--noexport_at_end",
          "--eval_split=val"]


def generate(root: str, count: int, val: int = VAL_IMAGES) -> str:
    """root/train/<class>/<class>_<i>.JPEG (count) and root/val (`val`),
    hard links to a pool of real-photo crops; kept across runs."""
    if os.path.exists(os.path.join(root, ".done")):
        return root
    sys.path.insert(0, HERE)
    from input_pipeline import write_jpegs
    pool = os.path.join(os.path.dirname(root), "pool")
    if not os.path.isdir(os.path.join(pool, "class0")):
        write_jpegs(pool, POOL, (500, 375))
    files = sorted(os.listdir(os.path.join(pool, "class0")))
    for split, n in (("train", count), ("val", val)):
        for i in range(n):
            name = f"n{i % CLASSES:08d}"
            folder = os.path.join(root, split, name)
            if i < CLASSES:
                os.makedirs(folder, exist_ok=True)
            os.link(os.path.join(pool, "class0", files[i % POOL]),
                    os.path.join(folder, f"{name}_{i}.JPEG"))
    open(os.path.join(root, ".done"), "w").close()
    return root


# ------------------------------------------------------------------- child
def child(code: str, argv, pipeline_sources=None, seconds=15.0):
    """In a fresh process with simclr_tf2 from `code`: runs the training
    command `argv` and prints its timings and filesystem calls as JSON
    (`data_calls`: those on paths under --data_dir)."""
    data_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("--data_dir=")), "/")
    start = time.time()
    sys.path.insert(0, code)
    import simclr_tf2  # noqa: F401
    import tensorflow as tf
    from absl import flags
    from tensorflow.python.lib.io import file_io
    from simclr_tf2.flag_definitions import define_flags
    from simclr_tf2.train import run_command
    from simclr_tf2 import data as data_module
    from simclr_tf2.training import learner as learner_module
    from simclr_tf2.training import trainer as trainer_module
    from simclr_tf2.training import runner  # noqa: F401  (its names are patched too)
    imported = time.time() - start
    if pipeline_sources:
        print(json.dumps(pipeline_rates(pipeline_sources, seconds)))
        return
    counts, data_counts, marks = {}, {}, {}
    data_root = os.path.realpath(data_dir)

    def counted(owner, name):
        function = getattr(owner, name)

        def call(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            if args and isinstance(args[0], (str, bytes, os.PathLike)) and os.path.realpath(
                    os.fsdecode(args[0])).startswith(data_root):
                data_counts[name] = data_counts.get(name, 0) + 1
            return function(*args, **kwargs)
        setattr(owner, name, call)

    for name in ("GetChildren", "IsDirectory", "FileExists", "Stat", "GetMatchingFiles",
                 "BufferedInputStream", "ReadFileToString", "WritableFile", "RenameFile",
                 "RecursivelyCreateDir", "CreateDir", "DeleteFile"):
        counted(file_io._pywrap_file_io, name)
    counted(os, "scandir")
    counted(os, "stat")

    def timed(cls, name, key, once=False):
        function = getattr(cls, name)

        def call(self, *args, **kwargs):
            began = time.time()
            result = function(self, *args, **kwargs)
            if not (once and key in marks):
                marks[key] = marks.get(key, 0.0) + time.time() - began
            return result
        setattr(cls, name, call)

    timed(learner_module.Learner, "__init__", "build_s")
    timed(trainer_module.SimCLRTrainer, "train_step", "trace_s", once=True)
    # The data path: every source built (listing, index), subset chosen and
    # index written, in whichever module calls it.
    sources = []
    for name in ("make_source", "labelled_subset"):
        original = getattr(data_module, name)

        def data_call(*args, _original=original, **kwargs):
            began = time.time()
            result = _original(*args, **kwargs)
            marks["data_s"] = marks.get("data_s", 0.0) + time.time() - began
            if hasattr(result, "ids"):
                sources.append(result)
            return result
        for module in list(sys.modules.values()):
            if (getattr(module, "__name__", "").startswith("simclr_tf2")
                    and getattr(module, name, None) is original):
                setattr(module, name, data_call)
    if hasattr(data_module, "IndexStore"):
        timed(data_module.IndexStore, "flush", "data_s")
    begin = trainer_module.SimCLRTrainer.train_loop_begin
    end = trainer_module.SimCLRTrainer.train_loop_end

    def loop_begin(self):
        marks.setdefault("calls", dict(counts))
        marks.setdefault("data_calls", dict(data_counts))
        return begin(self)

    def loop_end(self):
        marks.setdefault("first_step_at_s", time.time() - start)
        return end(self)
    trainer_module.SimCLRTrainer.train_loop_begin = loop_begin
    trainer_module.SimCLRTrainer.train_loop_end = loop_end
    values = flags.FlagValues()
    define_flags(values)
    values(["train", *argv])
    status = run_command(values, argv)
    total = marks.get("first_step_at_s", float("nan"))
    # The first batch of a new training pipeline over the run's training
    # source (shuffling all N indices, reading and decoding one batch),
    # once the run's own pipelines are gone (they read on in the background
    # until collected, and would share the cores with this one).
    import gc
    gc.collect()
    time.sleep(1.0)
    began = time.time()
    next(iter(data_module.build_dataset(sources[0], "pretrain", 16, 64)))
    first_batch = time.time() - began
    print(json.dumps({
        "status": status, "import_s": round(imported, 2),
        "build_s": round(marks.get("build_s", 0.0), 2),
        "trace_s": round(marks.get("trace_s", 0.0), 2), "first_step_at_s": round(total, 2),
        "startup_s": round(total - marks.get("build_s", 0.0) - marks.get("trace_s", 0.0), 3),
        "data_s": round(marks.get("data_s", 0.0) + first_batch, 3),
        "first_batch_s": round(first_batch, 3),
        "sources_s": round(marks.get("data_s", 0.0), 3),
        "calls": marks.get("calls", {}), "data_calls": marks.get("data_calls", {}),
        "tensorflow": tf.__version__}))


def pipeline_rates(sources, seconds):
    """Images/s and CPU ms per image of the pretraining input (two 224 px
    views, batch 32) from each {name: (dataset, data_dir)}, with the guard
    that skips bad images and without it (`<name>_unguarded`: the same
    pipeline with `robust` off), in alternating rounds; `guard_cpu_ratio`
    is the median over rounds of guarded / unguarded CPU ms per image."""
    import dataclasses
    import statistics
    from simclr_tf2.configs.schema import DataConfig
    from simclr_tf2.data import build_dataset, make_source
    variants = {}
    for name, (dataset, data_dir) in sources.items():
        source = make_source(DataConfig(dataset=dataset, data_dir=data_dir), "train",
                             labelled=None)
        variants[name] = source
        variants[f"{name}_unguarded"] = dataclasses.replace(source, robust=False)
    rates = {variant: [] for variant in variants}
    cpu_ms = {variant: [] for variant in variants}
    for _ in range(3):  # a new pipeline per round: nothing prefetched in another's time
        for variant, source in variants.items():
            iterator = iter(build_dataset(source, "pretrain", 32, 224, shuffle_buffer=1000))
            next(iterator)
            next(iterator)
            count, began, cpu = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - began < seconds / 3:
                next(iterator)
                count += 32
            rates[variant].append(count / (time.perf_counter() - began))
            cpu_ms[variant].append(1000 * (time.process_time() - cpu) / count)
            del iterator
    out = {}
    for variant in variants:
        out[variant] = {"images_per_s": round(statistics.median(rates[variant]), 1),
                        "cpu_ms_per_image": round(statistics.median(cpu_ms[variant]), 3)}
    for name in sources:
        ratios = [g / u for g, u in zip(cpu_ms[name], cpu_ms[f"{name}_unguarded"])]
        out[name]["guard_cpu_ratio"] = round(statistics.median(ratios), 3)
        out[name]["guard_cpu_ratio_per_round"] = [round(r, 3) for r in ratios]
    return out


def run_child(code, argv=None, sources=None, seconds=15.0):
    command = [sys.executable, os.path.abspath(__file__), "--_child", code]
    if sources:
        command += ["--_sources", json.dumps(sources), "--seconds", str(seconds)]
    else:
        command += ["--", *argv]
    done = subprocess.run(command, cwd=code, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(f"child failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_run(runs):
    """The last of `runs` with its times replaced by the medians over all."""
    merged = dict(runs[-1], repeats=len(runs))
    for key in ("data_s", "startup_s", "first_batch_s", "sources_s", "first_step_at_s",
                "build_s", "trace_s"):
        merged[key] = round(float(np.median([r[key] for r in runs])), 3)
    merged["data_s_each"] = [r["data_s"] for r in runs]
    return merged


def fit(sizes, values):
    """Least-squares a + b N: (a seconds, b microseconds per image)."""
    b, a = np.polyfit(np.asarray(sizes, float), np.asarray(values, float), 1)
    return float(a), float(b * 1e6)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000])
    parser.add_argument("--baseline", help="git revision to measure in the same run")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "data_scale"))
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per condition (medians; the baseline runs once)")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="per input pipeline measurement (0: none)")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_sources", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args._child:
        child(args._child, [a for a in rest if a != "--"],
              json.loads(args._sources) if args._sources else None, args.seconds)
        return
    from simclr_tf2.make_shards import write_shards
    os.makedirs(args.workdir, exist_ok=True)
    results = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "command": " ".join(["bench/data_scale.py"] + sys.argv[1:]),
               "current": subprocess.run(["git", "-C", ROOT, "describe", "--always",
                                          "--dirty"], capture_output=True,
                                         text=True).stdout.strip(),
               "sizes": args.sizes, "runs": {}}
    baseline = None
    if args.baseline:
        baseline = os.path.join(args.workdir, "baseline_code")
        shutil.rmtree(baseline, ignore_errors=True)
        subprocess.run(["git", "-C", ROOT, "worktree", "prune"], check=True)
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "--force",
                        baseline, args.baseline], check=True, capture_output=True)
        results["baseline"] = args.baseline
    try:
        for n in args.sizes:
            data = generate(os.path.join(args.workdir, f"folder_{n}"), n)
            shards = os.path.join(args.workdir, f"shards_{n}")
            began = time.time()
            made = [write_shards(data, split, shards, report=lambda m: None)
                    for split in ("train", "val")]
            convert = {"seconds": round(time.time() - began, 1),
                       "written": sum(m["written"] for m in made)}
            bare = os.path.join(args.workdir, f"shards_{n}_without_index")
            os.makedirs(bare, exist_ok=True)
            for name in os.listdir(shards):
                if "-of-" in name and not os.path.exists(os.path.join(bare, name)):
                    os.symlink(os.path.join(shards, name), os.path.join(bare, name))
            conditions = [("folder", ROOT, ["--dataset=folder", f"--data_dir={data}"]),
                          ("shards", ROOT, ["--dataset=tfrecord", f"--data_dir={shards}"]),
                          ("shards_scan", ROOT, ["--dataset=tfrecord", f"--data_dir={bare}"])]
            if baseline:
                conditions.append(("baseline", baseline,
                                   ["--dataset=folder", f"--data_dir={data}"]))
            row = {"convert": convert}
            for name, code, data_flags in conditions:
                model_dir = os.path.join(args.workdir, "runs", f"{name}_{n}")
                argv = COMMON + data_flags + [f"--model_dir={model_dir}"]
                runs = {"first": [], "restart": []}
                for _ in range(1 if name == "baseline" else args.repeats):
                    shutil.rmtree(model_dir, ignore_errors=True)
                    runs["first"].append(run_child(code, argv + ["--train_steps=1"]))
                    runs["restart"].append(run_child(
                        code, argv + ["--train_steps=2", "--accept_changed_settings"]))
                for kind, measured in runs.items():
                    row[f"{name}_{kind}"] = median_run(measured)
                print(json.dumps({n: {k: (row[k]["data_s"], row[k]["startup_s"]) for k in row
                                      if k.startswith(name)}}), file=sys.stderr, flush=True)
            results["runs"][str(n)] = row
        fits = {}
        for key in results["runs"][str(args.sizes[0])]:
            if key == "convert":
                continue
            fits[key] = {}
            for measure in ("data_s", "sources_s", "startup_s"):
                values = [results["runs"][str(n)][key][measure] for n in args.sizes]
                a, b = fit(args.sizes, values)
                fits[key][measure] = {"intercept_s": round(a, 2), "us_per_image": round(b, 2),
                                      "at_1.28M_s": round(a + b * 1e-6 * IMAGENET, 1)}
        results["fits"] = fits
        if args.seconds > 0:
            n = max(args.sizes)
            results["input_pipeline"] = run_child(ROOT, sources={
                "folder": ["folder", os.path.join(args.workdir, f"folder_{n}")],
                "shards": ["tfrecord", os.path.join(args.workdir, f"shards_{n}")]},
                seconds=args.seconds)
    finally:
        if baseline:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", baseline],
                           capture_output=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
