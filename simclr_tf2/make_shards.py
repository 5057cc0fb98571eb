"""Convert image folders to TFRecord shards, once, for training at scale:

    python -m simclr_tf2.make_shards --data_dir=/data/imagenet \
        --output_dir=gs://my-bucket/imagenet_shards --splits=train,val \
        --label_fractions=0.01,0.1

Each split sub-folder becomes `<split>-00000-of-00NNN` shards of about
--images_per_shard images (the files' bytes as they are, their label and
id, the path relative to the split folder; `records.py` reads them), written
in parallel with a progress line, shuffled before sharding (so a shuffle
buffer over a few interleaved files mixes classes), plus `<split>.index`
(ids, labels and where each sits) so that training needs no pass over the
records. Rerunning the same command resumes: finished shards are kept.
`--label_fractions` writes the ids of stratified label subsets
(`label_ids-<split>-<fraction>.txt`, for --label_ids_file); they match the
folder and the shards alike.
"""
import concurrent.futures
import hashlib
import json
import os
import sys
import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from simclr_tf2.data import listing, records
from simclr_tf2.data.index import write_index
from simclr_tf2.data.sources import split_folder
from simclr_tf2.data.subsets import stratified_subset
from simclr_tf2.errors import ConfigError, DataError, SimCLRError

PROGRESS_SECONDS = 10.0


def _example(data: bytes, label: int, example_id: str) -> bytes:
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[example_id.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_shard(path: str, folder: str, paths: List[str], labels: np.ndarray,
                 members: np.ndarray, done: Callable[[int], None]) -> List[int]:
    """Writes one shard; returns the lengths of its records."""
    tmp = f"{path}.tmp"
    lengths = []
    with tf.io.TFRecordWriter(tmp) as writer:
        for i in members:
            with tf.io.gfile.GFile(listing.join(folder, paths[i]), "rb") as f:
                record = _example(f.read(), int(labels[i]), paths[i])
            writer.write(record)
            lengths.append(len(record))
            done(1)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return lengths


def write_shards(data_dir: str, split: str, output_dir: str, images_per_shard: int = 1024,
                 labelled: Optional[bool] = None, seed: int = 0, threads: int = 16,
                 label_fractions=(), label_seed: int = 0,
                 report: Callable[[str], None] = print) -> Dict:
    """Writes the shards and index of one split (see the module note);
    returns {'files', 'images', 'written', 'seconds', 'ids_files'}."""
    start = time.time()
    folder = split_folder(data_dir, split, allow_root=True)
    paths, labels, classes, skipped = listing.labelled_view(
        listing.list_folder(folder, report), labelled)
    num_shards = max(1, -(-len(paths) // images_per_shard))
    order = np.random.default_rng(seed).permutation(len(paths))
    members = np.array_split(order, num_shards)
    names = [f"{split}-{k:05d}-of-{num_shards:05d}" for k in range(num_shards)]
    tf.io.gfile.makedirs(output_dir)
    plan = {"folder": folder, "seed": seed, "shards": num_shards,
            "examples": hashlib.sha1("\n".join(paths).encode()).hexdigest()}
    plan_file = os.path.join(output_dir, f"{split}.plan.json")
    if tf.io.gfile.exists(plan_file):
        with tf.io.gfile.GFile(plan_file) as f:
            if json.load(f) != plan:
                raise DataError(f"{output_dir!r} holds {split} shards of another folder, "
                                "seed or shard count: use a new output_dir or delete them")
    else:
        with tf.io.gfile.GFile(plan_file, "w") as f:
            f.write(json.dumps(plan))
    todo = [k for k in range(num_shards)
            if not tf.io.gfile.exists(os.path.join(output_dir, names[k]))]
    total = sum(len(members[k]) for k in todo)
    progress = {"images": 0, "last": time.time()}
    lock = threading.Lock()

    def done(count):
        with lock:
            progress["images"] += count
            now = time.time()
            if now - progress["last"] < PROGRESS_SECONDS:
                return
            progress["last"] = now
        rate = progress["images"] / max(now - start, 1e-9)
        report(f"{split}: {progress['images']:,}/{total:,} images into shards "
               f"({rate:.0f} images/s, ETA {(total - progress['images']) / rate:.0f}s)")

    chunks: Dict[int, tuple] = {}
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futures = {k: pool.submit(_write_shard, os.path.join(output_dir, names[k]),
                                  folder, paths, labels, members[k], done) for k in todo}
        for k, future in futures.items():
            chunks[k] = records.chunk_offsets(np.asarray(future.result(), np.int64))
    earlier = [k for k in range(num_shards) if k not in chunks]  # from a run before
    if earlier:
        found = records.file_chunks([os.path.join(output_dir, names[k]) for k in earlier])
        chunks.update({k: c for k, c in zip(earlier, zip(*found))})
    counts = [len(m) for m in members]
    positions = np.empty(len(paths), np.int64)
    positions[np.concatenate(members)] = np.arange(len(paths))
    write_index(records.index_beside([os.path.join(output_dir, names[0])], split),
                *records.pack("simclr_tf2", names, counts, labels, paths, positions, classes,
                              [chunks[k][0] for k in range(num_shards)],
                              [chunks[k][1] for k in range(num_shards)]))
    ids_files = []
    for fraction in label_fractions:
        subset = stratified_subset(labels, fraction, label_seed)
        ids_file = os.path.join(output_dir, f"label_ids-{split}-{fraction:g}.txt")
        with tf.io.gfile.GFile(ids_file, "w") as f:
            f.write("".join(f"{paths[i]}\n" for i in subset))
        ids_files.append(ids_file)
    seconds = time.time() - start
    report(f"{split}: {len(paths):,} images in {num_shards} shards under {output_dir} "
           f"({total:,} written now, {seconds:.1f}s"
           + (f"; {len(skipped)} file(s) left out" if skipped else "") + ")")
    return {"files": names, "images": len(paths), "written": total, "seconds": seconds,
            "ids_files": ids_files}


def define_flags(values) -> None:
    """The converter's flags, on `values` (an absl FlagValues)."""
    from absl import flags
    flags.DEFINE_string("data_dir", None, "The image folder (split sub-folders, class "
                        "sub-folders in each; a folder without split sub-folders is the "
                        "training split).", flag_values=values)
    flags.DEFINE_string("output_dir", None, "Where the shards go (any TensorFlow "
                        "filesystem: a local directory, gs://...).", flag_values=values)
    flags.DEFINE_list("splits", ["train"], "Split sub-folders to convert, the training "
                      "split first.", flag_values=values)
    flags.DEFINE_integer("images_per_shard", 1024, "About this many images per shard "
                         "(the TPU ImageNet conversion: 1251, about 140 MB).",
                         flag_values=values)
    flags.DEFINE_bool("unlabeled", False, "Label every image -1 (default: the class "
                      "sub-folders are the labels when the folder has them).",
                      flag_values=values)
    flags.DEFINE_integer("seed", 0, "Seed of the shuffle before sharding.",
                         flag_values=values)
    flags.DEFINE_integer("threads", 16, "Shards written at once.", flag_values=values)
    flags.DEFINE_list("label_fractions", [], "Write the ids of stratified label subsets "
                      "of the first split, of these fractions (e.g. 0.01,0.1), for "
                      "--label_ids_file.",
                      flag_values=values)
    flags.DEFINE_integer("label_seed", 0, "Seed of the label subsets (as --data_seed).",
                         flag_values=values)


def run_command(values) -> int:
    """Converts what parsed flag `values` ask for; returns the exit status
    (2 with one `error:` line for a bad folder or setting)."""
    try:
        if not values.data_dir or not values.output_dir:
            raise ConfigError("--data_dir and --output_dir are required")
        fractions = [float(x) for x in values.label_fractions]
        for i, split in enumerate(values.splits):  # label subsets: of the first split
            write_shards(values.data_dir, split, values.output_dir, values.images_per_shard,
                         False if values.unlabeled else None, values.seed, values.threads,
                         fractions if i == 0 else (), values.label_seed)
    except SimCLRError as error:
        print(f"simclr_tf2.make_shards: error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


def console_main():
    """`python -m simclr_tf2.make_shards`."""
    from absl import app, flags
    define_flags(flags.FLAGS)

    def main(argv):
        if len(argv) > 1:
            sys.exit(f"simclr_tf2.make_shards: error: unexpected arguments {argv[1:]}")
        status = run_command(flags.FLAGS)
        if status:
            sys.exit(status)
    app.run(main)


if __name__ == "__main__":
    console_main()
