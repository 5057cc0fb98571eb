"""The semi-supervised table's report: each cell's spread and interval over
pretrainings x label subsets (intervals.describe), paired differences on the
same subsets, the targets, a markdown table and the plot."""
import numpy as np

from intervals import describe

# (name, method, minus method, fractions): differences cell by cell, on the
# same pretraining and label subset (a baseline, which has no pretraining,
# is subtracted from every pretraining's cell of its subset).
PAIRS = [
    ("fine-tuned minus linear eval", "simclrv2_finetune", "simclrv2_linear_eval",
     ("1pct", "10pct")),
    ("distilled student minus its fine-tuned teacher", "simclrv2_distill",
     "simclrv2_finetune", ("1pct", "10pct")),
    ("fine-tuned minus the same backbone from scratch", "simclrv2_finetune", "scratch",
     ("1pct", "10pct")),
]
ROWS = [("logistic_regression_pixels", "logistic regression, raw pixels"),
        ("scratch", "same backbone from scratch"),
        ("simclrv2_linear_eval", "SimCLRv2 linear eval (frozen)"),
        ("simclrv2_finetune", "SimCLRv2 fine-tuned from head layer 1"),
        ("simclrv2_distill", "SimCLRv2 distilled (1/8-width student)")]
FRACTIONS = ("1pct", "10pct", "100pct")


def grid(records):
    """Top-1 (%) as a pretraining x subset array (one row when the method
    has no pretraining); every pair must be present exactly once."""
    rows = sorted({r["pretraining"] for r in records}, key=lambda p: (p is not None, p))
    cols = sorted({r["subset"] for r in records})
    table = np.full((len(rows), len(cols)), np.nan)
    for r in records:
        i, j = rows.index(r["pretraining"]), cols.index(r["subset"])
        if not np.isnan(table[i, j]):
            raise ValueError(f"two records for pretraining {r['pretraining']}, "
                             f"subset {r['subset']}")
        table[i, j] = 100 * r["top1"]
    if np.isnan(table).any():
        raise ValueError("a pretraining x subset cell has no record")
    return table


def summarise(results):
    return {method: {fraction: describe(grid(records))
                     for fraction, records in by_fraction.items()}
            for method, by_fraction in results.items()}


def paired(results):
    """Each PAIRS difference per fraction, described like a cell."""
    out = {}
    for name, method, minus, fractions in PAIRS:
        for fraction in fractions:
            if fraction not in results.get(method, {}) or \
                    fraction not in results.get(minus, {}):
                continue
            a, b = grid(results[method][fraction]), grid(results[minus][fraction])
            if a.shape[1] != b.shape[1]:
                raise ValueError(f"{name}: not the same label subsets")
            out.setdefault(name, {})[fraction] = describe(a - b)
    return out


def targets(table, pretrain):
    get = lambda m, f: table.get(m, {}).get(f, {}).get("mean", float("nan"))  # noqa
    seconds = [p.get("seconds", float("nan")) for p in pretrain.values()] or [float("nan")]
    return {
        "finetune_1pct_ge_88": get("simclrv2_finetune", "1pct") >= 88,
        "finetune_1pct_minus_scratch_ge_15":
            get("simclrv2_finetune", "1pct") - get("scratch", "1pct") >= 15,
        "finetune_10pct_ge_97.5": get("simclrv2_finetune", "10pct") >= 97.5,
        "linear_eval_100pct_ge_98": get("simclrv2_linear_eval", "100pct") >= 98,
        "pretrain_le_30min": max(seconds) <= 1800,
    }


def cell_text(cell):
    if cell is None:
        return "–"
    if cell["interval"] is None:
        return f"{cell['mean']:.1f}"
    lo, hi = cell["interval"]
    return (f"{cell['mean']:.1f} [{lo:.1f}, {hi:.1f}] ± {cell['std']:.1f} "
            f"({cell['min']:.1f} to {cell['max']:.1f})")


def markdown(table, pairs):
    """The table and the paired differences as markdown: mean [95% interval]
    ± std (min to max)."""
    lines = ["| method | 1% (40) | 10% (400) | 100% (4000) |", "|---|---|---|---|"]
    for method, label in ROWS:
        if method in table:
            cells = [cell_text(table[method].get(f)) for f in FRACTIONS]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| paired difference (points) | 1% | 10% |", "|---|---|---|"]
    for name, by_fraction in pairs.items():
        lines.append(f"| {name} | " + " | ".join(
            cell_text(by_fraction.get(f)) for f in ("1pct", "10pct")) + " |")
    return "\n".join(lines)


def plot(table, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(6, 4))
    for method, by_fraction in table.items():
        keys = [f for f in FRACTIONS if f in by_fraction]
        x = [float(k[:-3]) for k in keys]
        means = np.array([by_fraction[k]["mean"] for k in keys])
        intervals = [by_fraction[k]["interval"] or [by_fraction[k]["mean"]] * 2
                     for k in keys]
        errors = np.abs(np.array(intervals).T - means)
        axis.errorbar(x, means, yerr=errors, marker="o", capsize=3, label=method)
    axis.set_xscale("log")
    axis.set_xticks([1, 10, 100], ["1%", "10%", "100%"])
    axis.set_xlabel("labelled training images (of 4000)")
    axis.set_ylabel("test top-1 (%), mean and 95% interval")
    axis.set_title("mnist5k: accuracy against label fraction")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
