"""The benchmark scripts run end to end (a few steps per stage), so they
cannot rot; their real numbers live in bench/RESULTS.md."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
