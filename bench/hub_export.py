"""Export: seconds to write the hub modules of a model, and how many times
the network is traced for them.

    python bench/hub_export.py [--presets tiny r50_1x_sk0] [--rounds 2] [--baseline REV]

Prints JSON. For each preset a randomly initialised SimCLRModel (pretrain
mode, its projection head's layers: head_0 .. head_N) is built at the
preset's image size and exported with `export_hub_modules` (a live model:
no checkpoint read), in a fresh process per measurement; `network_calls`
counts the Python calls of the model's `call` during the export (each
eager build and each trace of the network). With --baseline REV the same
is measured with REV's code (a temporary git worktree), alternating with
this checkout's in each round; `seconds_vs_baseline` is the median of the
per-round ratios.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from revisions import alternate, code_roots, ratio_to_baseline, run_child, summarise  # noqa: E402


def measure(preset: str, image_size=None) -> dict:
    """One export of a fresh `preset` model with the simclr_tf2 on sys.path."""
    import simclr_tf2  # noqa: F401  (before TensorFlow)
    import tensorflow as tf
    from simclr_tf2.configs import get_preset
    from simclr_tf2.export import export_hub_modules
    from simclr_tf2.models import SimCLRModel
    config = get_preset(preset)
    if image_size:
        config = config.override(**{"data.image_size": image_size})
    size = config.data.image_size
    model = SimCLRModel(config.model, mode="pretrain")
    model(tf.zeros([1, size, size, 3]), training=False)
    calls = []
    real_call = SimCLRModel.call

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real_call(self, *args, **kwargs)
    SimCLRModel.call = counted
    try:
        with tempfile.TemporaryDirectory() as root:
            start, cpu = time.perf_counter(), time.process_time()
            path = export_hub_modules(model, root, config=config, step=1)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            heads = len(os.listdir(path))
    finally:
        SimCLRModel.call = real_call
    return {"preset": preset, "image_size": size, "heads": heads,
            "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "network_calls": len(calls)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
                             lambda root: run_child(__file__, root, ["--_child", preset]))
            row = {"preset": preset, "heads": runs["library"][0]["heads"],
                   **summarise(runs, ("seconds", "cpu_seconds", "network_calls"))}
            if args.baseline:
                row["seconds_vs_baseline"] = ratio_to_baseline(runs, "seconds")
            rows.append(row)
    print(json.dumps({"command": " ".join(sys.argv), "baseline": args.baseline,
                      "machine": platform.processor() or platform.machine(),
                      "results": rows}, indent=2))


if __name__ == "__main__":
    main()
