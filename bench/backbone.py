"""Backbone training-step throughput against the machine's matmul throughput.

    python bench/backbone.py [--steps 6] [--bf16_cases cifar_r18_32px_b128]

Prints JSON. For each case: train-step (forward + backward + SGD update)
images/s, forward FLOPs per image counted by the TF profiler on the traced
graph, training FLOPs per image taken as 3x forward (the usual forward +
2x backward estimate), and the achieved fraction of float32 matmul FLOP/s
measured in the same run (so the ratio is robust to a shared, noisy machine).
"""
import argparse
import json
import os
import platform
import statistics
import time


from simclr_tf2 import build_resnet  # noqa: E402  (sets TF_ENABLE_ONEDNN_OPTS)
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

CASES = [
    # name, build kwargs, image size, batch size
    ("r50_1x_sk0_224px_b16", dict(depth=50, width_multiplier=1), 224, 16),
    ("cifar_r18_32px_b128", dict(depth=18, width_multiplier=1, cifar_stem=True), 32, 128),
]


def matmul_flops_per_second(size=2048, repeats=10):
    """Best-of-3 float32 matmul FLOP/s: the achievable ceiling on this machine."""
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])

    @tf.function
    def chain(x):
        for _ in range(repeats):
            x = tf.matmul(x, b) * 1e-3
        return x

    chain(a).numpy()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        chain(a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 * repeats / best


def forward_flops_per_image(model, size):
    """Forward FLOPs of one image, counted by the TF profiler."""
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, size, size, 3], tf.float32))
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=concrete.graph, options=options)
    return float(profile.total_float_ops)


def train_step_seconds(model, size, batch, steps):
    images = tf.random.uniform([batch, size, size, 3])
    head = tf_keras.layers.Dense(10)
    optimizer = tf_keras.optimizers.SGD(0.01, momentum=0.9)
    labels = tf.random.uniform([batch], 0, 10, tf.int32)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            features = model(x, training=True)["final_avg_pool"]
            logits = tf.cast(head(features), tf.float32)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        variables = model.trainable_variables + head.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    step(images, labels).numpy()  # trace + warm up
    step(images, labels).numpy()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(images, labels).numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def run_case(name, kwargs, size, batch, steps, precision, matmul_fps):
    tf_keras.backend.clear_session()
    tf_keras.mixed_precision.set_global_policy(precision)
    model = build_resnet(**kwargs)
    flops = forward_flops_per_image(model, size)
    median, best = train_step_seconds(model, size, batch, steps)
    tf_keras.mixed_precision.set_global_policy("float32")
    images_per_second = batch / median
    achieved = 3.0 * flops * images_per_second
    return {
        "case": name, "precision": precision, "image_size": size, "batch": batch,
        "train_images_per_second": round(images_per_second, 2),
        "best_step_images_per_second": round(batch / best, 2),
        "median_step_seconds": round(median, 3),
        "forward_gflops_per_image": round(flops / 1e9, 3),
        "train_gflops_per_image": round(3 * flops / 1e9, 3),
        "achieved_gflops_per_second": round(achieved / 1e9, 1),
        "fraction_of_matmul": round(achieved / matmul_fps, 3),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per case")
    parser.add_argument("--bf16_cases", default="cifar_r18_32px_b128",
                        help="comma-separated cases also run in mixed_bfloat16 "
                             "('' for none; 'all'). On CPUs without native bfloat16 "
                             "(AVX2 only) TensorFlow emulates it and the 224 px case "
                             "takes tens of minutes.")
    args = parser.parse_args()
    matmul_before = matmul_flops_per_second()
    results = []
    bf16 = set(args.bf16_cases.split(",")) if args.bf16_cases else set()
    for precision in ["float32", "mixed_bfloat16"]:
        for name, kwargs, size, batch in CASES:
            if precision == "float32" or name in bf16 or "all" in bf16:
                results.append(run_case(name, kwargs, size, batch, args.steps, precision,
                                        matmul_before))
    matmul_after = matmul_flops_per_second()
    report = {
        "benchmark": "backbone",
        "machine": {"processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "tensorflow": tf.__version__,
                    "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS")},
        "matmul_gflops_per_second": {"before": round(matmul_before / 1e9, 1),
                                     "after": round(matmul_after / 1e9, 1)},
        "note": "fraction_of_matmul uses the matmul rate measured before the cases",
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
