"""Linear eval on cached frozen features (--linear_eval_cache_features): the
same batches, the same head, far less compute."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2 import get_preset
from simclr_tf2.data import build_dataset, feature_dataset, make_source
from simclr_tf2.training.runner import RunConfig, run
from simclr_tf2.training.validation import validate


def _config(**overrides):
    values = {"train.train_steps": 12, "train.steps_per_loop": 4,
              "train.summary_interval": 4, "train.checkpoint_interval": 100,
              "train.train_batch_size": 32, "train.optimizer": "momentum",
              "train.learning_rate": 0.5, "train.weight_decay": 1e-4,
              "train.zero_init_logits_layer": True, "train.warmup_epochs": 0.0,
              "data.crop_area_min": 1.0, "data.use_flip": False,
              "data.label_fraction": 0.5, "export.export_at_end": False}
    values.update(overrides)
    return get_preset("tiny").override(**values)


def test_feature_batches_follow_the_image_batches_order():
    config = _config()
    source = make_source(config.data, config.data.train_split, labelled=True)
    indices = np.arange(0, len(source), 3)[::-1]  # rows follow indices, any order
    features = indices.astype(np.float32)[:, None] * [1.0, -1.0]
    for start_step in (0, 5):
        images = build_dataset(source, "finetune", 16, 16, indices, seed=7,
                               start_step=start_step)
        cached = feature_dataset(features, source.labels, indices, 16, seed=7,
                                 start_step=start_step)
        images, cached = list(images.take(40)), list(cached.take(40))  # > 2 epochs
        assert len(images) == len(cached) == 40
        for a, b in zip(images, cached):
            np.testing.assert_array_equal(a["index"], b["index"])
            np.testing.assert_array_equal(a["label"], b["label"])
            np.testing.assert_array_equal(b["features"][:, 0], b["index"])
            np.testing.assert_array_equal(b["features"][:, 1], -b["index"].numpy())


def test_feature_batches_shard_disjointly_across_two_pipelines():
    features = np.arange(40, dtype=np.float32)[:, None]
    labels = np.arange(40) % 4
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=2)
        batches = feature_dataset(features, labels, np.arange(40), 8, input_context=context)
        first_epoch = np.concatenate([b["index"].numpy() for b in batches.take(5)])
        assert len(first_epoch) == len(set(first_epoch)) == 20
        seen.append(set(first_epoch))
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(40))


def test_cached_linear_eval_trains_the_same_head_as_the_image_pipeline(tmp_path):
    """Same frozen network (the from-scratch run's), same batches: the heads
    agree to float tolerance and so do the evaluations."""
    plain_dir, cached_dir = str(tmp_path / "plain"), str(tmp_path / "cached")
    plain = run(_config(), RunConfig(mode="train_then_eval", train_mode="linear_eval",
                                     model_dir=plain_dir, from_scratch=True),
                verbose=False)
    cached = run(_config(**{"train.linear_eval_cache_features": True}),
                 RunConfig(mode="train_then_eval", train_mode="linear_eval",
                           model_dir=cached_dir, checkpoint=plain_dir), verbose=False)
    a, b = plain["learner"], cached["learner"]
    assert int(b.step.numpy()) == 12
    kernel_a, kernel_b = (l.model.supervised_head.trainable_variables[0].numpy()
                          for l in (a, b))
    assert np.abs(kernel_a).max() > 1e-3  # it trained (zero init)
    np.testing.assert_allclose(kernel_b, kernel_a, rtol=1e-4, atol=1e-5)
    for va, vb in zip(a.model.backbone.weights, b.model.backbone.weights):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())  # frozen
    assert cached["result"]["top1"] == pytest.approx(plain["result"]["top1"], abs=0.003)
    recorded = json.load(open(os.path.join(cached_dir, "config.json")))
    assert recorded["experiment"]["train"]["linear_eval_cache_features"] is True


@pytest.mark.parametrize("overrides,mode,message", [
    ({"data.crop_area_min": 0.5}, "linear_eval", "--crop_area_min=1.0 and --nouse_flip"),
    ({"data.use_flip": True}, "linear_eval", "use_flip=True"),
    ({}, "finetune", "applies to linear_eval only"),
])
def test_cached_features_need_a_deterministic_linear_eval(overrides, mode, message,
                                                          tmp_path):
    overrides = dict(overrides, **{"train.linear_eval_cache_features": True})
    with pytest.raises(ValueError, match=message):
        validate(_config(**overrides), RunConfig(mode=mode, model_dir=str(tmp_path),
                                                 from_scratch=True))
    assert os.listdir(tmp_path) == []


def test_frozen_features_are_the_networks_finetune_input_on_each_training_view():
    """Fewer labelled images than one eval batch; one row per labelled
    image, in the subset's order (not one per source image)."""
    from simclr_tf2.data import augment
    from simclr_tf2.training.learner import Learner
    from simclr_tf2.training.precompute import frozen_features
    config = _config(**{"train.eval_batch_size": 64})
    source = make_source(config.data, config.data.train_split, labelled=True)
    indices = np.array([3, 50, 7, 400, 11])
    learner = Learner(config, "linear_eval", total_steps=1)
    table, kept = frozen_features(learner, config, source, indices, verbose=False)
    assert table.shape == (len(indices), 128)
    np.testing.assert_array_equal(kept, indices)  # every image decoded
    images = tf.stack([augment.finetune_view(source.load(i), tf.constant([9, 9], tf.int64),
                                             config.data.image_size, 1.0, flip=False)
                       for i in indices])
    expected = learner.model(images, training=False)["finetune_input"].numpy()
    np.testing.assert_allclose(table, expected, rtol=1e-5, atol=1e-6)
