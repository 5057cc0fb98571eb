"""The benchmark scripts run end to end (a few steps per stage), so they
cannot rot; their real numbers live in bench/RESULTS.md."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


def _bench(script, args, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout[result.stdout.index("{\n"):])


@pytest.mark.slow
def test_distill_benchmark_quick_run_reports_every_stage_and_resumes(tmp_path):
    workdir = str(tmp_path / "bench")
    report = _bench("distill.py", ["--quick", "--workdir", workdir])
    assert report["quick"] and report["benchmark"] == "distill_mnist5k"
    seed = report["per_seed"][0]
    for key in ("teacher", "student_distilled", "student_labels_only"):
        assert 0.0 <= seed[key]["top1"] <= 1.0 and seed[key]["steps"] == 4
    summary = report["summary"]
    assert summary["student_minus_teacher"]["values"][0] == pytest.approx(
        seed["student_distilled"]["top1"] - seed["teacher"]["top1"])
    assert os.path.exists(os.path.join(workdir, "report.json"))
    # Finished stages are reused: a second run trains nothing and agrees.
    again = _bench("distill.py", ["--quick", "--workdir", workdir])
    assert again["per_seed"] == report["per_seed"]


@pytest.mark.slow
def test_semisupervised_benchmark_quick_run_covers_every_method_and_fraction(tmp_path):
    workdir = str(tmp_path / "semi")
    report = _bench("semisupervised.py", ["--quick", "--seeds", "0", "--workdir", workdir,
                                          "--jobs", "2"], timeout=1800)
    assert report["benchmark"] == "semisupervised_mnist5k_main" and report["quick"]
    assert report["jobs"] == 2 and report["stage_seconds"] > 0
    summary = report["summary"]
    expected = {"logistic_regression_pixels": {"1pct", "10pct", "100pct"},
                "scratch": {"1pct", "10pct", "100pct"},
                "simclrv2_linear_eval": {"1pct", "10pct", "100pct"},
                "simclrv2_finetune": {"1pct", "10pct"},
                "simclrv2_distill": {"1pct", "10pct"}}
    assert {m: set(f) for m, f in summary.items()} == expected
    for method, by_fraction in report["results"].items():
        for fraction, records in by_fraction.items():
            assert len(records) == 1 and 0.0 <= records[0]["top1"] <= 1.0
            assert summary[method][fraction]["mean"] == pytest.approx(
                100 * records[0]["top1"])
    # The pixel floor is fully trained even in a quick run: it learns.
    pixels = summary["logistic_regression_pixels"]
    assert pixels["1pct"]["mean"] > 40 and pixels["100pct"]["mean"] > 80
    assert pixels["100pct"]["mean"] > pixels["1pct"]["mean"]
    assert report["results"]["logistic_regression_pixels"]["1pct"][0]["examples"] == 40
    assert report["results"]["scratch"]["10pct"][0]["steps"] == 4
    assert set(report["targets"]) == {
        "finetune_1pct_ge_88", "finetune_1pct_minus_scratch_ge_15",
        "finetune_10pct_ge_97.5", "linear_eval_100pct_ge_98", "pretrain_le_30min"}
    assert os.path.getsize(os.path.join(workdir, "semisupervised_mnist5k.png")) > 10000
    # Labelled subsets come from the library's subset code, seeded by the seed.
    ids = open(os.path.join(workdir, "seed0", "finetune_1pct", "labelled_ids.txt")).read()
    assert len(ids.split()) == 40
    # A rerun (one process) reuses every finished network stage, in the same
    # order; the pixel floor is refitted.
    again = _bench("semisupervised.py", ["--quick", "--seeds", "0", "--workdir", workdir])
    pixels_again = again["results"].pop("logistic_regression_pixels")
    assert [r["top1"] for f in ("1pct", "10pct", "100pct") for r in pixels_again[f]] == [
        r["top1"] for f in ("1pct", "10pct", "100pct")
        for r in report["results"]["logistic_regression_pixels"][f]]
    assert again["results"] == {m: r for m, r in report["results"].items()
                                if m != "logistic_regression_pixels"}


@pytest.mark.slow
def test_semisupervised_ablations_quick_run_pairs_each_variant_with_its_control(tmp_path):
    workdir = str(tmp_path / "ablations")
    report = _bench("semisupervised.py", ["--quick", "--part", "ablations", "--seeds", "0",
                                          "--workdir", workdir], timeout=1800)
    rows = report["rows"]
    assert [r["ablation"].split(":")[0] for r in rows] == [
        "head", "memory", "width", "selective kernels"]
    for row in rows:
        control, variant = row["arms"]["control"], row["arms"]["variant"]
        assert control["pretrain_flags"] != variant["pretrain_flags"]
        assert row["variant_minus_control"]["values"] == pytest.approx(
            [variant["top1"][0] - control["top1"][0]])
    # The three R-18 controls share one pretraining run.
    pretrains = os.listdir(os.path.join(workdir, "ablation_pretrain"))
    assert sorted(p for p in pretrains if not p.endswith("_finetune")) == sorted(
        ["base", "num_proj_layers_2", "queue_size_1024+memory_momentum_0.99",
         "width_multiplier_0.5", "depth_50", "depth_50+sk_ratio_0.0625"])


@pytest.mark.slow
def test_semisupervised_variants_quick_run_pairs_each_recipe_with_the_main_one(tmp_path):
    workdir = str(tmp_path / "variants")
    report = _bench("semisupervised.py", ["--quick", "--part", "variants", "--seeds", "0",
                                          "1", "--workdir", workdir], timeout=1800)
    rows = report["rows"]
    assert len(rows) == 4 and rows[0]["minus_first"]["values"] == [0.0, 0.0]
    for row in rows:
        assert len(row["top1"]) == 2
        assert row["minus_first"]["values"] == pytest.approx(
            [v - c for v, c in zip(row["top1"], rows[0]["top1"])])
    # Each variant's flags reached its runs' configs.
    for index, row in enumerate(rows):
        with open(os.path.join(workdir, f"variant{index}", "seed1", "config.json")) as f:
            config = json.load(f)
        expected = "all" if "--bn_recompute_images=all" in row["finetune_flags"] else "labelled"
        assert config["experiment"]["train"]["bn_recompute_images"] == expected
        assert config["experiment"]["model"]["ft_proj_selector"] == (
            0 if "--ft_proj_selector=0" in row["finetune_flags"] else 1)


@pytest.mark.slow
def test_input_pipeline_benchmark_reports_both_pipelines_and_their_cpu_use():
    report = _bench("input_pipeline.py", ["--images", "32", "--seconds", "0.5"])
    assert [case["case"] for case in report["cases"]] == ["224px_from_256px_jpeg",
                                                          "32px_digits"]
    for case in report["cases"]:
        for key in ("library_images_per_s", "naive_images_per_s",
                    "library_cpu_ms_per_image", "naive_cpu_ms_per_image",
                    "library_cores_busy", "naive_cores_busy"):
            assert case[key] > 0, key
        assert case["speedup_vs_naive"] == pytest.approx(
            case["library_images_per_s"] / case["naive_images_per_s"], rel=0.02)


def test_reused_pretraining_reports_the_reused_runs_record(tmp_path):
    """--pretrain_dir: the report carries the reused run's own time (the
    30-minute target reads it), or only the path when no record exists."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import semisupervised
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    run = tmp_path / "pretrain"
    run.mkdir()
    assert semisupervised._pretraining(str(tmp_path), str(run), quick=False) == (
        str(run), {"reused": str(run)})
    (run / "bench_done.json").write_text(json.dumps({"seconds": 1186.5, "steps": 2344}))
    directory, record = semisupervised._pretraining(str(tmp_path), str(run), quick=False)
    assert directory == str(run)
    assert record == {"seconds": 1186.5, "steps": 2344, "reused": str(run)}
    assert semisupervised.targets({}, record)["pretrain_le_30min"]


def test_main_table_tasks_cover_every_stage_once_in_table_order():
    sys.path.insert(0, BENCH)
    try:
        import semisupervised
    finally:
        sys.path.remove(BENCH)
    tasks = semisupervised.main_tasks([0, 1], distill_fractions=(0.1,))
    assert len(tasks) == len(set(tasks)) == 2 * 8
    assert tasks[:8] == [(0, 0.01, "scratch", False), (0, 0.01, "linear_eval", False),
                         (0, 0.01, "finetune", False), (0, 0.1, "scratch", True),
                         (0, 0.1, "linear_eval", True), (0, 0.1, "finetune", True),
                         (0, 1.0, "scratch", False), (0, 1.0, "linear_eval", False)]
    assert [t[0] for t in tasks] == [0] * 8 + [1] * 8
