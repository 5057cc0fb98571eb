#!/usr/bin/env python3
"""Set up a local virtual environment and run the demo or the test suite.

    python3 dev.py demo   # set up .venv (once), run the main job on built-in data
    python3 dev.py test   # set up .venv (once), run the whole test suite
    python3 dev.py setup  # only set up .venv

Extra arguments are passed on (to the demo's flags or to pytest). The tests
run in min(cores + 1, 4) pytest-xdist worker processes (most tests keep only
one core busy: graph tracing is single-threaded, and many wait part of the
time on child processes); pass `-n 0` to run them in one process, or `-n N`
for N workers. Needs only a
Python 3.10-3.12 interpreter (3.11 is what we test on) and access to PyPI. The
environment is reinstalled only when requirements.txt or pyproject.toml change.
"""
import hashlib
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, ".venv")
STAMP = os.path.join(VENV, ".simclr_tf2_installed")


def _venv_python():
    sub = "Scripts" if os.name == "nt" else "bin"
    return os.path.join(VENV, sub, "python.exe" if os.name == "nt" else "python")


def _requirements_digest():
    digest = hashlib.sha256()
    for name in ("requirements.txt", "pyproject.toml"):
        with open(os.path.join(ROOT, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def setup():
    if not (3, 10) <= sys.version_info[:2] <= (3, 12):
        sys.exit(f"dev.py: Python 3.10-3.12 is required (TensorFlow 2.20); "
                 f"this is {sys.version.split()[0]}. Run it with python3.11.")
    wanted = _requirements_digest()
    if os.path.exists(STAMP) and open(STAMP).read().strip() == wanted:
        return
    if not os.path.exists(_venv_python()):
        print(f"dev.py: creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("dev.py: installing pinned requirements (a few minutes the first time)",
          flush=True)
    pip = [_venv_python(), "-m", "pip", "install", "--disable-pip-version-check"]
    subprocess.check_call(pip + ["-q", "-r", os.path.join(ROOT, "requirements.txt")])
    subprocess.check_call(pip + ["-q", "--no-deps", "-e", ROOT])
    with open(STAMP, "w") as f:
        f.write(wanted + "\n")


def _run(args):
    return subprocess.call([_venv_python()] + args, cwd=ROOT)


def _test_workers(extra):
    """pytest-xdist arguments unless the caller chose the worker count:
    min(cores + 1, 4) workers (each test process holds a TensorFlow runtime
    of 1-5 GB). One worker more than cores: with one per core, 2 cores were
    1.64-1.81 busy over the suite (tests wait on their child processes and
    on TensorFlow's threads as they stop); with 3 workers, 1.91-1.93
    (bench/RESULTS.md, "Test suite"). Tests go to whichever worker is free,
    and an idle worker takes queued tests from a busy one (`--dist
    worksteal`: the few long tests do not pile up on one worker), so a
    module-scoped fixture may be built once per worker. `--dist loadgroup`
    would keep marked modules together, but with pytest 9.2 and
    pytest-xdist 3.8.0 it does not group (xdist renames `item._nodeid`,
    which pytest 9 no longer reads)."""
    if any(a.startswith(("-n", "--numprocesses")) for a in extra):
        return []
    return ["-n", str(min((os.cpu_count() or 1) + 1, 4)), "--dist", "worksteal"]


def main(argv):
    commands = ("demo", "test", "setup")
    if not argv or argv[0] not in commands:
        sys.exit(f"usage: python3 dev.py {{{'|'.join(commands)}}} [args...]")
    command, extra = argv[0], argv[1:]
    setup()
    if command == "demo":
        return _run(["-m", "simclr_tf2.demo"] + extra)
    if command == "test":
        return _run(["-m", "pytest", "-q", "-p", "no:cacheprovider"]
                    + _test_workers(extra) + extra)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
