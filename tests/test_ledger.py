import os

import pytest

from conclugen.io import atomic_path, remove_stale_temporaries
from conclugen.ledger import FailureLedger, TooManyFailures, merge_ledgers, read_ledger
from conclugen.shards import shard_of


def test_ledger_round_trip_and_merge(tmp_path):
    a = FailureLedger("probe")
    a.drop("s2", "empty file\t(0 bytes)\n")
    a.keep("s1", "silent audio")
    a.write(tmp_path / "a.tsv")
    b = FailureLedger("manifest")
    b.drop("s0", "unreadable label row")
    b.write(tmp_path / "b.tsv")
    rows = read_ledger(tmp_path / "a.tsv")
    assert rows == [
        ("s2", "probe", "empty file (0 bytes)", "dropped"),
        ("s1", "probe", "silent audio", "kept"),
    ]
    assert merge_ledgers([tmp_path / "a.tsv", tmp_path / "b.tsv"], tmp_path / "all.tsv") == 3
    assert [r[0] for r in read_ledger(tmp_path / "all.tsv")] == ["s0", "s1", "s2"]


def test_failure_fraction_policy():
    ledger = FailureLedger("faces")
    for i in range(3):
        ledger.drop(f"s{i}", "no face")
    ledger.keep("s9", "silent audio")  # kept samples do not count as failures
    ledger.check(total=10, max_fraction=0.3)
    with pytest.raises(TooManyFailures, match=r"3 of 10 samples failed .*no face"):
        ledger.check(total=10, max_fraction=0.25)


def test_everything_skipped_fails_loudly():
    ledger = FailureLedger("probe")
    ledger.drop("a", "x")
    with pytest.raises(TooManyFailures):
        ledger.check(total=1, max_fraction=0.99)


def test_shards_are_stable_and_balanced():
    ids = [f"id{i:05d}" for i in range(4000)]
    shards = [shard_of(s, 8) for s in ids]
    assert shards == [shard_of(s, 8) for s in ids]  # deterministic across calls
    assert shard_of("id00012_21Uxsk56VDQ_00001", 512) == 290  # and across processes/versions
    counts = [shards.count(k) for k in range(8)]
    assert min(counts) > 400 and max(counts) < 600
    with pytest.raises(ValueError):
        shard_of("x", 0)


def test_atomic_path_publishes_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole"


def test_atomic_path_replaces_a_folder(tmp_path):
    target = tmp_path / "raw"
    for content in ("old", "new"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "f").write_text(content)
    assert (target / "f").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_atomic_path_removes_temporaries_of_killed_writers(tmp_path):
    import subprocess
    import sys

    target = tmp_path / "store.zarr"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    stale = tmp_path / f".store.zarr.tmp-{dead}"
    (stale / "c").mkdir(parents=True)
    alive = tmp_path / f".store.zarr.tmp-{os.getppid()}"  # a live process's: left alone
    alive.mkdir()
    with atomic_path(target) as tmp:
        tmp.mkdir()
    assert target.is_dir() and not stale.exists() and alive.exists()


def test_stale_temporaries_of_a_name_with_glob_characters(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    stale = tmp_path / f".raw[1].tmp-{dead}"
    stale.write_text("half")
    other = tmp_path / f".raw1.tmp-{dead}"  # what an unescaped "raw[1]" would match
    other.write_text("another target's")
    assert remove_stale_temporaries(tmp_path / "raw[1]") == [stale]
    assert not stale.exists() and other.exists()


def test_is_fatal_tells_the_jobs_errors_from_a_samples():
    import torch

    from conclugen.ledger import is_fatal

    fatal = [
        MemoryError(),
        torch.OutOfMemoryError("boom"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:119] DefaultCPUAllocator: can't allocate memory"
        ),
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        FileNotFoundError("weights.pth"),
        KeyboardInterrupt(),
    ]
    assert all(is_fatal(e) for e in fatal)
    assert not any(is_fatal(e) for e in (ValueError("odd shape"), RuntimeError("size mismatch")))
