"""The summary of bench/throughput.py: ratios paired by round."""

from __future__ import annotations

import argparse

import pytest

from bench import throughput


@pytest.fixture(scope="module")
def tp():
    return throughput


def config(tp, name: str, rates: list[float], cpu: list[float] = ()):
    cfg = tp.Config(name, None if name == "postfix" else ["x"])
    cfg.rates[2048] = rates
    if cpu:
        cfg.cpu[2048] = list(cpu)
    return cfg


def test_ratios_are_paired_by_round(tp) -> None:
    # Round 2 is slow for both, round 3 for "other" only.  Paired by round:
    # 0.90, 0.90, 0.50 (the ratio of the medians would be 225/400 = 0.56).
    noop = config(tp, "noop", [500, 250, 400])
    other = config(tp, "other", [450, 225, 200])
    assert tp.paired_ratio(other, noop, 2048) == "0.90"
    assert tp.paired_quartiles(other, noop, 2048) == "0.70-0.90"
    assert tp.paired_ratio(other, None, 2048) == "-"


def test_quartiles_show_the_spread_of_the_rounds(tp) -> None:
    noop = config(tp, "noop", [100.0] * 5)
    other = config(tp, "other", [80, 85, 90, 95, 100])
    assert tp.paired_quartiles(other, noop, 2048) == "0.85-0.95"
    one_round = config(tp, "once", [90])
    assert tp.paired_quartiles(one_round, config(tp, "noop", [100]), 2048) == "-"


def test_report_prints_one_aligned_row_per_configuration(tp, capsys) -> None:
    configs = [config(tp, "postfix", [800, 820, 780]),
               config(tp, "noop", [500, 520, 480], cpu=[600, 610, 620]),
               config(tp, "a-long-configuration-name", [450, 480, 430], cpu=[900, 950, 1000])]
    tp.report(configs, [2048], argparse.Namespace(messages=100, sessions=10, rounds=3, reuse=False))
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("config"))
    rows = [line for line in lines if line.split()[:1] in (["postfix"], ["noop"],
                                                              ["a-long-configuration-name"])]
    assert len(rows) == 3
    size_end = header.index("size") + len("size")
    assert all(row[size_end - 4:size_end] == "2048" for row in rows)   # columns line up
    long = rows[2].split()
    assert long[4] == "0.56"            # vs postfix: 450/800, 480/820, 430/780 → median
    assert long[5] == "0.90"            # vs noop: median of 0.90, 0.923, 0.896
    assert long[6] == "0.90-0.91"       # quartiles of those three
    assert long[7] == "950"             # milter CPU µs/msg, median
