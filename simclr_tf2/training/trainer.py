"""The training loop's trainer: one orbit.StandardTrainer over the Learner's
distributed step, with per-loop metrics, a progress line with an ETA, and a
stop on a non-finite loss."""
import contextlib
import logging
import math
import re
import sys
import time

import orbit
import tensorflow as tf
import tf_keras

from simclr_tf2.errors import NonFiniteLossError
from simclr_tf2.monitors.representation import CollapseWatch, sound_alarm
from simclr_tf2.tasks.pretrain import MEMORY_METRICS as MEMORY_DIAGNOSTICS
from simclr_tf2.training.learner import Learner
from simclr_tf2.training.preemption import checkpoint_if_preempted

log = logging.getLogger("simclr_tf2.train")

# The messages orbit's Controller both logs (info) and prints: every loop's
# output dict, checkpoint saves and restores.
_ORBIT_LINE = re.compile(r"^\s*(train|eval) \| step:|^saved checkpoint to |^restor")


class _WithoutOrbitCopies:
    """A text stream that drops the printed copy of orbit's messages (they
    are in the log already) and passes everything else to `stream`."""

    def __init__(self, stream):
        self._stream = stream
        self._dropped = False  # print() writes the message, then "\n"

    def write(self, text):
        if self._dropped and text == "\n":
            self._dropped = False
            return len(text)
        self._dropped = bool(_ORBIT_LINE.match(text))
        return len(text) if self._dropped else self._stream.write(text)

    def __getattr__(self, name):  # flush, fileno, encoding, isatty ...
        return getattr(self._stream, name)


def orbit_messages_logged_only():
    """A context in which orbit's Controller messages go to the log only: our
    progress line says what its multi-line output dict says, in one line.
    sys.stdout is the caller's again after it."""
    return contextlib.redirect_stdout(_WithoutOrbitCopies(sys.stdout))


def say(verbose: bool, message: str) -> None:
    """A normal event: a plain line on the console when verbose, and info
    in the log."""
    log.info(message)
    if verbose:
        print(message, flush=True)


def format_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class SimCLRTrainer(orbit.StandardTrainer):
    """Runs `Learner.distributed_step` in orbit's loop; averages metrics per loop."""

    # Printed on a second line with monitor.console_diagnostics, and kept
    # per loop for monitor.json: the memory's diagnostics and the pair cosines.
    MEMORY_METRICS = ("cos_positive", "cos_negative") + MEMORY_DIAGNOSTICS

    def __init__(self, learner: Learner, strategy, dataset, total_steps: int,
                 global_batch: int, verbose: bool = True, skip_log=None,
                 preemption=None):
        self.learner = learner
        # A PreemptionCheckpointHandler, asked after every step (preemption.py).
        self.preemption = preemption
        self.skip_log = skip_log  # images that failed to decode (data/skips.py)
        self.strategy = strategy
        self.total_steps = total_steps
        self.global_batch = global_batch
        self.verbose = verbose
        # Host-side accumulators, updated with already-reduced values in
        # cross-replica context (so created outside the strategy scope): one
        # per metric the task lists.
        self.metrics = {name: tf_keras.metrics.Mean(name)
                        for name in learner.task.all_metric_names()}
        self._loop_start = None
        self._loop_step = None
        self._run_start = time.time()
        self._run_start_step = int(learner.step.numpy())
        self.collapse = CollapseWatch(learner.config.monitor.collapse_alarm)
        self.diagnostics = []  # per loop, runs with the memory: monitor.json
        super().__init__(dataset, options=orbit.StandardTrainerOptions(
            use_tf_while_loop=False))

    def create_train_loop_fn(self):
        """orbit's loop without a tf.while_loop (each step a call of the
        compiled step), with the preemption check after every step."""
        step = tf.function(self.train_step)

        def loop(iterator, num_steps):
            for _ in range(int(num_steps)):
                step(iterator)
                checkpoint_if_preempted(self.preemption, self.learner.step)
        return loop

    def train_loop_begin(self):
        for metric in self.metrics.values():
            metric.reset_state()
        self._loop_start = time.time()
        self._loop_step = int(self.learner.step.numpy())

    def train_step(self, iterator):
        metrics = self.learner.distributed_step(self.strategy, next(iterator))
        for name, value in metrics.items():
            if name not in self.metrics:  # a bug, not a silent drop
                raise KeyError(f"the step returned metric {name!r}, which task "
                               f"{self.learner.mode!r} does not list: add it to its "
                               "metric_names")
            self.metrics[name].update_state(value)

    def _watch_collapse(self, results, step: int) -> None:
        """The collapse alarm on the projections' rank (runs with the memory
        compute it each step); the memory's diagnostics kept for monitor.json."""
        if "erank_projection" not in results:
            return
        self.diagnostics.append({"step": step, **{k: results[k] for k in
                                                  self.MEMORY_METRICS if k in results}})
        monitor = self.learner.config.monitor
        sound_alarm(self.collapse.update(results["erank_projection"], step),
                    monitor.stop_on_collapse, self.verbose)

    def train_loop_end(self):
        step = int(self.learner.step.numpy())
        results = {name: float(m.result()) for name, m in self.metrics.items()
                   if int(m.count.numpy()) > 0}
        if not math.isfinite(results.get("loss", 0.0)):
            raise NonFiniteLossError(
                f"non-finite loss ({results.get('loss')}) in the steps up to {step}: "
                "training stopped and the last good checkpoint is kept; lower the "
                "learning rate or use float32")
        elapsed = max(time.time() - self._loop_start, 1e-9)
        steps = step - self._loop_step
        results["images_per_second"] = steps * self.global_batch / elapsed
        results["weight_decay"] = self.learner.config.train.weight_decay
        if self.skip_log is not None:
            self.skip_log.update()  # tells of each new one
            results["skipped_images"] = self.skip_log.count
        self._watch_collapse(results, step)
        rate = (step - self._run_start_step) / max(time.time() - self._run_start, 1e-9)
        eta = (self.total_steps - step) / rate if rate > 0 else 0.0
        if self.verbose:
            # Pretraining: the contrastive objective first, then the probe.
            first = ("contrast_loss",) if "contrast_loss" in results else ("loss",)
            shown = " ".join(f"{k} {results[k]:.4g}" for k in
                             first + ("contrast_acc", "probe_loss", "probe_acc",
                                      "sup_loss", "sup_acc", "distill_loss",
                                      "teacher_agreement", "learning_rate")
                             if k in results)
            skipped = results.get("skipped_images", 0)
            print(f"step {step}/{self.total_steps} {shown} | "
                  f"{results['images_per_second']:.1f} img/s | ETA "
                  f"{format_time(eta)}" + (f" | {skipped} bad images skipped" if skipped
                                           else ""), flush=True)
            if "cos_queue" in results and self.learner.config.monitor.console_diagnostics:
                print("  memory: " + " ".join(f"{k} {results[k]:.3g}" for k in
                                             self.MEMORY_METRICS if k in results),
                      flush=True)
        return results
