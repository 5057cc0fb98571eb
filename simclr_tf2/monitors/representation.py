"""Label-free and label-light measures of a representation.

Hand-written: neither TensorFlow nor tf-models-official has the effective
rank, and the weighted kNN classifier of self-supervised monitoring (Wu et
al., 2018, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", section 3.4) is a few lines over a matmul and top_k.
"""
import logging
from typing import Optional

import tensorflow as tf

from simclr_tf2.errors import CollapseError

log = logging.getLogger("simclr_tf2.monitors")


def effective_rank(features: tf.Tensor) -> tf.Tensor:
    """exp(entropy of the normalised singular values) of the centred rows.

    Roy & Vetterli (2007), "The effective rank: a measure of effective
    dimensionality"; used for self-supervised representations by Garrido et
    al. (2023, RankMe). 1 when every row lies on one line through the mean,
    min(rows - 1, dim) at most. A representation that collapses into few
    dimensions shows it here while the contrastive loss may still fall.

    features: [n, dim]. The singular values come from an SVD of the centred
    features, not from the eigenvalues of a Gram matrix: in float32 those
    carry round-off of about eps x the largest, whose square roots counted
    as directions (a rank-1 representation measured 1.04, a rank-3 one 3.00
    instead of 2.94). Non-finite features give NaN (the SVD itself would
    fail on them).
    """
    x = tf.cast(features, tf.float32)
    finite = tf.reduce_all(tf.math.is_finite(x))
    x = tf.where(finite, x, tf.zeros_like(x))
    x = x - tf.reduce_mean(x, axis=0, keepdims=True)
    singular = tf.linalg.svd(x, compute_uv=False)
    total = tf.reduce_sum(singular)
    p = singular / tf.maximum(total, 1e-12)
    entropy = -tf.reduce_sum(tf.where(p > 0, p * tf.math.log(tf.maximum(p, 1e-30)), 0.0))
    rank = tf.where(total > 0, tf.exp(entropy), 0.0)
    return tf.where(finite, rank, float("nan"))


def knn_predict(bank: tf.Tensor, bank_labels: tf.Tensor, queries: tf.Tensor,
                num_classes: int, k: int = 200, temperature: float = 0.1,
                chunk: int = 1024) -> tf.Tensor:
    """Weighted k-nearest-neighbour class of each query (Wu et al., 2018).

    Cosine similarity s between L2-normalised features; each of the k most
    similar bank rows votes for its label with weight exp(s / temperature);
    the class with the largest total wins (ties: the smallest class id).

    bank: [n, dim]; bank_labels: [n] ints in [0, num_classes); queries:
    [m, dim]. Returns [m] int32. Queries are processed `chunk` at a time so
    the [chunk, n] similarity matrix stays small.
    """
    bank = tf.math.l2_normalize(tf.cast(bank, tf.float32), axis=-1)
    queries = tf.math.l2_normalize(tf.cast(queries, tf.float32), axis=-1)
    bank_labels = tf.cast(bank_labels, tf.int32)
    k = min(k, int(bank.shape[0]))
    predictions = []
    for start in range(0, int(queries.shape[0]), chunk):
        similarity = tf.matmul(queries[start:start + chunk], bank, transpose_b=True)
        top, index = tf.math.top_k(similarity, k=k)  # [chunk, k]
        votes = tf.one_hot(tf.gather(bank_labels, index), num_classes)  # [chunk, k, C]
        scores = tf.reduce_sum(votes * tf.exp(top / temperature)[..., None], axis=1)
        predictions.append(tf.argmax(scores, axis=-1, output_type=tf.int32))
    if not predictions:
        return tf.zeros([0], tf.int32)
    return tf.concat(predictions, axis=0)


class CollapseWatch:
    """Watches a pretraining run's effective rank, one value per loop, and
    says once when it falls below `ratio` of its peak so far (0: never).

    On mnist5k at batch 128 with the memory contrasted as the paper describes
    it (--memory_contrast_keys=online) the projections' rank went 41.5 ->
    11.2 -> 8.1 in the first 93 steps (0.27, then 0.20 of the peak); with
    the default memory 47.5 -> 18.9 at its lowest (0.40), on the digits demo
    26.7 -> 15.1 (0.57): bench/RESULTS.md, "Collapse alarm"."""

    def __init__(self, ratio: float, name: str = "the projections' effective rank"):
        self.ratio = ratio
        self.name = name
        self.peak = None  # (value, step)
        self.fired = False

    def update(self, value: float, step: int):
        """A warning (one line) the first time `value` at `step` is below
        ratio x the peak; None otherwise."""
        if self.peak is None or value > self.peak[0]:
            self.peak = (value, step)
            return None
        if self.fired or not self.ratio or value >= self.ratio * self.peak[0]:
            return None
        self.fired = True
        return (f"step {step}: {self.name} fell to {value:.3g}, below {self.ratio:g} of "
                f"its peak {self.peak[0]:.3g} at step {self.peak[1]}: the representation "
                "is collapsing. Usual causes: the memory contrasted with online "
                "positives (--memory_contrast_keys=online), a queue much larger than the "
                "batch, too high a learning rate (bench/RESULTS.md, 'Memory')")


def sound_alarm(warning: Optional[str], stop: bool, verbose: bool) -> None:
    """A CollapseWatch warning: CollapseError when `stop` (stop_on_collapse;
    the last checkpoint is kept), else one warning line (console when
    verbose, the log otherwise)."""
    if warning is None:
        return
    if stop:
        raise CollapseError(f"{warning}. Stopped (--stop_on_collapse); the last "
                            "checkpoint is kept")
    if verbose:
        log.info(warning)
        print(f"warning: {warning}", flush=True)
    else:
        log.warning(warning)
