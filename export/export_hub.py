"""Export stage: `python export/export_hub.py --model_dir=<run>`.

Writes one TF Hub SavedModel per projection-head layer; `--helpfull` lists the
flags. A thin wrapper over simclr_tf2.export_cli (also `simclr-tf2-export`).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from simclr_tf2.export_cli import console_main  # noqa: E402

if __name__ == "__main__":
    console_main()
