"""A run asked to stop (SIGTERM) writes a checkpoint at the step it reached,
says so in one line, exits with PREEMPTED_EXIT_CODE, and the rerun resumes
exactly."""
import os
import signal

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from simclr_tf2 import get_preset
from simclr_tf2.errors import PREEMPTED_EXIT_CODE, Preempted
from simclr_tf2.flag_definitions import define_flags
from simclr_tf2.train import run_command
from simclr_tf2.training import trainer as trainer_module
from simclr_tf2.training.runner import RunConfig, run


def _config():
    # Checkpoints every 1000 steps: only the preemption's can hold step 4-8.
    # An eighth-width ResNet-18 on 16 px digits: the check is the steps, not
    # the model.
    return get_preset("tiny").override(**{
        "train.train_steps": 9, "train.steps_per_loop": 3, "train.summary_interval": 3,
        "train.checkpoint_interval": 1000, "train.train_batch_size": 16,
        "train.learning_rate": 0.3, "memory.queue_size": 32,
        "model.width_multiplier": 0.125, "data.image_size": 16,
        "export.export_at_end": False})


def test_sigterm_checkpoints_the_step_reached_and_the_rerun_resumes_exactly(
        tmp_path, monkeypatch):
    stopped_dir, straight_dir = str(tmp_path / "stopped"), str(tmp_path / "straight")
    end = trainer_module.SimCLRTrainer.train_loop_end

    def sigterm_after_step_3(self):
        results = end(self)
        if int(self.learner.step.numpy()) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would
        return results
    monkeypatch.setattr(trainer_module.SimCLRTrainer, "train_loop_end", sigterm_after_step_3)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match=r"preempted at step \d+: checkpoint written, "
                                        "rerun the same command to resume") as stopped:
        run(_config(), RunConfig(mode="pretrain", model_dir=stopped_dir,
                                 deterministic=True), verbose=False)
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler again
    step = stopped.value.step
    assert 3 < step <= 5, step  # the step in flight and the one the handler agrees on
    assert tf.train.latest_checkpoint(stopped_dir).endswith(f"ckpt-{step}")
    monkeypatch.undo()

    reads = []  # the resumed run reads its checkpoint once (a bucket: once per restart)
    restore = tf.train.Checkpoint.restore
    monkeypatch.setattr(tf.train.Checkpoint, "restore", lambda self, path, **kw: (
        reads.append(path), restore(self, path, **kw))[1])
    resumed = run(_config(), RunConfig(mode="pretrain", model_dir=stopped_dir,
                                       deterministic=True), verbose=False)
    monkeypatch.undo()
    assert reads == [tf.train.latest_checkpoint(stopped_dir).replace("-9", f"-{step}")]
    assert int(resumed["learner"].step.numpy()) == 9
    run(_config(), RunConfig(mode="pretrain", model_dir=straight_dir, deterministic=True),
        verbose=False)
    a = tf.train.load_checkpoint(tf.train.latest_checkpoint(stopped_dir))
    b = tf.train.load_checkpoint(tf.train.latest_checkpoint(straight_dir))
    keys = [k for k, _ in tf.train.list_variables(tf.train.latest_checkpoint(stopped_dir))
            if k.endswith("VARIABLE_VALUE") and k.startswith(("model/", "queue/",
                                                               "momentum_encoder/"))]
    assert any(k.startswith("queue/") for k in keys)
    for key in keys:
        np.testing.assert_allclose(a.get_tensor(key), b.get_tensor(key), rtol=1e-4,
                                   atol=1e-5, err_msg=key)


def test_a_preempted_command_prints_one_line_and_exits_with_its_code(tmp_path, monkeypatch,
                                                                     capsys):
    from simclr_tf2 import train as train_module

    def preempted(config, run_config):
        raise Preempted(7)
    monkeypatch.setattr(train_module, "run", preempted)
    values = flags.FlagValues()
    define_flags(values)
    values(["train", f"--model_dir={tmp_path}", "--train_steps=2"])
    assert run_command(values) == PREEMPTED_EXIT_CODE == 75
    out = capsys.readouterr()
    assert out.out.strip().splitlines()[-1] == ("preempted at step 7: checkpoint written, "
                                                "rerun the same command to resume")
    assert "error" not in out.err


def test_sigterm_during_the_batch_norm_recompute_keeps_a_whole_final_checkpoint(
        tmp_path, monkeypatch):
    """--bn_recompute rewrites the final checkpoint. SIGTERM while the
    statistics are recomputed: Preempted, the checkpoint as training left it;
    the rerun (at the last step) recomputes. SIGTERM once the write has
    begun: held until the checkpoint is whole, then Preempted."""
    from simclr_tf2 import signals
    from simclr_tf2.training import fit
    model_dir = str(tmp_path / "ft")
    config = _config().override(**{"train.train_steps": 2, "train.steps_per_loop": 2,
                                   "train.summary_interval": 2,
                                   "train.bn_recompute": True,
                                   "train.bn_recompute_batches": 2})
    run_config = RunConfig(mode="finetune", model_dir=model_dir, from_scratch=True)
    recompute = fit.recompute_bn

    def sigterm_then_recompute(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return recompute(*args, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(fit, "recompute_bn", sigterm_then_recompute)
        with pytest.raises(Preempted, match="preempted at step 2"):
            run(config, run_config, verbose=False)
    key = next(k for k, _ in tf.train.list_variables(model_dir) if "moving_mean" in k)
    trained = tf.train.load_checkpoint(model_dir).get_tensor(key)
    hold = signals.Guard.hold

    def hold_then_sigterm(guard):
        hold(guard)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives during the write
    with monkeypatch.context() as patch:
        patch.setattr(signals.Guard, "hold", hold_then_sigterm)
        with pytest.raises(Preempted, match="preempted at step 2"):
            run(config, run_config, verbose=False)
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-2")
    recomputed = tf.train.load_checkpoint(model_dir).get_tensor(key)
    assert not np.allclose(recomputed, trained)  # the rewritten checkpoint, whole
