"""The README's first command: a quick run on the built-in digits data.

Foundation stage: contrastive pretraining, fine-tuning and export arrive with
the next issues. Until then this builds the preset's backbone, shows its named
endpoints, measures its forward speed, and scores a linear probe (logistic
regression) on features of the randomly initialised backbone: the floor that
pretraining must beat.
"""
import json
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "tiny", "Backbone preset (see simclr_tf2.preset_names()).")
flags.DEFINE_integer("image_size", 32, "Image side in pixels.")
flags.DEFINE_integer("batch_size", 128, "Batch size for feature extraction.")


def run_demo(preset: str, image_size: int, batch_size: int) -> dict:
    import numpy as np
    import tensorflow as tf
    from sklearn.linear_model import LogisticRegression

    from simclr_tf2 import build_resnet_from_config, get_preset
    from simclr_tf2.data import load_builtin

    config = get_preset(preset)
    train = load_builtin("digits", "train", image_size)
    test = load_builtin("digits", "test", image_size)
    model = build_resnet_from_config(config.model)
    print(f"backbone {preset}: depth {config.model.depth}, width "
          f"{config.model.width_multiplier}x, {model.count_params():,} parameters")
    shapes = model(tf.zeros([1, image_size, image_size, 3]), training=False)
    for name, tensor in shapes.items():
        print(f"  endpoint {name:17s} {tuple(tensor.shape)}")

    features = tf.function(lambda x: model(x, training=False)["final_avg_pool"])

    def extract(images):
        return np.concatenate([features(images[i:i + batch_size]).numpy()
                               for i in range(0, len(images), batch_size)])

    extract(train.images[:batch_size])  # trace once before timing
    start = time.perf_counter()
    train_features = extract(train.images)
    images_per_second = len(train.images) / (time.perf_counter() - start)
    test_features = extract(test.images)
    probe = LogisticRegression(max_iter=2000)
    probe.fit(train_features, train.labels)
    accuracy = float(probe.score(test_features, test.labels))
    result = {
        "preset": preset,
        "parameters": int(model.count_params()),
        "forward_images_per_second": round(images_per_second, 1),
        "random_init_linear_probe_test_accuracy": round(accuracy, 4),
        "train_images": len(train), "test_images": len(test),
    }
    print(json.dumps(result, indent=2))
    print("Foundation smoke only: SimCLRv2 pretraining, fine-tuning and export "
          "land with the next issues.")
    return result


def main(argv):
    del argv
    run_demo(FLAGS.preset, FLAGS.image_size, FLAGS.batch_size)


if __name__ == "__main__":
    app.run(main)
