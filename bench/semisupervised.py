"""Semi-supervised benchmark on the built-in mnist5k (4000 train / 1000 test).

    python bench/semisupervised.py [--workdir runs/bench_semisup] [--pretrain_seeds 0 1]
        [--seeds 0 1 2 3 4] [--jobs 2]
    python bench/semisupervised.py --part ablations [--seeds 0 1]
    python bench/semisupervised.py --part variants [--pretrain_dir DIR]

Label fractions 1% (40 images), 10% (400) and 100% (4000), drawn by the
library's stratified subset code with data seed = seed; test on all 1000.
With 40 labelled images the subset drawn moves the result by points, so each
SimCLRv2 cell is measured over pretraining seeds x label subsets (2 x 5 by
default; a stage's training seed is its subset's seed) and the baselines over
the same subsets; each cell is reported with its 95% interval and the shares
of its variance from the pretraining and from the subset (intervals.py), and
paired differences on the same subsets (semisup_report.py).
Main table (`--part main`), every network stage run by the library's own
modes through the flagfiles in flags/:
- floor 1: logistic regression on raw pixels (scikit-learn);
- floor 2: the same backbone trained from scratch on the labelled subset only
  (--train_mode=finetune --from_scratch);
- SimCLRv2: pretrainings on all 4000 training images without labels
  (flags/mnist5k_pretrain.cfg, one per pretraining seed), then linear eval on frozen features
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
in 28 min (RESULTS.md has the 2 x 5 table's). Results are the same up to CPU
arithmetic order.
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
from semisup_report import markdown, paired, plot, summarise, targets  # noqa: E402

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


def _pretraining(workdir, pretrain_dir, quick, seed=None):
    """(directory, record) of a pretraining: `pretrain_dir` reused when
    given, else a mnist5k_pretrain.cfg run in workdir/pretrain (seed None: the
    flagfile's seed) or workdir/pretrain_seed<seed>."""
    if pretrain_dir:
        # The reused run's own record (time, images/s) when the benchmark made it.
        done = os.path.join(pretrain_dir, "bench_done.json")
        record = {}
        if os.path.exists(done):
            with open(done) as f:
                record = json.load(f)
        return pretrain_dir, {**record, "reused": pretrain_dir}
    name, seeds = ("pretrain", []) if seed is None else (f"pretrain_seed{seed}",
                                                         SEEDS_ARGS(seed))
    pretrain_dir = os.path.join(workdir, name)
    return pretrain_dir, stage("mnist5k_pretrain.cfg", pretrain_dir,
                               ["--export_at_end=false", *seeds], quick)


def main_tasks(pretrainings, seeds, distill_fractions=(0.01, 0.1)):
    """The main table's network stages as independent tasks (pretraining,
    seed, fraction, kind, distill): the baseline 'scratch' per label subset
    (pretraining None), then per pretraining and subset 'linear_eval' and
    'finetune' (followed by the distillation of that network when the
    fraction is in `distill_fractions`). A subset's seed is also its
    fine-tuning seed."""
    tasks = [(None, seed, fraction, "scratch") for seed in seeds for fraction in FRACTIONS]
    for pretraining in pretrainings:
        for seed in seeds:
            for fraction in FRACTIONS:
                tasks.append((pretraining, seed, fraction, "linear_eval"))
                if fraction != 1.0:
                    tasks.append((pretraining, seed, fraction, "finetune"))
    return [(*task, task[2] in distill_fractions and task[3] == "finetune")
            for task in tasks]


def _stage_dir(workdir, pretraining, seed, name, fraction):
    """Baselines in <workdir>/seed<s>/, SimCLRv2 stages in
    <workdir>/pretrain<p>_seed<s>/."""
    prefix = "" if pretraining is None else f"pretrain{pretraining}_"
    return os.path.join(workdir, f"{prefix}seed{seed}", f"{name}_{_pct(fraction)}")


def run_task(task, workdir, pretrain_dirs, quick):
    """Runs one main_tasks task; returns [(method, fraction, record)], each
    record also naming its pretraining and label subset."""
    pretraining, seed, fraction, kind, distill = task
    run_dir = lambda name: _stage_dir(workdir, pretraining, seed, name, fraction)  # noqa
    mark = lambda record: {**record, "pretraining": pretraining, "subset": seed}  # noqa
    if kind == "scratch":
        return [("scratch", fraction, mark(stage(
            "mnist5k_finetune_10pct.cfg", run_dir("scratch"),
            [*supervised_args(fraction, seed), "--train_mode=finetune", "--from_scratch",
             "--proj_head_mode=none", "--ft_proj_selector=0", "--noexport_at_end"],
            quick, verbose=False)))]
    pretrain_dir = pretrain_dirs[pretraining]
    if kind == "linear_eval":
        return [("simclrv2_linear_eval", fraction, mark(stage(
            "mnist5k_linear_eval.cfg", run_dir("linear_eval"),
            [*supervised_args(fraction, seed, epochs=False),
             f"--checkpoint={pretrain_dir}", "--noexport_at_end"],
            quick, verbose=False)))]
    teacher_dir = run_dir("finetune")
    out = [("simclrv2_finetune", fraction, mark(stage(
        f"mnist5k_finetune_{_pct(fraction)}.cfg", teacher_dir,
        [*supervised_args(fraction, seed), f"--checkpoint={pretrain_dir}",
         "--noexport_at_end"], quick, verbose=False)))]
    if distill:
        out.append(("simclrv2_distill", fraction, mark(stage(
            "mnist5k_distill.cfg", run_dir("distill"),
            [f"--teacher={teacher_dir}", *SEEDS_ARGS(seed), "--train_steps=625",
             "--bn_recompute", "--noexport_at_end"], quick, verbose=False))))
    return out


def _worker_threads(threads):
    """Pool initialiser: this worker's share of the cores."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    absl_logging.set_verbosity(absl_logging.WARNING)


def run_tasks(tasks, workdir, pretrain_dirs, quick, jobs=1, task_fn=None):
    """Every task's records (`task_fn`, run_task by default), in task order.
    jobs > 1 runs that many worker processes, each with cores / jobs threads:
    the small networks here keep two threads only partly busy, so two
    single-thread stages side by side finish sooner than one after the other."""
    task_fn = task_fn or run_task
    if jobs <= 1:
        return [task_fn(task, workdir, pretrain_dirs, quick) for task in tasks]
    import concurrent.futures
    import multiprocessing
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # Longest first: fine-tuning + distillation chains, then scratch at 100%.
    order = sorted(range(len(tasks)), key=lambda i: (
        tasks[i][3] != "finetune", -tasks[i][2], i))
    with concurrent.futures.ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_threads, initargs=(threads,)) as pool:
        futures = {i: pool.submit(task_fn, tasks[i], workdir, pretrain_dirs, quick)
                   for i in order}
        return [futures[i].result() for i in range(len(tasks))]


def main_part(workdir, seeds, quick, pretrain_dirs=(), pretrain_seeds=(0, 1),
              distill_fractions=(0.01, 0.1), jobs=1):
    """Every pretraining (`pretrain_dirs` reused, else one per pretraining
    seed), then every main_tasks stage; results: method -> fraction ->
    [record per pretraining and subset]."""
    pretrain = {}
    directories = {}
    for key, given in (enumerate(pretrain_dirs) if pretrain_dirs
                       else ((seed, None) for seed in pretrain_seeds)):
        directories[key], pretrain[key] = _pretraining(
            workdir, given, quick, seed=None if given else key)
    results = {}

    def add(method, fraction, record):
        results.setdefault(method, {}).setdefault(_pct(fraction), []).append(record)

    for seed in seeds:
        for fraction in FRACTIONS:
            add("logistic_regression_pixels", fraction,
                {**logistic_regression_pixels(fraction, seed), "pretraining": None,
                 "subset": seed})
    stage_start = time.time()
    tasks = main_tasks(list(directories), seeds, distill_fractions)
    for records in run_tasks(tasks, workdir, directories, quick, jobs):
        for method, fraction, record in records:
            add(method, fraction, record)
    return {"pretrain": {str(k): v for k, v in pretrain.items()}, "results": results,
            "jobs": jobs, "stage_seconds": time.time() - stage_start}


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench_semisup"))
    parser.add_argument("--part", choices=["main", "ablations", "variants"], default="main")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="label subsets (each also its stages' training seed)")
    parser.add_argument("--pretrain_seeds", type=int, nargs="+", default=[0, 1],
                        help="main part: one pretraining per seed, crossed with the "
                        "label subsets")
    parser.add_argument("--pretrain_dir", nargs="+", default=None,
                        help="existing mnist5k_pretrain.cfg runs to reuse (main part: "
                        "in place of --pretrain_seeds; variants part: the first)")
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
        report.update(main_part(args.workdir, args.seeds, args.quick,
                                args.pretrain_dir or (), args.pretrain_seeds,
                                tuple(args.distill_fractions), args.jobs))
        report["summary"] = summarise(report["results"])
        report["paired"] = paired(report["results"])
        report["targets"] = targets(report["summary"], report["pretrain"])
        report["markdown"] = markdown(report["summary"], report["paired"])
        plot(report["summary"], os.path.join(args.workdir, "semisupervised_mnist5k.png"))
    elif args.part == "ablations":
        report.update(ablation_part(args.workdir, args.seeds, args.quick,
                                    only=args.ablations))
    else:
        report.update(variants_part(args.workdir, args.seeds, args.quick,
                                    (args.pretrain_dir or [None])[0]))
    report["total_seconds"] = time.time() - start
    print(json.dumps(report, indent=2))
    with open(os.path.join(args.workdir, f"report_{args.part}.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
