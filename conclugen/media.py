"""Decoding video and audio: the one place that touches media files (PyAV, which bundles FFmpeg).

torchvision 0.29 reads no video any more; PyAV decodes every container the datasets use (mp4/H.264,
avi/MPEG-4 part 2, m4a/AAC, mp3) without a system FFmpeg.

Frames come out as a player shows them: a phone clip's display rotation (its display matrix) is
applied, so a portrait clip is portrait, and anamorphic video (sample aspect ratio != 1) is scaled
horizontally to square pixels. :func:`probe` reports that displayed size, which is the size
:func:`read_frames` returns. Interlaced video is not deinterlaced (each frame holds both fields).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

#: The frame rate of the face tracks and the video features (the 2D role takes every FPS-th
#: frame: 1 fps).
FPS = 16
#: Audio whose peak absolute amplitude stays below this (full scale = 1.0) counts as silent.
SILENCE_PEAK = 1e-4
#: A stream whose demuxed frames fall short of the header's count by more than this fraction
#: and more than TRUNCATION_SLACK frames is truncated (AVI headers count a couple of frames that
#: hold no picture: a one-frame AVI says 3).
TRUNCATION_TOLERANCE = 0.1
TRUNCATION_SLACK = 2
#: A video whose decoder had to patch up (conceal) more than this fraction of the frames is
#: unusable; fewer damaged frames are a defect worth recording, not a reason to lose the clip.
DAMAGED_TOLERANCE = 0.1
#: Sample aspect ratios outside [1/MAX_SAR, MAX_SAR] are taken for broken headers and ignored (a
#: real anamorphic format stays within 2:1; a bogus 255:1 would blow a frame up 255 times).
MAX_SAR = 4
#: Segments starting later than this (seconds) into the track are read by seeking.
SEEK_AFTER = 1.0
#: Decoded before the first sample kept after a seek (seconds, and at least so many frames), so
#: that the decoder's state is what decoding from the start has: AAC's MDCT overlap takes a
#: frame, Opus asks 80 ms, FFmpeg's MP3 decoder gives silence and then other samples for up to
#: 20 frames at 22.05 kHz (measured; 8 at 44.1 kHz).
DECODER_PREROLL = 0.25
DECODER_PREROLL_FRAMES = 48
#: Output samples a fresh resampler gives before its filter (tens of taps) only sees real input.
RESAMPLER_WARMUP = 256


class MediaError(Exception):
    """A media file that cannot be used; the message is the reason written to the ledger."""


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` learnt about one file."""

    duration: float  # seconds, from the demuxed video packets
    fps: float
    width: int  # displayed size: the size of the frames read_frames returns
    height: int
    frames: int  # demuxed video packets
    has_audio: bool
    audio_peak: float  # max |sample| over the whole track, 0 without audio
    damaged: int = 0  # decoded frames the decoder could only patch up (error concealment)


@dataclass(frozen=True)
class _Display:
    """How a stream's decoded pictures are shown: scaled to square pixels, then turned upright.

    Taken from a stream's first decoded frame and applied to all its frames, so every frame of
    a clip has one size even if the coded size changes mid-stream.
    """

    width: int  # after scaling to square pixels, before the turn
    height: int
    turns: int  # quarter turns counterclockwise (np.rot90's k)

    @classmethod
    def of(cls, frame: av.VideoFrame, stream) -> _Display:
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        width = frame.width
        if sar and 1 / MAX_SAR <= sar <= MAX_SAR:
            width = max(1, round(frame.width * sar))
        # frame.rotation: the display matrix's counterclockwise angle, 0 without one.
        return cls(width, frame.height, round((frame.rotation or 0) / 90) % 4)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as displayed."""
        return (self.height, self.width) if self.turns % 2 else (self.width, self.height)

    def rgb(self, frame: av.VideoFrame) -> np.ndarray:
        """``frame`` as displayed: [H, W, 3] uint8 RGB (a view when turned)."""
        # One swscale thread: the same pixels, and a quarter of the CPU time per frame (swscale
        # otherwise starts a thread per core for each frame, 0.22 -> 0.06 ms for 224x224).
        rgb = frame.to_ndarray(format="rgb24", width=self.width, height=self.height, threads=1)
        return np.rot90(rgb, self.turns)


def probe(path: str | os.PathLike) -> MediaInfo:
    """Check that ``path`` is a usable video and measure it, or raise :class:`MediaError`.

    Demuxes and decodes every video packet, so damaged video is rejected here rather than
    decoded into garbage later: a truncated file whose header promises more frames than it
    holds, packets the decoder refuses, more than ``DAMAGED_TOLERANCE`` of the frames patched up
    by the decoder (flagged corrupt: error concealment; fewer are counted in ``damaged``). Then
    decodes the audio track to find silent audio.
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
        first_pts = last_pts = display = None
        frames = decoded = corrupt = 0
        try:
            for packet in container.demux(video):
                if packet.size and packet.pts is not None:
                    frames += 1
                    first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
                    last_pts = packet.pts if last_pts is None else max(last_pts, packet.pts)
                for frame in packet.decode():  # the final empty packet flushes the decoder
                    decoded += 1
                    corrupt += frame.is_corrupt
                    display = display or _Display.of(frame, video)
        except av.FFmpegError as e:
            raise MediaError(
                f"corrupt video stream at packet {frames} ({decoded} frames decoded): {e}"
            ) from None
        if frames == 0:
            raise MediaError("no video frames")
        missing = header_frames - frames if header_frames else 0
        if missing > max(TRUNCATION_SLACK, TRUNCATION_TOLERANCE * header_frames):
            raise MediaError(f"truncated: {frames} of {header_frames} frames present")
        if display is None:
            raise MediaError(f"video frames not decodable: none of {frames} packets gave a frame")
        if corrupt > DAMAGED_TOLERANCE * decoded:
            raise MediaError(f"corrupt video stream: {corrupt} of {decoded} frames damaged")
        duration = float((last_pts - first_pts) * video.time_base) + (1 / fps if fps else 0)
    has_audio, peak = audio_peak(path)
    return MediaInfo(duration, fps, *display.size, frames, has_audio, peak, corrupt)


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
    """Decode the frames on screen at ``times`` (seconds, ascending): ``(frames, found)``.

    ``frames`` is [T, H, W, 3] uint8 RGB, upright and with square pixels (see the module
    docstring); H and W are :func:`probe`'s height and width. Times count from the file's start
    as a player counts them (:func:`_origin`). Time ``t`` gets the last frame whose timestamp is
    <= ``t``, as a player shows it, so the 1 fps samples of a clip are a subset of its 16 fps
    samples; times before the first frame get the first frame. ``found[i]`` is False where the
    video ended before ``times[i]`` (that slot repeats the last frame). Decoding starts at the
    keyframe before ``times[0]``, so a segment deep inside a long video costs only its own
    frames, and only the frames picked are converted to RGB (at 1 fps from a 25 fps video, 1
    frame in 25), each straight into the output array: besides it, only the frame on screen is
    held.
    """
    times = np.asarray(times, dtype=np.float64)
    out = None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            origin = _origin(container)
            if times[0] > 1.0:
                target = int((times[0] + origin) / stream.time_base)
                container.seek(target, stream=stream, backward=True)
            shown = shown_rgb = None
            rate = stream.average_rate or stream.guessed_rate
            step = 1 / float(rate) if rate else 0.0  # frame spacing; measured once two are seen
            shown_t, n = -np.inf, 0  # n: times filled so far
            for frame in container.decode(stream):
                t = float(frame.time - origin if frame.time is not None else 0.0)
                if shown is None:  # the first frame also stands for the times before it
                    display = _Display.of(frame, stream)
                    width, height = display.size
                    out = np.empty((len(times), height, width, 3), np.uint8)
                    shown, shown_t = frame, t
                else:
                    step = t - shown_t
                upto = max(n, int(np.searchsorted(times, t - 1e-6)))  # times before frame
                if upto > n:
                    if shown_rgb is None:
                        shown_rgb = display.rgb(shown)
                    out[n:upto] = shown_rgb
                    n = upto
                if n == len(times):
                    break
                if frame is not shown:
                    shown, shown_t, shown_rgb = frame, t, None
            if shown is None:
                raise MediaError("no video frames")
            found = np.ones(len(times), dtype=bool)
            found[n:] = times[n:] < shown_t + max(step, 1e-3)
            if n < len(times):
                out[n:] = display.rgb(shown) if shown_rgb is None else shown_rgb
    except (av.FFmpegError, IndexError) as e:
        raise MediaError(f"video not decodable: {e}") from None
    return out, found


def read_audio(
    path: str | os.PathLike, sample_rate: int = 16000, start: float = 0.0, end: float | None = None
) -> np.ndarray:
    """The first audio track as float32 mono at ``sample_rate`` between ``start`` and ``end``.

    Times are seconds on the file's timeline, as for :func:`read_frames`. A segment starting
    before 0 (CMU-MOSEI has such labels) is read from 0; one ending past the track ends with it.
    Channels are mixed down by FFmpeg's default matrix, normalised so that the mix never exceeds
    full scale (what ``ffmpeg -ac 1`` to 16-bit does, as in Whisper's own loader); samples are
    16-bit precise. Decoding stops once ``end`` is reached. A segment starting more than
    ``SEEK_AFTER`` seconds into the track is read by seeking (:func:`_seeked`): what decoding the
    track from its start and slicing gives, sample for sample, but for two decoders that keep
    state a seek cannot restore (AAC's noise substitution draws the noise-coded bands from a
    generator never reset, so those bands get other noise of the same energy; Opus may differ by
    1 in 32768). A track whose timestamps cannot place every sample (a gap, a time base coarser
    than its frames, a sample rate or layout that changes midway) is decoded from its start.
    Raises :class:`MediaError` when there is no audio track or it cannot be decoded.
    """
    try:
        with av.open(str(path)) as container:
            stream, first, last = _audio_range(container, sample_rate, start, end)
            if first - RESAMPLER_WARMUP < SEEK_AFTER * sample_rate:
                read = _decoded(container.decode(stream), sample_rate, last), 0
            else:
                read = _seeked(container, stream, sample_rate, first, last)
        if read is None:  # the seek could not vouch for its samples: from the start after all
            with av.open(str(path)) as container:
                read = _decoded(container.decode(container.streams.audio[0]), sample_rate, last), 0
    except av.FFmpegError as e:
        raise MediaError(f"audio not decodable: {e}") from None
    audio, at = read  # at: the index of audio[0] in the whole track
    stop = None if last is None else last - at
    return audio[first - at : stop].astype(np.float32) / 32768


def _audio_range(container, sample_rate: int, start: float, end: float | None):
    """``(stream, first, last)``: the first audio stream and the segment's output sample range
    in the whole track (``last`` None: to the end)."""
    if not container.streams.audio:
        raise MediaError("no audio stream")
    stream = container.streams.audio[0]
    offset = 0.0  # when the track's first sample plays
    if stream.start_time is not None:
        offset = float(stream.start_time * stream.time_base) - _origin(container)
    first = max(0, int(round((start - offset) * sample_rate)))
    last = None if end is None else max(first, int(round((end - offset) * sample_rate)))
    return stream, first, last


def _setup(frame: av.AudioFrame) -> tuple:
    return frame.format.name, frame.layout.name, frame.sample_rate


def _resampler(rate: int) -> av.AudioResampler:
    # s16 output makes FFmpeg normalise its downmix matrix (float output would not, and six
    # equal channels would mix to 3.4 times full scale).
    return av.AudioResampler(format="s16", layout="mono", rate=rate)


def _decoded(frames, rate: int, last: int | None) -> np.ndarray:
    """The mono s16 samples of ``frames`` resampled to ``rate``, from the first, stopping once
    ``last`` samples are out (None: all). A change of sample rate or layout flushes the
    resampler and starts a fresh one (a resampler takes one input format)."""
    chunks, have = [], 0
    resampler = setup = None
    for frame in frames:
        if _setup(frame) != setup:
            chunks += _resampled(resampler, None)
            setup, resampler = _setup(frame), _resampler(rate)
        new = _resampled(resampler, frame)
        chunks += new
        have += sum(len(c) for c in new)
        if last is not None and have >= last:
            break
    else:
        chunks += _resampled(resampler, None)
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def _seeked(container, stream, rate: int, first: int, last: int | None):
    """``(samples, at)`` as :func:`_decoded` gives them for the whole track, from its sample
    ``at`` (a little before ``first``) on, read by seeking; None where the track's timestamps
    cannot vouch for a sample-exact result.

    Output sample ``n`` of the whole track plays at input sample ``n * r_in / r_out`` of it. A
    resampler started at an input sample where that ratio gives a whole output sample (a
    multiple of ``r_in / gcd``) puts out the whole track's samples from there on, once its
    filter has ``RESAMPLER_WARMUP`` samples of real input. So the track's first two frames say
    where its samples are, the demuxer seeks ``DECODER_PREROLL`` before that start, and decoding
    goes forward, the first frame fed to the resampler cut to begin exactly on the start. Frame
    positions come from timestamps, so every frame must follow the previous one without a gap,
    on a whole sample, and keep the first frame's format (else None: the caller decodes from the
    start).
    """
    frames = container.decode(stream)
    head, anchor = next(frames, None), next(frames, None)
    if anchor is None or anchor.pts is None or _setup(anchor) != _setup(head):
        return None
    # The second frame is the anchor: a decoder that drops the codec's delay from the first
    # frame (Opus's pre-skip) leaves its timestamp rounded in a coarse time base (Matroska's ms).
    setup, r_in, tb = _setup(head), head.sample_rate, head.time_base
    step_in, step_out = r_in // math.gcd(r_in, rate), rate // math.gcd(r_in, rate)
    at = (first - RESAMPLER_WARMUP) // step_out * step_out  # output sample the resampler starts
    begin = at // step_out * step_in  # ... and the input sample it starts at
    preroll = max(int(DECODER_PREROLL * r_in), DECODER_PREROLL_FRAMES * anchor.samples)
    target = anchor.pts + int((begin - head.samples - preroll) / r_in / tb)
    container.seek(target, stream=stream, backward=True)
    resampler, chunks, have, expect = _resampler(rate), [], 0, None
    for frame in container.decode(stream):
        if frame.pts is None or _setup(frame) != setup:
            return None
        pos = head.samples + (frame.pts - anchor.pts) * tb * r_in  # a Fraction: frame[0]'s
        if pos.denominator != 1 or expect not in (None, pos):
            return None  # timestamps too coarse to place a sample, or a gap
        if expect is None and pos > begin - preroll // 2:
            return None  # the seek landed too late to warm the decoder up
        expect = pos + frame.samples
        if expect <= begin:
            continue
        if pos < begin:
            frame = _tail(frame, int(begin - pos))
        new = _resampled(resampler, frame)
        chunks += new
        have += sum(len(c) for c in new)
        if last is not None and have >= last - at:
            break
    else:
        if expect is None:
            return None
        chunks += _resampled(resampler, None)
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.int16)), at


def _tail(frame: av.AudioFrame, skip: int) -> av.AudioFrame:
    """``frame`` without its first ``skip`` samples."""
    samples = frame.to_ndarray()  # [channels, n] planar, [1, n * channels] packed
    per = 1 if frame.format.is_planar else len(frame.layout.channels)
    tail = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples[:, skip * per :]),
        format=frame.format.name,
        layout=frame.layout.name,
    )
    tail.sample_rate = frame.sample_rate
    tail.time_base = frame.time_base
    tail.pts = frame.pts + int(Fraction(skip, frame.sample_rate) / frame.time_base)
    return tail


def _origin(container) -> float:
    """Time 0 of a file in its streams' timestamps: the earliest stream start, as players count.

    0 for mp4 and avi; MPEG-PS and MPEG-TS timestamps start anywhere (0.5 s, 1.4 s, ...)."""
    start = container.start_time  # microseconds (AV_TIME_BASE)
    return start / 1e6 if start is not None else 0.0


def _resampled(resampler, frame) -> list[np.ndarray]:
    """The mono samples ``resampler`` gives for ``frame`` (None: flush; no resampler: none)."""
    if resampler is None:
        return []
    return [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
