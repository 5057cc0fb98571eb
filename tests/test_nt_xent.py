"""NT-Xent against the paper's algorithm, and across replicas."""
import numpy as np
import pytest
import tensorflow as tf

from conftest import mirrored_strategy
from simclr_tf2.objectives import nt_xent_loss


def numpy_nt_xent(h1, h2, temperature, hidden_norm, queue=None):
    """The paper's loss written pair by pair: z_k = view 1 of k, z_{N+k} = view 2
    of k; l(i, j) = -log exp(s_ij / t) / sum_{k != i} exp(s_ik / t) (plus the
    queue keys in the denominator). Returns mean_k [l(k, N+k) + l(N+k, k)]."""
    z = np.concatenate([h1, h2]).astype(np.float64)
    if hidden_norm:
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(h1)
    keys = np.zeros((0, z.shape[1])) if queue is None else np.asarray(queue, np.float64)

    def pair_loss(i, j):
        sims = [z[i] @ z[k] / temperature for k in range(2 * n) if k != i]
        sims += [z[i] @ key / temperature for key in keys]
        log_denominator = np.log(np.sum(np.exp(sims)))
        return -(z[i] @ z[j] / temperature - log_denominator)

    return np.mean([pair_loss(k, n + k) + pair_loss(n + k, k) for k in range(n)])


@pytest.mark.parametrize("batch", [1, 2, 5, 16])
@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("hidden_norm", [True, False])
def test_matches_numpy_transcription(batch, temperature, hidden_norm):
    rng = np.random.RandomState(batch)
    scale = 1.0 if hidden_norm else 0.3  # keep unnormalised logits moderate
    h1 = rng.randn(batch, 8).astype(np.float32) * scale
    h2 = rng.randn(batch, 8).astype(np.float32) * scale
    result = nt_xent_loss(np.concatenate([h1, h2]), temperature, hidden_norm)
    expected = numpy_nt_xent(h1, h2, temperature, hidden_norm)
    np.testing.assert_allclose(result.loss.numpy(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_queue_keys_are_extra_negatives_only(temperature):
    rng = np.random.RandomState(0)
    h1, h2 = rng.randn(4, 6).astype(np.float32), rng.randn(4, 6).astype(np.float32)
    queue = rng.randn(7, 6)
    queue /= np.linalg.norm(queue, axis=1, keepdims=True)
    hidden = np.concatenate([h1, h2])
    with_queue = nt_xent_loss(hidden, temperature, queue=queue.astype(np.float32))
    expected = numpy_nt_xent(h1, h2, temperature, True, queue=queue)
    np.testing.assert_allclose(with_queue.loss.numpy(), expected, rtol=1e-4)
    # Negatives only: more negatives can only raise the loss.
    assert with_queue.loss.numpy() > nt_xent_loss(hidden, temperature).loss.numpy()
    # A key equal to a positive partner does not become a positive: the loss
    # treats it as one more negative (and the gradient does not reach it).
    dup = tf.constant(np.concatenate([h2[:1] / np.linalg.norm(h2[:1])]), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(dup)
        loss = nt_xent_loss(hidden, temperature, queue=dup).loss
    assert tape.gradient(loss, dup) is None
    np.testing.assert_allclose(
        loss.numpy(), numpy_nt_xent(h1, h2, temperature, True, queue=dup.numpy()), rtol=1e-4)


def test_invalid_queue_entries_are_ignored():
    rng = np.random.RandomState(1)
    hidden = rng.randn(6, 4).astype(np.float32)
    queue = rng.randn(5, 4).astype(np.float32)
    valid = np.array([True, True, False, False, False])
    partial = nt_xent_loss(hidden, 0.2, queue=queue, queue_valid=valid)
    only_valid = nt_xent_loss(hidden, 0.2, queue=queue[:2])
    np.testing.assert_allclose(partial.loss.numpy(), only_valid.loss.numpy(), rtol=1e-6)
    empty = nt_xent_loss(hidden, 0.2, queue=queue, queue_valid=np.zeros(5, bool))
    np.testing.assert_allclose(empty.loss.numpy(), nt_xent_loss(hidden, 0.2).loss.numpy(),
                               rtol=1e-6)


def test_accuracy_and_entropy():
    # Identical views far apart from each other: every positive wins, softmax is sharp.
    h = np.eye(4, dtype=np.float32) * 10
    result = nt_xent_loss(np.concatenate([h, h]), temperature=0.05)
    assert result.accuracy.numpy() == 1.0
    assert result.entropy.numpy() < 1e-3
    # All projections identical: uniform over 2N - 1 real candidates.
    same = np.ones((8, 3), np.float32)
    uniform = nt_xent_loss(same, temperature=0.5)
    np.testing.assert_allclose(uniform.entropy.numpy(), np.log(7), rtol=1e-4)
    np.testing.assert_allclose(uniform.loss.numpy(), 2 * np.log(7), rtol=1e-4)


@pytest.mark.parametrize("replicas", [2, 4])
@pytest.mark.parametrize("use_queue", [False, True])
def test_multi_replica_loss_and_gradients_equal_one_replica(replicas, use_queue):
    global_batch, in_dim, dim = 8, 5, 6
    rng = np.random.RandomState(replicas)
    x1 = rng.randn(global_batch, in_dim).astype(np.float32)
    x2 = rng.randn(global_batch, in_dim).astype(np.float32)
    w0 = rng.randn(in_dim, dim).astype(np.float32)
    queue = rng.randn(3, dim).astype(np.float32) if use_queue else None

    # One replica, whole global batch.
    w = tf.Variable(w0)
    with tf.GradientTape() as tape:
        hidden = tf.matmul(tf.concat([x1, x2], 0), w)
        single = nt_xent_loss(hidden, 0.3, queue=queue).loss
    single_grad = tape.gradient(single, w).numpy()

    strategy = mirrored_strategy(replicas)
    with strategy.scope():
        w_dist = tf.Variable(w0)
    local = global_batch // replicas

    def replica_fn():
        ctx = tf.distribute.get_replica_context()
        start = ctx.replica_id_in_sync_group * local
        a = tf.slice(x1, [start, 0], [local, in_dim])
        b = tf.slice(x2, [start, 0], [local, in_dim])
        with tf.GradientTape() as tape:
            loss = nt_xent_loss(tf.matmul(tf.concat([a, b], 0), w_dist), 0.3,
                                queue=queue).loss
            scaled = loss / ctx.num_replicas_in_sync
        return loss, tape.gradient(scaled, w_dist)

    losses, grads = strategy.run(tf.function(replica_fn))
    mean_loss = strategy.reduce("MEAN", losses, axis=None).numpy()
    summed_grad = strategy.reduce("SUM", grads, axis=None).numpy()
    np.testing.assert_allclose(mean_loss, single.numpy(), rtol=1e-5)
    np.testing.assert_allclose(summed_grad, single_grad, rtol=1e-4, atol=1e-6)


def numpy_nt_xent_general(h1, h2, temperature, keys=None, queue=None,
                          queue_temperature=None, queue_mask=None):
    """The loss with every option, pair by pair (normalised projections):
    anchor z_i (view 1 of k is i = k, view 2 is i = N + k) against the
    candidates c (the projections themselves, or the key encoder's `keys` of
    the same 2N views): l(i, j) = -log exp(z_i.c_j / t) / (sum_{k != i}
    exp(z_i.c_k / t) + sum over the queue keys q allowed for i's example of
    exp(z_i.q / t_q)). Returns mean_k [l(k, N+k) + l(N+k, k)]."""
    def norm(a):
        a = np.asarray(a, np.float64)
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    z = norm(np.concatenate([h1, h2]))
    c = z if keys is None else norm(keys)
    n = len(h1)
    q = np.zeros((0, z.shape[1])) if queue is None else np.asarray(queue, np.float64)
    tq = queue_temperature or temperature

    def pair_loss(i, j):
        sims = [z[i] @ c[k] / temperature for k in range(2 * n) if k != i]
        sims += [z[i] @ key / tq for m, key in enumerate(q)
                 if queue_mask is None or queue_mask[i % n][m]]
        return -(z[i] @ c[j] / temperature - np.log(np.sum(np.exp(sims))))

    return np.mean([pair_loss(k, n + k) + pair_loss(n + k, k) for k in range(n)])


@pytest.mark.parametrize("use_keys", [False, True])
@pytest.mark.parametrize("queue_temperature", [None, 0.1])
@pytest.mark.parametrize("per_example_mask", [False, True])
def test_every_option_matches_numpy(use_keys, queue_temperature, per_example_mask):
    rng = np.random.RandomState(7)
    n, dim = 5, 6
    h1, h2 = rng.randn(n, dim).astype(np.float32), rng.randn(n, dim).astype(np.float32)
    keys = rng.randn(2 * n, dim).astype(np.float32) if use_keys else None
    queue = rng.randn(4, dim)
    queue /= np.linalg.norm(queue, axis=1, keepdims=True)
    mask = rng.rand(n, 4) > 0.4 if per_example_mask else None
    result = nt_xent_loss(np.concatenate([h1, h2]), 0.5, queue=queue.astype(np.float32),
                          queue_valid=mask, queue_temperature=queue_temperature, keys=keys)
    expected = numpy_nt_xent_general(h1, h2, 0.5, keys, queue, queue_temperature, mask)
    np.testing.assert_allclose(result.loss.numpy(), expected, rtol=1e-4)


def test_keys_receive_no_gradient_and_anchors_do():
    rng = np.random.RandomState(3)
    hidden = tf.constant(rng.randn(8, 4), tf.float32)
    keys = tf.constant(rng.randn(8, 4), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([hidden, keys])
        loss = nt_xent_loss(hidden, 0.2, keys=keys).loss
    assert tape.gradient(loss, keys) is None
    assert np.abs(tape.gradient(loss, hidden).numpy()).sum() > 0


def test_cosine_statistics_equal_numpy():
    rng = np.random.RandomState(5)
    n = 4
    h = rng.randn(2 * n, 3)
    queue = rng.randn(6, 3)
    queue /= np.linalg.norm(queue, axis=1, keepdims=True)
    valid = np.array([True] * 4 + [False] * 2)
    result = nt_xent_loss(h.astype(np.float32), 0.5, queue=queue.astype(np.float32),
                          queue_valid=valid)
    z = h / np.linalg.norm(h, axis=1, keepdims=True)
    cos = z @ z.T
    partner = np.r_[np.arange(n, 2 * n), np.arange(n)]
    positive = cos[np.arange(2 * n), partner].mean()
    negative = np.mean([cos[i, j] for i in range(2 * n) for j in range(2 * n)
                        if j not in (i, partner[i])])
    assert float(result.positive_cosine) == pytest.approx(positive, rel=1e-5)
    assert float(result.negative_cosine) == pytest.approx(negative, rel=1e-4, abs=1e-6)
    assert float(result.queue_cosine) == pytest.approx((z @ queue[valid].T).mean(), rel=1e-5)


def test_multi_replica_keys_equal_one_replica():
    """MoCo-style keys across 2 replicas: the same loss and anchor gradient
    as one replica on the same global batch."""
    rng = np.random.RandomState(11)
    x = rng.randn(8, 5).astype(np.float32)  # 4 examples x 2 views, view-major
    keys = rng.randn(8, 6).astype(np.float32)
    w0 = rng.randn(5, 6).astype(np.float32)
    w = tf.Variable(w0)
    with tf.GradientTape() as tape:
        single = nt_xent_loss(tf.matmul(x, w), 0.3, keys=keys).loss
    single_grad = tape.gradient(single, w).numpy()
    strategy = mirrored_strategy(2)
    with strategy.scope():
        w_dist = tf.Variable(w0)

    def replica_fn():
        ctx = tf.distribute.get_replica_context()
        r = ctx.replica_id_in_sync_group
        rows = tf.concat([tf.range(2) + 2 * r, tf.range(2) + 4 + 2 * r], 0)
        with tf.GradientTape() as tape:
            loss = nt_xent_loss(tf.matmul(tf.gather(x, rows), w_dist), 0.3,
                                keys=tf.gather(keys, rows)).loss
            scaled = loss / 2
        return loss, tape.gradient(scaled, w_dist)

    losses, grads = strategy.run(tf.function(replica_fn))
    np.testing.assert_allclose(strategy.reduce("MEAN", losses, axis=None).numpy(),
                               single.numpy(), rtol=1e-5)
    np.testing.assert_allclose(strategy.reduce("SUM", grads, axis=None).numpy(), single_grad,
                               rtol=1e-4, atol=1e-6)
