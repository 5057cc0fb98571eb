"""Data at scale: folders listed once (calls counted), indexes reused,
images that fail to decode skipped where met, TFRecord shards (the TPU
ImageNet layout and make_shards'), ids by bare file name, missing splits."""
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from simclr_tf2.configs.schema import DataConfig
from simclr_tf2.data import (DataError, IndexStore, build_dataset, folder_source,
                             list_folder, make_source, records_source, stratified_subset,
                             subset_from_ids)
from simclr_tf2.data import index as index_module
from simclr_tf2.data import skips
from simclr_tf2.make_shards import write_shards


def _jpeg(seed, h=20, w=24, quality=90):
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _folder(root, classes=3, per_class=20, bad=(), split=None):
    """root/[split/]<class>/<class>_<i>.JPEG; (class, i) in `bad` are JPEGs
    truncated to a third."""
    base = root / split if split else root
    for c in range(classes):
        folder = base / f"n{c:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            data = _jpeg(c * 1000 + i)
            if (c, i) in bad:
                data = data[: len(data) // 3]
            (folder / f"n{c:04d}_{i}.JPEG").write_bytes(data)
    return str(root)


class _Calls:
    """Counts filesystem calls, as a bucket would count requests."""

    def __init__(self, monkeypatch):
        self.counts = {}
        for module, names in ((tf.io.gfile, ("listdir", "isdir", "exists", "stat", "glob",
                                             "GFile")),
                              (os, ("scandir", "stat"))):
            for name in names:
                monkeypatch.setattr(module, name, self._counted(
                    f"{module.__name__.split('.')[0]}.{name}", getattr(module, name)))

    def _counted(self, key, function):
        def call(*args, **kwargs):
            self.counts[key] = self.counts.get(key, 0) + 1
            return function(*args, **kwargs)
        return call

    def take(self):
        counts, self.counts = self.counts, {}
        return counts


def test_listing_costs_calls_per_folder_not_per_file_and_the_index_none(
        tmp_path, monkeypatch):
    root = _folder(tmp_path / "data", classes=3, per_class=40)
    (tmp_path / "data" / "n0001" / "notes.txt").write_text("x")
    calls = _Calls(monkeypatch)
    store = IndexStore(str(tmp_path / "index"))
    first = folder_source(root, "train", None, store=store)
    listed = calls.take()
    assert len(first) == 120 and first.num_classes == 3  # labels from class folders
    # 4 folders: one listing and one stat (its time, the fingerprint) each,
    # and one listing of the root for split sub-folders.
    assert listed.get("os.scandir") == 4 and listed.get("os.stat") == 4
    assert listed.get("tensorflow.listdir") == 1
    assert listed.get("tensorflow.GFile", 0) == 0  # no file opened
    assert sum(listed.values()) < 20
    assert store.flush() and not calls.take().get("os.scandir")
    again = folder_source(root, "train", None, store=store)
    read = calls.take()
    assert not read.get("os.scandir") and read.get("os.stat") == 4  # fingerprint only
    assert list(again.ids) == list(first.ids) and (again.labels == first.labels).all()
    # A changed folder is noticed and listed again.
    (tmp_path / "data" / "n0002" / "n0002_new.JPEG").write_bytes(_jpeg(7))
    assert len(folder_source(root, "train", None, store=store)) == 121
    assert calls.take().get("os.scandir") == 4


def test_listing_on_another_filesystem_costs_calls_per_folder(tmp_path, monkeypatch):
    root = "ram://test_folders_listing/data"
    for c in range(3):
        tf.io.gfile.makedirs(f"{root}/c{c}")
        for i in range(30):
            with tf.io.gfile.GFile(f"{root}/c{c}/{i}.jpg", "wb") as f:
                f.write(b"x")
    try:
        calls = _Calls(monkeypatch)
        listing = list_folder(root)
        counts = calls.take()
        assert len(listing.paths) == 90 and listing.classes == ["c0", "c1", "c2"]
        # listdir per folder; isdir for the root and each entry without an image name.
        assert counts["tensorflow.listdir"] == 4
        assert counts["tensorflow.isdir"] <= 4 + 1
        assert "tensorflow.GFile" not in counts and "tensorflow.stat" not in counts
    finally:
        tf.io.gfile.rmtree("ram://test_folders_listing")


def test_other_workers_read_the_chiefs_index_or_list_when_it_never_comes(tmp_path):
    root = _folder(tmp_path / "data", classes=2, per_class=5)
    chief = IndexStore(str(tmp_path / "index"))
    worker = IndexStore(str(tmp_path / "index"), chief=False, wait_seconds=0.2)
    worker_listing = folder_source(root, "train", True, store=worker)  # waited, listed
    worker.put("x", {}, [])
    assert worker.flush() == [] and not os.path.exists(tmp_path / "index")
    folder_source(root, "train", True, store=chief)
    written = chief.flush()
    assert len(written) == 1
    header, lines = index_module.read_index(written[0])
    assert header["kind"] == "folder" and lines == list(worker_listing.ids)
    messages = []
    reader = IndexStore(str(tmp_path / "index"), chief=False, report=messages.append)
    assert list(folder_source(root, "train", True, store=reader).ids) == lines
    assert any("from the index" in m for m in messages)


def test_labels_from_class_folders_and_images_beside_them(tmp_path):
    root = _folder(tmp_path / "data", classes=2, per_class=3)
    assert make_source(DataConfig(dataset="folder", data_dir=root), "train",
                       labelled=None).num_classes == 2
    (tmp_path / "data" / "loose.jpg").write_bytes(_jpeg(1))
    unlabeled = folder_source(root, "train", None)  # an image beside them: a tree
    assert unlabeled.num_classes == 0 and (unlabeled.labels == -1).all()
    assert len(unlabeled) == 7 and list(unlabeled.ids) == sorted(unlabeled.ids)
    labelled = folder_source(root, "train", True)  # the loose image is left out
    assert len(labelled) == 6 and "loose.jpg" not in labelled.ids


def test_a_missing_split_is_an_error_naming_the_splits_that_exist(tmp_path):
    split = tmp_path / "split"
    _folder(split, classes=2, per_class=2, split="train")
    _folder(split, classes=2, per_class=2, split="val")
    config = DataConfig(dataset="folder", data_dir=str(split))
    assert len(make_source(config, "train")) == 4 and len(make_source(config, "val")) == 4
    with pytest.raises(DataError, match=r"no 'test' split; its splits are \['train', 'val'\]"):
        make_source(config, "test")
    flat = _folder(tmp_path / "flat", classes=2, per_class=2)
    config = DataConfig(dataset="folder", data_dir=flat)
    assert len(make_source(config, "train")) == 4  # the folder is the training split
    with pytest.raises(DataError, match="not split into parts"):
        make_source(config, "test")


def test_ids_by_bare_file_name_match_folder_images_unless_two_share_it(tmp_path):
    root = _folder(tmp_path / "data", classes=2, per_class=4)
    source = folder_source(root, "train", True)
    ids_file = tmp_path / "1pct.txt"
    ids_file.write_text("n0000_1.JPEG\nn0001/n0001_2.JPEG\nn0001_3.JPEG\n")
    chosen = subset_from_ids(source, str(ids_file))
    assert [source.ids[i] for i in chosen] == [
        "n0000/n0000_1.JPEG", "n0001/n0001_2.JPEG", "n0001/n0001_3.JPEG"]
    (tmp_path / "data" / "n0001" / "n0000_1.JPEG").write_bytes(_jpeg(3))
    twice = folder_source(root, "train", True)
    with pytest.raises(DataError, match="'n0000_1.JPEG', a file name that 2 examples share"):
        subset_from_ids(twice, str(ids_file))


def _skipping(source, directory):
    return source.with_skip_log(str(directory), report=lambda message: None)


def test_bad_images_are_skipped_where_met_counted_named_and_resumed_past(tmp_path):
    bad = {(0, 3), (2, 11)}
    root = _folder(tmp_path / "data", classes=3, per_class=33, bad=bad)
    source = folder_source(root, "train", None)
    bad_ids = sorted(f"n{c:04d}/n{c:04d}_{i}.JPEG" for c, i in bad)
    run = _skipping(source, tmp_path / "skipped")
    settings = dict(mode="pretrain", batch_size=16, image_size=16, seed=3)
    batches = [b for _, b in zip(range(14), build_dataset(run, **settings))]  # 2+ epochs
    assert all(b["view1"].shape == (16, 16, 16, 3) for b in batches)  # filled up
    seen = np.concatenate([b["index"].numpy() for b in batches])
    assert sorted(set(source.ids[seen])) == sorted(set(source.ids) - set(bad_ids))
    assert sorted(run.skip_log.as_dict()) == bad_ids and run.skip_log.count == 2
    assert all("cannot be decoded" in r for r in run.skip_log.as_dict().values())
    # A restart knows them: it leaves them out before finding its position,
    # and reads exactly what the uninterrupted stream read.
    restarted = _skipping(source, tmp_path / "skipped")
    assert sorted(restarted.skip_log.known) == sorted(
        source.ids.tolist().index(i) for i in bad_ids)
    resumed = [b for _, b in zip(range(6), build_dataset(restarted, start_step=8,
                                                         **settings))]
    assert len(resumed) == 6
    for x, y in zip(batches[8:], resumed):
        np.testing.assert_array_equal(x["index"], y["index"])
        np.testing.assert_array_equal(x["view2"], y["view2"])


def test_evaluation_pads_bad_images_and_keeps_replicas_even(tmp_path):
    root = _folder(tmp_path / "data", classes=2, per_class=9, bad={(1, 8)})
    source = _skipping(folder_source(root, "train", True), tmp_path / "skipped")
    per_pipeline = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(2, pipeline, 2)
        batches = list(build_dataset(source, "eval", 8, 16, input_context=context))
        per_pipeline.append(np.concatenate([b["index"].numpy() for b in batches]))
    assert len(per_pipeline[0]) == len(per_pipeline[1])  # the same number of batches
    seen = np.concatenate(per_pipeline)
    assert sorted(seen[seen >= 0]) == [i for i in range(18) if source.ids[i] !=
                                       "n0001/n0001_8.JPEG"]
    assert list(source.skip_log.as_dict()) == ["n0001/n0001_8.JPEG"]


def test_too_many_failures_in_a_row_stop_with_an_error_naming_them(tmp_path):
    folder = tmp_path / "data" / "x"
    folder.mkdir(parents=True)
    for i in range(skips.MAX_CONSECUTIVE + 8):
        (folder / f"{i}.jpg").write_bytes(b"not a jpeg")
    source = _skipping(folder_source(str(tmp_path / "data"), "train", None),
                       tmp_path / "skipped")
    with pytest.raises(tf.errors.OpError) as error:
        next(iter(build_dataset(source, "pretrain", 4, 16)))
    stop = skips.stop_error(error.value, source.skip_log)
    assert isinstance(stop, DataError) and "x/" in str(stop) and "in a row" in str(stop)


def _feature(value):
    if isinstance(value, int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _tpu_shards(directory, images, files=2):
    """Shards in the TPU ImageNet layout: labels from 1, base file names."""
    tf.io.gfile.makedirs(directory)
    for f in range(files):
        path = f"{directory}/train-{f:05d}-of-{files:05d}"
        with tf.io.TFRecordWriter(path) as writer:
            for name, synset, label, data in images[f::files]:
                features = {
                    "image/encoded": data, "image/class/label": label,
                    "image/class/synset": synset.encode(), "image/filename": name.encode(),
                    "image/height": 20, "image/width": 24, "image/channels": 3,
                    "image/format": b"JPEG", "image/colorspace": b"RGB"}
                example = tf.train.Example(features=tf.train.Features(
                    feature={k: _feature(v) for k, v in features.items()}))
                writer.write(example.SerializeToString())


def test_tpu_imagenet_layout_labels_from_zero_ids_classes_and_file_shards(tmp_path):
    images = [(f"n{c:04d}_{i}.JPEG", f"n{c:04d}", c + 1, _jpeg(c * 100 + i))
              for c in range(3) for i in range(5)]
    _tpu_shards(str(tmp_path / "shards"), images[::-1], files=3)
    store = IndexStore(str(tmp_path / "index"))
    source = records_source(str(tmp_path / "shards"), "train", store=store)
    assert source.class_names == ["n0000", "n0001", "n0002"]
    assert list(source.ids) == sorted(name for name, *_ in images)  # canonical order
    assert list(source.labels) == [c for c in range(3) for _ in range(5)]
    assert len(store.flush()) == 1  # found by one pass, kept for restarts
    by_id = {name: data for name, _, _, data in images}
    for example in source.encoded_dataset():
        assert example["encoded"].numpy() == by_id[source.ids[int(example["index"])]]
    everything = np.arange(len(source))
    parts = [source.shard(everything, p, 3) for p in range(3)]  # a file each
    assert sorted(np.concatenate(parts)) == list(everything)
    assert [len(set(source.shard(p, 0, 1))) for p in parts] == [5, 5, 5]
    # The authors' subset files list bare file names: they match directly.
    (tmp_path / "ids.txt").write_text("n0001_2.JPEG\nn0000_4.JPEG\n")
    assert list(source.ids[subset_from_ids(source, str(tmp_path / "ids.txt"))]) == [
        "n0000_4.JPEG", "n0001_2.JPEG"]


@pytest.mark.parametrize("where", ["local", "ram"])
def test_folder_and_its_shards_give_the_same_examples(tmp_path, where):
    base = str(tmp_path) if where == "local" else "ram://test_folder_shards"
    local = _folder(tmp_path / "data", classes=3, per_class=7, bad={(1, 2)}, split="train")
    root = f"{base}/data"
    if where == "ram":
        for directory, _, names in os.walk(local):
            target = root + directory[len(local):]
            tf.io.gfile.makedirs(target)
            for name in names:
                tf.io.gfile.copy(os.path.join(directory, name), f"{target}/{name}")
    try:
        out = f"{base}/shards"
        made = write_shards(root, "train", out, images_per_shard=5, label_fractions=[0.3],
                            report=lambda message: None)
        assert made["written"] == 21 and len(made["files"]) == 5
        folder = folder_source(root, "train", None)
        shards = records_source(out, "train")
        assert list(shards.ids) == list(folder.ids) and shards.class_names == folder.class_names
        np.testing.assert_array_equal(shards.labels, folder.labels)
        np.testing.assert_array_equal(stratified_subset(shards.labels, 0.3, 1),
                                      stratified_subset(folder.labels, 0.3, 1))
        for source in (folder, shards):
            np.testing.assert_array_equal(subset_from_ids(source, made["ids_files"][0]),
                                          stratified_subset(folder.labels, 0.3, 0))
        views = {}
        for name, source in (("folder", folder), ("shards", shards)):
            run = _skipping(source, f"{base}/skipped_{name}")
            views[name] = {int(i): x for b in build_dataset(run, "eval", 8, 16)
                           for i, x in zip(b["index"].numpy(), b["image"].numpy()) if i >= 0}
            assert list(run.skip_log.as_dict()) == ["n0001/n0001_2.JPEG"]
        assert sorted(views["folder"]) == sorted(views["shards"]) and len(views["folder"]) == 20
        for i, image in views["folder"].items():
            np.testing.assert_array_equal(image, views["shards"][i])
        # Training from the shards drops the bad image where it meets it.
        run = _skipping(shards, f"{base}/skipped_training")
        seen = np.concatenate([b["index"].numpy() for _, b in zip(
            range(4), build_dataset(run, "pretrain", 8, 16, shuffle_buffer=4))])
        assert len(seen) == 32 and "n0001/n0001_2.JPEG" not in shards.ids[seen]
        assert list(run.skip_log.as_dict()) == ["n0001/n0001_2.JPEG"]
        # Rerunning resumes: only a missing shard is written again.
        tf.io.gfile.remove(f"{out}/{made['files'][2]}")
        again = write_shards(root, "train", out, images_per_shard=5,
                             report=lambda message: None)
        assert again["written"] == len(np.array_split(np.arange(21), 5)[2])
        with pytest.raises(DataError, match="another folder, seed or shard count"):
            write_shards(root, "train", out, images_per_shard=4, report=lambda m: None)
    finally:
        if where == "ram":
            tf.io.gfile.rmtree(base)


def test_a_run_over_a_folder_with_one_percent_truncated_jpegs_names_each(tmp_path, capsys):
    """Pretraining (one epoch and a bit, the kNN monitor on the val split)
    finishes; every bad file is named once, in the log and monitor.json; a
    restart reads the index and leaves the known bad files out."""
    from simclr_tf2 import get_preset
    from simclr_tf2.training.runner import RunConfig, run
    root = tmp_path / "data"
    _folder(root, classes=4, per_class=25, bad={(1, 4)}, split="train")  # 1 of 100
    _folder(root, classes=4, per_class=5, bad={(3, 0)}, split="val")
    config = get_preset("tiny").override(**{
        "data.dataset": "folder", "data.data_dir": str(root), "data.eval_split": "val",
        "model.num_classes": 4, "train.train_steps": 7, "train.train_batch_size": 16,
        "train.steps_per_loop": 7, "train.summary_interval": 7, "monitor.knn_interval": 7,
        "export.export_at_end": False})
    model_dir = str(tmp_path / "run")
    outcome = run(config, RunConfig(mode="pretrain", model_dir=model_dir))
    assert outcome["monitor"]["knn_top1"] >= 0 and len(outcome["learner"].model.weights)
    monitor = json.load(open(os.path.join(model_dir, "monitor.json")))
    assert list(monitor["skipped"]["train"]) == ["n0001/n0001_4.JPEG"]
    assert list(monitor["skipped"]["val"]) == ["n0003/n0003_0.JPEG"]
    assert "cannot be decoded" in monitor["skipped"]["train"]["n0001/n0001_4.JPEG"]
    out = capsys.readouterr().out
    assert out.count("skipped n0001/n0001_4.JPEG: cannot be decoded") == 1
    assert "| 1 bad images skipped" in out and "listed" in out
    logged = [float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
              for f in tf.io.gfile.glob(os.path.join(model_dir, "summaries", "train", "*"))
              for e in tf.compat.v1.train.summary_iterator(f)
              for v in e.summary.value if v.tag == "skipped_images"]
    assert logged == [1.0]
    longer = config.override(**{"train.train_steps": 8, "train.steps_per_loop": 1,
                                "train.summary_interval": 1, "monitor.knn_interval": 0})
    run(longer, RunConfig(mode="pretrain", model_dir=model_dir,
                          accept_changed_settings=True))
    out = capsys.readouterr().out
    assert "images from the index" in out and "listed" not in out
    assert "skipped n0001" not in out and "steps 7 -> 8" in out
    assert "1 image(s) that did not decode before are left out" in out


class _RecordsRead:
    """Counts the records a RecordReader reads (before any are left out)."""

    def __init__(self, monkeypatch):
        from simclr_tf2.data import record_reader
        self.count = tf.Variable(0, dtype=tf.int64)
        original = record_reader.RecordReader._records

        def counted(reader, *args):
            def count(position, record):
                with tf.control_dependencies([self.count.assign_add(1)]):
                    return tf.identity(position), record
            # Counted as the chunks are read, before the unwanted are dropped.
            return original(reader, *args).map(count)
        monkeypatch.setattr(record_reader.RecordReader, "_records", counted)

    def take(self):
        value = int(self.count.numpy())
        self.count.assign(0)
        return value


def resume_reads_no_more_than_a_restart_at_step_one(source, directory, counter, steps):
    """A resumed stream at `steps` (more than 10 passes in, mid-pass) gives
    the batches an uninterrupted one gives there, and reads about what a
    start at step 0 reads, not the passes it skips (shared with the tfds
    test in test_data_pipeline.py)."""
    settings = dict(mode="finetune", batch_size=4, image_size=8, seed=5, shuffle_buffer=6)
    run = source.with_skip_log(str(directory), report=lambda m: None)
    fresh = [b for _, b in zip(range(steps + 4), build_dataset(run, **settings))]
    counter.take()
    next(iter(build_dataset(run, **settings)))
    at_start = counter.take()
    restarted = source.with_skip_log(str(directory), report=lambda m: None)
    resumed = [b for _, b in zip(range(4), build_dataset(restarted, start_step=steps,
                                                         **settings))]
    at_late_step = counter.take()
    for x, y in zip(fresh[steps:], resumed):
        np.testing.assert_array_equal(x["index"], y["index"])
        np.testing.assert_array_equal(x["image"], y["image"])
    assert at_late_step <= at_start + 2 * 4 * 6, (at_start, at_late_step)
    return fresh, run


def test_shards_resume_at_a_late_step_by_arithmetic_not_by_reading(tmp_path, monkeypatch):
    from simclr_tf2.data import records
    monkeypatch.setattr(records, "CHUNK_RECORDS", 4)  # several chunks per file
    root = _folder(tmp_path / "data", classes=3, per_class=15, bad={(1, 4)}, split="train")
    write_shards(root, "train", str(tmp_path / "shards"), images_per_shard=10,
                 report=lambda message: None)
    counter = _RecordsRead(monkeypatch)
    shards = records_source(str(tmp_path / "shards"), "train")
    assert len(shards) == 45 and len(shards._stream.__closure__) > 0
    fresh, run = resume_reads_no_more_than_a_restart_at_step_one(
        shards, tmp_path / "skipped", counter, steps=117)  # 10.6 passes of 44
    assert list(run.skip_log.as_dict()) == ["n0001/n0001_4.JPEG"]
    # Each pass is every kept example once, in a new order each pass.
    seen = np.concatenate([b["index"].numpy() for b in fresh])
    passes = [seen[k * 44:(k + 1) * 44] for k in range(3)]
    bad = list(shards.ids).index("n0001/n0001_4.JPEG")
    assert all(sorted(p) == sorted(set(range(45)) - {bad}) for p in passes)
    assert not np.array_equal(passes[0], passes[1])


class _TinyTfds:
    """A tfds dataset prepared locally (no download): 3-class RGB images of
    varied sizes, stored by tfds as PNG in TFRecord files."""
    builder_class = None

    @classmethod
    def prepare(cls, data_dir):
        builder = cls.register()(data_dir=str(data_dir))
        builder.download_and_prepare()
        return builder

    @classmethod
    def register(cls):
        import tensorflow_datasets as tfds
        if cls.builder_class is None:
            class SimclrTinyImages(tfds.core.GeneratorBasedBuilder):
                VERSION = tfds.core.Version("1.0.0")

                def _info(self):
                    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                        "image": tfds.features.Image(shape=(None, None, 3)),
                        "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

                def _split_generators(self, dl_manager):
                    return {"train": self._generate_examples(46, 0),
                            "test": self._generate_examples(9, 1)}

                def _generate_examples(self, n, seed):
                    rng = np.random.default_rng(seed)
                    for i in range(n):
                        shape = (12 + i % 5, 14 + i % 3, 3)
                        yield i, {"image": rng.integers(0, 256, shape, dtype=np.uint8),
                                  "label": i % 3}
            cls.builder_class = SimclrTinyImages
        return cls.builder_class


def test_tfds_reads_its_records_by_chunks_indexes_once_and_resumes_by_arithmetic(
        tmp_path, monkeypatch):
    import tensorflow_datasets as tfds
    from simclr_tf2.data import records, tfds_source
    monkeypatch.setattr(records, "CHUNK_RECORDS", 4)
    _TinyTfds.register()
    with pytest.raises(DataError, match="not prepared"):
        tfds_source("simclr_tiny_images", "train", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="unknown") as error:
        tfds_source("no_such_dataset_xyz", "train", data_dir=None)
    assert len(str(error.value)) < 300  # not tfds' list of every dataset
    builder = _TinyTfds.prepare(tmp_path / "tfds")
    store = IndexStore(str(tmp_path / "index"))
    said = []
    store.report = said.append
    source = tfds_source("simclr_tiny_images", "train", str(tmp_path / "tfds"), store=store)
    assert len(store.flush()) == 1 and "no image decoded" in said[-1]
    # What tfds itself reads, in its order, with its ids.
    theirs = list(builder.as_dataset(split="train", shuffle_files=False, read_config=
                                     tfds.ReadConfig(add_tfds_id=True)).as_numpy_iterator())
    assert list(source.ids) == [x["tfds_id"].decode() for x in theirs]
    assert list(source.labels) == [x["label"] for x in theirs]
    assert source.class_names == ["a", "b", "c"] and source.num_classes == 3
    again = tfds_source("simclr_tiny_images", "train", str(tmp_path / "tfds"), store=store)
    assert "from the index" in said[-1] and list(again.ids) == list(source.ids)
    # A subset, in eval view, is tfds' images; split slices start mid-file.
    for split, offset in (("train", 0), ("train[7:40]", 7)):
        part = tfds_source("simclr_tiny_images", split, str(tmp_path / "tfds"))
        chosen = np.arange(3, len(part), 5)
        got = {int(e["index"]): e["image"].numpy() for e in part.dataset(chosen)}
        assert sorted(got) == list(chosen)
        for i, image in got.items():
            np.testing.assert_allclose(image, theirs[i + offset]["image"] / 255.0, atol=1e-6)
    counter = _RecordsRead(monkeypatch)
    resume_reads_no_more_than_a_restart_at_step_one(
        source, tmp_path / "skipped", counter, steps=127)  # 11 passes of 46


def test_cache_holds_encoded_bytes_reads_the_same_and_refuses_what_does_not_fit(
        tmp_path, monkeypatch):
    from simclr_tf2.data import cache as cache_module
    root = _folder(tmp_path / "data", classes=2, per_class=6, split="train")
    write_shards(root, "train", str(tmp_path / "shards"), images_per_shard=5,
                 report=lambda message: None)
    folder, shards = folder_source(root, "train", None), records_source(
        str(tmp_path / "shards"), "train")
    def by_index(batches):
        return {int(i): x for b in batches for i, x in zip(b["index"].numpy(),
                                                           b["image"].numpy()) if i >= 0}
    for source in (folder, shards):
        plain = by_index(build_dataset(source, "eval", 4, 16))
        cached = by_index(build_dataset(source, "eval", 4, 16, cache=True))
        assert sorted(plain) == sorted(cached) == list(range(12))
        for i, image in plain.items():
            np.testing.assert_array_equal(image, cached[i])
    # Training over a folder: the same stream, read from memory.
    settings = dict(mode="pretrain", batch_size=4, image_size=16, seed=1)
    for x, y in zip([b for _, b in zip(range(5), build_dataset(folder, **settings))],
                    [b for _, b in zip(range(5), build_dataset(folder, cache=True,
                                                              **settings))]):
        np.testing.assert_array_equal(x["view1"], y["view1"])
    # What is held is the files' bytes, and the estimate says how many.
    expected = sum(os.path.getsize(os.path.join(root, "train", p)) for p in folder.ids)
    assert abs(cache_module.estimated_bytes(folder, np.arange(12)) - expected) < 0.3 * expected
    assert abs(cache_module.estimated_bytes(shards, np.arange(12)) - expected) < 0.3 * expected
    monkeypatch.setattr(cache_module, "available_memory", lambda: 4 << 10)
    fresh = folder_source(root, "train", None)
    with pytest.raises(DataError, match=r"cache=True would hold about 0\.0 GB .* drop --cache"):
        build_dataset(fresh, "eval", 4, 16, cache=True)


def test_knn_monitor_reads_only_its_subset_and_traces_once(tmp_path, monkeypatch):
    """Two reports: the same result, one trace of each forward function; on
    shards only the chunks holding the bank and queries are read, and a
    corrupt image outside them is never decoded (nothing is skipped)."""
    from simclr_tf2 import get_preset
    from simclr_tf2.data import records
    from simclr_tf2.models import SimCLRModel
    from simclr_tf2.monitors.knn_monitor import KnnMonitor
    monkeypatch.setattr(records, "CHUNK_RECORDS", 4)
    root = _folder(tmp_path / "data", classes=3, per_class=12, bad={(2, 7)}, split="train")
    write_shards(root, "train", str(tmp_path / "shards"), images_per_shard=36,
                 report=lambda message: None)  # one file, 9 chunks, canonical order
    counter = _RecordsRead(monkeypatch)
    source = _skipping(records_source(str(tmp_path / "shards"), "train"), tmp_path / "skip")
    config = get_preset("tiny").override(**{"data.image_size": 16})
    model = SimCLRModel(config.model, "pretrain")
    model(tf.zeros([1, 16, 16, 3]), training=False)  # built, as in a run
    bank, queries = np.array([0, 1, 2, 12, 13]), np.array([3, 14])
    monitor = KnnMonitor(model, config.data, source, source, 4, k=2, temperature=0.1,
                         bank_indices=bank, query_indices=queries, verbose=False)
    first = monitor.evaluate(None)
    traced = monitor.bank.traces(), monitor.queries.traces()
    second = monitor.evaluate(None)
    assert first == second and set(first) == {"knn_top1", "erank"}
    assert traced == (1, 1) and (monitor.bank.traces(), monitor.queries.traces()) == traced
    assert source.skip_log.count == 0  # the corrupt image (index 31) was not decoded
    # Each report reads the chunks (4 records) that hold the bank and queries.
    header, _ = index_module.read_index(str(tmp_path / "shards" / "train.index"))
    held = [{header["positions"][i] // 4 for i in ids} for ids in (bank, queries)]
    assert counter.take() == 2 * 4 * (len(held[0]) + len(held[1])) < 2 * 36
    # A run's monitor picks its subsets of such sources in whole chunks:
    # 10 examples read 3 chunks, seeded.
    from simclr_tf2.monitors.knn_monitor import monitor_subset
    picked = monitor_subset(source, 10, seed=2)
    assert len(set(picked)) == 10 and list(picked) == sorted(picked)
    assert len({header["positions"][i] // 4 for i in picked}) == 3
    np.testing.assert_array_equal(picked, monitor_subset(source, 10, seed=2))
    assert not np.array_equal(picked, monitor_subset(source, 10, seed=3))
