"""The README's first command: SimCLRv2 end to end on the built-in digits.

    python -m simclr_tf2.demo [--model_dir=runs/digits_demo] [--fresh]

1. pretrain the tiny ResNet-18 on all 1438 training images (no labels used by
   the representation) with memory: flags/digits_pretrain.cfg;
2. fine-tune from projection-head layer 1 on 10% of the labels (144 images)
   and evaluate on the 359 test images: flags/digits_finetune_10pct.cfg;
3. both stages export TF Hub modules (<stage>/hub/<step>/head_k); the demo
   reloads the fine-tuned one and classifies the test images with it.
The same settings run from the command line with `python -m simclr_tf2.train
--flagfile=...`. Rerunning resumes (finished stages are not redone); --fresh
starts over. A few minutes on a 2-core CPU.
"""
import os
import shutil
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags(flag_values=flags.FLAGS) -> None:
    """The demo's flags, defined by its entry point (not at import)."""
    flags.DEFINE_string("model_dir", "runs/digits_demo", "Where the two stages write.",
                        flag_values=flag_values)
    flags.DEFINE_bool("fresh", False, "Delete model_dir first.", flag_values=flag_values)


FLAG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "flags")


def stage_configs(flagfile: str, model_dir: str, extra=()):
    """(ExperimentConfig, RunConfig) exactly as the train CLI builds them."""
    from simclr_tf2.flag_definitions import configs_from_flags, define_flags
    values = flags.FlagValues()
    define_flags(values)
    path = os.path.join(FLAG_DIR, flagfile)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run the demo from a checkout")
    values(["demo", f"--flagfile={path}", f"--model_dir={model_dir}", *extra])
    return configs_from_flags(values)


def run_demo(model_dir: str, verbose: bool = True) -> dict:
    from simclr_tf2.quickstart import module_top1
    from simclr_tf2.training.runner import run
    pretrain_dir = os.path.join(model_dir, "pretrain")
    finetune_dir = os.path.join(model_dir, "finetune_10pct")
    start = time.time()
    config, run_config = stage_configs("digits_pretrain.cfg", pretrain_dir)
    run(config, run_config, verbose=verbose)
    pretrain_seconds = time.time() - start
    config, run_config = stage_configs("digits_finetune_10pct.cfg", finetune_dir,
                                       [f"--checkpoint={pretrain_dir}"])
    outcome = run(config, run_config, verbose=verbose)
    export_top1 = None
    if outcome["export"]:
        export_top1 = module_top1(os.path.join(outcome["export"], "head_0"),
                                  config.data.dataset, config.data.image_size,
                                  config.data.eval_split)
    return {"pretrain_seconds": pretrain_seconds, "export": outcome["export"],
            "export_top1": export_top1, "total_seconds": time.time() - start,
            **outcome["result"]}


def main(argv):
    del argv
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # progress lines are printed
    if FLAGS.fresh:
        shutil.rmtree(FLAGS.model_dir, ignore_errors=True)
    outcome = run_demo(FLAGS.model_dir)
    print(f"\nSimCLRv2 on digits: pretrained {outcome['pretrain_seconds'] / 60:.1f} min, "
          f"fine-tuned on 10% of the labels: test top-1 {outcome['top1']:.1%} "
          f"({outcome['num_examples']} images; total {outcome['total_seconds'] / 60:.1f} "
          f"min). Runs and TensorBoard summaries in {FLAGS.model_dir}/")
    if outcome["export"]:
        print(f"Hub modules in {outcome['export']}; reloaded, head_0 scores test top-1 "
              f"{outcome['export_top1']:.1%}.")


def console_main():
    """`python -m simclr_tf2.demo` (what `python3 dev.py demo` runs)."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
