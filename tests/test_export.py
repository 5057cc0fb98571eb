"""Hub export: one SavedModel per head layer, reusable in tf_keras and Keras 3."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from simclr_tf2 import get_preset
from simclr_tf2.export import (ExportError, export_hub_modules, exported_steps,
                               load_hub_module, read_export_metadata)
from simclr_tf2.models import SimCLRModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP = 7


def _config(**overrides):
    values = {"train.weight_decay": 1e-3}
    values.update(overrides)
    return get_preset("tiny").override(**values)


def _images(n=6, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A live tiny model (BN statistics moved off their init) and its export."""
    tf.random.set_seed(1)
    config = _config()
    model = SimCLRModel(config.model, "pretrain")
    for seed in range(3):  # non-trivial moving statistics
        model(_images(16, seed) * 0.5 + 0.2, training=True)
    root = str(tmp_path_factory.mktemp("export"))
    path = export_hub_modules(model, root, config=config, step=STEP)  # defaults
    return model, config, root, path


def _bn_moving_mean(module):
    return next(v for v in module.variables if v.name.endswith("moving_mean:0"))


def test_one_module_per_head_layer_with_the_live_outputs(exported):
    model, config, root, path = exported
    assert path == os.path.join(root, str(STEP))
    assert sorted(os.listdir(path)) == ["head_0", "head_1", "head_2", "head_3"]
    images = _images()
    live = model(images, training=False)
    widths = {0: 128, 1: 128, 2: 128, 3: config.model.proj_out_dim}
    for k in range(4):
        module = tf.saved_model.load(os.path.join(path, f"head_{k}"))
        out = module(tf.constant(images), training=False)
        expected = live["proj_head_input"] if k == 0 else live[f"proj_head_layer{k}"]
        assert out["default"].shape[-1] == widths[k]
        np.testing.assert_allclose(out["default"], expected, atol=1e-5)
        for name in ("initial_conv", "initial_max_pool", "block_group1", "block_group4",
                     "final_avg_pool", "proj_head_input", "proj_head_output", "logits_sup"):
            np.testing.assert_allclose(out[name], live[name], atol=1e-5, err_msg=name)
        served = module.signatures["serving_default"](images=tf.constant(images))
        np.testing.assert_allclose(served["default"], expected, atol=1e-5)


def test_trainable_variables_are_what_the_head_layer_depends_on(exported):
    model, config, _, path = exported
    backbone = {v.name for v in model.backbone.trainable_weights}
    for k in range(4):
        module = tf.saved_model.load(os.path.join(path, f"head_{k}"))
        names = {v.name for v in module.trainable_variables}
        head = names - backbone
        assert backbone <= names
        assert {n.split("/")[2] for n in head} == {f"proj_{kind}{i}" for i in range(1, k + 1)
                                                 for kind in ("dense", "bn")}
        assert not any("moving" in n for n in names)
        assert len(module.variables) == len(model.weights)
        # weight_decay * sum ||W||^2 / 2 over the trained conv and dense kernels.
        kernels = [v.numpy() for v in module.trainable_variables if v.name.endswith("kernel:0")]
        expected = config.train.weight_decay * sum((w ** 2).sum() / 2 for w in kernels)
        assert len(module.regularization_losses) == 1
        assert float(module.regularization_losses[0]()) == pytest.approx(expected, rel=1e-5)


def test_training_true_uses_batch_statistics_and_updates_the_moving_ones(exported):
    model, _, _, path = exported
    module = tf.saved_model.load(os.path.join(path, "head_1"))
    images = _images(8, seed=5)
    mean = _bn_moving_mean(module)
    before = mean.numpy().copy()
    inference = module(tf.constant(images), training=False)["initial_max_pool"]
    np.testing.assert_array_equal(mean.numpy(), before)
    train = module(tf.constant(images), training=True)["initial_max_pool"]
    assert not np.allclose(mean.numpy(), before)
    # The stem's BN in training mode: batch mean / variance of initial_conv.
    conv = module(tf.constant(images), training=False)["initial_conv"].numpy()
    stem_bn = next(v for v in module.variables if "stem/bn_relu" in v.name
                   and v.name.endswith("gamma:0"))
    beta = next(v for v in module.variables if "stem/bn_relu" in v.name
                and v.name.endswith("beta:0"))
    mu, var = conv.mean((0, 1, 2)), conv.var((0, 1, 2))
    expected = np.maximum((conv - mu) / np.sqrt(var + 1e-5) * stem_bn.numpy() + beta.numpy(), 0)
    np.testing.assert_allclose(train, expected, atol=1e-4)  # cifar stem: no max-pool
    assert not np.allclose(train, inference, atol=1e-3)


def test_default_exports_accept_training_and_the_authors_trainable(exported, tmp_path):
    model, config, _, path = exported
    images = tf.constant(_images())
    module = tf.saved_model.load(os.path.join(path, "head_0"))
    np.testing.assert_allclose(module(images, trainable=False)["logits_sup"],
                               model(images, training=False)["logits_sup"], atol=1e-5)
    # Training mode moves the module's own BN statistics: compare each call
    # with the other convention on a fresh load.
    for flag in (False, True):
        ours = tf.saved_model.load(os.path.join(path, "head_0"))
        np.testing.assert_allclose(module(images, trainable=flag)["logits_sup"],
                                   ours(images, training=flag)["logits_sup"], atol=1e-5)
    plain = export_hub_modules(model, str(tmp_path), config=config, step=1,
                               official_call_convention=False)
    module = tf.saved_model.load(os.path.join(plain, "head_0"))
    with pytest.raises((TypeError, ValueError)):
        module(images, trainable=False)


def test_the_authors_notebook_code_path_runs_on_our_export(exported):
    """The authors' tf2 fine-tuning and inference colabs, as their README
    shows them: a Keras model that holds tf.saved_model.load(path), calls it
    with `trainable=False`, trains a new Dense head on `final_avg_pool` with
    a GradientTape inside `call`, in a tf.function step; inference reads
    `logits_sup` of the same call."""
    model, config, _, path = exported
    num_classes = 3

    class AuthorsStyleModel(tf_keras.Model):
        def __init__(self, saved_model_path):
            super().__init__()
            self.saved_model = tf.saved_model.load(saved_model_path)
            self.dense_layer = tf_keras.layers.Dense(units=num_classes,
                                                     name="head_supervised_new")
            self.optimizer = tf_keras.optimizers.SGD(0.5, momentum=0.9)

        def call(self, x):
            with tf.GradientTape() as tape:
                outputs = self.saved_model(x["image"], trainable=False)
                logits_t = self.dense_layer(outputs["final_avg_pool"])
                loss_t = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
                    labels=tf.one_hot(x["label"], num_classes), logits=logits_t))
            weights = self.dense_layer.trainable_weights
            grads = tape.gradient(loss_t, weights)
            self.optimizer.apply_gradients(zip(grads, weights))
            return loss_t, x["image"], logits_t, x["label"]

    authors = AuthorsStyleModel(os.path.join(path, "head_0"))

    @tf.function
    def train_step(x):
        return authors(x)

    batch = {"image": tf.constant(_images(12, seed=5)),
             "label": tf.constant(np.arange(12) % num_classes)}
    frozen = [v.numpy() for v in authors.saved_model.variables]
    losses = [float(train_step(batch)[0]) for _ in range(15)]
    # The tiny random network's features are small, so the head learns
    # slowly; what matters is that it learns through this call path.
    assert losses[-1] < losses[0] - 0.005, losses
    # Only their new head trains: the module, called with trainable=False, keeps
    # its weights and batch-norm statistics.
    for before, variable in zip(frozen, authors.saved_model.variables):
        np.testing.assert_array_equal(variable.numpy(), before, err_msg=variable.name)
    # Inference as in their load_and_inference colab.
    images = tf.constant(_images())
    logits = authors.saved_model(images, trainable=False)["logits_sup"]
    np.testing.assert_allclose(logits, model(images, training=False)["logits_sup"],
                               atol=1e-5)
    np.testing.assert_array_equal(tf.argmax(logits, -1),
                                  tf.argmax(model(images, training=False)["logits_sup"], -1))


def test_metadata_and_readme_describe_the_module(exported):
    _, config, _, path = exported
    meta = read_export_metadata(os.path.join(path, "head_2"))
    assert meta["head"] == 2 and meta["default_output"] == "proj_head_layer2"
    assert meta["image_size"] == 32 and "[0, 1]" in meta["input"]
    assert meta["step"] == STEP and meta["official_call_convention"] is True
    assert meta["train_mode"] is None  # a live model: the caller did not say
    assert meta["experiment"]["model"]["depth"] == config.model.depth
    readme = open(os.path.join(path, "head_2", "README.md")).read()
    assert "hub.KerasLayer" in readme and "TFSMLayer" in readme


def test_keep_hub_module_max_prunes_and_same_step_replaces(tmp_path):
    config = _config()
    model = SimCLRModel(config.model, "finetune")
    model(_images(2))
    root = str(tmp_path)
    for step in (1, 2, 3):
        export_hub_modules(model, root, config=config, step=step, keep_hub_module_max=2)
    assert exported_steps(root) == [2, 3]
    # A fine-tuning model (selector 0) keeps no projection layer: head_0 only.
    assert os.listdir(os.path.join(root, "3")) == ["head_0"]
    # Same step again after a weight changed: the export is replaced, contents too.
    kernel = model.backbone.trainable_variables[0]
    before = kernel.numpy()
    kernel.assign_add(tf.ones_like(kernel))
    export_hub_modules(model, root, config=config, step=3, keep_hub_module_max=2)
    assert sorted(os.listdir(root)) == ["2", "3"]
    assert _exported_kernel(root, 3, kernel) == pytest.approx(before + 1)
    assert _exported_kernel(root, 2, kernel) == pytest.approx(before)


def _exported_kernel(root, step, kernel):
    """The exported head_0's copy of the live variable `kernel`."""
    module = tf.saved_model.load(os.path.join(root, str(step), "head_0"))
    (value,) = [v.numpy() for v in module.variables if v.name == kernel.name]
    return value


def _sigterm_on_call(monkeypatch, owner, name, call):
    """Makes the `call`-th call of owner.name first send this process SIGTERM."""
    import signal
    real, calls = getattr(owner, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, wrapped)


def test_sigterm_during_an_export_leaves_a_whole_export_in_place(tmp_path, monkeypatch):
    """SIGTERM while the modules are written: ExportInterrupted (exit 75), the
    previous export of that step untouched and the partial copy removed.
    SIGTERM between the renames that swap the finished copy in: held until
    the swap is done, then raised; the new export is in place, whole."""
    import signal
    from simclr_tf2.errors import ExportInterrupted
    config = _config(**{"model.num_proj_layers": 1})  # head_0 and head_1
    model = SimCLRModel(config.model, "pretrain")
    model(_images(2))
    root = str(tmp_path)
    export_hub_modules(model, root, config=config, step=3)
    kernel = model.backbone.trainable_variables[0]
    before = kernel.numpy()
    kernel.assign_add(tf.ones_like(kernel))
    handler = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:  # during the second head's SavedModel
        _sigterm_on_call(patch, tf.saved_model, "save", 2)
        with pytest.raises(ExportInterrupted, match="previous exports are intact") as stop:
            export_hub_modules(model, root, config=config, step=3)
    assert stop.value.exit_code == 75 and signal.getsignal(signal.SIGTERM) is handler
    assert sorted(os.listdir(root)) == ["3"]  # no partial copy
    assert sorted(os.listdir(os.path.join(root, "3"))) == ["head_0", "head_1"]
    assert _exported_kernel(root, 3, kernel) == pytest.approx(before)
    with monkeypatch.context() as patch:  # after moving the old export aside
        _sigterm_on_call(patch, tf.io.gfile, "rename", 1)
        with pytest.raises(ExportInterrupted, match="is complete"):
            export_hub_modules(model, root, config=config, step=3)
    assert sorted(os.listdir(root)) == ["3"]
    assert sorted(os.listdir(os.path.join(root, "3"))) == ["head_0", "head_1"]
    assert _exported_kernel(root, 3, kernel) == pytest.approx(before + 1)


def test_leftovers_of_interrupted_exports_are_cleaned_or_restored(tmp_path):
    config = _config()
    model = SimCLRModel(config.model, "finetune")
    model(_images(2))
    root = str(tmp_path)
    export_hub_modules(model, root, config=config, step=1)
    os.rename(os.path.join(root, "1"), os.path.join(root, ".old-1-deadbeef"))
    os.makedirs(os.path.join(root, ".tmp-2-cafe0000", "head_0"))
    export_hub_modules(model, root, config=config, step=3, keep_hub_module_max=0)
    assert sorted(os.listdir(root)) == ["1", "3"]
    tf.saved_model.load(os.path.join(root, "1", "head_0"))


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(ExportError, match="config.json not found"):
        export_hub_modules(str(tmp_path))
    with pytest.raises(ExportError, match="not a SavedModel directory"):
        load_hub_module(str(tmp_path / "nowhere"))
    with pytest.raises(ExportError, match="not a simclr_tf2 hub module"):
        read_export_metadata(str(tmp_path))


_FRESH_PROCESS = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np, tensorflow as tf, tf_keras, keras
    import tensorflow_hub as hub
    path, images_file = sys.argv[1], sys.argv[2]
    images = np.load(images_file)
    report = {}
    for k in range(4):
        head = os.path.join(path, f"head_{k}")
        loaded = tf.saved_model.load(head)
        report[f"saved_model_{k}"] = loaded(tf.constant(images), training=False)["default"].numpy().tolist()
        report[f"tfsm_{k}"] = keras.layers.TFSMLayer(head, call_endpoint="serving_default")(images)["default"].numpy().tolist()
    # Fine-tune head_1 in tf_keras through hub.KerasLayer.
    layer = hub.KerasLayer(os.path.join(path, "head_1"), trainable=True, output_key="default")
    model = tf_keras.Sequential([tf_keras.Input((32, 32, 3)), layer, tf_keras.layers.Dense(10)])
    report["keras_layer_inference"] = model.layers[0](images, training=False).numpy().tolist()
    kernel = next(w for w in layer.trainable_weights if "conv2d/kernel" in w.name)
    moving = next(w for w in layer.non_trainable_weights if "moving_mean" in w.name)
    before_kernel, before_moving = kernel.numpy().copy(), moving.numpy().copy()
    model.compile(tf_keras.optimizers.SGD(0.1),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, np.arange(len(images)) % 10, batch_size=len(images), epochs=1, verbose=0)
    report["kernel_changed"] = float(np.abs(kernel.numpy() - before_kernel).max())
    report["moving_changed"] = float(np.abs(moving.numpy() - before_moving).max())
    report["num_trainable"] = len(layer.trainable_weights)
    report["num_losses"] = len(model.losses)
    print("REPORT" + json.dumps(report))
""")


@pytest.mark.slow
def test_fresh_process_loads_with_saved_model_hub_keras_layer_and_keras3(exported, tmp_path):
    model, _, _, path = exported
    images = _images()
    np.save(tmp_path / "images.npy", images)
    script = tmp_path / "load.py"
    script.write_text(_FRESH_PROCESS)
    result = subprocess.run([sys.executable, str(script), path, str(tmp_path / "images.npy")],
                            capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
                            env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("REPORT"))
    report = json.loads(line[len("REPORT"):])
    live = model(images, training=False)
    for k in range(4):
        expected = live["proj_head_input"] if k == 0 else live[f"proj_head_layer{k}"]
        np.testing.assert_allclose(report[f"saved_model_{k}"], expected, atol=1e-5)
        np.testing.assert_allclose(report[f"tfsm_{k}"], expected, atol=1e-5)
    np.testing.assert_allclose(report["keras_layer_inference"], live["proj_head_layer1"],
                               atol=1e-5)
    assert report["kernel_changed"] > 0  # the backbone fine-tunes
    assert report["moving_changed"] > 0  # BN ran in training mode
    assert report["num_trainable"] == len(model.backbone.trainable_weights) + 3
    assert report["num_losses"] == 1  # the module's weight decay


_KILL_MID_EXPORT = textwrap.dedent("""
    import os, signal, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    from simclr_tf2 import get_preset
    from simclr_tf2.export import export_hub_modules
    from simclr_tf2.models import SimCLRModel
    root, step = sys.argv[1], int(sys.argv[2])
    config = get_preset("tiny").override(**{"model.num_proj_layers": 1})
    model = SimCLRModel(config.model, "pretrain")
    model(tf.zeros([1, 32, 32, 3]))
    save = tf.saved_model.save
    def save_then_die(obj, path, **kwargs):
        save(obj, path, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # after head_0, before head_1
    tf.saved_model.save = save_then_die
    export_hub_modules(model, root, config=config, step=step)
""")


@pytest.mark.slow
def test_export_killed_mid_write_leaves_the_previous_export_loadable(tmp_path):
    """SIGKILL (no handler runs) in the middle of an export: the previous
    export stays whole, the partial copy is removed by the next export."""
    script = tmp_path / "export.py"
    script.write_text(_KILL_MID_EXPORT)
    root = str(tmp_path / "hub")
    config = _config(**{"model.num_proj_layers": 1})  # head_0 and head_1
    model = SimCLRModel(config.model, "pretrain")
    model(_images(2))
    export_hub_modules(model, root, config=config, step=1)
    killed = subprocess.run([sys.executable, str(script), root, "2"], capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert exported_steps(root) == [1]
    assert any(n.startswith(".tmp-2-") for n in os.listdir(root))  # the partial write
    for k in range(2):
        tf.saved_model.load(os.path.join(root, "1", f"head_{k}"))
    export_hub_modules(model, root, config=config, step=3)
    assert sorted(os.listdir(root)) == ["3"]  # keep_hub_module_max=1; partial removed


@pytest.mark.slow
def test_export_command_exports_a_training_run(shared_runs, tmp_path, capsys):
    from conftest import SHARED_PRETRAIN_STEPS
    model_dir = shared_runs["pretrain"]
    # Training exported at the end by default.
    at_end = os.path.join(model_dir, "hub", str(SHARED_PRETRAIN_STEPS))
    assert sorted(os.listdir(at_end)) == ["head_0", "head_1", "head_2", "head_3"]
    env = dict(os.environ)
    command = [sys.executable, os.path.join(ROOT, "export", "export_hub.py")]
    again = str(tmp_path / "again")  # absolute: outside the (shared) run directory
    result = subprocess.run(command + [f"--model_dir={model_dir}", f"--export_dir={again}"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    exported = os.path.join(again, str(SHARED_PRETRAIN_STEPS))
    assert f"exported hub modules to {exported}" in result.stdout
    module = tf.saved_model.load(os.path.join(exported, "head_3"))
    reference = tf.saved_model.load(os.path.join(at_end, "head_3"))
    for export in (exported, at_end):  # the run's own mode, not the experiment's
        assert read_export_metadata(os.path.join(export, "head_3"))["train_mode"] == "pretrain"
    images = tf.constant(_images())
    np.testing.assert_allclose(module(images, trainable=False)["default"],
                               reference(images, training=False)["default"], atol=1e-5)
    # A run directory that is not there: exit status 2 and one error line,
    # from the command's own parse and run (in process: a TensorFlow import
    # less; the script's path to run_command is the one just taken).
    from conftest import export_command
    assert export_command(["export_hub.py", f"--model_dir={tmp_path / 'missing'}"]) == 2
    errors = [l for l in capsys.readouterr().err.splitlines()
              if l.startswith("simclr_tf2.export: error:")]
    assert len(errors) == 1 and "config.json not found" in errors[0]
