"""The first training step of a new run: seconds and CPU seconds to build the
learner, to trace and run its first step, and how many times the step is
traced (what every start and every restart of a run pays before training).

    python bench/first_step.py [--presets tiny r50_1x_sk0] [--rounds 2] [--baseline REV]

Prints JSON. For each preset a pretraining Learner (the preset's memory and
heads in float32, batch 8 on one replica, host-augmented views of the
preset's image size) is built in a fresh process, and its distributed step is called as a
tf.function on a batch of random views: `first_step_s` / `first_step_cpu_s`
for that first call (tracing and one step), `step_s` for the next call,
`traces` the Python calls of the replica step (one per trace). With
--baseline REV the same runs with REV's code (a temporary git worktree),
alternating with this checkout's in each round; the `*_vs_baseline` values
are medians of per-round ratios.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from revisions import preset_benchmark  # noqa: E402

BATCH = 8
KEYS = ("build_s", "first_step_s", "first_step_cpu_s", "step_s", "traces")


def measure(preset: str) -> dict:
    """One learner's build and first two steps, with the simclr_tf2 on sys.path."""
    import simclr_tf2  # noqa: F401  (before TensorFlow)
    import tensorflow as tf
    from simclr_tf2.configs import get_preset
    from simclr_tf2.training import Learner
    # float32: the presets for TPUs train in bfloat16, which CPUs without
    # native bfloat16 (AVX2-only ones) emulate at a fraction of the speed.
    config = get_preset(preset).override(**{"train.train_batch_size": BATCH,
                                            "train.precision": "float32"})
    size = config.data.image_size
    start = time.perf_counter()
    learner = Learner(config, "pretrain", total_steps=10)
    build = time.perf_counter() - start
    traces = []
    replica_step = learner.replica_step

    def counted(batch):
        traces.append(1)
        return replica_step(batch)
    learner.replica_step = counted
    strategy = tf.distribute.get_strategy()
    step = tf.function(lambda batch: learner.distributed_step(strategy, batch))
    views = tf.random.stateless_uniform([2, BATCH, size, size, 3], seed=[1, 2])
    batch = {"view1": views[0], "view2": views[1],
             "label": tf.zeros([BATCH], tf.int32)}
    start, cpu = time.perf_counter(), time.process_time()
    float(step(batch)["loss"])
    first, first_cpu = time.perf_counter() - start, time.process_time() - cpu
    start = time.perf_counter()
    float(step(batch)["loss"])
    return {"preset": preset, "image_size": size, "batch": BATCH,
            "build_s": round(build, 2), "first_step_s": round(first, 2),
            "first_step_cpu_s": round(first_cpu, 2),
            "step_s": round(time.perf_counter() - start, 3), "traces": len(traces)}


if __name__ == "__main__":
    preset_benchmark(__file__, __doc__.split("\n")[0], measure, KEYS,
                     ("first_step_s", "first_step_cpu_s"),
                     lambda runs: {"image_size": runs["library"][0]["image_size"],
                                   "batch": BATCH, "each": runs})
