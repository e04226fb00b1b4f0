"""Feature extraction: sampling and pooling semantics on videos with known answers, cropping and
augmented views, the mel spectrogram, determinism, long clips in chunks and windows (equal to
whole clips), per-clip isolation of errors inside a batch, shard stores and their merge."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from conclugen import featstore
from conclugen.featstore import VIDEO_ROLES, ShardFeatures, merge_shards, open_shard, write_shard
from conclugen.features import (
    N_FFT,
    NO_AUGMENT,
    AudioClips,
    AudioRunner,
    Augment,
    ClipInputs,
    LocalViews,
    SharedVideoClips,
    VideoClips,
    ViewParams,
    ViewRecipe,
    clamp_boxes,
    clip_rng,
    copy_params,
    crop_frames,
    extract_shard,
    extract_video_shards,
    local_view_params,
    masked,
    mel_filters,
    run_audio,
    spectrogram,
    spectrogram_masks,
    swap_words,
    view_params,
    windows,
)
from conclugen.ledger import FailureLedger, TooManyFailures
from conclugen.media import read_frames, sample_times
from tests.synthetic import synthetic_features

W, H = 64, 48


def encode(path, frames: np.ndarray, fps: int = 16, gop: int = 250) -> None:
    """Write [T, H, W, 3] uint8 frames losslessly (x264 RGB, qp 0), a keyframe every ``gop``."""
    h, w = frames.shape[1:3]
    cmd = ["ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", "-c:v", "libx264rgb", "-qp", "0",
           "-g", str(gop), "-pix_fmt", "rgb24", str(path)]  # fmt: skip
    subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True)


def grey_ramp(n: int, step: int = 6) -> np.ndarray:
    """n frames, frame k uniformly grey at level step * k."""
    levels = (np.arange(n) * step).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, H, W, 3)).copy()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    paths = {"ramp40": root / "ramp40.mp4", "ramp10": root / "ramp10.mp4"}
    encode(paths["ramp40"], grey_ramp(40))
    encode(paths["ramp10"], grey_ramp(10))
    # A still scene with structure (for crops and views): a gradient with a bright square.
    still = np.zeros((20, H, W, 3), np.uint8)
    still[:] = np.linspace(0, 200, W, dtype=np.uint8)[None, None, :, None]
    still[:, 10:30, 20:40] = (250, 40, 40)
    paths["still"] = root / "still.mp4"
    encode(paths["still"], still)
    return paths


def clips_table(paths: dict, names: list[str], frames: dict[str, int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": names,
            "split": ["train"] * len(names),
            "video": [str(paths[n]) for n in names],
            "audio": [None] * len(names),
            "start": [0.0] * len(names),
            "end": [frames[n] / 16 for n in names],
            "width": [W] * len(names),
            "height": [H] * len(names),
            "has_audio": [False] * len(names),
            "audio_peak": [0.0] * len(names),
            "text": [None] * len(names),
        }
    )


class MeanColour2D(torch.nn.Module):
    """A stand-in backbone whose feature is the mean colour of each (normalised) frame."""

    feature_dim = 3

    def forward(self, x):
        assert x.dim() == 4
        return x.mean((2, 3))


class MeanColour3D(torch.nn.Module):
    """The same for 16-frame windows [B, 3, T, H, W]: the mean colour of the window."""

    feature_dim = 3

    def forward(self, x):
        assert x.dim() == 5 and x.shape[2] == 16
        return x.mean((2, 3, 4))


IDENTITY = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def extract(role, clips, model, **kw):
    ledger = FailureLedger(f"features/{role}")
    return extract_shard(role, clips, model, ledger, crop_size=32, **IDENTITY, **kw), ledger


def test_2d_is_the_mean_over_1fps_frames(videos):
    clips = clips_table(videos, ["ramp40"], {"ramp40": 40})
    shard, _ = extract("video2d", clips, MeanColour2D(), workers=0)
    # 1 fps = frames 0, 16, 32 of the 16 fps grid: grey 0, 96, 192.
    assert torch.allclose(shard.feature, torch.full((1, 3), 96 / 255), atol=1e-6)


def test_3d_is_the_mean_over_16_frame_windows_with_the_last_completed(videos):
    clips = clips_table(videos, ["ramp40", "ramp10"], {"ramp40": 40, "ramp10": 10})
    shard, _ = extract("video3d", clips, MeanColour3D(), workers=0)
    # Windows 0-15, 16-31, 32-39 + frame 39 repeated 8 times; grey 6k for frame k.
    last = (sum(range(32, 40)) + 8 * 39) / 16
    expected_40 = 6 * np.mean([np.mean(range(16)), np.mean(range(16, 32)), last]) / 255
    # A clip shorter than one window: one window, frames 0-9 then frame 9 six times.
    expected_10 = 6 * (sum(range(10)) + 6 * 9) / 16 / 255
    expected = torch.tensor([[expected_40] * 3, [expected_10] * 3], dtype=torch.float32)
    assert torch.allclose(shard.feature, expected, atol=1e-6)


def test_windows_shape_and_padding():
    clip = torch.arange(20).reshape(1, 20, 1, 1, 1).expand(2, 20, 3, 4, 4)
    out = windows(clip)
    assert out.shape == (2, 2, 3, 16, 4, 4)  # [V, windows, C, T, H, W]
    assert out[0, 1, 0, :, 0, 0].tolist() == list(range(16, 20)) + [19] * 12


def test_batching_across_clips_does_not_change_features(videos):
    names = ["ramp40", "ramp10", "still"]
    clips = clips_table(videos, names, {"ramp40": 40, "ramp10": 10, "still": 20})
    small, _ = extract("video3d", clips, MeanColour3D(), batch_size=1, workers=0)
    large, _ = extract("video3d", clips, MeanColour3D(), batch_size=64, workers=2)
    assert small.sample_id.tolist() == large.sample_id.tolist() == names
    assert torch.allclose(small.feature, large.feature, atol=1e-6)


def test_crop_follows_the_box_and_resizes():
    frames = np.zeros((3, H, W, 3), np.uint8)
    frames[:, 10:30, 20:40] = (250, 40, 40)
    crops = crop_frames(frames, np.tile([20, 10, 40, 30], (3, 1)), 16)
    assert crops.shape == (1, 3, 3, 16, 16) and crops.dtype == torch.uint8
    # Inside the box exactly its colour (bilinear sampling blends only the outermost pixels).
    inner = crops[0, :, :, 1:-1, 1:-1]
    assert (inner[:, 0] == 250).all() and (inner[:, 1] == 40).all()
    # A box outside the frame falls back to the whole frame.
    whole = crop_frames(frames, np.tile([100, 100, 120, 120], (3, 1)), 16)
    assert whole[0, :, 0].float().mean() < 250 and whole[0, :, 0].max() == 250


def test_views_are_temporally_consistent_and_shared_by_2d_and_3d(videos):
    clips = clips_table(videos, ["still"], {"still": 20})
    v2d = VideoClips(clips, "video2d", {}, 32, views=3, view_seed=5)[0].inputs
    v3d = VideoClips(clips, "video3d", {}, 32, views=3, view_seed=5)[0].inputs
    assert v2d.shape == (4, 2, 3, 32, 32)  # plain + 3 views, 1 fps frames at t = 0, 1
    assert v3d.shape == (4, 2, 3, 16, 32, 32)  # 20 frames -> 2 windows
    frames3d = v3d.transpose(2, 3).flatten(1, 2)  # [V, 32, 3, H, W]
    # The still video: every frame of a view is the same image (consistent over time) ...
    assert (v2d == v2d[:, :1]).all() and (frames3d[:, :20] == frames3d[:, :1]).all()
    # ... and the 2D job's view k is the 3D job's view k.
    assert torch.equal(v2d[:, 0], frames3d[:, 0])
    # Views differ from the plain crop and from each other; a rerun draws the same views.
    firsts = [v2d[k, 0] for k in range(4)]
    assert all(not torch.equal(firsts[i], firsts[j]) for i in range(4) for j in range(i))
    again = VideoClips(clips, "video2d", {}, 32, views=3, view_seed=5)[0].inputs
    assert torch.equal(v2d, again)
    assert view_params("still", 0, 5) != view_params("still", 0, 6)


def test_no_two_draws_of_a_clip_share_a_random_stream():
    """View k, local view k, downstream copy k of each modality and temporal window k of one
    clip under one seed each draw their own stream."""
    from conclugen.features import LOCAL_VIEW_KEY, WINDOW_STREAM, copy_rng

    seed, clip = 0, "clip"
    augment = Augment(count=3, seed=seed)
    for k in range(3):
        streams = {
            "view": clip_rng(seed, clip, k),
            "local view": clip_rng(seed, clip, k, LOCAL_VIEW_KEY),
            "window": clip_rng(seed, clip, k, WINDOW_STREAM),
            **{f"copy {m}": copy_rng(augment, clip, k, m) for m in featstore.MODALITIES},
        }
        first = {name: rng.integers(1 << 62) for name, rng in streams.items()}
        assert len(set(first.values())) == len(first), (k, first)


def test_local_views_follow_the_views_and_are_shared_by_2d_and_3d(videos):
    clips = clips_table(videos, ["still"], {"still": 20})
    local = LocalViews(count=2)
    kw = dict(views=2, view_seed=5, local=local)
    v2d = VideoClips(clips, "video2d", {}, 32, **kw)[0].inputs
    v3d = VideoClips(clips, "video3d", {}, 32, **kw)[0].inputs
    assert v2d.shape == (5, 2, 3, 32, 32)  # plain, 2 views, 2 local views
    frames3d = v3d.transpose(2, 3).flatten(1, 2)
    assert torch.equal(v2d[:, 0], frames3d[:, 0])  # the 2D job's local view k is the 3D job's
    # Local views come after the views, which they leave as they were.
    plain = VideoClips(clips, "video2d", {}, 32, views=2, view_seed=5)[0].inputs
    assert torch.equal(v2d[:3], plain)
    assert not any(torch.equal(v2d[3 + j, 0], v2d[k, 0]) for j in range(2) for k in range(3))
    frames, _ = read_frames(videos["still"], sample_times(0, 20 / 16, 16)[::16])
    params = [local_view_params("still", k, 5, local=local) for k in range(2)]
    expected = crop_frames(frames, np.tile([0, 0, W, H], (len(frames), 1)), 32, params)
    assert torch.equal(v2d[3:], expected[1:])
    # Drawn from (seed, sample id, view) on a stream of their own: not a global view's crop.
    assert local_view_params("still", 0, 5, local=local) == local_view_params("still", 0, 5)
    assert local_view_params("still", 0, 5) != local_view_params("still", 0, 6)
    drawn = [(view_params(f"c{i}", k, 0), local_view_params(f"c{i}", k, 0))
             for i in range(300) for k in range(4)]  # fmt: skip
    assert all(g.crop != loc.crop for g, loc in drawn)
    area = np.array([[p.crop[2] * p.crop[3] for p in pair] for pair in drawn])
    assert 0.3 - 1e-9 <= area[:, 0].min() and area[:, 0].max() > 0.98  # global: 0.3-1
    assert 0.05 - 1e-9 <= area[:, 1].min() < 0.06 and 0.38 < area[:, 1].max() <= 0.4 + 1e-9
    # The rest of the recipe is the views': flips and colour operations at its rates.
    flips = np.mean([loc.flip for _, loc in drawn])
    jitters = np.mean([loc.jitter is not None for _, loc in drawn])
    assert abs(flips - 0.5) < 0.05 and abs(jitters - 0.8) < 0.05


def test_extraction_stores_the_local_views_through_the_merge(videos, tmp_path):
    clips = clips_table(videos, ["still", "ramp40"], {"still": 20, "ramp40": 40})
    local = LocalViews(count=3, scale=(0.05, 0.1))
    paths = {}
    for role, model in (("video2d", MeanColour2D()), ("video3d", MeanColour3D())):
        shard, _ = extract(role, clips, model, workers=0, views=2, local_views=local)
        assert shard.views.shape == (2, 2, 3) and shard.local_views.shape == (2, 3, 3)
        paths[role] = [tmp_path / role / "0.zarr"]
        write_shard(paths[role][0], shard, "float32", {"role": role, "views": 2, "local_views": 3})
        kw = dict(model=model, device="cpu", batch_size=8, boxes={}, crop_size=32, **IDENTITY,
                  views=2, view_seed=0, precision="fp32", recipe=ViewRecipe(),
                  augment=NO_AUGMENT, local_views=local)  # fmt: skip
        one_decode = extract_video_shards(clips, {role: kw}, ledgers_of([role]), workers=0)[role]
        assert torch.allclose(one_decode.local_views, shard.local_views, atol=1e-6)
    audio, _ = extract("audio", clips, StepMap(), local_views=local)  # not a video role: none
    assert audio.local_views is None
    out = tmp_path / "features.zarr"
    merge_shards(paths, out, "float32")
    fs = featstore.read_features(out, local_views=True)
    assert fs.attrs["local_views"] == 3 and fs.local_views.shape == (2, 3, 6)
    assert torch.equal(fs.local_views[:, :, 3:], shard.local_views)
    assert featstore.read_features(out).local_views is None  # only when asked
    assert torch.equal(fs.select([1]).local_views, fs.local_views[1:])


def test_undecodable_clip_goes_to_the_ledger(videos, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    paths = dict(videos, broken=broken)
    clips = clips_table(paths, ["ramp40", "broken"], {"ramp40": 40, "broken": 16})
    shard, ledger = extract("video2d", clips, MeanColour2D(), workers=0)
    assert shard.sample_id.tolist() == ["ramp40"]
    assert [r[0] for r in ledger.rows] == ["broken"]


def test_mel_spectrogram_of_a_tone():
    t = np.arange(16000) / 16000
    spec = spectrogram(np.sin(2 * np.pi * 1000 * t).astype(np.float32), mel_filters())
    assert spec.shape == (128, 1 + 16000 // 160)
    assert float(spec.min()) == 0.0 and abs(float(spec.max()) - 1.0) < 1e-6
    # The loudest band is the one whose centre is closest to 1 kHz (HTK mel scale, 0-8 kHz).
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    centres = np.linspace(mel(0), mel(8000), 130)[1:-1]
    expected = int(np.argmin(np.abs(centres - mel(1000))))
    assert abs(int(spec[:, 10:-10].mean(1).argmax()) - expected) <= 1


class StepMap(torch.nn.Module):
    """A stand-in DAVEnet: [B, F, T] -> [B, 2, 3, ceil(T / 16)] maps of the input's 16-step
    means, so the pooled feature of a constant spectrogram is that constant."""

    feature_dim = 2

    def output_steps(self, t):
        return -(-t // 16)

    def forward(self, x):
        pooled = torch.nn.functional.avg_pool1d(x.mean(1, keepdim=True), 16, ceil_mode=True)
        return pooled[:, :, None].expand(-1, 2, 3, -1)


def test_audio_pooling_ignores_batch_padding(monkeypatch):
    runner = AudioRunner(StepMap(), "cpu")
    short, long = torch.full((128, 32), 0.25), torch.full((128, 160), 0.75)
    feats = runner([short, long])
    assert torch.allclose(feats, torch.tensor([[0.25, 0.25], [0.75, 0.75]]))


def shard_of(ids, dim, value, present=None, views=0):
    n = len(ids)
    feats = torch.full((n, dim), float(value)) + torch.arange(n)[:, None]
    return ShardFeatures(
        sample_id=np.array(ids),
        split=np.array(["train"] * n),
        feature=feats,
        present=torch.ones(n, dtype=torch.bool) if present is None else torch.tensor(present),
        views=feats[:, None].repeat(1, views, 1) + 0.5 if views else None,
    )


def test_merge_joins_roles_and_shards(tmp_path):
    paths = {r: [] for r in ("video2d", "video3d", "audio", "text")}
    layout = {
        # shard: role -> (ids, dim, value, present)
        0: {"video2d": (["a", "b", "c"], 4, 1, None), "video3d": (["a", "b", "c"], 2, 2, None),
            "audio": (["a", "b", "c"], 3, 3, [True, False, True]),
            "text": (["a", "c"], 5, 4, None)},
        1: {"video2d": (["d", "e"], 4, 1, None), "video3d": (["d"], 2, 2, None),
            "audio": (["d", "e"], 3, 3, None), "text": (["d", "e"], 5, 4, [False, True])},
    }  # fmt: skip
    for k, roles in layout.items():
        for role, (ids, dim, value, present) in roles.items():
            path = tmp_path / role / f"{k}.zarr"
            views = 2 if role.startswith("video") else 0
            write_shard(path, shard_of(ids, dim, value, present, views), "float32",
                        {"role": role, "views": views})  # fmt: skip
            paths[role].append(path)
    out = tmp_path / "features.zarr"
    assert merge_shards(paths, out, "float16") == 4  # e lacks a 3D feature: left out
    fs = featstore.read_features(out)
    assert fs.sample_id.tolist() == ["a", "b", "c", "d"]
    assert fs.dims == {"video": 6, "audio": 3, "text": 5}
    assert zarr.open_group(out)["video"].dtype == np.float16
    assert fs.features["video"][1].tolist() == [2, 2, 2, 2, 3, 3]  # b: 2D row 1, 3D row 1
    assert fs.present["audio"].tolist() == [True, False, True, True]
    assert fs.present["text"].tolist() == [True, False, True, False]  # b missing, d absent
    assert fs.features["text"][2].tolist() == [5] * 5  # c is row 1 of the text shard
    assert fs.features["text"][1].abs().sum() == 0
    assert fs.views.shape == (4, 2, 6) and fs.views[0, 0].tolist() == [1.5] * 4 + [2.5] * 2


def test_an_unfinished_shard_store_is_refused(tmp_path):
    path = tmp_path / "0.zarr"
    write_shard(path, shard_of(["a"], 2, 1), "float32", {"role": "audio"})
    group = zarr.open_group(path, mode="r+")
    del group.attrs["complete"]
    with pytest.raises(ValueError, match="not a complete shard store"):
        open_shard(path)


def normalised(frames: np.ndarray, size: int) -> torch.Tensor:
    """[T, H, W, 3] uniform frames -> the [T, 3, size, size] tensor the backbone sees."""
    x = torch.from_numpy(frames[:, :size, :size]).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(0.5)) / torch.tensor(0.25)


def test_real_backbones_pool_known_inputs(videos, tiny_backbones):
    r2d, r3d = tiny_backbones
    clips = clips_table(videos, ["ramp40", "ramp10"], {"ramp40": 40, "ramp10": 10})
    kw = {"crop_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "workers": 0}
    ledger = FailureLedger("features")
    f2d = extract_shard("video2d", clips, r2d, ledger, **kw).feature
    f3d = extract_shard("video3d", clips, r3d, ledger, **kw).feature
    ramp = normalised(grey_ramp(40, step=6)[..., :32, :32, :], 32)  # uniform frames: crop = frame
    with torch.inference_mode():
        want2d = r2d(ramp[[0, 16, 32]]).mean(0)
        windows40 = torch.stack(
            [ramp[0:16], ramp[16:32], torch.cat([ramp[32:40], ramp[39:40].expand(8, -1, -1, -1)])]
        )
        want3d = r3d(windows40.transpose(1, 2)).mean(0)
        short = torch.cat([ramp[:10], ramp[9:10].expand(6, -1, -1, -1)])  # the 10-frame clip
        want3d_short = r3d(short[None].transpose(1, 2))[0]
    assert torch.allclose(f2d[0], want2d, atol=1e-4)
    assert torch.allclose(f3d[0], want3d, atol=1e-4)
    assert torch.allclose(f3d[1], want3d_short, atol=1e-4)
    again = extract_shard("video3d", clips, r3d, ledger, **kw).feature
    assert torch.equal(f3d, again)


def test_audio_rows_keep_the_clips_order(tmp_path):
    """Audio is batched by length, but the rows come back in the clips' order. Lengths give
    whole 16-frame output steps (1 + 100 s = 16 k frames), so padding cannot matter."""
    paths, names, lengths = {}, [], {}
    for i, seconds in enumerate([1.91, 0.31, 1.27]):
        path = tmp_path / f"a{i}.mp4"
        cmd = ["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
               f"color=c=gray:s=64x48:r=16:d={seconds}", "-f", "lavfi", "-i",
               f"sine=f={300 + 200 * i}:d={seconds}:r=16000", "-shortest", str(path)]  # fmt: skip
        subprocess.run(cmd, check=True)
        paths[f"a{i}"], lengths[f"a{i}"] = path, seconds * 16
        names.append(f"a{i}")
    clips = clips_table(paths, names, lengths).assign(has_audio=True, audio_peak=0.5)
    model = StepMap()
    batched, _ = extract("audio", clips, model, batch_size=3, workers=0)
    alone = [extract("audio", clips.iloc[[i]], model, workers=0)[0].feature[0] for i in range(3)]
    assert batched.sample_id.tolist() == names
    assert torch.allclose(batched.feature, torch.stack(alone), atol=1e-6)


def test_crop_of_a_large_box_is_antialiased():
    """A fine stripe pattern shrunk 4x averages to grey instead of aliasing."""
    frames = np.zeros((2, 256, 256, 3), np.uint8)
    frames[:, :, ::2] = 255  # one-pixel stripes
    crops = crop_frames(frames, np.tile([0, 0, 256, 256], (2, 1)), 64).float()
    assert abs(crops.mean() - 127.5) < 2 and crops.std() < 3


# ---------------------------------------------------------------------------------------------
# Long clips: chunks of frames and windows of the spectrogram give the whole clip's features


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """14 s at 16 fps, 96x72, a keyframe every 20 frames (so chunks seek mid-file): a moving
    gradient with per-frame noise, and a face track whose box size changes over time."""
    rng = np.random.default_rng(0)
    n, h, w = 224, 72, 96
    x = np.arange(w)[None, None, :] + 5 * np.arange(n)[:, None, None] + 0 * np.arange(h)[:, None]
    frames = np.stack([x % 256, (x // 2 + np.arange(h)[:, None]) % 256, x * 0 + 90], -1)
    frames = (frames + rng.integers(0, 30, frames.shape)).clip(0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    encode(path, frames, gop=20)
    size = 52 + 18 * np.sin(np.arange(n) / 15)  # 34-70 px: crops of 16 pooled by 2 (the least)
    left = 4 + 20 * np.cos(np.arange(n) / 10)
    track = np.stack([left, 1 + 0 * left, left + size, 1 + 0.95 * size], 1).astype(np.float32)
    return path, track


@pytest.mark.parametrize(
    "role, start, end, chunk",
    [("video2d", 0.0, 14.0, 5), ("video3d", 2.3, 8.3, 32)],  # 3 chunks each
)
def test_long_clip_in_chunks_equals_the_whole_clip(long_video, tiny_backbones, role, start,
                                                   end, chunk):  # fmt: skip
    path, track = long_video
    clips = clips_table({"long": path}, ["long"], {"long": 0}).assign(
        start=start, end=end, width=96, height=72
    )
    # The track is on the clip's 16 fps grid, from the clip's start.
    boxes = {"long": track[int(start * 16) :]}
    data = VideoClips(clips, role, boxes, 16, views=2, chunk_frames=chunk)
    assert len(data) == 3 and [data.items[k][1] for k in range(3)] == [0, chunk, 2 * chunk]
    model = tiny_backbones[role == "video3d"]
    kw = {"crop_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "workers": 0, "views": 2,
          "boxes": boxes, "batch_size": 5}  # fmt: skip
    ledger = FailureLedger("features")
    chunked = extract_shard(role, clips, model, ledger, chunk_frames=chunk, **kw)
    whole = extract_shard(role, clips, model, ledger, chunk_frames=4096, **kw)
    assert not ledger.rows
    assert torch.allclose(chunked.feature, whole.feature, rtol=1e-5, atol=1e-5)
    assert torch.allclose(chunked.views, whole.views, rtol=1e-5, atol=1e-5)
    # The chunks hold exactly the whole clip's inputs, chunk after chunk.
    parts = [data[k] for k in range(3)]
    assert [p.last for p in parts] == [False, False, True]
    one = VideoClips(clips, role, boxes, 16, views=2, chunk_frames=4096)[0]
    assert torch.equal(torch.cat([p.inputs for p in parts], 1), one.inputs)


# ---------------------------------------------------------------------------------------------
# Both video backbones from one decode per clip


def video_keywords(models: dict, views: dict, boxes=None, augment=NO_AUGMENT) -> dict:
    """extract_video_shards' keywords per role: those of the role's own extract_shard call."""
    shared = {"device": "cpu", "batch_size": 5, "boxes": boxes or {}, "crop_size": 16,
              "mean": [0.5] * 3, "std": [0.25] * 3, "view_seed": 7, "precision": "fp32",
              "recipe": ViewRecipe(), "augment": augment}  # fmt: skip
    return {r: {"model": m, "views": views.get(r, 0), **shared} for r, m in models.items()}


def tiny_models(tiny_backbones) -> dict:
    return {"video2d": tiny_backbones[0], "video3d": tiny_backbones[1]}


def ledgers_of(roles) -> dict[str, FailureLedger]:
    return {role: FailureLedger(f"features/{role}") for role in roles}


def test_both_video_roles_cost_one_decoder_open_per_clip(videos, tiny_backbones, monkeypatch):
    names = ["ramp40", "still", "ramp10"]  # each within one chunk
    clips = clips_table(videos, names, {"ramp40": 40, "still": 20, "ramp10": 10})
    opened = []
    real_open = av.open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(av, "open", counting_open)  # what conclugen.media decodes with
    roles = video_keywords(tiny_models(tiny_backbones), {"video3d": 2})
    shards = extract_video_shards(clips, roles, ledgers_of(roles), workers=0)
    assert sorted(opened) == sorted(clips["video"])  # one open per clip for both roles
    assert all(shard.sample_id.tolist() == names for shard in shards.values())
    opened.clear()
    for role, kw in roles.items():
        extract_shard(role, clips, ledger=FailureLedger("features"), workers=0, **kw)
    assert len(opened) == 2 * len(names)  # a job per role: one open per clip and role


@pytest.fixture
def mixed_clips(videos, long_video, tmp_path):
    """Short clips, a broken file and the long clip with its face track (9 chunks of 16 frames
    at 16 fps), train and test clips; with the track as boxes."""
    path, track = long_video
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    names = ["ramp40", "long", "broken", "still", "ramp10"]
    lengths = {"ramp40": 40, "long": 0, "broken": 16, "still": 20, "ramp10": 10}
    clips = clips_table(dict(videos, long=path, broken=broken), names, lengths)
    clips.loc[1, ["start", "end", "width", "height"]] = [2.3, 11.0, 96, 72]  # 139 frames
    clips["split"] = ["train", "train", "test", "test", "train"]
    return clips, {"long": track[int(2.3 * 16) :]}


def test_shared_chunks_hold_each_roles_own_inputs(mixed_clips):
    clips, boxes = mixed_clips
    augment = Augment(count=1, seed=3)
    kw = {"view_seed": 7, "augment": augment}
    views = {"video2d": 1, "video3d": 2}
    readers = {r: VideoClips(clips, r, boxes, 16, views[r], **kw) for r in VIDEO_ROLES}
    data = SharedVideoClips(readers, chunk_frames=16)
    for role in VIDEO_ROLES:
        whole = VideoClips(clips, role, boxes, 16, views[role], chunk_frames=4096, **kw)
        for i, sample_id in enumerate(clips["sample_id"]):
            parts = [data[k][role] for k, item in enumerate(data.items) if item[0] == i]
            assert [p.last for p in parts] == [False] * (len(parts) - 1) + [True]
            if sample_id == "broken":
                assert all("not decodable" in p.error for p in parts)
                continue
            # Exactly the role's own crops, views and copies (2D: 1 frame per 16-frame chunk).
            assert torch.equal(torch.cat([p.inputs for p in parts], 1), whole[i].inputs)
    assert len([k for k, item in enumerate(data.items) if item[0] == 1]) == 9


def test_shared_decode_gives_the_separate_roles_features(mixed_clips, tiny_backbones):
    clips, boxes = mixed_clips
    views = {"video2d": 1, "video3d": 2}
    roles = video_keywords(tiny_models(tiny_backbones), views, boxes, Augment(count=1, seed=3))
    ledgers = ledgers_of(roles)
    shared = extract_video_shards(clips, roles, ledgers, workers=0, chunk_frames=32)
    for role, kw in roles.items():
        ledger = FailureLedger(f"features/{role}")
        alone = extract_shard(role, clips, ledger=ledger, workers=0, **kw)
        assert ledgers[role].rows == ledger.rows and [r[0] for r in ledger.rows] == ["broken"]
        got = shared[role]
        assert got.sample_id.tolist() == alone.sample_id.tolist() == ["ramp40", "long", "still",
                                                                       "ramp10"]  # fmt: skip
        assert torch.equal(got.present, alone.present) and (got.split == alone.split).all()
        # The same inputs, batched and summed in other groups: equal up to float rounding.
        for name in ("feature", "views", "augmented"):
            assert torch.allclose(getattr(got, name), getattr(alone, name), rtol=1e-5, atol=1e-6)


def test_a_clip_failing_in_one_video_role_is_that_roles_entry_only(videos):
    names = ["ramp40", "still", "ramp10"]
    clips = clips_table(videos, names, {"ramp40": 40, "still": 20, "ramp10": 10})
    roles = video_keywords({"video2d": RejectsRed(), "video3d": MeanColour3D()}, {})
    ledgers = ledgers_of(roles)
    shards = extract_video_shards(clips, roles, ledgers, workers=2)
    assert [(r[0], r[3]) for r in ledgers["video2d"].rows] == [("still", "dropped")]
    assert not ledgers["video3d"].rows
    assert shards["video2d"].sample_id.tolist() == ["ramp40", "ramp10"]
    assert shards["video3d"].sample_id.tolist() == names


def reference_spectrogram(audio: np.ndarray, filters: torch.Tensor) -> torch.Tensor:
    """The spectrogram in one piece, as torchaudio's MelSpectrogram computes it."""
    x = torch.from_numpy(audio)
    stft = torch.stft(x, N_FFT, 160, window=torch.hann_window(N_FFT), center=True,
                      pad_mode="reflect", return_complex=True)  # fmt: skip
    mel = filters @ stft.abs().pow(2)
    return (mel - mel.min()) / (mel.max() - mel.min() + 1e-8)


def test_spectrogram_in_chunks_equals_the_whole_stft():
    audio = np.random.default_rng(1).standard_normal(16000 * 3 + 77).astype(np.float32)
    filters = mel_filters()
    want = reference_spectrogram(audio, filters)
    for chunk in (7, 64, 10_000):
        got = spectrogram(audio, filters, chunk=chunk)
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_davenet(tmp_path_factory):
    from conclugen import backbones
    from conclugen.lookalike import weights as lookalike_weights

    path = tmp_path_factory.mktemp("davenet") / "davenet.pth"
    lookalike_weights.write_resdavenet(path, widths=(8, 8, 8, 8, 16), convsize=5)
    return backbones.load_davenet(str(path))


def test_audio_windows_equal_the_whole_clip(tiny_davenet):
    """A 12-s spectrogram in 64-frame windows (plus the receptive field's context) pools to the
    whole clip's feature, also when its windows span several batches of the shard."""
    spec = torch.rand(128, 1203, generator=torch.Generator().manual_seed(2))
    whole = AudioRunner(tiny_davenet, "cpu", window=None)
    windowed = AudioRunner(tiny_davenet, "cpu", window=64)
    pieces = windowed.pieces(spec)
    assert len(pieces) == 19 and max(p[0].shape[1] for p in pieces) < 1203 / 2
    want = whole([spec])[0]
    assert torch.allclose(windowed([spec])[0], want, rtol=1e-5, atol=1e-6)
    clips = [ClipInputs("a", spec[:, :300]), ClipInputs("b", spec), ClipInputs("c", None, False)]
    results = list(run_audio(windowed, clips, batch_size=4))
    assert [r.sample_id for r in results] == ["a", "b", "c"]
    assert torch.allclose(results[0].feature[0], whole([spec[:, :300]])[0], rtol=1e-5, atol=1e-6)
    assert torch.allclose(results[1].feature[0], want, rtol=1e-5, atol=1e-6)
    assert results[2].feature is None and results[2].present is False


def test_audio_batch_padding_does_not_change_a_feature(tiny_davenet):
    """Zeros padded after a shorter clip do not reach its last steps (the runner masks every
    convolution's input past the clip's length), so a feature does not depend on its batch."""
    g = torch.Generator().manual_seed(3)
    short, long = torch.rand(128, 301, generator=g), torch.rand(128, 650, generator=g)
    runner = AudioRunner(tiny_davenet, "cpu", window=None)
    alone = torch.cat([runner([short]), runner([long])])
    assert torch.allclose(runner([short, long]), alone, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# One clip's error inside a batch is that clip's ledger entry; the machine's errors propagate


class RejectsRed(torch.nn.Module):
    """Mean colour of frames or windows; raises, like a library on an odd input, when a batch
    holds a red frame (the still clip's square)."""

    feature_dim = 3

    def __init__(self, error: Exception | None = None):
        super().__init__()
        self.error = error or RuntimeError("odd input: a red frame")

    def forward(self, x):
        if ((x[:, 0] - x[:, 1]).amax() > 0.5).item():
            raise self.error
        return x.mean(tuple(range(2, x.dim())))


@pytest.mark.parametrize("role", ["video2d", "video3d"])
def test_a_clip_that_makes_the_model_raise_is_its_ledger_entry(videos, role):
    names = ["ramp40", "still", "ramp10"]
    clips = clips_table(videos, names, {"ramp40": 40, "still": 20, "ramp10": 10})
    shard, ledger = extract(role, clips, RejectsRed(), batch_size=64, workers=0)
    assert [(r[0], r[3]) for r in ledger.rows] == [("still", "dropped")]
    assert "RuntimeError: odd input: a red frame" in ledger.rows[0][2]
    without, _ = extract(role, clips.iloc[[0, 2]], RejectsRed(), batch_size=64, workers=0)
    assert shard.sample_id.tolist() == without.sample_id.tolist() == ["ramp40", "ramp10"]
    assert torch.allclose(shard.feature, without.feature, atol=1e-6)
    # A model that fails on every clip fails the shard through max_failure_fraction.
    red = clips_table(videos, ["still"], {"still": 20})
    _, ledger = extract(role, red, RejectsRed(), workers=0)
    with pytest.raises(TooManyFailures):
        ledger.check(1, 0.5)


def test_an_exception_while_preparing_a_clip_is_its_ledger_entry(videos, monkeypatch):
    real = VideoClips.read

    def read(path, times):
        if "ramp10" in str(path):
            raise ValueError("cannot reshape array of size 0")
        return real(path, times)

    monkeypatch.setattr(VideoClips, "read", staticmethod(read))
    clips = clips_table(videos, ["ramp40", "ramp10"], {"ramp40": 40, "ramp10": 10})
    shard, ledger = extract("video3d", clips, MeanColour3D(), workers=0)
    assert shard.sample_id.tolist() == ["ramp40"]
    assert ledger.rows[0][0] == "ramp10" and "ValueError: cannot reshape" in ledger.rows[0][2]


class NanRejectingStepMap(StepMap):
    def forward(self, x):
        if torch.isnan(x).any():
            raise RuntimeError("input contains NaN")
        return super().forward(x)


def test_an_audio_clip_that_makes_the_model_raise_is_an_error_result():
    runner = AudioRunner(NanRejectingStepMap(), "cpu")
    good = [ClipInputs(s, torch.full((128, 32 * (i + 1)), 0.25 * (i + 1)))
            for i, s in enumerate("ab")]  # fmt: skip
    bad = ClipInputs("bad", torch.full((128, 48), float("nan")))
    results = list(run_audio(runner, [good[0], bad, good[1]], batch_size=8))
    assert [(r.sample_id, r.error is None) for r in results] == [
        ("a", True), ("bad", False), ("b", True)
    ]  # fmt: skip
    assert "RuntimeError: input contains NaN" in results[1].error
    without = list(run_audio(runner, good, batch_size=8))
    assert torch.equal(results[0].feature, without[0].feature)
    assert torch.equal(results[2].feature, without[1].feature)


class FakeEncoder:
    """A text encoder whose tokenizer raises on one odd text; feature = [length, 1]."""

    feature_dim = 2

    def __init__(self, error: Exception | None = None):
        self.error = error or ValueError("tokenizer: NUL character")

    def encode(self, texts, device):
        if any("\x00" in t for t in texts):
            raise self.error
        return torch.tensor([[float(len(t)), 1.0] for t in texts])


def test_a_text_that_makes_the_tokenizer_raise_is_its_ledger_entry(videos):
    clips = clips_table(videos, ["ramp40", "still", "ramp10"], {"ramp40": 40, "still": 20,
                                                                "ramp10": 10})  # fmt: skip
    clips["text"] = ["hello there", "odd \x00 text", None]
    shard, ledger = extract("text", clips, FakeEncoder(), batch_size=8)
    assert [(r[0], r[3]) for r in ledger.rows] == [("still", "dropped")]
    assert "ValueError: tokenizer: NUL character" in ledger.rows[0][2]
    assert shard.sample_id.tolist() == ["ramp40", "ramp10"]
    assert shard.feature[0].tolist() == [11.0, 1.0] and shard.present.tolist() == [True, False]


@pytest.mark.parametrize(
    "error",
    [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory")],
)  # fmt: skip
def test_out_of_memory_propagates(videos, monkeypatch, error):
    clips = clips_table(videos, ["ramp40", "still"], {"ramp40": 40, "still": 20})
    with pytest.raises(type(error)):
        extract("video3d", clips, RejectsRed(error), batch_size=64, workers=0)
    clips["text"] = ["fine", "odd \x00"]
    with pytest.raises(type(error)):
        extract("text", clips, FakeEncoder(error), batch_size=8)

    def read(path, times):
        raise error

    monkeypatch.setattr(VideoClips, "read", staticmethod(read))
    with pytest.raises(type(error)):
        extract("video2d", clips, MeanColour2D(), workers=0)


def test_featstore_keeps_augmented_copies_and_view_columns(tmp_path):
    dims = {"video": 12, "audio": 6, "text": 4}
    fs = synthetic_features(40, dims, seed=3, views=3, augmented=2, missing={"text": 0.3})
    train = torch.from_numpy(fs.split == "train")
    for m, x in fs.augmented.items():  # copies of present train samples only, unlike the plain one
        assert x.shape == (40, 2, dims[m])
        assert x[~train | ~fs.present[m]].abs().sum() == 0
        keep = train & fs.present[m]
        assert (x[keep, 0] - fs.features[m][keep]).abs().mean() > 0.05
        assert (x[keep, 0] - x[keep, 1]).abs().mean() > 0.05
    path = tmp_path / "f.zarr"
    views_3d = fs.views[:, :, 8:]  # views of the last 4 video columns only
    kw = {"views": views_3d, "augmented": fs.augmented, "view_columns": (8, 12)}
    featstore.write_features(path, fs.sample_id, fs.split, fs.features, fs.present, **kw)
    assert featstore.read_features(path).augmented is None  # not asked for
    back = featstore.read_features(path, split="train", augmented=True)
    assert back.attrs["augmented"] == 2 and back.attrs["view_columns"] == [8, 12]
    assert back.views.shape == (int(train.sum()), 3, 4)
    for m, x in back.augmented.items():
        assert torch.allclose(x, fs.augmented[m][train].half().float())
    part = back.select([0, 2])
    assert part.augmented["audio"].shape == (2, 2, 6)
    assert torch.equal(part.augmented["text"][1], back.augmented["text"][2])
    # Without views no view_columns; columns must fit the views.
    plain = tmp_path / "p.zarr"
    featstore.write_features(plain, fs.sample_id, fs.split, fs.features, fs.present)
    attrs = featstore.read_features(plain).attrs
    assert attrs["augmented"] == 0 and "view_columns" not in attrs
    with pytest.raises(ValueError, match="view_columns"):
        featstore.write_features(tmp_path / "x.zarr", fs.sample_id, fs.split, fs.features,
                                 views=views_3d, view_columns=(0, 12))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The views' recipe and the downstream copies


def test_view_parameters_span_the_authors_simclr_ranges():
    drawn = [view_params(f"clip{i}", k, 0) for i in range(400) for k in range(10)]
    area = np.array([p.crop[2] * p.crop[3] for p in drawn])
    ratio = np.array([p.crop[2] / p.crop[3] for p in drawn])
    assert 0.3 - 1e-9 <= area.min() < 0.32 and area.max() > 0.98
    assert ratio.min() < 0.55 and ratio.max() > 1.8 and (0.5 - 1e-9 <= ratio).all()
    assert all(0 <= p.crop[0] and p.crop[0] + p.crop[2] <= 1 + 1e-9 for p in drawn)
    rate = lambda flags: np.mean(list(flags))  # noqa: E731
    assert abs(rate(p.flip for p in drawn) - 0.5) < 0.03
    assert abs(rate(p.jitter is not None for p in drawn) - 0.8) < 0.03
    assert abs(rate(p.gray for p in drawn) - 0.2) < 0.03
    assert abs(rate(p.blur_sigma is not None for p in drawn) - 0.5) < 0.03
    jitters = [dict(p.jitter) for p in drawn if p.jitter]
    for name, (low, high) in {"brightness": (0.2, 1.8), "hue": (-0.2, 0.2)}.items():
        values = np.array([j[name] for j in jitters])
        assert low <= values.min() < low + 0.05 and high - 0.05 < values.max() <= high
    assert len({tuple(n for n, _ in p.jitter) for p in drawn if p.jitter}) == 24  # random order
    sigmas = np.array([p.blur_sigma for p in drawn if p.blur_sigma is not None])
    assert 0.1 <= sigmas.min() < 0.15 and 1.95 < sigmas.max() <= 2.0
    # The downstream video copies: crop 0.8-1 / 0.8-1.2 and flip, no colour operations.
    copies = [copy_params(f"clip{i}", k, Augment(count=10)) for i in range(300) for k in range(10)]
    area = np.array([p.crop[2] * p.crop[3] for p in copies])
    assert 0.8 - 1e-9 <= area.min() < 0.82 and area.max() > 0.98
    assert not any(p.jitter or p.gray or p.blur_sigma for p in copies)
    assert abs(rate(p.flip for p in copies) - 0.5) < 0.03
    # Another recipe is another draw.
    narrow = ViewRecipe(crop_scale=(0.9, 1.0), jitter=0.0)
    assert all(p.jitter is None for p in (view_params("c", k, 0, narrow) for k in range(50)))


def test_the_schema_defaults_are_the_recipes_defaults():
    import yaml

    schema = yaml.safe_load((Path(__file__).parents[1] / "config" / "schema.yaml").read_text())
    features = schema["properties"]["features"]["properties"]
    views = {k: v["default"] for k, v in features["views"]["properties"].items()}
    assert ViewRecipe.from_settings(views) == ViewRecipe()
    local = {k: v["default"] for k, v in features["local_views"]["properties"].items()}
    assert LocalViews.from_settings(local) == LocalViews()
    augment = {k: v["default"] for k, v in features["augment"]["properties"].items()}
    for m in ("video", "audio", "text"):
        augment[m] = {
            k: v["default"] for k, v in features["augment"]["properties"][m]["properties"].items()
        }
    assert Augment.from_settings(augment) == Augment(count=10)


def test_only_train_clips_get_downstream_video_copies(videos):
    clips = clips_table(videos, ["still", "ramp40", "ramp10"], {"still": 20, "ramp40": 40,
                                                                "ramp10": 10})  # fmt: skip
    clips["split"] = ["train", "test", "train"]
    augment = Augment(count=3, seed=4)
    v2d = VideoClips(clips, "video2d", {}, 32, views=2, augment=augment)[0].inputs
    v3d = VideoClips(clips, "video3d", {}, 32, views=2, augment=augment)[0].inputs
    assert v2d.shape[0] == v3d.shape[0] == 1 + 2 + 3  # plain, views, copies
    frames3d = v3d.transpose(2, 3).flatten(1, 2)
    assert torch.equal(v2d[:, 0], frames3d[:, 0])  # 2D and 3D crop every copy alike
    firsts = [v2d[k, 0] for k in range(6)]
    assert all(not torch.equal(firsts[i], firsts[j]) for i in range(6) for j in range(i))
    assert VideoClips(clips, "video2d", {}, 32, augment=augment)[1].inputs.shape[0] == 1  # test
    ledger = FailureLedger("features")
    kw = {"crop_size": 32, **IDENTITY, "workers": 0, "views": 2, "augment": augment}
    shard = extract_shard("video2d", clips, MeanColour2D(), ledger, **kw)
    again = extract_shard("video2d", clips, MeanColour2D(), ledger, **kw)
    assert shard.augmented.shape == (3, 3, 3) and shard.views.shape == (3, 2, 3)
    assert shard.augmented[1].abs().sum() == 0  # the test clip: none
    still = shard.augmented[0]
    assert (still != shard.feature[0]).any(1).all()  # every copy differs from the plain clip
    assert torch.equal(shard.augmented, again.augmented) and torch.equal(shard.views, again.views)
    other = extract_shard("video2d", clips, MeanColour2D(), ledger,
                          **(kw | {"augment": Augment(count=3, seed=5)}))  # fmt: skip
    assert not torch.equal(other.augmented[0], still) and torch.equal(other.views, shard.views)


def test_audio_masks_follow_the_authors_ranges():
    spec = torch.rand(128, 500, generator=torch.Generator().manual_seed(0)) + 0.1
    augment = Augment(count=1)
    widths = {0: [], 1: []}
    for i in range(500):
        masks = spectrogram_masks(spec.shape, clip_rng(0, f"a{i}", 0), augment)
        assert [axis for axis, _, _ in masks] == [0, 1]
        out = masked(spec, masks)
        for axis, start, width in masks:
            size = spec.shape[axis]
            widths[axis].append(width)
            assert 0 <= start and start + width <= size
            assert out.narrow(axis, start, width).abs().sum() == 0
        keep = torch.ones_like(spec, dtype=torch.bool)
        for axis, start, width in masks:
            keep.narrow(axis, start, width).fill_(False)
        assert torch.equal(out[keep], spec[keep])  # nothing else changes
    # Width < m <= int(0.35 * axis) - 1; the widest masks come near that.
    for axis, size in ((0, 128), (1, 500)):
        most = int(0.35 * size) - 1
        assert max(widths[axis]) < most and max(widths[axis]) > 0.9 * most
        assert min(widths[axis]) == 0


def test_only_train_clips_get_masked_audio_copies(monkeypatch):
    audio = np.random.default_rng(3).standard_normal(16000).astype(np.float32)
    monkeypatch.setattr("conclugen.features.read_audio", lambda *a: audio)
    clips = pd.DataFrame({"sample_id": ["a", "b"], "split": ["train", "val"],
                          "video": ["a.mp4", "b.mp4"], "audio": [None, None],
                          "start": [0.0, 0.0], "end": [1.0, 1.0], "has_audio": [True, True],
                          "audio_peak": [0.5, 0.5]})  # fmt: skip
    augment = Augment(count=2, seed=1)
    data = AudioClips(clips, augment)
    train, val = data[0].inputs, data[1].inputs
    assert train.shape == (3, 128, 101) and val.shape == (128, 101)
    assert torch.equal(train[0], val)
    assert (train[1:] == 0).any() and not torch.equal(train[1], train[2])
    assert torch.equal(AudioClips(clips, augment)[0].inputs, train)  # a rerun: the same masks
    shard = extract_shard("audio", clips, StepMap(), FailureLedger("features"), workers=0,
                          augment=augment)  # fmt: skip
    assert shard.augmented.shape == (2, 2, 2) and shard.augmented[1].abs().sum() == 0
    # Copies pool like the plain clip: StepMap's feature of a copy is its masked mean.
    runner = AudioRunner(StepMap(), "cpu")
    want = torch.stack([runner([x])[0] for x in train[1:]])
    assert torch.allclose(shard.augmented[0], want, atol=1e-6)
    assert (shard.augmented[0] < shard.feature[0]).all()


def test_a_word_swap_swaps_one_adjacent_pair():
    text = "one two three four five six"
    seen = set()
    for i in range(200):
        out = swap_words(text, clip_rng(0, f"t{i}", 0), 1).split()
        moved = [k for k, (a, b) in enumerate(zip(out, text.split(), strict=True)) if a != b]
        assert len(moved) == 2 and moved[1] == moved[0] + 1
        assert sorted(out) == sorted(text.split())
        seen.add(moved[0])
    assert seen == set(range(5))  # every pair, the edges included
    assert swap_words("alone", clip_rng(0, "x", 0), 1) == "alone"
    assert swap_words("a b", clip_rng(0, "x", 0), 1) == "b a"


class OrderEncoder(FakeEncoder):
    """A text encoder that sees word order: feature = [sum of position x word length, 1]."""

    def encode(self, texts, device):
        return torch.tensor([[sum(i * len(w) for i, w in enumerate(t.split())), 1.0]
                             for t in texts])  # fmt: skip


def test_only_train_clips_get_word_swapped_text_copies(videos):
    clips = clips_table(videos, ["ramp40", "still", "ramp10"], {"ramp40": 40, "still": 20,
                                                                "ramp10": 10})  # fmt: skip
    clips["text"] = ["a bb cccc " + "d" * 8 + " " + "e" * 16, "a bb ccc", None]
    clips["split"] = ["train", "val", "train"]
    augment = Augment(count=4, seed=2)
    shard, ledger = extract("text", clips, OrderEncoder(), batch_size=3, augment=augment)
    assert not ledger.rows and shard.augmented.shape == (3, 4, 2)
    assert shard.feature[0, 0] == 98  # 0*1 + 1*2 + 2*4 + 3*8 + 4*16; a swap changes it
    assert (shard.augmented[0, :, 0] != 98).all() and len(
        set(shard.augmented[0, :, 0].tolist())
    ) > 1
    assert shard.augmented[1:].abs().sum() == 0  # val; train without text (absent)
    again, _ = extract("text", clips, OrderEncoder(), batch_size=2, augment=augment)
    assert torch.equal(again.augmented, shard.augmented)
    # A copy that makes the tokenizer raise fails its clip.
    clips["text"] = ["fine words", "a bb", "odd \x00"]
    clips["split"] = "train"
    shard, ledger = extract("text", clips, FakeEncoder(), batch_size=8, augment=augment)
    assert shard.sample_id.tolist() == ["ramp40", "still"] and ledger.rows[0][0] == "ramp10"


def test_merge_writes_augmented_copies_and_the_views_columns(tmp_path):
    paths = {r: [] for r in ("video2d", "video3d", "audio", "text")}
    dims = {"video2d": 4, "video3d": 2, "audio": 3, "text": 5}
    for role, dim in dims.items():
        ids = ["a", "b", "c"] if role != "text" else ["a", "c"]
        shard = shard_of(ids, dim, 1, views=2 if role == "video3d" else 0)
        shard.split = np.array([{"a": "train", "b": "test", "c": "train"}[i] for i in ids])
        shard.augmented = (
            shard.feature[:, None].repeat(1, 2, 1) + torch.tensor([10.0, 20.0])[:, None]
        )
        shard.augmented[shard.split != "train"] = 0
        path = tmp_path / role / "0.zarr"
        write_shard(path, shard, "float32", {"role": role, "views": 2 if role == "video3d" else 0})
        paths[role].append(path)
    out = tmp_path / "features.zarr"
    merge_shards(paths, out, "float32")
    fs = featstore.read_features(out, augmented=True)
    assert fs.attrs["augmented"] == 2 and fs.attrs["view_roles"] == ["video3d"]
    assert fs.attrs["view_columns"] == [4, 6] and fs.views.shape == (3, 2, 2)
    assert torch.equal(fs.views[:, 0], fs.features["video"][:, 4:6] + 0.5)
    assert {m: tuple(x.shape) for m, x in fs.augmented.items()} == {
        "video": (3, 2, 6), "audio": (3, 2, 3), "text": (3, 2, 5)
    }  # fmt: skip
    assert torch.equal(fs.augmented["video"][0, 1], fs.features["video"][0] + 20)
    assert fs.augmented["video"][1].abs().sum() == 0  # b is a test clip
    assert torch.equal(fs.augmented["text"][2, 0], fs.features["text"][2] + 10)  # c: text row 1


@pytest.mark.parametrize("kernel,sigma", [(19, 0.1), (19, 0.3), (19, 1.7), (9, 2.0), (3, 0.8)])
def test_gaussian_blur_equals_torchvisions(kernel, sigma):
    from torchvision.transforms.v2 import functional as F

    from conclugen.features import gaussian_blur

    x = torch.rand(2, 3, 40, 52, generator=torch.Generator().manual_seed(kernel))
    expected = F.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
    assert torch.allclose(gaussian_blur(x, kernel, sigma), expected, atol=1e-5)


@pytest.mark.parametrize("factor", [-0.5, -0.13, 0.0, 0.21, 0.5])
def test_adjust_hue_equals_torchvisions(factor):
    from torchvision.transforms.v2 import functional as F

    from conclugen.features import adjust_hue

    x = torch.rand(2, 3, 40, 52, generator=torch.Generator().manual_seed(1))
    x[0, :, :5] = 0.4  # grey pixels keep their grey
    assert torch.allclose(adjust_hue(x, factor), F.adjust_hue(x, factor), atol=1e-5)


def grid_sample_crop(frames: np.ndarray, boxes: np.ndarray, size: int, views) -> torch.Tensor:
    """crop_frames as it was before the uint8 resize (its reference): every frame's exact
    fractional box sampled by float ``grid_sample``, colour ops on the float crops."""
    from torchvision.transforms.v2 import functional as F

    from conclugen.features import gaussian_blur

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    boxes = torch.from_numpy(clamp_boxes(boxes, x.shape[3], x.shape[2]))
    height, width = x.shape[2:]
    out = []
    for p in [None, *views]:
        b = boxes
        if p is not None:
            x0, y0, w, h = p.crop
            bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            left, top = boxes[:, 0] + x0 * bw, boxes[:, 1] + y0 * bh
            b = torch.stack([left, top, left + w * bw, top + h * bh], 1)
        theta = torch.zeros(len(x), 2, 3)
        theta[:, 0, 0] = (-1.0 if p is not None and p.flip else 1.0) * (b[:, 2] - b[:, 0]) / width
        theta[:, 0, 2] = (b[:, 0] + b[:, 2]) / width - 1
        theta[:, 1, 1] = (b[:, 3] - b[:, 1]) / height
        theta[:, 1, 2] = (b[:, 1] + b[:, 3]) / height - 1
        grid = torch.nn.functional.affine_grid(theta, [len(x), 3, size, size], align_corners=False)
        crop = torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)
        crop = crop / 255
        if p is not None:
            for name, factor in p.jitter or ():
                crop = getattr(F, f"adjust_{name}")(crop, factor)
            if p.gray:
                crop = F.rgb_to_grayscale(crop, num_output_channels=3)
            if p.blur_sigma is not None:
                crop = gaussian_blur(crop, int(0.1 * size) // 2 * 2 + 1, p.blur_sigma)
        out.append((crop.clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.stack(out)


@pytest.fixture(scope="module")
def voxceleb_like(tmp_path_factory):
    """A VoxCeleb2-like clip as ffmpeg makes it: 224x224 H.264 (yuv420p), 25 fps, 2 s."""
    path = tmp_path_factory.mktemp("vox") / "vox.mp4"
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=s=224x224:d=2:r=25", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    str(path)], check=True)  # fmt: skip
    return path


def test_uint8_crops_stay_within_tolerance_of_grid_sample(voxceleb_like):
    """The stated tolerance: a whole-pixel box (the full frame) gives grid_sample's pixels to 1
    of 255; fractional boxes (a face track, the views' crops) shift the sampling by at most
    half a source pixel: a mean difference under 2.5 of 255 on testsrc2's sharp edges."""
    frames, _ = read_frames(voxceleb_like, sample_times(0, 2, 16))
    full = np.tile([0, 0, 224, 224], (len(frames), 1)).astype(np.float32)
    rng = np.random.default_rng(0)
    track = np.c_[rng.uniform(20, 40, (len(frames), 2)), rng.uniform(150, 200, (len(frames), 2))]
    views = [view_params("vox", k, 0) for k in range(6)]
    views.append(ViewParams((0.1, 0.2, 0.6, 0.7), True, None, False, None))  # crop and flip
    assert any(v.blur_sigma for v in views) and any(v.jitter for v in views)
    for boxes in (full, track):
        ours = crop_frames(frames, boxes, 180, views).float()
        reference = grid_sample_crop(frames, boxes.astype(np.float32), 180, views).float()
        diff = (ours - reference).abs()
        assert diff.mean((1, 2, 3, 4)).max() < 2.5
    plain = crop_frames(frames, full, 180)[0].int()
    assert (plain - grid_sample_crop(frames, full, 180, [])[0].int()).abs().max() <= 1
