"""Decoding video and audio: the one place that touches media files (PyAV, which bundles FFmpeg).

torchvision 0.29 reads no video any more; PyAV decodes every container the datasets use (mp4/H.264,
avi/MPEG-4 part 2, m4a/AAC, mp3) without a system FFmpeg.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import av
import numpy as np

#: Audio whose peak absolute amplitude stays below this (full scale = 1.0) counts as silent.
SILENCE_PEAK = 1e-4
#: A stream whose demuxed frames fall short of the header's count by more than this is truncated.
TRUNCATION_TOLERANCE = 0.1


class MediaError(Exception):
    """A media file that cannot be used; the message is the reason written to the ledger."""


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` learnt about one file."""

    duration: float  # seconds, from the demuxed video packets
    fps: float
    width: int
    height: int
    frames: int  # demuxed video packets
    has_audio: bool
    audio_peak: float  # max |sample| over the whole track, 0 without audio


def probe(path: str | os.PathLike) -> MediaInfo:
    """Check that ``path`` is a usable video and measure it, or raise :class:`MediaError`.

    Demuxes every packet (cheap: nothing is decoded) to catch truncated files whose header
    promises more frames than the file holds, decodes the first video frame, and decodes the
    audio track to find silent audio.
    """
    if not os.path.exists(path):
        raise MediaError("file missing")
    if os.path.getsize(path) == 0:
        raise MediaError("empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(f"unreadable container: {e}") from None
    with container:
        if not container.streams.video:
            raise MediaError("no video stream")
        video = container.streams.video[0]
        fps = float(video.average_rate or video.guessed_rate or 0)
        header_frames = video.frames
        first_pts = last_pts = None
        frames = 0
        try:
            for packet in container.demux(video):
                if packet.size == 0 or packet.pts is None:
                    continue
                frames += 1
                first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
                last_pts = packet.pts if last_pts is None else max(last_pts, packet.pts)
        except av.FFmpegError as e:
            raise MediaError(f"corrupt video stream after {frames} frames: {e}") from None
        if frames == 0:
            raise MediaError("no video frames")
        if header_frames and frames < (1 - TRUNCATION_TOLERANCE) * header_frames:
            raise MediaError(f"truncated: {frames} of {header_frames} frames present")
        duration = float((last_pts - first_pts) * video.time_base) + (1 / fps if fps else 0)
        width, height = video.codec_context.width, video.codec_context.height
    _first_frame(path)
    has_audio, peak = audio_peak(path)
    return MediaInfo(duration, fps, width, height, frames, has_audio, peak)


def _first_frame(path) -> None:
    try:
        with av.open(str(path)) as container:
            next(container.decode(video=0))
    except (av.FFmpegError, StopIteration) as e:
        raise MediaError(f"video frames not decodable: {e or 'no frame'}") from None


def audio_peak(path) -> tuple[bool, float]:
    """``(has_audio, peak |sample|)`` of a file's first audio track; a broken track is no track."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        raise MediaError("audio file missing or empty")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return False, 0.0
            peak = 0.0
            for frame in container.decode(audio=0):
                samples = frame.to_ndarray()
                if samples.size:
                    peak = max(peak, float(np.abs(_to_float(samples)).max()))
            return True, peak
    except av.FFmpegError:
        # A broken audio track is a defect of the audio modality, not of the sample.
        return False, 0.0


def _to_float(samples: np.ndarray) -> np.ndarray:
    if np.issubdtype(samples.dtype, np.integer):
        return samples.astype(np.float32) / np.iinfo(samples.dtype).max
    return samples.astype(np.float32, copy=False)


def sample_times(start: float, end: float, fps: float) -> np.ndarray:
    """Timestamps ``start, start + 1/fps, ...`` strictly before ``end`` (at least one)."""
    n = max(1, int(np.floor((end - start) * fps + 1e-6)))
    return start + np.arange(n) / fps


def read_frames(path: str | os.PathLike, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode the frames on screen at ``times`` (seconds): ``(frames [T, H, W, 3] uint8, found)``.

    Time ``t`` gets the last frame whose timestamp is <= ``t``, as a player shows it, so the 1 fps
    samples of a clip are a subset of its 16 fps samples. ``found[i]`` is False where the video
    ended before ``times[i]`` (that slot repeats the last frame). Decoding starts at the keyframe
    before ``times[0]``, so a segment deep inside a long video costs only its own frames, and only
    the frames picked are converted to RGB (at 1 fps from a 25 fps video, 1 frame in 25).
    """
    times = np.asarray(times, dtype=np.float64)
    picked: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if times[0] > 1.0:
                container.seek(int(times[0] / stream.time_base), stream=stream, backward=True)
            shown, shown_t, step = None, -np.inf, 0.0
            for frame in container.decode(stream):
                t = float(frame.time if frame.time is not None else 0.0)
                step = t - shown_t if shown is not None else step
                while len(picked) < len(times) and times[len(picked)] < t - 1e-6:
                    picked.append(shown)  # None only before the first frame: fixed below
                if len(picked) == len(times):
                    break
                shown, shown_t = frame, t
            if shown is None:
                raise MediaError("no video frames")
            n_decoded = len(picked)
            found = np.ones(len(times), dtype=bool)
            found[n_decoded:] = times[n_decoded:] < shown_t + max(step, 1e-3)
            picked += [shown] * (len(times) - n_decoded)
            first = next(f for f in picked if f is not None)
            rgb = {}  # a frame shown at several times is converted once
            for f in picked:
                f = first if f is None else f
                if id(f) not in rgb:
                    rgb[id(f)] = f.to_ndarray(format="rgb24")
            frames = np.stack([rgb[id(first if f is None else f)] for f in picked])
    except (av.FFmpegError, IndexError) as e:
        raise MediaError(f"video not decodable: {e}") from None
    return frames, found


def read_audio(
    path: str | os.PathLike, sample_rate: int = 16000, start: float = 0.0, end: float | None = None
) -> np.ndarray:
    """The first audio track as float32 mono at ``sample_rate`` between ``start`` and ``end``.

    Raises :class:`MediaError` when there is no audio track.
    """
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError("no audio stream")
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except av.FFmpegError as e:
        raise MediaError(f"audio not decodable: {e}") from None
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    first = int(round(start * sample_rate))
    last = None if end is None else int(round(end * sample_rate))
    return np.ascontiguousarray(audio[first:last], dtype=np.float32)
