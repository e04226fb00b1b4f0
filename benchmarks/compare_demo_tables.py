"""Two runs' paper tables cell by cell: is a change within the seeds' noise?

For every cell of Tables 2-5 with a mean and a std over seeds in both runs (the results/tables
CSVs of two working directories, e.g. the demo before and after a change), prints how many cells
differ by at most 2 and 3 standard errors of the difference (sqrt((s_a^2 + s_b^2) / n) with n
seeds each), the mean and median absolute and the mean signed difference in points, and the
cells that differ most. Run it on two runs of the same code with different pretraining seeds for
the yardstick: the downstream seeds' std does not hold the pretraining's own variation. Usage::

    python benchmarks/compare_demo_tables.py BEFORE_DIR AFTER_DIR [--seeds 3]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

TABLES = ("table2", "table3", "table4", "table5")


def cells(before: Path, after: Path, seeds: int) -> pd.DataFrame:
    rows = []
    for table in TABLES:
        a, b = (pd.read_csv(d / "results" / "tables" / f"{table}.csv") for d in (before, after))
        key = "id" if "id" in a else "method"
        a, b = a.set_index(key), b.set_index(key)
        for col in (c for c in a.columns if f"{c}_std" in a.columns and c in b.columns):
            for row in a.index.intersection(b.index):
                ma, mb = a.at[row, col], b.at[row, col]
                sa, sb = a.at[row, f"{col}_std"], b.at[row, f"{col}_std"]
                if any(pd.isna(v) for v in (ma, mb, sa, sb)):
                    continue
                se = math.sqrt((sa**2 + sb**2) / seeds)
                z = abs(mb - ma) / se if se else (0.0 if mb == ma else math.inf)
                rows.append(dict(table=table, row=row, column=col, before=ma, after=mb,
                                 diff=mb - ma, se=se, z=z))  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (the demo's 3)")
    args = parser.parse_args()
    r = cells(args.before, args.after, args.seeds)
    print(f"{len(r)} cells; within 2 standard errors: {(r.z <= 2).sum()}, within 3: "
          f"{(r.z <= 3).sum()}")  # fmt: skip
    d = r["diff"]
    print(f"|difference| mean {d.abs().mean():.2f} points, median {d.abs().median():.2f}; "
          f"mean signed {d.mean():+.2f}")  # fmt: skip
    print(r.sort_values("z", ascending=False).head(8).to_string(index=False, float_format="%.2f"))


if __name__ == "__main__":
    main()
