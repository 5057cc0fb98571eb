"""Writes the small run directories in tests/data/runs_2026_12/, kept so
that later code is tested against checkpoints and exports written by the
code of 2026-12-07 (commit ab8422c): a pretraining run with the memory and
the online probe, and a fine-tuning run from it with a hub export.

    python tests/data/make_fixture_runs.py   # rewrites them: only on purpose

The models are 1/16-width ResNet-18s on digits, two steps each: the point
is the files' layout, not what they learned. Summaries, indices and event
files are removed to keep the fixtures small.
"""
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "runs_2026_12")


def main():
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    from simclr_tf2 import quickstart
    small = {"model.width_multiplier": 0.0625, "model.proj_out_dim": 8,
             "model.num_proj_layers": 2, "train.train_batch_size": 16}
    shutil.rmtree(OUT, ignore_errors=True)
    pretrain = quickstart.digits_config("pretrain", 2, **small, **{
        "memory.queue_size": 32, "memory.momentum": 0.9, "export.export_at_end": False})
    quickstart.run_stage(pretrain, os.path.join(OUT, "pretrain"), "pretrain")
    finetune = quickstart.digits_config("finetune", 2, **small)
    quickstart.run_stage(finetune, os.path.join(OUT, "finetune"), "finetune",
                         checkpoint=os.path.join(OUT, "pretrain"), evaluate=False)
    for run in ("pretrain", "finetune"):
        for name in ("summaries", "data_index", "skipped"):
            shutil.rmtree(os.path.join(OUT, run, name), ignore_errors=True)


if __name__ == "__main__":
    main()
