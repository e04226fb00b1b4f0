"""How long Snakemake takes to plan `all` at the real datasets' sizes (a dry run).

In a scratch working directory: the paper config (config/config.yaml, its sharding: VoxCeleb2
512 shards, CAER 8, MELD 8, CMU-MOSEI 16) with its input paths pointed at empty placeholder
files, the downloads marked done, and synthetic manifests with as many rows as the real
datasets (VoxCeleb2 dev 1,092,009 clips, CAER 13,175, MELD 13,708, CMU-MOSEI 23,453 segments).
Then `snakemake -n all`, timed, and the job count per rule. Usage::

    python benchmarks/dag_scale.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from conclugen.io import write_parquet
from conclugen.ledger import FailureLedger
from conclugen.shards import shard_ids

ROOT = Path(__file__).resolve().parents[1]
REAL_SIZES = {"voxceleb2": 1_092_009, "caer": 13_175, "meld": 13_708, "mosei": 23_453}


def synthetic_manifest(dataset: str, n: int, shards: int) -> pd.DataFrame:
    ids = pd.Series([f"{dataset}_{i:07d}" for i in range(n)])
    rng = np.random.default_rng(0)
    split = rng.choice(["train", "val", "test"], size=n, p=[0.8, 0.1, 0.1])
    return pd.DataFrame(
        {
            "sample_id": ids,
            "split": "train" if dataset == "voxceleb2" else split,
            "video": ids.radd("raw/") + ".mp4",
            "audio": ids.radd("raw/") + ".m4a",
            "start": 0.0,
            "end": 8.0,
            "text": "",
            "labels": None,
            "speaker": "",
            "shard": shard_ids(ids, shards),
        }
    )


def prepare(workdir: Path) -> Path:
    """The scratch working directory; returns its config file."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    # The paper config's data and weight paths need not exist: planning only warns about them.
    for name, n in REAL_SIZES.items():
        (workdir / "results" / name / "raw").mkdir(parents=True, exist_ok=True)
        frame = synthetic_manifest(name, n, config["datasets"][name]["shards"])
        meta = {"dataset": name, "task": "none", "classes": "[]"}
        write_parquet(frame, workdir / "results" / name / "manifest.parquet", metadata=meta)
        FailureLedger("manifest").write(workdir / "results" / name / "failures" / "manifest.tsv")
    cfg = workdir / "full-size.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return cfg


def plan(workdir: Path, cfg: Path) -> tuple[float, dict[str, int], str]:
    """(seconds, job count per rule, Snakemake's output) of a dry run of `all`."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(workdir), "-n", "--quiet", "rules",
           "all", "--configfile", str(cfg)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"the dry run failed:\n{out[-4000:]}")
    table = out[out.index("Job stats:") :]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    return seconds, counts, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dag-scale-"))
    t0 = time.perf_counter()
    cfg = prepare(workdir)
    print(f"manifests at full size written in {time.perf_counter() - t0:.1f} s ({workdir})")
    seconds, counts, _ = plan(workdir, cfg)
    print(f"dry run of `all`: {counts['total']} jobs planned in "
          f"{seconds:.1f} s")  # fmt: skip
    for rule, n in counts.items():
        print(f"  {rule:<20} {n:>6}")


if __name__ == "__main__":
    main()
