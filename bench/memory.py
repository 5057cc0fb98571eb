"""The memory (momentum encoder + queue of negatives) on mnist5k: why it hurt,
and where it pays.

    python bench/memory.py --part hypotheses [--seeds 0] [--jobs 2]
    python bench/memory.py --part batch [--seeds 0 1 2] [--jobs 2]
    python bench/memory.py --part split_bn [--seeds 0 1 2] [--jobs 2]
    python bench/memory.py --part digits [--seeds 0 1 2] [--jobs 2]
    python bench/memory.py --part long [--long_batches 128 32] [--seeds 0 1 2] [--jobs 2]
    python bench/memory.py --plot REPORT.json ... [--plot_out PNG]

Every mnist5k arm pretrains the mnist5k recipe (flags/mnist5k_pretrain.cfg,
tiny ResNet-18) for EPOCHS epochs with its own flags and pretraining seed =
seed, then is measured four ways, each with the same seed:
- the representation of the 4000 training images (eval view, inference
  mode): effective rank of the backbone output and of the projection output,
  and weighted kNN top-1 (k=200, temperature 0.1) of the 1000 test images
  against them, for both;
- linear eval on 10% of the labels (flags/mnist5k_linear_eval.cfg);
- fine-tuning on 1% of the labels (flags/mnist5k_finetune_1pct.cfg, the
  main table's recipe).
`--part hypotheses` runs the arms that separate the explanations of the
damage the paper's memory did (HYPOTHESIS_ARMS, batch 128 unless named);
`--part batch` compares no memory with the default memory at batch 32 and
128 (BATCH_ARMS) at equal epochs; `--part split_bn` adds the one-device form
of MoCo's shuffling BN (--memory_bn_splits=4) with memory at both batch
sizes (SPLIT_BN_ARMS); `--part long` compares no memory with the default
memory for the flagfile's own 75 epochs at batch 128, or at the batches
`--long_batches` names (LONG_ARMS); `--part
digits` runs the demo's own
flagfiles (digits, fine-tuning on 10% of the labels) with and without the
memory. Finished stages are reused (an interrupted run resumes); `--jobs N`
runs arms in N worker processes of cores / N threads. Writes
<workdir>/report_<part>.json (printed too) and, for the batch part,
<workdir>/memory_batch.png. `--quick` runs a few steps per stage: it checks
the script, not the numbers.
"""
import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from distill import stage  # noqa: E402
from semisupervised import SEEDS_ARGS, supervised_args  # noqa: E402

EPOCHS = 10
# The hypothesis arms were run when the memory contrasted the online
# projections with the queue (SimCLRv2's description), now
# --memory_contrast_keys=online; the batch and digits parts measure the
# default memory (--memory_contrast_keys=both).
MEMORY = ["--queue_size=1024", "--memory_momentum=0.99"]
# (name, pretraining flags); batch 128 (the flagfile's), temperature 0.5
# unless the flags say otherwise.
HYPOTHESIS_ARMS = [
    ("no memory", []),
    ("memory", MEMORY),
    ("no memory, temperature 0.2", ["--temperature=0.2"]),
    ("memory, temperature 0.2", [*MEMORY, "--temperature=0.2"]),
    ("no memory, temperature 0.1", ["--temperature=0.1"]),
    ("memory, temperature 0.1", [*MEMORY, "--temperature=0.1"]),
    ("memory, queue temperature 0.2", [*MEMORY, "--queue_temperature=0.2"]),
    ("memory, queue temperature 0.1", [*MEMORY, "--queue_temperature=0.1"]),
    ("memory, centred queue", [*MEMORY, "--center_queue"]),
    ("memory, own images' keys excluded", [*MEMORY, "--exclude_own_images"]),
    ("memory, queue from step 100", [*MEMORY, "--memory_warmup_steps=100"]),
    ("memory, momentum 0", ["--queue_size=1024", "--memory_momentum=0"]),
    ("memory, momentum 0.999", ["--queue_size=1024", "--memory_momentum=0.999"]),
    ("memory, queue 256", ["--queue_size=256", "--memory_momentum=0.99"]),
    ("memory, queue 4096", ["--queue_size=4096", "--memory_momentum=0.99"]),
    ("memory, MoCo keys (positive and negatives from the momentum encoder)",
     [*MEMORY, "--memory_contrast_keys=momentum"]),
    # Second round: the queue's share of the softmax against the keys' age.
    ("memory, queue weight 0.25", [*MEMORY, "--queue_weight=0.25"]),
    ("memory, momentum 0, queue 256", ["--queue_size=256", "--memory_momentum=0"]),
    ("memory, momentum 0, queue weight 0.25",
     ["--queue_size=1024", "--memory_momentum=0", "--queue_weight=0.25"]),
    ("memory, momentum 0.9", ["--queue_size=1024", "--memory_momentum=0.9"]),
    ("no memory, learning rate 0.1", ["--learning_rate=0.1"]),
    ("memory, learning rate 0.1", [*MEMORY, "--learning_rate=0.1"]),
    ("memory, MoCo keys, temperature 0.2",
     [*MEMORY, "--memory_contrast_keys=momentum", "--temperature=0.2"]),
    # Third round, batch 32: what stops the online network escaping the keys.
    ("no memory, batch 32", ["--train_batch_size=32"]),
    ("no memory, temperature 0.2, batch 32", ["--train_batch_size=32", "--temperature=0.2"]),
    ("memory, MoCo keys, batch 32",
     [*MEMORY, "--memory_contrast_keys=momentum", "--train_batch_size=32"]),
    ("memory, MoCo keys, temperature 0.2, batch 32",
     [*MEMORY, "--memory_contrast_keys=momentum", "--temperature=0.2",
      "--train_batch_size=32"]),
    ("memory, momentum 0, queue 256, batch 32",
     ["--queue_size=256", "--memory_momentum=0", "--train_batch_size=32"]),
    ("memory, temperature 0.2, batch 32",
     [*MEMORY, "--temperature=0.2", "--train_batch_size=32"]),
    ("memory, SimCLR and MoCo losses, batch 32",
     [*MEMORY, "--memory_contrast_keys=both", "--train_batch_size=32"]),
    ("memory, SimCLR and MoCo losses", [*MEMORY, "--memory_contrast_keys=both"]),
    ("memory, SimCLR and MoCo losses, momentum 0.9",
     ["--queue_size=1024", "--memory_momentum=0.9", "--memory_contrast_keys=both"]),
    ("memory, SimCLR and MoCo losses, momentum 0.9, batch 32",
     ["--queue_size=1024", "--memory_momentum=0.9", "--memory_contrast_keys=both",
      "--train_batch_size=32"]),
    ("memory, SimCLR and MoCo losses, queue 256",
     ["--queue_size=256", "--memory_momentum=0.99", "--memory_contrast_keys=both"]),
    # Fourth round: batch norm in 4 groups (ghost BN) without memory, the
    # control for the split_bn part's effect of splitting alone.
    ("no memory, split BN 4", ["--memory_bn_splits=4"]),
    ("no memory, split BN 4, batch 32", ["--memory_bn_splits=4", "--train_batch_size=32"]),
]
# Memory arms without a --memory_contrast_keys flag ran with "online".
HYPOTHESIS_ARMS = [
    (name, flags + ["--memory_contrast_keys=online"]
     if any(f.startswith("--queue_size=") and f != "--queue_size=0" for f in flags)
     and not any(f.startswith("--memory_contrast_keys") for f in flags) else flags)
    for name, flags in HYPOTHESIS_ARMS]
BATCH_ARMS = [(f"{name}, batch {batch}", [f"--train_batch_size={batch}", *flags])
              for batch in (32, 128)
              for name, flags in (("no memory", []), ("memory", MEMORY))]

# MoCo's shuffling BN in its one-device form (--memory_bn_splits): does the
# way keys are normalised explain what the memory still costs? The plain
# arms are the batch part's (the same names, so a shared workdir reuses them).
SPLIT_BN_ARMS = [(f"{name}, batch {batch}", [f"--train_batch_size={batch}", *flags])
                 for batch in (32, 128)
                 for name, flags in (("no memory", []), ("memory", MEMORY),
                                     ("memory, split BN 4", [*MEMORY, "--memory_bn_splits=4"]))]

# The flagfile's own length (75 epochs) at its batch size (128): does what
# the memory costs at 10 epochs shrink with training? (dataset "mnist5k_long")
def long_arms(batches=(128,)):
    """No memory and the default memory at each batch size (128 is the
    flagfile's, so its arms carry no batch flag)."""
    return [(f"{name}, batch {batch}",
             ([] if batch == 128 else [f"--train_batch_size={batch}"]) + flags)
            for batch in batches for name, flags in (("no memory", []), ("memory", MEMORY))]


LONG_ARMS = long_arms()

SHARED_SETTINGS = ("temperature ", "learning rate ", "batch ")


# The demo (flags/digits_pretrain.cfg) with and without its memory.
DIGITS_ARMS = [("no memory", ["--queue_size=0"]), ("memory", [])]


def control_of(arm):
    """The no-memory arm a memory arm is paired with: the one with the same
    temperature, learning rate and batch size (settings named in the arm's
    name), otherwise the plain control."""
    if not arm.startswith("memory"):
        return arm
    shared = [s for s in arm.split(", ")[1:] if s.startswith(SHARED_SETTINGS)]
    return ", ".join(["no memory", *shared])


def _slug(name):
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def probe(pretrain_dir, seed, quick):
    """Effective rank and kNN top-1 of the pretrained backbone and projection
    output (kept in pretrain_dir/probe.json)."""
    done = os.path.join(pretrain_dir, "probe.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    from simclr_tf2.data import make_source
    from simclr_tf2.monitors.knn_monitor import monitor_indices, representation_report
    from simclr_tf2.rundir import restore_model
    restored = restore_model(pretrain_dir)
    model, config = restored.model, restored.config
    train = make_source(config.data, "train", labelled=True)
    test = make_source(config.data, "test", labelled=True)
    limit = 256 if quick else 0
    start = time.time()
    report = representation_report(
        model, config.data, train, test, 256, k=200, temperature=0.1,
        outputs=("final_avg_pool", "proj_head_output"),
        bank_indices=monitor_indices(len(train), limit, seed),
        query_indices=monitor_indices(len(test), limit, seed))
    report["seconds"] = time.time() - start
    with open(done, "w") as f:
        json.dump(report, f, indent=2)
    return report


# Per dataset: the pretraining flagfile and flags every arm shares, and the
# supervised stages that measure it ({measure: (flagfile, flags(seed))}).
RECIPES = {
    "mnist5k": ("mnist5k_pretrain.cfg", [f"--train_epochs={EPOCHS}"], {
        "linear_eval_10pct": ("mnist5k_linear_eval.cfg",
                              lambda seed: supervised_args(0.1, seed, epochs=False)),
        "finetune_1pct": ("mnist5k_finetune_1pct.cfg",
                          lambda seed: supervised_args(0.01, seed))}),
    # The pretraining flagfile's own epochs (75) instead of EPOCHS.
    "mnist5k_long": ("mnist5k_pretrain.cfg", [], {
        "linear_eval_10pct": ("mnist5k_linear_eval.cfg",
                              lambda seed: supervised_args(0.1, seed, epochs=False)),
        "finetune_1pct": ("mnist5k_finetune_1pct.cfg",
                          lambda seed: supervised_args(0.01, seed))}),
    # The demo's own recipe: its flagfiles as they are.
    "digits": ("digits_pretrain.cfg", [], {
        "finetune_10pct": ("digits_finetune_10pct.cfg", SEEDS_ARGS)}),
}


def run_arm(workdir, name, flags, seed, quick, dataset="mnist5k"):
    """Pretrains one arm for one seed and measures it; returns its record."""
    pretrain_flagfile, shared, stages = RECIPES[dataset]
    pre_dir = os.path.join(workdir, _slug(name), f"seed{seed}")
    pretrain = stage(pretrain_flagfile, os.path.join(pre_dir, "pretrain"),
                     [*shared, *SEEDS_ARGS(seed), *flags, "--export_at_end=false"], quick,
                     verbose=False)
    record = {"arm": name, "seed": seed, "flags": flags, "pretrain": pretrain,
              "probe": probe(os.path.join(pre_dir, "pretrain"), seed, quick)}
    checkpoint = f"--checkpoint={os.path.join(pre_dir, 'pretrain')}"
    for measure, (flagfile, stage_flags) in stages.items():
        record[measure] = stage(flagfile, os.path.join(pre_dir, measure),
                                [*stage_flags(seed), checkpoint, "--noexport_at_end"],
                                quick, verbose=False)["top1"]
    return record


def _worker_threads(threads):
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    absl_logging.set_verbosity(absl_logging.WARNING)


def run_arms(workdir, arms, seeds, quick, jobs=1, dataset="mnist5k"):
    """Every (arm, seed) record, in arm then seed order."""
    tasks = [(name, flags, seed) for name, flags in arms for seed in seeds]
    if jobs <= 1:
        return [run_arm(workdir, *task, quick, dataset) for task in tasks]
    import concurrent.futures
    import multiprocessing
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with concurrent.futures.ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_threads, initargs=(threads,)) as pool:
        futures = [pool.submit(run_arm, workdir, *task, quick, dataset) for task in tasks]
        return [f.result() for f in futures]


MEASURES = {
    "finetune_1pct": lambda r: 100 * r["finetune_1pct"],
    "linear_eval_10pct": lambda r: 100 * r["linear_eval_10pct"],
    "finetune_10pct": lambda r: 100 * r["finetune_10pct"],
    "knn_backbone": lambda r: 100 * r["probe"].get("knn_top1_final_avg_pool", np.nan),
    "knn_projection": lambda r: 100 * r["probe"].get("knn_top1_proj_head_output", np.nan),
    "erank_backbone": lambda r: r["probe"]["erank_final_avg_pool"],
    "erank_projection": lambda r: r["probe"]["erank_proj_head_output"],
}


def summarise(records, control):
    """Per arm: each measure's values (seed order), mean, and the paired
    difference to the `control` arm's."""
    by_arm = {}
    for record in records:
        by_arm.setdefault(record["arm"], []).append(record)
    rows = []
    for arm, arm_records in by_arm.items():
        row = {"arm": arm, "flags": arm_records[0]["flags"],
               "seeds": [r["seed"] for r in arm_records],
               "pretrain_seconds": [r["pretrain"]["seconds"] for r in arm_records]}
        base = {r["seed"]: r for r in by_arm.get(control(arm), [])}
        for measure, get in MEASURES.items():
            if measure.startswith(("finetune", "linear")) and measure not in arm_records[0]:
                continue  # not a stage of this dataset's recipe
            values = [get(r) for r in arm_records]
            entry = {"values": values, "mean": float(np.mean(values))}
            paired = [v - get(base[r["seed"]]) for v, r in zip(values, arm_records)
                      if r["seed"] in base]
            if paired and control(arm) != arm:
                entry["minus_control"] = {"values": paired, "mean": float(np.mean(paired))}
            row[measure] = entry
        rows.append(row)
    return rows


def plot(rows, path, title=f"mnist5k, {EPOCHS} pretraining epochs: memory vs none"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for axis, measure, label in ((axes[0], "finetune_1pct", "1%-label fine-tuning"),
                                 (axes[1], "linear_eval_10pct", "10%-label linear eval")):
        for memory in ("no memory", "memory"):
            points = [(int(r["arm"].rsplit(" ", 1)[1]), r[measure]) for r in rows
                      if r["arm"].split(",")[0] == memory]
            points.sort()
            axis.errorbar([p[0] for p in points], [p[1]["mean"] for p in points],
                          yerr=[np.std(p[1]["values"]) for p in points], marker="o",
                          capsize=3, label=memory)
        axis.set_xscale("log", base=2)
        axis.set_xticks([32, 128], ["32", "128"])
        axis.set_xlabel("pretraining batch size")
        axis.set_ylabel("test top-1 (%)")
        axis.set_title(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench_memory"))
    parser.add_argument("--part", choices=["hypotheses", "batch", "split_bn", "long", "digits"],
                        default="batch")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="*", default=None,
                        help="run only the arms whose names contain one of these")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--long_batches", type=int, nargs="+", default=[128],
                        help="--part long: the pretraining batch sizes to compare at")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps per stage: checks the script, not the numbers")
    parser.add_argument("--plot", nargs="+", metavar="REPORT",
                        help="only plot: the rows of these --part long reports (JSON) "
                        "in one figure, written to --plot_out")
    parser.add_argument("--plot_out", default=os.path.join(ROOT, "bench", "results",
                                                           "memory_mnist5k_long.png"))
    args = parser.parse_args(argv)
    if args.plot:
        rows = []
        for report in args.plot:
            with open(report) as f:
                rows += json.load(f)["rows"]
        plot(rows, args.plot_out, "mnist5k, 75 pretraining epochs: memory vs none")
        return {"plot": args.plot_out, "arms": [r["arm"] for r in rows]}
    os.makedirs(args.workdir, exist_ok=True)
    absl_logging.set_verbosity(absl_logging.WARNING)
    arms = {"hypotheses": HYPOTHESIS_ARMS, "batch": BATCH_ARMS,
            "split_bn": SPLIT_BN_ARMS, "long": long_arms(args.long_batches),
            "digits": DIGITS_ARMS}[args.part]
    if args.arms:
        arms = [a for a in arms if any(s in a[0] for s in args.arms)]
    start = time.time()
    dataset = {"digits": "digits", "long": "mnist5k_long"}.get(args.part, "mnist5k")
    records = run_arms(args.workdir, arms, args.seeds, args.quick, args.jobs, dataset)
    rows = summarise(records, control_of)
    report = {"benchmark": f"memory_{dataset.split('_')[0]}_{args.part}", "quick": args.quick,
              "seeds": args.seeds, "rows": rows,
              "pretrain_epochs": EPOCHS if dataset == "mnist5k" else "the flagfile's",
              "records": records, "total_seconds": time.time() - start,
              "machine": {"platform": platform.platform(),
                          "processor": platform.processor(), "cpus": os.cpu_count()}}
    if args.part == "batch" and len(rows) == len(BATCH_ARMS):
        plot(rows, os.path.join(args.workdir, "memory_batch.png"))
    print(json.dumps(report, indent=2))
    with open(os.path.join(args.workdir, f"report_{args.part}.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
