"""The whole pretraining step against the backbone-only step, in one run.

    python bench/train_step.py [--steps 5] [--cases r50_1x_sk0_224px_b16,...]
                               [--precisions float32,mixed_bfloat16]

Prints JSON. Per case and precision, on one replica:
- backbone: forward + backward + SGD of the ResNet alone on 2 x batch
  images (what bench/backbone.py times), the ceiling of the full step;
- pretrain: the library's pretraining step (`Learner.replica_step`: two
  views of `batch` images through backbone, 3-layer projection head and the
  online probe, NT-Xent, LARS, probe SGD), with batch norm as the learner
  builds it on one replica (plain, fused);
- pretrain_sync_bn: the same step with the synchronised batch-norm layer
  the learner used on one replica before (to measure that choice).
The three are timed in rounds, one step of each per round (after two
warm-up steps each), so drift on a shared machine hits them alike; step
times are medians, ratios the median of the per-round ratios.
Images/s count views (2 x batch per step). fraction_of_matmul is training
FLOP/s (3 x forward FLOPs of the backbone per image, heads not counted)
over the float32 matmul rate measured in the same run. mixed_bfloat16 is
marked `native` when the CPU reports avx512_bf16 or amx_bf16; elsewhere
TensorFlow emulates it and it is slow.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backbone import forward_flops_per_image, matmul_flops_per_second  # noqa: E402
from simclr_tf2 import build_resnet, get_preset  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

# name, preset, overrides, image size, batch (per step: 2 x batch views)
CASES = {
    "r50_1x_sk0_224px_b16": ("r50_1x_sk0", {}, 224, 16),
    "cifar_r18_32px_b128": ("cifar_r18", {}, 32, 128),
}


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _compiled(step, args):
    """`step` bound to `args`, traced and warmed up; each call waits for its
    outputs."""
    def run():
        tf.nest.map_structure(lambda t: t.numpy(), step(*args))
    run()  # trace
    run()  # warm up
    return run


def _interleaved(runs, steps):
    """Each run's step times, taken in rounds (one step of each run per
    round), so that a slow spell of a shared machine hits every run alike."""
    times = {name: [] for name in runs}
    for _ in range(steps):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def backbone_step(backbone, size, batch):
    """bench/backbone.py's step (forward, backward, SGD of the ResNet alone)."""
    images = tf.random.uniform([batch, size, size, 3])
    labels = tf.random.uniform([batch], 0, 10, tf.int32)
    head = tf_keras.layers.Dense(10)
    optimizer = tf_keras.optimizers.SGD(0.01, momentum=0.9)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            features = backbone(x, training=True)["final_avg_pool"]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                y, tf.cast(head(features), tf.float32)))
        variables = backbone.trainable_variables + head.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return _compiled(step, (images, labels))


def pretrain_step(config, size, batch, synchronized):
    import simclr_tf2.training.learner as learner_module
    from simclr_tf2.training import Learner
    replicas = learner_module._num_replicas
    if synchronized:  # the synchronised layer on one replica, as before
        learner_module._num_replicas = lambda: 2
    try:
        learner = Learner(config, "pretrain", total_steps=1000, warmup_steps=10)
    finally:
        learner_module._num_replicas = replicas
    views = {"view1": tf.random.uniform([batch, size, size, 3]),
             "view2": tf.random.uniform([batch, size, size, 3]),
             "label": tf.random.uniform([batch], 0, config.model.num_classes, tf.int64)}
    return _compiled(tf.function(learner.replica_step), (views,))


def run_case(name, steps, precision, matmul_fps):
    preset, overrides, size, batch = CASES[name]
    config = get_preset(preset).override(**{
        "train.train_batch_size": batch, "train.precision": precision,
        "data.image_size": size, **overrides})
    tf_keras.mixed_precision.set_global_policy(precision)
    try:
        tf_keras.backend.clear_session()
        m = config.model
        backbone = build_resnet(m.depth, m.width_multiplier, m.sk_ratio, m.se_ratio,
                                m.cifar_stem)
        flops = forward_flops_per_image(backbone, size)
        times = _interleaved({
            "backbone": backbone_step(backbone, size, 2 * batch),
            "pretrain": pretrain_step(config, size, batch, synchronized=False),
            "pretrain_sync_bn": pretrain_step(config, size, batch, synchronized=True),
        }, steps)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    views = 2 * batch

    def rate(seconds):
        return {"step_seconds": round(seconds, 4),
                "images_per_second": round(views / seconds, 2),
                "fraction_of_matmul": round(3 * flops * views / seconds / matmul_fps, 3)}

    def ratio(numerator, denominator):  # median of the per-round ratios
        return round(statistics.median(
            a / b for a, b in zip(times[numerator], times[denominator])), 3)

    median = {k: statistics.median(v) for k, v in times.items()}
    return {"case": name, "precision": precision, "image_size": size, "batch": batch,
            "views_per_step": views, "forward_gflops_per_image": round(flops / 1e9, 3),
            **{k: rate(v) for k, v in median.items()},
            "pretrain_over_backbone": ratio("backbone", "pretrain"),
            "plain_bn_speedup_over_sync": ratio("pretrain_sync_bn", "pretrain")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    args = parser.parse_args(argv)
    native = cpu_has_bf16()
    matmul_before = matmul_flops_per_second()
    results = []
    for precision in args.precisions.split(","):
        for name in args.cases.split(","):
            results.append(run_case(name, args.steps, precision, matmul_before))
    matmul_after = matmul_flops_per_second()
    by_key = {(r["case"], r["precision"]): r for r in results}
    for name in args.cases.split(","):
        f32, bf16 = by_key.get((name, "float32")), by_key.get((name, "mixed_bfloat16"))
        if f32 and bf16:
            bf16["pretrain_speedup_over_float32"] = round(
                f32["pretrain"]["step_seconds"] / bf16["pretrain"]["step_seconds"], 3)
    report = {
        "benchmark": "train_step",
        "machine": {"processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "tensorflow": tf.__version__,
                    "bf16": "native" if native else "emulated",
                    "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS")},
        "matmul_gflops_per_second": {"before": round(matmul_before / 1e9, 1),
                                     "after": round(matmul_after / 1e9, 1)},
        "results": results,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
