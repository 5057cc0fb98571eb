"""kNN accuracy and effective rank of the current backbone, during pretraining.

Every `knn_interval` steps the backbone embeds a bank (training images) and
queries (evaluation images) on the eval view in inference mode, and reports
the weighted kNN top-1 of the queries against the bank and the effective rank
of the bank's features. Inference mode reads the batch-norm moving averages
and changes no variable, and the eval pipeline draws no random numbers, so the
monitor does not change training. Its cost is one forward pass over
`knn_bank_size + knn_eval_size` images per report: the bank and queries are
picked once, their pipelines and the forward function made once (no
retrace, on TPU no recompile, at later reports), and only their images are
read and decoded.
"""
import time
from typing import Dict, Optional, Sequence

import numpy as np
import orbit
import tensorflow as tf

from simclr_tf2.configs.schema import DataConfig
from simclr_tf2.data import build_from_config, distribute
from simclr_tf2.data.subsets import row_lookup
from simclr_tf2.monitors.representation import (CollapseWatch, effective_rank, knn_predict,
                                                sound_alarm)


class Embedder:
    """The model's `outputs` in inference mode on the eval view of the
    examples `indices` (all by default) of `source`: calling it returns
    {name: [n, dim] float32, 'label': [n] int64, 'index': [n] int64}, rows
    in `indices` order, without the examples whose image did not decode.
    Its input pipeline and its forward function are made once: calling it
    again (a monitor's next report) reads the same examples and traces
    nothing. The pipeline reads only those examples (TFRecord files and
    tfds: only the chunks that hold them), so the rest of the split is
    neither read nor decoded. With a strategy each replica embeds its share
    of every batch."""

    def __init__(self, model, data_config: DataConfig, source, batch_size: int,
                 outputs: Sequence[str] = ("final_avg_pool",),
                 indices: Optional[np.ndarray] = None,
                 strategy: Optional[tf.distribute.Strategy] = None):
        strategy = strategy or tf.distribute.get_strategy()
        self.source = source
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices)
        self.strategy = strategy
        replicas = strategy.num_replicas_in_sync
        batch_size = max(batch_size // replicas, 1) * replicas
        self.dataset = distribute(strategy, lambda ctx: build_from_config(
            data_config, source, "eval", batch_size, self.indices, input_context=ctx))

        @tf.function
        def forward(batch):
            def replica(b):
                out = model(b["image"], training=False)
                return {**{k: tf.cast(out[k], tf.float32) for k in outputs},
                        "index": b["index"]}
            return strategy.run(replica, args=(batch,))
        self.forward = forward
        self._row_of = row_lookup(self.indices)

    def traces(self) -> int:
        """How many times the forward function has been traced."""
        return self.forward.experimental_get_tracing_count()

    def __call__(self) -> Dict[str, np.ndarray]:
        indices, strategy = self.indices, self.strategy
        filled = np.zeros(len(indices), bool)
        table = {}
        for batch in self.dataset:
            per_replica = self.forward(batch)
            local = {k: [v.numpy() for v in strategy.experimental_local_results(per_replica[k])]
                     for k in per_replica}
            index = np.concatenate(local.pop("index"))
            keep = index >= 0  # eval batches are padded with index -1
            rows = self._row_of(index[keep])
            filled[rows] = True
            for name, parts in local.items():
                values = np.concatenate(parts)[keep]
                if name not in table:
                    table[name] = np.zeros([len(indices), values.shape[-1]], np.float32)
                table[name][rows] = values
        table["label"] = np.asarray(self.source.labels)[indices]
        table["index"] = np.asarray(indices, np.int64)
        return {name: values[filled] for name, values in table.items()}


def embed(model, data_config: DataConfig, source, batch_size: int,
          outputs: Sequence[str] = ("final_avg_pool",),
          indices: Optional[np.ndarray] = None,
          strategy: Optional[tf.distribute.Strategy] = None) -> Dict[str, np.ndarray]:
    """One `Embedder` pass (see there)."""
    return Embedder(model, data_config, source, batch_size, outputs, indices, strategy)()


def representation_report(model, data_config: DataConfig, bank_source, query_source,
                          batch_size: int, k: int = 200, temperature: float = 0.1,
                          outputs: Sequence[str] = ("final_avg_pool",),
                          bank_indices: Optional[np.ndarray] = None,
                          query_indices: Optional[np.ndarray] = None,
                          strategy: Optional[tf.distribute.Strategy] = None
                          ) -> Dict[str, float]:
    """{'knn_top1_<output>', 'erank_<output>'} for each output: weighted kNN
    top-1 of the queries against the bank (when both have labels) and the
    effective rank of the bank's features."""
    bank = Embedder(model, data_config, bank_source, batch_size, outputs, bank_indices,
                    strategy)
    queries = None
    if query_source is not None:
        queries = Embedder(model, data_config, query_source, batch_size, outputs,
                           query_indices, strategy)
    return report_of(bank, queries, outputs, k, temperature)


def report_of(bank: Embedder, queries: Optional[Embedder], outputs: Sequence[str],
              k: int, temperature: float) -> Dict[str, float]:
    """`representation_report` of two embedders' current embeddings."""
    bank = bank()
    labelled = (bank["label"] >= 0).all() and len(bank["label"]) > 0
    if labelled and queries is not None:
        queries = queries()
        labelled = (queries["label"] >= 0).all() and len(queries["label"]) > 0
    else:
        labelled = False
    report = {}
    for name in outputs:
        report[f"erank_{name}"] = float(effective_rank(bank[name]))
        if labelled:
            classes = int(max(bank["label"].max(), queries["label"].max())) + 1
            predicted = knn_predict(bank[name], bank["label"], queries[name], classes,
                                    k=k, temperature=temperature).numpy()
            report[f"knn_top1_{name}"] = float((predicted == queries["label"]).mean())
    return report


def monitor_indices(size: int, limit: int, seed: int) -> np.ndarray:
    """All of 0..size-1, or a seeded random `limit` of them in increasing order."""
    if limit <= 0 or size <= limit:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).choice(size, limit, replace=False))


def monitor_subset(source, limit: int, seed: int) -> np.ndarray:
    """`monitor_indices` of `source`, or, for sources read by chunks
    (TFRecord files, tfds), `limit` examples in seeded random whole chunks,
    so that a report reads about `limit` records, not most of the split."""
    if limit <= 0 or len(source) <= limit or source.sample is None:
        return monitor_indices(len(source), limit, seed)
    return source.sample(limit, seed)


class KnnMonitor(orbit.AbstractEvaluator):
    """An orbit evaluator: `evaluate()` returns {'knn_top1', 'erank'} of the
    backbone output (`final_avg_pool`), with 'knn_top1' only when the bank
    and the queries have labels. `controller.train_and_evaluate(...,
    eval_interval=knn_interval)` runs it between training loops and writes
    its values to TensorBoard (summaries/monitor)."""

    def __init__(self, model, data_config: DataConfig, bank_source, query_source,
                 batch_size: int, k: int, temperature: float,
                 bank_indices: Optional[np.ndarray] = None,
                 query_indices: Optional[np.ndarray] = None,
                 strategy: Optional[tf.distribute.Strategy] = None,
                 step: Optional[tf.Variable] = None, verbose: bool = True,
                 collapse_alarm: float = 0.0, stop_on_collapse: bool = False):
        self.model = model
        # The backbone's rank over the bank, watched like the projections'
        # (runs with the memory) but in every run the monitor reports on.
        self.collapse = CollapseWatch(collapse_alarm,
                                      name="the backbone's effective rank (kNN monitor)")
        self.stop_on_collapse = stop_on_collapse
        self.k, self.temperature = k, temperature
        # Picked, piped and traced once; each report reads the same examples.
        self.bank = Embedder(model, data_config, bank_source, batch_size,
                             indices=bank_indices, strategy=strategy)
        self.queries = None if query_source is None else Embedder(
            model, data_config, query_source, batch_size, indices=query_indices,
            strategy=strategy)
        self.step = step
        self.verbose = verbose
        self.seconds = 0.0
        self.history = []

    def evaluate(self, num_steps: tf.Tensor) -> Dict[str, float]:
        del num_steps  # one pass over the bank and the queries
        start = time.time()
        report = report_of(self.bank, self.queries, ("final_avg_pool",), self.k,
                           self.temperature)
        seconds = time.time() - start
        self.seconds += seconds
        result = {}
        if "knn_top1_final_avg_pool" in report:
            result["knn_top1"] = report["knn_top1_final_avg_pool"]
        result["erank"] = report["erank_final_avg_pool"]
        step = int(self.step.numpy()) if self.step is not None else None
        self.history.append({"step": step, **result})
        if self.verbose:
            shown = " ".join(f"{k} {v:.4g}" for k, v in result.items())
            print(f"step {step} monitor {shown} (backbone, eval view, {seconds:.1f}s)",
                  flush=True)
        sound_alarm(self.collapse.update(result["erank"], step), self.stop_on_collapse,
                    self.verbose)
        return result
