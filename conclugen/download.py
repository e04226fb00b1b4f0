"""Stage "download": fetch or pick up a dataset's archives and publish the extracted raw folder.

A dataset's ``source`` config lists its archives in order::

    source:
      archives:
        - url: https://host/MELD.Raw.tar.gz   # public archive: resumable HTTP(S) or file://
          size: 10878146150                   # optional, bytes
          sha256: null                        # optional
        - path: /data/vox2/vox2_dev_mp4_parta?   # user-supplied file, or a glob of byte-split parts
          name: vox2_dev_mp4.zip                 # needed for a glob of parts
        - path: /data/CAER                    # user-supplied folder already extracted: linked as is
        - url: http://host/CMU_MOSEI_Labels.csd
          extract: false                      # plain file, put into the raw folder as is
      nested: ["MELD.Raw/*.tar.gz"]           # archives inside the tree, extracted in place
      require: ["MELD.Raw/dev_sent_emo.csv"]  # globs that must match after extraction

Downloads are cached in ``work_dir`` (``results/{dataset}/download/``) so that a failed
extraction does not download again; once ``raw/`` exists the user may delete them. User-supplied
files are verified and extracted where they are: byte-split parts are read in place as one archive
(:class:`JoinedParts`), so no concatenated copy is written, and every run extracts from the parts
as they are then.
An interrupted download leaves ``<name>.part`` there, and the next run resumes from its length.
Every user-facing failure raises :class:`DownloadError`.
"""

from __future__ import annotations

import bisect
import errno
import glob
import gzip
import hashlib
import io
import logging
import os
import tarfile
import time
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import BinaryIO
from urllib.error import HTTPError
from urllib.parse import unquote, urlparse
from urllib.request import Request, url2pathname, urlopen

from conclugen.io import atomic_path, remove_stale_temporaries
from conclugen.progress import progress

log = logging.getLogger("conclugen")

CHUNK = 1 << 20
LOG_EVERY_S = 10.0
TRANSIENT_HTTP = (408, 429)  # client-side codes worth retrying; 5xx are always retried
# What reading a truncated or corrupt archive raises (other OSErrors, e.g. disk full, propagate).
CORRUPT = (
    zipfile.BadZipFile,
    tarfile.ReadError,
    tarfile.CompressionError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
)


class DownloadError(RuntimeError):
    """A download, an archive or a source folder is unusable; the message says what to do."""


def fetch(url: str, dest, size=None, sha256=None, retries=3, timeout=60) -> Path:
    """Download ``url`` to ``dest`` resumably and verify it; return ``dest``.

    Bytes go to ``dest + ".part"``; a retry or a later call resumes from its length with an HTTP
    ``Range`` request (``file://`` URLs seek). ``dest`` appears only after the size and sha256
    checks passed, so an existing ``dest`` is trusted (only its size is checked again). A dropped
    connection is retried ``retries`` times, then raises and keeps the partial for the next run;
    a sha256 mismatch deletes the partial, which is corrupt.
    """
    dest = Path(dest)
    if dest.exists():
        _check_size(dest.stat().st_size, size, str(dest))
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    done, expected, error = 0, size, None
    for attempt in range(retries + 1):
        before = part.stat().st_size if part.exists() else 0
        try:
            done, expected = _fetch_once(url, part, size, timeout)
        except HTTPError as e:
            if e.code < 500 and e.code not in TRANSIENT_HTTP:
                raise DownloadError(
                    f"HTTP {e.code} {e.reason} for {url}: the link may be dead; download the "
                    "file by hand and use a `path` entry in the dataset's source instead"
                ) from e
            error = e
        except (OSError, EOFError) as e:  # URLError, reset, timeout, http.client.IncompleteRead
            error = e
        else:
            if expected is None or done >= expected:
                break
            error = "connection closed early"
        done = part.stat().st_size if part.exists() else 0
        log.warning(
            "%s: attempt %d/%d stopped at %d bytes (%s)", url, attempt + 1, retries + 1, done, error
        )
        if attempt < retries and done == before:
            time.sleep(min(2**attempt, 30))  # no progress at all: back off before the next try
    else:
        raise DownloadError(
            f"download of {url} stopped at {done} of {expected or 'unknown'} bytes after "
            f"{retries + 1} attempts ({error}); the partial file {part} is kept: rerun to resume"
        )
    try:
        _verify([part], size, sha256, url)
    except DownloadError:
        part.unlink()
        raise
    os.replace(part, dest)
    return dest


def _fetch_once(url: str, part: Path, size, timeout) -> tuple[int, int | None]:
    """One request from the partial's length on; return (bytes now in ``part``, total or None)."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset == size:
        return offset, size  # complete already (e.g. killed while checking the sha256)
    stream, start, total = _open(url, offset, timeout)
    expected = size if size is not None else total
    if size is not None and total is not None and total != size:
        stream.close()
        raise DownloadError(
            f"{url} has {total} bytes but the source config says size {size}: the file changed "
            "upstream or the configured size is wrong"
        )
    if start < offset:
        log.warning("%s: server restarted from byte %d instead of %d", url, start, offset)
    part.touch()
    with stream, open(part, "r+b") as out:
        out.truncate(start)
        out.seek(start)
        done = _copy(stream, out, start, expected, part.name)
    return done, expected


def _open(url: str, offset: int, timeout) -> tuple[BinaryIO, int, int | None]:
    """Open ``url`` at byte ``offset``: (stream, the byte it really starts at, total size or None).

    A server that ignores ``Range`` starts at 0; a 416 answer means nothing is left to send.
    """
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = url2pathname(parsed.path)
        if not os.path.isfile(path):
            raise DownloadError(f"{url}: no such file")
        total = os.path.getsize(path)
        start = offset if offset <= total else 0
        stream = open(path, "rb")  # closed by the caller
        stream.seek(start)
        return stream, start, total
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as e:
        if e.code != 416:
            raise
        total = _range_total(e.headers.get("Content-Range"))
        e.close()
        if total is not None and total != offset:
            return _open(url, 0, timeout)  # the partial is longer than the file: start over
        return io.BytesIO(), offset, total
    if response.status == 206:
        return response, offset, _range_total(response.headers.get("Content-Range"))
    length = response.headers.get("Content-Length")
    return response, 0, int(length) if length else None


def _range_total(content_range: str | None) -> int | None:
    """The total size in a ``Content-Range`` header (``bytes 0-9/10`` or ``bytes */10``)."""
    total = (content_range or "").rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def _copy(stream, out, done: int, total: int | None, label: str) -> int:
    """Copy ``stream`` into ``out`` with a progress line every ~10 s; return the new ``done``."""
    first, start = done, time.monotonic()
    last = start
    while chunk := stream.read(CHUNK):
        out.write(chunk)
        done += len(chunk)
        now = time.monotonic()
        if now - last >= LOG_EVERY_S:
            last = now
            rate = (done - first) / max(now - start, 1e-9)
            eta = f", ETA {(total - done) / rate:.0f} s" if total and rate > 0 else ""
            of = f" of {total / 1e9:.2f}" if total else ""
            log.info("%s: %.2f%s GB (%.1f MB/s%s)", label, done / 1e9, of, rate / 1e6, eta)
    return done


def _check_size(actual: int, size, what: str) -> None:
    """Raise if ``actual`` bytes are not the expected ``size`` (None: unknown, not checked)."""
    if size is not None and actual != size:
        state = "truncated" if actual < size else "too large"
        raise DownloadError(
            f"{what} is {state}: {actual} bytes, expected {size}; the file is incomplete or a "
            "different version, or `size` in the source config is wrong"
        )


def _verify(parts: list[Path], size, sha256, what: str) -> None:
    """Check the total size, then the sha256 (both optional) of ``parts`` read as one file."""
    with JoinedParts(parts) as joined:
        _check_size(joined.size, size, what)
        if not sha256:
            return
        digest = hashlib.sha256()
        label = parts[0].name if len(parts) == 1 else f"{parts[0].name}..{parts[-1].name}"
        _copy(joined, SimpleNamespace(write=digest.update), 0, joined.size, f"sha256 of {label}")
    actual = digest.hexdigest()
    if actual != sha256.lower():
        raise DownloadError(
            f"sha256 mismatch for {what}: expected {sha256.lower()}, got {actual}; the file "
            "is corrupt or a different version"
        )


class JoinedParts(io.RawIOBase):
    """The ordered byte-split parts of one archive, read in place as one read-only seekable file.

    zipfile and tarfile open it (wrapped in ``io.BufferedReader`` for fewer system calls), so
    split archives are extracted without a concatenated copy. The parts' sizes are taken once,
    here; a part that is shorter when read raises :class:`DownloadError`.
    """

    def __init__(self, parts):
        super().__init__()
        self.parts = [Path(p) for p in parts]
        self.starts = [0]  # starts[i]: offset of part i in the whole; starts[-1]: the total size
        for p in self.parts:
            self.starts.append(self.starts[-1] + p.stat().st_size)
        self.size = self.starts[-1]
        self._pos, self._index, self._file = 0, None, None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, f"negative seek position {base + offset}")
        self._pos = base + offset  # past the end is allowed, as for a file: reads return b""
        return self._pos

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` across part boundaries; fewer bytes only at the end of the whole."""
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self.size:
            i = bisect.bisect_right(self.starts, self._pos) - 1  # last part starting at or before
            if i != self._index:
                self._close_part()
                self._file, self._index = open(self.parts[i], "rb", buffering=0), i
            self._file.seek(self._pos - self.starts[i])
            want = min(len(view) - done, self.starts[i + 1] - self._pos)
            n = self._file.readinto(view[done : done + want])
            if not n:
                raise DownloadError(
                    f"{self.parts[i]} is shorter than when it was listed "
                    f"({self.starts[i + 1] - self.starts[i]} bytes): was it replaced meanwhile?"
                )
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        self._close_part()
        super().close()

    def _close_part(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file, self._index = None, None


def archive_parts(path_or_glob: str, size=None, sha256=None) -> list[Path]:
    """The files of a user-supplied archive, verified in place: one file or its parts in order.

    A glob matching several files is taken as byte-split parts in sorted order; their total size
    and the sha256 streamed over them are checked. Nothing is copied.
    """
    pattern = os.path.expanduser(str(path_or_glob))
    parts = [pattern] if os.path.exists(pattern) else sorted(glob.glob(pattern))
    if not parts:
        raise DownloadError(
            f"no file matches {path_or_glob}: download the archive by hand (see the dataset's "
            "notes) and fix `path` in its source config"
        )
    if not all(os.path.isfile(p) for p in parts):
        raise DownloadError(f"{path_or_glob} must match files only, got {parts}")
    what = parts[0] if len(parts) == 1 else f"the {len(parts)} parts matching {path_or_glob}"
    parts = [Path(p) for p in parts]
    _verify(parts, size, sha256, what)
    return parts


def archive_format(name: str) -> str | None:
    """``"zip"``, ``"tar"`` (.tar, .tar.gz, .tgz) or None, from a file name."""
    name = name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    return None


def extract(archive, dest_dir, name: str | None = None) -> None:
    """Extract a zip or tar(.gz) ``archive`` into the existing folder ``dest_dir``.

    ``archive`` is a file or the list of its byte-split parts in order, read in place through
    :class:`JoinedParts`. The format comes from ``name`` (default: the file name). Members that
    would land outside ``dest_dir`` (absolute paths, ``..``, links pointing out) are refused; a
    truncated or corrupt archive raises :class:`DownloadError` naming it.
    """
    parts = [Path(archive)] if isinstance(archive, str | os.PathLike) else list(map(Path, archive))
    dest_dir = Path(dest_dir)
    label = str(parts[0]) if len(parts) == 1 else f"{name} (parts {parts[0]} .. {parts[-1].name})"
    kind = archive_format(name or parts[0].name)
    if kind is None:
        raise DownloadError(f"cannot extract {label}: not a .zip, .tar, .tar.gz or .tgz file")
    log.info("extracting %s into %s", label, dest_dir)
    try:
        with io.BufferedReader(JoinedParts(parts), CHUNK) as f:
            if kind == "zip":
                _unzip(f, label, dest_dir)
            else:
                with tarfile.open(fileobj=f, mode="r:*") as tf:
                    tf.extractall(dest_dir, filter=_safe_tar_member)
    except tarfile.FilterError as e:
        raise DownloadError(f"{label}: refusing unsafe member ({e})") from e
    except CORRUPT as e:
        raise DownloadError(
            f"{label} is truncated or corrupt ({type(e).__name__}: {e}); replace it with a "
            "complete copy (a file in the download cache can be deleted: the next run fetches "
            "it again)"
        ) from e


def _unzip(file: BinaryIO, label: str, dest_dir: Path) -> None:
    """Extract a zip after checking that no member name leads outside ``dest_dir``."""
    root = os.path.abspath(dest_dir)
    with zipfile.ZipFile(file) as zf:
        members = zf.infolist()
        for m in members:  # a lexical check is enough: zipfile writes no symlinks
            target = os.path.normpath(os.path.join(root, m.filename))
            if os.path.commonpath([root, target]) != root:
                raise DownloadError(
                    f"{label}: refusing member {m.filename!r} that would be written outside "
                    f"{dest_dir}"
                )
        for m in progress(members, len(members), f"unzip {label}"):
            zf.extract(m, dest_dir)


def _safe_tar_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's "data" filter, but refusing absolute names instead of stripping their slash."""
    if member.name.startswith("/"):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, dest)


def prepare_source(source: dict, raw_dir, work_dir) -> Path:
    """Run the whole stage for one dataset: fetch, verify, extract and publish ``raw_dir``.

    Archives are fetched (``url``) into ``work_dir`` or verified where they are (``path``: a file
    or its byte-split parts, never copied), then in order extracted (or, with ``extract: false``,
    put as is) into a temporary folder; ``nested`` archives are extracted in place and removed,
    ``require`` globs are checked, and the folder is published as ``raw_dir`` atomically. A single
    folder entry is checked against ``require`` and published as a symlink. Rerunning is safe:
    downloads are reused, everything is extracted again from the archives as they are now (a
    replaced part included) and ``raw_dir`` is replaced whole.
    """
    raw_dir, work_dir = Path(raw_dir), Path(work_dir)
    for tmp in remove_stale_temporaries(raw_dir):  # before fetching: they can be huge
        log.info("removed %s left by a killed run", tmp)
    entries = source["archives"]
    folders = [e for e in entries if "path" in e and os.path.isdir(os.path.expanduser(e["path"]))]
    if folders:
        if len(entries) > 1:
            raise DownloadError(
                "a source folder (`path` to a directory) must be the only entry "
                f"of `archives`; got {len(entries)} entries"
            )
        folder = Path(os.path.expanduser(folders[0]["path"])).resolve()
        _check_require(folder, source.get("require", []))
        with atomic_path(raw_dir) as tmp:
            tmp.symlink_to(folder, target_is_directory=True)
        log.info("linked %s -> %s", raw_dir, folder)
        return raw_dir
    files = [_obtain(entry, work_dir) for entry in entries]
    with atomic_path(raw_dir) as tmp:
        tmp.mkdir()
        for parts, name, unpack in files:
            if unpack:
                extract(parts, tmp, name)
            else:
                _put_as_is(parts, tmp / name)
        for pattern in source.get("nested", []):
            inner = sorted(tmp.glob(pattern))
            if not inner:
                raise DownloadError(
                    f"nested archive glob {pattern!r} matched nothing in the "
                    f"extracted tree (top level: {_listing(tmp)})"
                )
            for archive in inner:
                extract(archive, archive.parent)
                archive.unlink()
        _check_require(tmp, source.get("require", []))
        if raw_dir.is_symlink():
            raw_dir.unlink()  # was a folder source; a folder cannot replace a link atomically
    log.info("published %s", raw_dir)
    return raw_dir


def _obtain(entry: dict, work_dir: Path) -> tuple[list[Path], str, bool]:
    """Fetch or locate one archive entry: (its file or parts in order, its name, extract it?)."""
    size, sha256 = entry.get("size"), entry.get("sha256")
    if "url" in entry:
        name = entry.get("name") or unquote(Path(urlparse(entry["url"]).path).name)
        parts = [fetch(entry["url"], work_dir / name, size, sha256)]
    else:
        if glob.has_magic(entry["path"]) and not entry.get("name"):
            raise DownloadError(
                f"source entry {entry['path']!r} is a glob of parts: give the "
                "archive they form a `name` (e.g. vox2_dev_mp4.zip)"
            )
        name = entry.get("name") or Path(entry["path"]).name
        parts = archive_parts(entry["path"], size, sha256)
    unpack = entry.get("extract", archive_format(name) is not None)
    if unpack and archive_format(name) is None:
        raise DownloadError(
            f"cannot extract {name}: not a .zip, .tar, .tar.gz or .tgz name; "
            "set `extract: false` to keep it as a plain file"
        )
    return parts, name, unpack


def _check_require(root: Path, patterns: list[str]) -> None:
    """Raise naming every glob of ``patterns`` that matches nothing under ``root``."""
    missing = [p for p in patterns if next(iter(root.glob(p)), None) is None]
    if missing:
        raise DownloadError(
            f"the dataset is incomplete or laid out differently than expected: nothing matches "
            f"{missing} (top level: {_listing(root)}); check the archives or the source's `require`"
        )


def _listing(root: Path, limit: int = 10) -> list[str]:
    """The first ``limit`` names at the top of ``root``, to show in error messages."""
    return sorted(p.name for p in root.iterdir())[:limit]


def _put_as_is(parts: list[Path], dst: Path) -> None:
    """Hard-link a single file to ``dst`` (no extra disk space); else copy or concatenate it."""
    if len(parts) == 1:
        try:
            os.link(parts[0], dst)
            return
        except OSError:  # another file system
            pass
    with JoinedParts(parts) as src, open(dst, "wb") as out:
        _copy(src, out, 0, src.size, dst.name)
