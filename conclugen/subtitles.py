"""Speech recognition with Whisper behind one function, batched across clips.

Two backends load the same models in their native formats:

- ``faster-whisper`` (default): CTranslate2 models (a folder with ``model.bin``, ``config.json``,
  ``tokenizer.json``, ``vocabulary.*``), several times faster on CPU and GPU;
- ``openai-whisper`` (the reference): a PyTorch checkpoint file (``{"dims", "model_state_dict"}``)
  or an official name such as ``tiny.en``, resolved in the local download root.

The windows of many clips are encoded and decoded together as one batch, without timestamps.
Batching bypasses Whisper's own ``transcribe`` loop, so its safeguards against hallucinated text
are redone here, per window:

- voice-activity detection (``vad``, on by default): faster-whisper's Silero VAD finds a clip's
  speech; only the speech regions are decoded, packed into windows of at most 30 s (Whisper's
  context) without cutting a region. A clip without speech is not decoded at all: empty text,
  ``no_speech=True``. Without VAD a clip is cut into plain 30-s windows;
- temperature fallback: a window whose transcript is repetitive (gzip compression ratio > 2.4 or
  a repetition loop, :func:`repetitive`) or whose average log-probability is < -1 is decoded
  again at Whisper's temperatures 0.2, 0.4, ... 1.0 (sampling, best of 5). If every temperature
  fails, the best non-repetitive result is kept (as Whisper keeps one); a window that stays
  repetitive is rejected: it gives no text and sets the clip's ``repetitive`` flag;
- the no-speech rule: a window with no-speech probability > 0.6 and average log-probability
  < -1 gives no text (and needs no fallback). A clip with no text-giving window has empty text
  and ``no_speech=True``;
- a clip whose joined text is repetitive (e.g. "you" decoded in each of twenty windows) gets
  empty text and ``repetitive=True`` (``no_speech`` stays False: Whisper did hear something).

A clip whose audio or text makes a batch fail (a library error included) is decoded on its own
again with the other clips of the batch; if it fails alone, the error is that clip's (the shard
records it in its ledger). Errors that are no clip's fault (out of memory, a missing file)
propagate.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass

import numpy as np

from conclugen.data.manifest import audio_source
from conclugen.ledger import is_fatal
from conclugen.weights import whisper_model

SAMPLE_RATE = 16000
WINDOW_S = 30
NO_SPEECH_PROB = 0.6
LOGPROB_THRESHOLD = -1.0
#: Whisper's defaults: a gzip ratio above this is a repetition loop; the fallback temperatures.
COMPRESSION_RATIO = 2.4
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
BEST_OF = 5  # sampled hypotheses per window at a temperature > 0
#: A run of one n-gram (n <= LOOP_NGRAM) repeated back to back over this many words is a loop;
#: it catches loops too short for the gzip ratio to see ("you you you you you you you you").
LOOP_WORDS = 8
LOOP_NGRAM = 4


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    avg_logprob: float
    no_speech_prob: float
    no_speech: bool
    repetitive: bool = False  # a repetitive transcript (window or clip) was left out


#: What a backend's ``transcribe_windows`` returns per window.
Part = tuple[str, str, float, float]  # text, language, avg_logprob, no_speech_prob


def windows(audio: np.ndarray) -> list[np.ndarray]:
    """Non-overlapping 30-s windows of a 16 kHz clip (at least one, possibly empty)."""
    step = WINDOW_S * SAMPLE_RATE
    return [audio[i : i + step] for i in range(0, max(len(audio), 1), step)]


def speech_windows(audio: np.ndarray) -> list[np.ndarray]:
    """The speech regions of a 16 kHz clip (Silero VAD), packed in order into windows of at most
    30 s; none when the clip has no speech. Regions are at most 30 s long (VAD splits longer
    ones at a pause), so a window never cuts one."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(max_speech_duration_s=WINDOW_S)
    spans = get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE)
    step = WINDOW_S * SAMPLE_RATE
    out, current = [], []
    for span in spans:
        piece = audio[span["start"] : span["end"]]
        if current and sum(map(len, current)) + len(piece) > step:
            out.append(np.concatenate(current))
            current = []
        current.append(piece)
    if current:
        out.append(np.concatenate(current))
    return [w for chunk in out for w in windows(chunk)]  # windows(): a guard, never cuts here


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


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: UTF-8 bytes over their zlib-compressed bytes."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def longest_loop(words: list[str]) -> int:
    """Words covered by the longest back-to-back repetition (at least twice) of one n-gram,
    n <= LOOP_NGRAM; 0 when nothing repeats."""
    best = 0
    for n in range(1, LOOP_NGRAM + 1):
        run = 0  # consecutive words equal to the word n before them
        for i in range(n, len(words)):
            run = run + 1 if words[i] == words[i - n] else 0
            if run >= n:  # an n-gram at least twice in a row
                best = max(best, run + n)
    return best


def repetitive(text: str) -> bool:
    """A hallucination loop: gzip ratio > 2.4 (Whisper's test), or a back-to-back repetition of
    one n-gram over at least LOOP_WORDS words."""
    loop = longest_loop(normalise(text))
    return compression_ratio(text) > COMPRESSION_RATIO or loop >= LOOP_WORDS


def silent(prob: float, logprob: float) -> bool:
    return prob > NO_SPEECH_PROB and logprob < LOGPROB_THRESHOLD


def needs_fallback(part: Part) -> bool:
    """Whisper's retry test: repetitive or improbable text, unless the window is silent."""
    text, _, logprob, prob = part
    return not silent(prob, logprob) and (repetitive(text) or logprob < LOGPROB_THRESHOLD)


def decode_with_fallback(transcriber, chunks: list[np.ndarray],
                         temperatures=TEMPERATURES) -> list[tuple[Part, bool]]:  # fmt: skip
    """Each window's ``(part, rejected)``, decoded at rising temperatures while it needs a
    fallback (the windows still failing are decoded again together). A window failing at every
    temperature keeps its most probable non-repetitive part; it is rejected, with its last part,
    where all its parts were repetitive."""
    tries: list[list[Part]] = [[] for _ in chunks]
    pending = list(range(len(chunks)))
    for temperature in temperatures:
        parts = transcriber.transcribe_windows([chunks[i] for i in pending], temperature)
        for i, part in zip(pending, parts, strict=True):
            tries[i].append(part)
        pending = [i for i in pending if needs_fallback(tries[i][-1])]
        if not pending:
            break
    out = [(t[-1], False) for t in tries]
    for i in pending:
        kept = [p for p in tries[i] if not repetitive(p[0])]
        out[i] = (max(kept, key=lambda p: p[2]), False) if kept else (tries[i][-1], True)
    return out


def merge(decoded: list[tuple[Part, bool]]) -> Transcript:
    """One clip's transcript from its windows' ``(part, rejected)``; rejected windows give no
    text and set ``repetitive``."""
    if not decoded:  # VAD found no speech: nothing decoded
        return Transcript("", "", float("nan"), float("nan"), True)
    rejected = any(r for _, r in decoded)
    parts = [p for p, _ in decoded]
    spoken = [p for p, r in decoded if not r and not silent(p[3], p[2])]
    if not spoken:
        return Transcript("", parts[0][1], float(np.mean([p[2] for p in parts])),
                          float(min(p[3] for p in parts)), not rejected, rejected)  # fmt: skip
    text = " ".join(p[0] for p in spoken if p[0]).strip()
    if repetitive(text):
        text, rejected = "", True
    return Transcript(
        text,
        spoken[0][1],
        float(np.mean([p[2] for p in spoken])),
        float(min(p[3] for p in spoken)),
        False,
        rejected,
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

    def transcribe_windows(self, chunks: list[np.ndarray], temperature: float = 0.0) -> list[Part]:
        import ctranslate2
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
        if temperature > 0:  # faster-whisper's sampling settings; seeded: reruns agree
            ctranslate2.set_random_seed(0)
            search = {"beam_size": 1, "num_hypotheses": BEST_OF, "sampling_topk": 0,
                      "sampling_temperature": temperature}  # fmt: skip
        else:
            search = {"beam_size": self.beam_size}
        results = self.model.model.generate(
            encoded, prompts, max_length=448, return_scores=True, return_no_speech_prob=True,
            suppress_blank=True, suppress_tokens=[-1], **search,
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

    def transcribe_windows(self, chunks: list[np.ndarray], temperature: float = 0.0) -> list[Part]:
        import torch

        w = self.whisper
        mels = [w.log_mel_spectrogram(w.pad_or_trim(c), n_mels=self.model.dims.n_mels)
                for c in chunks]  # fmt: skip
        batch = torch.stack(mels).to(self.model.device)
        search = {"temperature": temperature, "best_of": BEST_OF} if temperature > 0 else {
            "beam_size": self.beam_size}  # fmt: skip
        options = w.DecodingOptions(
            language=None if self.model.is_multilingual else "en",
            without_timestamps=True, fp16=batch.is_cuda, **search,
        )  # fmt: skip
        if (options.beam_size or options.best_of or 1) > 1 and len(batch) > 1:
            # openai-whisper (20250625) repeats the tokens for the beams (or samples) but not the
            # audio features, so a search over a batch of windows fails on a shape mismatch:
            # encode the windows as one batch, then search each window's features on its own.
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


def configured_transcriber(cfg: dict, device: str, threads: int):
    """The transcriber a ``subtitles`` config section names, read offline (a model name is its
    cached copy, or :class:`conclugen.weights.MissingWeights` naming it); ``threads`` are
    faster-whisper's CPU threads."""
    options = {"beam_size": cfg["beam_size"]}
    if cfg["backend"] == "faster-whisper":
        options |= {"compute_type": cfg["compute_type"], "threads": threads}
    model = whisper_model(cfg["backend"], cfg["model"])
    return load_transcriber(cfg["backend"], model, device, **options)


def transcribe(transcriber, audios: list[np.ndarray], batch_size: int = 8, vad: bool = True,
               errors: dict[int, str] | None = None,
               temperatures=TEMPERATURES) -> list[Transcript | None]:  # fmt: skip
    """Transcripts of 16 kHz mono clips, their windows (:func:`speech_windows` with ``vad``,
    else :func:`windows`) decoded ``batch_size`` at a time with :func:`decode_with_fallback`
    at ``temperatures``.

    A clip-caused error (anything but :func:`conclugen.ledger.is_fatal`) is raised, or, given an
    ``errors`` dict, recorded there as ``{clip index: message}`` with ``None`` for that clip's
    transcript.
    """
    failed: dict[int, str] = {}
    owners, chunks = [], []
    for i, audio in enumerate(audios):
        try:
            if not np.isfinite(audio).all():
                raise ValueError("audio has non-finite samples")
            clip_windows = speech_windows(audio) if vad else windows(audio)
        except Exception as e:
            if is_fatal(e) or errors is None:
                raise
            failed[i] = f"{type(e).__name__}: {e}"
            continue
        owners += [i] * len(clip_windows)
        chunks += clip_windows
    parts: list[list] = [[] for _ in audios]
    for start in range(0, len(chunks), batch_size):
        batch_owners = owners[start : start + batch_size]
        batch = chunks[start : start + batch_size]
        try:
            decoded = decode_with_fallback(transcriber, batch, temperatures)
        except Exception as e:
            if is_fatal(e) or errors is None:
                raise
            # Whose fault? Each clip's windows of this batch again, on their own.
            decoded = [None] * len(batch)
            for owner in dict.fromkeys(batch_owners):
                mine = [j for j, o in enumerate(batch_owners) if o == owner]
                try:
                    alone = decode_with_fallback(
                        transcriber, [batch[j] for j in mine], temperatures
                    )
                except Exception as e:
                    if is_fatal(e):
                        raise
                    failed[owner] = f"{type(e).__name__}: {e}"
                    continue
                for j, part in zip(mine, alone, strict=True):
                    decoded[j] = part
        for owner, part in zip(batch_owners, decoded, strict=True):
            parts[owner].append(part)
    if errors is not None:
        errors.update(failed)
    return [None if i in failed else merge(p) for i, p in enumerate(parts)]


SUBTITLE_COLUMNS = ("sample_id", "text", "language", "avg_logprob", "no_speech_prob", "no_speech",
                    "repetitive")  # fmt: skip


def subtitles_shard(clips, transcriber, ledger, batch_size: int = 16, vad: bool = True):
    """Transcripts of one shard's clips (manifest rows merged with the probe table).

    A clip without an audio track, or whose track the probe found silent (peak below
    ``SILENCE_PEAK``), is not decoded: empty text, ``no_speech=True``, recorded as kept in
    ``ledger``. So is a clip whose transcript was rejected as repetitive (``repetitive=True``).
    An undecodable track, or a clip whose own audio makes Whisper fail, is dropped with the
    reason. Clips are read and transcribed ``batch_size`` at a time. Returns a DataFrame with
    :data:`SUBTITLE_COLUMNS`.
    """
    import pandas as pd

    from conclugen.media import SILENCE_PEAK, MediaError, read_audio
    from conclugen.progress import progress

    rows, todo = [], []
    for clip in clips.to_dict("records"):
        peak = clip.get("audio_peak", np.inf)  # a probe table without peaks: all audible
        if not clip["has_audio"] or peak < SILENCE_PEAK:
            why = "no audio track" if not clip["has_audio"] else f"silent audio (peak {peak:.1e})"
            ledger.keep(clip["sample_id"], f"{why}: empty subtitle, not transcribed")
            rows.append((clip["sample_id"], "", "", float("nan"), float("nan"), True, False))
        else:
            todo.append(clip)
    starts = range(0, len(todo), batch_size)
    for start in progress(starts, len(starts), "subtitles batches"):
        audios, ids = [], []
        for clip in todo[start : start + batch_size]:
            end = clip["end"] if pd.notna(clip["end"]) else None  # None: to the file's end
            try:
                audios.append(read_audio(audio_source(clip), SAMPLE_RATE, clip["start"], end))
                ids.append(clip["sample_id"])
            except MediaError as e:
                ledger.drop(clip["sample_id"], str(e))
        errors: dict[int, str] = {}
        part = transcribe(transcriber, audios, batch_size, vad, errors)
        for i, (sample_id, t) in enumerate(zip(ids, part, strict=True)):
            if t is None:
                ledger.drop(sample_id, f"transcription failed: {errors[i]}")
                continue
            if t.repetitive:
                ledger.keep(sample_id, "repetitive transcript (a Whisper loop) left out")
            rows.append((sample_id, t.text, t.language, t.avg_logprob, t.no_speech_prob,
                         t.no_speech, t.repetitive))  # fmt: skip
    return pd.DataFrame(rows, columns=list(SUBTITLE_COLUMNS)).sort_values("sample_id")
