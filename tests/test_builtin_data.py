"""Built-in offline datasets: sizes, ranges, fixed stratified split."""
import numpy as np
import pytest

from simclr_tf2.data import load_builtin, stratified_split


@pytest.mark.parametrize("name,n_train,n_test", [("digits", 1438, 359),
                                                 ("mnist5k", 4000, 1000)])
def test_builtin_split_sizes_and_ranges(name, n_train, n_test):
    train = load_builtin(name, "train", image_size=32)
    test = load_builtin(name, "test", image_size=32)
    assert (len(train), len(test)) == (n_train, n_test)
    assert train.images.shape == (n_train, 32, 32, 3)
    assert train.images.dtype == np.float32
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    assert train.images.max() > 0.9  # real ink, not a blank array
    np.testing.assert_array_equal(train.images[..., 0], train.images[..., 2])
    assert train.num_classes == 10
    # Stratified: every class keeps its share in both splits.
    train_counts = np.bincount(train.labels, minlength=10)
    test_counts = np.bincount(test.labels, minlength=10)
    np.testing.assert_allclose(test_counts / (train_counts + test_counts), 0.2, atol=0.01)


def test_split_is_deterministic_disjoint_and_complete():
    labels = np.repeat(np.arange(5), [10, 20, 30, 7, 3])
    train_a, test_a = stratified_split(labels, 0.3)
    train_b, test_b = stratified_split(labels, 0.3)
    np.testing.assert_array_equal(train_a, train_b)
    np.testing.assert_array_equal(test_a, test_b)
    assert not set(train_a) & set(test_a)
    assert sorted(np.concatenate([train_a, test_a])) == list(range(len(labels)))
    assert list(np.bincount(labels[test_a])) == [3, 6, 9, 2, 1]
    other, _ = stratified_split(labels, 0.3, seed=1)
    assert not np.array_equal(other, train_a)


def test_resize_keeps_native_size_when_asked():
    assert load_builtin("digits", "test", image_size=8).images.shape[1:] == (8, 8, 3)
    assert load_builtin("mnist5k", "test", image_size=28).images.shape[1:] == (28, 28, 3)


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown built-in dataset 'cifar'"):
        load_builtin("cifar", "train")
    with pytest.raises(ValueError, match="split='validation'"):
        load_builtin("digits", "validation")


def test_raw_data_is_decoded_once_per_process_and_callers_get_their_own_copies(
        monkeypatch):
    from simclr_tf2.data import builtin
    calls = []
    grey = np.random.RandomState(0).rand(50, 8, 8).astype(np.float32)
    labels = np.repeat(np.arange(5), 10)

    def loader():
        calls.append(1)
        return grey.copy(), labels.copy()

    monkeypatch.setitem(builtin.BUILTIN_DATASETS, "fake", (loader, 0.2))
    builtin._load_raw.cache_clear()
    try:
        first = load_builtin("fake", "train", image_size=8)
        test = load_builtin("fake", "test", image_size=8)
        first.images[:] = -1.0  # a caller that scribbles on its arrays
        first.labels[:] = 99
        again = load_builtin("fake", "train", image_size=8)
    finally:
        builtin._load_raw.cache_clear()
    assert len(calls) == 1
    assert (len(first), len(test)) == (40, 10)
    train_idx, _ = stratified_split(labels, 0.2)
    np.testing.assert_allclose(again.images[..., 0], grey[train_idx], atol=1e-6)
    np.testing.assert_array_equal(again.labels, labels[train_idx])
