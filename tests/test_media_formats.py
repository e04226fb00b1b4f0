"""Odd and hostile media: display rotation, anamorphic pixels, pixel formats, interlacing,
variable frame rate, non-zero start timestamps, audio rates and channel counts, broken files."""

from __future__ import annotations

import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest

from conclugen.media import (
    DAMAGED_TOLERANCE,
    MediaError,
    probe,
    read_audio,
    read_frames,
    sample_times,
)
from tests.hostile_media import face_clip

W, H = 64, 48


def ffmpeg(*args, stdin: bytes | None = None) -> bytes:
    cmd = ["ffmpeg", "-y", "-loglevel", "error", *map(str, args)]
    return subprocess.run(cmd, input=stdin, check=True, capture_output=True).stdout


def raw_input(frames: np.ndarray, fps: int = 25) -> list:
    """ffmpeg arguments reading ``frames`` ([T, H, W, 3] uint8) from stdin."""
    t, h, w, _ = frames.shape
    return ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", fps, "-i", "-"]


def ramp(n: int = 50) -> np.ndarray:
    """Frame k is flat grey at level 5k: a decoded frame tells which frame it is."""
    return (np.arange(n, dtype=np.uint8) * 5)[:, None, None, None] * np.ones((1, H, W, 3), np.uint8)


def frame_index(frames: np.ndarray) -> np.ndarray:
    return np.round(frames[:, H // 2, W // 2, 0] / 5).astype(int)


def marked(n: int = 10) -> np.ndarray:
    """Grey frames with a red 16x16 block in the top-left corner: shows orientation and aspect."""
    frames = np.full((n, H, W, 3), 128, np.uint8)
    frames[:, :16, :16] = (255, 0, 0)
    return frames


def is_red(pixel) -> bool:
    return pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


# ------------------------------------------------------------------------------------------------
# Display rotation and anamorphic video


@pytest.fixture(scope="module")
def upright(tmp_path_factory):
    path = tmp_path_factory.mktemp("rotation") / "upright.mp4"
    frames = marked()
    ffmpeg(*raw_input(frames, 10), "-c:v", "libx264", "-qp", 0, "-pix_fmt", "yuv444p", path,
           stdin=frames.tobytes())  # fmt: skip
    return path


def with_rotation(source, out, angle: int):
    """A stream copy of ``source`` carrying a display rotation, as phones write them."""
    try:  # FFmpeg >= 6
        ffmpeg("-display_rotation", angle, "-i", source, "-c", "copy", out)
    except subprocess.CalledProcessError:  # older FFmpeg turns the rotate tag into the matrix
        ffmpeg("-i", source, "-c", "copy", "-metadata:s:v", f"rotate={angle}", out)


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_rotated_clip_is_read_upright(upright, tmp_path, angle):
    rotated = tmp_path / f"rotated {angle}.mp4"
    with_rotation(upright, rotated, angle)
    info = probe(rotated)
    assert (info.width, info.height) == ((W, H) if angle == 180 else (H, W))
    times = sample_times(0.0, 1.0, 10)
    frames, found = read_frames(rotated, times)
    assert frames.shape == (10, info.height, info.width, 3) and found.all()
    # What FFmpeg's player path shows (it applies the display matrix by default).
    shown = np.frombuffer(
        ffmpeg("-i", rotated, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"), np.uint8
    )
    shown = shown.reshape(frames.shape)
    assert np.abs(frames.astype(int) - shown).max() <= 3
    # The very pixels of the upright source, turned (nothing resampled); the block has moved.
    source, _ = read_frames(upright, times)
    assert any(np.array_equal(frames, np.rot90(source, k, axes=(1, 2))) for k in (1, 2, 3))
    assert not is_red(frames[0, 2, 2])


@pytest.mark.parametrize(("sar", "width"), [("2", 2 * W), ("1/2", W // 2), ("100", W)])
def test_anamorphic_video_is_scaled_to_square_pixels(tmp_path, sar, width):
    """A sample aspect ratio stretches the width as a player does; an absurd one is ignored."""
    path = tmp_path / "anamorphic.mp4"
    frames = marked()
    ffmpeg(*raw_input(frames, 10), "-vf", f"setsar={sar}", "-c:v", "libx264", "-qp", 0,
           "-pix_fmt", "yuv444p", path, stdin=frames.tobytes())  # fmt: skip
    with av.open(str(path)) as container:
        assert container.streams.video[0].sample_aspect_ratio == Fraction(sar)
    info = probe(path)
    assert (info.width, info.height) == (width, H)
    decoded, _ = read_frames(path, sample_times(0.0, 1.0, 10))
    assert decoded.shape == (10, H, width, 3)
    block = 16 * width // W  # the 16-pixel block, as wide as the frame is scaled
    assert is_red(decoded[0, 8, block - 3]) and not is_red(decoded[0, 8, block + 3])


# ------------------------------------------------------------------------------------------------
# Pixel formats, interlacing, containers with non-zero start timestamps

FORMATS = {
    "yuv420p10le": ("mp4", ["-c:v", "libx264", "-qp", 0, "-pix_fmt", "yuv420p10le"]),
    "yuv422p10le": ("mp4", ["-c:v", "libx264", "-qp", 0, "-pix_fmt", "yuv422p10le"]),
    "interlaced h264": (
        "mp4", ["-c:v", "libx264", "-qp", 0, "-pix_fmt", "yuv420p", "-flags", "+ildct+ilme"],
    ),
    # MPEG-PS timestamps start near 0.5 s: times still count from the file's start.
    "interlaced mpeg2 in mpeg-ps": (
        "mpg", ["-c:v", "mpeg2video", "-q:v", 1, "-flags", "+ildct+ilme", "-pix_fmt", "yuv420p"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(FORMATS))
def test_pixel_formats_and_interlacing_decode_to_rgb(tmp_path, name):
    ext, codec = FORMATS[name]
    path = tmp_path / f"clip.{ext}"
    ffmpeg(*raw_input(ramp()), *codec, path, stdin=ramp().tobytes())
    with av.open(str(path)) as container:
        first = next(container.decode(video=0))
        assert first.format.name == codec[codec.index("-pix_fmt") + 1]
        assert first.interlaced_frame == ("interlaced" in name)
    info = probe(path)
    assert (info.width, info.height, info.frames, round(info.fps)) == (W, H, 50, 25)
    assert abs(info.duration - 2.0) < 0.05
    times = sample_times(0.0, 2.0, 16)
    frames, found = read_frames(path, times)
    assert frames.shape == (32, H, W, 3) and frames.dtype == np.uint8 and found.all()
    np.testing.assert_array_equal(frame_index(frames), np.floor(times * 25 + 1e-6).astype(int))


def test_variable_frame_rate_picks_the_frame_on_screen(tmp_path):
    path = tmp_path / "vfr.mp4"
    shown_at = np.array([0, 40, 80, 300, 340, 700, 1000, 1500, 1540]) / 1000
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv444p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for k, t in enumerate(shown_at):
            frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), 5 * k, np.uint8), "rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert probe(path).frames == len(shown_at)
    times = sample_times(0.0, 1.6, 16)
    frames, found = read_frames(path, times)
    expected = np.searchsorted(shown_at, times + 1e-6, side="right") - 1
    np.testing.assert_array_equal(frame_index(frames), expected)
    assert found.all()


def test_frame_size_changing_midway_keeps_the_first_size(tmp_path):
    """Two MPEG-TS files of different sizes, concatenated (as broadcast captures are)."""
    parts = []
    for size, colour, offset in (("64x48", "red", 0), ("32x24", "blue", 1)):
        part = tmp_path / f"{size}.ts"
        ffmpeg("-f", "lavfi", "-i", f"color=c={colour}:s={size}:d=1:r=25", "-c:v", "libx264",
               "-pix_fmt", "yuv420p", "-output_ts_offset", offset, "-f", "mpegts",
               part)  # fmt: skip
        parts.append(part.read_bytes())
    path = tmp_path / "joined.ts"
    path.write_bytes(b"".join(parts))
    with av.open(str(path)) as container:
        assert {(f.width, f.height) for f in container.decode(video=0)} == {(64, 48), (32, 24)}
    info = probe(path)
    assert (info.width, info.height, info.frames) == (W, H, 50)
    frames, found = read_frames(path, sample_times(0.0, 1.9, 4))
    assert frames.shape == (7, H, W, 3) and found.all()
    assert is_red(frames[0, H // 2, W // 2]) and frames[-1, H // 2, W // 2, 2] > 200  # blue


# ------------------------------------------------------------------------------------------------
# Audio: sample rates, channel counts, codecs


def tone_file(path, rate: int, channels: int, codec: str, seconds: float = 1.0):
    """A 1 kHz tone at 0.875 of full scale, the same in every channel."""
    pan = "|".join(f"c{i}=c0" for i in range(channels))
    ffmpeg("-f", "lavfi", "-i", f"sine=f=1000:d={seconds}:r={rate}",
           "-af", f"volume=7,pan={channels}c|{pan}", "-c:a", codec, path)  # fmt: skip


AUDIO = [
    (rate, ch, "pcm_s16le", "wav") for rate in (8000, 44100, 48000, 96000) for ch in (1, 2, 6, 8)
]
AUDIO += [(48000, 6, "aac", "m4a"), (44100, 2, "aac", "m4a"), (8000, 1, "aac", "m4a"),
          (96000, 8, "aac", "m4a")]  # fmt: skip


@pytest.mark.parametrize(("rate", "channels", "codec", "ext"), AUDIO)
def test_audio_is_16k_mono_with_its_tone(tmp_path, rate, channels, codec, ext):
    path = tmp_path / f"tone.{ext}"
    tone_file(path, rate, channels, codec)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert (stream.sample_rate, stream.channels) == (rate, channels)
    audio = read_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / 16000 - 1.0) < 0.05
    spectrum = np.abs(np.fft.rfft(audio[:16000], n=16000))
    assert abs(np.argmax(spectrum) - 1000) <= 2  # 1 Hz bins
    # The downmix never exceeds full scale (unnormalised, 6 equal channels would give 3.4 x).
    assert 0.5 < np.abs(audio).max() <= 1.0


def test_audio_whose_sample_rate_changes_midway(tmp_path):
    """Two ADTS streams at different rates, concatenated, read as one track."""
    parts = []
    for rate in (44100, 22050):
        part = tmp_path / f"{rate}.aac"
        tone_file(part, rate, 1, "aac")
        parts.append(part.read_bytes())
    path = tmp_path / "joined.aac"
    path.write_bytes(b"".join(parts))
    audio = read_audio(path)
    assert abs(len(audio) / 16000 - 2.0) < 0.15  # raw ADTS keeps each part's priming and padding
    assert abs(np.argmax(np.abs(np.fft.rfft(audio[-16000:]))) - 1000) <= 2


def test_audio_starting_after_the_video_keeps_its_place(tmp_path):
    """A track that starts 0.5 s into the file: times are the file's, so the gap stays out."""
    path = tmp_path / "late audio.mp4"
    ffmpeg("-f", "lavfi", "-i", f"testsrc=s={W}x{H}:d=2:r=25", "-itsoffset", 0.5, "-f", "lavfi",
           "-i", "sine=f=1000:d=1.5", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
           path)  # fmt: skip
    assert abs(len(read_audio(path, start=0.0, end=1.0)) / 16000 - 0.5) < 0.05
    assert abs(len(read_audio(path, start=1.0, end=2.0)) / 16000 - 1.0) < 0.01


# ------------------------------------------------------------------------------------------------
# Audio segments read by seeking: what decoding the whole track and slicing gives

SPEECHLIKE = (
    "0.4*sin(2*PI*220*t-85.7*cos(2*PI*0.7*t))*(0.6+0.4*sin(2*PI*3*t))"  # 220 +- 60 Hz, 3 Hz AM
)
NO_PNS = ["-c:a", "aac", "-aac_pns", "0"]  # noise substitution: see the test after next
SEEKABLE = [  # (name, codec arguments, input rate, channels, LSBs of difference allowed)
    ("aac.mp4", NO_PNS, 44100, 2, 0),
    ("aac.m4a", NO_PNS, 48000, 1, 0),
    ("opus.mkv", ["-c:a", "libopus"], 48000, 2, 1),  # decoder state a seek cannot restore
    ("opus.webm", ["-c:a", "libopus"], 48000, 1, 1),
    ("pcm.wav", ["-c:a", "pcm_s16le"], 22050, 1, 0),
    ("pcm6.wav", ["-c:a", "pcm_s16le"], 8000, 6, 0),
    ("cbr.mp3", ["-c:a", "libmp3lame", "-b:a", "128k"], 44100, 2, 0),
    ("vbr.mp3", ["-c:a", "libmp3lame", "-q:a", "4"], 22050, 1, 0),
    ("flac.flac", ["-c:a", "flac"], 96000, 2, 0),
]
SEGMENTS = [(0.0, 2.0), (0.0, None), (0.7, 1.5), (3.37, 7.1), (6.2, None), (11.9, 12.0),
            (11.95, 20.0)]  # fmt: skip


def seek_file(path, args, rate, channels, seconds=12.0, noise=0.0, offset=None):
    """``seconds`` of SPEECHLIKE (plus white noise of amplitude ``noise``) in every channel,
    the track starting ``offset`` seconds into the file (beside a video) when given."""
    voice = f"aevalsrc={SPEECHLIKE}:s={rate}:d={seconds}"
    mix = f"[0]pan={channels}c|" + "|".join(f"c{i}=c0" for i in range(channels))
    if noise:
        voice += f"[v];anoisesrc=r={rate}:d={seconds}:a={noise}[n];[v][n]amix=2:normalize=0"
    video = []
    if offset is not None:
        video = ["-f", "lavfi", "-i", f"testsrc=s={W}x{H}:d={seconds + offset}:r=25",
                 "-itsoffset", offset]  # fmt: skip
    mix = mix.replace("[0]", "[1]") if video else mix
    ffmpeg(*video, "-f", "lavfi", "-i", voice, "-filter_complex", mix,
           *(["-c:v", "libx264", "-pix_fmt", "yuv420p"] if video else []), *args, path)  # fmt: skip


@pytest.fixture
def seeks(monkeypatch):
    """Whether each seek read_audio tried since gave the segment (one close to 0 tries none)."""
    import conclugen.media as media

    taken, seeked = [], media._seeked

    def spy(*args):
        out = seeked(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(media, "_seeked", spy)
    return taken


def whole_then_sliced(path, rate, start, end) -> np.ndarray:
    """The segment as read_audio read it before seeking: the whole track decoded, then cut."""
    import conclugen.media as media

    with av.open(str(path)) as container:
        stream, first, last = media._audio_range(container, rate, start, end)
        whole = media._decoded(container.decode(stream), rate, None)
    return whole[first:last].astype(np.float32) / 32768


def assert_same_segment(path, rate, start, end, lsb=0, seeks=None):
    """read_audio's segment is the whole track's sliced, within ``lsb`` 16-bit steps, read by
    seeking as ``seeks[-1]`` says (a segment near 0 is read from the start, the others seek)."""
    before = len(seeks) if seeks is not None else 0
    got, want = read_audio(path, rate, start, end), whole_then_sliced(path, rate, start, end)
    assert len(got) == len(want)
    if len(want):
        assert np.abs(got - want).max() <= lsb / 32768
    if seeks is not None:
        assert (seeks[before:] == [True]) == (start > 1.0)


@pytest.mark.parametrize(("name", "args", "rate", "channels", "lsb"), SEEKABLE)
def test_audio_segment_read_by_seeking_is_the_whole_track_sliced(
    tmp_path, seeks, name, args, rate, channels, lsb
):
    path = tmp_path / name
    seek_file(path, args, rate, channels)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert (stream.sample_rate, stream.channels) == (rate, channels)
    for start, end in SEGMENTS:
        for out_rate in (16000, 22050):
            assert_same_segment(path, out_rate, start, end, lsb, seeks)
    assert len(read_audio(path, 16000, 12.5, 14.0)) == 0  # past the end (read from the start)
    assert abs(len(read_audio(path, 16000, 11.0, None)) / 16000 - 1.0) < 0.05


def test_audio_segment_read_by_seeking_with_a_late_track(tmp_path, seeks):
    """A track starting 0.5 s into the file (non-zero start_time): its place is kept."""
    path = tmp_path / "late.mp4"
    seek_file(path, NO_PNS, 44100, 2, offset=0.5)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert float(stream.start_time * stream.time_base) > 0.4
        late = float(stream.start_time * stream.time_base)
    for start, end in [(0.2, 3.0), (4.0, 6.5), (9.99, None), (12.0, 12.6)]:
        assert_same_segment(path, 16000, start, end, seeks=seeks)
    at = round((4.0 - late) * 16000)  # the whole track's sample playing at 4 s
    np.testing.assert_array_equal(read_audio(path, 16000, 4.0, 6.5), read_audio(path)[at:][:40000])


def test_aac_noise_substitution_after_a_seek_is_other_noise_of_the_same_energy(tmp_path, seeks):
    """FFmpeg's AAC decoder fills noise-coded bands (PNS) from a generator it never resets, so
    after a seek those bands hold other noise: the band energies agree within 0.1 dB, the
    waveform differs only by that noise (here loud white noise, most of the spectrum)."""
    path = tmp_path / "noisy.m4a"
    seek_file(path, ["-c:a", "aac"], 44100, 2, noise=0.1)
    got, want = read_audio(path, 16000, 4.3, 9.3), whole_then_sliced(path, 16000, 4.3, 9.3)
    assert seeks[-1] and len(got) == len(want) == 80000
    bands = np.array_split(np.arange(40001), 16)  # 500-Hz bands of the 0-8 kHz spectrum
    power = [np.abs(np.fft.rfft(x)) ** 2 for x in (got, want)]
    ratio_db = [10 * np.log10(power[0][b].sum() / power[1][b].sum()) for b in bands]
    assert np.abs(ratio_db).max() < 0.1
    assert np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2)) < 0.2


def test_audio_whose_timestamps_cannot_place_samples_is_read_from_the_start(tmp_path, seeks):
    """Matroska counts milliseconds: AAC's 1024 samples at 44.1 kHz and FLAC's 8192 at 96 kHz
    get rounded timestamps, so these tracks are decoded from the start."""
    for name, args, rate in [("aac.mkv", NO_PNS, 44100), ("flac.mkv", ["-c:a", "flac"], 96000)]:
        seek_file(tmp_path / name, args, rate, 2)
        assert_same_segment(tmp_path / name, 16000, 5.0, 6.0)
    assert seeks == [False, False]


def test_audio_that_changes_rate_midway_is_read_from_the_start(tmp_path, seeks):
    """Concatenated ADTS at two rates: a seek cannot place samples, the whole track is read."""
    parts = []
    for rate in (44100, 22050):
        part = tmp_path / f"{rate}.aac"
        tone_file(part, rate, 1, "aac", seconds=3.0)
        parts.append(part.read_bytes())
    path = tmp_path / "joined.aac"
    path.write_bytes(b"".join(parts))
    got = read_audio(path, 16000, 4.0, 5.0)
    np.testing.assert_array_equal(got, whole_then_sliced(path, 16000, 4.0, 5.0))
    assert seeks == [False]


# ------------------------------------------------------------------------------------------------
# Hostile files: probe gives a MediaError with a reason, or works


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """2 s of 320x240 test pattern with a tone: enough coded data to damage in the middle."""
    path = tmp_path_factory.mktemp("hostile") / "clip.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x240:d=2:r=25", "-f", "lavfi", "-i", "sine=d=2",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", path)  # fmt: skip
    return path


def test_text_file_named_avi(tmp_path):
    path = tmp_path / "notes.avi"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(MediaError, match="unreadable container"):
        probe(path)


@pytest.mark.parametrize("every", [1, 7])
def test_bit_flipped_mp4(clip, tmp_path, every):
    """Bytes flipped in the middle: every byte of a third (the decoder refuses a packet), or every
    7th byte of 4 kB (the decoder patches the damaged frames up and flags them corrupt)."""
    data = bytearray(clip.read_bytes())
    third = len(data) // 3
    for i in range(third, 2 * third if every == 1 else third + 4096, every):
        data[i] ^= 0xFF
    path = tmp_path / "flipped.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(MediaError, match="corrupt video stream"):
        probe(path)


def test_audio_only_file(tmp_path):
    path = tmp_path / "speech.m4a"
    tone_file(path, 44100, 2, "aac")
    with pytest.raises(MediaError, match="no video stream"):
        probe(path)


def test_video_only_file_is_kept_without_audio(tmp_path):
    path = tmp_path / "silent film.mp4"
    ffmpeg(*raw_input(ramp()), "-c:v", "libx264", "-pix_fmt", "yuv420p", path,
           stdin=ramp().tobytes())  # fmt: skip
    info = probe(path)
    assert info.frames == 50 and not info.has_audio and info.audio_peak == 0.0
    with pytest.raises(MediaError, match="no audio stream"):
        read_audio(path)


@pytest.mark.parametrize("codec", [("mp4", "libx264"), ("avi", "mpeg4")])
def test_one_frame_clip(tmp_path, codec):
    """A 1/25 s clip with sound; its AVI header counts 3 frames, which is no truncation."""
    ext, encoder = codec
    path = tmp_path / f"one.{ext}"
    ffmpeg("-f", "lavfi", "-i", f"color=c=gray:s={W}x{H}:r=25", "-f", "lavfi", "-i", "sine",
           "-t", 0.04, "-c:v", encoder, "-pix_fmt", "yuv420p", "-c:a", "aac", path)  # fmt: skip
    info = probe(path)
    assert info.frames == 1 and abs(info.duration - 0.04) < 1e-6 and info.has_audio
    frames, found = read_frames(path, np.array([0.0, 0.02, 0.5]))
    assert frames.shape == (3, H, W, 3)
    np.testing.assert_array_equal(found, [True, True, False])  # it lasts 1/25 s


def test_unicode_file_name_with_spaces(clip, tmp_path):
    path = tmp_path / "Café déjà vu 日本語 clip.mp4"
    path.write_bytes(clip.read_bytes())
    info = probe(path)
    assert (info.width, info.height, info.frames) == (320, 240, 50) and info.has_audio
    frames, found = read_frames(path, sample_times(0.0, 2.0, 1))
    assert frames.shape == (2, 240, 320, 3) and found.all()
    assert abs(len(read_audio(path)) / 16000 - 2.0) < 0.05


def test_a_few_damaged_frames_are_counted_not_fatal(tmp_path):
    """Flipped bytes inside one MPEG-4 frame: the decoder conceals it, the clip stays usable."""
    data = bytearray(face_clip(tmp_path / "whole.avi").read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 4096, 7):
        data[i] ^= 0xFF
    path = tmp_path / "damaged.avi"
    path.write_bytes(bytes(data))
    info = probe(path)
    assert 0 < info.damaged <= DAMAGED_TOLERANCE * info.frames
