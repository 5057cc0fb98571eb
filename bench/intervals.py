"""Intervals for a benchmark cell measured over pretrainings x label subsets.

A cell of the semi-supervised table is a P x S grid of accuracies: P
pretraining seeds crossed with S label subsets (the fine-tuning seed is the
subset's seed). Both are random draws a reader's own run would redraw, so the
interval treats them as random effects of a two-way crossed design without
replication (one value per cell):

    y[p, s] = mu + a_p + b_s + e_ps,   Var a = s2_p, Var b = s2_s, Var e = s2_e.

From the mean squares MS_p (df P-1), MS_s (df S-1) and MS_e (df (P-1)(S-1)),
the mean's variance s2_p/P + s2_s/S + s2_e/(PS) is estimated without bias by
(MS_p + MS_s - MS_e) / (PS), with Satterthwaite's degrees of freedom, and the
95% interval is mean +- t(0.975, df) x its square root. When that estimate
falls below MS_e / (PS) (neither factor measurably adds spread), MS_e / (PS)
with (P-1)(S-1) degrees of freedom is used instead. With one pretraining
(P = 1) or one subset (S = 1) it is the ordinary one-sample t interval.

Written here rather than taken from a library: scipy and statsmodels give the
t quantile and one-way intervals, not this crossed random-effects one.
"""
import numpy as np
from scipy import stats


def mean_squares(table):
    """(MS_p, MS_s, MS_e) of a P x S table with P, S >= 2."""
    table = np.asarray(table, dtype=np.float64)
    p, s = table.shape
    grand = table.mean()
    rows = table.mean(axis=1) - grand
    cols = table.mean(axis=0) - grand
    residual = table - grand - rows[:, None] - cols[None, :]
    return (s * np.sum(rows ** 2) / (p - 1), p * np.sum(cols ** 2) / (s - 1),
            np.sum(residual ** 2) / ((p - 1) * (s - 1)))


def variance_components(table):
    """{pretraining, subset, residual}: each source's estimated variance
    (negative estimates set to 0) and its share of their sum."""
    table = np.asarray(table, dtype=np.float64)
    p, s = table.shape
    if p < 2 or s < 2:
        varied = "pretraining" if s == 1 else "subset"
        variance = float(np.var(table, ddof=1)) if table.size > 1 else 0.0
        return {varied: {"variance": variance, "share": 1.0}}
    ms_p, ms_s, ms_e = mean_squares(table)
    parts = {"pretraining": max(0.0, (ms_p - ms_e) / s),
             "subset": max(0.0, (ms_s - ms_e) / p), "residual": ms_e}
    total = sum(parts.values()) or 1.0
    return {name: {"variance": float(v), "share": float(v / total)}
            for name, v in parts.items()}


def _standard_error(table):
    """(standard error of the mean, degrees of freedom)."""
    p, s = table.shape
    if p == 1 or s == 1:
        n = table.size
        return float(np.sqrt(np.var(table, ddof=1) / n)), n - 1
    ms_p, ms_s, ms_e = mean_squares(table)
    combined = ms_p + ms_s - ms_e
    if combined <= ms_e:
        return float(np.sqrt(ms_e / (p * s))), (p - 1) * (s - 1)
    df = combined ** 2 / (ms_p ** 2 / (p - 1) + ms_s ** 2 / (s - 1)
                          + ms_e ** 2 / ((p - 1) * (s - 1)))
    return float(np.sqrt(combined / (p * s))), float(df)


def describe(table, level=0.95):
    """Mean, sample std, min, max, the `level` interval of the mean (with its
    standard error and degrees of freedom) and the variance components of a
    P x S table (a 1-D sequence is one pretraining's S subsets)."""
    table = np.asarray(table, dtype=np.float64)
    if table.ndim == 1:
        table = table[None, :]
    out = {"mean": float(table.mean()), "n": int(table.size),
           "pretrainings": int(table.shape[0]), "subsets": int(table.shape[1]),
           "std": float(table.std(ddof=1)) if table.size > 1 else 0.0,
           "min": float(table.min()), "max": float(table.max()),
           "values": table.round(2).tolist()}
    if table.size < 2:
        return {**out, "interval": None, "se": None, "df": None, "components": None}
    se, df = _standard_error(table)
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return {**out, "interval": [out["mean"] - half, out["mean"] + half], "se": se,
            "df": df, "components": variance_components(table)}
