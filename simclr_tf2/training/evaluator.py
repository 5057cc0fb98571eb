"""Evaluation: top-1 / top-5 of the supervised head on the eval split, in
orbit's evaluation loop (`orbit.StandardEvaluator`), on any strategy."""
from typing import Callable, Dict, Optional

import orbit
import tensorflow as tf
import tf_keras

from simclr_tf2.configs.schema import ExperimentConfig
from simclr_tf2.data import build_from_config, distribute, make_source
from simclr_tf2.rundir import (RESULT_FILE, checkpoint_step, has_checkpoint, path,
                               restore_model, write_json)
from simclr_tf2.training.distribution import is_chief
from simclr_tf2.training.initialisation import init_model
from simclr_tf2.training.learner import Learner
from simclr_tf2.training.run_config import RunConfig
from simclr_tf2.tasks import task_for
from simclr_tf2.training.validation import check_classes


class TopKEvaluator(orbit.StandardEvaluator):
    """Counts correct top-1 / top-5 predictions of `model['logits_sup']`
    over a finite distributed dataset of {'image', 'label'} batches (labels
    < 0, the eval batches' padding, do not count)."""

    def __init__(self, model: tf_keras.Model, strategy, dataset):
        self.model = model
        self.strategy = strategy
        # Updated with already-reduced sums in cross-replica context.
        self.sums = {name: tf_keras.metrics.Sum(name) for name in ("top1", "top5", "count")}
        super().__init__(dataset)

    def eval_begin(self):
        for metric in self.sums.values():
            metric.reset_state()

    def eval_step(self, iterator):
        def step(batch):
            logits = tf.cast(self.model(batch["image"], training=False)["logits_sup"],
                             tf.float32)
            labels = tf.cast(batch["label"], tf.int32)
            valid = tf.cast(labels >= 0, tf.float32)
            top5 = tf.math.in_top_k(tf.maximum(labels, 0), logits,
                                    min(5, logits.shape[-1]))
            top1 = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels)
            return {"top1": tf.reduce_sum(tf.cast(top1, tf.float32) * valid),
                    "top5": tf.reduce_sum(tf.cast(top5, tf.float32) * valid),
                    "count": tf.reduce_sum(valid)}
        outputs = self.strategy.run(step, args=(next(iterator),))
        for name, value in outputs.items():
            self.sums[name].update_state(
                self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None))

    def eval_end(self):
        count = float(self.sums["count"].result())
        return {"num_examples": int(count),
                "top1": float(self.sums["top1"].result()) / max(count, 1),
                "top5": float(self.sums["top5"].result()) / max(count, 1)}


def _trained_model(config: ExperimentConfig, run_config: RunConfig, strategy):
    """(model, step, checkpoint) of the run in model_dir, or of
    run_config.checkpoint (a run, a checkpoint or an official SavedModel)."""
    mode = run_config.train_mode
    with strategy.scope():
        if has_checkpoint(run_config.model_dir):
            restored = restore_model(run_config.model_dir, mode, config=config)
            return restored.model, restored.step, restored.checkpoint
        model = task_for(mode).build_model(config)
    init_model(model, run_config.checkpoint)
    return model, checkpoint_step(run_config.checkpoint), run_config.checkpoint


def evaluate(config: ExperimentConfig, run_config: RunConfig, strategy,
             learner: Optional[Learner] = None, verbose: bool = True,
             source=None, skipped: Optional[Callable[[], Dict]] = None) -> Dict:
    """Top-1 / top-5 of the supervised head on the eval split (`source`,
    made here when not given; `learner`'s model, else the trained run);
    writes result.json, with the images the run skipped (`skipped()`:
    {split: {id: reason}})."""
    split = run_config.eval_split or config.data.eval_split
    if source is None:  # a run's plan has made and checked it
        source = make_source(config.data, split, labelled=True)
        check_classes(config, source)
    replicas = strategy.num_replicas_in_sync
    batch = max(config.train.eval_batch_size // replicas, 1) * replicas
    if learner is not None:
        model, step, checkpoint = learner.model, int(learner.step.numpy()), None
        mode = learner.mode
    else:
        model, step, checkpoint = _trained_model(config, run_config, strategy)
        mode = run_config.train_mode
    dataset = distribute(strategy, lambda ctx: build_from_config(
        config.data, source, "eval", batch, input_context=ctx))
    counts = TopKEvaluator(model, strategy, dataset).evaluate(
        tf.constant(config.train.eval_steps or -1))
    result = {"split": split, **counts, "global_step": step, "checkpoint": checkpoint,
              "train_mode": mode, "skipped": skipped() if skipped else {}}
    if is_chief(strategy):
        write_json(path(run_config.model_dir, RESULT_FILE), result)
    if verbose:
        bad = len(result["skipped"].get(split, {}))
        print(f"eval on {split}: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f} "
              f"({result['num_examples']} examples, step {step}"
              + (f"; {bad} images that do not decode left out" if bad else "") + ")",
              flush=True)
    return result
