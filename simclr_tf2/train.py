"""Train / evaluate SimCLRv2: `python -m simclr_tf2.train --flagfile=flags/<run>.cfg`.

Modes: pretrain, finetune, linear_eval, eval, train_then_eval. Rerunning the
same command resumes from the last checkpoint in --model_dir. See flags/ for
the paper's runs and `--helpfull` for every flag.
"""
import logging
import sys

from absl import app, flags
from absl import logging as absl_logging

from simclr_tf2.data.sources import DataError
from simclr_tf2.flag_definitions import configs_from_flags, define_flags
from simclr_tf2.training.runner import RunError, run

define_flags()
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        sys.exit(f"simclr_tf2.train: error: unexpected arguments {argv[1:]} (flags look "
                 "like --name=value)")
    if not FLAGS["verbosity"].present:  # progress lines are printed; logs: warnings
        absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("simclr_tf2").setLevel(logging.INFO)
    try:
        config, run_config = configs_from_flags(FLAGS)
        outcome = run(config, run_config)
    except (ValueError, DataError, RunError) as error:
        print(f"simclr_tf2.train: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    if outcome["result"] is not None:
        print(f"top-1 {outcome['result']['top1']:.4f}")


def console_main():
    """Console script `simclr-tf2-train`."""
    app.run(main)


if __name__ == "__main__":
    app.run(main)
