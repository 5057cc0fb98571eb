"""Runs written by the code of 2026-12-07 (tests/data/runs_2026_12, made by
tests/data/make_fixture_runs.py before the training centre was reorganised)
still resume, restore and load: a change of code must not orphan users'
checkpoints and exports."""
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.rundir import read_experiment, restore_model
from simclr_tf2.training.runner import RunConfig, run

RUNS = os.path.join(os.path.dirname(__file__), "data", "runs_2026_12")


def checkpoint_sum(prefix, top):
    """Sum of |values| of the checkpoint's variables under `top`/ (no
    optimizer slots): what a restored object's variables must add up to."""
    reader = tf.train.load_checkpoint(prefix)
    keys = [k for k in reader.get_variable_to_shape_map()
            if k.startswith(top + "/") and k.endswith("VARIABLE_VALUE")
            and "OPTIMIZER_SLOT" not in k]
    assert keys, f"no variables under {top}/ in {prefix}"
    return sum(float(np.abs(reader.get_tensor(k)).astype(np.float64).sum()) for k in keys)


def variables_sum(variables):
    return sum(float(np.abs(v.numpy()).astype(np.float64).sum()) for v in variables)


def test_a_pretraining_run_of_2026_12_resumes_with_its_memory(tmp_path):
    model_dir = str(tmp_path / "pretrain")
    shutil.copytree(os.path.join(RUNS, "pretrain"), model_dir)
    config = read_experiment(model_dir)
    outcome = run(config, RunConfig(mode="pretrain", model_dir=model_dir), verbose=False)
    learner = outcome["learner"]
    prefix = os.path.join(model_dir, "ckpt-2")
    assert int(learner.step.numpy()) == 2  # resumed at its end: nothing to train
    assert variables_sum(learner.model.variables) == pytest.approx(
        checkpoint_sum(prefix, "model"), rel=1e-6)
    assert variables_sum(learner.momentum_encoder.target.variables) == pytest.approx(
        checkpoint_sum(prefix, "momentum_encoder"), rel=1e-6)
    assert variables_sum(learner.checkpoint_items()["queue"].variables) == pytest.approx(
        checkpoint_sum(prefix, "queue"), rel=1e-6)


def test_a_fine_tuned_run_and_its_export_of_2026_12_load_and_agree():
    model_dir = os.path.join(RUNS, "finetune")
    restored = restore_model(model_dir)
    assert restored.mode == "finetune" and restored.step == 2
    assert variables_sum(restored.model.variables) == pytest.approx(
        checkpoint_sum(restored.checkpoint, "model"), rel=1e-6)
    module = tf.saved_model.load(os.path.join(model_dir, "hub", "2", "head_0"))
    images = tf.random.stateless_uniform([4, 32, 32, 3], seed=[1, 2])
    exported = module(images, training=False)
    live = restored.model(images, training=False)
    for key in ("final_avg_pool", "logits_sup"):
        np.testing.assert_allclose(exported[key].numpy(), live[key].numpy(),
                                   rtol=1e-5, atol=1e-5)
