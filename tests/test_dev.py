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


@pytest.mark.parametrize("cores,workers", [(1, "2"), (2, "3"), (3, "4"), (64, "4"),
                                           (None, "2")])
def test_tests_run_in_one_worker_more_than_cores_up_to_four(monkeypatch, cores, workers):
    dev = _dev()
    monkeypatch.setattr(dev.os, "cpu_count", lambda: cores)
    assert dev._test_workers(["-ra"]) == ["-n", workers, "--dist", "worksteal"]


@pytest.mark.parametrize("extra", [["-n", "0"], ["-n0"], ["-n", "3", "-ra"],
                                   ["--numprocesses=3"], ["--numprocesses", "auto"]])
def test_a_worker_count_on_the_command_line_wins(extra):
    assert _dev()._test_workers(extra) == []


def test_the_tests_run_first_exist():
    """conftest.RUN_FIRST names test functions that are there (a renamed one
    would silently go back to the end of the collection)."""
    import re
    from conftest import RUN_FIRST
    here = os.path.dirname(os.path.abspath(__file__))
    assert len(set(RUN_FIRST)) == len(RUN_FIRST)
    for name in RUN_FIRST:
        module, function = name.split("::")
        source = open(os.path.join(here, module)).read()
        assert re.search(rf"^def {function}\(", source, re.M), name


def test_collection_puts_the_tests_run_first_in_front_in_their_order():
    import types
    from conftest import RUN_FIRST, pytest_collection_modifyitems

    def item(module, function, parameters=""):
        return types.SimpleNamespace(fspath=os.path.join("/x/tests", module),
                                     originalname=function, id=f"{function}{parameters}")
    first, second = (name.split("::") for name in RUN_FIRST[:2])
    items = [item("test_a.py", "test_one"), item(*second, "[a]"), item("test_b.py", "test_two"),
             item(*first), item(*second, "[b]")]
    pytest_collection_modifyitems(None, items)
    assert [i.id for i in items] == [first[1], second[1] + "[a]", second[1] + "[b]",
                                     "test_one", "test_two"]
