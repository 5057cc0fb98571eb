"""Sources (folders with bad files, built-in), subsets, sharding, pipelines
(tfds: test_folders_and_shards.py)."""
import io
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import mirrored_strategy
from simclr_tf2.configs.schema import DataConfig
from simclr_tf2.data import (DataError, build_dataset, builtin_source, distribute,
                             folder_source, labelled_subset, list_folder, make_source,
                             stratified_subset, subset_from_ids, verify_files)
from simclr_tf2.data.listing import labelled_view


def _save(path, array, mode=None, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, format=fmt)


def _rgb(h=12, w=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def messy_folder(tmp_path):
    """Two classes with good images in every odd format, plus bad files."""
    root = tmp_path / "images"
    a, b = root / "cat", root / "dog"
    _save(str(a / "good.jpg"), _rgb())
    _save(str(a / "grey.png"), _rgb()[..., 0])
    _save(str(a / "rgba.png"), np.concatenate([_rgb(), np.full((12, 10, 1), 128, np.uint8)], -1))
    _save(str(a / "deep16.png"), np.full((9, 9), 65535, np.uint16))
    _save(str(a / "tiny.png"), _rgb(2, 2))
    _save(str(a / "nested" / "deeper.bmp"), _rgb(5, 7))
    _save(str(b / "good.png"), _rgb(seed=1))
    _save(str(b / "anim.gif"), _rgb(seed=2)[..., 0])
    buffer = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buffer, format="JPEG")
    (b / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    (b / "notes.txt").write_text("not an image")
    (b / "fake.jpg").write_text("a text file with an image name")
    (b / ".hidden.jpg").write_text("ignored")
    return root


def _scan(root, labelled=True):
    """(paths, labels, classes, skipped) of a folder read as class folders."""
    paths, labels, classes, skipped = labelled_view(list_folder(root), labelled)
    return paths, list(labels), classes, skipped


def test_folder_handles_formats_lists_without_decoding_and_verifies_on_request(
        messy_folder, caplog):
    paths, labels, classes, skipped = _scan(str(messy_folder))
    assert classes == ["cat", "dog"]
    good = ["cat/deep16.png", "cat/good.jpg", "cat/grey.png", "cat/nested/deeper.bmp",
            "cat/rgba.png", "cat/tiny.png", "dog/anim.gif", "dog/good.png"]
    # Listing reads no file: image names are listed, other names are left out.
    assert paths == sorted(good[:6]) + ["dog/anim.gif", "dog/fake.jpg", "dog/good.png",
                                        "dog/truncated.jpg"]
    assert labels == [0] * 6 + [1] * 4
    assert skipped == {"dog/notes.txt": "not an image file name"}
    verified = verify_files(list_folder(str(messy_folder)))
    assert verified.paths == good and verified.verified
    assert sorted(verified.skipped) == ["dog/fake.jpg", "dog/notes.txt", "dog/truncated.jpg"]
    assert "cannot be decoded" in verified.skipped["dog/truncated.jpg"]
    with caplog.at_level(logging.WARNING, logger="simclr_tf2.data"):
        source = folder_source(str(messy_folder), "train", labelled=True, verify=True)
    assert "left out 3 file(s)" in caplog.text
    assert source.num_classes == 2 and len(source) == 8
    examples = {source.ids[int(x["index"])]: x for x in source.dataset()}
    for path, example in examples.items():
        image = example["image"].numpy()
        assert image.ndim == 3 and image.shape[-1] == 3, path
        assert image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1, path
    np.testing.assert_allclose(examples["cat/deep16.png"]["image"], 1.0)  # 16-bit white
    grey = examples["cat/grey.png"]["image"].numpy()
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    assert examples["cat/tiny.png"]["image"].shape == (2, 2, 3)
    # Tiny and odd images go through the augmentations too.
    batch = next(iter(build_dataset(source, "pretrain", 8, 16, seed=1)))
    assert batch["view1"].shape == (8, 16, 16, 3)


def test_folder_errors_name_the_problem(tmp_path, messy_folder):
    with pytest.raises(DataError, match="does not exist"):
        list_folder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        list_folder(str(tmp_path / "empty"))
    _save(str(tmp_path / "flat" / "a.png"), _rgb())
    with pytest.raises(DataError, match="no class sub-folders"):
        _scan(str(tmp_path / "flat"))
    (messy_folder / "zebra").mkdir()
    (messy_folder / "zebra" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"\['zebra'\].*add images or remove"):
        _scan(str(messy_folder))


def test_unlabeled_folder_tree_and_split_subfolder(tmp_path):
    root = tmp_path / "raw"
    for i, sub in enumerate(["x", "x/y", "z"]):
        _save(str(root / "train" / sub / f"{i}.png"), _rgb(seed=i))
    source = folder_source(str(root), "train", labelled=False)
    assert len(source) == 3 and source.num_classes == 0
    assert (source.labels == -1).all()
    config = DataConfig(dataset="folder", data_dir=str(root))
    assert len(make_source(config, "train", labelled=False)) == 3


def test_builtin_sources():
    train = builtin_source("digits", "train", 16)
    assert len(train) == 1438 and train.num_classes == 10
    example = next(iter(train.dataset(np.array([5]))))
    assert example["image"].shape == (16, 16, 3) and int(example["index"]) == 5
    assert int(example["label"]) == int(train.labels[5])


def test_stratified_subset_is_deterministic_and_stratified():
    labels = np.repeat(np.arange(10), 400)
    subset = stratified_subset(labels, 0.01, seed=3)
    assert len(subset) == 40
    np.testing.assert_array_equal(np.bincount(labels[subset]), np.full(10, 4))
    np.testing.assert_array_equal(subset, stratified_subset(labels, 0.01, seed=3))
    assert not np.array_equal(subset, stratified_subset(labels, 0.01, seed=4))
    ten = stratified_subset(labels, 0.1, seed=3)
    np.testing.assert_array_equal(np.bincount(labels[ten]), np.full(10, 40))
    uneven = np.array([0] * 300 + [1] * 30)
    np.testing.assert_array_equal(np.bincount(uneven[stratified_subset(uneven, 0.1)]),
                                  [30, 3])


def test_fraction_that_empties_a_class_is_a_clear_error():
    labels = np.array([0] * 100 + [1] * 5)
    with pytest.raises(DataError, match="leaves class 1 .*5 examples"):
        stratified_subset(labels, 0.05)


def test_subset_ids_are_written_and_read_back(tmp_path):
    source = builtin_source("digits", "train", 8)
    path = str(tmp_path / "run" / "labelled_ids.txt")
    subset = labelled_subset(source, 0.1, seed=1, write_to=path)
    assert len(subset) == pytest.approx(144, abs=5)
    np.testing.assert_array_equal(subset_from_ids(source, path), subset)
    np.testing.assert_array_equal(labelled_subset(source, ids_file=path), subset)
    (tmp_path / "bad.txt").write_text("0\n99999\n")
    with pytest.raises(DataError, match="1 id.*99999"):
        subset_from_ids(source, str(tmp_path / "bad.txt"))
    with pytest.raises(DataError, match="does not exist"):
        subset_from_ids(source, str(tmp_path / "nope.txt"))


def _indices(dataset):
    seen = np.concatenate([b["index"].numpy() for b in dataset])
    return seen[seen >= 0]


def test_eval_pipeline_covers_every_example_once_with_padding():
    source = builtin_source("digits", "test", 8)  # 359 examples
    batches = list(build_dataset(source, "eval", 64, 8))
    assert all(b["image"].shape == (64, 8, 8, 3) for b in batches)
    assert len(batches) == 6
    last = batches[-1]["label"].numpy()
    assert (last[359 - 5 * 64:] == -1).all() and (last[:359 - 5 * 64] >= 0).all()
    np.testing.assert_array_equal(np.sort(_indices(batches)), np.arange(359))


def test_sharding_across_two_pipelines_is_disjoint_and_complete():
    source = builtin_source("digits", "test", 8)
    shards = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2,
                                             input_pipeline_id=pipeline,
                                             num_replicas_in_sync=2)
        shards.append(_indices(build_dataset(source, "eval", 32, 8,
                                             input_context=context)))
    assert not set(shards[0]) & set(shards[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(359))


def test_two_replicas_through_the_strategy_cover_every_example_once():
    strategy = mirrored_strategy(2)
    source = builtin_source("digits", "test", 8)
    dataset = distribute(strategy, lambda ctx: build_dataset(
        source, "eval", 32, 8, input_context=ctx))
    per_replica = [[], []]
    for batch in dataset:
        for replica, part in enumerate(strategy.experimental_local_results(batch["index"])):
            assert part.shape == (16,)
            per_replica[replica].append(part.numpy())
    seen = [np.concatenate(p) for p in per_replica]
    seen = [s[s >= 0] for s in seen]
    assert not set(seen[0]) & set(seen[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(359))


def test_batch_not_divisible_by_replicas_is_a_clear_error():
    source = builtin_source("digits", "test", 8)
    context = tf.distribute.InputContext(1, 0, 3)
    with pytest.raises(DataError, match="not divisible by the 3 replicas"):
        build_dataset(source, "pretrain", 32, 8, input_context=context)


def test_pretrain_pipeline_is_deterministic_when_seeded():
    source = builtin_source("digits", "train", 16)

    def first_batches(seed):
        ds = build_dataset(source, "pretrain", 16, 16, seed=seed, color_strength=0.5)
        return [b for _, b in zip(range(2), ds)]
    a, b, c = first_batches(5), first_batches(5), first_batches(6)
    for x, y in zip(a, b):
        for key in ("view1", "view2", "index"):
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(a[0]["view1"], c[0]["view1"])
    assert not np.array_equal(a[0]["view1"], a[0]["view2"])  # two different views
    assert a[0]["view1"].shape == (16, 16, 16, 3)


def test_index_stream_permutes_each_pass_and_skips_without_producing():
    """Random-access sources: every pass a permutation of the kept indices
    (a new one per pass), the counter each index's position in the stream of
    whole passes, and a skip of k the same as the stream from k on."""
    from simclr_tf2.data.index_stream import index_stream as _index_stream
    indices = np.arange(3, 23, dtype=np.int64)  # 20 of a source of 30
    known = np.zeros(30, bool)
    known[[4, 17]] = True
    kept = sorted(set(indices.tolist()) - {4, 17})

    def take(skip, count, parts=1):
        stream = _index_stream(indices, seed=5, shuffle=True, repeat=True, known=known,
                               skip=skip, parts=parts).take(count)
        return np.array([(int(c), int(i)) for c, i in stream.as_numpy_iterator()])
    full = take(0, 3 * 18)
    passes = [full[p * 18:(p + 1) * 18] for p in range(3)]
    for p, part in enumerate(passes):
        assert sorted(part[:, 1]) == kept
        assert (part[:, 0] // 20 == p).all()  # counters of pass p: 20p .. 20p + 19
        assert len(set(part[:, 0])) == 18
    assert not np.array_equal(passes[0][:, 1], passes[1][:, 1])
    # the counters of one pass are the positions in its unfiltered permutation
    unfiltered = _index_stream(indices, 5, True, True, None, 0).take(20)
    position = {int(i): int(c) for c, i in unfiltered.as_numpy_iterator()}
    assert all(position[i] == c for c, i in passes[0])
    for skip in (7, 18, 41):
        np.testing.assert_array_equal(take(skip, 10), full[skip:skip + 10])
    # Cut into parts (for a tf.data service's workers): the same stream.
    for parts, skip in ((4, 0), (7, 0), (4, 25), (18, 41)):
        np.testing.assert_array_equal(take(skip, 3 * 18 - skip, parts), full[skip:])
    one = _index_stream(indices, 5, False, False, None, 3)  # evaluation order
    assert [int(i) for _, i in one.as_numpy_iterator()] == list(range(6, 23))
    cut = _index_stream(indices, 5, False, False, None, 3, parts=6)
    assert [int(i) for _, i in cut.as_numpy_iterator()] == list(range(6, 23))


@pytest.mark.parametrize("cache", [False, True])
def test_start_step_resumes_the_exact_batch_stream(cache):
    source = builtin_source("digits", "train", 8)
    config = dict(mode="pretrain", batch_size=64, image_size=8, seed=2, cache=cache)
    fresh = [b for _, b in zip(range(30), build_dataset(source, **config))]
    resumed = [b for _, b in zip(range(3), build_dataset(source, start_step=27, **config))]
    assert len(fresh) == 30 and len(resumed) == 3  # 27 batches = past the first epoch
    for x, y in zip(fresh[27:], resumed):
        np.testing.assert_array_equal(x["index"], y["index"])
        np.testing.assert_array_equal(x["view2"], y["view2"])


def _copy_tree(local_root, remote_root):
    """The local folder, file for file, on another TensorFlow filesystem."""
    for directory, _, files in os.walk(local_root):
        target = remote_root + directory[len(str(local_root)):].replace(os.sep, "/")
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(directory, name), f"{target}/{name}", overwrite=True)


def test_a_folder_on_another_filesystem_reads_exactly_like_on_local_disk(messy_folder):
    """ram:// stands for gs:// and the other TensorFlow filesystems."""
    remote = "ram://test_data_pipeline/images"
    _copy_tree(messy_folder, remote)
    try:
        assert _scan(remote, True) == _scan(str(messy_folder), True)
        assert _scan(remote, False) == _scan(str(messy_folder), False)
        far_listing = list_folder(remote)
        assert far_listing.directories is None  # buckets have no directory times
        assert verify_files(far_listing).paths == verify_files(
            list_folder(str(messy_folder))).paths
        local, far = (folder_source(r, "train", labelled=True, verify=True)
                      for r in (str(messy_folder), remote))
        assert list(far.ids) == list(local.ids) and (far.labels == local.labels).all()
        pairs = list(zip(local.dataset(), far.dataset()))
        assert len(pairs) == len(local) == 8
        for a, b in pairs:
            np.testing.assert_array_equal(a["image"], b["image"])
        tf.io.gfile.makedirs("ram://test_data_pipeline/ids")
        ids_file = "ram://test_data_pipeline/ids/ids.txt"
        with tf.io.gfile.GFile(ids_file, "w") as f:
            f.write("cat/good.jpg\ndog/good.png\n")
        assert list(subset_from_ids(far, ids_file)) == [local.ids.tolist().index(
            "cat/good.jpg"), local.ids.tolist().index("dog/good.png")]
        with pytest.raises(DataError, match="does not exist"):
            list_folder(remote + "/missing")
    finally:
        tf.io.gfile.rmtree("ram://test_data_pipeline")
