"""Memory: FIFO negative queue and momentum (EMA) encoder."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from conftest import mirrored_strategy
from simclr_tf2.memory import MomentumEncoder, NegativeQueue


def _keys(start, n, dim=3):
    return np.arange(start, start + n, dtype=np.float32)[:, None] * np.ones((1, dim), np.float32)


def test_queue_is_fifo_and_wraps():
    queue = NegativeQueue(size=5, dim=3)
    assert not queue.valid.numpy().any()
    queue.enqueue(_keys(0, 2))
    np.testing.assert_array_equal(queue.valid.numpy(), [1, 1, 0, 0, 0])
    queue.enqueue(_keys(2, 2))
    queue.enqueue(_keys(4, 2))  # 6 keys into 5 slots: key 0 is overwritten by key 5
    np.testing.assert_array_equal(queue.keys.numpy()[:, 0], [5, 1, 2, 3, 4])
    assert queue.valid.numpy().all()
    queue.enqueue(_keys(6, 3))
    np.testing.assert_array_equal(queue.keys.numpy()[:, 0], [5, 6, 7, 8, 4])
    queue.enqueue(_keys(9, 7))  # more than the queue holds: only the newest 5 stay
    assert sorted(queue.keys.numpy()[:, 0]) == [11, 12, 13, 14, 15]
    assert int(queue.count.numpy()) == 16


def test_queue_survives_a_checkpoint_round_trip(tmp_path):
    queue = NegativeQueue(size=4, dim=2)
    queue.enqueue(np.random.rand(3, 2).astype(np.float32))
    path = tf.train.Checkpoint(queue=queue).save(str(tmp_path / "ckpt"))
    restored = NegativeQueue(size=4, dim=2)
    tf.train.Checkpoint(queue=restored).restore(path).assert_consumed()
    np.testing.assert_array_equal(restored.keys.numpy(), queue.keys.numpy())
    assert int(restored.count.numpy()) == 3


def test_queue_rejects_bad_sizes():
    with pytest.raises(ValueError, match="size=0"):
        NegativeQueue(size=0, dim=4)
    with pytest.raises(ValueError, match="dim=-1"):
        NegativeQueue(size=4, dim=-1)


@pytest.mark.parametrize("replicas", [2, 4])
def test_queue_gathers_all_replicas_and_is_identical_everywhere(replicas):
    strategy = mirrored_strategy(replicas)
    with strategy.scope():
        queue = NegativeQueue(size=16, dim=2)

    @tf.function
    def step(offset):
        def replica_fn():
            rid = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group,
                          tf.float32)
            queue.enqueue(tf.fill([2, 2], offset + rid))
        strategy.run(replica_fn)

    step(tf.constant(0.0))
    step(tf.constant(10.0))
    per_replica = [v.numpy() for v in queue.keys.values]
    for values in per_replica[1:]:
        np.testing.assert_array_equal(values, per_replica[0])
    expected = np.repeat(np.concatenate([np.arange(replicas), 10 + np.arange(replicas)]), 2)
    np.testing.assert_array_equal(per_replica[0][:4 * replicas, 0], expected)
    assert int(queue.count.numpy()) == 4 * replicas


def _small_net():
    return tf_keras.Sequential([tf_keras.layers.Dense(4, input_shape=(3,)),
                                tf_keras.layers.BatchNormalization(),
                                tf_keras.layers.Dense(2)])


@pytest.mark.parametrize("momentum", [0.9, 0.999])
def test_ema_moves_exactly_one_minus_m_toward_online(momentum):
    online = _small_net()
    encoder = MomentumEncoder(online, _small_net, momentum=momentum)
    for o, t in zip(online.weights, encoder.target.weights):
        np.testing.assert_array_equal(o.numpy(), t.numpy())  # starts as a copy
    for var in online.trainable_weights:
        var.assign_add(tf.random.normal(var.shape))
    before = [t.numpy().copy() for t in encoder.target_variables]
    encoder.update()
    for o, t, b in zip(online.trainable_weights, encoder.target_variables, before):
        np.testing.assert_allclose(t.numpy() - b, (1 - momentum) * (o.numpy() - b),
                                   rtol=1e-4, atol=1e-7)
    assert encoder.target_variables and not any(
        t is o for t in encoder.target_variables for o in online.trainable_weights)


def test_ema_update_runs_in_replica_context():
    strategy = mirrored_strategy(2)
    with strategy.scope():
        online = _small_net()
        encoder = MomentumEncoder(online, _small_net, momentum=0.5)
        online.trainable_weights[0].assign(tf.ones_like(online.trainable_weights[0]))
    before = encoder.target_variables[0].numpy().copy()
    strategy.run(tf.function(encoder.update))
    np.testing.assert_allclose(encoder.target_variables[0].numpy(), 0.5 * before + 0.5,
                               rtol=1e-6)
    values = [v.numpy() for v in encoder.target_variables[0].values]
    np.testing.assert_array_equal(values[0], values[1])


def test_momentum_encoder_rejects_mismatched_target():
    online = _small_net()
    wider = lambda: tf_keras.Sequential([tf_keras.layers.Dense(5, input_shape=(3,)),  # noqa: E731
                                         tf_keras.layers.BatchNormalization(),
                                         tf_keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="shape mismatch"):
        MomentumEncoder(online, wider)
    with pytest.raises(ValueError, match="momentum=2"):
        MomentumEncoder(online, _small_net, momentum=2)


def test_queue_remembers_which_image_each_key_came_from():
    queue = NegativeQueue(size=5, dim=3)
    np.testing.assert_array_equal(queue.ids.numpy(), [-1] * 5)
    # Two images, two views each: keys view-major, one id per image.
    queue.enqueue(_keys(0, 4), num_views=2, ids=tf.constant([7, 9], tf.int64))
    np.testing.assert_array_equal(queue.ids.numpy()[:4], [7, 9, 7, 9])
    queue.enqueue(_keys(4, 2), num_views=2, ids=tf.constant([3], tf.int64))
    np.testing.assert_array_equal(queue.ids.numpy(), [3, 9, 7, 9, 3])
    queue.enqueue(_keys(6, 1))  # no ids: unknown
    assert queue.ids.numpy()[1] == -1


def test_queue_ids_follow_their_keys_across_replicas():
    strategy = mirrored_strategy(2)
    with strategy.scope():
        queue = NegativeQueue(size=8, dim=1)

    @tf.function
    def step():
        def replica_fn():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            ids = tf.cast(10 * rid + tf.range(2), tf.int64)  # 2 images per replica
            keys = tf.cast(tf.concat([ids, 100 + ids], 0), tf.float32)[:, None]
            queue.enqueue(keys, num_views=2, ids=ids)
        strategy.run(replica_fn)

    step()
    keys = queue.keys.values[0].numpy()[:, 0]
    ids = queue.ids.values[0].numpy()
    np.testing.assert_array_equal(keys, [0, 1, 10, 11, 100, 101, 110, 111])
    np.testing.assert_array_equal(ids, [0, 1, 10, 11, 0, 1, 10, 11])
