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
  the learner used on one replica before (to measure that choice);
- pretrain_device_augment: the pretraining step fed views as
  --augment_on=device ships them (8-bit crops and drawn parameters; colour
  distortion and blur done inside the step). On this CPU the "device" is
  the CPU: the ratio to `pretrain` says whether the batched ops cost more or
  less there than nothing (they replace per-image host work, which
  bench/input_pipeline.py measures).
With --xla (default on) the step with host views and with device views is
also compiled with XLA (jit_compile, as on a TPU), reporting each one's
compile time (first call minus a compiled step) and the difference.
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


def shipped_views(size, batch, num_classes):
    """A pretraining batch as --augment_on=device ships it: 8-bit crops of
    random pixels and the parameters drawn for them by the library."""
    from simclr_tf2.data import augment, device_augment
    crops = tf.random.uniform([batch, size, size, 3])
    rows = [device_augment.crops_to_ship([crops[i], crops[i]], augment.split_seed(
        tf.constant([0, i], tf.int64), 2)) for i in range(batch)]
    out = {k: tf.stack([r[k] for r in rows]) for k in rows[0]}
    out["label"] = tf.random.uniform([batch], 0, num_classes, tf.int64)
    return out


def _learner(config, synchronized=False):
    import simclr_tf2.training.learner as learner_module
    from simclr_tf2.training import Learner
    replicas = learner_module._num_replicas
    if synchronized:  # the synchronised layer on one replica, as before
        learner_module._num_replicas = lambda: 2
    try:
        return Learner(config, "pretrain", total_steps=1000, warmup_steps=10)
    finally:
        learner_module._num_replicas = replicas


def _views(config, size, batch, device_views):
    if device_views:
        return shipped_views(size, batch, config.model.num_classes)
    return {"view1": tf.random.uniform([batch, size, size, 3]),
            "view2": tf.random.uniform([batch, size, size, 3]),
            "label": tf.random.uniform([batch], 0, config.model.num_classes, tf.int64)}


def pretrain_step(config, size, batch, synchronized, device_views=False):
    learner = _learner(config, synchronized)
    return _compiled(tf.function(learner.replica_step),
                     (_views(config, size, batch, device_views),))


def xla_compile_seconds(config, size, batch, device_views):
    """Seconds to compile the replica step with XLA: the first call (trace,
    compile, one step) minus the median of two compiled steps."""
    step = tf.function(_learner(config).replica_step, jit_compile=True)
    views = _views(config, size, batch, device_views)
    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), step(views))
    first = time.perf_counter() - start
    again = []
    for _ in range(2):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), step(views))
        again.append(time.perf_counter() - start)
    return first - statistics.median(again)


def run_case(name, steps, precision, matmul_fps, xla=True):
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
            "pretrain_device_augment": pretrain_step(config, size, batch, False, True),
        }, steps)
        compile_times = {}
        if xla:
            for label, device_views in (("host_views", False), ("device_views", True)):
                compile_times[label] = round(
                    xla_compile_seconds(config, size, batch, device_views), 2)
            compile_times["device_minus_host"] = round(
                compile_times["device_views"] - compile_times["host_views"], 2)
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
            "plain_bn_speedup_over_sync": ratio("pretrain_sync_bn", "pretrain"),
            # > 1: the step with the colour and blur of its views costs more.
            "device_augment_step_over_pretrain": ratio("pretrain_device_augment",
                                                       "pretrain"),
            "xla_compile_seconds": compile_times}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--xla", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the XLA compilation of the step (float32 only)")
    args = parser.parse_args(argv)
    native = cpu_has_bf16()
    matmul_before = matmul_flops_per_second()
    results = []
    for precision in args.precisions.split(","):
        for name in args.cases.split(","):
            results.append(run_case(name, args.steps, precision, matmul_before,
                                    xla=args.xla and precision == "float32"))
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
