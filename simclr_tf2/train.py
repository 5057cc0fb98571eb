"""Train / evaluate SimCLRv2: `python -m simclr_tf2.train --flagfile=flags/<run>.cfg`.

Modes: pretrain, finetune, linear_eval, eval, train_then_eval. Rerunning the
same command resumes from the last checkpoint in --model_dir. See flags/ for
the paper's runs and `--helpfull` for every flag.
"""
import sys

from absl import app, flags
from absl import logging as absl_logging

from simclr_tf2.flag_definitions import define_flags, format_resolution, resolve_flags
from simclr_tf2.errors import Preempted, SimCLRError
from simclr_tf2.training.runner import run

FLAGS = flags.FLAGS


def run_command(flag_values, argv=None) -> int:
    """Runs what parsed `flag_values` ask for; returns the exit status. A
    problem the library names (a SimCLRError: settings, data, the run, the
    export) prints one `simclr_tf2.train: error:` line (what is wrong and
    the fix) and returns 2; settings and data are checked before anything is
    written. A preempted run (SIGTERM) prints `preempted at step N: ...` and
    returns 75 after writing its checkpoint; a multi-worker run that lost a
    worker returns 69 (errors.py lists the codes). Any other exception is a
    bug: it propagates with its traceback.
    --dry_run prints the resolved config and returns 0. `argv`: the command
    line (default sys.argv), to tell flagfile values from the command line's."""
    try:
        resolution = resolve_flags(flag_values, argv,
                                   require_model_dir=not flag_values.dry_run)
        if flag_values.dry_run:
            print(format_resolution(resolution), flush=True)
            return 0
        for notice in resolution.notices:
            print(f"notice: {notice}", flush=True)
        outcome = run(resolution.config, resolution.run_config)
    except Preempted as stop:  # the checkpoint is written: rerun to resume
        print(stop, flush=True)
        return stop.exit_code
    except SimCLRError as error:
        print(f"simclr_tf2.train: error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    if outcome["result"] is not None:
        print(f"top-1 {outcome['result']['top1']:.4f}")
    return 0


def main(argv):
    if len(argv) > 1:
        sys.exit(f"simclr_tf2.train: error: unexpected arguments {argv[1:]} (flags look "
                 "like --name=value)")
    if not FLAGS["verbosity"].present:  # progress and events are printed; logs: warnings
        absl_logging.set_verbosity(absl_logging.WARNING)
    status = run_command(FLAGS)
    if status:
        sys.exit(status)


def console_main():
    """Console script `simclr-tf2-train` (and `python -m simclr_tf2.train`).
    The flags are defined here, not at import, so importing this module (for
    `run_command`) leaves the global flags alone."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
