"""Export hub modules from a training run:
`python export/export_hub.py --model_dir=<run>` (or `simclr-tf2-export`).

Reads <model_dir>/config.json and the latest checkpoint (or --checkpoint) and
writes <export_dir>/<step>/head_0 .. head_N, one TF Hub SavedModel per
projection-head layer (see simclr_tf2/export/hub.py).
"""
import sys

from absl import app, flags
from absl import logging as absl_logging

from simclr_tf2.errors import ExportError, SimCLRError
from simclr_tf2.export.hub import export_hub_modules

FLAGS = flags.FLAGS


def define_flags(flag_values=flags.FLAGS) -> None:
    """The export's flags, defined by the entry point that parses them (not
    at import), once per `flag_values`."""
    if "export_dir" in flag_values:
        return
    flags.DEFINE_string("model_dir", None, "Run directory written by simclr_tf2.train.",
                        flag_values=flag_values)
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix to export; default: the "
                        "latest in --model_dir.", flag_values=flag_values)
    flags.DEFINE_string("export_dir", None, "Where to write (relative paths are inside "
                        "--model_dir); default: the run's export_dir, 'hub'.",
                        flag_values=flag_values)
    flags.DEFINE_integer("keep_hub_module_max", None, "Exports to keep (0 = all); "
                         "default: the run's setting.", flag_values=flag_values)
    flags.DEFINE_bool("official_call_convention", None, "Accept the authors' "
                      "module(images, trainable=...) call as well as training=; default: "
                      "the run's setting (on unless the run turned it off).",
                      flag_values=flag_values)
    flags.DEFINE_integer("step", None, "Name of the export directory; default: the "
                         "checkpoint's step.", flag_values=flag_values)


def run_command(flag_values) -> int:
    """Exports what parsed `flag_values` ask for; returns the exit status (2
    with one `error:` line for a problem the library names, 75 for a SIGTERM
    during the export, which leaves no partial export; any other
    exception propagates with its traceback)."""
    try:
        if not flag_values.model_dir:
            raise ExportError("--model_dir is required (a run directory of simclr_tf2.train)")
        path = export_hub_modules(
            flag_values.model_dir, flag_values.export_dir, checkpoint=flag_values.checkpoint,
            step=flag_values.step, keep_hub_module_max=flag_values.keep_hub_module_max,
            official_call_convention=flag_values.official_call_convention)
    except SimCLRError as error:
        print(f"simclr_tf2.export: error: {error}", file=sys.stderr, flush=True)
        return error.exit_code  # 2, or 75 when SIGTERM interrupted the export
    print(f"exported hub modules to {path}", flush=True)
    return 0


def main(argv):
    if len(argv) > 1:
        sys.exit(f"simclr_tf2.export: error: unexpected arguments {argv[1:]}")
    if not FLAGS["verbosity"].present:  # the result is printed; logs: warnings
        absl_logging.set_verbosity(absl_logging.WARNING)
    status = run_command(FLAGS)
    if status:
        sys.exit(status)


def console_main():
    """Console script `simclr-tf2-export` (and export/export_hub.py)."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
