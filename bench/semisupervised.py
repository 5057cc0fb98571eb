"""Semi-supervised benchmark on the built-in mnist5k (4000 train / 1000 test).

    python bench/semisupervised.py [--workdir runs/bench_semisup] [--seeds 0 1 2] [--jobs 2]
    python bench/semisupervised.py --part ablations [--seeds 0 1]
    python bench/semisupervised.py --part variants [--pretrain_dir DIR]

Label fractions 1% (40 images), 10% (400) and 100% (4000), drawn by the
library's stratified subset code with data seed = seed; test on all 1000.
Main table (`--part main`), every network stage run by the library's own
modes through the flagfiles in flags/:
- floor 1: logistic regression on raw pixels (scikit-learn);
- floor 2: the same backbone trained from scratch on the labelled subset only
  (--train_mode=finetune --from_scratch);
- SimCLRv2: one pretraining on all 4000 training images without labels
  (flags/mnist5k_pretrain.cfg), then linear eval on frozen features
  (flags/mnist5k_linear_eval.cfg), fine-tuning from projection-head layer 1
  (flags/mnist5k_finetune_{1,10}pct.cfg), and distillation of each fine-tuned
  network into a half-width student on all 4000 images without labels.
Every trained network (scratch, linear eval, fine-tuning, distillation)
recomputes its batch-norm statistics after training over the eval view of all
4000 training images, labels unused (--bn_recompute; never test images).
Fine-tuning and scratch crop at least half the image, linear eval not at all
(the flagfiles).
`--part ablations` pretrains shorter variants (head depth, memory, selective
kernels, width; ABLATION_EPOCHS) and compares each with its control by
fine-tuning on 1% of the labels with the same seeds (paired).
`--part variants` fine-tunes one pretraining on 1% of the labels with each
recipe in FINETUNE_VARIANTS (head layer 0 or 1; batch-norm statistics over
the labelled images or over all training images), paired by seed.
`--jobs 2` runs the main table's stages in two worker processes of one
thread each: one stage keeps only about 1.6 of 2 cores busy. Measured with
`--jobs 2` on a 2-core AMD EPYC: the 3-seed main table in 43 min, its stages
in 28 min (RESULTS.md). Results are the same up to CPU arithmetic order.
Writes <workdir>/report_<part>.json (and prints it) and <workdir>/*.png
plots; finished stages are reused, so an interrupted run resumes. `--quick` runs a
few steps per stage: it checks the script, not the numbers.
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

FRACTIONS = (0.01, 0.1, 1.0)
# Per label fraction: batch size and epochs of every supervised stage, so that
# each fraction gets a comparable number of steps (1%: 40 images, one batch).
SCHEDULE = {0.01: (40, 200), 0.1: (64, 100), 1.0: (256, 30)}
SEEDS_ARGS = lambda seed: [f"--seed={seed}", f"--data_seed={seed}"]  # noqa: E731


def _pct(fraction):
    return f"{round(fraction * 100)}pct"


# Every supervised stage (scratch, linear eval, fine-tuning) alike: batch-norm
# statistics recomputed after training over all 4000 training images (labels
# unused; never test images). The crops come from the flagfiles: fine-tuning
# and scratch (mnist5k_finetune_*.cfg) at least half the image, linear eval
# none (bench/RESULTS.md has the sweep behind both).
SUPERVISED_RECIPE = ["--bn_recompute", "--bn_recompute_images=all"]


def supervised_args(fraction, seed, epochs=True):
    """The flags every supervised stage of `fraction` and `seed` shares;
    `epochs=False` keeps the flagfile's epochs (linear eval: its classifier
    on cached features trains to convergence, 300 epochs, at every fraction)."""
    batch, schedule_epochs = SCHEDULE[fraction]
    return [f"--label_fraction={fraction}", f"--train_batch_size={batch}",
            *([f"--train_epochs={schedule_epochs}"] if epochs else []),
            *SUPERVISED_RECIPE, *SEEDS_ARGS(seed)]


def logistic_regression_pixels(fraction, seed):
    """Floor 1: multinomial logistic regression on the 784 raw pixels."""
    from sklearn.linear_model import LogisticRegression

    from simclr_tf2.configs.schema import DataConfig
    from simclr_tf2.data import labelled_subset, make_source
    from simclr_tf2.data.builtin import load_builtin
    config = DataConfig(dataset="mnist5k", image_size=28)
    train = load_builtin("mnist5k", "train", 28)
    test = load_builtin("mnist5k", "test", 28)
    keep = labelled_subset(make_source(config, "train", labelled=True), fraction,
                           seed=seed)
    start = time.time()
    classifier = LogisticRegression(max_iter=5000)
    classifier.fit(train.images[keep, :, :, 0].reshape(len(keep), -1), train.labels[keep])
    top1 = classifier.score(test.images[:, :, :, 0].reshape(len(test), -1), test.labels)
    return {"top1": float(top1), "seconds": time.time() - start, "examples": len(keep)}


def _pretraining(workdir, pretrain_dir, quick):
    """(directory, record) of the shared pretraining: `pretrain_dir` reused
    when given, else a mnist5k_pretrain.cfg run in workdir/pretrain."""
    if pretrain_dir:
        # The reused run's own record (time, images/s) when the benchmark made it.
        done = os.path.join(pretrain_dir, "bench_done.json")
        record = {}
        if os.path.exists(done):
            with open(done) as f:
                record = json.load(f)
        return pretrain_dir, {**record, "reused": pretrain_dir}
    pretrain_dir = os.path.join(workdir, "pretrain")
    return pretrain_dir, stage("mnist5k_pretrain.cfg", pretrain_dir,
                               ["--export_at_end=false"], quick)


def main_tasks(seeds, distill_fractions=(0.01, 0.1)):
    """The main table's network stages as independent tasks (seed, fraction,
    kind): 'scratch', 'linear_eval', and 'finetune' (followed by the
    distillation of that network when the fraction is in
    `distill_fractions`), in table order."""
    tasks = []
    for seed in seeds:
        for fraction in FRACTIONS:
            tasks += [(seed, fraction, "scratch"), (seed, fraction, "linear_eval")]
            if fraction != 1.0:
                tasks.append((seed, fraction, "finetune"))
    return [(seed, fraction, kind, fraction in distill_fractions)
            for seed, fraction, kind in tasks]


def run_task(task, workdir, pretrain_dir, quick):
    """Runs one main_tasks task; returns [(method, fraction, record)]."""
    seed, fraction, kind, distill = task
    run_dir = lambda name: os.path.join(  # noqa: E731
        workdir, f"seed{seed}", f"{name}_{_pct(fraction)}")
    if kind == "scratch":
        return [("scratch", fraction, stage(
            "mnist5k_finetune_10pct.cfg", run_dir("scratch"),
            [*supervised_args(fraction, seed), "--train_mode=finetune", "--from_scratch",
             "--proj_head_mode=none", "--ft_proj_selector=0", "--noexport_at_end"],
            quick, verbose=False))]
    if kind == "linear_eval":
        return [("simclrv2_linear_eval", fraction, stage(
            "mnist5k_linear_eval.cfg", run_dir("linear_eval"),
            [*supervised_args(fraction, seed, epochs=False),
             f"--checkpoint={pretrain_dir}", "--noexport_at_end"],
            quick, verbose=False))]
    teacher_dir = run_dir("finetune")
    out = [("simclrv2_finetune", fraction, stage(
        f"mnist5k_finetune_{_pct(fraction)}.cfg", teacher_dir,
        [*supervised_args(fraction, seed), f"--checkpoint={pretrain_dir}",
         "--noexport_at_end"], quick, verbose=False))]
    if distill:
        out.append(("simclrv2_distill", fraction, stage(
            "mnist5k_distill.cfg", run_dir("distill"),
            [f"--teacher={teacher_dir}", *SEEDS_ARGS(seed), "--train_steps=625",
             "--bn_recompute", "--noexport_at_end"], quick, verbose=False)))
    return out


def _worker_threads(threads):
    """Pool initialiser: this worker's share of the cores."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    absl_logging.set_verbosity(absl_logging.WARNING)


def run_tasks(tasks, workdir, pretrain_dir, quick, jobs=1, task_fn=None):
    """Every task's records (`task_fn`, run_task by default), in task order.
    jobs > 1 runs that many worker processes, each with cores / jobs threads:
    the small networks here keep two threads only partly busy, so two
    single-thread stages side by side finish sooner than one after the other."""
    task_fn = task_fn or run_task
    if jobs <= 1:
        return [task_fn(task, workdir, pretrain_dir, quick) for task in tasks]
    import concurrent.futures
    import multiprocessing
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # Longest first: fine-tuning + distillation chains, then scratch at 100%.
    order = sorted(range(len(tasks)), key=lambda i: (
        tasks[i][2] != "finetune", -tasks[i][1], i))
    with concurrent.futures.ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_threads, initargs=(threads,)) as pool:
        futures = {i: pool.submit(task_fn, tasks[i], workdir, pretrain_dir, quick)
                   for i in order}
        return [futures[i].result() for i in range(len(tasks))]


def main_part(workdir, seeds, quick, pretrain_dir=None, distill_fractions=(0.01, 0.1),
              jobs=1):
    pretrain_dir, pretrain = _pretraining(workdir, pretrain_dir, quick)
    results = {}  # method -> fraction -> [record per seed]

    def add(method, fraction, record):
        results.setdefault(method, {}).setdefault(_pct(fraction), []).append(record)

    for seed in seeds:
        for fraction in FRACTIONS:
            add("logistic_regression_pixels", fraction,
                logistic_regression_pixels(fraction, seed))
    stage_start = time.time()
    tasks = main_tasks(seeds, distill_fractions)
    for records in run_tasks(tasks, workdir, pretrain_dir, quick, jobs):
        for method, fraction, record in records:
            add(method, fraction, record)
    return {"pretrain": pretrain, "results": results, "jobs": jobs,
            "stage_seconds": time.time() - stage_start}


# Ablations: (name, control arm, variant arm); an arm is (pretraining flags,
# fine-tuning flags). All arms pretrain for ABLATION_EPOCHS.
ABLATION_EPOCHS = 10
ABLATIONS = [
    ("head: 3 layers fine-tuned from layer 1 (v2) vs 2 layers from layer 0 (v1)",
     ([], []), (["--num_proj_layers=2"], ["--num_proj_layers=2", "--ft_proj_selector=0"])),
    ("memory: queue of 1024 keys + momentum encoder (0.99), the default memory "
     "(SimCLR and MoCo losses) vs none",
     ([], []), (["--queue_size=1024", "--memory_momentum=0.99"], [])),
    ("width: ResNet-18 at 1/2 width vs 1/4 width",
     ([], []), (["--width_multiplier=0.5"], ["--width_multiplier=0.5"])),
    ("selective kernels: ResNet-50 (1/4 width) with SK (ratio 1/16) vs without",
     (["--depth=50"], ["--depth=50"]),
     (["--depth=50", "--sk_ratio=0.0625"], ["--depth=50", "--sk_ratio=0.0625"])),
]


def ablation_part(workdir, seeds, quick, fraction=0.01, only=None):
    """Each arm: pretrain (seed 0), then fine-tune on `fraction` per seed.
    `only`: the ablations whose names start with one of these words."""
    epochs = [f"--train_epochs={ABLATION_EPOCHS}"]
    arms = {}
    rows = []
    for name, control, variant in ABLATIONS:
        if only and not name.startswith(tuple(only)):
            continue
        row = {"ablation": name, "arms": {}}
        for label, (pre_flags, ft_flags) in (("control", control), ("variant", variant)):
            key = " ".join(pre_flags) or "base"
            pre_dir = os.path.join(workdir, "ablation_pretrain",
                                   key.replace("--", "").replace("=", "_").replace(" ", "+"))
            if key not in arms:
                arms[key] = stage("mnist5k_pretrain.cfg", pre_dir,
                                  [*epochs, *pre_flags, "--export_at_end=false"], quick,
                                  verbose=False)
            finetunes = []
            for seed in seeds:
                ft_dir = os.path.join(pre_dir + "_finetune", f"seed{seed}_{_pct(fraction)}")
                finetunes.append(stage(
                    f"mnist5k_finetune_{_pct(fraction)}.cfg", ft_dir,
                    [*supervised_args(fraction, seed), *ft_flags,
                     f"--checkpoint={pre_dir}", "--noexport_at_end"], quick,
                    verbose=False))
            values = [r["top1"] for r in finetunes]
            row["arms"][label] = {"pretrain_flags": pre_flags, "finetune_flags": ft_flags,
                                  "pretrain_seconds": arms[key]["seconds"],
                                  "pretrain_images_per_second":
                                      arms[key]["images_per_second"],
                                  "top1": values, "mean": float(np.mean(values)),
                                  "std": float(np.std(values))}
        diffs = [v - c for v, c in zip(row["arms"]["variant"]["top1"],
                                       row["arms"]["control"]["top1"])]
        row["variant_minus_control"] = {"mean": float(np.mean(diffs)), "values": diffs}
        rows.append(row)
    return {"pretrain_epochs": ABLATION_EPOCHS, "fraction": fraction, "rows": rows}


# Fine-tuning recipe variants on one pretraining, paired by seed with the
# first: (name, fine-tuning flags). Each names its BN choice explicitly, since
# supervised_args sets "all" (the main table's).
FINETUNE_VARIANTS = [
    ("head layer 1, BN statistics over the labelled images",
     ["--bn_recompute_images=labelled"]),
    ("head layer 1, BN statistics over all 4000 training images (main table)",
     ["--bn_recompute_images=all"]),
    ("head layer 0, BN statistics over the labelled images",
     ["--ft_proj_selector=0", "--bn_recompute_images=labelled"]),
    ("head layer 0, BN statistics over all 4000 training images",
     ["--ft_proj_selector=0", "--bn_recompute_images=all"]),
]


def variants_part(workdir, seeds, quick, pretrain_dir, fraction=0.01):
    """Each fine-tuning variant on `fraction` per seed, from one pretraining
    (`pretrain_dir`, or a new mnist5k_pretrain.cfg run in workdir)."""
    pretrain_dir, pretrain = _pretraining(workdir, pretrain_dir, quick)
    rows = []
    for index, (name, flags) in enumerate(FINETUNE_VARIANTS):
        records = [stage(f"mnist5k_finetune_{_pct(fraction)}.cfg",
                         os.path.join(workdir, f"variant{index}", f"seed{seed}"),
                         [*supervised_args(fraction, seed), *flags,
                          f"--checkpoint={pretrain_dir}", "--noexport_at_end"],
                         quick, verbose=False) for seed in seeds]
        values = [r["top1"] * 100 for r in records]
        row = {"variant": name, "finetune_flags": flags, "top1": values,
               "mean": float(np.mean(values)), "std": float(np.std(values))}
        diffs = [v - c for v, c in zip(values, rows[0]["top1"] if rows else values)]
        row["minus_first"] = {"mean": float(np.mean(diffs)), "values": diffs}
        rows.append(row)
    return {"pretrain": pretrain, "fraction": fraction, "rows": rows}


def summarise(results):
    table = {}
    for method, by_fraction in results.items():
        table[method] = {}
        for fraction, records in by_fraction.items():
            values = np.array([r["top1"] for r in records]) * 100
            table[method][fraction] = {"mean": float(values.mean()),
                                       "std": float(values.std()),
                                       "values": values.round(2).tolist()}
    return table


def targets(table, pretrain):
    get = lambda m, f: table.get(m, {}).get(f, {}).get("mean", float("nan"))  # noqa
    return {
        "finetune_1pct_ge_88": get("simclrv2_finetune", "1pct") >= 88,
        "finetune_1pct_minus_scratch_ge_15":
            get("simclrv2_finetune", "1pct") - get("scratch", "1pct") >= 15,
        "finetune_10pct_ge_97.5": get("simclrv2_finetune", "10pct") >= 97.5,
        "linear_eval_100pct_ge_98": get("simclrv2_linear_eval", "100pct") >= 98,
        "pretrain_le_30min": pretrain.get("seconds", float("nan")) <= 1800,
    }


def plot(table, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(6, 4))
    for method, by_fraction in table.items():
        keys = [f for f in ("1pct", "10pct", "100pct") if f in by_fraction]
        x = [float(k[:-3]) for k in keys]
        axis.errorbar(x, [by_fraction[k]["mean"] for k in keys],
                      yerr=[by_fraction[k]["std"] for k in keys], marker="o",
                      capsize=3, label=method)
    axis.set_xscale("log")
    axis.set_xticks([1, 10, 100], ["1%", "10%", "100%"])
    axis.set_xlabel("labelled training images (of 4000)")
    axis.set_ylabel("test top-1 (%), mean ± std over seeds")
    axis.set_title("mnist5k: accuracy against label fraction")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench_semisup"))
    parser.add_argument("--part", choices=["main", "ablations", "variants"], default="main")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain_dir", default=None,
                        help="main and variants parts: an existing "
                        "mnist5k_pretrain.cfg run to reuse")
    parser.add_argument("--distill_fractions", type=float, nargs="*", default=[0.01, 0.1])
    parser.add_argument("--ablations", nargs="*", default=None,
                        help="ablations part: only the rows whose names start with "
                        "these words (head, memory, width, selective)")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps per stage: checks the script, not the numbers")
    parser.add_argument("--jobs", type=int, default=1,
                        help="main part: run the stages in this many worker processes "
                        "(each with cores / jobs threads; 2 on 2 cores is faster)")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    absl_logging.set_verbosity(absl_logging.WARNING)
    start = time.time()
    report = {"benchmark": f"semisupervised_mnist5k_{args.part}", "quick": args.quick,
              "seeds": args.seeds,
              "machine": {"platform": platform.platform(),
                          "processor": platform.processor(), "cpus": os.cpu_count()}}
    if args.part == "main":
        report.update(main_part(args.workdir, args.seeds, args.quick, args.pretrain_dir,
                                tuple(args.distill_fractions), args.jobs))
        report["summary"] = summarise(report["results"])
        report["targets"] = targets(report["summary"], report["pretrain"])
        plot(report["summary"], os.path.join(args.workdir, "semisupervised_mnist5k.png"))
    elif args.part == "ablations":
        report.update(ablation_part(args.workdir, args.seeds, args.quick,
                                    only=args.ablations))
    else:
        report.update(variants_part(args.workdir, args.seeds, args.quick, args.pretrain_dir))
    report["total_seconds"] = time.time() - start
    print(json.dumps(report, indent=2))
    with open(os.path.join(args.workdir, f"report_{args.part}.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
