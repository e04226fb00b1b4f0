"""Speech recognition with Whisper behind one function, batched across clips.

Two backends load the same models in their native formats:

- ``faster-whisper`` (default): CTranslate2 models (a folder with ``model.bin``, ``config.json``,
  ``tokenizer.json``, ``vocabulary.*``), several times faster on CPU and GPU;
- ``openai-whisper`` (the reference): a PyTorch checkpoint file (``{"dims", "model_state_dict"}``)
  or an official name such as ``tiny.en``, resolved in the local download root.

Clips are cut into 30-s windows (Whisper's context); the windows of many clips are encoded and
decoded together as one batch, without timestamps. A window is "no speech" by Whisper's own
rule (no-speech probability > 0.6 and average log-probability < -1); such windows contribute no
text, and a clip whose windows are all silent gets empty text and ``no_speech=True``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from conclugen.weights import resolve_model  # noqa: F401  (moved; callers import it from here)

SAMPLE_RATE = 16000
WINDOW_S = 30
NO_SPEECH_PROB = 0.6
LOGPROB_THRESHOLD = -1.0


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    avg_logprob: float
    no_speech_prob: float
    no_speech: bool


def windows(audio: np.ndarray) -> list[np.ndarray]:
    """Non-overlapping 30-s windows of a 16 kHz clip (at least one, possibly empty)."""
    step = WINDOW_S * SAMPLE_RATE
    return [audio[i : i + step] for i in range(0, max(len(audio), 1), step)]


def normalise(text: str) -> list[str]:
    """Lower-case words without punctuation (apostrophes inside words kept): what WER compares."""
    return re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", text.lower().replace("\u2019", "'"))


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Substitutions + deletions + insertions turning ``ref`` into ``hyp`` (Levenshtein)."""
    row = list(range(len(hyp) + 1))
    for i, rw in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, hw in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rw != hw))
    return row[-1]


def word_error_rate(ref: str | list[str], hyp: str | list[str]) -> float:
    """Word error rate after :func:`normalise`: edit distance over the reference's word count.

    Given lists of utterances (paired, same length), the corpus WER: the edits of every pair
    summed over all reference words. No reference words give 0 for no hypothesis words, else 1.
    """
    refs, hyps = ([ref], [hyp]) if isinstance(ref, str) else (ref, hyp)
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    pairs = [(normalise(r), normalise(h)) for r, h in zip(refs, hyps, strict=True)]
    words = sum(len(r) for r, _ in pairs)
    edits = sum(edit_distance(r, h) for r, h in pairs)
    if not words:
        return float(edits > 0)
    return edits / words


def silent(prob: float, logprob: float) -> bool:
    return prob > NO_SPEECH_PROB and logprob < LOGPROB_THRESHOLD


def merge(parts: list[tuple[str, str, float, float]]) -> Transcript:
    """One clip's transcript from its windows' ``(text, language, avg_logprob, no_speech_prob)``."""
    spoken = [p for p in parts if not silent(p[3], p[2])]
    if not spoken:
        return Transcript("", parts[0][1], float(np.mean([p[2] for p in parts])),
                          float(min(p[3] for p in parts)), True)  # fmt: skip
    return Transcript(
        " ".join(p[0] for p in spoken if p[0]).strip(),
        spoken[0][1],
        float(np.mean([p[2] for p in spoken])),
        float(min(p[3] for p in spoken)),
        False,
    )


class FasterWhisper:
    """CTranslate2 Whisper through faster-whisper's model, batched with ``generate``."""

    def __init__(self, model: str, device: str = "cpu", compute_type: str = "default",
                 beam_size: int = 5, threads: int = 0):  # fmt: skip
        from faster_whisper import WhisperModel

        self.model = WhisperModel(
            model, device=device, compute_type=compute_type, cpu_threads=threads,
        )  # fmt: skip
        self.beam_size = beam_size

    def _tokenizer(self, language: str):
        from faster_whisper.tokenizer import Tokenizer

        multilingual = self.model.model.is_multilingual
        return Tokenizer(self.model.hf_tokenizer, multilingual, task="transcribe",
                         language=language if multilingual else "en")  # fmt: skip

    def transcribe_windows(self, chunks: list[np.ndarray]) -> list[tuple[str, str, float, float]]:
        from faster_whisper.audio import pad_or_trim

        extractor = self.model.feature_extractor
        feats = np.stack([pad_or_trim(extractor(c)) for c in chunks]).astype(np.float32)
        encoded = self.model.encode(feats)
        if self.model.model.is_multilingual:
            detected = self.model.model.detect_language(encoded)
            languages = [d[0][0][2:-2] for d in detected]  # "<|en|>" -> "en"
        else:
            languages = ["en"] * len(chunks)
        prompts = []
        for lang in languages:
            tokenizer = self._tokenizer(lang)
            prompts.append([*tokenizer.sot_sequence, tokenizer.no_timestamps])
        results = self.model.model.generate(
            encoded, prompts, beam_size=self.beam_size, max_length=448,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=[-1],
        )  # fmt: skip
        out = []
        for lang, res in zip(languages, results, strict=True):
            tokens = res.sequences_ids[0]
            # generate() returns the length-normalised score; Whisper's avg_logprob divides the
            # cumulative log-probability by (length + 1), as faster-whisper does.
            avg_logprob = res.scores[0] * len(tokens) / (len(tokens) + 1)
            text = self._tokenizer(lang).decode(tokens).strip()
            out.append((text, lang, float(avg_logprob), float(res.no_speech_prob)))
        return out


class OpenAIWhisper:
    """The reference implementation (openai-whisper), batched with ``whisper.decode``."""

    def __init__(self, model: str, device: str = "cpu", beam_size: int = 5):
        import whisper

        self.whisper = whisper
        self.model = whisper.load_model(model, device=device)
        self.beam_size = beam_size

    def transcribe_windows(self, chunks: list[np.ndarray]) -> list[tuple[str, str, float, float]]:
        import torch

        w = self.whisper
        mels = [w.log_mel_spectrogram(w.pad_or_trim(c), n_mels=self.model.dims.n_mels)
                for c in chunks]  # fmt: skip
        batch = torch.stack(mels).to(self.model.device)
        options = w.DecodingOptions(
            language=None if self.model.is_multilingual else "en",
            without_timestamps=True, beam_size=self.beam_size, fp16=batch.is_cuda,
        )  # fmt: skip
        if self.beam_size > 1 and len(batch) > 1:
            # openai-whisper (20250625) repeats the tokens for the beams but not the audio
            # features, so beam search over a batch of windows fails on a shape mismatch: encode
            # the windows as one batch, then beam-search each window's features on its own.
            with torch.no_grad():
                features = self.model.embed_audio(batch.half() if options.fp16 else batch)
            results = [w.decode(self.model, f[None], options)[0] for f in features]
        else:
            results = w.decode(self.model, batch, options)
        return [(r.text.strip(), r.language, float(r.avg_logprob), float(r.no_speech_prob))
                for r in results]  # fmt: skip


def load_transcriber(backend: str, model: str | os.PathLike, device: str = "cpu", **options):
    """A Whisper backend (``faster-whisper`` or ``openai-whisper``) for a local model."""
    if backend == "faster-whisper":
        return FasterWhisper(str(model), device=device, **options)
    if backend == "openai-whisper":
        return OpenAIWhisper(str(model), device=device, **options)
    raise ValueError(f"unknown ASR backend {backend!r} (faster-whisper, openai-whisper)")


def transcribe(transcriber, audios: list[np.ndarray], batch_size: int = 8) -> list[Transcript]:
    """Transcripts of 16 kHz mono clips, their 30-s windows decoded ``batch_size`` at a time."""
    owners, chunks = [], []
    for i, audio in enumerate(audios):
        for chunk in windows(audio):
            owners.append(i)
            chunks.append(chunk)
    parts: list[list] = [[] for _ in audios]
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start : start + batch_size]
        for owner, part in zip(owners[start:], transcriber.transcribe_windows(batch), strict=False):
            parts[owner].append(part)
    return [merge(p) for p in parts]


SUBTITLE_COLUMNS = ("sample_id", "text", "language", "avg_logprob", "no_speech_prob", "no_speech")


def subtitles_shard(clips, transcriber, ledger, batch_size: int = 16):
    """Transcripts of one shard's clips (manifest rows merged with the probe table).

    A clip without an audio track gets empty text (recorded as kept in ``ledger``); an
    undecodable track is dropped. Returns a DataFrame with :data:`SUBTITLE_COLUMNS`.
    """
    import pandas as pd

    from conclugen.media import MediaError, read_audio
    from conclugen.progress import progress

    rows, audios, ids = [], [], []
    for clip in clips.to_dict("records"):
        source = clip["audio"] if isinstance(clip.get("audio"), str) else clip["video"]
        end = clip["end"] if pd.notna(clip["end"]) else None
        if not clip["has_audio"]:
            ledger.keep(clip["sample_id"], "no audio track: empty subtitle")
            rows.append((clip["sample_id"], "", "", float("nan"), float("nan"), True))
            continue
        try:
            audios.append(read_audio(source, SAMPLE_RATE, clip["start"], end))
            ids.append(clip["sample_id"])
        except MediaError as e:
            ledger.drop(clip["sample_id"], str(e))
    chunks = range(0, len(audios), batch_size)
    for start in progress(chunks, len(chunks), "subtitles batches"):
        part = transcribe(transcriber, audios[start : start + batch_size], batch_size)
        for sample_id, t in zip(ids[start:], part, strict=False):
            rows.append((sample_id, t.text, t.language, t.avg_logprob, t.no_speech_prob,
                         t.no_speech))  # fmt: skip
    return pd.DataFrame(rows, columns=list(SUBTITLE_COLUMNS)).sort_values("sample_id")
