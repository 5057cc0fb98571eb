"""One run: plan, then train and/or evaluate, then export.

`run(config, run_config)` is what `python -m simclr_tf2.train` calls after it
has turned flags into configs; tests and notebooks call it directly. The run
is planned once (plan.py: every check and the data, before anything is
written), then executed from the plan: the training loop (fit.py),
evaluation (evaluator.py) and the hub export. The run directory's layout is
simclr_tf2.rundir.
"""
import dataclasses
import os
import shutil
import sys
from typing import Dict, Optional

import tensorflow as tf
import tf_keras

from simclr_tf2.configs.schema import ExperimentConfig
from simclr_tf2.data.subsets import write_ids
from simclr_tf2.errors import (ExportError, ExportInterrupted,  # noqa: F401 (re-exported)
                               NonFiniteLossError, RunError)
from simclr_tf2.export.hub import export_hub_modules
from simclr_tf2.models.precision import precision_policy
from simclr_tf2.rundir import MONITOR_FILE, SUBSET_FILE, path, read_json, write_record
from simclr_tf2.tasks import writes_record
from simclr_tf2.training.evaluator import evaluate
from simclr_tf2.training.fit import train
from simclr_tf2.training.learner import Learner
from simclr_tf2.training.plan import RunPlan, plan_run
from simclr_tf2.training.run_config import RunConfig  # noqa: F401 (re-exported)


def run(config: ExperimentConfig, run_config: RunConfig, verbose: bool = True,
        strategy: Optional[tf.distribute.Strategy] = None) -> Dict:
    """Plans (every check before any write), then trains and/or evaluates,
    then exports. Returns {'learner', 'result', 'export', 'monitor'}.
    Models are built in train.precision's policy; the caller's policy is
    restored after."""
    seed(config.train.seed, run_config.deterministic)
    plan = plan_run(config, run_config, strategy, verbose)
    with precision_policy(plan.config.train.precision):
        write_run_files(plan)
        plan = plan.recording_skips()
        learner = train(plan, verbose) if plan.task is not None else None
        result = None
        if plan.evaluates:
            result = evaluate(plan.config, plan.run_config, plan.strategy, learner, verbose,
                              source=plan.data.eval, skipped=plan.data.skipped)
        export = None
        if learner is not None and plan.config.export.export_at_end:
            export = export_at_end(plan, learner, verbose)
    return {"learner": learner, "result": result, "export": export,
            "monitor": last_monitor_report(plan)}


def seed(value: int, deterministic: bool) -> None:
    """TensorFlow's global seed; with `deterministic`, Python's and NumPy's
    too, and op determinism (reproducible, slower)."""
    if deterministic:
        tf_keras.utils.set_random_seed(value)
        tf.config.experimental.enable_op_determinism()
    else:
        tf.random.set_seed(value)


def write_run_files(plan: RunPlan) -> None:
    """The run directory's record (config.json), the data's index files
    and the labelled subset's ids: the chief's, the plan's."""
    tf.io.gfile.makedirs(plan.model_dir)
    if not plan.chief:
        return
    if writes_record(plan.run_config.mode):
        write_record(plan.model_dir, plan.config, dataclasses.asdict(plan.run_config),
                     " ".join(sys.argv), list(plan.changes))
    plan.data.store.flush()
    if plan.data.labelled is not None:
        write_ids(path(plan.model_dir, SUBSET_FILE), plan.data.train, plan.data.labelled)


def last_monitor_report(plan: RunPlan) -> Optional[Dict]:
    """The kNN monitor's last report of a pretraining run, if it reported."""
    if plan.task is None or not plan.task.contrastive:
        return None
    record = read_json(path(plan.model_dir, MONITOR_FILE))
    return record["history"][-1] if record and record["history"] else None


def export_at_end(plan: RunPlan, learner: Learner, verbose: bool = True) -> Optional[str]:
    """Hub modules of the trained model in <model_dir>/<export_dir>/<step>.
    Every worker exports (saving may need all of them); only the chief's stays."""
    export_dir = (os.path.join(plan.model_dir, plan.config.export.export_dir)
                  if plan.chief else plan.worker_dir("_export"))
    try:
        exported = export_hub_modules(learner.model, export_dir, config=plan.config,
                                      step=int(learner.step.numpy()), train_mode=learner.mode)
    except ExportInterrupted:
        raise  # SIGTERM: the command's preempted exit, not a failed export
    except (ExportError, OSError, tf.errors.OpError) as error:
        message = getattr(error, "message", None) or str(error)
        raise RunError(f"training finished and its checkpoint is saved, but the hub "
                       f"export to {export_dir!r} failed: {message}. Export it later with "
                       f"`python export/export_hub.py --model_dir={plan.model_dir} "
                       "--export_dir=<a writable directory>`") from None
    if not plan.chief:
        shutil.rmtree(export_dir, ignore_errors=True)
        return None
    if verbose:
        print(f"exported hub modules to {exported}", flush=True)
    return exported
