"""Time spent in Python's garbage collections during a test run, per pytest
process: a collection also frees what it finds in reference cycles, and
freeing a multi-replica dataset iterator that has idled blocks until its
threads stop (seconds; bench/RESULTS.md, Test suite).

    GC_TIME_DIR=DIR PYTHONPATH=bench python3 dev.py test -p gc_time
    python bench/gc_time.py DIR

As a pytest plugin (`-p gc_time`, bench/ on PYTHONPATH) it writes
DIR/<worker>.json at the end of the session: seconds in collections, their
count, and each collection longer than $GC_TIME_LONG seconds (default 1)
with the test it fell in. As a script it prints their summary as JSON: per
worker and in all, the longest collections first.
"""
import argparse
import gc
import json
import os
import time

_state = {"seconds": 0.0, "collections": 0, "long": [], "test": None, "_start": None,
          "_long": 1.0}


def _on_collection(phase, info):
    if phase == "start":
        _state["_start"] = time.perf_counter()
        return
    if _state["_start"] is None:  # the plugin was registered mid-collection
        return
    spent = time.perf_counter() - _state["_start"]
    _state["_start"] = None
    _state["seconds"] += spent
    _state["collections"] += 1
    if spent > _state["_long"]:
        _state["long"].append({"seconds": round(spent, 3), "generation": info["generation"],
                               "test": _state["test"]})


def pytest_configure(config):
    import pytest
    if not os.environ.get("GC_TIME_DIR"):
        raise pytest.UsageError("-p gc_time writes its records to $GC_TIME_DIR: set it "
                                "to a directory (made if missing)")
    _state["_long"] = float(os.environ.get("GC_TIME_LONG", "1.0"))
    gc.callbacks.append(_on_collection)


def pytest_runtest_setup(item):
    _state["test"] = item.nodeid


def pytest_sessionfinish(session):
    out = os.environ["GC_TIME_DIR"]
    os.makedirs(out, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    record = {k: _state[k] for k in ("seconds", "collections", "long")}
    with open(os.path.join(out, f"{worker}.json"), "w") as f:
        json.dump(record, f)


def summarise(directory: str, top: int = 10) -> dict:
    """The per-worker records in `directory`, totalled."""
    workers = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json"):
            with open(os.path.join(directory, name)) as f:
                workers[name[:-len(".json")]] = json.load(f)
    longest = sorted((dict(row, worker=w) for w, r in workers.items() for row in r["long"]),
                     key=lambda row: -row["seconds"])
    return {
        "seconds": round(sum(r["seconds"] for r in workers.values()), 1),
        "collections": sum(r["collections"] for r in workers.values()),
        "long_seconds": round(sum(row["seconds"] for row in longest), 1),
        "long_collections": len(longest),
        "per_worker": {w: {"seconds": round(r["seconds"], 1),
                           "collections": r["collections"],
                           "long_seconds": round(sum(x["seconds"] for x in r["long"]), 1)}
                       for w, r in workers.items()},
        "longest": longest[:top],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="GC_TIME_DIR of the test run")
    parser.add_argument("--top", type=int, default=10, help="longest collections shown")
    args = parser.parse_args(argv)
    report = summarise(args.directory, args.top)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
