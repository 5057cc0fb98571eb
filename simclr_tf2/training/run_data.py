"""The data of one run, built once: each split's source and the training
subset, handed to every stage that reads them (training, the online probe,
the kNN monitor, evaluation, the labelled ids file).

Folders and TFRecord shards are listed or indexed here, once per split per
run; the index files go to `<model_dir>/data_index/` (or `index_dir`) so
that a restart, a later run and the other workers read them instead.
"""
import dataclasses
import os
from typing import Callable, Optional

import numpy as np

from simclr_tf2.configs.schema import ExperimentConfig
from simclr_tf2.data import IndexStore, labelled_subset, make_source
from simclr_tf2.data.sources import Source
from simclr_tf2.errors import DataError
from simclr_tf2.rundir import INDEX_DIR, SKIPPED_DIR, path
from simclr_tf2.tasks import Task, evaluates
from simclr_tf2.training.run_config import RunConfig


@dataclasses.dataclass
class RunData:
    """`train` (the training split; for distillation with labels masked
    outside the labelled subset) and `indices`, the examples training reads;
    `eval`, the evaluation split when the run evaluates or monitors (None
    with `eval_problem` saying why, for the kNN monitor)."""
    store: IndexStore
    train: Optional[Source] = None
    indices: Optional[np.ndarray] = None
    labelled: Optional[np.ndarray] = None  # the labelled subset (supervised modes)
    eval: Optional[Source] = None
    eval_problem: Optional[str] = None

    def recording_skips(self, model_dir: str) -> "RunData":
        """The same data, with images that fail to decode recorded under
        <model_dir>/skipped/<split>/ (skips.py) and told to the store's
        report."""
        def record(source):
            return source and source.with_skip_log(
                path(model_dir, os.path.join(SKIPPED_DIR, source.split)), self.store.report)
        return dataclasses.replace(self, train=record(self.train), eval=record(self.eval))

    def skipped(self):
        """{split: {id: reason}} of the images skipped so far, for result
        and monitor files."""
        found = {}
        for source in (self.train, self.eval):
            if source is not None and source.skip_log is not None:
                found.setdefault(source.split, {}).update(source.skip_log.as_dict())
        return found


def index_store(config: ExperimentConfig, run_config: RunConfig, chief: bool,
                report: Callable[[str], None]) -> IndexStore:
    return IndexStore(config.data.index_dir or path(run_config.model_dir, INDEX_DIR),
                      chief=chief, report=report)


def prepare_data(config: ExperimentConfig, run_config: RunConfig, store: IndexStore
                 ) -> RunData:
    """Every source and subset the run needs; any data error is raised here,
    before the run writes anything."""
    data = RunData(store)
    task = run_config.task
    if task is not None:
        _training_data(data, config, task, store)
    split = run_config.eval_split or config.data.eval_split
    if evaluates(run_config.mode):
        data.eval = make_source(config.data, split, labelled=True, store=store)
    elif task is not None and task.contrastive and config.monitor.knn_interval > 0:
        try:
            data.eval = make_source(config.data, split, labelled=True, store=store)
            if (data.eval.labels < 0).any():
                data.eval, data.eval_problem = None, f"the {split!r} split has no labels"
        except DataError as error:
            data.eval_problem = str(error)
    return data


def _training_data(data: RunData, config: ExperimentConfig, task: Task,
                   store: IndexStore) -> None:
    """The training split and the examples `task` reads: every image
    (pretraining, distillation; labels where the data has them, for the
    probe and the kNN monitor) or the labelled subset."""
    needs_labels = task.needs_labels(config)
    source = make_source(config.data, config.data.train_split, labelled=needs_labels,
                         store=store)
    if task.reads_every_image and not needs_labels:
        data.train, data.indices = source, np.arange(len(source))
        return
    data.labelled = labelled_subset(source, config.data.label_fraction,
                                    config.data.label_ids_file, seed=config.data.seed)
    if task.reads_every_image:  # every image; only the subset keeps its label
        labels = np.full(len(source), -1, np.int64)
        labels[data.labelled] = source.labels[data.labelled]
        source = dataclasses.replace(source, labels=labels)
        data.indices = np.arange(len(source))
    else:
        data.indices = data.labelled
    data.train = source
