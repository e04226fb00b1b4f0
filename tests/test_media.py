"""Decoding: frame sampling semantics, audio extraction, probing bad files."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from conclugen.media import MediaError, probe, read_audio, read_frames, sample_times


@pytest.fixture(scope="module")
def ramp(tmp_path_factory):
    """2 s at 25 fps whose frame k has grey level 5k, with a 440 Hz tone at 44.1 kHz."""
    path = tmp_path_factory.mktemp("media") / "ramp.mp4"
    frames = (np.arange(50, dtype=np.uint8) * 5)[:, None, None, None] * np.ones(
        (1, 48, 64, 3), np.uint8
    )
    cmd = ["ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", "64x48", "-r", "25", "-i", "-", "-f", "lavfi", "-i", "sine=f=440:d=2:r=44100",
           "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", "-c:a", "aac", "-shortest",
           str(path)]  # fmt: skip
    subprocess.run(cmd, input=frames.tobytes(), check=True)
    return path


def frame_index(frames):
    return np.round(frames[:, 0, 0, 0] / 5).astype(int)


def test_16fps_sampling_shows_the_frame_on_screen(ramp):
    times = sample_times(0.0, 2.0, 16)
    assert len(times) == 32
    frames, found = read_frames(ramp, times)
    assert frames.shape == (32, 48, 64, 3) and frames.dtype == np.uint8 and found.all()
    np.testing.assert_array_equal(frame_index(frames), np.floor(times * 25 + 1e-6).astype(int))


def test_1fps_frames_are_a_subset_of_16fps(ramp):
    every16, _ = read_frames(ramp, sample_times(0.0, 2.0, 16))
    every1, _ = read_frames(ramp, sample_times(0.0, 2.0, 1))
    np.testing.assert_array_equal(every1, every16[::16])


def test_segment_inside_the_video_and_past_its_end(ramp):
    frames, found = read_frames(ramp, np.array([1.5, 1.9, 1.99, 2.5]))
    np.testing.assert_array_equal(frame_index(frames), [37, 47, 49, 49])
    np.testing.assert_array_equal(found, [True, True, True, False])


def test_audio_is_16k_mono_float(ramp):
    audio = read_audio(ramp)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / 16000 - 2.0) < 0.05
    spectrum = np.abs(np.fft.rfft(audio[:16000]))
    assert abs(np.argmax(spectrum) - 440) < 3  # 1 Hz bins: the tone survives resampling
    part = read_audio(ramp, start=0.5, end=1.0)
    assert len(part) == 8000


def test_probe_measures_and_rejects(ramp, tmp_path):
    info = probe(ramp)
    assert (info.width, info.height, info.frames, round(info.fps)) == (64, 48, 50, 25)
    assert abs(info.duration - 2.0) < 0.05 and info.has_audio and info.audio_peak > 0.1
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty file"):
        probe(empty)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(ramp.read_bytes()[: ramp.stat().st_size // 3])
    with pytest.raises(MediaError):
        probe(cut)
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(MediaError, match="unreadable container"):
        probe(noise)


def test_audio_segment_clamped_to_the_track(ramp):
    """CMU-MOSEI labels may start before 0 or end past the file."""
    whole = read_audio(ramp)
    early = read_audio(ramp, start=-0.3, end=0.5)
    np.testing.assert_array_equal(early, whole[:8000])
    late = read_audio(ramp, start=1.5, end=3.0)  # read by seeking: AAC's noise-substituted
    np.testing.assert_allclose(late, whole[24000:], atol=1e-3)  # bands get other noise
    assert abs(len(late) / 16000 - 0.5) < 0.05
    assert len(read_audio(ramp, start=2.5, end=3.0)) == 0
