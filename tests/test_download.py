"""Tests of conclugen.download against a local HTTP server on 127.0.0.1 and tiny archives."""

from __future__ import annotations

import glob
import hashlib
import io
import os
import random
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conclugen.download import (
    DownloadError,
    JoinedParts,
    archive_parts,
    extract,
    fetch,
    prepare_source,
)

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range`` unless ``server.ignore_range``; can drop early."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        server = self.server
        rng = self.headers.get("Range")
        server.requests.append((self.path, rng))
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and not server.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.drop_after is not None:  # first request only: send a prefix, then hang up
            body, server.drop_after = body[: server.drop_after], None
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A threaded HTTP server on 127.0.0.1 with a free port; ``server.url(path)`` builds URLs."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.requests, srv.ignore_range, srv.drop_after = {}, [], False, None
    srv.url = lambda path: f"http://127.0.0.1:{srv.server_address[1]}{path}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- fetch ---------------------------------------------------------------------------------------


def test_fetch_full_download_with_size_and_sha(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    dest = fetch(server.url("/a.bin"), tmp_path / "a.bin", len(PAYLOAD), sha(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "a.bin.part").exists()
    assert server.requests == [("/a.bin", None)]


def test_fetch_interrupted_then_resumed(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.drop_after = 3000
    dest, part = tmp_path / "a.bin", tmp_path / "a.bin.part"
    with pytest.raises(DownloadError, match="partial file .* is kept: rerun to resume"):
        fetch(server.url("/a.bin"), dest, len(PAYLOAD), sha(PAYLOAD), retries=0)
    assert part.stat().st_size == 3000 and not dest.exists()
    fetch(server.url("/a.bin"), dest, len(PAYLOAD), sha(PAYLOAD), retries=0)
    assert server.requests[1] == ("/a.bin", "bytes=3000-")
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_fetch_retry_resumes_within_one_call(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.drop_after = 5000  # size unknown: Content-Length tells the download is short
    dest = fetch(server.url("/a.bin"), tmp_path / "a.bin", retries=1)
    assert dest.read_bytes() == PAYLOAD
    assert [r[1] for r in server.requests] == [None, "bytes=5000-"]


def test_fetch_sha_mismatch_leaves_nothing(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    wrong = "0" * 64
    with pytest.raises(DownloadError) as err:
        fetch(server.url("/a.bin"), tmp_path / "a.bin", sha256=wrong)
    message = str(err.value)
    assert server.url("/a.bin") in message and wrong in message and sha(PAYLOAD) in message
    assert list(tmp_path.iterdir()) == []


def test_fetch_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.ignore_range = True
    (tmp_path / "a.bin.part").write_bytes(b"x" * 100)  # would corrupt the file if appended to
    dest = fetch(server.url("/a.bin"), tmp_path / "a.bin", len(PAYLOAD), sha(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/a.bin", "bytes=100-")]


def test_fetch_416_when_partial_is_already_complete(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD)
    dest = fetch(server.url("/a.bin"), tmp_path / "a.bin", sha256=sha(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD


def test_fetch_size_mismatch_with_server_and_404(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    with pytest.raises(DownloadError, match=f"has {len(PAYLOAD)} bytes but .* size 5"):
        fetch(server.url("/a.bin"), tmp_path / "a.bin", size=5)
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.url("/missing.bin"), tmp_path / "missing.bin")


def test_fetch_file_url_resumes(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    (tmp_path / "out.bin.part").write_bytes(PAYLOAD[:4000])
    dest = fetch(src.as_uri(), tmp_path / "out.bin", len(PAYLOAD), sha(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="no such file"):
        fetch((tmp_path / "nope.bin").as_uri(), tmp_path / "nope.bin")


# --- split archives ------------------------------------------------------------------------------


def write_parts(folder: Path, data: bytes, n: int = 3) -> str:
    """Split ``data`` into ``n`` parts vox_parta... (the last one shorter); return their glob."""
    folder.mkdir(exist_ok=True)
    step = -(-len(data) // n)
    for i, suffix in enumerate("abcdefgh"[:n]):
        (folder / f"vox_part{suffix}").write_bytes(data[i * step : (i + 1) * step])
    return str(folder / "vox_part?")


def test_joined_parts_read_and_seek_like_the_concatenation(tmp_path):
    sizes = [1, 4096, 0, 7, 30000, 3, 5000]  # unequal, one empty
    data = os.urandom(sum(sizes))
    paths, at = [], 0
    for i, n in enumerate(sizes):
        paths.append(tmp_path / f"p{i}")
        paths[-1].write_bytes(data[at : at + n])
        at += n
    rng = random.Random(0)
    with JoinedParts(paths) as joined, io.BytesIO(data) as whole:
        assert joined.size == len(data) and joined.seekable() and joined.readable()
        assert joined.read() == data  # read(-1) to the end
        for _ in range(300):
            offset, whence = rng.choice(
                [
                    (rng.randrange(len(data) + 50), 0),
                    (rng.randrange(-200, 200), 1),
                    (-rng.randrange(1, 9000), 2),
                ]
            )
            if whence == 1 and whole.tell() + offset < 0:
                offset = -whole.tell()
            assert joined.seek(offset, whence) == whole.seek(offset, whence)
            n = rng.choice([0, 1, 2, 100, 4097, 20000, 60000])
            assert joined.read(n) == whole.read(n)  # across boundaries, short only at the end
            assert joined.tell() == whole.tell()
        joined.seek(len(data) + 10)
        assert joined.read(5) == b"" and joined.tell() == len(data) + 10  # past the end
        with pytest.raises(OSError):
            joined.seek(-1)
        buffered = io.BufferedReader(JoinedParts(paths), 1000)
        buffered.seek(4090)
        assert buffered.read(20) == data[4090:4110] and buffered.read1(5) == data[4110:4115]
        buffered.close()
    assert joined.closed
    with pytest.raises(ValueError):
        joined.read(1)


def test_joined_parts_part_shrunk_after_listing(tmp_path):
    pattern = write_parts(tmp_path / "parts", PAYLOAD)
    joined = JoinedParts(sorted(glob.glob(pattern)))
    (tmp_path / "parts" / "vox_partb").write_bytes(b"short")
    with pytest.raises(DownloadError, match="vox_partb is shorter than when it was listed"):
        joined.read()


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_split_archive_extracts_like_the_whole(tmp_path, kind):
    members = {
        f"dev/mp4/id{i:05d}/clip/{j:05d}.mp4": os.urandom(700 * (i + j))
        for i in range(3)
        for j in range(4)
    }
    members["dev/readme.txt"] = b"small"
    whole = tmp_path / f"whole.{kind}"
    if kind == "zip":
        make_zip(whole, members)
    else:
        whole.write_bytes(tar_bytes(members))
    data = whole.read_bytes()
    cuts = [0, len(data) // 5, len(data) * 3 // 4, len(data)]  # three parts of unequal size
    parts = [tmp_path / f"vox_part{c}" for c in "abc"]
    for part, start, end in zip(parts, cuts, cuts[1:], strict=False):
        part.write_bytes(data[start:end])
    for source, out in ((whole, tmp_path / "from_whole"), (parts, tmp_path / "from_parts")):
        out.mkdir()
        extract(source, out, f"vox.{kind}")
    assert tree(tmp_path / "from_parts") == tree(tmp_path / "from_whole") == members


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_archive_parts_in_order_verified(tmp_path):
    pattern = write_parts(tmp_path / "parts", PAYLOAD)
    parts = archive_parts(pattern, len(PAYLOAD), sha(PAYLOAD))
    assert [p.name for p in parts] == ["vox_parta", "vox_partb", "vox_partc"]
    assert b"".join(p.read_bytes() for p in parts) == PAYLOAD
    with pytest.raises(DownloadError, match=f"3 parts matching .* too large: {len(PAYLOAD)} bytes"):
        archive_parts(pattern, len(PAYLOAD) - 1)


def test_archive_parts_wrong_sha_writes_nothing(tmp_path):
    pattern = write_parts(tmp_path / "parts", PAYLOAD)
    wrong = "f" * 64
    with pytest.raises(DownloadError) as err:
        archive_parts(pattern, sha256=wrong)
    assert wrong in str(err.value) and sha(PAYLOAD) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts"]


def test_archive_parts_single_file_in_place_and_truncated(tmp_path):
    user = tmp_path / "CAER.zip"
    user.write_bytes(PAYLOAD)
    assert archive_parts(str(user), len(PAYLOAD)) == [user]
    with pytest.raises(DownloadError, match=f"truncated: {len(PAYLOAD)} bytes, expected 20000"):
        archive_parts(str(user), 20000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CAER.zip"]


def test_archive_parts_missing_path(tmp_path):
    with pytest.raises(DownloadError, match="no file matches .*nothing_here"):
        archive_parts(str(tmp_path / "nothing_here*"))


# --- extract -------------------------------------------------------------------------------------


def test_extract_zip_and_tar_gz(tmp_path):
    members = {"top/a.txt": b"alpha", "top/sub/b.txt": b"beta"}
    zipped = make_zip(tmp_path / "a.zip", members)
    tarred = tmp_path / "a.tar.gz"
    tarred.write_bytes(tar_bytes(members))
    for archive in (zipped, tarred):
        out = tmp_path / f"out_{archive.name}"
        out.mkdir()
        extract(archive, out)
        assert (out / "top/a.txt").read_bytes() == b"alpha"
        assert (out / "top/sub/b.txt").read_bytes() == b"beta"


def test_extract_refuses_zip_slip(tmp_path):
    archive = make_zip(tmp_path / "evil.zip", {"ok.txt": b"ok", "../evil.txt": b"pwned"})
    (tmp_path / "out").mkdir()
    with pytest.raises(DownloadError, match="refusing member '../evil.txt'"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize(
    "name, linkname",
    [("/abs.txt", None), ("../up.txt", None), ("link", "../../outside"), ("abs", "/etc")],
)
def test_extract_refuses_unsafe_tar_members(tmp_path, name, linkname):
    info = tarfile.TarInfo(name)
    if linkname:
        info.type, info.linkname = tarfile.SYMTYPE, linkname
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.addfile(info, io.BytesIO(b""))
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(buf.getvalue())
    (tmp_path / "out").mkdir()
    with pytest.raises(DownloadError, match="refusing unsafe member"):
        extract(archive, tmp_path / "out")


def test_corrupt_archives(tmp_path):
    data = make_zip(tmp_path / "full.zip", {"a.txt": os.urandom(4000)}).read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) // 2])
    (tmp_path / "cut.tar.gz").write_bytes(tar_bytes({"a.txt": os.urandom(40000)})[:20000])
    (tmp_path / "out").mkdir()
    for name in ("cut.zip", "cut.tar.gz"):
        with pytest.raises(DownloadError, match=f"{name} is truncated or corrupt"):
            extract(tmp_path / name, tmp_path / "out")
    raw = tmp_path / "ds" / "raw"
    with pytest.raises(DownloadError, match="cut.zip is truncated or corrupt"):
        prepare_source(
            {"archives": [{"path": str(tmp_path / "cut.zip")}]}, raw, tmp_path / "ds" / "dl"
        )
    assert list(raw.parent.iterdir()) == []  # no raw/, no temporary folder


# --- prepare_source ------------------------------------------------------------------------------


def meld_source(server) -> dict:
    """A MELD look-alike served over HTTP, plus a plain label file that is not extracted."""
    train = tar_bytes({"train_splits/dia0_utt0.mp4": b"mp4", "train_sent_emo.csv": b"csv"})
    outer = tar_bytes({"MELD.Raw/train.tar.gz": train, "MELD.Raw/dev_sent_emo.csv": b"dev"})
    server.files["/MELD.Raw.tar.gz"] = outer
    server.files["/dl/Labels.csd"] = b"hdf5"
    return {
        "archives": [
            {"url": server.url("/MELD.Raw.tar.gz"), "size": len(outer), "sha256": sha(outer)},
            {"url": server.url("/dl/Labels.csd"), "extract": False},
        ],
        "nested": ["MELD.Raw/*.tar.gz"],
        "require": ["MELD.Raw/dev_sent_emo.csv", "**/*.mp4", "Labels.csd"],
    }


def test_prepare_source_nested_and_rerun(server, tmp_path):
    raw, work = tmp_path / "meld" / "raw", tmp_path / "meld" / "download"
    source = meld_source(server)
    assert prepare_source(source, raw, work) == raw
    assert (raw / "MELD.Raw/train_splits/dia0_utt0.mp4").read_bytes() == b"mp4"
    assert (raw / "MELD.Raw/train_sent_emo.csv").exists()
    assert not (raw / "MELD.Raw/train.tar.gz").exists()
    assert (raw / "Labels.csd").read_bytes() == b"hdf5"
    assert sorted(p.name for p in work.iterdir()) == ["Labels.csd", "MELD.Raw.tar.gz"]
    before = sorted(str(p.relative_to(raw)) for p in raw.rglob("*"))
    n_requests = len(server.requests)
    prepare_source(source, raw, work)  # rerun: cached downloads, same tree
    assert len(server.requests) == n_requests
    assert sorted(str(p.relative_to(raw)) for p in raw.rglob("*")) == before
    assert sorted(p.name for p in raw.parent.iterdir()) == ["download", "raw"]


def test_prepare_source_require_failure(server, tmp_path):
    source = meld_source(server)
    source["require"] = ["MELD.Raw/dev_sent_emo.csv", "MELD.Raw/test_sent_emo.csv"]
    raw = tmp_path / "meld" / "raw"
    with pytest.raises(DownloadError, match="MELD.Raw/test_sent_emo.csv") as err:
        prepare_source(source, raw, tmp_path / "meld" / "download")
    assert "dev_sent_emo" not in str(err.value).split("(top level")[0]
    assert sorted(p.name for p in raw.parent.iterdir()) == ["download"]


def test_prepare_source_parts_need_a_name(tmp_path):
    pattern = write_parts(tmp_path / "parts", PAYLOAD)
    with pytest.raises(DownloadError, match="give the archive they form a `name`"):
        prepare_source({"archives": [{"path": pattern}]}, tmp_path / "raw", tmp_path / "dl")


def test_prepare_source_split_parts_write_no_copy(tmp_path):
    # Stored random members: the archive is about as large as what it extracts to.
    members = {f"dev/mp4/id0000{i}/abcdefghijk/00001.mp4": os.urandom(20000) for i in range(5)}
    archive = tmp_path / "v.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    size = archive.stat().st_size
    pattern = write_parts(tmp_path / "parts", archive.read_bytes())
    source = {
        "archives": [
            {
                "path": pattern,
                "name": "vox2_dev_mp4.zip",
                "size": size,
                "sha256": sha(archive.read_bytes()),
            }
        ],
        "require": ["dev/mp4/*/*/*.mp4"],
    }
    raw, work = tmp_path / "vox" / "raw", tmp_path / "vox" / "download"
    assert prepare_source(source, raw, work) == raw
    assert tree(raw) == members
    written = [p.stat().st_size for p in (tmp_path / "vox").rglob("*") if p.is_file()]
    extracted = sum(map(len, members.values()))
    assert extracted <= sum(written) <= extracted * 1.01  # the extracted tree, no archive copy
    assert all(p.stat().st_size < size for p in work.rglob("*") if p.is_file())


def test_prepare_source_changed_part_extracted_again(tmp_path):
    name = "dev/mp4/id00001/abcdefghijk/00001.mp4"
    source = {
        "archives": [{"path": str(tmp_path / "parts" / "vox_part?"), "name": "vox2_dev_mp4.zip"}]
    }
    raw, work = tmp_path / "raw", tmp_path / "dl"
    for content in (os.urandom(9000), os.urandom(9000)):  # parts of the same names and sizes
        data = make_zip(tmp_path / "v.zip", {name: content}).read_bytes()
        write_parts(tmp_path / "parts", data)
        prepare_source(source, raw, work)
        assert (raw / name).read_bytes() == content
    (tmp_path / "parts" / "vox_partc").write_bytes(b"junk")  # a broken part is not hidden
    with pytest.raises(DownloadError, match=r"vox2_dev_mp4.zip \(parts .* is truncated or corrupt"):
        prepare_source(source, raw, work)
    assert (raw / name).read_bytes() == content  # the last good extraction stays


def test_prepare_source_split_plain_file_is_concatenated(tmp_path):
    pattern = write_parts(tmp_path / "parts", PAYLOAD)
    source = {"archives": [{"path": pattern, "name": "labels.csd", "extract": False}]}
    raw = prepare_source(source, tmp_path / "raw", tmp_path / "dl")
    assert (raw / "labels.csd").read_bytes() == PAYLOAD


def test_folder_source_becomes_symlink(tmp_path):
    folder = tmp_path / "CAER"
    (folder / "train" / "Anger").mkdir(parents=True)
    (folder / "train" / "Anger" / "0001.avi").write_bytes(b"avi")
    raw = tmp_path / "caer" / "raw"
    source = {"archives": [{"path": str(folder)}], "require": ["train/*/*.avi"]}
    for _ in range(2):  # the rerun replaces the link with the same link
        prepare_source(source, raw, tmp_path / "caer" / "download")
        assert raw.is_symlink() and raw.resolve() == folder.resolve()
    assert (raw / "train/Anger/0001.avi").read_bytes() == b"avi"
    with pytest.raises(DownloadError, match=r"nothing matches \['test/\*/\*.avi'\]"):
        source["require"] = ["test/*/*.avi"]
        prepare_source(source, raw, tmp_path / "caer" / "download")
    mixed = {"archives": [{"path": str(folder)}, {"path": str(folder / "x.zip")}]}
    with pytest.raises(DownloadError, match="must be the only entry"):
        prepare_source(mixed, tmp_path / "other", tmp_path / "dl")


def test_progress_is_logged(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("conclugen.download.LOG_EVERY_S", 0.0)
    server.files["/a.bin"] = PAYLOAD
    with caplog.at_level("INFO", logger="conclugen"):
        fetch(server.url("/a.bin"), tmp_path / "a.bin", sha256=sha(PAYLOAD))
    assert "a.bin.part: 0.00 of 0.00 GB" in caplog.text and "sha256 of a.bin.part" in caplog.text
