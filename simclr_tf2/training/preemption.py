"""A run that is asked to stop ends with a checkpoint of the step it reached.

TensorFlow's `PreemptionCheckpointHandler` watches for SIGTERM (what GCE,
Cloud TPU, Kubernetes and Slurm send before stopping a machine) and, where
TensorFlow detects one, the platform's maintenance notice; across workers
it agrees on the step at which all of them save. It is called after every
step (SimCLRTrainer's loop), not once per loop as orbit's
`SaveCheckpointIfPreempted` action is: a loop of steps_per_loop steps can
outlast a platform's grace period, a step does not. The checkpoint goes
through the run's CheckpointManager, whose state file names a checkpoint
only once its files are complete, so a second signal or the end of the
grace period never leaves a half-written checkpoint that a rerun would read.
"""
import contextlib
import logging
import signal
import threading
from typing import Optional

import tensorflow as tf

from simclr_tf2.errors import Preempted


@contextlib.contextmanager
def preemption_checkpoints(strategy: tf.distribute.Strategy,
                           manager: tf.train.CheckpointManager, step: tf.Variable):
    """Within the block, a SIGTERM makes the handler it yields save a
    checkpoint at the step reached and raise Preempted (call
    `save_checkpoint_if_preempted()` after each step). The handler restores
    the newest checkpoint in the manager's directory, or runs the manager's
    init_fn, as it starts. Yields None where no signal can be watched (not
    the main thread). The SIGTERM handler before the block is restored
    after it."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    previous = signal.getsignal(signal.SIGTERM)
    tf_log = logging.getLogger("tensorflow")
    tf_log.addFilter(_without_its_deprecation_notice)

    def stop():
        raise Preempted(int(step.numpy()))
    resolver = (strategy.cluster_resolver
                if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) else None)
    try:
        with strategy.scope():
            handler = tf.distribute.experimental.PreemptionCheckpointHandler(
                resolver, manager,
                termination_config=tf.distribute.experimental.TerminationConfig(
                    exit_fn=stop))
        yield handler
    finally:
        signal.signal(signal.SIGTERM, previous)
        tf_log.removeFilter(_without_its_deprecation_notice)


def _without_its_deprecation_notice(record: logging.LogRecord) -> bool:
    """The handler, saving, reads a property of its own that TensorFlow 2.20
    marks deprecated, and logs so on the console of every preempted run."""
    return "total_run_calls" not in record.getMessage()


def checkpoint_if_preempted(handler: Optional[object], step: tf.Variable) -> None:
    """After a step: if a stop was asked for (here or on a peer worker), save
    the checkpoint the workers agreed on, ckpt-<step> as the run's others,
    and raise Preempted."""
    if handler is not None:
        handler.save_checkpoint_if_preempted(checkpoint_number=step, check_interval=False)
