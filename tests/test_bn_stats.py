"""Recomputing batch-norm statistics after training (`bn_recompute`)."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from conftest import mirrored_strategy
from simclr_tf2 import get_preset
from simclr_tf2.data import build_from_config, make_source
from simclr_tf2.training.bn_stats import batch_norm_layers, recompute_bn_statistics
from simclr_tf2.training.precompute import bn_recompute_order
from simclr_tf2.training.runner import RunConfig, run

EPS = 1e-3


def _mlp(synchronized=False, frozen_first=False):
    rng = np.random.default_rng(0)
    inputs = tf_keras.Input([4])
    h = tf_keras.layers.Dense(3, name="d1")(inputs)
    bn1 = tf_keras.layers.BatchNormalization(epsilon=EPS, synchronized=synchronized,
                                             name="bn1")
    h = tf_keras.layers.ReLU()(bn1(h))
    h = tf_keras.layers.Dense(2, name="d2")(h)
    out = tf_keras.layers.BatchNormalization(epsilon=EPS, synchronized=synchronized,
                                             name="bn2")(h)
    model = tf_keras.Model(inputs, out)
    for layer in model.layers:
        for w in layer.weights:
            if "moving" not in w.name:
                w.assign(rng.normal(size=w.shape).astype(np.float32))
    if frozen_first:
        bn1.trainable = False
    return model


def _numpy_statistics(model, batches, frozen_first=False):
    """Per-batch training-mode statistics of both BN layers, pooled: mean of
    the batch means; mean of the batch variances + variance of the batch means."""
    get = {l.name: [w.numpy().astype(np.float64) for w in l.weights] for l in model.layers}
    w1, b1 = get["d1"]
    g1, be1, mm1, mv1 = get["bn1"]
    w2, b2 = get["d2"]
    stats = {"bn1": [[], []], "bn2": [[], []]}
    for x in batches:
        h = x.astype(np.float64) @ w1 + b1
        if frozen_first:
            mean, var = mm1, mv1
        else:
            mean, var = h.mean(0), h.var(0)
        stats["bn1"][0].append(mean)
        stats["bn1"][1].append(var)
        h = np.maximum(g1 * (h - mean) / np.sqrt(var + EPS) + be1, 0) @ w2 + b2
        stats["bn2"][0].append(h.mean(0))
        stats["bn2"][1].append(h.var(0))
    return {k: (np.mean(m, 0), np.mean(v, 0) + np.var(m, 0)) for k, (m, v) in stats.items()}


@pytest.mark.parametrize("frozen_first", [False, True])
def test_statistics_are_the_pooled_batch_statistics_numpy(frozen_first):
    model = _mlp(frozen_first=frozen_first)
    batches = [np.random.default_rng(k).normal(k, 1 + k, size=[16, 4]).astype(np.float32)
               for k in range(3)]
    expected = _numpy_statistics(model, batches, frozen_first)
    weights = [w.numpy() for w in model.trainable_weights]
    report = recompute_bn_statistics(model, [{"image": tf.constant(b)} for b in batches])
    assert report == {"batches": 3, "layers": 2}
    for layer in batch_norm_layers(model):
        mean, var = expected[layer.name]
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=1e-5, atol=1e-5)
        assert layer.momentum == 0.99  # restored
    for before, after in zip(weights, model.trainable_weights):
        np.testing.assert_array_equal(before, after.numpy())


def test_first_layer_gets_the_variance_of_all_images_from_one_class_batches():
    """Batches that are not random samples (one 'class' each, different
    means): the first BN layer's statistics are those of all images together,
    not the mean within-batch variance (which misses the between-class part)."""
    model = _mlp()
    batches = [np.random.default_rng(k).normal(10 * k, 1, size=[16, 4]).astype(np.float32)
               for k in range(4)]
    recompute_bn_statistics(model, [{"image": tf.constant(b)} for b in batches])
    w1, b1 = [w.numpy().astype(np.float64) for w in model.get_layer("d1").weights]
    h = np.concatenate(batches).astype(np.float64) @ w1 + b1
    bn1 = model.get_layer("bn1")
    np.testing.assert_allclose(bn1.moving_mean.numpy(), h.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn1.moving_variance.numpy(), h.var(0), rtol=1e-5)
    within = np.mean([(b.astype(np.float64) @ w1 + b1).var(0) for b in batches], 0)
    assert np.all(h.var(0) > 2 * within)  # the two answers are far apart here


def test_recompute_order_is_a_seeded_shuffle_of_the_run_images():
    config = get_preset("tiny").override(**{"data.seed": 3})
    source = make_source(config.data, "train", labelled=True)
    ids = np.arange(10, 50)
    order = bn_recompute_order(config, source, ids)
    assert sorted(order.tolist()) == ids.tolist() and not np.array_equal(order, ids)
    np.testing.assert_array_equal(order, bn_recompute_order(config, source, ids))
    other = bn_recompute_order(config.override(**{"data.seed": 4}), source, ids)
    assert not np.array_equal(order, other)
    every = bn_recompute_order(config.override(**{"train.bn_recompute_images": "all"}),
                               source, ids)
    assert sorted(every.tolist()) == list(range(len(source)))


def test_two_replicas_with_synchronized_bn_match_one_replica():
    batches = [np.random.default_rng(k).normal(k, 2, size=[8, 4]).astype(np.float32)
               for k in range(2)]
    one = _mlp(synchronized=True)
    recompute_bn_statistics(one, [{"image": tf.constant(b)} for b in batches])
    strategy = mirrored_strategy(2)
    with strategy.scope():
        two = _mlp(synchronized=True)
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices({"image": np.concatenate(batches)}).batch(8))
    assert recompute_bn_statistics(two, dataset, strategy)["batches"] == 2
    for a, b in zip(batch_norm_layers(one), batch_norm_layers(two)):
        np.testing.assert_allclose(a.moving_mean.numpy(), b.moving_mean.numpy(), atol=1e-5)
        np.testing.assert_allclose(a.moving_variance.numpy(), b.moving_variance.numpy(),
                                   rtol=1e-4, atol=1e-5)


def test_no_batches_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one full batch"):
        recompute_bn_statistics(_mlp(), [])


def test_run_recomputes_over_its_own_labelled_images_and_saves_them(tmp_path):
    """After a from-scratch fine-tune with bn_recompute over one batch, the
    model in inference mode equals training mode on exactly that batch (the
    first 8 labelled images in the recompute order, eval view), and the saved
    checkpoint has it."""
    config = get_preset("tiny").override(**{
        "train.train_steps": 6, "train.steps_per_loop": 3, "train.summary_interval": 3,
        "train.train_batch_size": 8, "train.bn_recompute": True,
        "train.bn_recompute_batches": 1, "data.label_fraction": 0.05,
        "model.proj_head_mode": "none", "export.export_at_end": False})
    model_dir = str(tmp_path)
    outcome = run(config, RunConfig(mode="train_then_eval", train_mode="finetune",
                                    model_dir=model_dir, from_scratch=True), verbose=False)
    model = outcome["learner"].model
    ids = [int(i) for i in open(os.path.join(model_dir, "labelled_ids.txt")).read().split()]
    source = make_source(config.data, "train", labelled=True)
    order = bn_recompute_order(config, source, np.array(ids))
    batch = next(iter(build_from_config(config.data, source, "eval", 8, order)))
    assert sorted(batch["index"].numpy().tolist()) == sorted(order[:8].tolist())
    assert set(batch["index"].numpy().tolist()) <= set(ids)
    inference = model(batch["image"], training=False)["logits_sup"].numpy()
    training = model(batch["image"], training=True)["logits_sup"].numpy()
    np.testing.assert_allclose(inference, training, rtol=1e-3, atol=1e-3 * np.abs(training).max())
    # Other images: inference differs from training mode (the check can fail).
    other = next(iter(build_from_config(config.data, source, "eval", 8)))
    assert not np.allclose(model(other["image"], training=False)["logits_sup"].numpy(),
                           model(other["image"], training=True)["logits_sup"].numpy(),
                           rtol=1e-3, atol=1e-3)
    again = run(config, RunConfig(mode="eval", model_dir=model_dir), verbose=False)
    assert again["result"]["top1"] == pytest.approx(outcome["result"]["top1"])


def test_run_recomputes_over_the_whole_training_split_when_asked(tmp_path):
    """bn_recompute_images=all: the statistics come from the first batch of
    the whole training split in the recompute order (unlabeled images
    included), not from the labelled subset the run trained on."""
    config = get_preset("tiny").override(**{
        "train.train_steps": 3, "train.steps_per_loop": 3, "train.summary_interval": 3,
        "train.train_batch_size": 8, "train.bn_recompute": True,
        "train.bn_recompute_batches": 1, "train.bn_recompute_images": "all",
        "data.label_fraction": 0.05, "model.proj_head_mode": "none",
        "export.export_at_end": False})
    model_dir = str(tmp_path)
    outcome = run(config, RunConfig(mode="finetune",
                                    model_dir=model_dir, from_scratch=True), verbose=False)
    model = outcome["learner"].model
    ids = [int(i) for i in open(os.path.join(model_dir, "labelled_ids.txt")).read().split()]
    source = make_source(config.data, "train", labelled=True)
    order = bn_recompute_order(config, source, np.array(ids))
    batch = next(iter(build_from_config(config.data, source, "eval", 8, order)))
    assert not set(batch["index"].numpy().tolist()) <= set(ids)
    inference = model(batch["image"], training=False)["logits_sup"].numpy()
    training = model(batch["image"], training=True)["logits_sup"].numpy()
    np.testing.assert_allclose(inference, training, rtol=1e-3, atol=1e-3 * np.abs(training).max())
    labelled = next(iter(build_from_config(config.data, source, "eval", 8, np.array(ids))))
    assert not np.allclose(model(labelled["image"], training=False)["logits_sup"].numpy(),
                           model(labelled["image"], training=True)["logits_sup"].numpy(),
                           rtol=1e-3, atol=1e-3)


def test_fused_batch_norm_gets_the_statistics_it_normalises_with():
    """Plain BN on 4-D inputs runs TensorFlow's fused kernel, which updates
    the moving variance with the unbiased batch variance (x n/(n-1)). The
    recomputed statistics must be the biased ones the layer normalises with
    in training mode, so inference then equals training mode on that batch."""
    inputs = tf_keras.Input([3, 3, 2])
    bn = tf_keras.layers.BatchNormalization(epsilon=EPS)
    model = tf_keras.Model(inputs, bn(tf_keras.layers.Conv2D(2, 1)(inputs)))
    assert bn.fused  # what the check is about
    images = tf.constant(np.random.default_rng(3).normal(size=(2, 3, 3, 2)), tf.float32)
    recompute_bn_statistics(model, [{"image": images}])
    assert bn.fused  # restored
    np.testing.assert_allclose(model(images, training=False),
                               model(images, training=True), rtol=1e-4, atol=1e-5)
