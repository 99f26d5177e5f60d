"""The ctr suite's AutoInt-vs-MLP check, which its [[claims]] cannot state: a claim compares rows
of one task, and the two architectures are two tasks (`ctr`, `ctr-autoint`), because a suite
names each task once. This evaluates the check with the claims module's own rule on a finished
run: `python scripts/ctr_autoint_check.py reports/<run-id>`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

from lowdim_bench import claims, report

CLAIM = claims.Claim(
    name="autoint-beats-mlp",
    text="AutoInt's self-attentive interactions beat an embedding + MLP model on planted high-order interactions",
    task="ctr", kind="train",
    checks=[claims.Check(a="autoint@full", b="dense-train@full")],
)


def main(run_dir: str) -> int:
    summary = report.summary(report.load(run_dir))
    rows = summary.filter((pl.col("method") == "dense-train") & (pl.col("kind") == "train"))
    autoint = rows.filter(pl.col("task") == "ctr-autoint").with_columns(pl.lit("ctr").alias("task"),
                                                                       pl.lit("autoint").alias("method"))
    mlp = rows.filter(pl.col("task") == "ctr")
    (result,) = claims.evaluate(pl.concat([mlp, autoint], how="diagonal_relaxed"), [CLAIM])
    print(claims.render_markdown([result]), end="")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        print("usage: python scripts/ctr_autoint_check.py reports/<run-id>", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[1]))
