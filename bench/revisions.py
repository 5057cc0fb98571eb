"""This checkout against a baseline revision in one benchmark run: the
baseline's code in a temporary git worktree, each measurement in a fresh
child process with one code or the other first on its path, alternating
in every round (the machines are shared and noisy: compare within a round).
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def code_roots(baseline=None):
    """{"library": this checkout} and, with `baseline`, {"baseline": a
    worktree of that revision}, removed on exit."""
    roots = {"library": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        if baseline:
            roots["baseline"] = os.path.join(tmp, "baseline")
            subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach",
                            roots["baseline"], baseline], check=True, capture_output=True)
        try:
            yield roots
        finally:
            if baseline:
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force",
                                roots["baseline"]], check=True, capture_output=True)


def run_child(script: str, code_root: str, args) -> dict:
    """`python script args` with `code_root`'s simclr_tf2 imported; returns
    the JSON of its last output line."""
    env = dict(os.environ, PYTHONPATH=code_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, os.path.abspath(script), *args], env=env,
                          cwd=code_root, stdout=subprocess.PIPE, check=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def alternate(roots: dict, rounds: int, measure) -> dict:
    """{label: [measure(root) for each round]}, the labels taken in turn
    (baseline, then this checkout) within each round."""
    runs = {label: [] for label in roots}
    for _ in range(rounds):
        for label in sorted(roots):
            runs[label].append(measure(roots[label]))
    return runs


def summarise(runs: dict, keys) -> dict:
    """Medians of `keys` per label ("library_<key>", "baseline_<key>")."""
    return {f"{label}_{key}": statistics.median(m[key] for m in measured)
            for label, measured in runs.items() for key in keys}


def ratio_to_baseline(runs: dict, key: str) -> float:
    """The median over rounds of this checkout's `key` over the baseline's."""
    return round(statistics.median(a[key] / b[key] for a, b in
                                   zip(runs["library"], runs["baseline"])), 3)


def preset_benchmark(script: str, description: str, measure, keys, ratios, describe):
    """The command line of a benchmark that measures each preset in fresh
    processes: `measure(preset)` (a dict) in the child; in the parent, per
    preset, `describe(runs)` then the medians of `keys` and, with
    --baseline, the per-round ratios of `ratios` ("<key>_vs_baseline").
    Prints JSON."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--presets", nargs="+", default=["tiny", "r50_1x_sk0"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", help="git revision to measure in the same run")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(measure(args._child)))
        return
    rows = []
    with code_roots(args.baseline) as roots:
        for preset in args.presets:
            runs = alternate(roots, args.rounds,
                             lambda root: run_child(script, root, ["--_child", preset]))
            row = {"preset": preset, **describe(runs), **summarise(runs, keys)}
            if args.baseline:
                row.update({f"{key}_vs_baseline": ratio_to_baseline(runs, key)
                            for key in ratios})
            rows.append(row)
    print(json.dumps({"command": " ".join(sys.argv), "baseline": args.baseline,
                      "machine": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "results": rows}, indent=2))
