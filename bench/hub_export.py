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
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from revisions import preset_benchmark  # noqa: E402


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


if __name__ == "__main__":
    preset_benchmark(__file__, __doc__.split("\n")[0], measure,
                     ("seconds", "cpu_seconds", "network_calls"), ("seconds",),
                     lambda runs: {"heads": runs["library"][0]["heads"]})
