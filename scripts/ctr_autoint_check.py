"""The ctr suite's AutoInt-vs-MLP claim, evaluated on a finished run (also one made before claims
could name a row of another task): `python scripts/ctr_autoint_check.py reports/<run-id>`.

Same rule as the suite's `[[claims]]` (plugins/analyses/claims.py): a paired 95% interval of the
per-seed AUC difference over the seeds both rows share, held / did not hold / inconclusive.
"""
from __future__ import annotations

import sys
from pathlib import Path

from lowdim_bench import report
from lowdim_bench_builtin.analyses import claims

CLAIM = claims.Claim(
    name="autoint-beats-mlp",
    text="AutoInt's self-attentive interactions beat an embedding + MLP model on planted high-order interactions",
    task="ctr", kind="train",
    checks=[claims.Check(a="ctr-autoint/dense-train", b="dense-train")],
)


def main(run_dir: str) -> int:
    records = report.load(run_dir)
    (result,) = claims.evaluate(report.summary(records), [CLAIM], records)
    print(claims.render_markdown([result]), end="")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        print("usage: python scripts/ctr_autoint_check.py reports/<run-id>", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[1]))
