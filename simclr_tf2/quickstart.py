"""Small, fast runs on the built-in digits for notebooks and first tries.

    from simclr_tf2 import quickstart
    paths = quickstart.digits_modules("/tmp/simclr_quickstart")
    paths["finetune_module"]   # a fine-tuned hub module (head_0), made on the spot

Everything goes through the library's own training modes (`runner.run`) with
the tiny preset (quarter-width ResNet-18, CIFAR stem, 32 px); the step counts
are short enough for a CPU in a minute or two, so the models are demos, not
results (the benchmarks in bench/ train properly). Stages whose export already
exists are reused, so notebooks can share one working directory.
"""
import os
from typing import Dict, Optional

from simclr_tf2.configs import ExperimentConfig, get_preset
from simclr_tf2.errors import ConfigError


def digits_config(mode: str, steps: int, **overrides) -> ExperimentConfig:
    """The tiny preset on digits with the demo's recipe for `mode`
    ('pretrain', 'finetune' or 'distill'), trained for `steps` steps.
    `overrides` are dotted config fields, e.g. **{'model.width_multiplier': 0.125}."""
    loop = max(1, min(steps, 25))
    common = {"data.dataset": "digits", "data.crop_area_min": 0.25,
              "data.use_flip": False, "train.train_steps": steps,
              "train.steps_per_loop": loop, "train.summary_interval": loop,
              "train.checkpoint_interval": max(steps, loop)}
    recipes = {
        "pretrain": {"train.train_batch_size": 64, "train.learning_rate": 0.3,
                     "train.temperature": 0.2, "train.warmup_epochs": 1},
        "finetune": {"data.label_fraction": 0.1, "model.ft_proj_selector": 1,
                     "train.zero_init_logits_layer": True,
                     "train.train_batch_size": 32, "train.learning_rate": 0.002,
                     "train.weight_decay": 0.0},
        "distill": {"train.train_batch_size": 64, "train.optimizer": "momentum",
                    "train.learning_rate": 0.05, "train.weight_decay": 1e-4,
                    "model.proj_head_mode": "none"},
    }
    if mode not in recipes:
        raise ConfigError(f"mode must be one of {sorted(recipes)}. Received: {mode!r}")
    return get_preset("tiny").override(**{**common, **recipes[mode], **overrides})


def run_stage(config: ExperimentConfig, model_dir: str, mode: str,
              checkpoint: Optional[str] = None, teacher: Optional[str] = None,
              from_scratch: bool = False, evaluate: bool = True,
              verbose: bool = False) -> dict:
    """Trains `mode` in model_dir (then evaluates on the test split when
    `evaluate` and the mode has a supervised head). Returns runner.run's dict."""
    from simclr_tf2.tasks import task_for
    from simclr_tf2.training.runner import RunConfig, run
    run_mode = "train_then_eval" if evaluate and task_for(mode).supervised else mode
    run_config = RunConfig(mode=run_mode, train_mode=mode, model_dir=model_dir,
                           checkpoint=checkpoint, teacher=teacher,
                           from_scratch=from_scratch)
    return run(config, run_config, verbose=verbose)


def latest_module(model_dir: str, head: int = 0) -> Optional[str]:
    """<model_dir>/hub/<newest step>/head_<head>, or None when nothing is exported."""
    from simclr_tf2.export import exported_steps
    export_dir = os.path.join(model_dir, "hub")
    steps = exported_steps(export_dir) if os.path.isdir(export_dir) else []
    if not steps:
        return None
    return os.path.join(export_dir, str(max(steps)), f"head_{head}")


def digits_modules(workdir: str, pretrain_steps: int = 150, finetune_steps: int = 60,
                   verbose: bool = False) -> Dict[str, str]:
    """Pretrains on digits, fine-tunes on 10% of the labels, exports both.

    Returns {'pretrain_dir', 'finetune_dir', 'pretrain_module' (head_1 of the
    pretrained model: the layer fine-tuning starts from), 'finetune_module'
    (head_0 of the fine-tuned model, with `logits_sup`)}. Reuses finished
    stages found in workdir."""
    pretrain_dir = os.path.join(workdir, "pretrain")
    finetune_dir = os.path.join(workdir, "finetune_10pct")
    if latest_module(pretrain_dir) is None:
        run_stage(digits_config("pretrain", pretrain_steps), pretrain_dir, "pretrain",
                  verbose=verbose)
    if latest_module(finetune_dir) is None:
        run_stage(digits_config("finetune", finetune_steps), finetune_dir, "finetune",
                  checkpoint=pretrain_dir, evaluate=False, verbose=verbose)
    return {"pretrain_dir": pretrain_dir, "finetune_dir": finetune_dir,
            "pretrain_module": latest_module(pretrain_dir, head=1),
            "finetune_module": latest_module(finetune_dir, head=0)}


def module_top1(module_path: str, dataset: str = "digits", image_size: int = 32,
                split: str = "test", batch_size: int = 128) -> float:
    """Top-1 accuracy of an exported module's `logits_sup` on a labelled split
    (a fresh SavedModel load; padding examples of the last batch are ignored)."""
    import tensorflow as tf
    from simclr_tf2.configs import DataConfig
    from simclr_tf2.data import build_dataset, make_source
    module = tf.saved_model.load(module_path)
    source = make_source(DataConfig(dataset=dataset, image_size=image_size), split,
                         labelled=True)
    correct = total = 0
    for batch in build_dataset(source, "eval", batch_size, image_size):
        logits = module(batch["image"], training=False)["logits_sup"]
        valid = batch["label"] >= 0
        hits = tf.equal(tf.argmax(logits, -1), tf.cast(batch["label"], tf.int64))
        correct += int(tf.reduce_sum(tf.cast(hits & valid, tf.int32)))
        total += int(tf.reduce_sum(tf.cast(valid, tf.int32)))
    return correct / max(total, 1)
