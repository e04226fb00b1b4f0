"""Atomic outputs: a killed job never leaves a file or folder that looks finished.

Everything a stage writes goes to a hidden temporary sibling first and is renamed onto the final
name only when the writer succeeded; a rename within one file system is atomic.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def temporary_sibling(path: str | os.PathLike) -> Path:
    """The hidden temporary name used while ``path`` is being written (one per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a process of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` left by killed writers (their process is gone) and
    return them: a killed job's half-written store can be large, and the rerun replaces it."""
    path = Path(path)
    stale = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _remove(tmp)
            stale.append(tmp)
    return stale


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write a file or a folder into; publish it as ``path`` on success.

    On an exception the temporary is removed and ``path`` is left untouched. An existing ``path``
    is replaced only after the new content is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    _remove(tmp)
    remove_stale_temporaries(path)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            # os.replace cannot overwrite a non-empty folder: move the old one aside first.
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_parquet(frame, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write a pandas DataFrame to parquet atomically, with optional key/value schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The key/value schema metadata written by :func:`write_parquet` (pandas' own key excluded)."""
    import pyarrow.parquet as pq

    raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items() if k != b"pandas"}
