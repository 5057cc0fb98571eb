"""Stand-ins for the benchmark scripts' training runs (picklable, so worker
processes can import them; no TensorFlow here)."""
import os
import zlib


def fake_top1(text):
    """A deterministic 'accuracy' in [0, 1) from a run's directory."""
    return (zlib.crc32(text.encode()) % 1000) / 1000


class FakeLearner:
    def __init__(self, steps):
        self.step = FakeStep(steps)


class FakeStep:
    def __init__(self, steps):
        self.steps = steps

    def numpy(self):
        return self.steps


class FakeRun:
    """runner.run for the benchmarks: records each stage's configs, makes
    its model_dir, trains nothing; supervised stages 'score' fake_top1."""

    def __init__(self):
        self.calls = []

    def __call__(self, config, run_config, verbose=True):
        os.makedirs(run_config.model_dir, exist_ok=True)
        self.calls.append((config, run_config))
        result = None
        if run_config.mode != "pretrain":
            result = {"top1": fake_top1(run_config.model_dir)}
        return {"result": result, "learner": FakeLearner(config.train.train_steps or 7),
                "export": None, "monitor": None}


def fake_task(task, workdir, pretrain_dirs, quick):
    """semisupervised.run_task's shape: [(method, fraction, record)]."""
    pretraining, seed, fraction, kind, _ = task
    return [(kind, fraction, {"top1": fake_top1(f"{pretraining}{seed}{fraction}{kind}"),
                              "pid": os.getpid()})]
