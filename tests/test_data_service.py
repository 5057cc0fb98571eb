"""The training pipeline on a tf.data service (--data_service): a dispatcher
and two workers on loopback, in this process."""
import itertools

import numpy as np
import pytest
from PIL import Image

from simclr_tf2.data import build_dataset, builtin_source, folder_source
from simclr_tf2.data.index_stream import service_parts
from simclr_tf2.data_service import start_dispatcher, start_worker
from simclr_tf2.errors import DataError


@pytest.fixture(scope="module")
def service():
    dispatcher = start_dispatcher()
    workers = [start_worker(dispatcher.target) for _ in range(2)]
    yield dispatcher.target
    for server in workers + [dispatcher]:
        server._stop()


def test_each_example_once_per_pass_with_the_local_views(service):
    """One pass through two workers: every example exactly once (each worker
    reading the whole pass would give each twice), and each with the views
    the local pipeline gives it for the same seed; then the repeating
    training stream: the first pass whole, whatever the workers' order."""
    source = builtin_source("digits", "train", 16)
    indices = np.arange(100, 900)  # 800 of them
    assert service_parts(len(indices)) > 2  # more parts than workers
    settings = dict(seed=3, crop_area_min=0.3, repeat=False, drop_remainder=False,
                    indices=indices)
    local = {int(e["index"]): e for e in
             build_dataset(source, "pretrain", 16, 16, **settings).unbatch()}
    served = list(build_dataset(source, "pretrain", 16, 16, service=service,
                                **settings).unbatch())
    assert sorted(int(e["index"]) for e in served) == sorted(local) == indices.tolist()
    for element in served:
        mine = local[int(element["index"])]
        for key in ("view1", "view2", "label"):
            np.testing.assert_array_equal(element[key], mine[key])
    training = build_dataset(source, "pretrain", 16, 16, seed=3, service=service,
                             augment_on="device", indices=indices).unbatch()
    seen = [int(e["index"]) - 100 for e in itertools.islice(training, 2 * len(indices))]
    counts = np.bincount(seen, minlength=len(indices))
    # Two passes' worth: the workers may have begun a third pass, not more.
    assert counts.min() >= 1 and counts.max() <= 3 and np.median(counts) == 2


def test_a_cached_source_is_refused_with_the_fix(service, tmp_path):
    for i in range(4):
        (tmp_path / "images" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((9, 9, 3), 40 * i, np.uint8)).save(
            tmp_path / "images" / "a" / f"{i}.png")
    folder = folder_source(str(tmp_path / "images"), "train", allow_root=True)
    with pytest.raises(DataError, match="without cache"):
        build_dataset(folder, "pretrain", 2, 8, cache=True, service=service)
    # evaluation passes stay local: no service job for them
    source = builtin_source("digits", "train", 16)
    assert len(list(build_dataset(source, "eval", 512, 16, service=service))) == 3


def test_data_service_settings_are_checked_before_a_run(tmp_path):
    from simclr_tf2 import get_preset
    from simclr_tf2.training.run_config import RunConfig
    from simclr_tf2.training.validation import validate
    tiny = get_preset("tiny")
    with pytest.raises(ValueError, match="grpc://host:port"):
        tiny.override(**{"data.data_service": "localhost:5050"})
    run = RunConfig(mode="pretrain", model_dir=str(tmp_path))
    for changes in ({"data.dataset": "tfrecord", "data.data_dir": "/shards"},
                    {"data.dataset": "cifar10"}, {"data.cache": True}):
        config = tiny.override(**{"data.data_service": "grpc://h:5050", **changes})
        with pytest.raises(ValueError, match="drop data_service"):
            validate(config, run)
    for dataset in ("digits", "folder"):
        validate(tiny.override(**{"data.data_service": "grpc://h:5050",
                                  "data.dataset": dataset, "data.data_dir": str(tmp_path)}),
                 run)
