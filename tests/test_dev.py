"""dev.py: the README's two commands (set-up, parallel test workers)."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dev():
    spec = importlib.util.spec_from_file_location("dev", os.path.join(ROOT, "dev.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("cores,workers", [(1, "1"), (2, "2"), (64, "4"), (None, "1")])
def test_tests_run_in_min_of_cores_and_four_workers(monkeypatch, cores, workers):
    dev = _dev()
    monkeypatch.setattr(dev.os, "cpu_count", lambda: cores)
    assert dev._test_workers(["-ra"]) == ["-n", workers, "--dist", "worksteal"]


@pytest.mark.parametrize("extra", [["-n", "0"], ["-n0"], ["-n", "3", "-ra"],
                                   ["--numprocesses=3"], ["--numprocesses", "auto"]])
def test_a_worker_count_on_the_command_line_wins(extra):
    assert _dev()._test_workers(extra) == []

