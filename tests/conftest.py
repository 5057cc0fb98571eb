"""Test set-up: 4 logical CPU devices (multi-replica tests), shared tiny runs.
TensorFlow's log level and oneDNN are set by importing simclr_tf2 first, as
every entry point does; subprocesses inherit them."""
import itertools
import os

import simclr_tf2  # noqa: E402,F401  (before TensorFlow)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

NUM_LOGICAL_CPUS = 4

# The longest tests (30-140 s each on a 2-core machine: several training
# runs or processes) run first. pytest-xdist gives each worker a contiguous
# part of the collection and later moves tests from the end of a busy
# worker's queue to an idle one; test_train_cli.py, alphabetically last,
# ended the collection with three of them, which one worker finished while
# the other had nothing left. At the front, the short tests after them even
# out the workers. Names, not measured times (a test checks they exist).
RUN_FIRST = (
    "test_train_cli.py::test_two_local_workers_survive_a_lost_worker_and_a_preemption",
    "test_train_cli.py::test_two_replicas_follow_the_one_replica_loss_curve",
    "test_train_cli.py::test_sigkill_and_rerun_resumes_to_the_same_weights",
    "test_authors_flags.py::test_their_cifar_commands_train_and_fine_tune_end_to_end",
    "test_learner.py::test_multi_replica_steps_equal_one_replica_on_the_same_global_batch",
    "test_bench.py::test_input_pipeline_benchmark_compares_with_a_baseline_revision_in_one_run",
    "test_distill.py::test_distill_from_a_run_and_from_its_hub_export_resumes_and_exports",
    "test_recipes.py::test_own_images_recipe_pretrains_fine_tunes_exports_and_loads_in_keras",
    "test_recipes.py::test_a_folder_in_a_bucket_trains_exactly_like_on_local_disk",
    "test_preemption.py::test_sigterm_checkpoints_the_step_reached_and_the_rerun_resumes_exactly",
    "test_bench.py::test_data_scale_benchmark_fits_generates_and_times_a_run_with_its_calls",
)


def pytest_collection_modifyitems(config, items):
    """RUN_FIRST's tests (every parametrisation) first, in its order; the
    rest as collected."""
    rank = {name: i for i, name in enumerate(RUN_FIRST)}

    def position(item):
        name = f"{os.path.basename(str(item.fspath))}::{item.originalname}"
        return rank.get(name, len(RUN_FIRST))
    items.sort(key=position)

# Logical devices can only be configured before TensorFlow initialises them.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS)


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts with default dtype policy, seeds and layer names."""
    tf_keras.backend.clear_session()
    tf_keras.mixed_precision.set_global_policy("float32")
    tf.random.set_seed(0)
    np.random.seed(0)
    yield
    tf_keras.mixed_precision.set_global_policy("float32")
    tf_keras.backend.set_floatx("float32")


def logical_cpus(n):
    """Names of the first n logical CPU devices."""
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= n, f"need {n} logical CPUs, have {len(devices)}"
    return [d.name for d in devices[:n]]


_strategies_made = itertools.count(1)


def mirrored_strategy(n):
    """MirroredStrategy over n logical CPUs.

    Every new MirroredStrategy starts its collective group and instance keys
    at 1, and the runtime remembers keys for the whole process: a second
    strategy then joins the first one's group (wrong size) or instance (wrong
    shape). Each strategy made here gets its own key range, as TensorFlow's
    own tests do.
    """
    strategy_cls = type(f"MirroredStrategy{n}", (tf.distribute.MirroredStrategy,),
                        {"_collective_key_base": 100000 * next(_strategies_made)})
    return strategy_cls(logical_cpus(n))


def export_command(argv):
    """`python export/export_hub.py ARGS` (argv without "python"), in process
    through the command's own flags and run: its exit status. Tests that
    need the script itself run it in a fresh process (test_export.py)."""
    from absl import flags
    from simclr_tf2 import export_cli
    values = flags.FlagValues()
    export_cli.define_flags(values)
    values(list(argv))
    return export_cli.run_command(values)


# ------------------------------------------------------------ shared runs
# Tiny training runs that many tests read instead of each training its own.
SHARED_PRETRAIN_STEPS = 24
SHARED_FINETUNE_STEPS = 40
SHARED_QUEUE = 64


def _shared_root(tmp_path_factory):
    """One directory per test session: under pytest-xdist the workers' base
    temp dirs share a parent; without it, the session's own base temp."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared_runs"


def _build_shared_runs(root):
    """quickstart's layout (root/pretrain, root/finetune_10pct, each with a hub
    export), so the notebooks reuse them: pretraining with memory and a linear
    head on stop-gradient features, then fine-tuning from head layer 1 on 10%
    of the labels."""
    from simclr_tf2 import quickstart
    pretrain = quickstart.digits_config("pretrain", SHARED_PRETRAIN_STEPS, **{
        "memory.queue_size": SHARED_QUEUE, "memory.momentum": 0.9,
        "train.steps_per_loop": 6, "train.summary_interval": 6,
        "train.checkpoint_interval": 12})
    quickstart.run_stage(pretrain, str(root / "pretrain"), "pretrain")
    finetune = quickstart.digits_config("finetune", SHARED_FINETUNE_STEPS)
    quickstart.run_stage(finetune, str(root / "finetune_10pct"), "finetune",
                         checkpoint=str(root / "pretrain"), evaluate=False)


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory):
    """{'root', 'pretrain', 'finetune'}: the shared runs, built once per
    session by whichever worker asks first (a file lock keeps the others
    waiting). Read them; copy a run before changing it."""
    import fcntl
    root = _shared_root(tmp_path_factory)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (root / ".done").exists():
                tf_keras.backend.clear_session()
                _build_shared_runs(root)
                (root / ".done").write_text("ok")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return {"root": str(root), "pretrain": str(root / "pretrain"),
            "finetune": str(root / "finetune_10pct")}
