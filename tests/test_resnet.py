"""The ResNet backbone family: counts, shapes, gradients, freezing, sync BN."""
import dataclasses
import functools
import gc
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import simclr_tf2
from conftest import mirrored_strategy
from simclr_tf2 import ENDPOINTS, build_resnet, build_resnet_from_config, get_preset
from simclr_tf2.backbones.resnet import ResNet
from simclr_tf2.layers import BatchNormRelu

# Chen et al. 2020 (SimCLRv2), Table 1: millions of parameters, trainable + BN
# moving statistics.
PUBLISHED_PARAMS = {
    "r50_1x_sk0": 23.56, "r50_1x_sk1": 35.28, "r50_2x_sk0": 94.01,
    "r50_2x_sk1": 140.43, "r101_1x_sk0": 42.61, "r101_1x_sk1": 64.79,
    "r101_2x_sk0": 169.98, "r101_2x_sk1": 257.38, "r152_1x_sk0": 58.30,
    "r152_1x_sk1": 89.12, "r152_2x_sk0": 232.56, "r152_2x_sk1": 353.75,
    "r152_3x_sk1": 795.24,
}
FAST_PRESETS = {"r50_1x_sk0", "r50_1x_sk1"}


def _preset_param(name):
    marks = [] if name in FAST_PRESETS else [pytest.mark.slow]
    return pytest.param(name, marks=marks)


def _zero_initial_values(next_creator, **kwargs):
    """Variables start at zero instead of their initializer's random draw:
    a full-size build for counting, without drawing 795M random numbers."""
    initial = kwargs.get("initial_value")
    if isinstance(initial, functools.partial) and initial.args:
        kwargs["initial_value"] = functools.partial(
            tf.zeros, initial.args[0], dtype=initial.keywords.get("dtype", tf.float32))
    return next_creator(**kwargs)


@pytest.mark.parametrize("name", [_preset_param(n) for n in PUBLISHED_PARAMS])
def test_parameter_count_matches_published(name):
    with tf.variable_creator_scope(_zero_initial_values):
        model = build_resnet_from_config(get_preset(name).model)
    assert not any(float(tf.reduce_max(tf.abs(v))) for v in model.trainable_weights[:3])
    millions = model.count_params() / 1e6
    assert abs(millions - PUBLISHED_PARAMS[name]) < 0.01, (name, millions)
    del model
    gc.collect()


def _enable_all_residual_branches(model):
    """Zero-init gammas block all gradient into residual branches at step 0;
    set them to one so every variable must receive a signal."""
    for var in model.variables:
        if "bn_last" in var.name and "gamma" in var.name:
            var.assign(tf.ones_like(var))


def _check_forward_and_gradients(model, size, batch=2):
    images = tf.random.uniform([batch, size, size, 3])
    with tf.GradientTape() as tape:
        outputs = model(images, training=True)
        probe = {k: tf.random.normal(tf.shape(v), seed=1) for k, v in outputs.items()}
        loss = tf.add_n([tf.reduce_sum(tf.cast(v, tf.float32) * probe[k])
                         for k, v in outputs.items()])
    for key, value in outputs.items():
        assert np.isfinite(value.numpy()).all(), key
    grads = tape.gradient(loss, model.trainable_variables)
    assert len(grads) == len(model.trainable_variables) > 0
    for var, grad in zip(model.trainable_variables, grads):
        assert grad is not None, var.name
        norm = float(tf.norm(grad))
        assert np.isfinite(norm) and norm > 0, (var.name, norm)


def _structures():
    """Every preset at width 1/16, once per distinct network: presets that
    differ only in width (r152_1x_sk1, r152_2x_sk1, r152_3x_sk1, ...) are the
    same network there, so each structure is checked once, under the names
    of all the presets it stands for."""
    structures = {}
    for name in list(PUBLISHED_PARAMS) + ["cifar_r18", "cifar_r50", "tiny"]:
        config = get_preset(name).model
        small = dataclasses.replace(config, width_multiplier=min(config.width_multiplier,
                                                                 0.0625))
        structures.setdefault(repr(small), (small, []))[1].append(name)
    return [pytest.param(config, id="+".join(names))
            for config, names in structures.values()]


def test_width_is_the_only_difference_between_presets_checked_together():
    covered = [name for p in _structures() for name in p.id.split("+")]
    assert sorted(covered) == sorted(list(PUBLISHED_PARAMS) + ["cifar_r18", "cifar_r50",
                                                                 "tiny"])
    assert "r152_1x_sk1+r152_2x_sk1+r152_3x_sk1" in [p.id for p in _structures()]


@pytest.mark.parametrize("config", _structures())
def test_preset_forward_is_finite_and_every_variable_gets_a_gradient(config):
    """Every preset's structure (depth, selective kernels, squeeze-excite,
    stem) at width 1/16: the full-width models are built in
    test_parameter_count_matches_published."""
    model = build_resnet_from_config(config)
    _enable_all_residual_branches(model)
    _check_forward_and_gradients(model, 32 if config.cifar_stem else 64)
    del model
    gc.collect()


def test_zero_init_makes_every_block_start_as_identity_plus_shortcut():
    model = build_resnet(18, 0.25, cifar_stem=True)
    gammas = [v for v in model.variables if "bn_last" in v.name and "gamma" in v.name]
    assert len(gammas) == 8  # one per basic block
    assert all(float(tf.reduce_max(tf.abs(g))) == 0.0 for g in gammas)
    others = [v for v in model.variables if "gamma" in v.name and "bn_last" not in v.name]
    assert others and all(float(tf.reduce_min(g)) == 1.0 for g in others)


def _expected_shapes(size, stem, width, bottleneck):
    c = lambda f: int(round(f * width))  # noqa: E731
    expand = 4 if bottleneck else 1
    if stem == "cifar":
        conv = pool = size
    else:
        conv = -(-size // 2)
        pool = -(-conv // 2)
    g2, g3, g4 = -(-pool // 2), -(-pool // 4), -(-pool // 8)
    return {
        "initial_conv": (2, conv, conv, c(64)),
        "initial_max_pool": (2, pool, pool, c(64)),
        "block_group1": (2, pool, pool, c(64) * expand),
        "block_group2": (2, g2, g2, c(128) * expand),
        "block_group3": (2, g3, g3, c(256) * expand),
        "block_group4": (2, g4, g4, c(512) * expand),
        "final_avg_pool": (2, c(512) * expand),
    }


# Every stem at 224 and 32 px; ResNet-101 (block counts of its own) at 32 px
# only: with the CIFAR stem (stride 1, no pool) at 224 px it took 29 s and
# checks no arithmetic that ResNet-18's CIFAR stem at 224 px does not.
@pytest.mark.parametrize("size,depth,sk_ratio,cifar_stem,stem", [
    (size, *case) for size in (224, 32) for case in [
        (50, 0.0, False, "imagenet"), (50, 0.0625, False, "resnet_d"),
        (18, 0.0, True, "cifar"), (34, 0.0, False, "imagenet")]
] + [(32, 101, 0.0, True, "cifar")])
def test_endpoint_shapes(size, depth, sk_ratio, cifar_stem, stem):
    width = 0.25
    model = build_resnet(depth, width, sk_ratio=sk_ratio, cifar_stem=cifar_stem)
    outputs = model(tf.zeros([2, size, size, 3]), training=False)
    assert tuple(outputs) == ENDPOINTS
    expected = _expected_shapes(size, stem, width, depth >= 50)
    assert {k: tuple(v.shape) for k, v in outputs.items()} == expected
    assert model.output_dim == expected["final_avg_pool"][1]


def test_published_width_endpoint_shapes_at_224():
    model = build_resnet(50, 1, sk_ratio=0.0625)
    outputs = model(tf.zeros([1, 224, 224, 3]))
    assert outputs["initial_conv"].shape == (1, 112, 112, 64)
    assert outputs["block_group4"].shape == (1, 7, 7, 2048)
    assert outputs["final_avg_pool"].shape == (1, 2048)


@pytest.mark.parametrize("width", [0.25, 0.5, 1, 2, 3, 4])
def test_width_multipliers(width):
    model = build_resnet(18, width, cifar_stem=True)
    assert model.output_dim == int(round(512 * width))
    stem_kernel = model.stem.conv.conv.kernel
    assert stem_kernel.shape == (3, 3, 3, int(round(64 * width)))


@pytest.mark.parametrize("depth,blocks", [(18, [2, 2, 2, 2]), (34, [3, 4, 6, 3]),
                                          (50, [3, 4, 6, 3]), (101, [3, 4, 23, 3]),
                                          (152, [3, 8, 36, 3]), (200, [3, 24, 36, 3])])
def test_block_counts_per_depth(depth, blocks):
    model = ResNet(depth=depth, width_multiplier=0.25)
    assert [len(g.blocks) for g in model.block_groups] == blocks
    block_type = "basic" if depth < 50 else "bottleneck"
    assert all(b.block_type == block_type for g in model.block_groups for b in g.blocks)


def test_get_config_round_trips_and_rebuilds_same_function():
    """The clone from get_config() has every constructor argument (none a
    default): its attributes, its batch norms' settings, its frozen stages,
    and the same function."""
    model = build_resnet(50, 0.25, sk_ratio=0.0625, se_ratio=0.25, cifar_stem=True,
                         bn_momentum=0.8, bn_epsilon=1e-3, sync_bn=True,
                         fine_tune_after_block=2, name="rn")
    clone = ResNet.from_config(model.get_config())
    clone.build((None, None, None, 3))
    assert (clone.name, clone.depth, clone.width_multiplier, clone.sk_ratio, clone.se_ratio,
            clone.cifar_stem, clone.fine_tune_after_block) == (
        "rn", 50, 0.25, 0.0625, 0.25, True, 2)
    norms = {(n.momentum, n.epsilon, n.synchronized) for n in clone._flatten_layers()
             if isinstance(n, BatchNormRelu)}
    assert norms == {(0.8, 1e-3, True)}
    assert {_stage_of(v) for v in clone.trainable_variables} == {3, 4}
    clone.set_weights(model.get_weights())
    x = tf.random.uniform([2, 32, 32, 3])
    a, b = model(x, training=False), clone(x, training=False)
    for key in ENDPOINTS:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-5, atol=1e-6)


STAGE_VARIABLE_PREFIXES = ["stem", "block_group1", "block_group2", "block_group3",
                           "block_group4"]


def _stage_of(var):
    for prefix in STAGE_VARIABLE_PREFIXES:
        if f"/{prefix}/" in var.name or var.name.startswith(prefix + "/"):
            return STAGE_VARIABLE_PREFIXES.index(prefix)
    raise AssertionError(f"variable outside every stage: {var.name}")


@pytest.mark.parametrize("freeze", [-1, 0, 1, 2, 3, 4])
def test_fine_tune_after_block_freezes_a_prefix(freeze):
    model = build_resnet(50, 0.25, sk_ratio=0.0625, fine_tune_after_block=freeze)
    _enable_all_residual_branches(model)
    trainable_stages = {_stage_of(v) for v in model.trainable_variables}
    assert trainable_stages == set(range(freeze + 1, 5))
    frozen_moving = [v for v in model.non_trainable_variables
                     if "moving" in v.name and _stage_of(v) <= freeze]
    live_moving = [v for v in model.non_trainable_variables
                   if "moving" in v.name and _stage_of(v) > freeze]
    before_frozen = [v.numpy().copy() for v in frozen_moving]
    before_live = [v.numpy().copy() for v in live_moving]

    images = tf.random.uniform([4, 64, 64, 3])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(images)
        outputs = model(images, training=True)
        loss = tf.reduce_sum(outputs["final_avg_pool"] ** 2)
    # No gradient reaches the frozen prefix (nor the input when anything is frozen).
    image_grad = tape.gradient(loss, images)
    assert (image_grad is None) == (freeze >= 0)
    frozen_vars = [v for v in model.variables
                   if v.dtype == tf.float32 and _stage_of(v) <= freeze
                   and "moving" not in v.name]
    for var, grad in zip(frozen_vars, tape.gradient(loss, frozen_vars)):
        assert grad is None, var.name
    for var, grad in zip(model.trainable_variables,
                         tape.gradient(loss, model.trainable_variables)):
        assert grad is not None and float(tf.norm(grad)) > 0, var.name
    # Frozen batch norms run in inference mode: statistics unchanged.
    for var, before in zip(frozen_moving, before_frozen):
        np.testing.assert_array_equal(var.numpy(), before, err_msg=var.name)
    changed = [not np.array_equal(v.numpy(), b) for v, b in zip(live_moving, before_live)]
    assert all(changed) if live_moving else freeze == 4


def test_freezing_can_be_changed_after_building():
    model = build_resnet(18, 0.25, cifar_stem=True)
    n_all = len(model.trainable_variables)
    model.set_fine_tune_after_block(4)
    assert model.trainable_variables == []
    model.set_fine_tune_after_block(-1)
    assert len(model.trainable_variables) == n_all
    with pytest.raises(ValueError, match="fine_tune_after_block=5"):
        model.set_fine_tune_after_block(5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(depth=42), "depth=42"),
    (dict(depth=50, sk_ratio=-1.0), "sk_ratio=-1.0"),
    (dict(depth=50, width_multiplier=0), "width_multiplier=0"),
    (dict(depth=50, width_multiplier=-2), "width_multiplier=-2"),
    (dict(depth=50, se_ratio=-0.1), "se_ratio=-0.1"),
    (dict(depth=18, sk_ratio=0.0625), "depth >= 50"),
    (dict(depth=50, fine_tune_after_block=7), "fine_tune_after_block=7"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_resnet(**kwargs)


def test_bad_input_shape_is_a_clear_error():
    model = build_resnet(18, 0.25, cifar_stem=True)
    with pytest.raises(ValueError, match=r"\[batch, height, width, 3\]"):
        model(tf.zeros([2, 32, 32, 1]))


def _one_distributed_bn_step(sync_bn):
    """One training forward pass on 2 replicas whose inputs differ; returns
    the stem BN's input per replica and the BN layer."""
    strategy = mirrored_strategy(2)
    with strategy.scope():
        model = build_resnet(18, 0.25, cifar_stem=True, sync_bn=sync_bn)
    images = np.random.rand(4, 8, 8, 3).astype(np.float32)
    images[2:] += 1.0  # replica 1 sees brighter images: local statistics differ
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(4)
    dist_batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

    @tf.function
    def step(x):
        return strategy.run(lambda v: model(v, training=True)["initial_conv"], args=(x,))

    per_replica = [p.numpy() for p in strategy.experimental_local_results(step(dist_batch))]
    return per_replica, model.stem.bn_relu.bn


@pytest.mark.parametrize("sync_bn", [True, False])
def test_sync_batch_norm_uses_global_batch_statistics(sync_bn):
    per_replica, bn = _one_distributed_bn_step(sync_bn)
    assert bn.synchronized == sync_bn
    global_conv = np.concatenate(per_replica)
    # moving_var <- 0.9 * 1 + 0.1 * batch variance (momentum 0.9).
    global_var = global_conv.var(axis=(0, 1, 2))
    mean_local_var = np.mean([p.var(axis=(0, 1, 2)) for p in per_replica], axis=0)
    assert np.abs(global_var - mean_local_var).max() > 1e-3  # the test can tell
    # The fused (local) kernel keeps the unbiased variance; the synchronized
    # one the biased variance.
    unbiased_local_var = np.mean([p.var(axis=(0, 1, 2), ddof=1) for p in per_replica], axis=0)
    expected = global_var if sync_bn else unbiased_local_var
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 + 0.1 * expected,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.moving_mean.numpy(),
                               0.1 * global_conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


def test_mixed_bfloat16_keeps_float32_variables():
    tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build_resnet(50, 0.25, sk_ratio=0.0625, se_ratio=0.25)
    outputs = model(tf.random.uniform([2, 64, 64, 3]), training=True)
    assert outputs["final_avg_pool"].dtype == tf.bfloat16
    assert all(v.dtype == tf.float32 for v in model.variables)
    assert all(np.isfinite(v.numpy().astype(np.float32)).all() for v in outputs.values())


# One fresh process per setting of the two import-time variables (each
# process costs a TensorFlow import, ~6 s of CPU): every TF_USE_LEGACY_KERAS
# value, and oneDNN both left to us and chosen by the user.
@pytest.mark.parametrize("legacy,onednn,expected_onednn",
                         [("0", None, "1"), ("1", "0", "0"), (None, None, "1")])
def test_import_works_whatever_tf_use_legacy_keras_says_and_turns_on_onednn_unless_chosen(
        legacy, onednn, expected_onednn):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_USE_LEGACY_KERAS", "TF_ENABLE_ONEDNN_OPTS")}
    for name, value in (("TF_USE_LEGACY_KERAS", legacy), ("TF_ENABLE_ONEDNN_OPTS", onednn)):
        if value is not None:
            env[name] = value
    code = ("import os, simclr_tf2; print(os.environ['TF_ENABLE_ONEDNN_OPTS']);"
            "import tensorflow as tf, tf_keras;"
            "m = simclr_tf2.build_resnet(18, 0.25, cifar_stem=True);"
            "assert isinstance(m, tf_keras.Model);"
            "print(m(tf.zeros([1, 32, 32, 3]))['final_avg_pool'].shape)")
    result = subprocess.run([sys.executable, "-c", code], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == expected_onednn and lines[-1] == "(1, 128)", lines


def test_public_api():
    assert simclr_tf2.build_resnet is build_resnet
    assert simclr_tf2.get_preset("tiny").model.depth == 18


