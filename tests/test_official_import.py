"""Import of the authors' released SavedModels (stand-ins built from the
reference layout: exact variable names and shapes, authors' call convention)."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from official_reference import OfficialLikeModel, reference_json, save_official_like
from simclr_tf2 import get_preset
from simclr_tf2.export import (OfficialImportError, import_official_variables,
                               infer_model_config, load_official_savedmodel)
from simclr_tf2.export.official import official_layers
from simclr_tf2.models import SimCLRModel

pytestmark = pytest.mark.slow  # r50 at full width, saved and loaded


@pytest.fixture(scope="module", params=["r50_1x_sk0", "r50_1x_sk1"])
def official(request, tmp_path_factory):
    name = request.param
    stand_in = OfficialLikeModel(sk=name.endswith("sk1"))
    path = str(tmp_path_factory.mktemp(name))
    # Some released models have an empty trainable_variables_list.
    save_official_like(stand_in, path, empty_trainable_list=name.endswith("sk1"))
    return name, stand_in, path


def test_stand_in_has_the_reference_names_shapes_and_outputs(official):
    name, stand_in, path = official
    reference = reference_json(name)
    assert {v.name: v.shape.as_list() for v in stand_in.trainable} == \
        {d["name"]: d["shape"] for d in reference["trainable_variables_list"]}
    assert len(stand_in.variables) == len(reference["checkpoint_keys"])
    loaded = tf.saved_model.load(path)
    out = loaded(tf.zeros([2, 64, 64, 3]), trainable=False)
    assert {k: v.shape.as_list() for k, v in out.items()} == \
        reference["outputs_for_64px_input"]


def test_every_variable_is_copied_and_outputs_match(official):
    name, stand_in, path = official
    model = load_official_savedmodel(path, image_size=64)
    report = model.import_report
    assert report.copied == len(stand_in.variables) == len(model.weights)
    assert not (report.unmatched_official or report.unmatched_model or report.skipped)
    assert model.config.depth == 50 and model.config.width_multiplier == 1
    assert model.config.sk_ratio == (0.0625 if name.endswith("sk1") else 0.0)
    assert model.config.num_classes == 10 and model.config.proj_out_dim == 128
    loaded = tf.saved_model.load(path)
    images = tf.constant(np.random.default_rng(0).uniform(size=(16, 64, 64, 3)), tf.float32)
    theirs, ours = loaded(images, trainable=False), model(images, training=False)
    for key, value in theirs.items():
        np.testing.assert_allclose(ours[key], value, atol=1e-4, err_msg=key)
    # Batch statistics: float32 round-off of the two BN implementations grows
    # layer by layer (measured: 1e-6 of the activations' scale at block_group1,
    # 5e-5 at block_group4, 1e-4 to 1e-3 after the head's batch norms over 16
    # rows, varying with thread order); a wrong layer is off by the scale itself.
    theirs, ours = loaded(images, trainable=True), model(images, training=True)
    for key, value in theirs.items():
        error = float(tf.reduce_max(tf.abs(ours[key] - value)))
        assert error <= 1e-2 * float(tf.reduce_max(tf.abs(value))), (key, error)
    assert float(tf.reduce_max(tf.abs(ours["block_group1"] - theirs["block_group1"]))) <= \
        1e-4 * float(tf.reduce_max(tf.abs(theirs["block_group1"])))


def test_a_fine_tuning_model_takes_what_fits_and_reports_the_rest(official):
    _, _, path = official
    config = infer_model_config(official_layers(tf.saved_model.load(path)))
    config = dataclasses.replace(config, ft_proj_selector=1, num_classes=5)
    model = SimCLRModel(config, mode="finetune")
    model(tf.zeros([1, 64, 64, 3]))
    report = import_official_variables(model, path)
    # Head layers 2 and 3 are not built for fine-tuning from layer 1; the
    # 10-class head does not fit 5 classes.
    assert len(report.unmatched_official) == 5 + 4  # layer 2: kernel + 4 BN; layer 3: 1 + 3
    assert len(report.skipped) == 2 and not report.unmatched_model


def test_a_model_of_another_architecture_is_refused_untouched(official):
    _, _, path = official
    config = dataclasses.replace(get_preset("r101_1x_sk0").model, num_classes=10)
    model = SimCLRModel(config)
    model(tf.zeros([1, 64, 64, 3]))
    before = [v.numpy().copy() for v in model.weights[:5]]
    with pytest.raises(OfficialImportError, match="does not fit this model"):
        import_official_variables(model, path)
    for value, variable in zip(before, model.weights[:5]):
        np.testing.assert_array_equal(value, variable.numpy())


def test_checkpoint_flag_accepts_an_official_savedmodel(tmp_path):
    path = str(tmp_path / "official")
    save_official_like(OfficialLikeModel(), path)
    from simclr_tf2.training.runner import RunConfig, run
    config = get_preset("r50_1x_sk0").override(**{
        "model.num_classes": 10, "model.sync_bn": False, "data.dataset": "digits",
        "data.image_size": 32, "data.use_blur": False, "data.eval_split": "test", "train.train_steps": 1,
        "train.train_batch_size": 8, "train.eval_batch_size": 128,
        "train.precision": "float32", "train.steps_per_loop": 1,
        "train.summary_interval": 1, "train.checkpoint_interval": 1,
        "train.learning_rate": 0.0, "export.export_at_end": False})
    outcome = run(config, RunConfig(mode="train_then_eval", train_mode="finetune",
                                    model_dir=str(tmp_path / "ft"), checkpoint=path),
                  verbose=False)
    loaded = tf.saved_model.load(path)
    kernel = next(v for v in loaded.model.resnet_model.weights_list
                  if v.name == "resnet/conv2d_fixed_padding/conv2d/kernel:0")
    ours = outcome["learner"].model.backbone.stem.conv.conv.kernel
    np.testing.assert_allclose(ours.numpy(), kernel.numpy(), atol=1e-6)  # lr 0: unchanged
    assert outcome["result"]["num_examples"] == 359


def test_an_official_savedmodel_can_be_a_distillation_teacher(official):
    from simclr_tf2.training.teacher import load_teacher
    _, _, path = official
    teacher = load_teacher(path)
    images = tf.constant(np.random.default_rng(1).uniform(size=(3, 64, 64, 3)), tf.float32)
    expected = tf.saved_model.load(path)(images, trainable=False)["logits_sup"]
    np.testing.assert_allclose(teacher(images), expected, atol=1e-5)
