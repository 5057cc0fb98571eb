"""Monitors of the representation: effective rank, weighted kNN, the kNN
monitor during pretraining, and the online linear probe's own optimizer."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import mirrored_strategy
from simclr_tf2 import get_preset
from simclr_tf2.data import make_source
from simclr_tf2.models import SimCLRModel
from simclr_tf2.monitors import effective_rank, knn_predict
from simclr_tf2.monitors.knn_monitor import monitor_indices, representation_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numpy_effective_rank(x):
    """exp(entropy of the normalised singular values of the centred rows)."""
    x = np.asarray(x, np.float64)
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def numpy_knn(bank, bank_labels, queries, classes, k, t):
    """Each query: the k most similar bank rows (cosine) vote exp(s / t)."""
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    out = []
    for row in q @ b.T:
        nearest = np.argsort(-row, kind="stable")[:k]
        scores = np.zeros(classes)
        for j in nearest:
            scores[bank_labels[j]] += np.exp(row[j] / t)
        out.append(int(np.argmax(scores)))
    return np.array(out)


@pytest.mark.parametrize("shape", [(40, 6), (5, 12), (16, 16)])
def test_effective_rank_equals_numpy(shape):
    x = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    x[:, 0] *= 10  # an uneven spectrum
    assert float(effective_rank(x)) == pytest.approx(numpy_effective_rank(x), rel=1e-4)


@pytest.mark.parametrize("rank", [1, 3, 10, 50])
def test_effective_rank_of_low_rank_features_has_no_round_off_floor(rank):
    """100 features in 128 dimensions spanning `rank` directions: float32
    round-off in the Gram matrix's eigenvalues must not count as directions
    (it raised rank 1 to 1.04 and rank 3 to 3.00 instead of 2.94)."""
    rng = np.random.default_rng(rank)
    x = (rng.normal(size=(100, rank)) @ rng.normal(size=(rank, 128))) * 5 + 3
    x = x.astype(np.float32)
    assert float(effective_rank(x)) == pytest.approx(numpy_effective_rank(x), rel=1e-4)


def test_effective_rank_of_hand_made_cases():
    line = np.outer(np.arange(8.0), [1.0, 2.0, -1.0]) + 5.0  # one direction
    assert float(effective_rank(line)) == pytest.approx(1.0, abs=1e-3)
    # Two orthogonal directions of equal spread around the mean: rank 2.
    square = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], np.float32)
    assert float(effective_rank(square)) == pytest.approx(2.0, rel=1e-5)
    assert float(effective_rank(np.ones([5, 3]))) == 0.0  # no spread at all
    bad = np.ones([5, 3], np.float32)
    bad[2, 1] = np.nan
    assert np.isnan(float(effective_rank(bad)))


@pytest.mark.parametrize("k,t", [(1, 0.1), (3, 0.1), (5, 1.0), (50, 0.07)])
def test_knn_equals_numpy_on_a_hand_made_bank(k, t):
    rng = np.random.default_rng(k)
    centres = rng.normal(size=(3, 4)) * 2
    bank_labels = np.repeat(np.arange(3), 6)
    bank = centres[bank_labels] + rng.normal(size=(18, 4))
    queries = centres[[0, 1, 2, 2, 1]] + rng.normal(size=(5, 4))
    expected = numpy_knn(bank, bank_labels, queries, 3, min(k, 18), t)
    got = knn_predict(bank, bank_labels, queries, 3, k=k, temperature=t, chunk=2).numpy()
    np.testing.assert_array_equal(got, expected)


def test_knn_votes_are_weighted_by_similarity():
    """Two far neighbours of class 1 against one close neighbour of class 0:
    the weighted vote picks 0 at a low temperature and 1 at a high one."""
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    query = np.array([[1.0, 0.3]])  # cosine 0.96 to class 0, 0.29 to class 1
    assert knn_predict(bank, [0, 1, 1], query, 2, k=3, temperature=0.1).numpy() == [0]
    assert knn_predict(bank, [0, 1, 1], query, 2, k=3, temperature=10.0).numpy() == [1]


def test_monitor_indices_are_a_seeded_subset():
    np.testing.assert_array_equal(monitor_indices(10, 0, 0), np.arange(10))
    np.testing.assert_array_equal(monitor_indices(10, 20, 0), np.arange(10))
    picked = monitor_indices(100, 10, 3)
    assert len(set(picked)) == 10 and list(picked) == sorted(picked)
    np.testing.assert_array_equal(picked, monitor_indices(100, 10, 3))
    assert not np.array_equal(picked, monitor_indices(100, 10, 4))


def _tiny_model(strategy=None):
    config = get_preset("tiny")
    with (strategy or tf.distribute.get_strategy()).scope():
        model = SimCLRModel(config.model, "pretrain")
        model(tf.zeros([1, 32, 32, 3]), training=False)
    return config, model


def test_report_equals_numpy_on_the_models_own_features():
    config, model = _tiny_model()
    source = make_source(config.data, "train", labelled=True)
    bank, queries = np.arange(0, 300, 3), np.arange(1, 100, 5)
    report = representation_report(model, config.data, source, source, 64, k=5,
                                   temperature=0.1, bank_indices=bank,
                                   query_indices=queries)
    from simclr_tf2.data import build_dataset
    features = {}
    for name, ids in (("bank", bank), ("queries", queries)):
        batch = next(iter(build_dataset(source, "eval", len(ids), 32, ids)))
        features[name] = model(batch["image"], training=False)["final_avg_pool"].numpy()
    expected = numpy_knn(features["bank"], source.labels[bank], features["queries"], 10, 5,
                         0.1)
    assert report["knn_top1_final_avg_pool"] == pytest.approx(
        (expected == source.labels[queries]).mean())
    assert report["erank_final_avg_pool"] == pytest.approx(
        numpy_effective_rank(features["bank"]), rel=1e-3)


def test_two_replicas_report_what_one_replica_reports():
    config, model = _tiny_model()
    strategy = mirrored_strategy(2)
    _, mirrored = _tiny_model(strategy)
    mirrored.set_weights(model.get_weights())
    source = make_source(config.data, "train", labelled=True)
    test = make_source(config.data, "test", labelled=True)
    args = dict(k=20, temperature=0.1, bank_indices=np.arange(150),
                query_indices=np.arange(61))  # 61: the last batch is padded
    one = representation_report(model, config.data, source, test, 32, **args)
    two = representation_report(mirrored, config.data, source, test, 32, strategy=strategy,
                                **args)
    assert one["knn_top1_final_avg_pool"] == two["knn_top1_final_avg_pool"]
    assert one["erank_final_avg_pool"] == pytest.approx(two["erank_final_avg_pool"],
                                                        rel=1e-5)


def test_the_probe_trains_at_its_own_rate_whatever_the_pretraining_rate():
    """A pretraining learning rate of 1e6: the probe's first step is still
    -probe_learning_rate x its gradient (momentum SGD starts from zero)."""
    from simclr_tf2.data.builtin import load_builtin
    from simclr_tf2.training import Learner, supervised_loss
    config = get_preset("tiny").override(**{
        "train.train_batch_size": 16, "train.learning_rate": 1e6,
        "monitor.probe_learning_rate": 0.05})
    learner = Learner(config, "pretrain", total_steps=10)
    data = load_builtin("digits", "train", 32)
    images = tf.constant(data.images[:16])
    batch = {"view1": images, "view2": images * 0.9,
             "label": tf.constant(data.labels[:16], tf.int32)}
    head = learner.model.supervised_head.trainable_variables
    before = [v.numpy() for v in head]
    with tf.GradientTape() as tape:
        logits = learner.model([batch["view1"], batch["view2"]], training=True)["logits_sup"]
        loss, _ = supervised_loss(tf.concat([batch["label"]] * 2, 0), logits)
    grads = tape.gradient(loss, head)
    metrics = learner.replica_step(batch)
    assert np.isfinite(float(metrics["probe_loss"])) and "sup_loss" not in metrics
    for b, g, v in zip(before, grads, head):
        np.testing.assert_allclose(v.numpy() - b, -0.05 * g.numpy(), rtol=1e-3, atol=1e-7)
    assert int(learner.probe_optimizer.iterations) == 1 and int(learner.step) == 1
    assert "probe_optimizer" in learner.checkpoint_items()


_WITH_AND_WITHOUT = textwrap.dedent("""
    import json, sys
    import simclr_tf2
    import numpy as np, tensorflow as tf
    from simclr_tf2 import get_preset
    from simclr_tf2.training.runner import RunConfig, run
    root = sys.argv[1]
    weights = {}
    for interval in (0, 3):
        config = get_preset("tiny").override(**{
            "train.train_steps": 6, "train.steps_per_loop": 3,
            "train.summary_interval": 3, "train.train_batch_size": 16,
            "monitor.knn_interval": interval,
            "monitor.knn_bank_size": 200, "monitor.knn_eval_size": 100,
            "export.export_at_end": False})
        outcome = run(config, RunConfig(mode="pretrain", model_dir=f"{root}/k{interval}",
                                        deterministic=True), verbose=False)
        weights[interval] = [v.numpy() for v in outcome["learner"].model.weights]
        if interval:
            print("MONITOR" + json.dumps(outcome["monitor"]))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(weights[0], weights[3]))
    print("DIFF", diff)
""")


@pytest.mark.slow
def test_training_ends_in_the_same_weights_with_and_without_the_monitor(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(_WITH_AND_WITHOUT)
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert float(next(l for l in lines if l.startswith("DIFF")).split()[1]) == 0.0
    monitor = json.loads(next(l for l in lines if l.startswith("MONITOR"))[len("MONITOR"):])
    # Six steps teach nothing to measure: the report must be a count over the
    # 100 queries, the same in the run's outcome, monitor.json and TensorBoard.
    assert monitor["step"] == 6 and round(monitor["knn_top1"] * 100, 6).is_integer()
    record = json.load(open(tmp_path / "k3" / "monitor.json"))
    assert [h["step"] for h in record["history"]] == [3, 6]
    assert record["history"][-1] == monitor
    from simclr_tf2.training.summaries import read_scalars
    scalars = read_scalars(str(tmp_path / "k3"), "monitor")
    assert scalars["knn_top1"][-1] == (6, pytest.approx(monitor["knn_top1"]))
    assert record["monitor_seconds"] > 0
    assert os.listdir(tmp_path / "k3" / "summaries" / "monitor")


# Effective rank of the projections per loop, as the runs printed them
# (bench/RESULTS.md, "Collapse alarm"): mnist5k at batch 128 for 186 steps,
# queue 1024, momentum 0.99, with the paper's online positives (collapses)
# and with the default both; the digits demo's whole pretraining (default).
BROKEN = [41.5, 11.2, 8.1, 7.39, 7.13, 6.29]
DEFAULT = [47.5, 28.3, 18.9, 19.2, 19.7, 20.3]
DEMO = [26.7, 19.5, 15.9, 15.1, 15.8, 15.4, 16, 15.9, 16.2, 16.5, 17.1, 17.6, 17.9, 18.1,
        18.3, 18.5, 18.5]


def test_the_collapse_alarm_fires_on_the_collapsed_run_only_and_once():
    from simclr_tf2.configs.schema import MonitorConfig
    from simclr_tf2.monitors.representation import CollapseWatch
    ratio = MonitorConfig().collapse_alarm
    warnings = {}
    for name, ranks, loop in (("broken", BROKEN, 31), ("default", DEFAULT, 31),
                              ("demo", DEMO, 20)):
        watch = CollapseWatch(ratio)
        said = [(step, w) for step, w in ((loop * (i + 1), watch.update(r, loop * (i + 1)))
                                          for i, r in enumerate(ranks)) if w]
        warnings[name] = said
    assert not warnings["default"] and not warnings["demo"]
    ((step, said),) = warnings["broken"]  # once, at the first value below 1/4
    assert step == 93 and "fell to 8.1, below 0.25 of its peak 41.5 at step 31" in said
    assert CollapseWatch(0.0).update(1.0, 2) is None  # off
    off = CollapseWatch(0.0)
    assert off.update(40.0, 1) is None and off.update(1.0, 2) is None


def test_the_trainer_warns_once_or_stops_on_collapse(capsys):
    import types
    from simclr_tf2.configs.schema import MonitorConfig
    from simclr_tf2.errors import CollapseError
    from simclr_tf2.monitors.representation import CollapseWatch
    from simclr_tf2.training.trainer import SimCLRTrainer

    def trainer(stop):
        config = types.SimpleNamespace(monitor=MonitorConfig(stop_on_collapse=stop))
        return types.SimpleNamespace(learner=types.SimpleNamespace(config=config),
                                     verbose=True, collapse=CollapseWatch(0.25),
                                     diagnostics=[],
                                     MEMORY_METRICS=SimCLRTrainer.MEMORY_METRICS)
    warned = trainer(stop=False)
    for step, rank in ((31, 41.5), (62, 11.2), (93, 8.1), (124, 7.0)):
        SimCLRTrainer._watch_collapse(warned, {"erank_projection": rank, "cos_queue": 0.5,
                                               "loss": 3.0}, step)
    SimCLRTrainer._watch_collapse(warned, {"loss": 1.0}, 155)  # no memory: no rank
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: step 93: the projections'")
    # Each loop's diagnostics are kept for monitor.json (the loss is not one).
    assert warned.diagnostics[2] == {"step": 93, "erank_projection": 8.1, "cos_queue": 0.5}
    assert [d["step"] for d in warned.diagnostics] == [31, 62, 93, 124]
    stopping = trainer(stop=True)
    SimCLRTrainer._watch_collapse(stopping, {"erank_projection": 41.5}, 31)
    with pytest.raises(CollapseError, match="step 62: .* Stopped \\(--stop_on_collapse\\); "
                                            "the last checkpoint is kept"):
        SimCLRTrainer._watch_collapse(stopping, {"erank_projection": 9.0}, 62)


def test_the_knn_monitor_watches_the_backbone_rank_of_every_run(monkeypatch, capsys):
    """Runs without the memory have no per-step rank; the kNN monitor's
    backbone rank (over the bank) is watched in every pretraining it reports
    on, with the same threshold; --stop_on_collapse stops there too."""
    import types
    from simclr_tf2.errors import CollapseError
    from simclr_tf2.monitors import knn_monitor
    from simclr_tf2.monitors.representation import CollapseWatch
    ranks = iter([30.0, 33.0, 12.0, 8.0, 7.0])
    monkeypatch.setattr(knn_monitor, "report_of", lambda *args: {
        "knn_top1_final_avg_pool": 0.5, "erank_final_avg_pool": next(ranks)})

    def monitor(stop):
        return types.SimpleNamespace(
            bank=None, queries=None, k=5, temperature=0.1, seconds=0.0, history=[],
            verbose=True, step=tf.Variable(0, dtype=tf.int64), stop_on_collapse=stop,
            collapse=CollapseWatch(0.25, name="the backbone's effective rank (kNN monitor)"))
    watched = monitor(stop=False)
    for step in (10, 20, 30, 40):
        watched.step.assign(step)
        knn_monitor.KnnMonitor.evaluate(watched, None)
    warnings = [line for line in capsys.readouterr().out.splitlines()
                if line.startswith("warning:")]
    assert warnings == [
        warnings[0]] and warnings[0].startswith(
        "warning: step 40: the backbone's effective rank (kNN monitor) fell to 8, below "
        "0.25 of its peak 33 at step 20")
    stopping = monitor(stop=True)
    stopping.collapse.update(40.0, 5)
    with pytest.raises(CollapseError, match="step 0: the backbone's .* fell to 7"):
        knn_monitor.KnnMonitor.evaluate(stopping, None)


def test_memory_diagnostics_reach_monitor_json(shared_runs):
    """The shared pretraining (memory, kNN monitor): each loop's diagnostics
    in monitor.json, at the loops' steps, the values TensorBoard has."""
    from conftest import SHARED_PRETRAIN_STEPS
    from simclr_tf2.tasks.pretrain import MEMORY_METRICS
    from simclr_tf2.training.summaries import read_scalars
    record = json.load(open(os.path.join(shared_runs["pretrain"], "monitor.json")))
    diagnostics = record["memory_diagnostics"]
    assert [d["step"] for d in diagnostics] == list(range(6, SHARED_PRETRAIN_STEPS + 1, 6))
    scalars = read_scalars(shared_runs["pretrain"])
    for name in MEMORY_METRICS:
        assert [(d["step"], pytest.approx(d[name], rel=1e-5)) for d in diagnostics] == \
            scalars[name], name
