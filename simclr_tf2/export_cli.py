"""Export hub modules from a training run:
`python export/export_hub.py --model_dir=<run>` (or `simclr-tf2-export`).

Reads <model_dir>/config.json and the latest checkpoint (or --checkpoint) and
writes <export_dir>/<step>/head_0 .. head_N, one TF Hub SavedModel per
projection-head layer (see simclr_tf2/export/hub.py).
"""
import sys

from absl import app, flags
from absl import logging as absl_logging

from simclr_tf2.export.hub import ExportError, export_hub_modules

flags.DEFINE_string("model_dir", None, "Run directory written by simclr_tf2.train.")
flags.DEFINE_string("checkpoint", None, "Checkpoint prefix to export; default: the "
                    "latest in --model_dir.")
flags.DEFINE_string("export_dir", None, "Where to write (relative paths are inside "
                    "--model_dir); default: the run's export_dir, 'hub'.")
flags.DEFINE_integer("keep_hub_module_max", None, "Exports to keep (0 = all); default: "
                     "the run's setting.")
flags.DEFINE_bool("official_call_convention", None, "Accept the authors' "
                  "module(images, trainable=...) call as well as training=; default: "
                  "the run's setting (on unless the run turned it off).")
flags.DEFINE_integer("step", None, "Name of the export directory; default: the "
                     "checkpoint's step.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        sys.exit(f"simclr_tf2.export: error: unexpected arguments {argv[1:]}")
    if not FLAGS["verbosity"].present:  # the result is printed; logs: warnings
        absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        if not FLAGS.model_dir:
            raise ExportError("--model_dir is required (a run directory of simclr_tf2.train)")
        path = export_hub_modules(
            FLAGS.model_dir, FLAGS.export_dir, checkpoint=FLAGS.checkpoint, step=FLAGS.step,
            keep_hub_module_max=FLAGS.keep_hub_module_max,
            official_call_convention=FLAGS.official_call_convention)
    except (ValueError, ExportError) as error:
        print(f"simclr_tf2.export: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(f"exported hub modules to {path}", flush=True)


def console_main():
    """Console script `simclr-tf2-export`."""
    app.run(main)


if __name__ == "__main__":
    app.run(main)
