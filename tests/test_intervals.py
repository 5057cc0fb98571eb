"""bench/intervals.py against hand-computed cases (the semi-supervised
table's intervals and variance shares)."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "bench"))
from intervals import describe, mean_squares, variance_components  # noqa: E402


def test_crossed_table_by_hand():
    # Grand mean 89; row means 89 1/3, 88 2/3; column means 89, 85.5, 92.5.
    # SS_p = 3 (1/9 + 1/9) = 2/3 (df 1); SS_s = 2 (0 + 12.25 + 12.25) = 49 (df 2);
    # SS_total = 1 + 9 + 9 + 1 + 16 + 16 = 52, so SS_e = 7/3 (df 2).
    table = [[90, 86, 92], [88, 85, 93]]
    ms_p, ms_s, ms_e = mean_squares(table)
    assert (ms_p, ms_s, ms_e) == pytest.approx((2 / 3, 24.5, 7 / 6))
    # Var(mean) = (MS_p + MS_s - MS_e) / 6 = 24 / 6 = 4, so SE = 2; Satterthwaite:
    # df = 24^2 / ((2/3)^2 / 1 + 24.5^2 / 2 + (7/6)^2 / 2) = 576 / 301.25.
    cell = describe(table)
    assert cell["mean"] == pytest.approx(89) and cell["se"] == pytest.approx(2)
    assert cell["df"] == pytest.approx(576 / 301.25)
    assert cell["std"] == pytest.approx(np.sqrt(52 / 5))
    assert (cell["min"], cell["max"], cell["n"]) == (85, 93, 6)
    # t(0.975, 1.912) lies between t(0.975, 2) = 4.303 and t(0.975, 1) = 12.706.
    half = cell["interval"][1] - 89
    assert 2 * 4.303 < half < 2 * 12.706
    assert cell["interval"][0] == pytest.approx(89 - half)
    # sigma2_p = (2/3 - 7/6) / 3 < 0 -> 0; sigma2_s = (24.5 - 7/6) / 2 = 35/3;
    # sigma2_e = 7/6: shares 0, 10/11, 1/11.
    shares = {k: v["share"] for k, v in variance_components(table).items()}
    assert shares == pytest.approx({"pretraining": 0, "subset": 10 / 11, "residual": 1 / 11})


def test_no_main_effects_falls_back_to_the_residual():
    # Row and column means all 2: MS_p = MS_s = 0, MS_e = 4 / 2 = 2. The
    # combined estimate (0 + 0 - 2) is below MS_e, so Var(mean) = 2 / 6 with
    # (2 - 1)(3 - 1) = 2 df: half-width t(0.975, 2) = 4.303 x sqrt(1/3).
    cell = describe([[1, 3, 2], [3, 1, 2]])
    assert cell["df"] == 2 and cell["se"] == pytest.approx(np.sqrt(1 / 3))
    assert cell["interval"] == pytest.approx([2 - 4.3027 * np.sqrt(1 / 3),
                                              2 + 4.3027 * np.sqrt(1 / 3)], abs=1e-3)


def test_one_pretraining_is_the_one_sample_t_interval():
    # Mean 84, s^2 = (16 + 0 + 4 + 4 + 16) / 4 = 10, SE = sqrt(10 / 5) = sqrt 2,
    # 4 df: t(0.975, 4) = 2.776.
    cell = describe([80, 84, 82, 86, 88])
    assert cell["df"] == 4 and cell["se"] == pytest.approx(np.sqrt(2))
    assert cell["interval"] == pytest.approx([84 - 2.7764 * np.sqrt(2),
                                              84 + 2.7764 * np.sqrt(2)], abs=1e-3)
    assert variance_components(np.array([[80, 84, 82, 86, 88]])) == {
        "subset": {"variance": pytest.approx(10), "share": 1.0}}
    single = describe([91.0])
    assert single["interval"] is None and single["mean"] == 91


def test_the_published_table_is_the_committed_reports():
    """README and RESULTS show the table semisup_report renders from the
    committed JSON's records (summaries recomputed, not copied)."""
    import json
    from semisup_report import markdown, paired, summarise
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    report = json.load(open(os.path.join(root, "bench", "results",
                                         "semisupervised_mnist5k.json")))
    summary = summarise(report["results"])
    table = markdown(summary, paired(report["results"]))
    assert table == report["markdown"]
    cell = summary["simclrv2_finetune"]["1pct"]
    assert cell["pretrainings"] >= 2 and cell["n"] >= 10
    for name in ("README.md", os.path.join("bench", "RESULTS.md")):
        text = open(os.path.join(root, name)).read()
        for line in table.splitlines():
            assert line in text, (name, line)
