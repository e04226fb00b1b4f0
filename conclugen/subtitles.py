"""Speech recognition with Whisper behind one function, many clips packed into each window.

Two backends load the same models in their native formats:

- ``faster-whisper`` (default): CTranslate2 models (a folder with ``model.bin``, ``config.json``,
  ``tokenizer.json``, ``vocabulary.*``), several times faster on CPU and GPU;
- ``openai-whisper`` (the reference): a PyTorch checkpoint file (``{"dims", "model_state_dict"}``)
  or an official name such as ``tiny.en``, resolved in the local download root.

Whisper reads 30-s windows; a shorter one is padded, and the encoder costs as much for the
padding as for speech. So the clips' speech is laid out in shared windows and the words are
given back to the clips by their timestamps (:func:`transcribe`):

- pieces: voice-activity detection (``vad``, on by default: faster-whisper's Silero VAD) finds a
  clip's speech regions (at most 30 s, split at a pause); only they are decoded. A clip without
  speech is not decoded at all: empty text, ``no_speech=True``. Without VAD the whole clip is one
  piece. A piece longer than a window (no VAD) is cut into windows that overlap by 3-6 s, cut at
  the quietest 0.2 s (:func:`clip_pieces`);
- packing: pieces in order, several clips' in one window up to 30 s, 1 s of silence between two
  (:func:`layout`). Packing needs one language per window: it is on where the transcriber
  decodes one language (an English-only model, or a ``language`` given), else each clip's pieces
  get windows of their own;
- decoding with timestamps, words timed by the cross-attention alignment (as Whisper's word
  timestamps) and clamped into their segment (:func:`timed_words`);
- unpacking: a word goes to the piece whose share of the window holds the word's middle, a share
  reaching to the middle of the gaps (:func:`assign`): every word has exactly one clip, none is
  lost or doubled at a boundary. Of two overlapping windows, the overlap's words are spliced at a
  word both give (:func:`drop_overlaps`).

Batching bypasses Whisper's own ``transcribe`` loop, so its safeguards against hallucinated text
are redone here, per window:

- temperature fallback: a window whose transcript is repetitive (gzip compression ratio > 2.4 or
  a repetition loop, :func:`repetitive`) or whose average log-probability is < -1 is decoded
  again at Whisper's temperatures 0.2, 0.4, ... 1.0 (sampling, best of 5). If every temperature
  fails, the best non-repetitive result is kept (as Whisper keeps one); a window that stays
  repetitive is rejected: it gives no text and sets its clips' ``repetitive`` flag (a window
  shared by several clips is decoded again clip by clip first, so that one clip's loop does not
  blank the others);
- the no-speech rule: a window with no-speech probability > 0.6 and average log-probability
  < -1 gives no text (and needs no fallback). A clip given no words has empty text and
  ``no_speech=True``;
- a clip whose joined text loops (e.g. "you" decoded in each of twenty windows, :func:`looping`)
  gets empty text and ``repetitive=True`` (``no_speech`` stays False: Whisper did hear something).

A clip whose audio or text makes a batch fail (a library error included) is decoded on its own
again with the other clips of the batch; if it fails alone, the error is that clip's (the shard
records it in its ledger). Errors that are no clip's fault (out of memory, a missing file)
propagate.
"""

from __future__ import annotations

import bisect
import itertools
import os
import re
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from conclugen.data.manifest import audio_source
from conclugen.ledger import is_fatal
from conclugen.weights import whisper_model

SAMPLE_RATE = 16000
HOP = 160  # samples per mel frame
TIME_PRECISION = 0.02  # seconds per Whisper timestamp token
WINDOW_S = 30  # Whisper's context
#: Silence between two pieces of a window: Whisper ends a segment in it, and a word aligned a
#: little into it still lands on its own side of the middle.
GAP_S = 1.0
#: A span longer than a window is cut into windows overlapping by OVERLAP_S to 2 x OVERLAP_S,
#: cut at pauses of QUIET_S (:func:`clip_pieces`).
OVERLAP_S = 3.0
QUIET_S = 0.2
#: A window whose audio lasts this long past its last decoded word is decoded once more from
#: there (:func:`leftovers`); a look-alike clip's chimes after its sentence last up to ~2 s.
LEFTOVER_S = 3.0
NO_SPEECH_PROB = 0.6
LOGPROB_THRESHOLD = -1.0
#: Whisper's defaults: a gzip ratio above this is a repetition loop; the fallback temperatures.
COMPRESSION_RATIO = 2.4
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
BEST_OF = 5  # sampled hypotheses per window at a temperature > 0
#: A run of one n-gram (n <= LOOP_NGRAM) repeated back to back at least three times and over
#: this many words is a loop; it catches loops too short for the gzip ratio to see ("you you you
#: you you you you you"), not a sentence said twice.
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


class Word(NamedTuple):
    start: float  # seconds in its window
    end: float
    text: str  # as Whisper spells it, with its leading space


class Part(NamedTuple):
    """What a backend's ``transcribe_windows`` returns per window."""

    text: str
    language: str
    avg_logprob: float
    no_speech_prob: float
    words: tuple[Word, ...] = ()  # the text's words in order, timed


class Piece(NamedTuple):
    """A stretch of one clip's audio, decoded in a window (with others where they fit)."""

    clip: int
    start: int  # first sample in the clip
    end: int  # one past the last


class ClipWord(NamedTuple):
    """A decoded word given back to its clip (:func:`assign`)."""

    piece: Piece
    start: float  # seconds in the clip
    end: float
    text: str

    @property
    def middle(self) -> float:
        return (self.start + self.end) / 2


def speech_spans(audio: np.ndarray) -> list[tuple[int, int]]:
    """The speech regions of a 16 kHz clip (Silero VAD) as ``(start, end)`` samples; none when
    the clip has no speech. VAD splits a region longer than a window at a pause."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(max_speech_duration_s=WINDOW_S)
    spans = get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE)
    return [(s["start"], s["end"]) for s in spans]


def quietest(audio: np.ndarray, start: int, end: int) -> int:
    """The middle sample of the quietest QUIET_S of ``audio[start:end]`` (least energy, in
    steps of 20 ms): a pause between words where there is one."""
    frame, width = SAMPLE_RATE // 50, round(QUIET_S * 50)
    stretch = audio[start:end].astype(np.float64)
    n = len(stretch) // frame
    if n < width:
        return (start + end) // 2
    energy = np.square(stretch[: n * frame]).reshape(n, frame).sum(axis=1)
    total = np.convolve(energy, np.ones(width), mode="valid")  # each QUIET_S from a frame on
    return start + int(np.argmin(total)) * frame + width * frame // 2


def clip_pieces(clip: int, audio: np.ndarray, spans: list[tuple[int, int]]) -> list[Piece]:
    """Clip ``clip``'s spans as pieces. A span longer than a window (only without VAD, which
    splits longer speech itself) is cut into windows that overlap: each ends at the quietest
    point (:func:`quietest`) of its last OVERLAP_S seconds, the next starts at the quietest point
    between 2 x OVERLAP_S and OVERLAP_S before that end, so two neighbours share 3-6 s and
    neither cuts a word where there is a pause to cut at (:func:`drop_overlaps` merges them)."""
    window, overlap = WINDOW_S * SAMPLE_RATE, int(OVERLAP_S * SAMPLE_RATE)
    out = []
    for start, end in spans:
        while end - start > window:
            cut = quietest(audio, start + window - overlap, start + window)
            out.append(Piece(clip, start, cut))
            start = quietest(audio, cut - 2 * overlap, cut - overlap)
        out.append(Piece(clip, start, end))
    return out


def layout(pieces: list[Piece], pack: bool = True) -> list[list[Piece]]:
    """Pieces in order into windows of at most WINDOW_S, GAP_S of silence between two pieces
    (next fit: a piece that does not fit opens the next window). With ``pack`` a window takes
    several clips' pieces; without, one clip's only."""
    window, gap = WINDOW_S * SAMPLE_RATE, int(GAP_S * SAMPLE_RATE)
    out: list[list[Piece]] = []
    length = 0  # samples of the last window
    for piece in pieces:
        size = piece.end - piece.start
        last = out[-1] if out else None
        if last and length + gap + size <= window and (pack or last[-1].clip == piece.clip):
            last.append(piece)
            length += gap + size
        else:
            out.append([piece])
            length = size
    return out


def offsets(window: list[Piece]) -> list[int]:
    """Where each piece starts in its window's audio (samples)."""
    gap, at, out = int(GAP_S * SAMPLE_RATE), 0, []
    for piece in window:
        out.append(at)
        at += piece.end - piece.start + gap
    return out


def window_audio(audios: list[np.ndarray], window: list[Piece]) -> np.ndarray:
    """A window's audio: its pieces in order, GAP_S of silence between two."""
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), np.float32)
    parts = [audios[p.clip][p.start : p.end] for p in window]
    return np.concatenate([x for part in parts for x in (gap, part)][1:])


def assign(window: list[Piece], words: tuple[Word, ...]) -> list[ClipWord]:
    """A decoded window's words given back to its pieces: a word belongs to the piece whose share
    of the window holds the word's middle. A piece's share reaches to the middle of the gap on
    either side (the first piece's from the window's start, the last one's to its end), so every
    word has exactly one piece."""
    starts = offsets(window)
    bounds = [(a + p.end - p.start + GAP_S * SAMPLE_RATE / 2) / SAMPLE_RATE
              for a, p in zip(starts[:-1], window[:-1], strict=True)]  # fmt: skip
    out = []
    for word in words:
        k = bisect.bisect_right(bounds, (word.start + word.end) / 2)
        shift = (starts[k] - window[k].start) / SAMPLE_RATE  # window time - clip time
        out.append(ClipWord(window[k], word.start - shift, word.end - shift, word.text))
    return out


def common_words(a: list[str], b: list[str]) -> list[tuple[int, int]]:
    """Index pairs of a longest common subsequence of two word lists (after
    :func:`normalise`)."""
    a, b = ["".join(normalise(w)) for w in a], ["".join(normalise(w)) for w in b]
    lengths = np.zeros((len(a) + 1, len(b) + 1), int)
    for i, j in itertools.product(range(len(a)), range(len(b))):
        same = a[i] == b[j] and a[i] != ""
        lengths[i + 1, j + 1] = (
            lengths[i, j] + 1 if same else max(lengths[i, j + 1], lengths[i + 1, j])
        )
    pairs, i, j = [], len(a), len(b)
    while i and j:
        if a[i - 1] == b[j - 1] and a[i - 1] != "" and lengths[i, j] == lengths[i - 1, j - 1] + 1:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif lengths[i - 1, j] >= lengths[i, j - 1]:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def drop_overlaps(words: list[ClipWord]) -> list[ClipWord]:
    """One clip's words in time order, each overlap's words taken once. Where two pieces overlap
    (:func:`clip_pieces`, :func:`leftovers`), the words of the overlap (their middle in it) are
    spliced at a word both give: the earlier piece's up to it, the later one's after it; of the
    words they share (:func:`common_words`) the one nearest the overlap's middle, away from both
    windows' edges, where Whisper may garble a word. With no word in common, the piece that
    gives more of them gives them all (the earlier on a tie): Whisper sometimes ends a window
    early and leaves out its last sentence, which its neighbour then gives."""
    pieces = sorted({w.piece for w in words}, key=lambda p: (p.start, -p.end))
    dropped: set[int] = set()
    for a, b in itertools.pairwise(pieces):
        if b.start >= a.end:
            continue
        low, high = b.start / SAMPLE_RATE, min(a.end, b.end) / SAMPLE_RATE
        ours, theirs = ([i for i, w in enumerate(words) if w.piece == p and low <= w.middle < high]
                        for p in (a, b))  # fmt: skip
        pairs = common_words([words[i].text for i in ours], [words[j].text for j in theirs])
        if pairs:
            middle = (low + high) / 2
            i, j = min(pairs, key=lambda q: abs(words[ours[q[0]]].middle - middle))
            dropped.update(ours[i + 1 :] + theirs[: j + 1])
        else:
            dropped.update(theirs if len(ours) >= len(theirs) else ours)
    kept = [w for i, w in enumerate(words) if i not in dropped]
    return sorted(kept, key=lambda w: w.middle)


def timed_words(tokenizer, tokens: list[int], timings, duration: float) -> tuple[Word, ...]:
    """A window's words from its decoded ``tokens`` (text tokens and Whisper's timestamp
    tokens; ``tokenizer`` tells them apart) and their alignment ``timings`` (``(text, token
    count, start, end)`` per word, the text tokens in order). A word's time is clamped into the
    segment of its first token: the alignment stretches a word next to a pause into the pause,
    and the segment's timestamps bound it. A word of punctuation only joins the word before it
    (as Whisper's word timestamps do), so that both go to the same clip. ``duration`` ends a
    segment left open."""
    bounds = []  # the segment of each text token
    start, open_tokens = 0.0, 0
    for token in tokens:
        if token < tokenizer.eot:
            open_tokens += 1
        if token < tokenizer.timestamp_begin:
            continue
        at = (token - tokenizer.timestamp_begin) * TIME_PRECISION
        bounds += [(start, max(at, start))] * open_tokens
        start, open_tokens = at, 0
    bounds += [(start, max(duration, start))] * open_tokens
    words: list[Word] = []
    first = 0  # the word's first token
    for text, count, begin, end in timings:
        low, high = bounds[min(first, len(bounds) - 1)] if bounds else (0.0, duration)
        first += count
        if not text:
            continue
        if words and not any(c.isalnum() for c in text):
            words[-1] = words[-1]._replace(text=words[-1].text + text)
            continue
        begin = float(min(max(begin, low), high))
        words.append(Word(begin, float(min(max(end, begin), high)), text))
    return tuple(words)


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
    """Words covered by the longest back-to-back repetition (at least three times) of one
    n-gram, n <= LOOP_NGRAM; 0 when nothing repeats so."""
    best = 0
    for n in range(1, LOOP_NGRAM + 1):
        run = 0  # consecutive words equal to the word n before them
        for i in range(n, len(words)):
            run = run + 1 if words[i] == words[i - n] else 0
            if run >= 2 * n:  # an n-gram at least three times in a row
                best = max(best, run + n)
    return best


def looping(text: str) -> bool:
    """A back-to-back repetition of one n-gram over at least LOOP_WORDS words."""
    return longest_loop(normalise(text)) >= LOOP_WORDS


def repetitive(text: str) -> bool:
    """A window's hallucination loop: gzip ratio > 2.4 (Whisper's test, for a window's text) or
    :func:`looping`."""
    return compression_ratio(text) > COMPRESSION_RATIO or looping(text)


def silent(prob: float, logprob: float) -> bool:
    return prob > NO_SPEECH_PROB and logprob < LOGPROB_THRESHOLD


def needs_fallback(part: Part) -> bool:
    """Whisper's retry test: repetitive or improbable text, unless the window is silent."""
    if silent(part.no_speech_prob, part.avg_logprob):
        return False
    return repetitive(part.text) or part.avg_logprob < LOGPROB_THRESHOLD


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
        kept = [p for p in tries[i] if not repetitive(p.text)]
        best = max(kept, key=lambda p: p.avg_logprob) if kept else None
        out[i] = (best, False) if kept else (tries[i][-1], True)
    return out


class Share(NamedTuple):
    """One clip's share of a decoded window."""

    part: Part  # the window's
    rejected: bool
    words: list[ClipWord]  # the clip's words in the window

    @property
    def spoken(self) -> bool:
        """Neither rejected nor silent: the window gives its words."""
        return not self.rejected and not silent(self.part.no_speech_prob, self.part.avg_logprob)


def leftovers(window: list[Piece], words: tuple[Word, ...]) -> list[Piece]:
    """What a decoded window left out: where its audio lasts more than LEFTOVER_S past its last
    word, everything from that word's end on (Whisper sometimes ends a window early, leaving out
    its last sentence, or a packed window's last clips); and any other piece given no word."""
    starts = offsets(window)
    last = round(max((w.end for w in words), default=0.0) * SAMPLE_RATE)  # in the window
    heard = {w.piece for w in assign(window, words)}
    early = starts[-1] + window[-1].end - window[-1].start - last > LEFTOVER_S * SAMPLE_RATE
    out = []
    for at, piece in zip(starts, window, strict=True):
        if early and at + piece.end - piece.start > last:  # the piece ends after the last word
            out.append(Piece(piece.clip, piece.start + max(last - at, 0), piece.end))
        elif piece not in heard:
            out.append(piece)
    return out


def merge(shares: list[Share]) -> Transcript:
    """One clip's transcript from its shares of the windows: the words of the spoken windows in
    the order of their time in the clip (:func:`drop_overlaps`). Rejected windows give no text
    and set ``repetitive``; a clip given no words has ``no_speech`` (unless a window was
    rejected)."""
    if not shares:  # VAD found no speech: nothing decoded
        return Transcript("", "", float("nan"), float("nan"), True)
    rejected = any(s.rejected for s in shares)
    spoken = [s for s in shares if s.spoken]
    parts = [s.part for s in spoken or shares]
    words = drop_overlaps([w for s in spoken for w in s.words])
    text = "".join(w.text for w in words).strip()
    # a loop over windows; not the gzip ratio, which grows with the text's length: a minute of
    # plain speech can pass 2.4
    if looping(text):
        text, rejected = "", True
    return Transcript(
        text,
        parts[0].language,
        float(np.mean([p.avg_logprob for p in parts])),
        float(min(p.no_speech_prob for p in parts)),
        not text and not rejected,
        rejected,
    )


class FasterWhisper:
    """CTranslate2 Whisper through faster-whisper's model, batched with ``generate``; words
    timed by CTranslate2's alignment on the windows' encoder output."""

    def __init__(self, model: str, device: str = "cpu", compute_type: str = "default",
                 beam_size: int = 5, threads: int = 0, language: str | None = None):  # fmt: skip
        from faster_whisper import WhisperModel

        self.model = WhisperModel(
            model, device=device, compute_type=compute_type, cpu_threads=threads,
        )  # fmt: skip
        self.beam_size = beam_size
        #: every window's language; None: detected per window (a multilingual model)
        self.language = language if self.model.model.is_multilingual else "en"

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
        if self.language is None:
            detected = self.model.model.detect_language(encoded)
            languages = [d[0][0][2:-2] for d in detected]  # "<|en|>" -> "en"
        else:
            languages = [self.language] * len(chunks)
        # the start of the transcript without <|notimestamps|>: Whisper times its segments
        prompts = [list(self._tokenizer(lang).sot_sequence) for lang in languages]
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
        tokens = [res.sequences_ids[0] for res in results]
        timings = self._align(chunks, feats, encoded, languages, tokens)
        out = []
        for chunk, lang, res, seq, timing in zip(chunks, languages, results, tokens, timings,
                                                 strict=True):  # fmt: skip
            tokenizer = self._tokenizer(lang)
            # generate() returns the length-normalised score; Whisper's avg_logprob divides the
            # cumulative log-probability by (length + 1), as faster-whisper does.
            avg_logprob = res.scores[0] * len(seq) / (len(seq) + 1)
            text = tokenizer.decode([t for t in seq if t < tokenizer.eot]).strip()
            words = timed_words(tokenizer, seq, timing, len(chunk) / SAMPLE_RATE)
            out.append(Part(text, lang, float(avg_logprob), float(res.no_speech_prob), words))
        return out

    def _align(self, chunks, feats, encoded, languages, tokens) -> list[list[tuple]]:
        """Each window's word timings ``(text, token count, start, end)``, aligned per language
        (the alignment starts from one language's prompt): a batch of one language is aligned
        on its encoder output, each language of a mixed one on its features (encoded again)."""
        import ctranslate2

        out: list[list[tuple]] = [[] for _ in chunks]
        for lang in dict.fromkeys(languages):
            tokenizer = self._tokenizer(lang)
            mine = [i for i, x in enumerate(languages) if x == lang]
            text = [[t for t in tokens[i] if t < tokenizer.eot] for i in mine]
            if not any(text):
                continue
            if len(mine) == len(chunks):
                features = encoded
            else:
                features = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[mine]))
            frames = [len(chunks[i]) // HOP for i in mine]
            aligned = self.model.find_alignment(tokenizer, text, features, frames)
            for i, words in zip(mine, aligned, strict=True):
                out[i] = [(w["word"], len(w["tokens"]), w["start"], w["end"]) for w in words]
        return out


class _Encoded:
    """A Whisper model for ``whisper.timing.find_alignment`` that is handed the encoded audio in
    place of the mel spectrogram, so that timing the words does not run the encoder again."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, features, tokens):
        return self._model.decoder(tokens, features)


class OpenAIWhisper:
    """The reference implementation (openai-whisper), batched with ``whisper.decode`` on the
    windows' encoder output; words timed by ``whisper.timing.find_alignment``."""

    def __init__(self, model: str, device: str = "cpu", beam_size: int = 5,
                 language: str | None = None):  # fmt: skip
        import whisper

        self.whisper = whisper
        self.model = whisper.load_model(model, device=device)
        self.beam_size = beam_size
        #: every window's language; None: detected per window (a multilingual model)
        self.language = language if self.model.is_multilingual else "en"

    def transcribe_windows(self, chunks: list[np.ndarray], temperature: float = 0.0) -> list[Part]:
        import torch
        from whisper.timing import find_alignment
        from whisper.tokenizer import get_tokenizer

        w = self.whisper
        mels = [w.log_mel_spectrogram(w.pad_or_trim(c), n_mels=self.model.dims.n_mels)
                for c in chunks]  # fmt: skip
        batch = torch.stack(mels).to(self.model.device)
        search = {"temperature": temperature, "best_of": BEST_OF} if temperature > 0 else {
            "beam_size": self.beam_size}  # fmt: skip
        options = w.DecodingOptions(
            language=self.language, without_timestamps=False, fp16=batch.is_cuda, **search
        )  # fmt: skip
        with torch.no_grad():
            features = self.model.embed_audio(batch.half() if options.fp16 else batch)
        if (options.beam_size or options.best_of or 1) > 1 and len(batch) > 1:
            # openai-whisper (20250625) repeats the tokens for the beams (or samples) but not the
            # audio features, so a search over a batch of windows fails on a shape mismatch:
            # search each window's features on its own.
            results = [w.decode(self.model, f[None], options)[0] for f in features]
        else:
            results = w.decode(self.model, features, options)
        out = []
        for chunk, f, r in zip(chunks, features, results, strict=True):
            tokenizer = get_tokenizer(
                self.model.is_multilingual, num_languages=self.model.num_languages,
                language=r.language, task="transcribe",
            )  # fmt: skip
            text_tokens = [t for t in r.tokens if t < tokenizer.eot]
            timing = find_alignment(_Encoded(self.model), tokenizer, text_tokens, f,
                                    len(chunk) // HOP) if text_tokens else []  # fmt: skip
            words = timed_words(tokenizer, r.tokens,
                                [(t.word, len(t.tokens), t.start, t.end) for t in timing],
                                len(chunk) / SAMPLE_RATE)  # fmt: skip
            out.append(Part(r.text.strip(), r.language, float(r.avg_logprob),
                            float(r.no_speech_prob), words))  # fmt: skip
        return out


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
    # .get: a model exported before `language` existed decodes as it did (detected per window)
    options = {"beam_size": cfg["beam_size"], "language": cfg.get("language")}
    if cfg["backend"] == "faster-whisper":
        options |= {"compute_type": cfg["compute_type"], "threads": threads}
    model = whisper_model(cfg["backend"], cfg["model"])
    return load_transcriber(cfg["backend"], model, device, **options)


def transcribe(transcriber, audios: list[np.ndarray], batch_size: int = 8, vad: bool = True,
               errors: dict[int, str] | None = None, temperatures=TEMPERATURES,
               pack: bool = True) -> list[Transcript | None]:  # fmt: skip
    """Transcripts of 16 kHz mono clips: their speech (:func:`speech_spans` with ``vad``, else
    the whole clip) cut into pieces (:func:`clip_pieces`), laid out in windows
    (:func:`layout`; with ``pack`` several clips share one where the transcriber decodes one
    language, ``transcriber.language``), the windows decoded ``batch_size`` at a time with
    :func:`decode_with_fallback` at ``temperatures``, the words given back to the clips
    (:func:`assign`); what the windows left undecoded (:func:`leftovers`) is laid out and decoded
    once more, and each clip's words are joined (:func:`merge`).

    A batch that raises, or a window shared by several clips that is rejected as repetitive, is
    decoded again clip by clip (each clip's pieces of it in windows of its own): one clip's
    audio neither fails nor blanks the others. A clip-caused error (anything but
    :func:`conclugen.ledger.is_fatal`) is raised, or, given an ``errors`` dict, recorded there as
    ``{clip index: message}`` with ``None`` for that clip's transcript.
    """
    failed: dict[int, str] = {}
    pieces: list[Piece] = []
    for i, audio in enumerate(audios):
        try:
            if not np.isfinite(audio).all():
                raise ValueError("audio has non-finite samples")
            spans = speech_spans(audio) if vad else [(0, len(audio))]
            pieces += clip_pieces(i, audio, spans)
        except Exception as e:
            if is_fatal(e) or errors is None:
                raise
            failed[i] = f"{type(e).__name__}: {e}"
    pack = pack and transcriber.language is not None
    shares: list[list[Share]] = [[] for _ in audios]

    def decode(batch: list[list[Piece]]) -> list[tuple[Part, bool]]:
        chunks = [window_audio(audios, w) for w in batch]
        return decode_with_fallback(transcriber, chunks, temperatures)

    def take(window: list[Piece], part: Part, rejected: bool) -> list[Piece]:
        """The window's words into its clips' shares; what it left out, if spoken."""
        words = assign(window, part.words)
        for clip in dict.fromkeys(p.clip for p in window):
            mine = [w for w in words if w.piece.clip == clip]
            shares[clip].append(Share(part, rejected, mine))
        return leftovers(window, part.words) if shares[window[0].clip][-1].spoken else []

    def run(windows: list[list[Piece]]) -> list[Piece]:
        """Decode ``windows`` (one clip's failure its own); what they left out."""
        rest = []
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            try:
                decoded: list = decode(batch)
            except Exception as e:
                if is_fatal(e) or errors is None:
                    raise
                decoded = [None] * len(batch)  # whose fault? each clip on its own, below
            again = []
            for window, result in zip(batch, decoded, strict=True):
                if result is None or (result[1] and len({p.clip for p in window}) > 1):
                    again += window
                else:
                    rest += take(window, *result)
            for clip in dict.fromkeys(p.clip for p in again):
                own = layout([p for p in again if p.clip == clip], pack=False)
                try:
                    alone = decode(own)
                except Exception as e:
                    if is_fatal(e) or errors is None:
                        raise
                    failed[clip] = f"{type(e).__name__}: {e}"
                    continue
                for window, result in zip(own, alone, strict=True):
                    rest += take(window, *result)
        return rest

    rest = run(layout(pieces, pack))
    run(layout(sorted((p for p in rest if p.clip not in failed), key=lambda p: p[:2]), pack))
    if errors is not None:
        errors.update(failed)
    return [None if i in failed else merge(s) for i, s in enumerate(shares)]


SUBTITLE_COLUMNS = ("sample_id", "text", "language", "avg_logprob", "no_speech_prob", "no_speech",
                    "repetitive")  # fmt: skip


def subtitles_shard(clips, transcriber, ledger, batch_size: int = 16, vad: bool = True,
                    pack: bool = True):  # fmt: skip
    """Transcripts of one shard's clips (manifest rows merged with the probe table).

    A clip without an audio track, or whose track the probe found silent (peak below
    ``SILENCE_PEAK``), is not decoded: empty text, ``no_speech=True``, recorded as kept in
    ``ledger``. So is a clip whose transcript was rejected as repetitive (``repetitive=True``).
    An undecodable track, or a clip whose own audio makes Whisper fail, is dropped with the
    reason. Clips are read until their audio would fill ``batch_size`` windows, then
    transcribed together (:func:`transcribe` with ``vad`` and ``pack``). Returns a DataFrame
    with :data:`SUBTITLE_COLUMNS`.
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
    audios, ids = [], []

    def flush() -> None:
        errors: dict[int, str] = {}
        part = transcribe(transcriber, audios, batch_size, vad, errors, pack=pack)
        for i, (sample_id, t) in enumerate(zip(ids, part, strict=True)):
            if t is None:
                ledger.drop(sample_id, f"transcription failed: {errors[i]}")
                continue
            if t.repetitive:
                ledger.keep(sample_id, "repetitive transcript (a Whisper loop) left out")
            rows.append((sample_id, t.text, t.language, t.avg_logprob, t.no_speech_prob,
                         t.no_speech, t.repetitive))  # fmt: skip
        audios.clear()
        ids.clear()

    for clip in progress(todo, len(todo), "subtitles clips"):
        end = clip["end"] if pd.notna(clip["end"]) else None  # None: to the file's end
        try:
            audios.append(read_audio(audio_source(clip), SAMPLE_RATE, clip["start"], end))
            ids.append(clip["sample_id"])
        except MediaError as e:
            ledger.drop(clip["sample_id"], str(e))
        if sum(map(len, audios)) >= batch_size * WINDOW_S * SAMPLE_RATE:
            flush()
    if audios:
        flush()
    return pd.DataFrame(rows, columns=list(SUBTITLE_COLUMNS)).sort_values("sample_id")
