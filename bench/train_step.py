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

from backbone import (forward_flops_per_image, matmul_flops_per_second,  # noqa: E402
                      train_step_seconds)
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


def _time(step, args, steps):
    step(*args)  # trace
    step(*args)  # warm up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = step(*args)
        tf.nest.map_structure(lambda t: t.numpy(), out)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pretrain_step_seconds(config, size, batch, steps, synchronized):
    import simclr_tf2.training.learner as learner_module
    from simclr_tf2.training import Learner
    tf_keras.backend.clear_session()
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
    return _time(tf.function(learner.replica_step), (views,), steps)


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
        backbone_s, _ = train_step_seconds(backbone, size, 2 * batch, steps)
        plain_s = pretrain_step_seconds(config, size, batch, steps, synchronized=False)
        sync_s = pretrain_step_seconds(config, size, batch, steps, synchronized=True)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    views = 2 * batch

    def rate(seconds):
        return {"step_seconds": round(seconds, 4),
                "images_per_second": round(views / seconds, 2),
                "fraction_of_matmul": round(3 * flops * views / seconds / matmul_fps, 3)}

    return {"case": name, "precision": precision, "image_size": size, "batch": batch,
            "views_per_step": views, "forward_gflops_per_image": round(flops / 1e9, 3),
            "backbone": rate(backbone_s), "pretrain": rate(plain_s),
            "pretrain_sync_bn": rate(sync_s),
            "pretrain_over_backbone": round(backbone_s / plain_s, 3),
            "plain_bn_speedup_over_sync": round(sync_s / plain_s, 3)}


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
