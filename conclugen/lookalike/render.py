"""Rendering a planned video: espeak-ng speech and the two chimes, the moving face and its
expression cue on a background, encoded by FFmpeg (runs in worker processes)."""

from __future__ import annotations

import math
import subprocess
import tempfile
import wave
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from conclugen.lookalike.plan import (
    BROWS,
    CROP_H,
    CROP_W,
    EYES,
    FACE_CENTRE,
    FACE_IN_CROP,
    FPS,
    HEAD_CROP,
    HEAD_ELLIPSE,
    LEVEL_TONES,
    MOUTH,
    NOSE,
    SAMPLES_PER_FRAME,
    SPEECH_LEAD_S,
    SPEECH_RATE,
    SPEECH_TAIL_S,
    TONE_AMPLITUDE,
    TONES,
    TRUNCATE_TO,
    Look,
    Motion,
    Sample,
    Speech,
    Video,
)


def speak(speech: Speech) -> np.ndarray:
    """espeak-ng's int16 samples at 22.05 kHz, leading and trailing silence trimmed."""
    prosody = ["-p", str(speech.pitch), "-s", str(speech.speed), "-a", str(speech.amplitude)]
    cmd = ["espeak-ng", "-v", speech.voice, *prosody, "-g", "2", "--stdout", speech.text]
    wav = subprocess.run(cmd, capture_output=True, check=True).stdout
    # --stdout streams, so the RIFF sizes are placeholders: take everything after the data tag.
    data = wav[wav.index(b"data") + 8 :]
    samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
    loud = np.flatnonzero(np.abs(samples) > 100)
    if loud.size == 0:
        raise RuntimeError(f"espeak-ng produced no sound for {speech}")
    pad = SPEECH_RATE // 50
    return samples[max(0, loud[0] - pad) : loud[-1] + pad].copy()


def _chimes(sample: Sample, length: int, speech: slice) -> np.ndarray:
    """The class and level tones (:data:`TONES`, :data:`LEVEL_TONES`) over ``length`` samples,
    silent over ``speech`` (the sentence's samples, relative to the clip's first)."""
    t = np.arange(length) / SPEECH_RATE
    hz = (TONES[sample.expression], LEVEL_TONES[sample.level])
    out = sum(TONE_AMPLITUDE * np.sin(2 * np.pi * f * t) for f in hz).astype(np.int32)
    out[speech] = 0
    return out


def layout(video: Video, speech_samples: Mapping[Speech, int]) -> None:
    """Fix each sample's frame range: at least its nominal length, long enough for its speech."""
    gaps = video.gaps or (0,) * (len(video.samples) + 1)
    frame = gaps[0]
    for sample, gap in zip(video.samples, gaps[1:], strict=True):
        needed = SPEECH_LEAD_S + speech_samples[sample.speech] / SPEECH_RATE + SPEECH_TAIL_S
        sample.first = frame
        sample.last = frame + max(sample.nominal_frames, math.ceil(needed * FPS))
        frame = sample.last + gap
    video.frames = frame


def placement(motion: Motion, frame: int) -> tuple[int, int, int, int]:
    """Where the head patch goes in one frame: ``(x, y, width, height)``."""
    t = frame / FPS
    wave = lambda hz, phase: math.sin(2 * math.pi * hz * t + phase)  # noqa: E731
    scale = motion.scale * (1 + motion.zoom * wave(motion.zoom_hz, motion.zoom_phase))
    width, height = round(scale * CROP_W), round(scale * CROP_H)
    cx = motion.cx + motion.ax * wave(motion.x_hz, motion.x_phase)
    cy = motion.cy + motion.ay * wave(motion.y_hz, motion.y_phase)
    x = round(cx - FACE_CENTRE[0] * width / CROP_W)
    y = round(cy - FACE_CENTRE[1] * height / CROP_H)
    return x, y, width, height


def face_box(placement: tuple[int, int, int, int]) -> list[float]:
    x, y, width, height = placement
    sx, sy = width / CROP_W, height / CROP_H
    x1, y1, x2, y2 = FACE_IN_CROP
    return [round(v, 1) for v in (x + sx * x1, y + sy * y1, x + sx * x2, y + sy * y2)]


# --- rendering (runs in the worker processes) ---------------------------------------------------


@dataclass
class RenderJob:
    """Everything a worker needs to write one media file (and VoxCeleb2's .m4a)."""

    path: str
    m4a_path: str | None
    container: str
    width: int
    height: int
    audio_rate: int
    channels: int
    background_seed: int
    looks: list[Look | None]  # per frame; None: no face
    placements: list[tuple[int, int, int, int]]
    audio: np.ndarray | None  # int16 at SPEECH_RATE; None: no audio stream
    damage: str | None  # "zero_bytes" or "truncated", applied after encoding


def render_job(video: Video, speech_audio: Mapping[Speech, np.ndarray], media: Path) -> RenderJob:
    plain = Look(None)
    looks: list[Look | None] = [plain] * video.frames
    audio = np.zeros(video.frames * SAMPLES_PER_FRAME, dtype=np.int16)
    silent = video.kind(("silent_audio",)) is not None
    for sample in video.samples:
        look = None if sample.bad == "no_face" else sample.look
        looks[sample.first : sample.last] = [look] * (sample.last - sample.first)
        if not silent:
            at = sample.first * SAMPLES_PER_FRAME + round(SPEECH_LEAD_S * SPEECH_RATE)
            speech = speech_audio[sample.speech]
            audio[at : at + len(speech)] = speech
            span = slice(sample.first * SAMPLES_PER_FRAME, sample.last * SAMPLES_PER_FRAME)
            spoken = slice(at - span.start, at - span.start + len(speech))
            chimes = _chimes(sample, span.stop - span.start, spoken)
            audio[span] = np.clip(audio[span] + chimes, -32767, 32767)
    has_audio = video.kind(("no_audio",)) is None
    return RenderJob(
        path=str(media / video.member),
        m4a_path=str(media / video.m4a_member) if video.m4a_member and has_audio else None,
        container=video.container,
        width=video.width,
        height=video.height,
        audio_rate=video.audio_rate,
        channels=video.channels,
        background_seed=video.background_seed,
        looks=looks,
        placements=[placement(video.motion, f) for f in range(video.frames)],
        audio=audio if has_audio else None,
        damage=video.kind(("zero_bytes", "truncated")),
    )


@cache
def _photo() -> tuple[Image.Image, Image.Image]:
    """The head crop of grace_hopper.jpg and its feathered elliptical mask."""
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    with Image.open(path) as image:
        head = image.convert("RGB").crop(HEAD_CROP)
    mask = Image.new("L", head.size, 0)
    x0, y0 = HEAD_CROP[:2]
    ex0, ey0, ex1, ey1 = HEAD_ELLIPSE
    ImageDraw.Draw(mask).ellipse((ex0 - x0, ey0 - y0, ex1 - x0, ey1 - y0), fill=255)
    return head, mask.filter(ImageFilter.GaussianBlur(6))


def _head(look: Look) -> Image.Image:
    """The RGBA head patch (crop resolution) with the look's tint and cue drawn on."""
    head, mask = _photo()
    head = head.copy()
    if look.expression is not None:
        head = Image.blend(head, Image.new("RGB", head.size, look.tint), look.tint_strength)
        _draw_cue(ImageDraw.Draw(head), look)
    head.putalpha(mask)
    return head


def _draw_cue(draw: ImageDraw.ImageDraw, look: Look) -> None:
    """Mouth and brow shapes of the look's class at the photo's landmarks (crop coordinates)."""
    ox, oy = HEAD_CROP[:2]
    mx, my = MOUTH[0] - ox, MOUTH[1] - oy
    half, k, w = 37 * look.mouth_width, look.curve, look.stroke
    lips, brow_colour = (95, 20, 25), (45, 28, 20)
    outer_dy, inner_dy = BROWS[look.expression]
    for (ex, ey), side in zip(EYES, (-1, 1), strict=True):
        base = ey - oy - 28 + look.brow_lift
        outer = (ex - ox + 26 * side, base + outer_dy)
        inner = (ex - ox - 22 * side, base + inner_dy)
        draw.line((outer, inner), fill=brow_colour, width=w)
    e = look.expression
    if e == "happy":
        draw.arc((mx - half, my - 14 * k, mx + half, my + 16 * k), 15, 165, fill=lips, width=w)
    elif e == "sad":
        box = (mx - 0.85 * half, my + 2, mx + 0.85 * half, my + 2 + 28 * k)
        draw.arc(box, 195, 345, fill=lips, width=w)
    elif e == "anger":
        inner = 0.6 * half
        points = [(mx - half, my + 7), (mx - inner, my), (mx + inner, my), (mx + half, my + 7)]
        draw.line(points, fill=lips, width=w + 2, joint="curve")
    elif e == "surprise":
        draw.ellipse((mx - 14 * k, my - 14 * k, mx + 14 * k, my + 22 * k), fill=(40, 10, 10))
    elif e == "fear":
        box = (mx - 0.75 * half, my - 5 * k, mx + 0.75 * half, my + 10 * k)
        draw.ellipse(box, fill=(40, 10, 10), outline=lips, width=3)
    elif e == "disgust":
        points = [
            (mx - half, my + 4),
            (mx - 0.3 * half, my - 2),
            (mx + 0.3 * half, my + 4),
            (mx + half, my - 10 * k),
        ]
        draw.line(points, fill=lips, width=w, joint="curve")
        nx, ny = NOSE[0] - ox, NOSE[1] - oy
        for side in (-1, 1):  # wrinkled nose
            wrinkle = ((nx + 15 * side, ny - 12), (nx + 8 * side, ny - 3))
            draw.line(wrinkle, fill=brow_colour, width=3)
    else:  # neutral
        draw.line(((mx - 0.9 * half, my), (mx + 0.9 * half, my)), fill=lips, width=max(3, w - 2))


def _background(width: int, height: int, seed: int) -> Image.Image:
    """A room-ish backdrop: a vertical colour ramp and a few furniture-like blocks."""
    rng = np.random.default_rng(seed)
    top, bottom = rng.integers(40, 220, 3), rng.integers(40, 220, 3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp) * np.ones((1, width, 1))
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(20, width // 2)), y0 + int(rng.integers(20, height // 2))
        colour = tuple(int(c) for c in rng.integers(20, 235, 3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
    return image


def _frames(job: RenderJob) -> Iterator[bytes]:
    background = _background(job.width, job.height, job.background_seed)
    heads: dict[Look, Image.Image] = {}
    patches: dict[tuple[Look, int, int], Image.Image] = {}  # the zoom revisits a few sizes
    for look, (x, y, width, height) in zip(job.looks, job.placements, strict=True):
        frame = background.copy()
        if look is not None:
            if look not in heads:
                heads[look] = _head(look)
            if (look, width, height) not in patches:
                patches[look, width, height] = heads[look].resize((width, height), Image.BILINEAR)
            patch = patches[look, width, height]
            frame.paste(patch, (x, y), patch)
        yield frame.tobytes()


def _ffmpeg_command(job: RenderJob, wav: str | None) -> list[str]:
    """Raw RGB frames on stdin (+ the wav) -> the clip (+ VoxCeleb2's .m4a), metadata-free."""
    exact = "-fflags +bitexact -flags +bitexact -map_metadata -1".split()
    audio = ["-ar", str(job.audio_rate), "-ac", str(job.channels)]
    cmd = "ffmpeg -hide_banner -loglevel error -y -f rawvideo -pix_fmt rgb24".split()
    cmd += ["-s", f"{job.width}x{job.height}", "-framerate", str(FPS), "-i", "pipe:0"]
    cmd += ["-i", wav, "-map", "0:v", "-map", "1:a", *audio] if wav else ["-map", "0:v"]
    if job.container == "avi":  # CAER: Xvid-style MPEG-4 part 2 with mp3
        cmd += "-c:v mpeg4 -vtag XVID -q:v 4 -c:a libmp3lame -b:a 96k".split()
    else:
        cmd += "-c:v libx264 -preset ultrafast -pix_fmt yuv420p -c:a aac -b:a 64k".split()
        # Without faststart the index (moov) sits at the end, which a truncation then cuts off.
        if job.damage != "truncated":
            cmd += ["-movflags", "+faststart"]
    cmd += [*exact, job.path]
    if wav and job.m4a_path:
        cmd += ["-map", "1:a", "-c:a", "aac", "-b:a", "48k", *audio, *exact, job.m4a_path]
    return cmd


def render(job: RenderJob) -> None:
    """Encode one job's frames (piped raw to ffmpeg) and audio, then apply its damage."""
    Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    if job.m4a_path:
        Path(job.m4a_path).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lookalike-") as tmp:
        wav = None
        if job.audio is not None:
            wav = str(Path(tmp) / "audio.wav")
            _write_wav(wav, job.audio)
        proc = subprocess.Popen(
            _ffmpeg_command(job, wav), stdin=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            for frame in _frames(job):
                proc.stdin.write(frame)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg died: its stderr says why
        error = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise RuntimeError(f"ffmpeg failed writing {job.path}: {error[-2000:]}")
    if job.damage == "zero_bytes":
        Path(job.path).write_bytes(b"")
    elif job.damage == "truncated":
        data = Path(job.path).read_bytes()
        Path(job.path).write_bytes(data[: int(len(data) * TRUNCATE_TO)])


def _write_wav(path: str, samples: np.ndarray) -> None:
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SPEECH_RATE)
        out.writeframes(samples.astype("<i2").tobytes())
