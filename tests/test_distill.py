"""Distillation (SimCLRv2 step 3): the loss, the Learner's distill step, the run."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from simclr_tf2 import get_preset
from simclr_tf2.errors import RunError
from simclr_tf2.data.builtin import load_builtin
from simclr_tf2.objectives import distillation_loss
from simclr_tf2.training import Learner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _np_distill(teacher, student, tau):
    """-mean_x sum_y P_T(y|x; tau) log P_S(y|x; tau), written out."""
    p = _np_softmax(teacher / tau)
    log_q = np.log(_np_softmax(student / tau))
    return -(p * log_q).sum(-1).mean()


def _np_cross_entropy(labels, logits):
    rows = [(-np.log(_np_softmax(l)[y])) for y, l in zip(labels, logits) if y >= 0]
    return float(np.mean(rows)) if rows else 0.0


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 4.0])
def test_distillation_loss_equals_numpy_and_only_the_student_gets_gradient(tau):
    rng = np.random.default_rng(int(tau * 10))
    teacher = rng.normal(size=(7, 5)).astype(np.float32) * 3
    student = tf.Variable(rng.normal(size=(7, 5)).astype(np.float32))
    teacher_var = tf.Variable(teacher)
    with tf.GradientTape() as tape:
        loss = distillation_loss(teacher_var, student, tau)
    assert float(loss) == pytest.approx(_np_distill(teacher, student.numpy(), tau), rel=1e-5)
    g_student, g_teacher = tape.gradient(loss, [student, teacher_var])
    assert g_teacher is None
    # d/ds: (softmax(s/tau) - softmax(t/tau)) / (tau * rows)
    expected = (_np_softmax(student.numpy() / tau) - _np_softmax(teacher / tau)) / (tau * 7)
    np.testing.assert_allclose(g_student, expected, atol=1e-6)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distillation_loss(teacher, student, 0.0)


def _config(**overrides):
    values = {"train.train_batch_size": 16, "train.optimizer": "adam",
              "train.learning_rate": 1e-3, "train.learning_rate_scaling": "linear",
              "train.weight_decay": 0.0}
    values.update(overrides)
    return get_preset("tiny").override(**values)


class PixelTeacher(tf.Module):
    """A fixed teacher: logits = standardised 4x4-pooled pixels @ W."""

    def __init__(self, num_classes=10, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w = tf.Variable(rng.normal(0, 1, (16, num_classes)).astype(np.float32))
        pooled = self._pool(_digits(256)[0]).numpy()
        self.mean = tf.constant(pooled.mean(0))
        self.std = tf.constant(pooled.std(0) + 1e-3)

    @staticmethod
    def _pool(images):
        grey = tf.reduce_mean(images, -1, keepdims=True)
        return tf.reshape(tf.image.resize(grey, [4, 4], method="area"), [-1, 16])

    def __call__(self, images):
        return 3.0 * tf.matmul((self._pool(images) - self.mean) / self.std, self.w)


def _digits(n, offset=0):
    data = load_builtin("digits", "train", 32)
    return (tf.constant(data.images[offset:offset + n]),
            tf.constant(data.labels[offset:offset + n], tf.int64))


@pytest.mark.parametrize("alpha,tau", [(0.0, 1.0), (0.5, 2.0)])
def test_distill_step_loss_is_distillation_plus_alpha_supervised(alpha, tau):
    teacher = PixelTeacher()
    config = _config(**{"train.distill_alpha": alpha, "train.distill_temperature": tau})
    learner = Learner(config, "distill", total_steps=10, teacher=teacher)
    images, labels = _digits(16)
    labels = tf.where(tf.range(16) % 3 == 0, labels, -1)  # a third labelled
    # The step's forward pass (training mode) from the same weights.
    student = learner.model(images, training=True)["logits_sup"].numpy()
    metrics = learner.replica_step({"image": images, "label": labels})
    t = teacher(images).numpy()
    expected = _np_distill(t, student, tau) + alpha * _np_cross_entropy(labels.numpy(), student)
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-4)
    assert float(metrics["distill_loss"]) == pytest.approx(_np_distill(t, student, tau),
                                                           rel=1e-4)
    assert ("sup_loss" in metrics) == (alpha > 0)


def test_student_learns_the_teacher_whose_weights_never_change():
    teacher = PixelTeacher(seed=3)
    frozen = teacher.w.numpy().copy()
    config = _config(**{"train.learning_rate": 1e-2, "train.train_batch_size": 32})
    learner = Learner(config, "distill", total_steps=150, teacher=teacher)
    assert not any(v is teacher.w for v in learner.model.trainable_variables)
    assert "teacher" not in learner.checkpoint_items()
    images, _ = _digits(64)
    step = tf.function(learner.replica_step)
    for i in range(150):  # unlabeled images only
        chunk = images[(i % 2) * 32:(i % 2 + 1) * 32]
        step({"image": chunk, "label": tf.fill([32], tf.constant(-1, tf.int64))})
    np.testing.assert_array_equal(teacher.w.numpy(), frozen)
    taught = np.argmax(teacher(images).numpy(), -1)
    majority = np.bincount(taught).max() / len(taught)
    assert majority <= 0.4  # the teacher's predictions vary
    learned = np.argmax(learner.model(images, training=False)["logits_sup"].numpy(), -1)
    assert (learned == taught).mean() >= 0.85, (learned, taught)


def test_precomputed_teacher_logits_travel_with_the_batch():
    teacher = PixelTeacher()
    config = _config(**{"train.distill_temperature": 2.0})
    learner = Learner(config, "distill", total_steps=10)  # no teacher function
    images, _ = _digits(16)
    t = teacher(images).numpy()
    student = learner.model(images, training=True)["logits_sup"].numpy()
    metrics = learner.replica_step({"image": images, "teacher_logits": tf.constant(t)})
    assert float(metrics["distill_loss"]) == pytest.approx(_np_distill(t, student, 2.0),
                                                           rel=1e-4)
    with pytest.raises(ValueError, match="precomputed 'teacher_logits'"):
        learner.replica_step({"image": images})


def test_precomputed_logits_are_kept_for_restarts_and_refused_when_too_big(
        tmp_path, monkeypatch, capsys):
    from simclr_tf2.data import builtin_source
    from simclr_tf2.training import precompute
    config = _config(**{"train.eval_batch_size": 128})
    source = builtin_source("digits", "train", config.data.image_size)
    indices = np.arange(0, len(source), 4)
    teacher = PixelTeacher()
    keep = str(tmp_path / "teacher_logits.npy")
    table = precompute.precompute_teacher_logits(teacher, config, source, indices,
                                                 keep=keep, teacher_name="t")
    images = tf.stack([source.load(i) for i in indices[:5]])
    np.testing.assert_allclose(table[indices[:5]], teacher(images).numpy(), rtol=1e-5,
                               atol=1e-5)
    assert not table[1].any()  # not in `indices`
    capsys.readouterr()
    again = precompute.precompute_teacher_logits(None, config, source, indices, keep=keep,
                                                 teacher_name="t")
    assert "read from" in capsys.readouterr().out  # no teacher pass on a restart
    np.testing.assert_array_equal(again, table)
    other = PixelTeacher(seed=1)  # another teacher: computed again
    changed = precompute.precompute_teacher_logits(other, config, source, indices,
                                                   keep=keep, teacher_name="u")
    assert not np.allclose(changed, table)
    monkeypatch.setattr(precompute, "MAX_CACHED_FEATURE_BYTES", 1000)
    with pytest.raises(RunError, match=r"teacher logits take 0\.0 GB.*drop --distill_precompute"):
        precompute.precompute_teacher_logits(teacher, config, source, indices)


def test_pipeline_extras_follow_their_example():
    from simclr_tf2.data import build_dataset, builtin_source
    source = builtin_source("digits", "train", 32)
    table = np.arange(len(source) * 2, dtype=np.float32).reshape(-1, 2)
    ds = build_dataset(source, "finetune", 8, 32, extras={"t": table}, seed=3)
    for batch in ds.take(3):
        np.testing.assert_array_equal(batch["t"].numpy(), table[batch["index"].numpy()])


def test_distill_needs_a_teacher_and_classes(tmp_path):
    with pytest.raises(ValueError, match="only mode 'distill' takes a teacher"):
        Learner(_config(), "finetune", total_steps=1, teacher=PixelTeacher())
    from simclr_tf2.training.runner import RunConfig, run
    with pytest.raises(ValueError, match="distill needs --teacher"):
        run(_config(), RunConfig(mode="distill", model_dir=str(tmp_path / "a")))
    with pytest.raises(ValueError, match="not found"):
        run(_config(), RunConfig(mode="distill", model_dir=str(tmp_path / "b"),
                                 teacher=str(tmp_path / "missing")))
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def _cli(args):
    return subprocess.run([sys.executable, "-m", "simclr_tf2.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ))


@pytest.mark.slow
def test_distill_from_a_run_and_from_its_hub_export_resumes_and_exports(
        shared_runs, tmp_path, capsys):
    """The teacher is the shared fine-tuned run: first as a run directory
    (from the command line), then as its hub export (on two replicas)."""
    from simclr_tf2.flag_definitions import configs_from_flags, define_flags
    from simclr_tf2.training.runner import run
    teacher_dir = shared_runs["finetune"]
    common = ["--preset=tiny", "--steps_per_loop=3", "--summary_interval=3",
              "--checkpoint_interval=3", "--train_batch_size=32", "--optimizer=adam",
              "--learning_rate=0.001", "--learning_rate_scaling=linear", "--weight_decay=0"]
    student_dir = str(tmp_path / "student")
    args = common + ["--mode=distill", f"--teacher={teacher_dir}", "--distill_alpha=0.5",
                     "--label_fraction=0.1", "--noexport_at_end",
                     f"--model_dir={student_dir}"]
    first = _cli(args + ["--train_steps=6"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "teacher_agreement" in first.stdout
    assert os.path.exists(os.path.join(student_dir, "labelled_ids.txt"))

    def in_process(argv):
        values = flags.FlagValues()
        define_flags(values)
        values(["train", *argv])
        return run(*configs_from_flags(values))

    capsys.readouterr()
    # Training longer is a changed setting: it must be asked for.
    resumed = in_process(args + ["--train_steps=12", "--accept_changed_settings"])
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "steps 6 -> 12" in printed
    assert tf.train.latest_checkpoint(student_dir).endswith("ckpt-12")
    assert int(resumed["learner"].step.numpy()) == 12
    keys = [k for k, _ in tf.train.list_variables(tf.train.latest_checkpoint(student_dir))]
    assert not any(k.startswith("teacher") for k in keys)
    # The teacher's own export (written when it finished) as the teacher.
    from conftest import SHARED_FINETUNE_STEPS
    export = os.path.join(teacher_dir, "hub", str(SHARED_FINETUNE_STEPS), "head_0")
    # On two replicas (two logical CPUs): distillation's multi-replica run.
    hub_dir = str(tmp_path / "from_hub")
    capsys.readouterr()
    outcome = in_process(common + ["--mode=distill", f"--teacher={export}", "--train_steps=3",
                                   "--num_cpu_devices=2", f"--model_dir={hub_dir}"])
    assert "on 2 replica(s), steps 0 -> 3" in capsys.readouterr().out
    assert int(outcome["learner"].step.numpy()) == 3
    assert tf.train.latest_checkpoint(hub_dir).endswith("ckpt-3")
    assert os.listdir(os.path.join(hub_dir, "hub")) == ["3"]
    recorded = json.load(open(os.path.join(hub_dir, "config.json")))
    assert recorded["run"]["teacher"] == export
    capsys.readouterr()
    in_process(common + ["--mode=distill", f"--teacher={export}", "--train_steps=3",
                         "--distill_precompute", "--noexport_at_end",
                         f"--model_dir={tmp_path / 'precomputed'}"])
    assert "teacher logits precomputed for 1438 images" in capsys.readouterr().out


def test_a_teacher_run_loads_without_unrestored_value_warnings(shared_runs, caplog):
    """The run's optimizer slots are not the teacher's; loading it must not
    print a warning per slot when the load status is collected."""
    import gc
    import logging

    from simclr_tf2.training.teacher import load_teacher
    logging.getLogger("tensorflow").addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING):
            teacher = load_teacher(shared_runs["finetune"])
            gc.collect()
        logits = teacher(tf.zeros([2, 32, 32, 3]))
    finally:
        logging.getLogger("tensorflow").removeHandler(caplog.handler)
    assert logits.shape == (2, 10)
    assert not [r for r in caplog.records if "could not be found" in r.getMessage()
                or "unrestored values" in r.getMessage()], caplog.text[:2000]
