"""The run directory: restoring a run's model, initialising from a checkpoint
through TensorFlow's own matching, refusing changed settings, the model's
Keras config, and an export that fails at the end of training."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from simclr_tf2.configs import ExperimentConfig, get_preset
from simclr_tf2.errors import RunError
from simclr_tf2.models import SimCLRModel
from simclr_tf2.rundir import CONFIG_FILE, read_experiment, read_record, restore_model
from simclr_tf2.training.initialisation import init_from_checkpoint
from simclr_tf2.training.run_config import RunConfig


class Named(tf_keras.Model):
    """Layers tracked under attribute names holding a dot and a slash."""

    def __init__(self, extra=False):
        super().__init__()
        setattr(self, "block.1/conv", tf_keras.layers.Dense(3))
        setattr(self, "head.out", tf_keras.layers.Dense(2))
        self.extra = tf_keras.layers.Dense(4) if extra else None

    def call(self, x):
        y = getattr(self, "head.out")(getattr(self, "block.1/conv")(x))
        return self.extra(y) if self.extra is not None else y


def test_dotted_and_slashed_names_restore_fully(tmp_path):
    source = Named()
    source(tf.zeros([1, 5]))
    saved = tf.train.Checkpoint(model=source).write(str(tmp_path / "ckpt"))
    # TensorFlow's own escaping of these names.
    assert any("block..1.Sconv" in key for key, _ in tf.train.list_variables(saved))
    target = Named(extra=True)  # one layer the checkpoint lacks
    target(tf.zeros([1, 5]))
    report = init_from_checkpoint(target, saved)
    assert len(report["restored"]) == 4 and report["unused"] == []
    assert sorted(report["missing"]) == sorted(v.name for v in target.extra.weights)
    for theirs, ours in zip(source.weights, target.weights[:4]):
        np.testing.assert_array_equal(theirs.numpy(), ours.numpy())


def test_checkpoint_layers_the_model_lacks_are_reported_unused(tmp_path):
    source = Named(extra=True)
    source(tf.zeros([1, 5]))
    saved = tf.train.Checkpoint(model=source).write(str(tmp_path / "ckpt"))
    target = Named()
    target(tf.zeros([1, 5]))
    report = init_from_checkpoint(target, saved)
    assert len(report["unused"]) == 2 and report["missing"] == []
    assert all(key.startswith("model/extra/") for key in report["unused"])
    wrong = tf_keras.Sequential([tf_keras.layers.Dense(3)])
    wrong(tf.zeros([1, 7]))
    with pytest.raises(ValueError, match="none of this model's variables"):
        init_from_checkpoint(wrong, saved)


def test_simclr_model_config_round_trips():
    config = get_preset("tiny").model
    model = SimCLRModel(config, "finetune", zero_init_logits_layer=True)
    again = SimCLRModel.from_config(model.get_config())
    assert again.config == config and again.mode == "finetune"
    assert again.zero_init_logits_layer and again.get_config() == model.get_config()
    json.dumps(model.get_config())  # plain JSON, as Keras stores it


def test_configs_written_before_the_mode_moved_still_load():
    values = get_preset("tiny").to_dict()
    assert "mode" not in values["train"]
    values["train"]["mode"] = "pretrain"
    assert ExperimentConfig.from_dict(values) == get_preset("tiny")


@pytest.mark.slow
def test_restore_model_rebuilds_a_run_as_it_was_trained(shared_runs):
    from conftest import SHARED_FINETUNE_STEPS
    restored = restore_model(shared_runs["finetune"])
    assert restored.mode == "finetune" and restored.step == SHARED_FINETUNE_STEPS
    assert restored.model.mode == "finetune" and restored.model.supervised_head is not None
    reader = tf.train.load_checkpoint(restored.checkpoint)
    kernel = restored.model.supervised_head.trainable_weights[0]
    key = next(k for k, _ in tf.train.list_variables(restored.checkpoint)
               if k.startswith("model/supervised_head") and "kernel" in k
               and "OPTIMIZER_SLOT" not in k)
    np.testing.assert_array_equal(kernel.numpy(), reader.get_tensor(key))
    assert read_record(shared_runs["finetune"])["run"]["mode"] == "finetune"


def _copy(shared_runs, tmp_path, name="pretrain"):
    copy = str(tmp_path / name)
    shutil.copytree(shared_runs[name], copy)
    return copy


@pytest.mark.slow
def test_changed_training_settings_are_refused_unless_accepted(shared_runs, tmp_path):
    from simclr_tf2.training.runner import run
    model_dir = _copy(shared_runs, tmp_path)
    config = read_experiment(model_dir)
    before = open(os.path.join(model_dir, CONFIG_FILE)).read()
    batch = config.train.train_batch_size
    changed = config.override(**{"train.train_steps": config.train.train_steps + 2,
                                 "train.train_batch_size": batch // 2})
    with pytest.raises(RunError) as refused:
        run(changed, RunConfig(mode="pretrain", model_dir=model_dir), verbose=False)
    message = str(refused.value)
    assert f"train.train_batch_size: {batch} -> {batch // 2}" in message
    assert f"train.train_steps: {config.train.train_steps} -> " in message
    assert "--accept_changed_settings" in message
    assert open(os.path.join(model_dir, CONFIG_FILE)).read() == before  # nothing written
    with pytest.raises(RunError, match="training mode: 'pretrain' -> 'finetune'"):
        run(config, RunConfig(mode="finetune", model_dir=model_dir), verbose=False)
    # Housekeeping (summaries, export) may change freely; accepted changes resume.
    outcome = run(changed.override(**{"export.export_at_end": False}),
                  RunConfig(mode="pretrain", model_dir=model_dir,
                            accept_changed_settings=True), verbose=False)
    assert int(outcome["learner"].step.numpy()) == config.train.train_steps + 2
    record = read_record(model_dir)
    assert f"train.train_batch_size: {batch} -> {batch // 2}" in record["accepted_changes"]
    assert record["experiment"]["train"]["train_batch_size"] == batch // 2


@pytest.mark.slow
def test_an_export_failing_at_the_end_is_one_error_and_keeps_the_checkpoint(
        shared_runs, tmp_path):
    from simclr_tf2.training.runner import run
    model_dir = _copy(shared_runs, tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    config = read_experiment(model_dir).override(**{"export.export_dir": str(blocker)})
    latest = tf.train.latest_checkpoint(model_dir)
    with pytest.raises(RunError) as failed:
        run(config, RunConfig(mode="pretrain", model_dir=model_dir), verbose=False)
    message = str(failed.value)
    assert "checkpoint is saved" in message and str(blocker) in message
    assert "export/export_hub.py --model_dir=" in message and "\n" not in message
    assert tf.train.latest_checkpoint(model_dir) == latest
