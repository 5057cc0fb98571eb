"""Run costs that could grow with the data: a restart late in a run against
one at step 1, peak host memory of distillation and of cached linear
evaluation, and the kNN monitor's reports, at two sizes N.

    python bench/run_costs.py [--sizes 10000 50000] [--workdir DIR] [--repeats 2]
                              [--parts restart memory] [--sources folder shards tfds]
                              [--baseline REV]

Prints JSON. For each N it uses the ImageNet-like folder of
bench/data_scale.py (N JPEGs of 500x375 in 100 classes under train/, 1000
under val/), its TFRecord shards (`simclr_tf2.make_shards`) and the same
images prepared as a tfds dataset (`simclr_bench_images`, JPEG bytes as
they are, in tfds' own TFRecord files), and runs each command in a child
process:

- restart, for each source (folder, shards, tfds): pretraining (the tiny
  ResNet at 64 px, batch 16, the kNN monitor every step) runs one step;
  then `at_step_1` resumes it for two steps, and `late` resumes it from a
  checkpoint moved to step S = 10.5 passes over the N images (the run's
  own checkpoint with its step counter set to S: the pipeline, the schedule
  and the monitor all start from there) for two steps. Each child reports
  `first_step_at_s` (process start to the end of the first step),
  `startup_s` (that less the model build and the step's tracing) and the
  seconds of its two kNN reports with the traces of the monitor's forward
  functions (`knn_traces`; 1 each = traced once for the run).
  `late_over_step_1` is the ratio of the medians of `first_step_at_s`.
  With --baseline REV the same restarts run REV's code too, at the first
  size (`baseline_restart_*`; the checkpoint is moved by this code).
- memory: peak resident memory (VmHWM) of a distillation run (20
  steps, the teacher a fine-tuned tiny run, its logits computed inside
  the step: the default) and of linear evaluation with
  --linear_eval_cache_features (20 steps) at 1% of the labels, on the
  folder, next to the same process's peak after the source is built.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from data_scale import COMMON, generate  # noqa: E402

TFDS_NAME = "simclr_bench_images"
BATCH = 16


_TFDS = {"builder": None, "folder": None}


def register_tfds(folder=None):
    """The tfds builder of the benchmark's images, registered once per
    process (reading `folder` when preparing)."""
    _TFDS["folder"] = folder
    if _TFDS["builder"] is None:
        _TFDS["builder"] = _define_tfds_builder()
    return _TFDS["builder"]


def _define_tfds_builder():
    import tensorflow_datasets as tfds

    class SimclrBenchImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=100),
                "file_name": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(os.path.join(_TFDS["folder"], split))
                    for split in ("train", "val")}

        def _generate_examples(self, split_dir):
            for c, name in enumerate(sorted(os.listdir(split_dir))):
                for file_name in sorted(os.listdir(os.path.join(split_dir, name))):
                    path = os.path.join(split_dir, name, file_name)
                    yield f"{name}/{file_name}", {"image": path, "label": c,
                                                  "file_name": f"{name}/{file_name}"}
    return SimclrBenchImages


def prepare_tfds(folder, data_dir):
    if not os.path.exists(os.path.join(data_dir, ".done")):
        register_tfds(folder)(data_dir=data_dir).download_and_prepare()
        open(os.path.join(data_dir, ".done"), "w").close()
    return data_dir


# ------------------------------------------------------------------- child
def peak_memory_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not
    carried over from the parent across fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind, argv, step=None, code=ROOT):
    """In a fresh process: `move` sets the step of the run's checkpoint to
    `step`; `run` runs the command with the simclr_tf2 of `code` (timed by
    data_scale's child) and adds the kNN reports and the peak memory."""
    sys.path.insert(0, code)
    register_tfds()
    if kind == "move":
        move_checkpoint(argv, step)
        return
    from simclr_tf2.monitors import knn_monitor
    from simclr_tf2.data import sources as sources_module
    reports, peaks = [], {}
    evaluate = knn_monitor.KnnMonitor.evaluate

    def timed(self, num_steps):
        began = time.time()
        result = evaluate(self, num_steps)
        embedders = [getattr(self, name, None) for name in ("bank", "queries")]
        reports.append({"seconds": round(time.time() - began, 3),  # traces: since 34
                        "traces": [e.traces() for e in embedders if hasattr(e, "traces")]})
        return result
    knn_monitor.KnnMonitor.evaluate = timed
    make = sources_module.make_source

    def measured(*args, **kwargs):
        source = make(*args, **kwargs)
        peaks.setdefault("after_first_source_mb", peak_memory_mb())
        return source
    for module in list(sys.modules.values()):
        if getattr(module, "make_source", None) is make:
            module.make_source = measured
    import data_scale
    data_scale.child(code, argv)
    print(json.dumps({"knn_reports": reports,
                      "peak_rss_mb": round(peak_memory_mb(), 1),
                      **{k: round(v, 1) for k, v in peaks.items()}}))


def move_checkpoint(argv, step):
    """The run's latest checkpoint saved again with its step counter at `step`."""
    import tensorflow as tf
    from absl import flags
    from simclr_tf2.flag_definitions import configs_from_flags, define_flags
    from simclr_tf2.training.learner import Learner
    values = flags.FlagValues()
    define_flags(values)
    values(["train", *argv])
    config, run_config = configs_from_flags(values)
    learner = Learner(config, "pretrain", total_steps=step + 10)
    checkpoint = tf.train.Checkpoint(**learner.checkpoint_items())
    manager = tf.train.CheckpointManager(checkpoint, run_config.model_dir, max_to_keep=5)
    checkpoint.restore(manager.latest_checkpoint).expect_partial()
    learner.step.assign(step)
    manager.save(checkpoint_number=step)


def run_child(kind, argv, step=None, code=ROOT):
    command = [sys.executable, os.path.abspath(__file__), "--_child", kind,
               "--_code", code]
    if step is not None:
        command += ["--_step", str(step)]
    done = subprocess.run(command + ["--", *argv], cwd=code, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=7200)
    if done.returncode:
        raise RuntimeError(f"child failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    if kind == "move":
        return None
    lines = done.stdout.strip().splitlines()
    timing, extra = json.loads(lines[-2]), json.loads(lines[-1])
    if timing["status"]:
        raise RuntimeError(f"command failed: {' '.join(argv)}\n{done.stderr[-3000:]}")
    keep = ("first_step_at_s", "startup_s", "data_s", "sources_s", "build_s", "trace_s",
            "calls")
    return {**{k: timing[k] for k in keep}, **extra}


def baseline_tree(workdir, revision):
    """A worktree of `revision` (made once per benchmark run)."""
    tree = os.path.join(workdir, "baseline_code")
    if not os.path.isdir(tree):
        subprocess.run(["git", "-C", ROOT, "worktree", "prune"], check=True)
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "--force", tree,
                        revision], check=True, capture_output=True)
    return tree


def median(runs, key):
    return round(float(np.median([r[key] for r in runs])), 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000])
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "data_scale"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--parts", nargs="+", default=["restart", "memory"])
    parser.add_argument("--sources", nargs="+", default=["folder", "shards", "tfds"])
    parser.add_argument("--baseline", help="git revision whose restarts to measure "
                        "too (at the first size)")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_step", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_code", default=ROOT, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args._child:
        child(args._child, [a for a in rest if a != "--"], args._step, args._code)
        return
    from simclr_tf2.make_shards import write_shards
    results = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "command": " ".join(["bench/run_costs.py"] + sys.argv[1:]),
               "current": subprocess.run(["git", "-C", ROOT, "describe", "--always",
                                          "--dirty"], capture_output=True,
                                         text=True).stdout.strip(),
               "sizes": args.sizes, "runs": {}}
    for n in args.sizes:
        folder = generate(os.path.join(args.workdir, f"folder_{n}"), n)
        shards = os.path.join(args.workdir, f"shards_{n}")
        for split in ("train", "val"):
            write_shards(folder, split, shards, report=lambda m: None)
        tfds_dir = prepare_tfds(folder, os.path.join(args.workdir, f"tfds_{n}"))
        row = results["runs"][str(n)] = {}
        sources = {"folder": ["--dataset=folder", f"--data_dir={folder}"],
                   "shards": ["--dataset=tfrecord", f"--data_dir={shards}"],
                   "tfds": [f"--dataset={TFDS_NAME}", f"--data_dir={tfds_dir}"]}
        late = int(np.ceil(10.5 * n / BATCH))
        variants = [("", ROOT)]
        if args.baseline and n == args.sizes[0]:
            variants.append(("baseline_", baseline_tree(args.workdir, args.baseline)))
            results["baseline"] = args.baseline
        for prefix, code in variants if "restart" in args.parts else []:
            for name, data_flags in sources.items():
                if name not in args.sources:
                    continue
                model_dir = os.path.join(args.workdir, "runs", f"{prefix}restart_{name}_{n}")
                argv = COMMON + data_flags + [f"--model_dir={model_dir}", "--knn_interval=1",
                                              "--knn_bank_size=1000", "--knn_eval_size=500",
                                              "--accept_changed_settings"]
                measured = {"at_step_1": [], "late": []}
                for _ in range(args.repeats):
                    shutil.rmtree(model_dir, ignore_errors=True)
                    run_child("run", argv + ["--train_steps=1"], code=code)
                    measured["at_step_1"].append(run_child("run", argv + ["--train_steps=3"],
                                                           code=code))
                    run_child("move", argv + ["--train_steps=3"], step=late)
                    measured["late"].append(run_child(
                        "run", argv + [f"--train_steps={late + 2}"], code=code))
                entry = {"late_step": late, "passes": round(late * BATCH / n, 2)}
                for kind, runs in measured.items():
                    entry[kind] = {k: median(runs, k) for k in ("first_step_at_s", "startup_s",
                                                               "data_s", "peak_rss_mb")}
                    entry[kind]["first_step_at_s_each"] = [r["first_step_at_s"] for r in runs]
                    entry[kind]["knn_reports"] = runs[-1]["knn_reports"]
                entry["late_over_step_1"] = round(entry["late"]["first_step_at_s"]
                                                  / entry["at_step_1"]["first_step_at_s"], 3)
                row[f"{prefix}restart_{name}"] = entry
                print(json.dumps({n: {prefix + name: entry["late_over_step_1"]}}),
                      file=sys.stderr, flush=True)
        if "memory" in args.parts:
            base = COMMON + sources["folder"] + ["--knn_interval=0"]
            teacher = os.path.join(args.workdir, "runs", f"teacher_{n}")
            if not os.path.exists(os.path.join(teacher, "checkpoint")):
                shutil.rmtree(teacher, ignore_errors=True)
                run_child("run", base + ["--mode=train", "--train_mode=finetune",
                                         "--from_scratch", "--train_steps=1",
                                         f"--model_dir={teacher}"])
            memory = {}
            for name, extra in (
                    ("distill", ["--mode=distill", f"--teacher={teacher}"]),
                    ("linear_eval_cached", ["--mode=train", "--train_mode=linear_eval",
                                            "--from_scratch", "--label_fraction=0.01",
                                            "--linear_eval_cache_features",
                                            "--crop_area_min=1.0", "--nouse_flip"])):
                model_dir = os.path.join(args.workdir, "runs", f"{name}_{n}")
                shutil.rmtree(model_dir, ignore_errors=True)
                out = run_child("run", base + extra + ["--train_steps=20",
                                                       f"--model_dir={model_dir}"])
                memory[name] = {k: out[k] for k in ("peak_rss_mb", "after_first_source_mb")}
            row["memory"] = memory
        with open(os.path.join(args.workdir, "run_costs_partial.json"), "w") as f:
            json.dump(results, f, indent=2)  # what is measured so far
    sizes = [str(n) for n in args.sizes]
    if "memory" in args.parts and len(sizes) == 2:
        results["memory_growth_mb"] = {
            name: round(results["runs"][sizes[1]]["memory"][name]["peak_rss_mb"]
                        - results["runs"][sizes[0]]["memory"][name]["peak_rss_mb"], 1)
            for name in results["runs"][sizes[0]]["memory"]}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
