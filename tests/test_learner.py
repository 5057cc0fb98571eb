"""The training step of every mode: learning signal, memory, replicas, XLA."""
import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from conftest import mirrored_strategy
from simclr_tf2 import get_preset
from simclr_tf2.data import build_dataset, builtin_source
from simclr_tf2.data.builtin import load_builtin
from simclr_tf2.tasks.pretrain import queue_negatives
from simclr_tf2.training import Learner, schedule_steps, supervised_loss


def _config(batch=16, queue=0, **overrides):
    values = {"train.train_batch_size": batch, "memory.queue_size": queue}
    values.update(overrides)
    return get_preset("tiny").override(**values)


def _digits(n, offset=0):
    data = load_builtin("digits", "train", 32)
    return (tf.constant(data.images[offset:offset + n]),
            tf.constant(data.labels[offset:offset + n], tf.int32))


def _pretrain_batch(n, offset=0, labels=True):
    images, y = _digits(n, offset)
    batch = {"view1": images, "view2": tf.image.flip_left_right(images) * 0.9}
    if labels:
        batch["label"] = y
    return batch


@pytest.mark.parametrize("queue", [0, 64])
def test_pretraining_reduces_contrastive_loss_on_a_fixed_batch(queue):
    learner = Learner(_config(queue=queue), "pretrain", total_steps=30)
    step = tf.function(learner.replica_step)
    batch = _pretrain_batch(16, labels=False)
    history = [step(batch) for _ in range(30)]
    losses = np.array([float(m["contrast_loss"]) for m in history])
    assert np.all(np.isfinite(losses))
    # With memory the first steps fill the queue (64 keys = 2 steps), which
    # raises the loss; compare from the first step with a full queue.
    start = losses[2:5].mean() if queue else losses[:3].mean()
    assert losses[-3:].mean() < 0.8 * start, losses
    assert float(history[-1]["contrast_acc"]) > 0.9
    # Traced once: the optimizers' slots exist before the first step (a first
    # trace that creates variables is followed by a second).
    assert step.experimental_get_tracing_count() == 1
    if queue:
        assert int(learner.queue.count) == 30 * 32
    # The per-step effective ranks (an eigendecomposition each) are the
    # memory's diagnostics: a plain SimCLR step does not compute them.
    assert ("erank_projection" in history[0]) == bool(queue)


def test_memory_step_moves_ema_and_enqueues_pre_update_keys():
    learner = Learner(_config(batch=8, queue=48), "pretrain", total_steps=10)
    encoder = learner.momentum_encoder
    batch = _pretrain_batch(8)
    target_before = [v.numpy() for v in encoder.target_variables]
    # Keys are projections by the target as it was before the step (batch
    # norm in training mode uses batch statistics, so this call is pure).
    keys = encoder.target([batch["view1"], batch["view2"]],
                          training=True)["proj_head_output"]
    keys = tf.math.l2_normalize(keys, axis=-1).numpy()
    learner.replica_step(batch)
    m = learner.config.memory.momentum
    online_after = [v.numpy() for v in encoder.online_variables]
    for t, before, online in zip(encoder.target_variables, target_before, online_after):
        np.testing.assert_allclose(t.numpy(), m * before + (1 - m) * online,
                                   rtol=1e-5, atol=1e-6, err_msg=t.name)
    assert int(learner.queue.count) == 16
    np.testing.assert_allclose(learner.queue.keys.numpy()[:16], keys, atol=1e-5)
    assert not learner.queue.valid.numpy()[16:].any()


def _run_steps(strategy, config, batches, source, precision=None):
    """Builds a learner under `strategy` (weights copied from `source`) and
    runs one distributed step per batch; returns (learner, losses)."""
    replicas = strategy.num_replicas_in_sync
    model_weights = [v.numpy() for v in source.model.weights]
    target_weights = ([v.numpy() for v in source.momentum_encoder.target.weights]
                      if source.momentum_encoder is not None else [])
    with strategy.scope():
        learner = Learner(config, "pretrain", total_steps=len(batches), precision=precision)
        learner.model.set_weights(model_weights)
        if target_weights:
            learner.momentum_encoder.target.set_weights(target_weights)
    step = tf.function(lambda b: learner.distributed_step(strategy, b))
    losses = []
    for batch in batches:
        def split(context, batch=batch):
            i = context.replica_id_in_sync_group
            return {k: tf.split(v, replicas)[i] for k, v in batch.items()}
        per_replica = strategy.experimental_distribute_values_from_function(split)
        losses.append({k: float(v) for k, v in step(per_replica).items()})
    return learner, losses


@pytest.mark.parametrize("replicas,queue", [(2, 32)])
def test_multi_replica_steps_equal_one_replica_on_the_same_global_batch(replicas, queue):
    """The memory's path on 2 replicas; with the default contrast_keys
    ('both') its loss includes the plain path's in-batch NT-Xent, whose run
    on 2 replicas without memory is test_train_cli's loss-curve test (most
    of the cost is tracing the replicated step: on 4 replicas the plain case
    took twice as long; 4 replicas' gathered negatives, their gradients and
    the queue are checked in test_nt_xent.py and test_memory.py).
    In float64, so that the comparison checks the distributed logic (sync
    BN, gathered negatives, gradient sums, EMA, queue) and not float32
    round-off: float32 gradients of this network alone differ from float64
    by up to ~15% on a few variables (first projection layer), with or
    without replicas."""
    tf_keras.backend.set_floatx("float64")
    # tf-models-official's LARS multiplies by Python floats, so float32 only;
    # the optimizer sees the same summed gradients either way.
    # 16 px images (a quarter of the float64 arithmetic): the check is about
    # the distributed logic, not the resolution.
    config = _config(batch=16, queue=queue, **{"train.learning_rate": 0.05,
                                               "train.optimizer": "momentum",
                                               "data.image_size": 16})
    batches = [{k: tf.cast(tf.image.resize(v, [16, 16]) if v.shape.rank == 4 else v,
                           tf.float64) if v.dtype.is_floating else v
                for k, v in _pretrain_batch(16, offset=16 * i).items()}
               for i in range(3)]
    with mirrored_strategy(1).scope():
        source = Learner(config, "pretrain", total_steps=3, precision="float64")
    one, one_losses = _run_steps(mirrored_strategy(1), config, batches, source, "float64")
    many, many_losses = _run_steps(mirrored_strategy(replicas), config, batches, source,
                                   "float64")
    for a, b in zip(one_losses, many_losses):
        for key in ("loss", "contrast_loss", "contrast_acc", "probe_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-7, abs=1e-9), key
    assert one_losses[0]["loss"] != one_losses[-1]["loss"]
    for a, b in zip(one.model.weights, many.model.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-9,
                                   err_msg=a.name)
    if queue:
        assert many.queue.count.numpy() == one.queue.count.numpy() == 3 * 32
        np.testing.assert_allclose(many.queue.keys.numpy(), one.queue.keys.numpy(),
                                   atol=1e-6)
        for a, b in zip(one.momentum_encoder.target_variables,
                        many.momentum_encoder.target_variables):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("mode,queue", [("pretrain", 0), ("pretrain", 32),
                                        ("finetune", 0), ("linear_eval", 0)])
def test_replica_step_compiles_with_xla(mode, queue):
    """TPU compatibility: the per-replica step has no op XLA cannot compile.
    The memory case also splits batch norm (shuffled keys, grouped moments);
    whole-batch BN is the case without memory, and it takes its views as
    --augment_on=device ships them (8-bit crops and drawn parameters, colour
    and blur finished inside the step)."""
    splits = 2 if queue else 0
    learner = Learner(_config(batch=8, queue=queue, **{"memory.bn_splits": splits}), mode,
                      total_steps=5)
    if mode == "pretrain" and not queue:
        source = builtin_source("digits", "train", 32)
        batch = next(iter(build_dataset(source, "pretrain", 8, 32, augment_on="device")))
        assert batch["view1"].dtype == tf.uint8
    elif mode == "pretrain":
        batch = _pretrain_batch(8)
    else:
        images, labels = _digits(8)
        batch = {"image": images, "label": labels}
    step = tf.function(learner.replica_step, jit_compile=True)
    hlo = step.experimental_get_compiler_ir(batch)(stage="hlo")
    assert "HloModule" in hlo
    metrics = step(batch)
    assert np.isfinite(float(metrics["loss"]))
    assert int(learner.step) == 1


def test_finetune_learns_and_linear_eval_trains_only_the_head():
    images, labels = _digits(32)
    batch = {"image": images, "label": labels}
    config = _config(batch=32, **{"train.learning_rate": 0.1,
                                  "train.optimizer": "momentum"})
    finetune = Learner(config, "finetune", total_steps=25)
    step = tf.function(finetune.replica_step)
    losses = [float(step(batch)["sup_loss"]) for _ in range(25)]
    assert losses[-1] < 0.5 * losses[0], losses
    assert step.experimental_get_tracing_count() == 1  # slots made beforehand

    linear = Learner(config, "linear_eval", total_steps=5)
    head = linear.model.supervised_head
    frozen = [w for w in linear.model.weights
              if not any(w is h for h in head.weights)]
    before = [w.numpy() for w in frozen]
    head_before = [w.numpy() for w in head.weights]
    step = tf.function(linear.replica_step)
    for _ in range(5):
        step(batch)
    assert step.experimental_get_tracing_count() == 1
    assert [v.name for v in linear.model.trainable_variables] == \
        [v.name for v in head.trainable_variables]
    for w, b in zip(frozen, before):  # includes batch-norm moving statistics
        np.testing.assert_array_equal(w.numpy(), b, err_msg=w.name)
    assert any(not np.allclose(w.numpy(), b) for w, b in zip(head.weights, head_before))


def test_supervised_modes_need_classes():
    config = _config(**{"model.num_classes": 0})
    with pytest.raises(ValueError, match="model.num_classes"):
        Learner(config, "finetune", total_steps=1)
    with pytest.raises(ValueError, match="mode must be one of"):
        Learner(config, "train", total_steps=1)


def test_supervised_loss_ignores_unlabeled_rows():
    logits = tf.constant([[2.0, 0.0], [0.0, 3.0], [5.0, -5.0]])
    loss, acc = supervised_loss(tf.constant([0, 0, -1]), logits)
    expected = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(3.0))])
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(acc) == pytest.approx(0.5)
    loss, acc = supervised_loss(tf.constant([-1, -1, -1]), logits)
    assert float(loss) == 0.0 and float(acc) == 0.0


def test_schedule_steps_from_epochs_or_steps():
    config = _config(batch=32, **{"train.train_epochs": 3, "train.warmup_epochs": 0.5})
    steps = schedule_steps(config, 1000)
    assert (steps.total_steps, steps.warmup_steps, steps.steps_per_epoch) == (94, 16, 31)
    steps = schedule_steps(config.override(**{"train.train_steps": 7}), 1000)
    assert steps.total_steps == 7 and steps.warmup_steps == 7
    with pytest.raises(ValueError, match="fewer than one batch"):
        schedule_steps(config, 10)


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_steps_are_finite_with_float32_variables(precision):
    learner = Learner(_config(batch=8, queue=16, **{"train.precision": precision}),
                      "pretrain", total_steps=100)
    assert tf_keras.mixed_precision.global_policy().name == "float32"  # the caller's
    assert all(v.dtype == tf.float32 for v in learner.model.trainable_variables)
    assert learner.loss_scaling == (precision == "mixed_float16")
    if learner.loss_scaling:
        assert isinstance(learner.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
    before = [v.numpy() for v in learner.model.trainable_variables]
    step = tf.function(learner.replica_step)
    # Dynamic loss scaling skips the steps whose scaled gradients overflow
    # (the scale starts at 2^15 and halves each time), then updates.
    for _ in range(20):
        metrics = step(_pretrain_batch(8))
        assert np.isfinite(float(metrics["loss"]))
        if any(not np.array_equal(v.numpy(), b)
               for v, b in zip(learner.model.trainable_variables, before)):
            break
    else:
        pytest.fail("no update in 20 steps")


def test_queue_options_shape_the_negatives_a_step_uses():
    """center_queue, warmup_steps and exclude_own_images, on a queue filled
    by one step of images 0..7."""
    config = _config(batch=8, queue=32, **{"memory.center_queue": True,
                                           "memory.warmup_steps": 2,
                                           "memory.exclude_own_images": True})
    learner = Learner(config, "pretrain", total_steps=5)
    first = _pretrain_batch(8)
    first["index"] = tf.range(8, dtype=tf.int64)
    learner.replica_step(first)
    raw, ids = learner.queue.keys.numpy()[:16], learner.queue.ids.numpy()[:16]
    np.testing.assert_array_equal(ids, np.tile(np.arange(8), 2))
    second = dict(first, index=tf.constant([5, 6, 7, 8, 9, 10, 11, 12], tf.int64))
    keys, valid = queue_negatives(learner, second)
    centred = raw - raw.mean(0)
    np.testing.assert_allclose(keys.numpy()[:16], centred / np.linalg.norm(
        centred, axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    assert not valid.numpy().any()  # step 1 < warmup_steps 2
    learner.replica_step(dict(first, index=tf.range(100, 108, dtype=tf.int64)))
    _, valid = queue_negatives(learner, second)  # step 2: the queue is in use
    valid = valid.numpy()
    assert valid.shape == (8, 32)
    queue_ids = learner.queue.ids.numpy()
    assert learner.queue.valid.numpy().all()  # two steps of 16 keys fill all 32
    for row, image in enumerate([5, 6, 7, 8, 9, 10, 11, 12]):
        np.testing.assert_array_equal(valid[row], queue_ids != image)
        assert (~valid[row]).sum() == (2 if image < 8 else 0)  # its two views, if queued


def test_memory_diagnostics_report_the_queue_and_the_batch():
    learner = Learner(_config(batch=8, queue=48), "pretrain", total_steps=5)
    batch = _pretrain_batch(8)
    batch["index"] = tf.range(8, dtype=tf.int64)
    first = learner.replica_step(batch)
    assert float(first["cos_queue"]) == 0.0 and float(first["queue_own_images"]) == 0.0
    # The target starts as a copy: before the first update the online and
    # momentum projections of the same batch agree.
    assert float(first["online_momentum_cos"]) == pytest.approx(1.0, abs=1e-5)
    half = dict(batch, index=tf.constant([4, 5, 6, 7, 20, 21, 22, 23], tf.int64))
    # The step's outputs, as it computes them before its update (training-mode
    # batch norm uses the batch's statistics).
    outputs = learner.model([half["view1"], half["view2"]], training=True)
    second = learner.replica_step(half)
    assert float(second["queue_own_images"]) == pytest.approx(0.5)  # 8 of 16 keys
    keys = learner.queue.keys.numpy()[:16]
    assert float(second["queue_mean_norm"]) == pytest.approx(
        np.linalg.norm(keys.mean(0)), rel=1e-4)
    for name, output in (("erank_projection", "proj_head_output"),
                         ("erank_backbone", "final_avg_pool")):
        assert float(second[name]) == pytest.approx(
            _numpy_effective_rank(outputs[output].numpy()), rel=1e-3), name


def _numpy_effective_rank(x):
    """exp(entropy) of the singular values (normalised to sum 1) of the
    centred rows: Roy & Vetterli (2007)."""
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    p = s[s > 0] / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("contrast_keys", ["momentum", "both"])
def test_momentum_keys_enter_the_loss_as_configured(contrast_keys):
    """momentum: anchors against the momentum encoder's keys (MoCo); both:
    the mean of that loss and SimCLR's loss among the online projections."""
    from simclr_tf2.objectives import nt_xent_loss
    config = _config(batch=8, queue=32, **{"memory.contrast_keys": contrast_keys})
    learner = Learner(config, "pretrain", total_steps=5)
    batch = _pretrain_batch(8, labels=False)
    learner.replica_step(batch)  # fills part of the queue
    views = [batch["view1"], batch["view2"]]
    online = learner.model(views, training=True)["proj_head_output"]
    keys = tf.math.l2_normalize(
        learner.momentum_encoder.target(views, training=True)["proj_head_output"], -1)
    queue, valid = learner.queue.keys.numpy(), learner.queue.valid.numpy()
    t = config.train.temperature
    moco = nt_xent_loss(online, t, queue=queue, queue_valid=valid, keys=keys).loss
    expected = moco if contrast_keys == "momentum" else (
        moco + nt_xent_loss(online, t).loss) / 2
    metrics = learner.replica_step(batch)
    assert float(metrics["contrast_loss"]) == pytest.approx(float(expected), rel=1e-4)


def test_split_batch_norm_keys_are_normalised_in_shuffled_groups():
    """memory.bn_splits: the momentum encoder sees the images in a shuffled
    order, normalised per group of that order, and its keys come back in the
    images' own order; the step trains."""
    learner = Learner(_config(batch=8, queue=32, **{"memory.bn_splits": 2}), "pretrain",
                      total_steps=2)
    batch = _pretrain_batch(8, labels=False)
    images = tf.concat([batch["view1"], batch["view2"]], 0)
    order = tf.constant([3, 12, 0, 7, 15, 9, 4, 1, 10, 2, 14, 6, 11, 5, 8, 13])
    keys = learner.momentum_keys(images, order).numpy()
    target = learner.momentum_encoder.target
    shuffled = tf.gather(images, order)
    groups = [target(shuffled[i:i + 8], training=True)["proj_head_output"]
              for i in (0, 8)]  # each group alone: its own batch statistics
    expected = np.zeros_like(keys)
    expected[order.numpy()] = tf.math.l2_normalize(tf.concat(groups, 0), -1).numpy()
    np.testing.assert_allclose(keys, expected, rtol=1e-3, atol=1e-4)
    whole = learner.momentum_keys(images).numpy()  # no order: the whole batch
    assert np.abs(whole - keys).max() > 1e-3
    metrics = tf.function(learner.replica_step)(batch)
    assert np.isfinite(float(metrics["loss"])) and int(learner.queue.count) == 16


def test_split_batch_norm_without_memory_changes_the_online_step_only_in_pretraining():
    batch = _pretrain_batch(8, labels=False)
    losses = {}
    for splits in (0, 2):
        tf_keras.utils.set_random_seed(0)  # the same initial weights
        learner = Learner(_config(batch=8, **{"memory.bn_splits": splits}), "pretrain",
                          total_steps=2)
        losses[splits] = float(learner.replica_step(batch)["contrast_loss"])
    assert losses[0] != pytest.approx(losses[2], rel=1e-4)
    finetune = {}
    for splits in (0, 2):
        tf_keras.utils.set_random_seed(0)  # the same initial weights
        learner = Learner(_config(batch=8, **{"memory.bn_splits": splits}), "finetune",
                          total_steps=2)
        images, labels = _digits(8)
        finetune[splits] = float(learner.replica_step({"image": images, "label": labels})
                                 ["loss"])
    assert finetune[0] == pytest.approx(finetune[2], rel=1e-6)


def _batch_norms(model):
    return [l for l in model._flatten_layers()
            if isinstance(l, tf_keras.layers.BatchNormalization)]


def test_one_replica_trains_with_plain_batch_norm_and_the_same_result(monkeypatch):
    """sync_bn (the default) is synchronised only with more than one replica:
    on one, cross-replica statistics are the local ones, and the plain layer
    runs the fused kernel. A step gives the same loss and weights either way
    (up to float32 round-off; LARS at a high rate amplifies it within a few
    steps, so one step at a low rate), and the same checkpoint keys. The one
    difference is TensorFlow's: the fused kernel updates the moving variance
    with the unbiased batch variance (x n/(n-1), n = values per channel),
    the synchronised layer with the biased one."""
    import simclr_tf2.training.learner as learner_module
    config = _config(batch=8, queue=16, **{"train.learning_rate": 0.01})
    assert config.model.sync_bn
    plain = Learner(config, "pretrain", total_steps=4)
    norms = _batch_norms(plain.model) + _batch_norms(plain.momentum_encoder.target)
    assert norms and not any(n.synchronized for n in norms)
    # The synchronised layer on one replica (what the learner built before).
    monkeypatch.setattr(learner_module, "_num_replicas", lambda: 2)
    synced = Learner(config, "pretrain", total_steps=4)
    monkeypatch.undo()
    assert all(n.synchronized for n in _batch_norms(synced.model))
    synced.model.set_weights(plain.model.get_weights())
    synced.momentum_encoder.copy_online()
    batch = _pretrain_batch(8)
    views = [batch["view1"], batch["view2"]]
    np.testing.assert_allclose(plain.model(views, training=True)["proj_head_output"],
                               synced.model(views, training=True)["proj_head_output"],
                               atol=1e-3)  # E[x^2]-E[x]^2 vs the fused kernel
    plain.model.set_weights(synced.model.get_weights())  # undo the moving averages
    start = [v.numpy() for v in plain.model.trainable_variables]
    losses = [float(tf.function(l.replica_step)(batch)["contrast_loss"])
              for l in (plain, synced)]
    # Both stepped, by the same update: each variable's change agrees to 1% of
    # its size (measured: at most 0.07%; the changes are ~1e-6-1e-2, far below
    # the weights' own size, so the weights alone could not tell).
    moved = 0
    for before, a, b in zip(start, plain.model.trainable_variables,
                            synced.model.trainable_variables):
        delta_a, delta_b = a.numpy() - before, b.numpy() - before
        size = np.linalg.norm(delta_a)
        moved += size > 0
        assert np.linalg.norm(delta_a - delta_b) <= 1e-2 * size, a.name
    assert moved > len(start) // 2
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    for a, b in zip(plain.model.weights, synced.model.weights):
        assert a.name == b.name
        if "moving_variance" in a.name:  # the unbiased factor, at most 1/(n-1)
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-2, err_msg=a.name)
        else:
            # The synchronised layer's E[x^2] - E[x]^2 loses float32 digits
            # that this tiny random network's gradients amplify: measured up
            # to 5e-4 after one step over 6 initialisations.
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-2, atol=2e-3,
                                       err_msg=a.name)
    keys = [[(k, tuple(shape)) for k, shape in tf.train.list_variables(
        tf.train.Checkpoint(**learner.checkpoint_items()).write(
            os.path.join(tempfile.mkdtemp(), "ckpt")))]
        for learner in (plain, synced)]
    assert keys[0] == keys[1]


def test_several_replicas_keep_synchronised_batch_norm():
    with mirrored_strategy(2).scope():
        learner = Learner(_config(batch=8), "pretrain", total_steps=1)
    assert all(n.synchronized for n in _batch_norms(learner.model))
