"""Distillation benchmark on the built-in mnist5k (4000 train / 1000 test).

    python bench/distill.py [--workdir runs/bench_distill] [--seeds 0 1 2]

Every stage is the library's own training mode, configured by the flagfiles
in flags/ (the commands a user would run):
1. pretrain the teacher's network on all 4000 training images without labels
   (flags/mnist5k_pretrain.cfg; done once, reused by every seed);
2. teacher: fine-tune from projection-head layer 1 on 10% of the labels
   (400 images; flags/mnist5k_finetune_10pct.cfg);
3. student (a half-width network, flags/mnist5k_distill.cfg) distilled from
   the teacher on all 4000 training images, no labels;
4. the same student, same steps and optimiser, trained from scratch on the
   400 labelled images alone (--mode=finetune --from_scratch).
Targets (issue 7): student >= teacher - 1 point, and student > baseline.
Prints JSON (per seed and mean/std); finished stages found in --workdir are
reused, so an interrupted run resumes. On 2 CPU cores pretraining takes
15-20 minutes and each seed 12-17 (bench/RESULTS.md has the measured times).
`--quick` (a few steps per stage) only checks that the script runs.
"""
import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from simclr_tf2.demo import stage_configs  # noqa: E402
from simclr_tf2.training.runner import run  # noqa: E402

# --quick checks the scripts, not the numbers: 4 steps per stage, and batch-norm
# recompute over 2 batches instead of all 4000 training images (about 4 s less
# per supervised stage).
QUICK = ["--train_steps=4", "--steps_per_loop=2", "--summary_interval=2",
         "--checkpoint_interval=4", "--export_at_end=false", "--bn_recompute_batches=2"]


def stage(flagfile, model_dir, extra=(), quick=False, verbose=True):
    """Runs one stage unless model_dir already holds its record; returns the
    record {top1 (None for pretraining), seconds, steps, batch, flags,
    images_per_second}, also kept in model_dir/bench_done.json."""
    done = os.path.join(model_dir, "bench_done.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    args = list(extra) + (QUICK if quick else [])
    config, run_config = stage_configs(flagfile, model_dir, args)
    start = time.time()
    outcome = run(config, run_config, verbose=verbose)
    seconds = time.time() - start
    result = outcome["result"]
    record = {"top1": None if result is None else result["top1"], "seconds": seconds,
              "steps": int(outcome["learner"].step.numpy()),
              "batch": config.train.train_batch_size,
              "flags": [flagfile, *args]}
    record["images_per_second"] = record["steps"] * record["batch"] / seconds
    with open(done, "w") as f:
        json.dump(record, f, indent=2)
    return record


def run_seed(workdir, pretrain_dir, seed, quick):
    seed_dir = os.path.join(workdir, f"seed{seed}")
    seeds = [f"--seed={seed}", f"--data_seed={seed}"]
    teacher_dir = os.path.join(seed_dir, "teacher_finetune_10pct")
    teacher = stage("mnist5k_finetune_10pct.cfg", teacher_dir,
                    [f"--checkpoint={pretrain_dir}", *seeds], quick)
    student = stage("mnist5k_distill.cfg", os.path.join(seed_dir, "student_distilled"),
                    [f"--teacher={teacher_dir}", *seeds], quick)
    baseline = stage("mnist5k_distill.cfg", os.path.join(seed_dir, "student_labels_only"),
                     ["--train_mode=finetune", "--from_scratch", "--label_fraction=0.1",
                      *seeds], quick)
    return {"seed": seed, "teacher": teacher, "student_distilled": student,
            "student_labels_only": baseline}


def summarise(per_seed):
    table = {}
    for key in ("teacher", "student_distilled", "student_labels_only"):
        values = np.array([s[key]["top1"] for s in per_seed])
        table[key] = {"mean": float(values.mean()), "std": float(values.std()),
                      "values": values.tolist()}
    gap = [s["student_distilled"]["top1"] - s["teacher"]["top1"] for s in per_seed]
    gain = [s["student_distilled"]["top1"] - s["student_labels_only"]["top1"]
            for s in per_seed]
    table["student_minus_teacher"] = {"mean": float(np.mean(gap)), "values": gap}
    table["student_minus_labels_only"] = {"mean": float(np.mean(gain)), "values": gain}
    table["target_within_1pt_of_teacher"] = bool(np.mean(gap) >= -0.01)
    table["target_beats_labels_only"] = bool(np.mean(gain) > 0)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench_distill"))
    parser.add_argument("--pretrain_dir", default=None,
                        help="an existing mnist5k pretraining run to reuse")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quick", action="store_true",
                        help="a few steps per stage: checks the script, not the numbers")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    absl_logging.set_verbosity(absl_logging.WARNING)
    start = time.time()
    if args.pretrain_dir:  # trained elsewhere with flags/mnist5k_pretrain.cfg
        pretrain_dir = args.pretrain_dir
        pretrain = {"reused": pretrain_dir}
    else:
        pretrain_dir = os.path.join(args.workdir, "pretrain")
        pretrain = stage("mnist5k_pretrain.cfg", pretrain_dir,
                         ["--export_at_end=false"], args.quick)
    per_seed = [run_seed(args.workdir, pretrain_dir, seed, args.quick)
                for seed in args.seeds]
    report = {
        "benchmark": "distill_mnist5k", "quick": args.quick,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count()},
        "pretrain": pretrain, "per_seed": per_seed, "summary": summarise(per_seed),
        "total_seconds": time.time() - start,
    }
    print(json.dumps(report, indent=2))
    with open(os.path.join(args.workdir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
