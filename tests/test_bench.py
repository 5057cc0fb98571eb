"""The benchmark scripts' plumbing: which stage runs with which flags, pairing
by seed, resuming, reports and plots. Training runs are replaced by a fake
that records each stage's configs (the flagfiles and flags are parsed for
real); one real stage of a few steps checks the path to the library. The
real numbers come from full benchmark runs (bench/RESULTS.md), not tests."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bench_fakes import FakeRun, fake_task, fake_top1

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)
import distill  # noqa: E402
import memory  # noqa: E402
import semisupervised  # noqa: E402


@pytest.fixture
def fake_run(monkeypatch):
    """Every benchmark stage goes through distill.stage, which calls run."""
    fake = FakeRun()
    monkeypatch.setattr(distill, "run", fake)
    return fake


def _by_dir(fake):
    return {os.path.relpath(rc.model_dir): (config, rc) for config, rc in fake.calls}


def _quiet_main(module, argv, capsys):
    report = module.main(argv)
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{\n"):]) == json.loads(json.dumps(report))
    return report


def test_main_table_crosses_pretrainings_with_subsets_runs_each_recipe_and_resumes(
        fake_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The pixel floor is fitted for real on seed 0 (about 10 s); seed 1's is a stand-in.
    real_floor = semisupervised.logistic_regression_pixels
    monkeypatch.setattr(semisupervised, "logistic_regression_pixels", lambda f, seed: (
        real_floor(f, seed) if seed == 0 else {"top1": 0.5, "seconds": 0.0, "examples": 0}))
    argv = ["--workdir", "w", "--pretrain_seeds", "3", "4", "--seeds", "0", "1"]
    report = _quiet_main(semisupervised, argv, capsys)
    assert report["benchmark"] == "semisupervised_mnist5k_main" and not report["quick"]
    assert report["jobs"] == 1 and report["stage_seconds"] > 0
    runs = _by_dir(fake_run)
    # two pretrainings; per subset 3 scratch; per pretraining and subset 3 linear
    # evals, 2 fine-tunings and 2 distillations
    assert len(runs) == 2 + 2 * 3 + 2 * 2 * 7
    for p in (3, 4):
        pretrain, _ = runs[os.path.join("w", f"pretrain_seed{p}")]
        assert pretrain.train.train_epochs == 75 and pretrain.memory.queue_size == 0
        assert pretrain.train.seed == pretrain.data.seed == p
    for seed in (0, 1):
        for fraction, pct in ((0.01, "1pct"), (0.1, "10pct"), (1.0, "100pct")):
            scratch, scratch_run = runs[os.path.join("w", f"seed{seed}", f"scratch_{pct}")]
            assert scratch_run.from_scratch and scratch.model.proj_head_mode == "none"
            for p in (3, 4):
                cell = os.path.join("w", f"pretrain{p}_seed{seed}")
                linear, linear_run = runs[os.path.join(cell, f"linear_eval_{pct}")]
                assert linear_run.training_mode == "linear_eval"
                assert linear_run.checkpoint == os.path.join("w", f"pretrain_seed{p}")
                assert linear.train.linear_eval_cache_features
                assert linear.train.train_epochs == 300  # the flagfile's, at every fraction
                for config in (scratch, linear):
                    assert config.data.label_fraction == fraction
                    assert config.train.seed == config.data.seed == seed
                    assert config.train.bn_recompute
                    assert config.train.bn_recompute_images == "all"
                if fraction < 1:
                    ft, ft_run = runs[os.path.join(cell, f"finetune_{pct}")]
                    assert ft.model.ft_proj_selector == 1 and ft.data.crop_area_min == 0.5
                    assert ft_run.checkpoint == os.path.join("w", f"pretrain_seed{p}")
                    assert ft.train.train_batch_size == semisupervised.SCHEDULE[fraction][0]
                    assert ft.train.seed == ft.data.seed == seed
                    _, distill_run = runs[os.path.join(cell, f"distill_{pct}")]
                    assert distill_run.teacher == os.path.join(cell, f"finetune_{pct}")
    results, summary = report["results"], report["summary"]
    names = {"simclrv2_linear_eval": "linear_eval", "simclrv2_finetune": "finetune",
             "simclrv2_distill": "distill", "scratch": "scratch"}
    for method, fractions in (("scratch", 3), ("simclrv2_linear_eval", 3),
                              ("simclrv2_finetune", 2), ("simclrv2_distill", 2)):
        assert len(summary[method]) == fractions
        pretrainings = [None] if method == "scratch" else [3, 4]
        for pct, records in results[method].items():
            expected = np.array([[100 * fake_top1(os.path.join(
                "w", ("" if p is None else f"pretrain{p}_") + f"seed{s}",
                f"{names[method]}_{pct}")) for s in (0, 1)] for p in pretrainings])
            assert sorted((r["pretraining"], r["subset"]) for r in records) == [
                (p, s) for p in pretrainings for s in (0, 1)]
            cell = summary[method][pct]
            assert cell["values"] == expected.round(2).tolist()
            assert cell["mean"] == pytest.approx(expected.mean())
            assert cell["pretrainings"] == len(pretrainings) and cell["subsets"] == 2
            lo, hi = cell["interval"]
            assert lo < cell["mean"] < hi
    # Paired on the same subsets: the teacher's cell subtracted from its student's.
    diff = report["paired"]["distilled student minus its fine-tuned teacher"]["10pct"]
    assert diff["mean"] == pytest.approx(summary["simclrv2_distill"]["10pct"]["mean"]
                                         - summary["simclrv2_finetune"]["10pct"]["mean"])
    scratch_diff = report["paired"]["fine-tuned minus the same backbone from scratch"]
    assert scratch_diff["1pct"]["pretrainings"] == 2  # the baseline under each pretraining
    # The pixel floor is real (scikit-learn on the real subsets) and learns.
    assert set(summary["logistic_regression_pixels"]) == {"1pct", "10pct", "100pct"}
    floors = results["logistic_regression_pixels"]
    assert floors["1pct"][0]["examples"] == 40 and floors["100pct"][0]["examples"] == 4000
    assert floors["1pct"][0]["top1"] > 0.4 and floors["100pct"][0]["top1"] > 0.8
    assert set(report["targets"]) == {
        "finetune_1pct_ge_88", "finetune_1pct_minus_scratch_ge_15",
        "finetune_10pct_ge_97.5", "linear_eval_100pct_ge_98", "pretrain_le_30min"}
    assert "| SimCLRv2 fine-tuned from head layer 1 |" in report["markdown"]
    assert os.path.getsize(os.path.join("w", "semisupervised_mnist5k.png")) > 10000
    assert json.load(open(os.path.join("w", "report_main.json")))["results"] == results
    # A rerun reuses every finished stage: nothing trains, same records.
    calls = len(fake_run.calls)
    again = _quiet_main(semisupervised, argv, capsys)
    assert len(fake_run.calls) == calls
    assert {m: r for m, r in again["results"].items() if m != "logistic_regression_pixels"} \
        == {m: r for m, r in results.items() if m != "logistic_regression_pixels"}


def test_main_table_tasks_cover_every_stage_once():
    tasks = semisupervised.main_tasks([7, 8], [0, 1], distill_fractions=(0.1,))
    assert len(tasks) == len(set(tasks)) == 2 * 3 + 2 * 2 * 5
    assert tasks[:3] == [(None, 0, 0.01, "scratch", False), (None, 0, 0.1, "scratch", False),
                         (None, 0, 1.0, "scratch", False)]
    cell = [t for t in tasks if t[:2] == (8, 1)]
    assert cell == [(8, 1, 0.01, "linear_eval", False), (8, 1, 0.01, "finetune", False),
                    (8, 1, 0.1, "linear_eval", False), (8, 1, 0.1, "finetune", True),
                    (8, 1, 1.0, "linear_eval", False)]


@pytest.mark.slow
def test_worker_processes_return_records_in_task_order(tmp_path):
    tasks = semisupervised.main_tasks([0], [0])
    records = semisupervised.run_tasks(tasks, str(tmp_path), {0: "pre"}, False, jobs=2,
                                       task_fn=fake_task)
    assert [r[0][:2] for r in records] == [(kind, fraction) for _, _, fraction, kind, _ in tasks]
    assert [r[0][2]["top1"] for r in records] == [
        fake_top1(f"{p}{s}{fraction}{kind}") for p, s, fraction, kind, _ in tasks]
    assert os.getpid() not in {r[0][2]["pid"] for r in records}  # in worker processes


def test_ablations_pair_each_variant_with_its_control(fake_run, tmp_path, capsys):
    report = _quiet_main(semisupervised, ["--part", "ablations", "--seeds", "0", "2",
                                          "--workdir", str(tmp_path)], capsys)
    rows = report["rows"]
    assert [r["ablation"].split(":")[0] for r in rows] == [
        "head", "memory", "width", "selective kernels"]
    for row in rows:
        control, variant = row["arms"]["control"], row["arms"]["variant"]
        assert control["pretrain_flags"] != variant["pretrain_flags"]
        assert row["variant_minus_control"]["values"] == pytest.approx(
            [v - c for v, c in zip(variant["top1"], control["top1"])])
    # The three ResNet-18 controls share one pretraining run; every arm
    # pretrains ABLATION_EPOCHS.
    pretrains = [(c, rc) for c, rc in fake_run.calls if rc.mode == "pretrain"]
    names = sorted(os.path.basename(rc.model_dir) for _, rc in pretrains)
    assert names == sorted(["base", "num_proj_layers_2", "queue_size_1024+memory_momentum_0.99",
                            "width_multiplier_0.5", "depth_50", "depth_50+sk_ratio_0.0625"])
    assert {c.train.train_epochs for c, _ in pretrains} == {semisupervised.ABLATION_EPOCHS}
    memory_arm = next(c for c, rc in pretrains if "queue" in rc.model_dir)
    assert memory_arm.memory.queue_size == 1024 and memory_arm.memory.momentum == 0.99
    # --ablations picks rows; finished arms are reused.
    calls = len(fake_run.calls)
    only = _quiet_main(semisupervised, ["--part", "ablations", "--seeds", "0", "2",
                                        "--workdir", str(tmp_path), "--ablations", "memory"],
                       capsys)
    assert [r["ablation"].split(":")[0] for r in only["rows"]] == ["memory"]
    assert only["rows"][0] == rows[1] and len(fake_run.calls) == calls


def test_variants_reach_their_runs_configs(fake_run, tmp_path, capsys):
    report = _quiet_main(semisupervised, ["--part", "variants", "--seeds", "0", "1",
                                          "--workdir", str(tmp_path)], capsys)
    rows = report["rows"]
    assert len(rows) == 4 and rows[0]["minus_first"]["values"] == [0.0, 0.0]
    for index, row in enumerate(rows):
        assert row["minus_first"]["values"] == pytest.approx(
            [v - c for v, c in zip(row["top1"], rows[0]["top1"])])
        config, _ = _by_dir(fake_run)[os.path.relpath(
            os.path.join(str(tmp_path), f"variant{index}", "seed1"))]
        expected = "all" if "--bn_recompute_images=all" in row["finetune_flags"] else \
            "labelled"
        assert config.train.bn_recompute_images == expected
        assert config.model.ft_proj_selector == (
            0 if "--ft_proj_selector=0" in row["finetune_flags"] else 1)


def test_reused_pretraining_reports_the_reused_runs_record(tmp_path):
    """--pretrain_dir: the report carries the reused run's own time (the
    30-minute target reads it), or only the path when no record exists."""
    run = tmp_path / "pretrain"
    run.mkdir()
    assert semisupervised._pretraining(str(tmp_path), str(run), quick=False) == (
        str(run), {"reused": str(run)})
    (run / "bench_done.json").write_text(json.dumps({"seconds": 1186.5, "steps": 2344}))
    directory, record = semisupervised._pretraining(str(tmp_path), str(run), quick=False)
    assert directory == str(run)
    assert record == {"seconds": 1186.5, "steps": 2344, "reused": str(run)}
    assert semisupervised.targets({}, {0: record})["pretrain_le_30min"]
    assert not semisupervised.targets({}, {0: record, 1: {"seconds": 1801}})[
        "pretrain_le_30min"]  # every pretraining within 30 minutes


def test_distill_benchmark_runs_teacher_student_and_baseline_per_seed(fake_run, tmp_path,
                                                                      capsys):
    report = _quiet_main(distill, ["--workdir", str(tmp_path), "--seeds", "0", "1"], capsys)
    assert report["benchmark"] == "distill_mnist5k"
    runs = _by_dir(fake_run)
    for seed in (0, 1):
        base = os.path.relpath(os.path.join(str(tmp_path), f"seed{seed}"))
        teacher, _ = runs[os.path.join(base, "teacher_finetune_10pct")]
        assert teacher.data.label_fraction == 0.1 and teacher.train.seed == seed
        _, student_run = runs[os.path.join(base, "student_distilled")]
        assert student_run.teacher == os.path.join(str(tmp_path), f"seed{seed}",
                                                   "teacher_finetune_10pct")
        _, baseline_run = runs[os.path.join(base, "student_labels_only")]
        assert baseline_run.from_scratch and baseline_run.training_mode == "finetune"
    summary = report["summary"]
    seeds = report["per_seed"]
    assert summary["student_minus_teacher"]["values"] == pytest.approx(
        [s["student_distilled"]["top1"] - s["teacher"]["top1"] for s in seeds])
    calls = len(fake_run.calls)
    again = _quiet_main(distill, ["--workdir", str(tmp_path), "--seeds", "0", "1"], capsys)
    assert len(fake_run.calls) == calls and again["per_seed"] == seeds


def test_memory_benchmark_pairs_each_arm_with_its_control(fake_run, tmp_path, capsys,
                                                          monkeypatch):
    probes = []

    def fake_probe(pretrain_dir, seed, quick):
        probes.append(pretrain_dir)
        return {"knn_top1_final_avg_pool": fake_top1(pretrain_dir),
                "knn_top1_proj_head_output": 0.5, "erank_final_avg_pool": 3.0,
                "erank_proj_head_output": 2.0}

    monkeypatch.setattr(memory, "probe", fake_probe)
    report = _quiet_main(memory, ["--part", "batch", "--seeds", "0", "1",
                                  "--workdir", str(tmp_path)], capsys)
    rows = {r["arm"]: r for r in report["rows"]}
    assert sorted(rows) == sorted(name for name, _ in memory.BATCH_ARMS)
    pretrains = {os.path.relpath(rc.model_dir): c for c, rc in fake_run.calls
                 if rc.mode == "pretrain"}
    assert len(pretrains) == len(probes) == 4 * 2
    for (name, flags), seed in ((arm, s) for arm in memory.BATCH_ARMS for s in (0, 1)):
        config = pretrains[os.path.relpath(os.path.join(
            str(tmp_path), memory._slug(name), f"seed{seed}", "pretrain"))]
        assert config.train.train_batch_size == int(name.rsplit(" ", 1)[1])
        assert config.train.train_epochs == memory.EPOCHS and config.train.seed == seed
        assert config.memory.queue_size == (1024 if name.startswith("memory") else 0)
    for batch in (32, 128):
        variant, control = rows[f"memory, batch {batch}"], rows[f"no memory, batch {batch}"]
        for measure in ("finetune_1pct", "linear_eval_10pct", "knn_backbone"):
            assert variant[measure]["minus_control"]["values"] == pytest.approx(
                [v - c for v, c in zip(variant[measure]["values"],
                                       control[measure]["values"])])
        assert "minus_control" not in control["finetune_1pct"]
    assert os.path.getsize(os.path.join(str(tmp_path), "memory_batch.png")) > 10000
    # The digits part: the demo's own flagfiles, measured by 10%-label fine-tuning.
    digits = _quiet_main(memory, ["--part", "digits", "--seeds", "0",
                                  "--workdir", str(tmp_path / "digits")], capsys)
    assert digits["benchmark"] == "memory_digits_digits"
    assert [r["arm"] for r in digits["rows"]] == ["no memory", "memory"]
    assert "finetune_10pct" in digits["rows"][1] and "finetune_1pct" not in digits["rows"][1]
    demo = [c for c, rc in fake_run.calls if "digits" in rc.model_dir]
    assert {c.data.dataset for c in demo} == {"digits"}
    assert sorted(c.memory.queue_size for c in demo if c.train.train_epochs == 15) == [0, 256]
    # The long part: the flagfile's own 75 epochs at batch 128, paired.
    long = _quiet_main(memory, ["--part", "long", "--seeds", "0",
                                "--workdir", str(tmp_path / "long")], capsys)
    assert long["benchmark"] == "memory_mnist5k_long"
    assert [r["arm"] for r in long["rows"]] == ["no memory, batch 128", "memory, batch 128"]
    assert "minus_control" in long["rows"][1]["finetune_1pct"]
    pretrain_long = [c for c, rc in fake_run.calls
                     if "long" in rc.model_dir and rc.mode == "pretrain"]
    assert [(c.train.train_epochs, c.train.train_batch_size, c.memory.queue_size)
            for c in pretrain_long] == [(75, 128, 0), (75, 128, 1024)]
    small = _quiet_main(memory, ["--part", "long", "--seeds", "0", "--long_batches", "32",
                                 "--workdir", str(tmp_path / "long32")], capsys)
    assert [r["arm"] for r in small["rows"]] == ["no memory, batch 32", "memory, batch 32"]
    assert sorted((c.train.train_epochs, c.train.train_batch_size, c.memory.queue_size)
                  for c, rc in fake_run.calls
                  if "long32" in rc.model_dir and rc.mode == "pretrain") == [
        (75, 32, 0), (75, 32, 1024)]
    # Both batch sizes' long reports in one figure.
    reports = []
    for name, report in (("long", long), ("long32", small)):
        reports.append(str(tmp_path / f"{name}.json"))
        with open(reports[-1], "w") as f:
            json.dump(report, f)
    out = str(tmp_path / "long.png")
    drawn = memory.main(["--plot", *reports, "--plot_out", out])
    assert sorted(drawn["arms"]) == sorted(["no memory, batch 128", "memory, batch 128",
                                            "no memory, batch 32", "memory, batch 32"])
    assert os.path.getsize(out) > 10000
    assert memory.control_of("memory, temperature 0.2, batch 32") == \
        "no memory, temperature 0.2, batch 32"
    assert memory.control_of("memory, queue temperature 0.1") == "no memory"
    assert memory.control_of("no memory, batch 32") == "no memory, batch 32"


def test_one_real_stage_trains_on_its_labelled_subset(tmp_path):
    """The path from a benchmark stage into the library, for real: a few
    steps of the 1% scratch stage (flagfile + the table's flags)."""
    model_dir = str(tmp_path / "scratch_1pct")
    record = distill.stage(
        "mnist5k_finetune_1pct.cfg", model_dir,
        [*semisupervised.supervised_args(0.01, 0), "--from_scratch",
         "--proj_head_mode=none", "--ft_proj_selector=0", "--noexport_at_end"],
        quick=True, verbose=False)
    # Four steps teach nothing to measure: the record must be the run's own
    # evaluation, on all 1000 test images.
    result = json.load(open(os.path.join(model_dir, "result.json")))
    assert record["steps"] == 4 and record["top1"] == result["top1"]
    assert result["num_examples"] == 1000 and result["split"] == "test"
    assert record == json.load(open(os.path.join(model_dir, "bench_done.json")))
    # The labelled subset comes from the library's subset code: 40 images.
    assert len(open(os.path.join(model_dir, "labelled_ids.txt")).read().split()) == 40
    assert distill.stage("mnist5k_finetune_1pct.cfg", model_dir, quick=True) == record


@pytest.mark.slow
def test_input_pipeline_benchmark_compares_with_a_baseline_revision_in_one_run():
    """bench/input_pipeline.py --baseline: both revisions measured, the ratios
    are those of its own rows, and the temporary worktree is removed."""
    cases = ["224px_from_500x375_jpeg", "32px_digits"]  # of 4: the test's cost
    result = subprocess.run([sys.executable, os.path.join(BENCH, "input_pipeline.py"),
                             "--images", "32", "--seconds", "0.5", "--baseline", "HEAD",
                             "--rounds", "1", "--device_rounds", "1",
                             "--cases", ",".join(cases)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{\n"):])
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert report["baseline"] == head
    assert [case["case"] for case in report["cases"]] == cases
    for case in report["cases"]:
        for key in ("library_images_per_s", "naive_images_per_s", "baseline_images_per_s",
                    "library_cpu_ms_per_image", "naive_cpu_ms_per_image",
                    "baseline_cpu_ms_per_image", "library_cores_busy", "naive_cores_busy",
                    "library_first_batch_s", "baseline_first_batch_s"):
            assert case[key] > 0, key
        assert case["speedup_vs_naive"] == pytest.approx(
            case["library_images_per_s"] / case["naive_images_per_s"], rel=0.02)
        assert case["cpu_vs_baseline"] == pytest.approx(
            case["library_cpu_ms_per_image"] / case["baseline_cpu_ms_per_image"], rel=0.01)
        if case["case"].endswith("jpeg"):  # the file path against whole decodes
            for key in ("pretrain_whole_decode", "finetune", "finetune_whole_decode"):
                assert case[f"{key}_cpu_ms_per_image"] > 0, key
        # --augment_on=device: the host's part, the batched ops, their ratios
        for key in ("device_round_host", "device_host", "device_ops"):
            assert case[f"{key}_cpu_ms_per_image"] > 0, key
        assert 0 < case["device_host_over_host"] < case["device_total_over_host"]
    headline = report["cases"][0]  # also measured without the XLA colour call
    assert headline["pretrain_no_xla_cpu_ms_per_image"] > 0
    assert headline["pretrain_no_xla_first_batch_s"] > 0
    assert "pretrain_no_xla_cpu_ms_per_image" not in report["cases"][1]
    assert "pretrain_whole_decode_cpu_ms_per_image" not in report["cases"][1]  # digits
    worktrees = subprocess.run(["git", "-C", ROOT, "worktree", "list"], capture_output=True,
                               text=True, check=True).stdout
    assert "baseline" not in worktrees


@pytest.mark.slow
def test_data_scale_benchmark_fits_generates_and_times_a_run_with_its_calls(tmp_path):
    """bench/data_scale.py's and bench/run_costs.py's pieces: the line fit,
    the generated folder, one measured run, a checkpoint moved to a late
    step (the whole benchmarks: RESULTS.md)."""
    import data_scale
    a, b = data_scale.fit([1000, 5000], [2.5 + 1000 * 3e-6, 2.5 + 5000 * 3e-6])
    assert a == pytest.approx(2.5) and b == pytest.approx(3.0)
    root = data_scale.generate(str(tmp_path / "folder"), 150, val=20)
    train = os.path.join(root, "train")
    assert len(os.listdir(train)) == data_scale.CLASSES
    assert sum(len(files) for _, _, files in os.walk(train)) == 150
    # One run through bench/run_costs.py's child, which wraps data_scale's
    # (timings, calls) with the kNN reports and the peak memory.
    import run_costs
    import tensorflow as tf
    argv = data_scale.COMMON + ["--dataset=folder", f"--data_dir={root}",
                                f"--model_dir={tmp_path / 'run'}", "--knn_bank_size=40",
                                "--knn_eval_size=20", "--knn_interval=1"]
    first = run_costs.run_child("run", argv + ["--train_steps=1"])
    assert 0 < first["startup_s"] < first["first_step_at_s"]
    assert first["build_s"] > 0 and first["trace_s"] > 0
    # one listing per folder (train/ and its 100 classes, val/ and its 20,
    # for the monitor), no image file opened before the first step
    assert first["calls"]["scandir"] == 101 + 21
    assert first["calls"].get("BufferedInputStream", 0) < 20
    assert [r["traces"] for r in first["knn_reports"]] == [[1, 1]]
    assert first["peak_rss_mb"] >= first["after_first_source_mb"] > 100
    # A restart "late in the run": the run's checkpoint moved to step 40.
    run_costs.move_checkpoint(argv + ["--train_steps=2"], 40)
    assert tf.train.latest_checkpoint(str(tmp_path / "run")).endswith("ckpt-40")


def test_train_step_benchmark_times_backbone_and_both_batch_norms(capsys, monkeypatch):
    """bench/train_step.py on a tiny case: every variant runs, the report's
    ratios are the ratios of its own step times, and the 'synchronised'
    variant really builds the synchronised layer on one replica."""
    import tf_keras
    import train_step
    from simclr_tf2.training import Learner
    built = []
    real_init = Learner.__init__

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append({layer.synchronized for layer in self.model._flatten_layers()
                      if isinstance(layer, tf_keras.layers.BatchNormalization)})

    monkeypatch.setattr(Learner, "__init__", recording_init)
    monkeypatch.setattr(train_step, "CASES", {"tiny_32px_b4": ("tiny", {}, 32, 4)})
    monkeypatch.setattr(train_step, "matmul_flops_per_second", lambda: 1e11)
    report = _quiet_main(train_step, ["--steps", "1", "--cases", "tiny_32px_b4",
                                      "--precisions", "float32", "--no-xla"], capsys)
    # plain, the synchronised layer, plain with device views
    assert built == [{False}, {True}, {False}]
    (row,) = report["results"]
    assert row["views_per_step"] == 8
    for variant in ("backbone", "pretrain", "pretrain_sync_bn", "pretrain_device_augment"):
        assert row[variant]["images_per_second"] == pytest.approx(
            8 / row[variant]["step_seconds"], rel=2e-2)
    assert row["pretrain_over_backbone"] == pytest.approx(
        row["backbone"]["step_seconds"] / row["pretrain"]["step_seconds"], rel=2e-2)
    assert row["device_augment_step_over_pretrain"] == pytest.approx(
        row["pretrain_device_augment"]["step_seconds"] / row["pretrain"]["step_seconds"],
        rel=2e-2)
    assert row["xla_compile_seconds"] == {}
    shipped = train_step.shipped_views(8, 3, 10)
    assert shipped["view1"].dtype.name == "uint8"
    assert shipped["view_params"].shape == (3, 2, 12)
    assert report["machine"]["bf16"] in ("native", "emulated")


def test_train_step_benchmark_times_its_variants_in_rounds():
    """One step of each variant per round, so drift hits them alike."""
    import train_step
    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = train_step._interleaved(runs, 3)
    assert calls == ["a", "b", "c"] * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_export_benchmark_counts_the_network_traces_shared_by_all_heads():
    """bench/hub_export.py's measurement on the tiny preset: four modules
    (head_0 .. head_3) and the network called six times in all (the copy's
    build, the probe of its output sizes, and one trace per `training`
    value outside and one inside tf.saved_model.save's saving context), not
    per head and call convention (38 before the modules shared one traced
    function)."""
    import hub_export
    row = hub_export.measure("tiny")
    assert row["heads"] == 4
    assert row["network_calls"] == 6, row
    assert row["seconds"] > 0 and row["cpu_seconds"] > 0


def test_first_step_benchmark_traces_the_step_once():
    """bench/first_step.py's measurement on the tiny preset: the step is
    traced once (twice when the optimizers' slots were made by the first
    step, as before they were made with the learner)."""
    import first_step
    row = first_step.measure("tiny")
    assert row["traces"] == 1, row
    assert row["first_step_s"] > row["step_s"] > 0 and row["build_s"] > 0


def test_gc_time_plugin_records_a_slow_collection_with_its_test(tmp_path):
    """bench/gc_time.py in a pytest run of its own: a reference cycle whose
    finaliser sleeps makes one collection slow, and the record names it and
    its test; the summary totals the worker files."""
    import gc_time
    (tmp_path / "test_slow_gc.py").write_text(
        "import gc, time\n"
        "class Slow:\n"
        "    def __del__(self):\n"
        "        time.sleep(0.3)\n"
        "def test_cycle():\n"
        "    a = Slow(); a.me = a; del a\n"
        "    gc.collect()\n"
        "def test_nothing():\n"
        "    pass\n")
    out = tmp_path / "records"
    env = dict(os.environ, GC_TIME_DIR=str(out), GC_TIME_LONG="0.2",
               PYTHONPATH=BENCH, PYTEST_XDIST_WORKER="gw7")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "gc_time", str(tmp_path / "test_slow_gc.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((out / "gw7.json").read_text())
    assert [row["test"].split("::")[-1] for row in record["long"]] == ["test_cycle"]
    assert 0.3 <= record["long"][0]["seconds"] <= record["seconds"]
    (out / "gw8.json").write_text(json.dumps({"seconds": 1.0, "collections": 2, "long": []}))
    report = gc_time.summarise(str(out))
    assert report["collections"] == record["collections"] + 2
    assert report["seconds"] == round(record["seconds"] + 1.0, 1)
    assert report["long_collections"] == 1 and report["longest"][0]["worker"] == "gw7"
    del env["GC_TIME_DIR"]
    refused = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "gc_time",
                              str(tmp_path / "test_slow_gc.py")],
                             cwd=tmp_path, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "GC_TIME_DIR" in refused.stdout + refused.stderr
