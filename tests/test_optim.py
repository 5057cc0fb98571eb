"""LARS, weight-decay rules and the learning-rate schedule, against hand math."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from official.modeling.optimization import lars

from simclr_tf2.optim.optimizers import FusedLARS
from simclr_tf2.optim import (build_optimizer, scaled_learning_rate,
                              warmup_cosine_schedule, weight_decay_loss)


def _variable(scope, name, value):
    with tf.name_scope(scope):
        return tf.Variable(np.asarray(value, np.float32), name=name)


def _lars_by_hand(w, g, v, lr, wd, momentum, eeta, excluded):
    """LARS's update rule (You et al. 2017, as SimCLR uses it), written out."""
    w, g, v = (np.asarray(x, np.float64) for x in (w, g, v))
    trust = 1.0
    if not excluded:
        g = g + wd * w
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        if w_norm > 0 and g_norm > 0:
            trust = eeta * w_norm / g_norm
    v = momentum * v + lr * trust * g
    return w - v, v


def test_lars_two_steps_match_the_rule_written_out_including_exclusions():
    lr, wd, momentum = 0.5, 0.1, 0.9
    opt = build_optimizer("lars", lr, momentum=momentum, weight_decay=wd)
    assert isinstance(opt, lars.LARS)
    cases = {  # name -> (initial w, gradient, excluded?)
        "kernel": ("block/conv2d", "kernel", [3.0, 4.0], [0.6, 0.8], False),
        "zero_w": ("block/conv2d_1", "kernel", [0.0, 0.0], [1.0, -2.0], False),
        "gamma": ("bn/batch_normalization", "gamma", [2.0, 1.0], [0.5, 0.25], True),
        "bias": ("head/dense", "bias", [1.0, -1.0], [0.3, 0.1], True),
        "head": ("simclr/head_supervised/dense", "kernel", [1.0, 2.0], [0.2, 0.4], True),
    }
    variables = {k: _variable(s, n, w) for k, (s, n, w, _, _) in cases.items()}
    expected = {k: (np.array(c[2]), np.zeros(2)) for k, c in cases.items()}
    for _ in range(2):
        grads = {k: tf.constant(c[3], tf.float32) for k, c in cases.items()}
        opt.apply_gradients([(grads[k], variables[k]) for k in cases])
        for k, c in cases.items():
            expected[k] = _lars_by_hand(expected[k][0], c[3], expected[k][1],
                                        lr, wd, momentum, 0.001, c[4])
    for k in cases:
        np.testing.assert_allclose(variables[k].numpy(), expected[k][0],
                                   rtol=1e-5, atol=1e-7, err_msg=k)
    # The excluded ones moved by plain momentum SGD: a big step compared to
    # the trust-ratio-scaled kernel.
    assert abs(variables["gamma"].numpy()[0] - 2.0) > 100 * abs(
        variables["kernel"].numpy()[0] - 3.0)


def test_fused_lars_matches_the_library_update_and_slots_over_steps():
    """The fused update against tf-models-official's, on random weights with
    excluded and adapted names, a zero weight and a learning-rate schedule."""
    rng = np.random.default_rng(0)
    shapes = {("stem/conv2d", "kernel"): (3, 3, 4, 8), ("block/conv2d_1", "kernel"): (5,),
              ("bn/batch_normalization", "gamma"): (8,), ("head/dense", "bias"): (6,),
              ("simclr/head_supervised/dense", "kernel"): (4, 3)}
    initial = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    initial[("block/conv2d_1", "kernel")][:] = 0.0  # trust ratio 1 branch
    grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
             for _ in range(3)]
    schedule = tf_keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.7, 0.3])
    results = []
    for cls in (lars.LARS, FusedLARS):
        opt = cls(learning_rate=schedule, momentum=0.9, weight_decay_rate=0.01,
                  eeta=0.001, nesterov=False, classic_momentum=True,
                  exclude_from_weight_decay=["batch_normalization", "bias", "head_supervised"],
                  exclude_from_layer_adaptation=["batch_normalization", "bias",
                                                 "head_supervised"])
        variables = {k: _variable(*k, v) for k, v in initial.items()}

        @tf.function
        def step(g, opt=opt, variables=variables):
            opt.apply_gradients([(g[k], variables[k]) for k in shapes])

        for g in grads:
            step({k: tf.constant(v) for k, v in g.items()})
        results.append(({k: v.numpy() for k, v in variables.items()},
                        {k: opt.get_slot(v, "momentum").numpy() for k, v in variables.items()},
                        sorted(opt.get_slot_names())))
    (w_lib, m_lib, slots_lib), (w_fused, m_fused, slots_fused) = results
    assert slots_lib == slots_fused == ["momentum"]
    for k in shapes:
        np.testing.assert_allclose(w_fused[k], w_lib[k], rtol=1e-6, atol=1e-7, err_msg=str(k))
        np.testing.assert_allclose(m_fused[k], m_lib[k], rtol=1e-5, atol=1e-8, err_msg=str(k))
    assert not np.allclose(w_fused[("stem/conv2d", "kernel")], initial[("stem/conv2d", "kernel")])


def test_other_optimizers_and_bad_name():
    assert isinstance(build_optimizer("momentum", 0.1),
                      tf_keras.optimizers.legacy.SGD)
    assert build_optimizer("momentum", 0.1).get_config()["nesterov"]
    assert isinstance(build_optimizer("adam", 0.1), tf_keras.optimizers.legacy.Adam)
    with pytest.raises(ValueError, match="optimizer must be one of.*'sgd'"):
        build_optimizer("sgd", 0.1)


def test_weight_decay_loss_rules():
    kernel = _variable("stem/conv2d", "kernel", [1.0, 2.0])
    gamma = _variable("stem/batch_normalization", "gamma", [3.0])
    bias = _variable("dense", "bias", [4.0])
    head = _variable("simclr/head_supervised/dense", "kernel", [5.0, 6.0])
    head_bias = _variable("simclr/head_supervised/dense", "bias", [7.0])
    variables = [kernel, gamma, bias, head, head_bias]
    wd = 0.01
    # LARS decays the rest itself: only the supervised head's kernel here.
    np.testing.assert_allclose(weight_decay_loss("lars", variables, wd),
                               wd * (25 + 36) / 2, rtol=1e-6)
    for name in ("momentum", "adam"):
        np.testing.assert_allclose(weight_decay_loss(name, variables, wd),
                                   wd * (1 + 4 + 25 + 36) / 2, rtol=1e-6)
    assert float(weight_decay_loss("adam", variables, 0.0)) == 0.0


@pytest.mark.parametrize("base,batch,scaling,expected", [
    (0.3, 512, "linear", 0.6),
    (0.075, 4096, "sqrt", 4.8),
    (1.0, 512, "sqrt", math.sqrt(512)),
    (0.005, 1024, "sqrt", 0.16),
])
def test_learning_rate_scaling(base, batch, scaling, expected):
    assert scaled_learning_rate(base, batch, scaling) == pytest.approx(expected)


def test_learning_rate_scaling_rejects_unknown():
    with pytest.raises(ValueError, match="learning_rate_scaling"):
        scaled_learning_rate(0.1, 256, "log")


def _cosine(peak, step, warmup, total):
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.mark.parametrize("step,expected", [
    (0, 0.0), (1, 0.2), (5, 1.0), (9, 1.8), (10, 2.0),
    (32, 1.0 + math.cos(math.pi * 22 / 90)), (55, 1.0), (77, 1.0 + math.cos(math.pi * 67 / 90)),
    (100, 0.0), (150, 0.0),
])
def test_warmup_then_cosine_table(step, expected):
    schedule = warmup_cosine_schedule(2.0, total_steps=100, warmup_steps=10)
    assert float(schedule(step)) == pytest.approx(expected, abs=1e-6)
    if 10 <= step <= 100:
        assert expected == pytest.approx(_cosine(2.0, step, 10, 100), abs=1e-9)


def test_no_warmup_starts_at_peak_and_decays_to_zero():
    schedule = warmup_cosine_schedule(0.16, total_steps=60)
    values = [float(schedule(s)) for s in (0, 30, 60)]
    np.testing.assert_allclose(values, [0.16, 0.08, 0.0], atol=1e-7)


def test_schedule_rejects_bad_lengths():
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine_schedule(1.0, total_steps=10, warmup_steps=11)
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine_schedule(1.0, total_steps=0)
