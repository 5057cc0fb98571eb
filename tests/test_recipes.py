"""The README's recipes, run at tiny scale: each command as the README writes
it, with its paths pointed at generated image folders and small-scale flags
appended (absl: the last value of a flag wins), through the command's own
parser and error path. A renamed flag makes these tests fail."""
import glob
import json
import os
import re
import shlex
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image

from simclr_tf2 import make_shards
from simclr_tf2.data import make_source, subset_from_ids
from simclr_tf2.flag_definitions import define_flags, resolve_flags
from simclr_tf2.train import run_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # whole runs, exports

# Small-scale settings appended to every command; TINY_MODEL also swaps the
# ResNet-50 of the recipes for the tiny preset.
SMALL = ["--image_size=32", "--train_steps=2", "--train_batch_size=8",
         "--eval_batch_size=16", "--steps_per_loop=1", "--summary_interval=1",
         "--checkpoint_interval=1", "--knn_interval=0", "--nouse_blur"]
TINY_MODEL = ["--preset=tiny", "--width_multiplier=0.25"]


def recipe(name):
    """The fenced block after `<!-- recipe: name -->` in README.md: its
    commands (a list of argv lists, continuation lines joined, comments and
    blank lines dropped) or, for a python block, its source."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    match = re.search(rf"<!-- recipe: {name} -->\n```(\w+)\n(.*?)```", readme, re.S)
    assert match, f"README recipe {name!r} not found"
    language, body = match.groups()
    if language == "python":
        return body
    commands = []
    for chunk in body.replace("\\\n", " ").splitlines():
        chunk = chunk.strip()
        if chunk and not chunk.startswith("#"):
            commands.append(shlex.split(chunk))
    return commands


def _save(path, seed, size=40):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    Image.fromarray(small).resize((size, size), Image.BICUBIC).save(path)


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """/data/... of the recipes: 5 classes with train/ and val/, an unlabeled
    tree with a corrupt file, a label-ids file."""
    root = tmp_path_factory.mktemp("recipes")
    data = root / "data"
    for c in range(5):
        for i in range(4):
            _save(str(data / "labelled" / "train" / f"c{c}" / f"{i}.png"), 10 * c + i)
        for i in range(2):
            _save(str(data / "labelled" / "val" / f"c{c}" / f"{i}.jpg"), 100 + 10 * c + i)
    for i in range(16):
        _save(str(data / "unlabeled" / f"batch{i % 3}" / f"{i}.jpg"), 500 + i)
    (data / "unlabeled" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (data / "my_ids.txt").write_text("".join(f"c{c}/0.png\n" for c in range(5)))
    return root


def localise(argv, root, bucket="gs://my-bucket/"):
    """The recipe's paths, under the test's directory (buckets too)."""
    out = []
    for arg in argv:
        for old, new in (("/data/", f"{root}/data/"), ("=runs/", f"={root}/runs/"),
                         ("=models/", f"={root}/models/"), (bucket, f"{root}/bucket/")):
            arg = arg.replace(old, new)
        out.append(arg)
    return out


def train(argv, extra=()):
    """One `python -m simclr_tf2.train` command, in process; its exit status."""
    assert argv[:3] == ["python", "-m", "simclr_tf2.train"], argv
    args = [*argv[3:], *extra]
    values = flags.FlagValues()
    define_flags(values)
    values(["train", *args])
    return run_command(values, args)


def _flag(argv, name):
    return next(a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}="))


def test_own_images_recipe_pretrains_fine_tunes_exports_and_loads_in_keras(place, capsys):
    pretrain, finetune, finetune_ids, export = (localise(c, place)
                                                for c in recipe("own-images"))
    assert train(pretrain, [*SMALL, *TINY_MODEL, "--noexport_at_end"]) == 0
    assert tf.train.latest_checkpoint(_flag(pretrain, "model_dir"))
    for command, batch in ((finetune, 8), (finetune_ids, 4)):  # 5 labelled ids
        assert train(command, [*SMALL, *TINY_MODEL, f"--train_batch_size={batch}",
                               "--noexport_at_end"]) == 0
        result = json.load(open(os.path.join(_flag(command, "model_dir"), "result.json")))
        assert result["split"] == "val" and result["num_examples"] == 10
        assert result["train_mode"] == "finetune"
    ids = open(os.path.join(_flag(finetune_ids, "model_dir"), "labelled_ids.txt")).read()
    assert ids.split() == [f"c{c}/0.png" for c in range(5)]
    # the export entry point over the fine-tuned run, through its own parser
    # (in process; test_export runs the script in a fresh one)
    assert export[:2] == ["python", "export/export_hub.py"]
    from conftest import export_command
    assert export_command(export[1:]) == 0
    assert "exported hub modules to" in capsys.readouterr().out
    # the Keras snippet, with the recipe's paths
    source = recipe("keras").replace('"runs/', f'"{place}/runs/').replace(
        "(224, 224, 3)", "(32, 32, 3)")
    scope = {}
    exec(compile(source, "README recipe keras", "exec"), scope)
    logits = scope["model"](tf.random.uniform([2, 32, 32, 3]))
    assert logits.shape == (2, 5)
    assert len(scope["model"].trainable_weights) > 2  # the hub layer fine-tunes


def test_released_model_recipe_fine_tunes_a_local_copy(place):
    from official_reference import OfficialLikeModel, save_official_like
    gsutil, command = recipe("released")
    assert gsutil[:3] == ["gsutil", "-m", "cp"]  # network: the test starts after it
    assert gsutil[-2].startswith("gs://simclr-checkpoints-tf2/simclrv2/pretrained/")
    command = localise(command, place)
    save_official_like(OfficialLikeModel(), _flag(command, "checkpoint"))
    # the recipe's ResNet-50 (it must match the SavedModel), small images
    assert train(command, [*SMALL, "--train_steps=1", "--nosync_bn",
                           "--noexport_at_end"]) == 0
    result = json.load(open(os.path.join(_flag(command, "model_dir"), "result.json")))
    assert result["num_examples"] == 10


def test_hardware_recipes_run_on_logical_devices(place, capsys):
    """Several GPUs: run on two logical CPU devices; several machines and the
    TPU: their settings (two local workers run in test_train_cli.py)."""
    gpus, workers, tpu = (localise(c, place) for c in recipe("hardware"))
    # several GPUs: the same command on two logical CPU devices
    assert "--strategy=mirrored" in gpus
    # with the GPUs' default augmentation placement (auto: device on GPUs)
    assert train(gpus, [*SMALL, *TINY_MODEL, "--num_cpu_devices=2",
                        "--precision=float32", "--noexport_at_end",
                        "--augment_on=device"]) == 0
    assert "on 2 replica(s), steps 0 -> 2, colour and blur on the device" in \
        capsys.readouterr().out
    # several machines: TF_CONFIG names the cluster (run as local processes
    # in test_train_cli.py); here the command's own settings
    assert workers[0].startswith("TF_CONFIG=") and "--strategy=multi_worker_mirrored" in workers
    assert workers[1:4] == ["python", "-m", "simclr_tf2.train"]
    resolution = _resolve(workers[4:])
    assert resolution.run_config.strategy == "multi_worker_mirrored"
    # the TPU: what it resolves to (the run itself is the command above with
    # --tpu in place of --strategy=mirrored: the same step on each replica,
    # compiled with XLA in test_learner.py)
    resolution = _resolve(tpu[3:])
    assert (resolution.run_config.strategy, resolution.run_config.tpu) == ("auto", "my-tpu")
    assert resolution.config.train.precision == "mixed_bfloat16"
    assert resolution.config.data.data_dir.endswith("bucket/tensorflow_datasets")
    assert resolution.run_config.model_dir.endswith("bucket/runs/tpu")


def test_distillation_recipe_distils_the_fine_tuned_run(place):
    (command,) = recipe("distill")
    command = localise(command, place)
    teacher = _flag(command, "teacher")
    if not tf.train.latest_checkpoint(teacher):  # not made by the test above: a
        # teacher trained from scratch on the labels does here
        finetune = [a for a in localise(recipe("own-images")[1], place)
                    if not a.startswith("--checkpoint=")]
        assert train(finetune, [*SMALL, *TINY_MODEL, "--from_scratch",
                                "--noexport_at_end"]) == 0
    assert train(command, [*SMALL, "--preset=tiny", "--noexport_at_end"]) == 0
    result = json.load(open(os.path.join(_flag(command, "model_dir"), "result.json")))
    assert result["train_mode"] == "distill" and result["num_examples"] == 10
    assert glob.glob(os.path.join(_flag(command, "model_dir"), "ckpt-*.index"))


def _imagenet_like(root, classes=3, train=100, val=2):
    """root/{train,val}/<synset>/<synset>_<i>.JPEG, small JPEGs."""
    names = {}
    for split, count in (("train", train), ("val", val)):
        for c in range(classes):
            synset = f"n{c:08d}"
            for i in range(count):
                path = root / split / synset / f"{synset}_{split}{i}.JPEG"
                _save(str(path), 1000 * c + i + (500 if split == "val" else 0), size=36)
                names.setdefault(split, []).append((synset, c, path))
    return names


def _tpu_layout_shards(names, directory):
    """The images as shards of the TPU ImageNet conversion (labels from 1)."""
    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
    os.makedirs(directory, exist_ok=True)
    for split, tpu_split in (("train", "train"), ("val", "validation")):
        for shard in range(2):
            path = os.path.join(directory, f"{tpu_split}-{shard:05d}-of-00002")
            with tf.io.TFRecordWriter(path) as writer:
                for synset, label, image in names[split][shard::2]:
                    example = {"image/encoded": image.read_bytes(),
                               "image/class/label": label + 1,
                               "image/class/synset": synset.encode(),
                               "image/filename": image.name.encode(),
                               "image/format": b"JPEG"}
                    writer.write(tf.train.Example(features=tf.train.Features(feature={
                        k: feature(v) for k, v in example.items()})).SerializeToString())


def convert(argv):
    """One `python -m simclr_tf2.make_shards` command, in process."""
    assert argv[:3] == ["python", "-m", "simclr_tf2.make_shards"], argv
    values = flags.FlagValues()
    make_shards.define_flags(values)
    values(["make_shards", *argv[3:]])
    return make_shards.run_command(values)


def test_imagenet_sized_recipes_convert_once_and_train_from_shards(place):
    """Our shards (make_shards) and shards in the TPU ImageNet layout (written
    here with tf.io.TFRecordWriter): pretraining, then fine-tuning on the 1%
    subset, evaluated on the validation split."""
    names = _imagenet_like(place / "data" / "imagenet")
    to_shards, pretrain, finetune = (localise(c, place) for c in recipe("shards"))
    assert convert(to_shards) == 0
    shards = _flag(to_shards, "output_dir")
    assert len(glob.glob(f"{shards}/train-*")) == 1 and os.path.exists(f"{shards}/val.index")
    small = [*SMALL, *TINY_MODEL, "--num_classes=3", "--noexport_at_end",
             "--train_steps=1"]
    assert train(pretrain, small) == 0
    # Fine-tuning from shards runs below (the TPU layout); here what this
    # command resolves to, and the 1% the ids file selects from the shards.
    resolved = _resolve([*finetune[3:], *small])
    assert resolved.config.data.dataset == "tfrecord"
    shards_source = make_source(resolved.config.data, "train")
    chosen = subset_from_ids(shards_source, resolved.config.data.label_ids_file)
    assert len(chosen) == 3 and sorted(shards_source.labels[chosen]) == [0, 1, 2]
    tpu_pretrain, tpu_finetune = (localise(c, place) for c in recipe("tpu-shards"))
    pattern = _flag(tpu_pretrain, "data_dir")
    _tpu_layout_shards(names, os.path.dirname(pattern))
    (place / "data" / "1percent.txt").write_text(  # bare file names, one per class
        "".join(f"{image.name}\n" for _, _, image in names["train"][::100]))
    assert train(tpu_pretrain, small) == 0
    assert train(tpu_finetune, [*small, "--train_batch_size=3"]) == 0
    run = _flag(tpu_finetune, "model_dir")
    result = json.load(open(os.path.join(run, "result.json")))
    assert result["split"] == "validation" and result["num_examples"] == 6
    ids = open(os.path.join(run, "labelled_ids.txt")).read().split()
    assert ids == [image.name for _, _, image in names["train"][::100]]


def _resolve(args):
    values = flags.FlagValues()
    define_flags(values)
    values(["train", *args])
    return resolve_flags(values, args)


_SAME_RUN_ON_RAM = r"""
import json, os, sys
import numpy as np, tensorflow as tf
from simclr_tf2 import get_preset
from simclr_tf2.training.runner import RunConfig, run

local, out = sys.argv[1], sys.argv[2]
remote = "ram://recipes/labelled"
for directory, _, files in os.walk(local):  # the same folder, file for file
    target = remote + directory[len(local):]
    tf.io.gfile.makedirs(target)
    for name in files:
        tf.io.gfile.copy(os.path.join(directory, name), target + "/" + name)
config = get_preset("tiny").override(**{
    "data.dataset": "folder", "data.data_dir": local, "data.eval_split": "val", "model.num_classes": 5,
    "train.train_steps": 2, "train.train_batch_size": 8, "train.steps_per_loop": 1,
    "train.summary_interval": 1, "train.checkpoint_interval": 1,
    "export.export_at_end": False, "data.use_blur": False,
    # Momentum SGD at a small rate: the device run's round-off is not amplified
    # (LARS's trust ratio of the zero-initialised last BN scales is).
    "train.optimizer": "momentum", "train.learning_rate": 0.01})
report = {}
for name, root, placed in (("local", local, "host"), ("ram", remote, "host"),
                           ("device", local, "device")):
    data = config.override(**{"data.data_dir": root, "data.augment_on": placed})
    pre = run(data, RunConfig(mode="pretrain", model_dir=f"{out}/{name}_pre",
                              deterministic=True), verbose=placed == "device")
    report[name] = {"pretrain": [float(np.sum(w)) for w in pre["learner"].model.get_weights()],
                    "size": [float(np.abs(w).sum()) for w in pre["learner"].model.get_weights()],
                    "first": pre["learner"].model.get_weights()[0].tolist()}
print(json.dumps(report))
"""


def test_a_folder_in_a_bucket_trains_exactly_like_on_local_disk(place, tmp_path):
    """ram:// stands in for gs://: the same examples and skipped files give
    the same weights (deterministic runs, one process so both see the ram://
    folder); and the run with --augment_on=device the same to round-off. Subsets, evaluation and shards on ram:// are compared example
    by example in test_folders_and_shards.py and test_data_pipeline.py."""
    bad = place / "data" / "labelled" / "train" / "c0" / "notes.txt"
    bad.write_text("not an image")
    try:
        done = subprocess.run([sys.executable, "-c", _SAME_RUN_ON_RAM,
                               str(place / "data" / "labelled"), str(tmp_path)],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
    finally:
        bad.unlink()
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["local"]["pretrain"] == report["ram"]["pretrain"]
    assert report["local"]["first"] == report["ram"]["first"]
    assert done.stderr.count("left out 1 file(s)") >= 2  # notes.txt, in both places
    # --augment_on=device: the same run, its colour done inside the step (by
    # XLA; at 32 px the host's is TensorFlow's HSV kernels, 2e-5 apart): the
    # same weights to that round-off, which batch norm over 8 images amplifies
    # in a few variables (other views would move them all by 10-100%)
    np.testing.assert_allclose(report["device"]["first"], report["local"]["first"],
                               rtol=1e-4, atol=2e-5)  # weights of ~0.1
    moved = np.abs(np.subtract(report["device"]["pretrain"], report["local"]["pretrain"]))
    size = np.asarray(report["local"]["size"])  # sum of |w|: some sums are ~0
    assert (moved <= 2e-3 * size + 1e-6).all() and np.median(moved / size) < 1e-5
    assert "colour and blur on the device" in done.stdout


def test_data_service_recipe_feeds_training_from_a_local_dispatcher_and_worker(place):
    """The dispatcher and a worker as the recipe starts them (processes, on
    free ports of this machine), then the trainer reading from them."""
    dispatch, work, trainer = (localise(c, place) for c in recipe("data-service"))
    assert dispatch[:3] == work[:3] == ["python", "-m", "simclr_tf2.data_service"]
    with socket.socket() as probe:  # a free port for the dispatcher
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    dispatch = [a.replace("=5050", f"={port}") for a in dispatch]
    work = [a.replace("dispatcher-host:5050", f"localhost:{port}").replace("=5051", "=0")
            for a in work if not a.startswith("--worker_address")]
    servers = []
    try:  # both start at once (each imports TensorFlow)
        servers = [subprocess.Popen([sys.executable, *argv[1:]], cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE) for argv in (dispatch, work)]
        assert f"grpc://localhost:{port}" in servers[0].stdout.readline()
        assert "worker of" in servers[1].stdout.readline()
        target = f"grpc://localhost:{port}"
        trainer = [a.replace("grpc://dispatcher-host:5050", target) for a in trainer]
        bucket = os.path.dirname(_flag(trainer, "data_dir"))
        os.makedirs(bucket, exist_ok=True)
        if not os.path.exists(_flag(trainer, "data_dir")):
            os.symlink(place / "data" / "unlabeled", _flag(trainer, "data_dir"))
        assert train(trainer, [*SMALL, *TINY_MODEL, "--nosync_bn", "--noexport_at_end",
                               "--precision=float32", "--strategy=one_device"]) == 0
        assert tf.train.latest_checkpoint(_flag(trainer, "model_dir"))
    finally:
        for server in servers:
            server.kill()
